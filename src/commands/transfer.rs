//! `pretext transfer` from the command line: an encoder (a run, random weights or scratch) on a
//! labelled image or text task with a few labels per class; prints the score and where the result
//! was written.

use std::path::{Path, PathBuf};

use crate::commands::cli::TransferArgs;
use crate::commands::pretrain::open_dataset;
use crate::config::{self, PretrainConfig};
use crate::platform::device;
use crate::transfer::text_transfer::{
    is_text_transfer, transfer_text, TextTransferConfig, TextTransferRequest, TextTransferResult,
};
use crate::transfer::{
    self, labels::PerClass, Protocol, Source, TransferConfig, TransferRequest, TransferResult,
};
use crate::{Error, Result};

/// What [`run`] did: the result (image or text) and the JSON file it was written to.
pub enum Transferred {
    Image(TransferResult, PathBuf),
    Text(TextTransferResult, PathBuf),
}

impl Transferred {
    /// The result JSON the transfer wrote.
    pub fn path(&self) -> &Path {
        match self {
            Transferred::Image(_, p) | Transferred::Text(_, p) => p,
        }
    }
}

pub fn command(a: TransferArgs) -> Result<()> {
    match run(a)? {
        Transferred::Image(result, path) => print_image(&result, &path),
        Transferred::Text(result, path) => print_text(&result, &path),
    }
    Ok(())
}

/// The library half of `pretext transfer` (also the Python package's `transfer`): evaluate the
/// encoder the arguments name, write the result JSON and return it with its path, printing
/// nothing but progress.
pub fn run(a: TransferArgs) -> Result<Transferred> {
    if is_text_transfer(&Source::parse(&a.from), a.data.as_deref()) {
        return text(a);
    }
    let device = device::parse(&a.device)?;
    let from = Source::parse(&a.from);
    let cfg: TransferConfig = config::resolve(a.config.as_deref(), &a.set, &[])?;
    let data = match (&a.data, &from) {
        (Some(d), _) => d.clone(),
        (None, Source::Run(run)) => transfer::read_encoder_info(run)?.data,
        (None, _) => {
            return Err(Error::Usage(
                "--data FORMAT:PATH is required with --from random|scratch".into(),
            ))
        }
    };
    let mut pcfg = PretrainConfig {
        data,
        image_size: cfg.image_size,
        ..Default::default()
    };
    if let Source::Run(run) = &from {
        if let Ok(c) = config::from_toml_file::<PretrainConfig>(&run.join("config.toml")) {
            pcfg.image_size = c.image_size;
            pcfg.stream = c.stream;
        }
    }
    pcfg.limit = 0;
    let dataset = open_dataset(&pcfg, false)?;
    let req = TransferRequest {
        from,
        protocol: Protocol::parse(&a.protocol)?,
        labels_per_class: PerClass::parse(&a.labels_per_class)?,
        config: cfg,
        out: a.out,
        device,
        quiet: a.quiet,
    };
    let (result, path) = transfer::transfer(&dataset, &req)?;
    Ok(Transferred::Image(result, path))
}

fn print_image(result: &TransferResult, path: &Path) {
    println!(
        "{} of {} with {} labels/class ({} train, {} {}): ",
        result.protocol.name(),
        result.from,
        result.labels_per_class,
        result.n_train,
        result.n_test,
        result.evaluated_on
    );
    if let Some(s) = &result.semi {
        println!(
            "teacher (fine-tuned) accuracy: {:.4}; the student learned from {} unlabelled training images",
            s.teacher_accuracy, s.pool
        );
    }
    println!("accuracy: {:.4}", result.accuracy);
    println!("written to {}", path.display());
}

fn text(a: TransferArgs) -> Result<Transferred> {
    let cfg: TextTransferConfig = config::resolve(a.config.as_deref(), &a.set, &[])?;
    let req = TextTransferRequest {
        from: Source::parse(&a.from),
        cache_dir: None,
        data: a.data,
        protocol: Protocol::parse(&a.protocol)?,
        labels_per_class: PerClass::parse(&a.labels_per_class)?,
        config: cfg,
        out: a.out,
        device: device::parse(&a.device)?,
        quiet: a.quiet,
    };
    let (r, path) = transfer_text(&req)?;
    Ok(Transferred::Text(r, path))
}

fn print_text(r: &TextTransferResult, path: &Path) {
    println!(
        "{} on {} with {} labels/class ({} train, {} held-out), from {}:",
        r.protocol.name(),
        r.data,
        r.labels_per_class,
        r.n_train,
        r.n_test,
        r.from
    );
    let f1: Vec<String> = r
        .f1_per_class
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    println!(
        "accuracy: {:.4}  macro-F1: {:.4}  (F1 per class: {}; majority class alone: accuracy {:.4})",
        r.accuracy,
        r.macro_f1,
        f1.join(", "),
        r.majority_accuracy
    );
    println!("written to {}", path.display());
}
