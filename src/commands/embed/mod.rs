//! `pretext embed`: one vector per image (or document) from a run's encoder, for search indexes,
//! curation notebooks and anything else outside pretext; and `pretext similar`, exact cosine
//! nearest neighbours over such a file.
//!
//! ```text
//! pretext embed   --from runs/ssl --data folder:photos --out photos.npy
//! pretext similar --from runs/ssl --index photos.npy --query photos/cat.jpg -k 5
//! ```
//!
//! `--out FILE.npy` writes three files: `FILE.npy` (float32 [rows, dim], row i = line i of the
//! CSV), `FILE.csv` (`row,id,label`: the file path, `train/INDEX` for the binary formats or
//! `FILE:LINE` for documents, and the class where the data has one) and `FILE.json` (which run,
//! data, stage and pooling made the vectors; `similar` reads it). `--out FILE.parquet` writes
//! the same rows as one Parquet file (columns `row`, `id`, `label`, `embedding` as a list of
//! float32; see `parquet.rs`) and `FILE.json` — in a binary built with the cargo feature
//! `parquet` (on by default).
//!
//! - [`images`]: image runs — streamed in order, decoded by worker threads, the run's own
//!   normalisation and input transform.
//! - [`text`]: text runs — documents mean-pooled over the transformer's final hidden states, as
//!   `transfer` does.
//! - [`npy`]: the `.npy` writer and reader; [`similar`]: the top-k search.

pub mod images;
pub mod npy;
#[cfg(feature = "parquet")]
pub mod parquet;
mod run_embed;
pub mod similar;
pub mod text_embed;

pub use run_embed::{command, similar_command};

use std::path::{Path, PathBuf};

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::engine::run_dir::{read_run_info, RunInfo, RUN_INFO};
use crate::error::{Error, Result};
use crate::platform::fsio::write_atomic;

pub struct EmbedRequest {
    /// A pretraining run directory.
    pub from: PathBuf,
    /// Data spec; the run's own data when `None`.
    pub data: Option<String>,
    /// `FILE.npy`; `FILE.csv` and `FILE.json` go beside it.
    pub out: PathBuf,
    /// Image runs: the encoder stage whose pooled output is written (default: the last).
    pub stage: Option<usize>,
    pub skip_bad: bool,
    /// Images (or documents) per forward pass; `None`: 256 images, 32 documents.
    pub batch_size: Option<usize>,
    pub device: Device,
    pub quiet: bool,
}

/// `FILE.json`: what made the vectors of `FILE.npy`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmbedInfo {
    /// `image` or `text`.
    pub kind: String,
    pub run: PathBuf,
    pub task: String,
    pub data: String,
    /// The encoder stage (image runs; the last stage unless `--stage`).
    pub stage: Option<usize>,
    /// How a document becomes one vector (text runs): `mean` of the final hidden states.
    pub pooling: Option<String>,
    pub rows: usize,
    pub dim: usize,
    /// Inputs left out because they could not be decoded (`--skip-bad`).
    pub skipped: usize,
    pub wall_s: f64,
    pub items_per_s: f64,
    /// The run's training throughput (`summary.json`), for comparison.
    pub train_items_per_s: Option<f64>,
}

/// The output files: `FILE.npy` + `FILE.csv`, or `FILE.parquet`; and `FILE.json`.
#[derive(Clone, Debug)]
pub struct OutPaths {
    /// `FILE.npy`, or `FILE.parquet` when `parquet`.
    pub npy: PathBuf,
    pub csv: PathBuf,
    pub json: PathBuf,
    pub parquet: bool,
}

impl OutPaths {
    pub fn new(out: &Path) -> Result<Self> {
        let parquet = match out.extension().and_then(|e| e.to_str()) {
            Some("npy") => false,
            Some("parquet") if cfg!(feature = "parquet") => true,
            Some("parquet") => {
                return Err(Error::Usage(format!(
                    "--out {}: this pretext was built without Parquet output (it is the cargo \
                     feature `parquet`, on by default: build without --no-default-features); write FILE.npy \
                     (+ FILE.csv) instead",
                    out.display()
                )))
            }
            _ => {
                return Err(Error::Usage(format!(
                    "--out {}: expected a file name ending in .npy or .parquet",
                    out.display()
                )))
            }
        };
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(Self {
            npy: out.to_path_buf(),
            csv: out.with_extension("csv"),
            json: out.with_extension("json"),
            parquet,
        })
    }
}

/// What one row of the CSV says about its vector.
#[derive(Clone, Debug, PartialEq)]
pub struct RowId {
    pub id: String,
    pub label: Option<String>,
}

/// The vectors and what they are, written as they come; visible only after [`Sink::finish`].
pub enum Sink {
    /// `FILE.npy` and `FILE.csv`.
    Npy(NpySink),
    #[cfg(feature = "parquet")]
    Parquet(parquet::ParquetWriter, OutPaths),
}

pub struct NpySink {
    npy: npy::NpyWriter,
    csv: csv::Writer<std::fs::File>,
    csv_tmp: PathBuf,
    paths: OutPaths,
}

impl Sink {
    pub fn create(paths: &OutPaths, dim: usize) -> Result<Self> {
        #[cfg(feature = "parquet")]
        if paths.parquet {
            let w = parquet::ParquetWriter::create(&paths.npy, dim)?;
            return Ok(Self::Parquet(w, paths.clone()));
        }
        NpySink::create(paths, dim).map(Self::Npy)
    }

    /// Rows of vectors (`vectors.len() == ids.len() * dim`) and what they are.
    pub fn push(&mut self, vectors: &[f32], ids: &[RowId]) -> Result<()> {
        match self {
            Self::Npy(s) => s.push(vectors, ids),
            #[cfg(feature = "parquet")]
            Self::Parquet(w, _) => w.push(vectors, ids),
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Self::Npy(s) => s.npy.rows(),
            #[cfg(feature = "parquet")]
            Self::Parquet(w, _) => w.rows(),
        }
    }

    /// Stop after an error: no output file appears, the temporary ones are removed.
    pub fn abandon(self) {
        match self {
            Self::Npy(s) => s.abandon(),
            #[cfg(feature = "parquet")]
            Self::Parquet(w, _) => w.abandon(),
        }
    }

    /// Complete the files, then write `info` as `FILE.json`.
    pub fn finish(self, info: &EmbedInfo) -> Result<()> {
        match self {
            Self::Npy(s) => s.finish(info),
            #[cfg(feature = "parquet")]
            Self::Parquet(w, paths) => {
                w.finish(&serde_json::to_string(info).expect("json"))?;
                write_atomic(&paths.json, &serde_json::to_vec_pretty(info).expect("json"))
            }
        }
    }
}

impl NpySink {
    fn create(paths: &OutPaths, dim: usize) -> Result<Self> {
        let npy = npy::NpyWriter::create(&paths.npy, dim)?;
        let csv_tmp = npy::tmp_path(&paths.csv);
        let file = std::fs::File::create(&csv_tmp).map_err(|e| Error::io(&csv_tmp, e))?;
        let mut csv = csv::Writer::from_writer(file);
        csv.write_record(["row", "id", "label"])
            .map_err(|e| csv_err(&csv_tmp, e))?;
        Ok(Self {
            npy,
            csv,
            csv_tmp,
            paths: paths.clone(),
        })
    }

    fn push(&mut self, vectors: &[f32], ids: &[RowId]) -> Result<()> {
        let first = self.npy.rows();
        self.npy.push(vectors)?;
        for (i, r) in ids.iter().enumerate() {
            let row = (first + i).to_string();
            self.csv
                .write_record([row.as_str(), &r.id, r.label.as_deref().unwrap_or("")])
                .map_err(|e| csv_err(&self.csv_tmp, e))?;
        }
        Ok(())
    }

    fn abandon(self) {
        drop(self.csv);
        let _ = std::fs::remove_file(&self.csv_tmp);
        self.npy.abandon();
    }

    fn finish(self, info: &EmbedInfo) -> Result<()> {
        let file = self
            .csv
            .into_inner()
            .map_err(|e| Error::io(&self.csv_tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.csv_tmp, e))?;
        std::fs::rename(&self.csv_tmp, &self.paths.csv)
            .map_err(|e| Error::io(&self.paths.csv, e))?;
        self.npy.finish()?;
        write_atomic(
            &self.paths.json,
            &serde_json::to_vec_pretty(info).expect("json"),
        )
    }
}

fn csv_err(path: &Path, e: csv::Error) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

/// The ids of `FILE.csv` beside an index, in row order (`None` when there is no CSV).
pub fn read_ids(csv_path: &Path) -> Result<Option<Vec<String>>> {
    let file = match std::fs::File::open(csv_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(csv_path, e)),
    };
    let mut ids = Vec::new();
    for rec in csv::Reader::from_reader(file).records() {
        let rec = rec.map_err(|e| csv_err(csv_path, e))?;
        ids.push(rec.get(1).unwrap_or("").to_string());
    }
    Ok(Some(ids))
}

/// Write the vectors of `req.data` under `req.out`; returns what `FILE.json` says.
pub fn embed(req: &EmbedRequest) -> Result<EmbedInfo> {
    let paths = OutPaths::new(&req.out)?;
    if req.batch_size == Some(0) {
        return Err(Error::Usage("--batch-size must be at least 1".into()));
    }
    match read_run_info(&req.from)? {
        Some(RunInfo::Image(info)) => images::embed(req, &info, &paths),
        Some(RunInfo::Text(info)) => text_embed::embed(req, &info, &paths),
        None => Err(Error::Usage(format!(
            "--from {}: no {RUN_INFO} there; pass a directory written by `pretext pretrain`",
            req.from.display()
        ))),
    }
}

/// The run's training throughput from `summary.json`, if it has one.
pub fn train_items_per_s(run: &Path) -> Option<f64> {
    let text = std::fs::read(run.join("summary.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v.get("items_per_s")?.as_f64()
}

/// Whether a data spec names text (`text:` or `jsonl:`).
pub fn is_text_spec(spec: &str) -> bool {
    spec.starts_with("text:") || spec.starts_with("jsonl:")
}
