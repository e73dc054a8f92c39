//! `metrics.jsonl`: one JSON object per logged step, appended as training goes.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
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
            crate::fsio::write_atomic(path, text.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{record}").map_err(|e| Error::io(&self.path, e))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
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
