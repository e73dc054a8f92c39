//! Pretraining a language model: text → tokenizer → token files → random windows → task batch →
//! the engine's loop (validation loss/perplexity every `eval_every` steps, checkpoints, resume).
//!
//! Besides the engine's run layout (`run.json` of kind `text`, `encoder.safetensors` = the
//! transformer), a text run holds `tokenizer.json`, `tokens/` (the corpus tokenized once, split
//! into train/validation by document), for the causal model `sample.txt`, and with
//! `record_inputs` `record/` (the initial weights and every window's offset, see
//! [`write_record`]).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{self, NonFinite, TextConfig};
use crate::data::corpus::{is_validation, Fields, TextSource};
use crate::data::rngs::BatchRngs;
use crate::data::tokenizer::Tokenizer;
use crate::data::tokens::{tokenize_corpus, TokenCorpus, TokenFile};
use crate::engine::optim::text_optimizer;
use crate::engine::replicas::split_batch;
use crate::engine::run_dir::{self, PretrainSummary, RunInfo, TextRunInfo, WEIGHTS};
use crate::engine::{run_loop, LoopSettings};
use crate::error::{Error, Result};
use crate::nn::transformer::Transformer;
use crate::platform::dist;
use crate::platform::fsio::write_atomic;
use crate::tasks::shared::text_tasks::{text_trainer, TextSetup};
use crate::tasks::{self, Build, Specials, TextBatch, TextTask};

pub use run_dir::{is_text_run, load_run, read_lm_info};

pub struct TextPretrainRequest {
    pub config: TextConfig,
    pub out: PathBuf,
    pub device: Device,
    pub resume: bool,
    pub stop_after: Option<u64>,
    pub quiet: bool,
}

pub fn pretrain_text(req: TextPretrainRequest) -> Result<PretrainSummary> {
    let run = req.out.clone();
    let (cfg, resumed) = run_dir::run_start(&run, req.resume, &req.config)?;
    cfg.validate()?;
    let entry = tasks::find_text(&cfg.task).ok_or_else(|| {
        Error::Usage(format!(
            "unknown text task '{}'; known: {}",
            cfg.task,
            tasks::text_names().join(", ")
        ))
    })?;
    let Build::Text { causal, build } = entry.build else {
        unreachable!("find_text returns text tasks");
    };
    if cfg.data.is_empty() {
        return Err(Error::Usage(
            "no data: pass --data text:PATH or jsonl:PATH (e.g. text:../shared/data/text/austen.txt.gz)".into(),
        ));
    }
    // Check the model settings before the (slow) tokenizer and corpus work.
    cfg.spec(260, causal)?;
    let source = TextSource::open(
        &cfg.data,
        &Fields {
            text: cfg.text_field.clone(),
            label: None,
        },
    )?;
    // Under MPI rank 0 alone writes the run directory: it makes the tokenizer and the token
    // files, the others wait for them and read them.
    let writer = dist::is_writer();
    if writer {
        std::fs::create_dir_all(&run).map_err(|e| Error::io(&run, e))?;
        write_atomic(&run.join("config.toml"), config::to_toml(&cfg).as_bytes())?;
    }
    let tok_path = run.join("tokenizer.json");
    // Decided together (before rank 0 may write the file).
    let reuse = dist::all_ok(tok_path.exists() && req.resume);
    // A resumed run keeps what its tokenizer was trained on; a new one trains on its training
    // documents ([`make_tokenizer`]).
    let tokenizer_docs = if reuse {
        run_dir::read_lm_info(&run).map_or(String::new(), |i| i.tokenizer_docs)
    } else if cfg.tokenizer.is_empty() {
        "training".to_string()
    } else {
        String::new()
    };
    let tok = if reuse {
        Tokenizer::load(&tok_path)?
    } else if writer {
        let tok = make_tokenizer(&cfg, &source, req.quiet)?;
        tok.save(&tok_path)?;
        dist::barrier();
        tok
    } else {
        dist::barrier();
        Tokenizer::load(&tok_path)?
    };
    let specials = Specials::of(&tok);
    let task = build(
        &cfg.sections
            .get(entry.name)
            .cloned()
            .unwrap_or_else(|| toml::Value::Table(Default::default())),
        &specials,
    )?;
    let spec = cfg.spec(tok.vocab_size(), causal)?;
    let t = cfg.seq_len(&spec);
    let wlen = task.window_len(t);

    let tokenize = || {
        tokenize_corpus(
            &source,
            &tok,
            cfg.seed,
            cfg.val_fraction,
            &run.join("tokens"),
            !req.quiet,
        )
    };
    // The others find rank 0's token files and reuse them.
    let corpus = if writer {
        let corpus = tokenize()?;
        dist::barrier();
        corpus
    } else {
        dist::barrier();
        tokenize()?
    };
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
    let info = TextRunInfo {
        spec: spec.clone(),
        task: cfg.task.clone(),
        data: cfg.data.clone(),
        text_field: cfg.text_field.clone(),
        tokenizer: "tokenizer.json".into(),
        seq_len: t,
        tokenizer_docs,
        device: crate::platform::device::describe(&req.device),
    };
    if !req.quiet {
        println!("{}: training on {}", cfg.task, info.device);
    }
    if writer {
        run_dir::write_run_info(&run, &RunInfo::Text(info))?;
    }

    let device = req.device.clone().autodiff();
    let replicas = crate::engine::replicas::resolve(cfg.replicas, cfg.batch_size, &device)?;
    let validation = if evaluate {
        validation_batches(&cfg, task.as_ref(), &corpus.val, t)?
    } else {
        Vec::new()
    };
    let (per_tensor_clip, global_clip) = cfg.clip_norms();
    let mut trainer = text_trainer(
        task.clone(),
        &TextSetup {
            spec: spec.clone(),
            validation,
            seed: cfg.seed,
            device: device.clone(),
            optimizer: text_optimizer(
                cfg.weight_decay,
                per_tensor_clip,
                cfg.decay_biases_and_norms,
            ),
            skip_nonfinite: cfg.on_nonfinite == NonFinite::Skip,
            global_clip,
            replicas,
        },
    )?;
    let start = run_loop::resume(trainer.as_mut(), &resumed, &run, req.quiet)?;
    if cfg.record_inputs && writer && start == 0 {
        write_record(&run, &cfg, wlen, &corpus, trainer.transformer())?;
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
    let end = req.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    // Every step's windows and damage come from (seed, step) alone: a resumed run continues with
    // exactly the batches an uninterrupted one would have drawn.
    let mut next = |step: u64| -> Result<Box<dyn crate::engine::AnyBatch>> {
        let (offsets, mut rng) =
            window_offsets(cfg.seed, step, cfg.batch_size, wlen, corpus.train.len());
        let windows = offsets
            .iter()
            .map(|&o| corpus.train.read(o, wlen))
            .collect::<Result<Vec<_>>>()?;
        let rngs = BatchRngs::from_rng(&mut rng);
        Ok(split_batch(windows.len(), replicas, &rngs, |r, rngs| {
            task.make_batch(&windows[r], rngs)
        }))
    };
    let outcome = run_loop::run(
        trainer.as_mut(),
        &mut next,
        &LoopSettings {
            // Without a validation split there is nothing to validate on.
            eval_every: if evaluate { cfg.eval_every } else { 0 },
            ..LoopSettings::of(&cfg, "tokens", req.quiet)
        },
        &run,
        start,
        end,
    )?;
    let summary = PretrainSummary::new(
        &cfg.task,
        cfg.steps,
        &run,
        &outcome,
        outcome.last_eval.clone(),
    );
    if !writer {
        return Ok(summary);
    }
    if summary.done() {
        trainer.save_transferable(&run.join(WEIGHTS))?;
    }
    if summary.completed && causal {
        write_sample(
            trainer.transformer(),
            &tok,
            &corpus.val,
            &corpus.train,
            &run,
        )?;
    }
    summary.write()?;
    Ok(summary)
}

/// The offsets of step `step`'s `n` training windows of `len` tokens in a file of `file_len`
/// tokens, and the step's generator after drawing them (which then keys the windows' own
/// generators for their damage). Every step's windows come from (seed, step) alone.
fn window_offsets(
    seed: u64,
    step: u64,
    n: usize,
    len: usize,
    file_len: u64,
) -> (Vec<u64>, ChaCha8Rng) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step);
    let last = file_len - len as u64;
    let offsets = (0..n).map(|_| rng.gen_range(0..=last)).collect();
    (offsets, rng)
}

/// The offsets of the validation windows of `len` tokens in a file of `file_len` tokens:
/// `eval_batches × batch_size` of them, evenly spaced.
fn validation_offsets(cfg: &TextConfig, len: usize, file_len: u64) -> Vec<u64> {
    let last = file_len.saturating_sub(len as u64);
    let total = cfg.eval_batches * cfg.batch_size;
    (0..total)
        .map(|i| {
            if total > 1 {
                last * i as u64 / (total - 1) as u64
            } else {
                0
            }
        })
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
    validation_offsets(cfg, len, val.len())
        .chunks(cfg.batch_size)
        .enumerate()
        .map(|(k, chunk)| {
            let windows = chunk
                .iter()
                .map(|&o| val.read(o, len))
                .collect::<Result<Vec<_>>>()?;
            Ok(task.make_batch(&windows, &BatchRngs::new(cfg.seed ^ 0x7a1d_a7e5, k as u64)))
        })
        .collect()
}

/// What `record_inputs` writes, for an outside implementation to train on exactly the same data
/// from the same start (`bench/lm_match.py`):
///
/// - `record/init.safetensors`: the model before the first step (as `encoder.safetensors`: burn's
///   names, LayerNorm `gamma`/`beta`, linear weights [in, out]);
/// - `record/inputs.json`: `window_len` (tokens per window: the model's `seq_len` + 1 for the
///   causal task), `train_offsets` (for each step 0..steps, the offsets of its `batch_size`
///   windows in `tokens/train.tokens`, in batch order) and `val_offsets` (the validation windows
///   in `tokens/val.tokens`, measured in batches of `batch_size`, in order).
fn write_record(
    run: &Path,
    cfg: &TextConfig,
    wlen: usize,
    corpus: &TokenCorpus,
    model: &Transformer,
) -> Result<()> {
    let dir = run.join("record");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    crate::engine::checkpoint::save_weights(model, &dir.join("init.safetensors"))?;
    let train: Vec<Vec<u64>> = (0..cfg.steps)
        .map(|step| window_offsets(cfg.seed, step, cfg.batch_size, wlen, corpus.train.len()).0)
        .collect();
    let val = if cfg.val_fraction > 0.0 {
        validation_offsets(cfg, wlen, corpus.val.len())
    } else {
        Vec::new()
    };
    let json = serde_json::json!({
        "window_len": wlen,
        "batch_size": cfg.batch_size,
        "train_offsets": train,
        "val_offsets": val,
    });
    write_atomic(&dir.join("inputs.json"), json.to_string().as_bytes())
}

/// The tokenizer for a new run: trained on the corpus, the byte-level one, or a given file.
fn make_tokenizer(cfg: &TextConfig, source: &TextSource, quiet: bool) -> Result<Tokenizer> {
    match cfg.tokenizer.as_str() {
        "" => {
            if !quiet {
                eprintln!(
                    "training a {}-token byte-level BPE tokenizer on the training documents of {}",
                    cfg.vocab, cfg.data
                );
            }
            // Only the documents the run trains on: not its validation documents, nor (split
            // by the same rule with the same seed and fraction) a transfer's test documents.
            let training = |i: u64| !is_validation(cfg.seed, i, cfg.val_fraction);
            Tokenizer::train_on(source, &training, cfg.vocab, 2, !quiet)
        }
        "bytes" => Ok(Tokenizer::bytes()),
        path => Tokenizer::load(Path::new(path)),
    }
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
    let s = crate::commands::generate::Sampling {
        temperature: 0.8,
        top_k: 40,
        seed: 0,
    };
    let out =
        crate::commands::generate::generate(&inference, &prompt, 200, &s, &device, |_| Ok(()))?;
    let text = format!(
        "prompt: {}\n---\n{}{}\n",
        tok.decode(&prompt),
        tok.decode(&prompt),
        crate::commands::generate::render(tok, &out)
    );
    write_atomic(&run.join("sample.txt"), text.as_bytes())
}
