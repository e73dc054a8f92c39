//! Run configuration: defaults in code, optional TOML preset files, `--set key=value` overrides.
//! Unknown keys are errors. The resolved config is saved as `config.toml` in the run directory.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::Stream;
use crate::error::{Error, Result};
use crate::nn::{BackboneKind, BackboneSpec};

mod checks;
mod text;

pub(crate) use checks::{
    at_least_one, count_in, crop_scale, fraction_open, in_range, in_range_open, non_negative,
    positive, width_at_most_max,
};

pub use text::{ClipMode, TextConfig};

/// Optimiser choice for pretraining and fine-tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

/// What the training loop does with a step whose loss (or a reported metric) is NaN or infinite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinite {
    /// Stop with a message naming the step and the last good checkpoint.
    Stop,
    /// Leave the weights as they were and go on (stops after 10 skipped steps in a row).
    Skip,
}

/// Pretraining configuration. Task-specific keys live in a table named after the task
/// (e.g. `[rotation]`, or `--set rotation.flip=false`) and are checked by the task itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainConfig {
    /// Pretext task name (see `pretext tasks`).
    pub task: String,
    /// Data spec `FORMAT:PATH` (idx, cifar10, cifar100, stl10, folder).
    pub data: String,
    pub backbone: BackboneKind,
    /// Backbone base width; 0 means the backbone's default.
    pub width: usize,
    /// ViT patch side in pixels; 0 = the preset's (4 for `vit`, 16 for `vit-small`/`vit-base`).
    pub patch_size: usize,
    /// Pretraining step budget.
    pub steps: u64,
    /// Stop at the first step after this many minutes of wall-clock time, with a checkpoint
    /// (`--resume` continues, with the budget afresh); fractions allowed; 0 = no limit.
    pub max_minutes: f64,
    /// Images drawn from the dataset per step (a task may expand each into several inputs).
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    pub weight_decay: f64,
    /// Whether weight decay also pulls biases and the normalisation layers' scale and shift
    /// towards 0. Off (the default, as GPT-2 and nanoGPT): only weight matrices, convolution
    /// kernels and embeddings decay (`engine::optim`); runs before December 6, 2026
    /// decayed every parameter, as `true` does.
    pub decay_biases_and_norms: bool,
    /// SGD momentum (ignored by AdamW).
    pub momentum: f64,
    /// AdamW's β₂ (ignored by SGD): 0.999 (Adam's default); MAE and language models use 0.95.
    pub beta2: f64,
    pub warmup_steps: u64,
    /// Final learning rate of the cosine schedule, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Log metrics every N steps.
    pub log_every: u64,
    /// When the data has labels: k-NN accuracy of the encoder on a fixed labelled subset every N
    /// steps (and at the start and end) in `metrics.jsonl` as `knn`; 0 = off. The labels are
    /// used for this number only.
    pub eval_every: u64,
    /// Write a checkpoint every N steps (and always at the end).
    pub checkpoint_every: u64,
    /// How many checkpoints to keep on disk.
    pub keep_checkpoints: usize,
    pub seed: u64,
    /// Loader worker threads; 0 = half the cores.
    pub workers: usize,
    /// Model replicas stepping on parts of each batch at once, one per core (see
    /// `engine::replicas`); 0 = one per core (CPU; 1 on a GPU). The step is the same whatever
    /// the count (to float rounding): batch norm and SimCLR's negatives span the global batch.
    pub replicas: usize,
    /// Batch norm normalises with the statistics of the whole global batch when it is split
    /// into parts (replicas, MPI ranks); false: each part's own (as before, and as one process
    /// per GPU without SyncBatchNorm in PyTorch), so results depend on the part count.
    pub sync_bn: bool,
    /// Under MPI (`mpirun … pretext pretrain`): compare the ranks' weights every N steps (a
    /// checksum; they must be identical) and stop with an error if they differ; 0 = never.
    pub rank_check_every: u64,
    /// Batches queued ahead of training.
    pub prefetch: usize,
    /// Folder images are resized to this square size.
    pub image_size: usize,
    /// Use at most this many training images; 0 = all.
    pub limit: usize,
    /// NaN or infinite loss: `stop` (default) or `skip` the step.
    pub on_nonfinite: NonFinite,
    /// Folder data: `auto` decodes images from their files on demand (in the loader's
    /// workers) when the folder holds more than 10,000 files, otherwise all at open;
    /// `always` / `never` force either way.
    pub stream: Stream,
    /// Task sections, e.g. `rotation = { flip = true }`.
    #[serde(flatten)]
    pub sections: BTreeMap<String, toml::Value>,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            task: "rotation".into(),
            data: String::new(),
            backbone: BackboneKind::Convnet,
            width: 0,
            patch_size: 0,
            steps: 1000,
            max_minutes: 0.0,
            batch_size: 64,
            optimizer: OptimizerKind::Adamw,
            lr: 2e-3,
            weight_decay: 5e-4,
            decay_biases_and_norms: false,
            momentum: 0.9,
            beta2: 0.999,
            warmup_steps: 50,
            min_lr_ratio: 0.05,
            log_every: 10,
            eval_every: 100,
            checkpoint_every: 200,
            keep_checkpoints: 2,
            seed: 0,
            workers: 0,
            replicas: 0,
            sync_bn: true,
            rank_check_every: 100,
            prefetch: 4,
            image_size: 32,
            limit: 0,
            on_nonfinite: NonFinite::Stop,
            stream: Stream::Auto,
            sections: BTreeMap::new(),
        }
    }
}

impl PretrainConfig {
    pub fn width(&self) -> usize {
        if self.width == 0 {
            self.backbone.default_width()
        } else {
            self.width
        }
    }

    /// The backbone this config names, taking `in_channels` inputs.
    pub fn backbone_spec(&self, in_channels: usize) -> BackboneSpec {
        BackboneSpec {
            kind: self.backbone,
            in_channels,
            width: self.width(),
            patch: self.patch_size,
        }
    }

    /// Range checks that serde cannot express.
    pub fn validate(&self) -> Result<()> {
        positive("steps", self.steps as f64)?;
        positive("batch_size", self.batch_size as f64)?;
        positive("lr", self.lr)?;
        positive("log_every", self.log_every as f64)?;
        positive("checkpoint_every", self.checkpoint_every as f64)?;
        positive("keep_checkpoints", self.keep_checkpoints as f64)?;
        positive("prefetch", self.prefetch as f64)?;
        positive("image_size", self.image_size as f64)?;
        in_range("max_minutes", self.max_minutes, 0.0, 1e9)?;
        width_at_most_max(self.width)?;
        self.backbone.check_shape(self.width(), self.patch_size)?;
        in_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)?;
        fraction_open("beta2", self.beta2)?;
        non_negative("weight_decay", self.weight_decay)?;
        Ok(())
    }

    /// The task's own section (an empty table when absent).
    pub fn section(&self, task: &str) -> toml::Value {
        self.sections
            .get(task)
            .cloned()
            .unwrap_or_else(|| toml::Value::Table(Default::default()))
    }
}

/// Widest backbone accepted (a convnet of width 512 already has ~100M parameters).
pub const MAX_WIDTH: usize = 512;

/// Parse a task section into the task's config struct (which should `deny_unknown_fields`).
pub fn parse_section<T: DeserializeOwned>(task: &str, value: toml::Value) -> Result<T> {
    value.clone().try_into().map_err(|e: toml::de::Error| {
        // Name the key: the first one that fails on its own (sections default every field).
        let culprit = value.as_table().and_then(|t| {
            t.iter().find(|(k, v)| {
                let mut one = toml::Table::new();
                one.insert(k.to_string(), (*v).clone());
                toml::Value::Table(one).try_into::<T>().is_err()
            })
        });
        let key = culprit.map_or(task.to_string(), |(k, _)| format!("{task}.{k}"));
        Error::config(key, friendly(e.message()))
    })
}

/// serde's type names in words a user of the command line knows.
fn friendly(message: &str) -> String {
    message
        .replace("expected usize", "expected a whole number >= 0")
        .replace("expected u64", "expected a whole number >= 0")
        .replace("expected f64", "expected a number")
        .replace("expected f32", "expected a number")
}

/// Known top-level keys of a config struct, taken from its serialised default.
fn known_keys<T: Serialize + Default>() -> Vec<String> {
    match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Build a config: defaults ← preset file (optional) ← `key=value` overrides.
/// `sections` names the keys that may hold a table (task names); anything else unknown is an error.
pub fn resolve<T>(preset: Option<&Path>, sets: &[String], sections: &[&str]) -> Result<T>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut table = match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => unreachable!("configs serialise to tables"),
    };
    if let Some(path) = preset {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("--config {}: {e}", path.display())))?;
        let file: toml::Table = toml::from_str(&text).map_err(|e| {
            Error::config(
                path.display().to_string(),
                e.to_string().trim_end().replace('\n', " "),
            )
        })?;
        for (k, v) in file {
            merge(&mut table, &k, v);
        }
    }
    for set in sets {
        let (key, raw) = set.split_once('=').ok_or_else(|| {
            Error::config(set.clone(), "expected key=value (e.g. --set steps=300)")
        })?;
        let key = key.trim();
        // A value is parsed as TOML (numbers, booleans, quoted strings); otherwise a bare string.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let mut node = &mut table;
        let parts: Vec<&str> = key.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            let entry = node
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            node = entry
                .as_table_mut()
                .ok_or_else(|| Error::config(key, format!("'{part}' is not a table")))?;
        }
        node.insert(parts[parts.len() - 1].to_string(), value);
    }
    let known = known_keys::<T>();
    for k in table.keys() {
        if !known.contains(k) && !sections.contains(&k.as_str()) {
            let mut valid: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
            valid.extend(sections);
            valid.sort();
            return Err(Error::config(
                k,
                format!("unknown key; valid keys: {}", valid.join(", ")),
            ));
        }
    }
    let defaults = match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => unreachable!("configs serialise to tables"),
    };
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            // Name the key: the first one that fails on its own over the defaults.
            let culprit = table.iter().find(|(k, v)| {
                let mut one = defaults.clone();
                one.insert(k.to_string(), (*v).clone());
                toml::Value::Table(one).try_into::<T>().is_err()
            });
            let key = culprit.map_or("config".to_string(), |(k, _)| k.clone());
            Error::config(key, friendly(e.message()))
        })
}

fn merge(table: &mut toml::Table, key: &str, value: toml::Value) {
    match (table.get_mut(key), value) {
        (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
            for (k, v) in src {
                merge(dst, &k, v);
            }
        }
        (_, v) => {
            table.insert(key.to_string(), v);
        }
    }
}

/// Serialise a config as TOML.
pub fn to_toml<T: Serialize>(cfg: &T) -> String {
    toml::to_string_pretty(cfg).expect("configs serialise to TOML")
}

/// Read a config saved by `to_toml`.
pub fn from_toml_file<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text)
        .map_err(|e| Error::config(path.display().to_string(), e.message().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_unknown_keys_fail() {
        let cfg: PretrainConfig = resolve(
            None,
            &[
                "steps=300".into(),
                "batch_size=16".into(),
                "backbone=resnet18".into(),
            ],
            &["rotation"],
        )
        .unwrap();
        assert_eq!(cfg.steps, 300);
        assert_eq!(cfg.batch_size, 16);
        assert_eq!(cfg.backbone, BackboneKind::Resnet18);
        let err = resolve::<PretrainConfig>(None, &["stepz=3".into()], &["rotation"]).unwrap_err();
        assert!(err.to_string().contains("stepz"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let err = resolve::<PretrainConfig>(None, &["steps=-3".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("config"), "{err}");
        let cfg: PretrainConfig =
            resolve(None, &["rotation.flip=false".into()], &["rotation"]).unwrap();
        assert_eq!(
            cfg.section("rotation")
                .get("flip")
                .and_then(|v| v.as_bool()),
            Some(false)
        );
    }

    #[test]
    fn toml_round_trip() {
        let cfg: PretrainConfig = resolve(
            None,
            &["rotation.flip=false".into(), "data=idx:x".into()],
            &["rotation"],
        )
        .unwrap();
        let text = to_toml(&cfg);
        let back: PretrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(to_toml(&back), text);
    }
}
