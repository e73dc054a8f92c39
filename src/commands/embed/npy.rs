//! NumPy `.npy` files of float32 rows (format 1.0, little-endian, C order), written as a stream.
//!
//! Hand-written because the maintained crates do not stream with an unknown row count:
//! `ndarray-npy` writes whole in-memory arrays, `npyz` needs the shape before the first row —
//! and with `--skip-bad` the number of rows is known only at the end. The writer reserves a
//! fixed 128-byte header, appends rows, and rewrites the header with the final shape; the file
//! is written under a temporary name and renamed into place when complete.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Magic, version, header length and the header dict, padded: room for any 64-bit shape.
const HEADER_LEN: usize = 128;

/// The header for a [rows, dim] float32 array, exactly `HEADER_LEN` bytes.
fn header(rows: usize, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&[1, 0]);
    h.extend_from_slice(&((HEADER_LEN - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(HEADER_LEN - 1, b' ');
    h.push(b'\n');
    h
}

/// Rows of `dim` floats appended to a `.npy` file; [`finish`](Self::finish) makes it visible.
pub struct NpyWriter {
    file: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    dim: usize,
    rows: usize,
}

impl NpyWriter {
    pub fn create(path: &Path, dim: usize) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut file = BufWriter::new(file);
        file.write_all(&header(0, dim))
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            file,
            tmp,
            path: path.to_path_buf(),
            dim,
            rows: 0,
        })
    }

    /// Append rows: `data.len()` must be a multiple of `dim`.
    pub fn push(&mut self, data: &[f32]) -> Result<()> {
        assert_eq!(data.len() % self.dim, 0, "npy rows of {} floats", self.dim);
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.file
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.tmp, e))?;
        self.rows += data.len() / self.dim;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Stop without a file: the temporary one is removed.
    pub fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self.file);
        let _ = std::fs::remove_file(tmp);
    }

    /// Write the final shape, sync, and rename into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        let tmp = self.tmp.clone();
        let done = (|| -> std::io::Result<()> {
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(&header(self.rows, self.dim))?;
            let file = self.file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        done.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&self.path, e)
        })?;
        Ok(self.path)
    }
}

/// `.NAME.tmp` beside `path` (the same rule as `fsio::write_atomic`).
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.tmp"))
}

/// A whole [rows, dim] float32 array read back: (data, rows, dim).
pub fn read(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let bad = |msg: String| {
        Error::Usage(format!(
            "{}: {msg}; expected a 2-D float32 .npy written by `pretext embed`",
            path.display()
        ))
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = BufReader::new(file);
    let mut pre = [0u8; 10];
    r.read_exact(&mut pre)
        .map_err(|_| bad("too short for a .npy header".into()))?;
    if &pre[..6] != MAGIC {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let len = match pre[6] {
        1 => u16::from_le_bytes([pre[8], pre[9]]) as usize,
        2 | 3 => {
            let mut more = [0u8; 2];
            r.read_exact(&mut more)
                .map_err(|_| bad("truncated header".into()))?;
            u32::from_le_bytes([pre[8], pre[9], more[0], more[1]]) as usize
        }
        v => return Err(bad(format!("unknown .npy version {v}"))),
    };
    let mut dict = vec![0u8; len];
    r.read_exact(&mut dict)
        .map_err(|_| bad("truncated header".into()))?;
    let dict = String::from_utf8_lossy(&dict);
    if !dict.contains("'descr': '<f4'") {
        return Err(bad(format!(
            "dtype is not little-endian float32: {}",
            dict.trim()
        )));
    }
    if dict.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported".into()));
    }
    let shape = dict
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(|s| s.trim().trim_start_matches('('))
        .ok_or_else(|| bad(format!("no shape in the header: {}", dict.trim())))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(format!("shape ({shape})"))))
        .collect::<Result<_>>()?;
    let [rows, dim] = dims[..] else {
        return Err(bad(format!("shape ({shape}) is not 2-D")));
    };
    let mut bytes = Vec::with_capacity(rows * dim * 4);
    r.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() != rows * dim * 4 {
        return Err(bad(format!(
            "{} data bytes for shape ({rows}, {dim}), expected {}",
            bytes.len(),
            rows * dim * 4
        )));
    }
    let data = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((data, rows, dim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_the_header_is_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let mut w = NpyWriter::create(&path, 3).unwrap();
        w.push(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        w.push(&[-1.5, 0.0, 7.25]).unwrap();
        assert!(!path.exists(), "visible only when finished");
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 9 * 4);
        assert_eq!(HEADER_LEN % 64, 0);
        assert!(String::from_utf8_lossy(&bytes[..HEADER_LEN]).contains("'shape': (3, 3)"));
        let (data, rows, dim) = read(&path).unwrap();
        assert_eq!((rows, dim), (3, 3));
        assert_eq!(data[8], 7.25);
        std::fs::write(&path, b"not npy").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("x.npy"));
    }
}
