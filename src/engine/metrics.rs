//! `metrics.jsonl`: one JSON object per logged step, appended as training goes.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct MetricsLog {
    path: PathBuf,
    /// None: a rank other than 0 under MPI, which writes nothing.
    file: Option<File>,
}

impl MetricsLog {
    /// [`MetricsLog::open`] where `write` (rank 0, or the only process), else a log that keeps
    /// nothing.
    pub fn open_if(write: bool, path: &Path, keep_until_step: u64) -> Result<Self> {
        if write {
            return Self::open(path, keep_until_step);
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: None,
        })
    }

    /// Open the log of a run, keeping only records up to `keep_until_step` (what a resumed run
    /// has not yet redone).
    pub fn open(path: &Path, keep_until_step: u64) -> Result<Self> {
        if keep_until_step == 0 {
            let _ = fs::remove_file(path);
        } else if path.exists() {
            let f = File::open(path).map_err(|e| Error::io(path, e))?;
            let kept: Vec<String> = BufReader::new(f)
                .lines()
                .map_while(|l| l.ok())
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step")?.as_u64())
                        .is_some_and(|s| s <= keep_until_step)
                })
                .collect();
            let mut text = kept.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            crate::platform::fsio::write_atomic(path, text.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        match &mut self.file {
            Some(f) => writeln!(f, "{record}").map_err(|e| Error::io(&self.path, e)),
            None => Ok(()),
        }
    }

    pub fn flush(&mut self) -> Result<()> {
        match &self.file {
            Some(f) => f.sync_data().map_err(|e| Error::io(&self.path, e)),
            None => Ok(()),
        }
    }
}

/// Read every record of a metrics log.
pub fn read(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::checkpoint(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}
