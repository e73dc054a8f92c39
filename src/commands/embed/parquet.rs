//! `pretext embed --out FILE.parquet`: the vectors and what they are in one Parquet file, as
//! pandas (`pd.read_parquet`) and pyarrow read it:
//!
//! ```text
//! row        int64             the row number (the .npy row, the CSV's `row`)
//! id         string            the file path, `train/INDEX`, or `FILE:LINE` for documents
//! label      string, nullable  the class where the data has one
//! embedding  list<float32>     the vector (every row the same length, `dim`)
//! ```
//!
//! The file's key-value metadata holds `pretext` (what `FILE.json` says) and `dim`. Written with
//! the `parquet` crate's low-level writer (no Arrow, no compression codec: PLAIN/dictionary
//! encoded, uncompressed), a row group whenever at least [`ROW_GROUP`] rows are buffered (and
//! one for the rest), under a temporary name renamed into place when complete.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::npy::tmp_path;
use super::RowId;
use crate::error::{Error, Result};

/// Rows buffered before a row group is written.
pub const ROW_GROUP: usize = 4096;

const SCHEMA: &str = "message embeddings {
  required int64 row;
  required binary id (STRING);
  optional binary label (STRING);
  required group embedding (LIST) {
    repeated group list {
      required float element;
    }
  }
}";

/// Rows of `dim` floats with their ids, written a row group at a time.
pub struct ParquetWriter {
    writer: SerializedFileWriter<BufWriter<File>>,
    /// The same file, to sync it after the writer is closed.
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    dim: usize,
    rows: usize,
    row: Vec<i64>,
    ids: Vec<ByteArray>,
    labels: Vec<ByteArray>,
    label_def: Vec<i16>,
    values: Vec<f32>,
}

fn err(path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

impl ParquetWriter {
    pub fn create(path: &Path, dim: usize) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let handle = file.try_clone().map_err(|e| Error::io(&tmp, e))?;
        let schema = Arc::new(parse_message_type(SCHEMA).expect("a valid schema"));
        let props = Arc::new(
            WriterProperties::builder()
                .set_created_by(concat!("pretext ", env!("CARGO_PKG_VERSION")).into())
                .build(),
        );
        let writer = SerializedFileWriter::new(BufWriter::new(file), schema, props)
            .map_err(|e| err(&tmp, e))?;
        Ok(Self {
            writer,
            file: handle,
            tmp,
            path: path.to_path_buf(),
            dim,
            rows: 0,
            row: Vec::new(),
            ids: Vec::new(),
            labels: Vec::new(),
            label_def: Vec::new(),
            values: Vec::new(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Append rows: `vectors.len() == ids.len() * dim`.
    pub fn push(&mut self, vectors: &[f32], ids: &[RowId]) -> Result<()> {
        assert_eq!(vectors.len(), ids.len() * self.dim, "rows of {}", self.dim);
        for r in ids {
            self.row.push(self.rows as i64);
            self.rows += 1;
            self.ids.push(ByteArray::from(r.id.as_str()));
            match &r.label {
                Some(l) => {
                    self.labels.push(ByteArray::from(l.as_str()));
                    self.label_def.push(1);
                }
                None => self.label_def.push(0),
            }
        }
        self.values.extend_from_slice(vectors);
        if self.row.len() >= ROW_GROUP {
            self.write_group()?;
        }
        Ok(())
    }

    fn write_group(&mut self) -> Result<()> {
        let n = self.row.len();
        if n == 0 {
            return Ok(());
        }
        let tmp = self.tmp.clone();
        let e = |e| err(&tmp, e);
        // The list column: one value per element, all defined (def 1: the repeated group is
        // present; the element is required), repetition 0 at each row's first element.
        let def = vec![1i16; self.values.len()];
        let rep: Vec<i16> = (0..self.values.len())
            .map(|i| i16::from(i % self.dim != 0))
            .collect();
        let mut group = self.writer.next_row_group().map_err(e)?;
        let mut column = 0;
        while let Some(mut col) = group.next_column().map_err(e)? {
            match column {
                0 => col.typed::<Int64Type>().write_batch(&self.row, None, None),
                1 => col
                    .typed::<ByteArrayType>()
                    .write_batch(&self.ids, None, None),
                2 => col.typed::<ByteArrayType>().write_batch(
                    &self.labels,
                    Some(&self.label_def),
                    None,
                ),
                _ => col
                    .typed::<FloatType>()
                    .write_batch(&self.values, Some(&def), Some(&rep)),
            }
            .map_err(e)?;
            col.close().map_err(e)?;
            column += 1;
        }
        group.close().map_err(e)?;
        self.row.clear();
        self.ids.clear();
        self.labels.clear();
        self.label_def.clear();
        self.values.clear();
        Ok(())
    }

    /// Stop after an error: the temporary file is removed.
    pub fn abandon(self) {
        drop(self.writer);
        let _ = std::fs::remove_file(&self.tmp);
    }

    /// Write the last row group and the footer (with `info_json` as the `pretext` metadata),
    /// then move the file into place.
    pub fn finish(mut self, info_json: &str) -> Result<()> {
        self.write_group()?;
        let tmp = self.tmp.clone();
        self.writer
            .append_key_value_metadata(KeyValue::new("pretext".into(), info_json.to_string()));
        self.writer
            .append_key_value_metadata(KeyValue::new("dim".into(), self.dim.to_string()));
        self.writer.close().map_err(|e| err(&tmp, e))?;
        self.file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::{ListAccessor, RowAccessor};

    #[test]
    fn rows_over_several_row_groups_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.parquet");
        let dim = 3;
        let n = 2 * ROW_GROUP + 123;
        let mut w = ParquetWriter::create(&path, dim).unwrap();
        // Pushed in uneven batches; every third row unlabelled.
        let mut i = 0;
        while i < n {
            let k = (n - i).min(1000);
            let v: Vec<f32> = (i * dim..(i + k) * dim).map(|x| x as f32 * 0.5).collect();
            let ids: Vec<RowId> = (i..i + k)
                .map(|r| RowId {
                    id: format!("doc{r}"),
                    label: (r % 3 != 0).then(|| format!("c{}", r % 2)),
                })
                .collect();
            w.push(&v, &ids).unwrap();
            i += k;
        }
        assert_eq!(w.rows(), n);
        assert!(!path.exists(), "visible only when finished");
        w.finish("{\"rows\": 1}").unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let meta = reader.metadata();
        // Batches of 1000: a group at 5000 rows (the first batch end past 4096), the rest after.
        assert_eq!(meta.num_row_groups(), 2);
        assert_eq!(meta.row_group(0).num_rows(), 5000);
        assert_eq!(meta.file_metadata().num_rows(), n as i64);
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        assert!(kv
            .iter()
            .any(|k| k.key == "dim" && k.value.as_deref() == Some("3")));
        for (r, row) in reader.get_row_iter(None).unwrap().enumerate() {
            let row = row.unwrap();
            assert_eq!(row.get_long(0).unwrap(), r as i64);
            assert_eq!(row.get_string(1).unwrap(), &format!("doc{r}"));
            if r % 3 == 0 {
                assert!(row.get_string(2).is_err(), "row {r}: null label");
            } else {
                assert_eq!(row.get_string(2).unwrap(), &format!("c{}", r % 2));
            }
            let list = row.get_list(3).unwrap();
            assert_eq!(list.len(), dim);
            for j in 0..dim {
                assert_eq!(list.get_float(j).unwrap(), (r * dim + j) as f32 * 0.5);
            }
        }
    }

    #[test]
    fn an_abandoned_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.parquet");
        let mut w = ParquetWriter::create(&path, 2).unwrap();
        w.push(
            &[1.0, 2.0],
            &[RowId {
                id: "a".into(),
                label: None,
            }],
        )
        .unwrap();
        w.abandon();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
