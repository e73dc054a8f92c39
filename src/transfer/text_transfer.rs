//! Transfer of a pretrained language model to a labelled text task (e.g. spam/ham e-mails in
//! `jsonl:` data): each document becomes one vector (the mean of the final hidden states over its
//! tokens, or the state of a `<cls>` token: appended at the end for the causal model, which only
//! sees the whole text at its last position, prepended for the bidirectional one), then a linear
//! probe or k-NN on frozen vectors, or fine-tuning of the whole model with a linear head.
//! Baselines: `--from random` (frozen random weights) and `--from scratch` (the same network
//! trained on the labels only); `--set like=RUN` gives them the architecture and tokenizer of a
//! pretrained run, so the comparison is like for like. Scores: accuracy and macro-F1 on held-out
//! documents chosen by a hash of their index (`test_fraction`, `split_seed`) — the same rule
//! pretraining uses for its validation split, so pretraining with the same seed and fraction on
//! the same file never sees the test documents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::finetune::FitDir;
use super::labels::{self, PerClass};
use super::protocol_tables::{self, FinetuneTable, KnnTable, ProbeTable, SemiTable};
use super::text_features::{content_digest, CacheKey, DocVectors, Encoding};
use super::text_finetune::train_classifier;
use super::{frozen, linear_probe, scores, FinetuneHead, Protocol, Source};
use crate::config::{in_range, positive, NonFinite};
use crate::data::corpus::{is_validation, Fields, TextSource};
use crate::data::email::{is_email, subject_and_body};
use crate::data::tokenizer::Tokenizer;
use crate::engine::run_dir::{is_text_run, lm_weights_file, load_run, read_lm_info};
use crate::error::{Error, Result};
use crate::nn::heads::LinearHead;
use crate::nn::transformer::{Transformer, TransformerSpec};
use crate::platform::fsio::write_atomic;

/// How many unlabelled pool documents the linear probe's standardiser is fitted on (fewer than
/// for images: a document costs a transformer pass of up to `max_tokens`).
const TEXT_STANDARDIZER_POOL: usize = 1024;

/// Text transfer settings (`pretext transfer --set key=value`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TextTransferConfig {
    pub text_field: String,
    pub label_field: String,
    /// What of each document the model reads: `auto` (a raw e-mail — a header block, then a
    /// blank line — its `Subject:` line and body, anything else whole; see `data::email`),
    /// `email-body` (the same for anything that starts like a header) or `all`.
    pub text_part: String,
    /// Fraction of documents held out for the scores.
    pub test_fraction: f64,
    /// Seed of the held-out split (fixed across label draws, so every method sees one test set).
    pub split_seed: u64,
    /// Seed of the label draw, the head's initialisation and the batch order.
    pub seed: u64,
    /// Document vector: `mean` of the hidden states or the state of a `cls` token.
    pub pool: String,
    /// Tokens per document (the first ones); 0 = the model's max_len.
    pub max_tokens: usize,
    /// For random/scratch: take the architecture and tokenizer of this run.
    pub like: String,
    /// For random/scratch without `like`: the model preset, with the byte-level tokenizer.
    pub model: String,
    /// `finetune_*`, `probe_*` and `knn_*`: the tables images have, with defaults for text.
    #[serde(flatten, with = "protocol_tables::finetune_keys")]
    pub finetune: FinetuneTable,
    /// Where fine-tuning's (and the semi stage teacher's) linear head starts: `auto` (a linear
    /// probe on the frozen document vectors for a pretrained run — LP-FT, as for images —
    /// random for `random`/`scratch`), `probe` or `random`.
    pub finetune_head: FinetuneHead,
    #[serde(flatten, with = "protocol_tables::probe_keys")]
    pub probe: ProbeTable,
    #[serde(flatten, with = "protocol_tables::knn_keys")]
    pub knn: KnnTable,
    /// Evaluate on at most this many held-out documents (a seeded sample, so every class
    /// keeps its share); 0 = all.
    pub test_limit: usize,
    /// Linear probe and k-NN features: 0 = the final states; k = after transformer block k
    /// (the per-layer probe).
    pub stage: usize,
    /// Keep the frozen protocols' document vectors on disk (`RUN/features/`, or compare's
    /// `OUT/features/`) so other label draws and protocols reuse them.
    pub feature_cache: bool,
    /// The semi-supervised stage (`--protocol semi`, [`super::text_semi`]), as for images:
    /// steps, labelled documents per step, unlabelled per labelled, rate, weight decay,
    /// confidence threshold, FlexMatch thresholds, consistency and distillation weights,
    /// distillation temperature, moving average, distribution alignment, checkpoints. The
    /// losses' defaults are the images' (chosen on their validation split); text has no
    /// validation split of its own yet, so they were not tuned on documents.
    #[serde(flatten, with = "protocol_tables::semi_keys")]
    pub semi: SemiTable,
    /// Share of a document's ordinary tokens its strong view damages.
    pub semi_noise: f32,
    /// Fine-tuning (and the semi stage's teacher) writes a checkpoint every this many steps into
    /// its stage directory (`…/transfer/finetune-LABELS-POOL-seedK/`, the semi stage's
    /// `teacher/`); running the same command again continues an interrupted one.
    pub finetune_checkpoint_every: u64,
    /// A fine-tuning step whose loss is NaN or infinite: `stop` (naming the step and the last
    /// checkpoint) or `skip` it, the weights left as they were (10 in a row stop). The semi
    /// stage always skips.
    pub on_nonfinite: NonFinite,
}

impl Default for TextTransferConfig {
    fn default() -> Self {
        Self {
            text_field: "text".into(),
            label_field: "label".into(),
            text_part: "auto".into(),
            finetune_head: FinetuneHead::Auto,
            test_fraction: 0.2,
            split_seed: 0,
            seed: 0,
            pool: "mean".into(),
            max_tokens: 0,
            like: String::new(),
            model: "tiny".into(),
            finetune: FinetuneTable {
                steps: 300,
                batch_size: 16,
                lr: 3e-4,
                weight_decay: 0.01,
            },
            probe: ProbeTable {
                steps: 300,
                batch_size: 64,
                lr: 1e-2,
                weight_decay: 1e-4,
            },
            knn: KnnTable {
                k: 20,
                temperature: 0.1,
            },
            test_limit: 0,
            stage: 0,
            feature_cache: true,
            semi: SemiTable::with_shared_losses(200, 8, 3, 3e-4, 0.01, 100),
            semi_noise: 0.2,
            finetune_checkpoint_every: 100,
            on_nonfinite: NonFinite::Stop,
        }
    }
}

impl TextTransferConfig {
    /// The linear probe's and k-NN's settings.
    pub fn frozen_settings(&self) -> frozen::FrozenSettings {
        protocol_tables::frozen_settings(&self.probe, &self.knn, self.seed)
    }

    /// Where fine-tuning in `dir` keeps its checkpoints, and what it does with a NaN/Inf loss.
    pub fn fit_dir<'a>(&self, dir: &'a Path) -> FitDir<'a> {
        FitDir::new(dir, self.finetune_checkpoint_every, self.on_nonfinite)
    }

    pub fn validate(&self) -> Result<()> {
        in_range("test_fraction", self.test_fraction, 0.01, 0.9)?;
        self.probe.validate()?;
        self.knn.validate()?;
        self.finetune.validate()?;
        self.semi.validate()?;
        in_range("semi_noise", self.semi_noise as f64, 0.0, 1.0)?;
        positive(
            "finetune_checkpoint_every",
            self.finetune_checkpoint_every as f64,
        )?;
        if !["auto", "all", "email-body"].contains(&self.text_part.as_str()) {
            return Err(Error::config(
                "text_part",
                format!(
                    "expected auto, all or email-body, found {:?}",
                    self.text_part
                ),
            ));
        }
        if self.pool != "mean" && self.pool != "cls" {
            return Err(Error::config(
                "pool",
                format!("expected mean or cls, found {:?}", self.pool),
            ));
        }
        Ok(())
    }
}

/// Whether a transfer is a text transfer: from a text run, or onto text data.
pub fn is_text_transfer(from: &Source, data: Option<&str>) -> bool {
    match from {
        Source::Run(run) if is_text_run(run) => true,
        _ => data.is_some_and(|d| d.starts_with("text:") || d.starts_with("jsonl:")),
    }
}

pub struct TextTransferRequest {
    pub from: Source,
    /// Where the frozen protocols cache document vectors; `None` = `RUN/features/` for a
    /// pretrained run, no cache for the baselines (`feature_cache = false`: never).
    pub cache_dir: Option<PathBuf>,
    /// Labelled `jsonl:` data; defaults to the run's pretraining data.
    pub data: Option<String>,
    pub protocol: Protocol,
    pub labels_per_class: PerClass,
    pub config: TextTransferConfig,
    pub out: Option<PathBuf>,
    pub device: Device,
    pub quiet: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TextTransferResult {
    pub from: String,
    pub data: String,
    pub protocol: Protocol,
    pub labels_per_class: String,
    pub pool: String,
    pub n_train: usize,
    pub n_test: usize,
    pub accuracy: f32,
    pub macro_f1: f32,
    pub f1_per_class: BTreeMap<String, f32>,
    /// Accuracy of always answering the most common class of the test set.
    pub majority_accuracy: f32,
    pub seed: u64,
    pub wall_s: f64,
    pub evaluated_on: String,
    /// Held-out documents left out because the pretrained run (or `like`) trained on them.
    #[serde(default)]
    pub left_out_pretrained_on: usize,
    /// Which documents the tokenizer was trained on (labels are never used for it).
    #[serde(default)]
    pub tokenizer_trained_on: String,
    /// `text_part`, and how many documents (training and held-out) were read as an e-mail's
    /// subject and body.
    #[serde(default)]
    pub text_part: String,
    #[serde(default)]
    pub read_as_email: usize,
    /// The semi-supervised stage's own numbers (`--protocol semi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semi: Option<super::SemiReport>,
}

/// What a pretrained text run saw: its data, the (seed, fraction) of its held-out split, and
/// which documents its tokenizer was trained on.
struct RunText {
    run: PathBuf,
    data: String,
    seed: u64,
    val_fraction: f64,
    tokenizer: String,
}

impl RunText {
    /// `None` for a run without a readable `config.toml` (nothing known to exclude).
    fn read(run: &Path) -> Option<Self> {
        let cfg: crate::config::TextConfig =
            crate::config::from_toml_file(&run.join("config.toml")).ok()?;
        let only_training =
            crate::engine::run_dir::read_lm_info(run).is_ok_and(|i| i.tokenizer_docs == "training");
        let tokenizer = match cfg.tokenizer.as_str() {
            "" if only_training => format!(
                "the training documents of {} (seed {}, val_fraction {}: the held-out ones left \
                 out; byte-level BPE trained by the run, no labels)",
                cfg.data, cfg.seed, cfg.val_fraction
            ),
            "" => format!(
                "all documents of {} (byte-level BPE trained by the run, no labels)",
                cfg.data
            ),
            "bytes" => "none (byte-level, untrained)".to_string(),
            path => format!("{path} (given to the run)"),
        };
        Some(Self {
            run: run.to_path_buf(),
            data: cfg.data,
            seed: cfg.seed,
            val_fraction: cfg.val_fraction,
            tokenizer,
        })
    }

    /// Whether the run trained on document `index` of `data`.
    fn trained_on(&self, data: &str, index: u64) -> bool {
        self.data == data && !is_validation(self.seed, index, self.val_fraction)
    }
}

/// One labelled document, tokenized.
pub struct Example {
    /// Its position in the data (the feature cache's key).
    pub index: u64,
    pub tokens: Vec<u32>,
    pub label: u32,
}

/// The model to transfer, its tokenizer, and where it came from.
fn load_model(
    from: &Source,
    cfg: &TextTransferConfig,
    device: &Device,
) -> Result<(TransformerSpec, Transformer, Tokenizer)> {
    match from {
        Source::Run(run) => {
            let (info, model, tok) = load_run(run, device)?;
            Ok((info.spec, model, tok))
        }
        Source::Random | Source::Scratch => {
            let (spec, tok) = if cfg.like.is_empty() {
                let tok = Tokenizer::bytes();
                let spec = TransformerSpec::preset(&cfg.model, tok.vocab_size(), true).ok_or_else(
                    || Error::config("model", format!("unknown preset {:?}", cfg.model)),
                )?;
                (spec, tok)
            } else {
                let run = Path::new(&cfg.like);
                let info = read_lm_info(run)?;
                (info.spec, Tokenizer::load(&run.join(&info.tokenizer))?)
            };
            let model = crate::platform::device::seeded(device, cfg.seed, || spec.init(device));
            Ok((spec, model, tok))
        }
    }
}

/// One vector per example ([b, d]): mean of its final states, or the `<cls>` state.
fn pooled(
    model: &Transformer,
    batch: &[&Example],
    pad_id: u32,
    cls: Option<bool>,
    device: &Device,
) -> Tensor<2> {
    let docs: Vec<&[u32]> = batch.iter().map(|e| e.tokens.as_slice()).collect();
    model.pooled(&docs, pad_id, cls, device)
}

/// The frozen vectors of `examples` ([n, dim] row-major), from the cache where it has them.
fn features(cache: &mut DocVectors, enc: &Encoding, examples: &[&Example]) -> (Vec<f32>, usize) {
    let docs: Vec<(u64, &[u32])> = examples
        .iter()
        .map(|e| (e.index, e.tokens.as_slice()))
        .collect();
    cache.get(enc, &docs)
}

/// What the document vectors of this transfer depend on (see [`text_features`]).
fn cache_key(
    req: &TextTransferRequest,
    spec: &TransformerSpec,
    tok: &Tokenizer,
    data: &str,
    max_tokens: usize,
) -> Result<CacheKey> {
    let cfg = &req.config;
    let encoder = match &req.from {
        Source::Run(run) => format!("weights sha256 {}", content_digest(&lm_weights_file(run)?)?),
        _ => format!("random weights, seed {}, {spec:?}", cfg.seed),
    };
    let path = data.split_once(':').map_or(data, |(_, p)| p);
    Ok(CacheKey::default()
        .with("encoder", encoder)
        .with("tokenizer", tok.fingerprint())
        .with("data", data)
        .with("data_sha256", content_digest(Path::new(path))?)
        .with("text_field", cfg.text_field.as_str())
        .with("text_part", cfg.text_part.as_str())
        .with("pool", cfg.pool.as_str())
        .with("stage", cfg.stage.to_string())
        .with("max_tokens", max_tokens.to_string()))
}

/// The labelled documents of `data` (fields from `cfg`), or a usage error for unlabelled text
/// naming the key to set with `set_flag` (`--set`, or compare's `--transfer-set`).
pub fn open_labelled(data: &str, cfg: &TextTransferConfig, set_flag: &str) -> Result<TextSource> {
    let source = TextSource::open(
        data,
        &Fields {
            text: cfg.text_field.clone(),
            label: Some(cfg.label_field.clone()),
        },
    )?;
    if !source.is_labelled() {
        return Err(Error::Usage(format!(
            "{data}: plain text has no labels; transfer needs labelled documents, e.g. \
             --data jsonl:FILE with a `{}` field ({set_flag} label_field=NAME)",
            cfg.label_field
        )));
    }
    Ok(source)
}

/// A transformer with a linear head on its document vector.
#[derive(Module, Debug)]
pub struct TextClassifier {
    pub lm: Transformer,
    pub head: LinearHead,
}

impl TextClassifier {
    /// Logits [b, classes] of `docs` (token ids, each already cut to the model's length).
    pub fn logits(
        &self,
        docs: &[&[u32]],
        pad_id: u32,
        cls: Option<bool>,
        device: &Device,
    ) -> Tensor<2> {
        self.head.forward(self.lm.pooled(docs, pad_id, cls, device))
    }
}

pub fn transfer_text(req: &TextTransferRequest) -> Result<(TextTransferResult, PathBuf)> {
    let t0 = Instant::now();
    let cfg = &req.config;
    cfg.validate()?;
    let data = match (&req.data, &req.from) {
        (Some(d), _) => d.clone(),
        (None, Source::Run(run)) => read_lm_info(run)?.data,
        (None, _) => {
            return Err(Error::Usage(
                "--data jsonl:PATH is required with --from random|scratch".into(),
            ))
        }
    };
    if req.from == Source::Scratch && !req.protocol.trains_encoder() {
        return Err(Error::Usage(
            "--from scratch trains the model on the labels, so it needs --protocol finetune or semi"
                .into(),
        ));
    }
    if req.from == Source::Random && req.protocol.trains_encoder() {
        return Err(Error::Usage(format!(
            "--from random is the frozen floor (linear, knn); --protocol {} trains the model: use \
             --from scratch",
            req.protocol.name()
        )));
    }
    if cfg.stage != 0 && req.protocol.trains_encoder() {
        return Err(Error::config(
            "stage",
            "fine-tuning trains the whole model and reads its final states; stage applies to \
             the linear and knn protocols",
        ));
    }
    let source = open_labelled(&data, cfg, "--set")?;
    let (spec, model, tok) = load_model(&req.from, cfg, &req.device)?;
    if cfg.stage > spec.layers {
        return Err(Error::config(
            "stage",
            format!(
                "the transformer has {} blocks (stages 1 to {0}, 0 = the final states), found {}",
                spec.layers, cfg.stage
            ),
        ));
    }
    let max_tokens = if cfg.max_tokens == 0 {
        spec.max_len
    } else {
        cfg.max_tokens.min(spec.max_len)
    };
    // `<cls>`: last for the causal model, first for the bidirectional one.
    let cls = (cfg.pool == "cls").then_some(!spec.causal);
    // The run whose pretraining text must not be tested on: the pretrained one, or the run the
    // baselines are built like (so both are evaluated on the same documents).
    let seen = match &req.from {
        Source::Run(run) => RunText::read(run),
        _ if !cfg.like.is_empty() => RunText::read(Path::new(&cfg.like)),
        _ => None,
    };
    let mut left_out = 0usize;
    let mut emails = 0usize;
    let mut names: BTreeMap<String, u32> = BTreeMap::new();
    let mut raw: Vec<(u64, Vec<u32>, String, bool)> = Vec::new();
    for doc in source.docs() {
        let doc = doc?;
        let label = doc.label.clone().unwrap_or_default();
        names.entry(label.clone()).or_insert(0);
        let keep = if cls.is_some() {
            max_tokens - 1
        } else {
            max_tokens
        };
        let body = match cfg.text_part.as_str() {
            "email-body" => true,
            "auto" => is_email(&doc.text),
            _ => false,
        };
        emails += usize::from(body);
        let mut tokens = if body {
            tok.encode_prefix(&subject_and_body(&doc.text), keep)
        } else {
            tok.encode_prefix(&doc.text, keep)
        };
        if tokens.is_empty() && cls.is_none() {
            tokens.push(tok.eos_id());
        }
        match cls {
            Some(true) => tokens.insert(0, tok.cls_id()),
            Some(false) => tokens.push(tok.cls_id()),
            None => {}
        }
        let test = is_validation(cfg.split_seed, doc.index, cfg.test_fraction);
        if test
            && seen
                .as_ref()
                .is_some_and(|r| r.trained_on(&data, doc.index))
        {
            // Pretraining text: testing on it would flatter the pretrained model.
            left_out += 1;
            continue;
        }
        raw.push((doc.index, tokens, label, test));
    }
    if left_out > 0 {
        let r = seen.as_ref().expect("a run");
        eprintln!(
            "warning: {left_out} held-out documents of {data} were pretraining text of {} (its \
             val_fraction {} with seed {} does not cover test_fraction {} with split_seed {}); \
             they are left out of the evaluation. Pretrain with val_fraction >= test_fraction \
             and seed = split_seed to test on all of them.",
            r.run.display(),
            r.val_fraction,
            r.seed,
            cfg.test_fraction,
            cfg.split_seed
        );
    }
    if names.len() < 2 {
        return Err(Error::Usage(format!(
            "{data}: found {} distinct value(s) of the label field `{}`; a classification task needs at least 2",
            names.len(),
            cfg.label_field
        )));
    }
    for (i, v) in names.values_mut().enumerate() {
        *v = i as u32;
    }
    let class_names: Vec<String> = names.keys().cloned().collect();
    let classes = class_names.len();
    let mut pool = Vec::new();
    let mut test = Vec::new();
    for (index, tokens, label, is_test) in raw {
        let e = Example {
            index,
            tokens,
            label: names[&label],
        };
        if is_test {
            test.push(e);
        } else {
            pool.push(e);
        }
    }
    if cfg.test_limit > 0 && test.len() > cfg.test_limit {
        // A seeded sample: the data may be ordered by class (SpamAssassin: ham, then spam).
        let keep = super::split::sample_limit((0..test.len()).collect(), cfg.test_limit, 0);
        let mut slots: Vec<Option<Example>> = test.into_iter().map(Some).collect();
        test = keep.iter().filter_map(|&i| slots[i].take()).collect();
    }
    if test.is_empty() {
        return Err(Error::config(
            "test_fraction",
            format!("{data}: no document fell into the held-out split; raise test_fraction"),
        ));
    }
    let pool_labels: Vec<u32> = pool.iter().map(|e| e.label).collect();
    let chosen: Vec<&Example> =
        labels::balanced_subset(&pool_labels, req.labels_per_class, cfg.seed)?
            .into_iter()
            .map(|i| &pool[i])
            .collect();
    let train_y: Vec<u32> = chosen.iter().map(|e| e.label).collect();
    let test_refs: Vec<&Example> = test.iter().collect();
    let test_y: Vec<u32> = test.iter().map(|e| e.label).collect();
    if !req.quiet {
        eprintln!(
            "{} on {data}: {} labelled training documents, {} held-out, classes {}",
            req.protocol.name(),
            chosen.len(),
            test.len(),
            class_names.join(", ")
        );
        if emails > 0 {
            eprintln!(
                "{emails} documents read as e-mails: their Subject: line and body, without the \
                 headers (text_part = {}; `--set text_part=all` reads them whole)",
                cfg.text_part
            );
        }
    }
    let pad_id = tok.pad_id();
    let mut semi_report = None;
    // LP-FT's starting head for the protocols that train the encoder.
    let head = match req.protocol {
        Protocol::Finetune | Protocol::Semi => {
            let enc = Encoding {
                model: &model,
                pad_id,
                cls,
                stage: 0,
                max_tokens,
                device: &req.device,
            };
            probe_first_head(&enc, &chosen, &pool, classes, req)?
        }
        Protocol::Linear | Protocol::Knn => None,
    };
    let pred = match req.protocol {
        Protocol::Linear | Protocol::Knn => {
            let dir = match (&req.cache_dir, &req.from) {
                _ if !cfg.feature_cache => None,
                (Some(d), _) => Some(d.clone()),
                (None, Source::Run(run)) => Some(run.join("features")),
                (None, _) => None,
            };
            let mut cache = match dir {
                Some(d) => DocVectors::open(&d, cache_key(req, &spec, &tok, &data, max_tokens)?),
                None => DocVectors::in_memory(),
            };
            let enc = Encoding {
                model: &model,
                pad_id,
                cls,
                stage: cfg.stage,
                max_tokens,
                device: &req.device,
            };
            let (train_x, dim) = features(&mut cache, &enc, &chosen);
            let (test_x, _) = features(&mut cache, &enc, &test_refs);
            // The linear probe's standardiser is fitted on unlabelled documents of the pool.
            let pool_x = if req.protocol == Protocol::Linear {
                Some(features(&mut cache, &enc, &standardizer_docs(&pool, cfg.seed)).0)
            } else {
                None
            };
            if !req.quiet && cache.computed() > 0 {
                eprintln!("encoded {} documents", cache.computed());
            }
            cache.save()?;
            let f = frozen::Features {
                train_x,
                train_y: train_y.clone(),
                test_x,
                pool_x,
                dim,
                classes,
            };
            frozen::predict(req.protocol, f, &cfg.frozen_settings(), &req.device)
        }
        Protocol::Finetune => {
            let stage = super::semi::stage_dir(&result_path(req, &data));
            let record = super::semi::StageRecord {
                teacher_key: finetune_key(req, &spec, &tok, &data, &chosen, head.is_some())?,
                student_init: "finetune".into(),
                settings: serde_json::Value::Null,
            };
            super::semi::prepare_finetune_dir(&stage, &record)?;
            let at = cfg.fit_dir(&stage);
            let net =
                train_classifier(model, &spec, &chosen, classes, pad_id, cls, head, req, &at)?;
            predict(&net, &test_refs, pad_id, cls, &req.device)
        }
        Protocol::Semi => {
            let pool_refs: Vec<&Example> = pool.iter().collect();
            let stage = super::semi::stage_dir(&result_path(req, &data));
            let (pred, report) = semi_stage(
                model, &spec, &tok, &chosen, &pool_refs, &test_refs, classes, pad_id, cls, head,
                req, &data, &stage,
            )?;
            semi_report = Some(report);
            pred
        }
    };
    let accuracy = scores::accuracy(&pred, &test_y);
    let f1 = scores::f1_per_class(&pred, &test_y, classes);
    let majority = (0..classes as u32)
        .map(|c| test_y.iter().filter(|&&y| y == c).count())
        .max()
        .unwrap_or(0) as f32
        / test_y.len() as f32;
    let result = TextTransferResult {
        from: req.from.label(),
        data: data.clone(),
        protocol: req.protocol,
        labels_per_class: req.labels_per_class.label(),
        pool: cfg.pool.clone(),
        n_train: chosen.len(),
        n_test: test.len(),
        accuracy,
        macro_f1: scores::macro_f1(&pred, &test_y, classes),
        f1_per_class: class_names.iter().cloned().zip(f1).collect(),
        majority_accuracy: majority,
        seed: cfg.seed,
        wall_s: t0.elapsed().as_secs_f64(),
        evaluated_on: if left_out > 0 {
            format!(
                "held-out {:.0}% of the documents (split_seed {}), less {left_out} the pretrained run trained on",
                cfg.test_fraction * 100.0,
                cfg.split_seed
            )
        } else {
            format!(
                "held-out {:.0}% of the documents (split_seed {})",
                cfg.test_fraction * 100.0,
                cfg.split_seed
            )
        },
        left_out_pretrained_on: left_out,
        text_part: cfg.text_part.clone(),
        read_as_email: emails,
        tokenizer_trained_on: match &seen {
            Some(r) => r.tokenizer.clone(),
            None if matches!(req.from, Source::Run(_)) || !cfg.like.is_empty() => {
                "unknown (the run has no readable config.toml)".to_string()
            }
            None => "none (byte-level, untrained)".to_string(),
        },
        semi: semi_report,
    };
    let path = result_path(req, &data);
    let dir = path.parent().expect("a result file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(&path, &serde_json::to_vec_pretty(&result).expect("json"))?;
    Ok((result, path))
}

/// Where a text transfer's result JSON goes: `--out`, the run's `transfer/`, or
/// `runs/baseline-text-random|scratch/`.
fn result_path(req: &TextTransferRequest, _data: &str) -> PathBuf {
    let cfg = &req.config;
    let dir = match (&req.out, &req.from) {
        (Some(d), _) => d.clone(),
        (None, Source::Run(run)) => run.join("transfer"),
        (None, s) => PathBuf::from(format!("runs/baseline-text-{}", s.label())),
    };
    dir.join(format!(
        "{}-{}-{}-seed{}.json",
        req.protocol.name(),
        req.labels_per_class.label(),
        cfg.pool,
        cfg.seed
    ))
}

/// `--protocol semi` on text: the teacher (fine-tuned, or cached in `stage`), its logits on
/// the pool, the student ([`super::text_semi`]); the student's predictions for `test`.
#[allow(clippy::too_many_arguments)]
fn semi_stage(
    model: Transformer,
    spec: &TransformerSpec,
    tok: &Tokenizer,
    chosen: &[&Example],
    pool: &[&Example],
    test: &[&Example],
    classes: usize,
    pad_id: u32,
    cls: Option<bool>,
    head: Option<LinearHead>,
    req: &TextTransferRequest,
    data: &str,
    stage: &Path,
) -> Result<(Vec<u32>, super::SemiReport)> {
    use super::semi;
    use super::text_semi;
    let cfg = &req.config;
    let device = &req.device;
    // Text has no image views: the weak view is the document, the strong one its noised copy.
    let no_views = semi::WeakSettings {
        crop_scale_min: 1.0,
        flip: false,
    };
    let settings = semi::SemiSettings::from_table(
        &cfg.semi,
        no_views,
        crate::data::randaugment::StrongConfig::default(),
        cfg.seed,
    );
    let mut record_settings = serde_json::to_value(&settings).expect("settings serialise");
    record_settings["noise"] = serde_json::json!(cfg.semi_noise);
    let record = semi::StageRecord {
        teacher_key: finetune_key(req, spec, tok, data, chosen, head.is_some())?,
        student_init: "teacher".into(),
        settings: record_settings,
    };
    semi::prepare_dir(stage, &record)?;
    let template = TextClassifier {
        lm: model.clone(),
        head: LinearHead::new(spec.d_model, classes, device),
    };
    let t0 = Instant::now();
    let (teacher, logits) = match semi::cached_teacher(stage, template) {
        Some(cached) => cached,
        None => {
            let teacher_dir = stage.join("teacher");
            let at = cfg.fit_dir(&teacher_dir);
            let teacher =
                train_classifier(model, spec, chosen, classes, pad_id, cls, head, req, &at)?;
            let logits = text_semi::logits_on(&teacher, pool, pad_id, cls, device);
            semi::cache_teacher(stage, &teacher, &logits, classes)?;
            (teacher, logits)
        }
    };
    let teacher_s = t0.elapsed().as_secs_f64();
    let test_y: Vec<u32> = test.iter().map(|e| e.label).collect();
    let teacher_accuracy = scores::accuracy(&predict(&teacher, test, pad_id, cls, device), &test_y);
    let specials: Vec<bool> = (0..tok.vocab_size() as u32)
        .map(|i| tok.is_special(i))
        .collect();
    let data = text_semi::TextSemiData {
        labelled: chosen,
        pool,
        teacher_logits: &logits,
        classes,
        pad: pad_id,
        cls,
        noise: text_semi::Noise {
            rate: cfg.semi_noise,
            mask: (!spec.causal).then(|| tok.mask_id()),
            ordinary: std::sync::Arc::new(
                (0..tok.vocab_size() as u32)
                    .filter(|&i| !tok.is_special(i))
                    .collect(),
            ),
            special: std::sync::Arc::new(specials),
        },
    };
    let run = semi::StageRun {
        dir: stage,
        checkpoint_every: cfg.semi.checkpoint_every,
        eval_every: 0,
        workers: 1,
        quiet: req.quiet,
    };
    let t1 = Instant::now();
    let student = text_semi::train_student(teacher, &data, &settings, &run, device)?;
    super::semi::save_student(&student, stage)?;
    Ok((
        predict(&student, test, pad_id, cls, device),
        super::SemiReport {
            teacher_accuracy,
            pool: pool.len(),
            teacher_s,
            student_s: t1.elapsed().as_secs_f64(),
            stage_dir: stage.display().to_string(),
        },
    ))
}

/// A digest of everything fine-tuning (alone, or as the semi stage's teacher) depends on: the
/// weights it starts from (the run's, or the baseline's architecture and seed), the tokenizer,
/// the data, the labelled documents, the settings and whether LP-FT's probe gives the head.
fn finetune_key(
    req: &TextTransferRequest,
    spec: &TransformerSpec,
    tok: &Tokenizer,
    data: &str,
    chosen: &[&Example],
    probe_head: bool,
) -> Result<String> {
    use sha2::{Digest, Sha256};
    let cfg = &req.config;
    let mut key = Sha256::new();
    key.update(match &req.from {
        Source::Run(run) => content_digest(&lm_weights_file(run)?)?,
        other => format!("{} {} {:?} {}", other.label(), cfg.like, spec, cfg.seed),
    });
    key.update(tok.fingerprint().as_bytes());
    key.update(data.as_bytes());
    for e in chosen {
        key.update(e.index.to_le_bytes());
    }
    key.update(
        format!(
            "{} {} {} {} {} {} {} {} {:?}",
            cfg.finetune.steps,
            cfg.finetune.lr,
            cfg.finetune.batch_size,
            cfg.finetune.weight_decay,
            cfg.text_part,
            cfg.pool,
            cfg.max_tokens,
            cfg.seed,
            // LP-FT's head, and the probe that made it.
            probe_head.then_some(&cfg.probe)
        )
        .as_bytes(),
    );
    Ok(format!("{:x}", key.finalize()))
}

/// LP-FT's starting head when `finetune_head` asks for one (`auto`: for a pretrained run): a
/// linear probe on the frozen final document vectors of the labelled documents (`enc`),
/// standardised on up to `TEXT_STANDARDIZER_POOL` pool documents, folded into one affine map.
fn probe_first_head(
    enc: &Encoding,
    chosen: &[&Example],
    pool: &[Example],
    classes: usize,
    req: &TextTransferRequest,
) -> Result<Option<LinearHead>> {
    let cfg = &req.config;
    if !cfg.finetune_head.probe_first(&req.from) {
        return Ok(None);
    }
    let mut vectors = DocVectors::in_memory();
    let (train_x, dim) = features(&mut vectors, enc, chosen);
    let (pool_x, _) = features(&mut vectors, enc, &standardizer_docs(pool, cfg.seed));
    let train_y: Vec<u32> = chosen.iter().map(|e| e.label).collect();
    let probe = linear_probe::train_probe(
        train_x,
        &train_y,
        Some(&pool_x),
        dim,
        classes,
        &cfg.frozen_settings().probe,
        &req.device,
    );
    Ok(Some(probe.folded(&req.device)))
}

/// The unlabelled pool documents a linear probe's standardiser is fitted on: up to
/// `TEXT_STANDARDIZER_POOL` of them, a sample seeded by `seed`.
fn standardizer_docs(pool: &[Example], seed: u64) -> Vec<&Example> {
    let idx = super::split::sample_limit((0..pool.len()).collect(), TEXT_STANDARDIZER_POOL, seed);
    idx.iter().map(|&i| &pool[i]).collect()
}

/// The classes `net` predicts for `docs`.
pub(crate) fn predict(
    net: &TextClassifier,
    docs: &[&Example],
    pad_id: u32,
    cls: Option<bool>,
    device: &Device,
) -> Vec<u32> {
    let mut pred = Vec::with_capacity(docs.len());
    for chunk in docs.chunks(32) {
        let logits = net
            .head
            .forward(pooled(&net.lm, chunk, pad_id, cls, device));
        pred.extend(logits.argmax(1).into_data().iter::<i64>().map(|p| p as u32));
    }
    pred
}
