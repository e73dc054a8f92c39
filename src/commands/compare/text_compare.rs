//! The text half of `pretext compare`: the language-model tasks pretrained on the documents of a
//! labelled `jsonl:` file into `OUT/pretrain/<task>/`, every cell a text transfer
//! (`transfer::text`) scored by macro-F1 on the held-out documents. The random and scratch
//! baselines take the architecture and tokenizer of the first task's run (`like`), so they are
//! the same network; the frozen protocols share one feature cache in `OUT/features/`, so each
//! document is encoded once per encoder and stage, whatever the number of label draws.

use std::collections::BTreeSet;
use std::path::Path;

use super::plan::{Cell, Encoder, Settings};
use super::{cell_source, own_sets, CompareRequest};
use crate::commands::pretrain::text_run::{pretrain_text, TextPretrainRequest};
use crate::config::{self, TextConfig};
use crate::engine::PretrainSummary;
use crate::error::{Error, Result};
use crate::tasks;
use crate::transfer::text_transfer::{
    open_labelled, transfer_text, TextTransferConfig, TextTransferRequest,
};

pub(super) struct TextJob {
    configs: Vec<TextConfig>,
    tcfg: TextTransferConfig,
    layers: usize,
    classes: usize,
}

impl TextJob {
    pub fn new(req: &CompareRequest, task_names: &[String]) -> Result<Self> {
        let configs: Vec<TextConfig> = task_names
            .iter()
            .map(|t| {
                let cfg: TextConfig =
                    config::resolve(None, &own_sets(t, req), &tasks::text_names())?;
                cfg.validate()?;
                Ok(cfg)
            })
            .collect::<Result<_>>()?;
        let tcfg: TextTransferConfig = config::resolve(None, &req.transfer_sets, &[])?;
        tcfg.validate()?;
        for (key, value, flag) in [
            ("stage", tcfg.stage != 0, "--stages"),
            (
                "like",
                !tcfg.like.is_empty(),
                "--tasks (the first task's run)",
            ),
        ] {
            if value {
                return Err(Error::Usage(format!(
                    "--transfer-set {key}=…: compare sets '{key}' itself; use {flag}"
                )));
            }
        }
        // Layers do not depend on the vocabulary; 260 = the byte-level tokenizer's.
        let layers = configs[0].spec(configs[0].vocab.max(260), true)?.layers;
        let classes = count_classes(&req.data, &tcfg)?;
        Ok(Self {
            configs,
            tcfg,
            layers,
            classes,
        })
    }

    pub fn encoder_stages(&self) -> usize {
        self.layers
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn pretrain(
        &self,
        task: &str,
        dir: &Path,
        resume: bool,
        req: &CompareRequest,
    ) -> Result<PretrainSummary> {
        let cfg = self
            .configs
            .iter()
            .find(|c| c.task == task)
            .expect("a config per task");
        pretrain_text(TextPretrainRequest {
            config: cfg.clone(),
            out: dir.to_path_buf(),
            device: req.device.clone(),
            resume,
            stop_after: None,
            quiet: req.quiet,
        })
    }

    /// Evaluate one cell and write its JSON where the plan expects it; returns its macro-F1.
    pub fn run_cell(&self, cell: &Cell, settings: &Settings, req: &CompareRequest) -> Result<f64> {
        let like = match cell.encoder {
            Encoder::Task(_) => String::new(),
            _ => req
                .out
                .join("pretrain")
                .join(&settings.tasks[0])
                .to_string_lossy()
                .into_owned(),
        };
        let request = TextTransferRequest {
            from: cell_source(cell, req),
            cache_dir: Some(req.out.join("features")),
            data: Some(req.data.clone()),
            protocol: cell.protocol,
            labels_per_class: cell.labels,
            config: TextTransferConfig {
                seed: cell.seed,
                stage: cell.stage,
                like,
                ..self.tcfg.clone()
            },
            out: Some(cell.dir(&req.out)),
            device: req.device.clone(),
            quiet: req.quiet,
        };
        let (result, path) = transfer_text(&request)?;
        // `transfer` names its file after the pooling too; the plan finds cells by its own name.
        let want = cell.path(&req.out);
        if path != want {
            std::fs::rename(&path, &want).map_err(|e| Error::io(&want, e))?;
        }
        Ok(result.macro_f1 as f64)
    }
}

/// Distinct labels of the data (at least two, or a usage error naming the field).
fn count_classes(data: &str, tcfg: &TextTransferConfig) -> Result<usize> {
    let source = open_labelled(data, tcfg, "--transfer-set")?;
    let mut labels = BTreeSet::new();
    for doc in source.docs() {
        if let Some(l) = doc?.label {
            labels.insert(l);
        }
    }
    if labels.len() < 2 {
        return Err(Error::Usage(format!(
            "{data}: found {} distinct value(s) of the label field `{}`; a classification task needs at least 2",
            labels.len(),
            tcfg.label_field
        )));
    }
    Ok(labels.len())
}
