//! The one layout of a run directory, for every task:
//!
//! ```text
//! config.toml          the resolved config
//! run.json             kind (image | text), task, data, and how to rebuild and feed the network
//! metrics.jsonl        one JSON object per logged step
//! checkpoints/step-N/  model.bpk, optim-NAME.bpk (one per optimiser), encoder.safetensors,
//!                      task state (permutations.json, ab_prior.json), state.json
//! encoder.safetensors  the network that transfers (a backbone; a text run's transformer)
//! summary.json         how the run ended
//! ```
//!
//! Runs written before this layout (`encoder.json`, `lm.json`, `model.safetensors`) are still
//! read by `transfer` and `generate`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use burn::prelude::Device;

use super::checkpoint::{self, latest_checkpoint, CheckpointState};
use super::run_loop::LoopOutcome;
use crate::config;
use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::nn::input::{InputSpec, InputTransform};
use crate::nn::transformer::{Transformer, TransformerSpec};
use crate::nn::BackboneSpec;
use crate::platform::fsio::write_atomic;

/// How to rebuild and feed the encoder of an image run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncoderInfo {
    pub backbone: BackboneSpec,
    pub input: InputSpec,
    pub task: String,
    pub data: String,
    /// Conversion of the images before `input` normalisation (e.g. colour → lightness).
    #[serde(default)]
    pub input_transform: InputTransform,
    /// Where the run last started or resumed ([`crate::platform::device::describe`]: the CPU's
    /// threads or the GPU adapter, API and driver); empty in runs before December 6, 2026.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
}

/// How to rebuild a text run's model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TextRunInfo {
    pub spec: TransformerSpec,
    pub task: String,
    pub data: String,
    pub text_field: String,
    /// Relative to the run directory.
    pub tokenizer: String,
    pub seq_len: usize,
    /// Which documents of `data` the run's own tokenizer was trained on: `training` (its
    /// training documents only), or empty: all of them (runs before December 6, 2026) or a
    /// tokenizer the run was given.
    #[serde(default)]
    pub tokenizer_docs: String,
    /// Where the run last started or resumed, as in [`EncoderInfo::device`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
}

/// `run.json`: what kind of run this is and how to rebuild its network.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RunInfo {
    Image(EncoderInfo),
    Text(TextRunInfo),
}

impl RunInfo {
    pub fn task(&self) -> &str {
        match self {
            RunInfo::Image(i) => &i.task,
            RunInfo::Text(i) => &i.task,
        }
    }
}

pub const RUN_INFO: &str = "run.json";
/// The transferable network's weights, at the top of a finished run and in every checkpoint.
pub const WEIGHTS: &str = "encoder.safetensors";

pub fn write_run_info(run: &Path, info: &RunInfo) -> Result<()> {
    write_atomic(
        &run.join(RUN_INFO),
        &serde_json::to_vec_pretty(info).expect("json"),
    )
}

/// `run.json`, or the files of the layout before it (`encoder.json`, `lm.json`). `None` when the
/// directory holds none of them.
pub fn read_run_info(run: &Path) -> Result<Option<RunInfo>> {
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        let path = run.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    };
    let parse_err = |name: &str, e: serde_json::Error| Error::checkpoint(run.join(name), e);
    if let Some(b) = read(RUN_INFO)? {
        return serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| parse_err(RUN_INFO, e));
    }
    if let Some(b) = read("encoder.json")? {
        return serde_json::from_slice(&b)
            .map(|i| Some(RunInfo::Image(i)))
            .map_err(|e| parse_err("encoder.json", e));
    }
    if let Some(b) = read("lm.json")? {
        return serde_json::from_slice(&b)
            .map(|i| Some(RunInfo::Text(i)))
            .map_err(|e| parse_err("lm.json", e));
    }
    Ok(None)
}

fn not_a_run(run: &Path) -> Error {
    Error::Usage(format!(
        "--from {}: no {RUN_INFO} there; pass a directory written by `pretext pretrain`, or 'random' / 'scratch'",
        run.display()
    ))
}

/// The encoder description of an image run (an error naming the directory otherwise).
pub fn read_encoder_info(run: &Path) -> Result<EncoderInfo> {
    match read_run_info(run)? {
        Some(RunInfo::Image(i)) => Ok(i),
        Some(RunInfo::Text(i)) => Err(Error::Usage(format!(
            "--from {}: a {} (text) run; its transformer takes text data (jsonl:PATH), not images",
            run.display(),
            i.task
        ))),
        None => Err(not_a_run(run)),
    }
}

/// The model description of a text run (an error naming the directory otherwise).
pub fn read_lm_info(run: &Path) -> Result<TextRunInfo> {
    match read_run_info(run)? {
        Some(RunInfo::Text(i)) => Ok(i),
        Some(RunInfo::Image(i)) => Err(Error::Usage(format!(
            "{}: a {} (image) run, not a language model",
            run.display(),
            i.task
        ))),
        None => Err(not_a_run(run)),
    }
}

/// Whether `run` holds a text run.
pub fn is_text_run(run: &Path) -> bool {
    matches!(read_run_info(run), Ok(Some(RunInfo::Text(_))))
}

/// The transferable weights of a run: `encoder.safetensors` at the top when the run finished
/// (`model.safetensors` for text runs of the layout before), otherwise the latest checkpoint's.
pub fn transferable_weights(run: &Path) -> Result<PathBuf> {
    for name in [WEIGHTS, "model.safetensors"] {
        let top = run.join(name);
        if top.exists() {
            return Ok(top);
        }
    }
    if let Some((dir, _)) = latest_checkpoint(run)? {
        let path = dir.join(WEIGHTS);
        if path.exists() {
            return Ok(path);
        }
        return Err(Error::Usage(format!(
            "{}: the latest checkpoint {} has no {WEIGHTS} (written by an older pretext); \
             let the run finish with that release, or pretrain it again",
            run.display(),
            dir.display()
        )));
    }
    Err(Error::Usage(format!(
        "{}: no {WEIGHTS} and no checkpoint; is this a pretext run directory?",
        run.display()
    )))
}

/// A text run's model with its trained weights (the finished model, or the latest checkpoint's)
/// and its tokenizer, on `device`.
pub fn load_run(run: &Path, device: &Device) -> Result<(TextRunInfo, Transformer, Tokenizer)> {
    let info = read_lm_info(run)?;
    let tok = Tokenizer::load(&run.join(&info.tokenizer))?;
    let model = crate::platform::device::seeded(device, 0, || info.spec.init(device));
    let weights = lm_weights_file(run)?;
    let model = if weights.extension().is_some_and(|e| e == "bpk") {
        checkpoint::load_module(model, &weights)?
    } else {
        checkpoint::load_weights(model, &weights)?
    };
    Ok((info, model, tok))
}

/// The file a text run's transformer is loaded from: the finished run's weights, else the
/// latest checkpoint's `model.bpk`.
pub fn lm_weights_file(run: &Path) -> Result<PathBuf> {
    if let Some(top) = [WEIGHTS, "model.safetensors"]
        .iter()
        .map(|n| run.join(n))
        .find(|p| p.exists())
    {
        return Ok(top);
    }
    match latest_checkpoint(run)? {
        Some((dir, _)) => Ok(dir.join("model.bpk")),
        None => Err(Error::Usage(format!(
            "{}: no {WEIGHTS} and no checkpoint yet",
            run.display()
        ))),
    }
}

/// What a finished (or stopped) pretraining run reports (`summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainSummary {
    pub task: String,
    pub steps_done: u64,
    pub steps: u64,
    pub final_loss: f32,
    pub final_metrics: Vec<(String, f32)>,
    pub wall_s: f64,
    pub items_per_s: f64,
    pub run_dir: PathBuf,
    pub completed: bool,
    /// Steps skipped for a NaN/Inf loss (`on_nonfinite = "skip"`).
    #[serde(default)]
    pub skipped_steps: u64,
    /// Held-out measurements: the last validation, and the task's own at the end.
    #[serde(default)]
    pub eval: Vec<(String, f32)>,
    /// The run stopped before its step count because its time budget (`max_minutes`) ran out;
    /// `--resume` continues it.
    #[serde(default)]
    pub out_of_time: bool,
    /// The time budget in minutes this part of the run had (0 = none).
    #[serde(default)]
    pub max_minutes: f64,
}

impl PretrainSummary {
    pub fn new(
        task: &str,
        steps: u64,
        run: &Path,
        out: &LoopOutcome,
        eval: Vec<(String, f32)>,
    ) -> Self {
        Self {
            task: task.to_string(),
            steps_done: out.step,
            steps,
            final_loss: out.last.loss,
            final_metrics: out
                .last
                .metrics
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            wall_s: out.wall_s,
            items_per_s: out.items_per_s,
            run_dir: run.to_path_buf(),
            completed: out.step >= steps,
            skipped_steps: out.skipped,
            eval,
            out_of_time: out.out_of_time,
            max_minutes: out.max_minutes,
        }
    }

    /// Whether the run has its transferable weights (`encoder.safetensors` in the run): it
    /// finished its steps, or its time budget ran out (a result at that budget).
    pub fn done(&self) -> bool {
        self.completed || self.out_of_time
    }

    /// The line a command prints when the time budget stopped the run (None otherwise).
    pub fn out_of_time_line(&self) -> Option<String> {
        self.out_of_time.then(|| {
            format!(
                "stopped after {} of {} steps: the time budget of {} minutes ran out; continue with: pretext pretrain --resume {}",
                self.steps_done,
                self.steps,
                self.max_minutes,
                self.run_dir.display()
            )
        })
    }

    pub fn write(&self) -> Result<()> {
        write_atomic(
            &self.run_dir.join("summary.json"),
            &serde_json::to_vec_pretty(self).expect("json"),
        )
    }
}

/// The config and newest checkpoint of the run in `run` for `--resume`; for a new run, `config`
/// after checking that `run` does not already hold one (never overwrite a run's checkpoints).
pub fn run_start<C: Clone + serde::de::DeserializeOwned>(
    run: &Path,
    resume: bool,
    config: &C,
) -> Result<(C, Option<(PathBuf, CheckpointState)>)> {
    if resume {
        let path = run.join("config.toml");
        if !path.exists() {
            return Err(Error::Usage(format!(
                "--resume {}: no config.toml there; is it a run directory?",
                run.display()
            )));
        }
        return Ok((config::from_toml_file(&path)?, latest_checkpoint(run)?));
    }
    if latest_checkpoint(run)?.is_some() {
        return Err(Error::Usage(format!(
            "{} already holds a run with checkpoints; continue it with --resume {} or choose another --out",
            run.display(),
            run.display()
        )));
    }
    Ok((config.clone(), None))
}

/// The error for a checkpoint that could not be written: why, which checkpoint is still intact,
/// and how to continue.
pub fn checkpoint_failed(run: &Path, step: u64, e: &Error) -> Error {
    let kept = match latest_checkpoint(run) {
        Ok(Some((dir, s))) => format!(
            "the last complete checkpoint (step {}) is intact in {}",
            s.step,
            dir.display()
        ),
        _ => "no earlier checkpoint exists".into(),
    };
    Error::Training {
        step,
        message: format!(
            "could not write checkpoint {step}: {}; {kept}; fix the output \
             directory (space, permissions) and continue with --resume {}",
            e.chain(),
            run.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::BackboneKind;

    fn encoder_info() -> EncoderInfo {
        EncoderInfo {
            backbone: BackboneSpec {
                kind: BackboneKind::Convnet,
                in_channels: 1,
                width: 8,
                patch: 0,
            },
            input: InputSpec::square(1, 28, 0.3, 0.3),
            task: "rotation".into(),
            data: "builtin:fashion-mnist-demo".into(),
            input_transform: InputTransform::None,
            device: String::new(),
        }
    }

    #[test]
    fn run_json_round_trips_and_the_older_layout_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert!(read_run_info(run).unwrap().is_none());
        let err = read_encoder_info(run).unwrap_err().to_string();
        assert!(err.contains("run.json"), "{err}");

        // The layout before run.json: encoder.json of an image run.
        let legacy = serde_json::to_vec(&encoder_info()).unwrap();
        std::fs::write(run.join("encoder.json"), legacy).unwrap();
        let info = read_encoder_info(run).unwrap();
        assert_eq!((info.task.as_str(), info.backbone.width), ("rotation", 8));
        assert!(!is_text_run(run));
        let err = read_lm_info(run).unwrap_err().to_string();
        assert!(err.contains("image"), "{err}");

        // run.json wins over the older files and names its kind.
        write_run_info(run, &RunInfo::Image(encoder_info())).unwrap();
        let text: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join(RUN_INFO)).unwrap()).unwrap();
        assert_eq!(text["kind"], "image");
        assert!(matches!(
            read_run_info(run).unwrap(),
            Some(RunInfo::Image(_))
        ));

        // A damaged run.json is an error naming the file, not a fallback.
        std::fs::write(run.join(RUN_INFO), b"{\"kind\": \"image\"").unwrap();
        let err = read_run_info(run).unwrap_err().to_string();
        assert!(err.contains("run.json"), "{err}");
    }

    #[test]
    fn weights_come_from_the_top_then_the_older_name_then_the_latest_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert!(transferable_weights(run).is_err());
        std::fs::write(run.join("model.safetensors"), b"x").unwrap();
        assert_eq!(
            transferable_weights(run).unwrap(),
            run.join("model.safetensors")
        );
        std::fs::write(run.join(WEIGHTS), b"x").unwrap();
        assert_eq!(transferable_weights(run).unwrap(), run.join(WEIGHTS));
    }
}
