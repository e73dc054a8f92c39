//! The one error type of the data layer, grouped by what went wrong.
//!
//! Every variant names the file (or, for data held in memory, a label such as
//! `<embedded>/train-images`) so a message printed once in `main` tells the user
//! where to look, what was expected and what was found.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The bytes are not in the expected format (wrong magic number, bad dimensions, trailing bytes).
    #[error("{}: {what} at byte {offset}: expected {expected}, found {found}", path.display())]
    Format {
        path: PathBuf,
        offset: u64,
        what: String,
        expected: String,
        found: String,
    },

    /// The file ends before the data it announces (or, for record files, mid-record).
    #[error("{}: file is truncated{}: expected {expected_bytes} bytes, found {found_bytes}", path.display(), record.map(|r| format!(" in record {r}")).unwrap_or_default())]
    Truncated {
        path: PathBuf,
        /// Index of the incomplete record, for formats made of fixed-size records.
        record: Option<u64>,
        expected_bytes: u64,
        found_bytes: u64,
    },

    /// Two things that must agree do not (label count vs image count, image sizes).
    #[error("{}: {what} mismatch: expected {expected}, found {found}", path.display())]
    Mismatch {
        path: PathBuf,
        what: String,
        expected: String,
        found: String,
    },

    /// An image file could not be decoded.
    #[error("{}: cannot decode image: {message} (use --skip-bad to skip undecodable files)", path.display())]
    Decode { path: PathBuf, message: String },

    /// A member of a container (a `.tar` shard's member, a Parquet table's row) is damaged or
    /// not what was expected; `message` says what was expected and what was found.
    #[error("{}: {member}: {message} (use --skip-bad to skip bad members)", path.display())]
    Member {
        path: PathBuf,
        member: String,
        message: String,
    },

    /// Nothing to read.
    #[error("{}: {message}", path.display())]
    Empty { path: PathBuf, message: String },

    /// A line of a line-based file (JSON lines) is not what was expected: bad JSON, a missing or
    /// mistyped field. `message` says what was expected and what was found.
    #[error("{}: line {line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: u64,
        message: String,
    },

    /// A tokenizer file is not a valid tokenizer, or not one pretext can use.
    #[error("{}: not a usable tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// The data spec (`FORMAT:PATH`) is malformed or names an unknown format.
    #[error("bad data spec `{spec}`: {message}")]
    Spec { spec: String, message: String },
}

impl DataError {
    /// Shorthand for wrapping an io::Error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.into(),
            error: source,
        }
    }
}
