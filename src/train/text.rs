//! Pretraining a language model: text → tokenizer → token files → random windows → task batch →
//! step → metrics, validation loss/perplexity every `eval_every` steps, checkpoints, resume.
//!
//! A text run directory holds `config.toml`, `lm.json` (how to rebuild the model),
//! `tokenizer.json`, `tokens/` (the corpus tokenized once, split into train/validation by
//! document), `metrics.jsonl`, `checkpoints/`, `model.safetensors`, `summary.json` and, for the
//! causal model, `sample.txt` (a generated continuation).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, latest_checkpoint, write_checkpoint, CheckpointState};
use super::lm_step::{held_out_loss, lm_step};
use super::progress::{Progress, Throughput};
use super::{metrics, schedule, PretrainSummary, INTERRUPTED};
use crate::config::{self, in_range, positive, NonFinite};
use crate::data::text::{Fields, TextSource};
use crate::data::tokenizer::Tokenizer;
use crate::data::tokens::{tokenize_corpus, TokenFile};
use crate::error::{Error, Result};
use crate::nn::transformer::{Transformer, TransformerSpec, PRESETS};
use crate::tasks::text::{self as text_tasks, Specials, TextBatch, TextTask};

/// Language-model pretraining configuration (`pretext pretrain --task causal-lm|masked-lm`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// causal-lm or masked-lm.
    pub task: String,
    /// `text:PATH` (.txt/.txt.gz files or a folder of them) or `jsonl:PATH`.
    pub data: String,
    /// The JSON field holding the text (jsonl data).
    pub text_field: String,
    /// A tokenizer.json to use; empty = train a byte-level BPE of `vocab` tokens on the corpus;
    /// `bytes` = the byte-level tokenizer (260 tokens).
    pub tokenizer: String,
    /// Vocabulary size when the tokenizer is trained here.
    pub vocab: usize,
    /// Model size preset: tiny, small or base (see `src/nn/transformer.rs`).
    pub model: String,
    /// Overrides of the preset; 0 = the preset's value.
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub d_ff: usize,
    /// Longest sequence the model accepts (position embeddings); 0 = the preset's.
    pub max_len: usize,
    pub dropout: f64,
    pub tie_weights: bool,
    /// Training sequence length in tokens; 0 = max_len.
    pub seq_len: usize,
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub min_lr_ratio: f64,
    /// Clip every parameter's gradient to this L2 norm (burn clips per tensor); 0 = off.
    pub grad_clip: f64,
    /// Fraction of documents (paragraphs / JSON lines) held out for validation.
    pub val_fraction: f64,
    /// Validation loss every N steps (and at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation (fixed windows, the same every time).
    pub eval_batches: usize,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub on_nonfinite: NonFinite,
    /// Task sections, e.g. `[masked-lm] mask_prob = 0.15`.
    #[serde(flatten)]
    pub sections: BTreeMap<String, toml::Value>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            task: "causal-lm".into(),
            data: String::new(),
            text_field: "text".into(),
            tokenizer: String::new(),
            vocab: 4096,
            model: "tiny".into(),
            d_model: 0,
            layers: 0,
            heads: 0,
            d_ff: 0,
            max_len: 0,
            dropout: 0.1,
            tie_weights: true,
            seq_len: 0,
            steps: 2000,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 0.1,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            val_fraction: 0.05,
            eval_every: 200,
            eval_batches: 8,
            log_every: 10,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            seed: 0,
            on_nonfinite: NonFinite::Stop,
            sections: BTreeMap::new(),
        }
    }
}

impl TextConfig {
    pub fn validate(&self) -> Result<()> {
        positive("steps", self.steps as f64)?;
        positive("batch_size", self.batch_size as f64)?;
        positive("lr", self.lr)?;
        positive("eval_every", self.eval_every as f64)?;
        positive("log_every", self.log_every as f64)?;
        positive("checkpoint_every", self.checkpoint_every as f64)?;
        positive("keep_checkpoints", self.keep_checkpoints as f64)?;
        in_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)?;
        in_range("val_fraction", self.val_fraction, 0.0, 0.5)?;
        in_range("weight_decay", self.weight_decay, 0.0, 10.0)?;
        in_range("grad_clip", self.grad_clip, 0.0, 1e6)?;
        if self.tokenizer.is_empty() && self.vocab < 260 {
            return Err(Error::config(
                "vocab",
                format!(
                    "must be at least 260 (256 bytes + 4 special tokens), found {}",
                    self.vocab
                ),
            ));
        }
        Ok(())
    }

    /// The model this config describes for a tokenizer of `vocab` tokens.
    pub fn spec(&self, vocab: usize, causal: bool) -> Result<TransformerSpec> {
        let mut spec = TransformerSpec::preset(&self.model, vocab, causal).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            Error::config(
                "model",
                format!(
                    "unknown preset {:?}; expected one of {}",
                    self.model,
                    names.join(", ")
                ),
            )
        })?;
        let pick = |v: usize, default: usize| if v == 0 { default } else { v };
        spec.d_model = pick(self.d_model, spec.d_model);
        spec.layers = pick(self.layers, spec.layers);
        spec.heads = pick(self.heads, spec.heads);
        spec.d_ff = pick(self.d_ff, 4 * spec.d_model);
        spec.max_len = pick(self.max_len, spec.max_len);
        spec.dropout = self.dropout;
        spec.tie_weights = self.tie_weights;
        spec.validate()?;
        if self.seq_len > spec.max_len {
            return Err(Error::config(
                "seq_len",
                format!(
                    "must be at most max_len {}, found {}",
                    spec.max_len, self.seq_len
                ),
            ));
        }
        Ok(spec)
    }

    pub fn seq_len(&self, spec: &TransformerSpec) -> usize {
        if self.seq_len == 0 {
            spec.max_len
        } else {
            self.seq_len
        }
    }
}

/// How to rebuild a text run's model (`lm.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LmInfo {
    pub spec: TransformerSpec,
    pub task: String,
    pub data: String,
    pub text_field: String,
    /// Relative to the run directory.
    pub tokenizer: String,
    pub seq_len: usize,
}

/// Whether `run` is a text run (holds `lm.json`).
pub fn is_text_run(run: &Path) -> bool {
    run.join("lm.json").exists()
}

pub fn read_lm_info(run: &Path) -> Result<LmInfo> {
    let path = run.join("lm.json");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::checkpoint(&path, e))
}

/// A text run's model with its trained weights (the finished model, or the latest checkpoint's)
/// and its tokenizer, on `device`.
pub fn load_run(run: &Path, device: &Device) -> Result<(LmInfo, Transformer, Tokenizer)> {
    let info = read_lm_info(run)?;
    let tok = Tokenizer::load(&run.join(&info.tokenizer))?;
    let model = crate::device::seeded(device, 0, || info.spec.init(device));
    let top = run.join("model.safetensors");
    let model = if top.exists() {
        checkpoint::load_weights(model, &top)?
    } else {
        match latest_checkpoint(run)? {
            Some((dir, _)) => checkpoint::load_module(model, &dir.join("model.bpk"))?,
            None => {
                return Err(Error::Usage(format!(
                    "{}: no model.safetensors and no checkpoint yet",
                    run.display()
                )))
            }
        }
    };
    Ok((info, model, tok))
}

pub fn specials(tok: &Tokenizer) -> Specials {
    let vocab = tok.vocab_size();
    Specials {
        vocab,
        pad: tok.pad_id(),
        eos: tok.eos_id(),
        mask: tok.mask_id(),
        cls: tok.cls_id(),
        ordinary: (0..vocab as u32).filter(|&i| !tok.is_special(i)).collect(),
    }
}

pub struct TextPretrainRequest {
    pub config: TextConfig,
    pub out: PathBuf,
    pub device: Device,
    pub resume: bool,
    pub stop_after: Option<u64>,
    pub quiet: bool,
}

pub fn optimizer(cfg: &TextConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_2(0.95)
        .with_weight_decay(cfg.weight_decay as f32)
        .with_grad_clipping(
            (cfg.grad_clip > 0.0).then_some(GradientClippingConfig::Norm(cfg.grad_clip as f32)),
        )
        .init()
}

/// The tokens of `n` windows of `len` at random offsets, drawn from `rng`.
fn random_windows(
    file: &TokenFile,
    n: usize,
    len: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<u32>>> {
    let last = file.len() - len as u64;
    (0..n)
        .map(|_| file.read(rng.gen_range(0..=last), len))
        .collect()
}

/// Fixed validation batches: windows at evenly spaced offsets, damaged with a fixed seed, so
/// every evaluation of a run measures the same thing.
fn validation_batches(
    cfg: &TextConfig,
    task: &dyn TextTask,
    val: &TokenFile,
    t: usize,
) -> Result<Vec<TextBatch>> {
    let len = task.window_len(t);
    let last = val.len().saturating_sub(len as u64);
    let total = cfg.eval_batches * cfg.batch_size;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7a1d_a7e5);
    let offsets: Vec<u64> = (0..total)
        .map(|i| {
            if total > 1 {
                last * i as u64 / (total - 1) as u64
            } else {
                0
            }
        })
        .collect();
    offsets
        .chunks(cfg.batch_size)
        .map(|chunk| {
            let windows = chunk
                .iter()
                .map(|&o| val.read(o, len))
                .collect::<Result<Vec<_>>>()?;
            Ok(task.make_batch(&windows, &mut rng))
        })
        .collect()
}

/// The tokenizer for a new run: trained on the corpus, the byte-level one, or a given file.
fn make_tokenizer(cfg: &TextConfig, source: &TextSource, quiet: bool) -> Result<Tokenizer> {
    match cfg.tokenizer.as_str() {
        "" => {
            if !quiet {
                eprintln!(
                    "training a {}-token byte-level BPE tokenizer on {}",
                    cfg.vocab, cfg.data
                );
            }
            Tokenizer::train(source, cfg.vocab, 2, !quiet)
        }
        "bytes" => Ok(Tokenizer::bytes()),
        path => Tokenizer::load(Path::new(path)),
    }
}

pub fn pretrain_text(req: TextPretrainRequest) -> Result<PretrainSummary> {
    let run = req.out.clone();
    let (cfg, resumed) = super::run_start(&run, req.resume, &req.config)?;
    cfg.validate()?;
    let entry = text_tasks::find(&cfg.task).ok_or_else(|| {
        Error::Usage(format!(
            "unknown text task '{}'; known: {}",
            cfg.task,
            text_tasks::names().join(", ")
        ))
    })?;
    if cfg.data.is_empty() {
        return Err(Error::Usage(
            "no data: pass --data text:PATH or jsonl:PATH (e.g. text:../shared/data/text/austen.txt.gz)".into(),
        ));
    }
    // Check the model settings before the (slow) tokenizer and corpus work.
    cfg.spec(260, entry.causal)?;
    let source = TextSource::open(
        &cfg.data,
        &Fields {
            text: cfg.text_field.clone(),
            label: None,
        },
    )?;
    std::fs::create_dir_all(&run).map_err(|e| Error::io(&run, e))?;
    checkpoint::write_atomic(&run.join("config.toml"), config::to_toml(&cfg).as_bytes())?;

    let tok_path = run.join("tokenizer.json");
    let tok = if tok_path.exists() && req.resume {
        Tokenizer::load(&tok_path)?
    } else {
        let tok = make_tokenizer(&cfg, &source, req.quiet)?;
        tok.save(&tok_path)?;
        tok
    };
    let specials = specials(&tok);
    let task = (entry.build)(
        &cfg.sections
            .get(entry.name)
            .cloned()
            .unwrap_or_else(|| toml::Value::Table(Default::default())),
        &specials,
    )?;
    let spec = cfg.spec(tok.vocab_size(), entry.causal)?;
    let t = cfg.seq_len(&spec);
    let wlen = task.window_len(t);

    let corpus = tokenize_corpus(
        &source,
        &tok,
        cfg.seed,
        cfg.val_fraction,
        &run.join("tokens"),
        !req.quiet,
    )?;
    if corpus.train.len() < wlen as u64 {
        return Err(Error::Usage(format!(
            "{}: the training split has {} tokens, fewer than one window of {wlen}; use more text or a smaller seq_len",
            cfg.data,
            corpus.train.len()
        )));
    }
    let evaluate = cfg.val_fraction > 0.0;
    if evaluate && corpus.val.len() < wlen as u64 {
        return Err(Error::config(
            "val_fraction",
            format!(
                "the validation split of {} has {} tokens ({} documents), fewer than one window of {wlen}; raise val_fraction or set it to 0 to train without validation",
                cfg.data,
                corpus.val.len(),
                corpus.docs_val
            ),
        ));
    }
    let info = LmInfo {
        spec: spec.clone(),
        task: cfg.task.clone(),
        data: cfg.data.clone(),
        text_field: cfg.text_field.clone(),
        tokenizer: "tokenizer.json".into(),
        seq_len: t,
    };
    checkpoint::write_atomic(
        &run.join("lm.json"),
        &serde_json::to_vec_pretty(&info).expect("json"),
    )?;

    let device = req.device.clone().autodiff();
    let mut model = crate::device::seeded(&device, cfg.seed, || spec.init(&device));
    let mut optim = optimizer(&cfg);
    let mut start = 0;
    if let Some((dir, state)) = &resumed {
        model = checkpoint::load_module(model, &dir.join("model.bpk"))?;
        optim = checkpoint::load_optimizer(optim, &dir.join("optim.bpk"))?;
        start = state.step;
        if !req.quiet {
            println!(
                "resuming {} from step {} ({})",
                run.display(),
                state.step,
                dir.display()
            );
        }
    }
    if !req.quiet {
        println!(
            "{}: {} parameters ({} layers × {}, {} heads), vocabulary {} ({}), {} training tokens in {} documents, {} validation tokens",
            cfg.task,
            spec.parameters(),
            spec.layers,
            spec.d_model,
            spec.heads,
            tok.vocab_size(),
            tok.kind(),
            corpus.train.len(),
            corpus.docs_train,
            corpus.val.len()
        );
    }
    let val_batches = if evaluate {
        validation_batches(&cfg, task.as_ref(), &corpus.val, t)?
    } else {
        Vec::new()
    };
    let end = req.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    let mut log = metrics::MetricsLog::open(&run.join("metrics.jsonl"), start)?;
    super::install_ctrlc();
    INTERRUPTED.store(false, Ordering::SeqCst);

    let save = |model: &Transformer, optim: &ModuleOptimizer, step: u64| -> Result<PathBuf> {
        let state = CheckpointState {
            step,
            data_cursor: step,
            seed: cfg.seed,
            task: cfg.task.clone(),
        };
        write_checkpoint(&run, &state, cfg.keep_checkpoints, |dir| {
            checkpoint::save_module(model.clone(), &dir.join("model.bpk"))?;
            checkpoint::save_optimizer(optim, &dir.join("optim.bpk"))
        })
        .map_err(|e| super::checkpoint_failed(&run, step, &e))
    };

    if evaluate && start == 0 {
        // The untrained model's validation loss: where the curve starts (≈ ln(vocab)).
        let v = held_out_loss(&model, &val_batches);
        log.write(&serde_json::json!({ "step": 0, "val_loss": v, "val_ppl": v.exp() }))?;
    }
    let progress = Progress::new(
        &format!("pretrain {}", cfg.task),
        start,
        cfg.steps,
        req.quiet,
    );
    let t0 = Instant::now();
    let (mut window, mut total) = (Throughput::new(), Throughput::new());
    let mut last = super::step::StepStats::default();
    let mut last_val: Option<f32> = None;
    let (mut step, mut last_saved, mut skipped, mut skipped_in_row) = (start, start, 0u64, 0u64);
    while step < end {
        // Every step's windows and damage come from (seed, step) alone: a resumed run continues
        // with exactly the batches an uninterrupted one would have drawn.
        let mut rng =
            ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step);
        let windows = random_windows(&corpus.train, cfg.batch_size, wlen, &mut rng)?;
        let batch = task.make_batch(&windows, &mut rng);
        let lr = schedule::lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio);
        let skip = cfg.on_nonfinite == NonFinite::Skip;
        // Dropout draws from the device's generator: seeding it per step makes a resumed run
        // bitwise equal to an uninterrupted one.
        let (m, stats) = crate::device::seeded(&device, cfg.seed ^ (step << 20), || {
            lm_step(model, &mut optim, &batch, lr, skip)
        });
        model = m;
        step += 1;
        let tokens = (batch.b * batch.t) as u64;
        window.add(tokens);
        total.add(tokens);
        if stats.skipped {
            skipped += 1;
            skipped_in_row += 1;
            log.write(&serde_json::json!({ "step": step, "skipped": true, "lr": lr }))?;
            progress.println(&format!(
                "step {step}: loss is {} — step skipped (on_nonfinite = \"skip\")",
                stats.loss
            ));
            if skipped_in_row >= super::MAX_SKIPPED_IN_ROW {
                return Err(Error::Training {
                    step,
                    message: format!(
                        "{} steps in a row had a NaN/Inf loss and were skipped; try a lower lr",
                        super::MAX_SKIPPED_IN_ROW
                    ),
                });
            }
            continue;
        }
        skipped_in_row = 0;
        if !stats.loss.is_finite() {
            let good = if last_saved > 0 {
                format!(
                    "the last good checkpoint (step {last_saved}) is in {}",
                    checkpoint::checkpoints_dir(&run).display()
                )
            } else {
                "no checkpoint was written yet".into()
            };
            return Err(Error::Training {
                step,
                message: format!(
                    "loss is {} (lr {lr:.3e}); {good}; try a lower lr or on_nonfinite = \"skip\"",
                    stats.loss
                ),
            });
        }
        let eval_now = evaluate && (step % cfg.eval_every == 0 || step == cfg.steps);
        let log_now = step % cfg.log_every == 0 || step == end || eval_now;
        let mut rec = serde_json::json!({
            "step": step, "loss": stats.loss, "lr": lr,
            "tokens_per_s": window.per_sec(), "elapsed_s": t0.elapsed().as_secs_f64(),
        });
        for (k, v) in &stats.metrics {
            rec[*k] = serde_json::json!(v);
        }
        if eval_now {
            let v = held_out_loss(&model, &val_batches);
            rec["val_loss"] = serde_json::json!(v);
            rec["val_ppl"] = serde_json::json!(v.exp());
            last_val = Some(v);
            progress.println(&format!(
                "step {step}: train loss {:.4}, validation loss {v:.4} (perplexity {:.1})",
                stats.loss,
                v.exp()
            ));
        }
        if log_now {
            log.write(&rec)?;
        }
        let remaining = (end - step) as f64 * t0.elapsed().as_secs_f64() / (step - start) as f64;
        let mut msg = format!("loss {:.4}", stats.loss);
        if let Some(v) = last_val {
            msg.push_str(&format!(" val {v:.4}"));
        }
        msg.push_str(&format!(" {:.0} tok/s", window.per_sec()));
        progress.update(
            step,
            &msg,
            log_now,
            std::time::Duration::from_secs_f64(remaining),
        );
        if log_now {
            window = Throughput::new();
        }
        last = stats;
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if step % cfg.checkpoint_every == 0 || interrupted {
            log.flush()?;
            save(&model, &optim, step)?;
            last_saved = step;
        }
        if interrupted {
            progress.println(&format!(
                "stopped at step {step}; continue with: pretext pretrain --resume {}",
                run.display()
            ));
            break;
        }
    }
    progress.finish();
    log.flush()?;
    if step != last_saved || step == 0 {
        save(&model, &optim, step)?;
    }
    let completed = step >= cfg.steps;
    if completed {
        checkpoint::save_weights(&model, &run.join("model.safetensors"))?;
        if entry.causal {
            write_sample(&model, &tok, &corpus.val, &corpus.train, &run)?;
        }
    }
    let mut eval = Vec::new();
    if let Some(v) = last_val {
        eval.push(("val_loss".to_string(), v));
        eval.push(("val_ppl".to_string(), v.exp()));
    }
    let summary = PretrainSummary {
        task: cfg.task.clone(),
        steps_done: step,
        steps: cfg.steps,
        final_loss: last.loss,
        final_metrics: last
            .metrics
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        wall_s: t0.elapsed().as_secs_f64(),
        items_per_s: total.per_sec(),
        run_dir: run.clone(),
        completed,
        skipped_steps: skipped,
        eval,
    };
    checkpoint::write_atomic(
        &run.join("summary.json"),
        &serde_json::to_vec_pretty(&summary).expect("json"),
    )?;
    Ok(summary)
}

/// `sample.txt`: the start of a validation paragraph (or training text) as the prompt and 200
/// generated tokens after it (temperature 0.8, top-k 40, seed 0), so a run shows what it learned.
fn write_sample(
    model: &Transformer,
    tok: &Tokenizer,
    val: &TokenFile,
    train: &TokenFile,
    run: &Path,
) -> Result<()> {
    let source = if val.len() >= 16 { val } else { train };
    let prompt: Vec<u32> = source
        .read(0, 16.min(source.len() as usize))?
        .into_iter()
        .filter(|&id| id != tok.eos_id())
        .collect();
    if prompt.is_empty() {
        return Ok(());
    }
    let inference = model.clone().valid();
    let device = inference
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(Device::flex);
    let s = crate::generate::Sampling {
        temperature: 0.8,
        top_k: 40,
        seed: 0,
    };
    let out = crate::generate::generate(&inference, &prompt, 200, &s, &device, |_| Ok(()))?;
    let text = format!(
        "prompt: {}\n---\n{}{}\n",
        tok.decode(&prompt),
        tok.decode(&prompt),
        crate::generate::render(tok, &out)
    );
    checkpoint::write_atomic(&run.join("sample.txt"), text.as_bytes())
}
