//! The library's error type, grouped by what went wrong. `main` prints the chain once with `{:#}`.

use std::path::PathBuf;

mod data;

pub use data::DataError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A dataset could not be read (the inner error names the file and position).
    #[error(transparent)]
    Data(#[from] DataError),

    /// A bad config key or value (from a preset file or `--set`).
    #[error("config: {key}: {message}")]
    Config { key: String, message: String },

    /// The command line asks for something impossible (unknown task, missing run, …).
    #[error("{0}")]
    Usage(String),

    /// A file of ours (config, checkpoint, metrics, result) could not be read or written.
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint or saved encoder is missing pieces or does not fit the model.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// Training diverged or was stopped.
    #[error("training stopped at step {step}: {message}")]
    Training { step: u64, message: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// Exit code for the binary: 2 for a wrong command line or config, 1 for everything else.
    /// This error and its sources, joined by ": " (what `{:#}` prints for an anyhow chain).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config { .. } | Self::Usage(_) => 2,
            // A data spec that names no format or no file is a bad command line too.
            Self::Data(DataError::Spec { .. }) => 2,
            Self::Data(DataError::Io { error, .. })
                if error.kind() == std::io::ErrorKind::NotFound =>
            {
                2
            }
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
