//! Image tables in Parquet (`parquet:FILE` or `parquet:DIR`, every `*.parquet` of the folder in
//! name order), the layout Hugging Face datasets use: an image column holding the encoded file
//! (PNG, JPEG, WebP), either binary or a struct with a `bytes` field (`{bytes, path}`), and an
//! optional integer label column. Columns are found by name (`image`/`img`, `label`/`labels`)
//! or else by type (the first binary column that is not a string; the only integer column).
//! Snappy-compressed files (the Hugging Face default) and uncompressed ones read.
//!
//! Opening reads the tables once, a row group at a time: each image's header (format, size,
//! colour type; 1 channel only when every image is grayscale, as for folders) and the labels.
//! It keeps an index entry per image (row group and row: 8 bytes), never the pixels. Training
//! reads row groups in a shuffled order through a shuffle buffer ([`super::streamed`]), keeping a
//! few row groups' encoded bytes in memory at a time ([`CACHED_GROUPS`] plus what the buffer
//! spans), and decodes on the loader's workers.
//!
//! A row without an image (null), bytes that are not an image, a null or negative label, or a
//! damaged file is an error naming the file, the row (and row group) and what was expected and
//! found; with `--skip-bad` the row is left out and counted (a row group that cannot be read is
//! left out whole).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::{get_typed_column_reader, ColumnReader};
use parquet::data_type::{ByteArrayType, Int32Type, Int64Type};
use parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};
use parquet::schema::types::SchemaDescriptor;

use crate::data::decode;
use crate::data::streamed::{Members, Sharded, SHUFFLE_BUFFER};
use crate::data::{DataError, Dataset, ImageSet, OpenOptions, MAX_CLASSES};

/// Row groups' encoded images kept in memory beyond what the shuffle buffer spans.
pub const CACHED_GROUPS: usize = 4;
/// Rows read from a column at a time.
const BATCH: usize = 1024;

/// A row group's image cells (encoded bytes; None where null).
type Cells = Arc<Vec<Option<Vec<u8>>>>;

/// Where the image and label of a table are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    pub image: usize,
    pub label: Option<usize>,
}

/// One row group of one file.
#[derive(Clone, Debug)]
struct Group {
    file: u32,
    group: u32,
    /// The row number of the group's first row in its file.
    first_row: u64,
}

/// The index of a set of Parquet tables: for each kept image its group and row in the group.
#[derive(Debug)]
pub struct TableRows {
    files: Vec<PathBuf>,
    columns: Vec<Columns>,
    groups: Vec<Group>,
    group_of: Vec<u32>,
    row_of: Vec<u32>,
    /// Recently read row groups' image cells (LRU, most recent last).
    cache: Mutex<Vec<(u32, Cells)>>,
    cache_cap: usize,
}

impl TableRows {
    /// The image cells of row group `g`, from the cache or read.
    fn group_cells(&self, g: u32) -> Result<Cells, DataError> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = cache.iter().position(|(k, _)| *k == g) {
                let hit = cache.remove(pos);
                let cells = hit.1.clone();
                cache.push(hit);
                return Ok(cells);
            }
        }
        let grp = &self.groups[g as usize];
        let path = &self.files[grp.file as usize];
        let cols = &self.columns[grp.file as usize];
        let cells = Arc::new(guarded(path, &format!("row group {}", grp.group), || {
            let reader = open_reader(path)?;
            let rg = reader
                .get_row_group(grp.group as usize)
                .map_err(|e| group_err(path, grp.group, e))?;
            read_images(&*rg, cols.image).map_err(|e| group_err(path, grp.group, e))
        })?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.iter().any(|(k, _)| *k == g) {
            if cache.len() >= self.cache_cap {
                cache.remove(0);
            }
            cache.push((g, cells.clone()));
        }
        Ok(cells)
    }
}

impl Members for TableRows {
    fn len(&self) -> usize {
        self.group_of.len()
    }

    fn bytes(&self, i: usize) -> Result<Vec<u8>, DataError> {
        let cells = self.group_cells(self.group_of[i])?;
        match cells.get(self.row_of[i] as usize) {
            Some(Some(b)) => Ok(b.clone()),
            Some(None) => Err(self.row_error(i, "expected image bytes, found null".into())),
            None => Err(self.row_error(
                i,
                format!(
                    "expected the row in its row group, found a group of {} rows",
                    cells.len()
                ),
            )),
        }
    }

    fn chunk(&self, i: usize) -> usize {
        self.group_of[i] as usize
    }

    fn locate(&self, i: usize) -> (PathBuf, String) {
        let g = &self.groups[self.group_of[i] as usize];
        (
            self.files[g.file as usize].clone(),
            format!(
                "row {} (row group {})",
                g.first_row + self.row_of[i] as u64,
                g.group
            ),
        )
    }

    fn memory_bytes(&self) -> usize {
        self.group_of.capacity() * 4
            + self.row_of.capacity() * 4
            + self.groups.capacity() * std::mem::size_of::<Group>()
            + self
                .files
                .iter()
                .map(|p| p.as_os_str().len() + std::mem::size_of::<PathBuf>())
                .sum::<usize>()
    }
}

impl TableRows {
    fn row_error(&self, i: usize, message: String) -> DataError {
        let (path, member) = self.locate(i);
        DataError::Member {
            path,
            member,
            message,
        }
    }
}

fn group_err(path: &Path, group: u32, e: impl std::fmt::Display) -> DataError {
    DataError::Member {
        path: path.to_path_buf(),
        member: format!("row group {group}"),
        message: format!("expected a readable Parquet row group, found damage: {e}"),
    }
}

/// `f`, with a panic inside the Parquet reader turned into an error naming `what`.
fn guarded<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, DataError>,
) -> Result<T, DataError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(DataError::Member {
            path: path.to_path_buf(),
            member: what.to_string(),
            message: "expected a readable Parquet file, found data that crashed the reader".into(),
        })
    })
}

fn open_reader(path: &Path) -> Result<SerializedFileReader<File>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    SerializedFileReader::new(file).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        offset: 0,
        what: "Parquet file".into(),
        expected: "a Parquet file (PAR1 footer and metadata)".into(),
        found: e.to_string(),
    })
}

/// The image and label columns of a schema (see the module doc).
pub fn find_columns(schema: &SchemaDescriptor) -> Result<Columns, String> {
    let cols: Vec<_> = (0..schema.num_columns())
        .map(|i| schema.column(i))
        .collect();
    let is_binary = |i: usize| {
        let c = &cols[i];
        c.physical_type() == PhysicalType::BYTE_ARRAY && c.max_rep_level() == 0
    };
    let is_string = |i: usize| {
        let c = &cols[i];
        matches!(c.logical_type_ref(), Some(LogicalType::String))
            || c.converted_type() == ConvertedType::UTF8
    };
    let is_int = |i: usize| {
        let c = &cols[i];
        matches!(c.physical_type(), PhysicalType::INT32 | PhysicalType::INT64)
            && c.max_rep_level() == 0
    };
    let path = |i: usize| -> Vec<String> {
        cols[i]
            .path()
            .parts()
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect()
    };
    let named = |i: usize, names: &[&str]| {
        let p = path(i);
        match p.as_slice() {
            [one] => names.contains(&one.as_str()),
            [top, leaf] => names.contains(&top.as_str()) && leaf == "bytes",
            _ => false,
        }
    };
    let image = (0..cols.len())
        .find(|&i| is_binary(i) && named(i, &["image", "img"]))
        .or_else(|| {
            (0..cols.len()).find(|&i| is_binary(i) && path(i).last().is_some_and(|l| l == "bytes"))
        })
        .or_else(|| (0..cols.len()).find(|&i| is_binary(i) && !is_string(i)));
    let Some(image) = image else {
        let found: Vec<String> = (0..cols.len())
            .map(|i| format!("{} ({})", cols[i].path(), cols[i].physical_type()))
            .collect();
        return Err(format!(
            "expected an image column (binary, or a struct with a binary `bytes` field), found \
             columns {}",
            if found.is_empty() {
                "none".to_string()
            } else {
                found.join(", ")
            }
        ));
    };
    let label = (0..cols.len())
        .find(|&i| is_int(i) && path(i).len() == 1 && named(i, &["label", "labels"]))
        .or_else(|| {
            let ints: Vec<usize> = (0..cols.len())
                .filter(|&i| is_int(i) && path(i).len() == 1)
                .collect();
            (ints.len() == 1).then(|| ints[0])
        });
    Ok(Columns { image, label })
}

/// A column chunk's reader, after checking what the Parquet crate asserts (it panics on a chunk
/// whose start or length is negative, which a damaged footer can say).
fn column_reader(
    rg: &dyn RowGroupReader,
    col: usize,
) -> Result<ColumnReader, parquet::errors::ParquetError> {
    let chunk = rg.metadata().column(col);
    let start = chunk
        .dictionary_page_offset()
        .unwrap_or(chunk.data_page_offset());
    if start < 0 || chunk.compressed_size() < 0 {
        return Err(parquet::errors::ParquetError::General(format!(
            "expected a column chunk at a non-negative offset and size, found offset {start}, size {}",
            chunk.compressed_size()
        )));
    }
    rg.get_column_reader(col)
}

/// The most rows one row group of images may claim (a footer can claim billions of null rows in a
/// few bytes of run-length encoding; found by the parquet_table fuzz target).
pub const MAX_GROUP_ROWS: usize = 1 << 22;

/// The row count a row group's metadata claims, refused above [`MAX_GROUP_ROWS`].
fn group_rows(rg: &dyn RowGroupReader) -> Result<usize, parquet::errors::ParquetError> {
    let rows = rg.metadata().num_rows().max(0) as usize;
    if rows > MAX_GROUP_ROWS {
        return Err(parquet::errors::ParquetError::General(format!(
            "expected at most {MAX_GROUP_ROWS} rows in a row group of images, found {rows}"
        )));
    }
    Ok(rows)
}

/// The image column of a row group: each row's bytes, None where null.
fn read_images(
    rg: &dyn RowGroupReader,
    col: usize,
) -> Result<Vec<Option<Vec<u8>>>, parquet::errors::ParquetError> {
    let rows = group_rows(rg)?;
    let max_def = rg.metadata().column(col).column_descr().max_def_level();
    let reader = column_reader(rg, col)?;
    if !matches!(reader, ColumnReader::ByteArrayColumnReader(_)) {
        return Err(parquet::errors::ParquetError::General(
            "expected a binary image column".into(),
        ));
    }
    let mut reader = get_typed_column_reader::<ByteArrayType>(reader);
    // `rows` comes from the footer: grow as records arrive rather than trust it up front
    let mut out = Vec::with_capacity(rows.min(BATCH));
    let (mut defs, mut values) = (Vec::new(), Vec::new());
    while out.len() < rows {
        defs.clear();
        values.clear();
        let (records, _, _) = reader.read_records(
            BATCH.min(rows - out.len()),
            Some(&mut defs),
            None,
            &mut values,
        )?;
        if records == 0 {
            break;
        }
        let mut vals = values.drain(..);
        if max_def == 0 {
            out.extend(vals.by_ref().take(records).map(|v| Some(v.data().to_vec())));
        } else {
            for &d in defs.iter().take(records) {
                out.push(if d == max_def {
                    vals.next().map(|v| v.data().to_vec())
                } else {
                    None
                });
            }
        }
    }
    Ok(out)
}

/// The label column of a row group: each row's label, None where null.
fn read_labels(
    rg: &dyn RowGroupReader,
    col: usize,
) -> Result<Vec<Option<i64>>, parquet::errors::ParquetError> {
    let rows = group_rows(rg)?;
    let max_def = rg.metadata().column(col).column_descr().max_def_level();
    // `rows` comes from the footer: grow as records arrive rather than trust it up front
    let mut out = Vec::with_capacity(rows.min(BATCH));
    let mut defs = Vec::new();
    macro_rules! read {
        ($t:ty, $reader:expr) => {{
            let mut reader = get_typed_column_reader::<$t>($reader);
            let mut values = Vec::new();
            while out.len() < rows {
                defs.clear();
                values.clear();
                let (records, _, _) = reader.read_records(
                    BATCH.min(rows - out.len()),
                    Some(&mut defs),
                    None,
                    &mut values,
                )?;
                if records == 0 {
                    break;
                }
                let mut vals = values.iter();
                for k in 0..records {
                    let present = max_def == 0 || defs[k] == max_def;
                    out.push(if present {
                        vals.next().map(|&v| v as i64)
                    } else {
                        None
                    });
                }
            }
        }};
    }
    match column_reader(rg, col)? {
        r @ ColumnReader::Int32ColumnReader(_) => read!(Int32Type, r),
        r @ ColumnReader::Int64ColumnReader(_) => read!(Int64Type, r),
        _ => {
            return Err(parquet::errors::ParquetError::General(
                "expected an integer label column".into(),
            ))
        }
    }
    Ok(out)
}

/// The tables a `parquet:` path names: the file, or every `*.parquet` of the folder.
fn table_paths(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    if !path.is_dir() {
        if path.is_file() {
            return Ok(vec![path.to_path_buf()]);
        }
        return Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(path).map_err(|e| DataError::io(path, e))? {
        let p = e.map_err(|e| DataError::io(path, e))?.path();
        if p.is_file()
            && p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("parquet"))
        {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            message: "no .parquet files in the folder".into(),
        });
    }
    Ok(out)
}

/// Open `parquet:` tables: index them (a row group at a time), then stream.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Dataset, DataError> {
    let size = opts.image_size.unwrap_or(32);
    if size == 0 {
        return Err(DataError::Spec {
            spec: format!("parquet:{}", path.display()),
            message: "image size must be at least 1".into(),
        });
    }
    let files = table_paths(path)?;
    let limit = opts.limit.unwrap_or(usize::MAX);
    let bad = |skipped: &mut usize, e: DataError| -> Result<(), DataError> {
        if opts.skip_bad {
            eprintln!("warning: {e}; skipped (--skip-bad)");
            *skipped += 1;
            Ok(())
        } else {
            Err(e)
        }
    };
    let (mut columns, mut groups) = (Vec::new(), Vec::new());
    let (mut group_of, mut row_of, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let mut labelled: Option<bool> = None;
    let (mut all_gray, mut skipped, mut max_group_rows) = (true, 0usize, 1usize);
    'files: for (f, file) in files.iter().enumerate() {
        let reader = guarded(file, "metadata", || open_reader(file))?;
        let cols =
            find_columns(reader.metadata().file_metadata().schema_descr()).map_err(|found| {
                DataError::Format {
                    path: file.clone(),
                    offset: 0,
                    what: "schema".into(),
                    expected: "an image table".into(),
                    found,
                }
            })?;
        let has_labels = cols.label.is_some();
        if *labelled.get_or_insert(has_labels) != has_labels {
            return Err(DataError::Mismatch {
                path: file.clone(),
                what: "label column".into(),
                expected: format!(
                    "{} like the first table",
                    if has_labels { "none" } else { "one" }
                ),
                found: if has_labels { "one" } else { "none" }.into(),
            });
        }
        let mut first_row = 0u64;
        for g in 0..reader.num_row_groups() {
            let read = guarded(file, &format!("row group {g}"), || {
                let rg = reader
                    .get_row_group(g)
                    .map_err(|e| group_err(file, g as u32, e))?;
                let images =
                    read_images(&*rg, cols.image).map_err(|e| group_err(file, g as u32, e))?;
                let labels = match cols.label {
                    Some(c) => {
                        Some(read_labels(&*rg, c).map_err(|e| group_err(file, g as u32, e))?)
                    }
                    None => None,
                };
                Ok((images, labels))
            });
            let (images, group_labels) = match read {
                Ok(x) => x,
                Err(e) => {
                    bad(&mut skipped, e)?;
                    first_row = first_row
                        .saturating_add(reader.metadata().row_group(g).num_rows().max(0) as u64);
                    continue;
                }
            };
            let gid = groups.len() as u32;
            groups.push(Group {
                file: f as u32,
                group: g as u32,
                first_row,
            });
            max_group_rows = max_group_rows.max(images.len());
            for (r, cell) in images.iter().enumerate() {
                if group_of.len() >= limit {
                    break 'files;
                }
                let row_err = |message: String| DataError::Member {
                    path: file.clone(),
                    member: format!("row {} (row group {g})", first_row + r as u64),
                    message,
                };
                let gray = match cell {
                    None => Err("expected image bytes, found null".to_string()),
                    Some(b) => decode::header_bytes(b).map_err(|m| format!("not an image: {m}")),
                };
                let gray = match gray {
                    Ok(g) => g,
                    Err(m) => {
                        bad(&mut skipped, row_err(m))?;
                        continue;
                    }
                };
                if let Some(ls) = &group_labels {
                    match ls.get(r).copied().flatten() {
                        Some(l) if (0..MAX_CLASSES as i64).contains(&l) => labels.push(l as u32),
                        other => {
                            let found = other.map_or("null".to_string(), |l| l.to_string());
                            bad(
                                &mut skipped,
                                row_err(format!(
                                    "expected a class number label below {MAX_CLASSES}, found {found}"
                                )),
                            )?;
                            continue;
                        }
                    }
                }
                all_gray &= gray;
                group_of.push(gid);
                row_of.push(r as u32);
            }
            first_row += images.len() as u64;
        }
        columns.push(cols);
    }
    while columns.len() < files.len() {
        // files after the limit: never read (their groups are not in the index)
        columns.push(Columns {
            image: 0,
            label: None,
        });
    }
    let n = group_of.len();
    if n == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            message: format!("no readable image rows ({skipped} skipped)"),
        });
    }
    group_of.shrink_to_fit();
    row_of.shrink_to_fit();
    let channels = if all_gray { 1 } else { 3 };
    let (labels, classes) = if labelled == Some(true) {
        let k = labels.iter().copied().max().unwrap_or(0) as usize + 1;
        labels.shrink_to_fit();
        (Some(labels), (0..k).map(|c| c.to_string()).collect())
    } else {
        (None, Vec::new())
    };
    let rows = TableRows {
        files,
        columns,
        groups,
        group_of,
        row_of,
        cache: Mutex::new(Vec::new()),
        // the groups a window of the shuffle buffer spans, and a few more for the workers
        cache_cap: SHUFFLE_BUFFER.div_ceil(max_group_rows) + CACHED_GROUPS,
    };
    let mut train = ImageSet::in_memory(Vec::new(), labels, n, channels, size, size);
    train.stream = Some(Arc::new(Sharded::new(
        Arc::new(rows),
        size,
        channels,
        opts.skip_bad,
    )));
    let name = if path.is_dir() {
        crate::data::idx::dir_name(path)
    } else {
        path.file_stem()
            .map_or_else(|| "parquet".into(), |s| s.to_string_lossy().into_owned())
    };
    Ok(Dataset {
        name,
        train,
        test: None,
        classes,
        skipped,
    })
}

/// How [`write_table`] lays out the image column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageColumn {
    /// `optional group image { optional binary bytes; optional binary path (STRING); }`, as
    /// Hugging Face writes it.
    Struct,
    /// `optional binary img`.
    Binary,
}

/// Write an image table (tests, fuzz seeds, measurements) in Parquet's on-disk format with
/// the `parquet` crate's writer, Snappy-compressed, `row_group` rows per row group: one row
/// per `(image bytes, label)`; None is null; `labels: false` leaves the label column out.
pub fn write_table(
    path: &Path,
    rows: &[(Option<Vec<u8>>, Option<i64>)],
    row_group: usize,
    layout: ImageColumn,
    labels: bool,
) -> Result<(), parquet::errors::ParquetError> {
    use parquet::basic::Compression;
    use parquet::data_type::ByteArray;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let image = match layout {
        ImageColumn::Struct => {
            "optional group image { optional binary bytes; optional binary path (STRING); }"
        }
        ImageColumn::Binary => "optional binary img;",
    };
    let label = if labels { "optional int64 label;" } else { "" };
    let schema = Arc::new(parse_message_type(&format!(
        "message table {{ {image} {label} }}"
    ))?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let file = File::create(path)?;
    let mut writer = SerializedFileWriter::new(file, schema, props)?;
    let top = if layout == ImageColumn::Struct { 2 } else { 1 };
    for group in rows.chunks(row_group.max(1)) {
        let mut g = writer.next_row_group()?;
        let mut column = 0;
        while let Some(mut col) = g.next_column()? {
            match column {
                0 => {
                    let values: Vec<ByteArray> = group
                        .iter()
                        .filter_map(|(b, _)| b.clone().map(ByteArray::from))
                        .collect();
                    let defs: Vec<i16> = group
                        .iter()
                        .map(|(b, _)| if b.is_some() { top } else { 0 })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defs), None)?;
                }
                1 if layout == ImageColumn::Struct => {
                    let values: Vec<ByteArray> =
                        (0..group.iter().filter(|(b, _)| b.is_some()).count())
                            .map(|i| ByteArray::from(format!("{i}.png").as_str()))
                            .collect();
                    let defs: Vec<i16> = group
                        .iter()
                        .map(|(b, _)| if b.is_some() { 2 } else { 0 })
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&values, Some(&defs), None)?;
                }
                _ => {
                    let values: Vec<i64> = group.iter().filter_map(|(_, l)| *l).collect();
                    let defs: Vec<i16> =
                        group.iter().map(|(_, l)| i16::from(l.is_some())).collect();
                    col.typed::<Int64Type>()
                        .write_batch(&values, Some(&defs), None)?;
                }
            }
            col.close()?;
            column += 1;
        }
        g.close()?;
    }
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Stream;

    use crate::data::test_photos::{open_as, opts, photo, PHOTOS};
    const SOME: &[&str] = &[
        "apple.jpg",
        "astronaut.png",
        "baboon.jpg",
        "chelsea.png",
        "orange.jpg",
    ];

    #[test]
    fn a_fuzz_found_label_in_the_hundreds_of_millions_is_a_bad_row_not_a_huge_class_list() {
        // Found by the parquet_table fuzz target: a 4.5 KB table whose label column says
        // 385,875,968 made the reader build a class list of that many names (9 GB).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let bytes = include_bytes!("../../fuzz/corpus/parquet_table/huge-label.parquet");
        std::fs::write(&path, bytes).unwrap();
        let e = open_as("parquet", &path, false).unwrap_err().to_string();
        assert!(e.contains("t.parquet") && e.contains("below 100000"), "{e}");
        match open_as("parquet", &path, true) {
            Ok(ds) => assert!(
                ds.classes.len() <= MAX_CLASSES as usize,
                "{}",
                ds.classes.len()
            ),
            Err(e) => assert!(e.to_string().contains("no readable image rows"), "{e}"),
        }
    }

    #[test]
    fn a_fuzz_found_damaged_footer_gives_named_errors() {
        // Found by the parquet_table fuzz target, where it reached the Parquet crate's assert on a
        // negative column-chunk start (now checked first, in `column_reader`); replaying it in
        // the fuzz harness is what reproduces that path (`cargo fuzz run parquet_table FILE`).
        // Here: every outcome is a named error or a smaller set, never a caught panic.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let bytes = include_bytes!("../../fuzz/corpus/parquet_table/negative-chunk-offset.parquet");
        std::fs::write(&path, bytes).unwrap();
        for skip_bad in [false, true] {
            // an error naming the file (or, skipping, a smaller set), never the crate's panic
            // caught by `guarded`
            let crashed = |e: &DataError| e.to_string().contains("crashed the reader");
            // the options the fuzz target opens with
            let opts = OpenOptions {
                image_size: Some(8),
                skip_bad,
                ..Default::default()
            };
            match crate::data::open(&format!("parquet:{}", path.display()), &opts) {
                Err(e) => {
                    assert!(!crashed(&e) && e.to_string().contains("t.parquet"), "{e}");
                }
                Ok(ds) => {
                    for i in 0..ds.train.n {
                        if let Err(e) = ds.train.image_or_next(i) {
                            assert!(!crashed(&e), "{e}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tables_give_the_folder_readers_images_bitwise_and_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        for name in SOME {
            std::fs::copy(Path::new(PHOTOS).join(name), folder.join(name)).unwrap();
        }
        let o = OpenOptions {
            stream: Stream::Never,
            ..opts(false)
        };
        let want = crate::data::open(&format!("folder:{}", folder.display()), &o).unwrap();
        let rows: Vec<_> = SOME
            .iter()
            .enumerate()
            .map(|(i, n)| (Some(photo(n)), Some(i as i64 % 3)))
            .collect();
        for layout in [ImageColumn::Struct, ImageColumn::Binary] {
            let path = dir.path().join(format!("{layout:?}.parquet"));
            // row groups of 2: three groups
            write_table(&path, &rows, 2, layout, true).unwrap();
            let ds = open_as("parquet", &path, false).unwrap();
            let t = &ds.train;
            assert!(t.is_streamed());
            assert_eq!((t.n, t.channels, t.height), (5, 3, 24));
            for i in 0..t.n {
                assert_eq!(
                    t.image(i).unwrap(),
                    want.train.image(i).unwrap(),
                    "{layout:?} {i}"
                );
            }
            assert_eq!(t.labels, Some(vec![0, 1, 2, 0, 1]));
            assert_eq!(ds.classes, vec!["0", "1", "2"]);
            assert!(t
                .stream
                .as_ref()
                .unwrap()
                .name(3)
                .ends_with(".parquet:row 3 (row group 1)"));
            assert!((t.memory_bytes() as f64 / t.n as f64) < 120.0);
        }
        // a folder of tables, unlabelled
        let tables = dir.path().join("tables");
        std::fs::create_dir(&tables).unwrap();
        let unl: Vec<_> = rows.iter().map(|(b, _)| (b.clone(), None)).collect();
        write_table(
            &tables.join("a.parquet"),
            &unl[..2],
            10,
            ImageColumn::Struct,
            false,
        )
        .unwrap();
        write_table(
            &tables.join("b.parquet"),
            &unl[2..],
            10,
            ImageColumn::Struct,
            false,
        )
        .unwrap();
        let ds = open_as("parquet", &tables, false).unwrap();
        assert_eq!((ds.train.n, ds.train.labels.is_none()), (5, true));
        assert_eq!(ds.train.image(4).unwrap(), want.train.image(4).unwrap());
        // the loader streams it: same batches whatever the worker count
        use crate::data::loader::{default_make_batch, Loader, LoaderConfig};
        let batches = |workers| {
            let cfg = LoaderConfig {
                batch_size: 2,
                seed: 4,
                workers,
                prefetch: 2,
                start_batch: 0,
                drop_last: true,
            };
            Loader::new(Arc::new(ds.train.clone()), cfg, default_make_batch())
                .take(5)
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(batches(1), batches(3));
    }

    #[test]
    fn bad_rows_and_damaged_files_are_named_or_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let rows = vec![
            (Some(photo("apple.jpg")), Some(0)),
            (Some(b"GIF89a not really".to_vec()), Some(1)),
            (None, Some(1)),
            (Some(photo("chelsea.png")), None),
            (Some(photo("orange.jpg")), Some(-3)),
            (Some(photo("coffee.png")), Some(2)),
        ];
        write_table(&path, &rows, 4, ImageColumn::Struct, true).unwrap();
        let e = open_as("parquet", &path, false).unwrap_err();
        assert!(matches!(e, DataError::Member { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("t.parquet: row 1 (row group 0): not an image: expected a PNG, JPEG or WebP image, found Gif data"),
            "{msg}"
        );
        let ds = open_as("parquet", &path, true).unwrap();
        assert_eq!((ds.train.n, ds.skipped), (2, 4));
        assert_eq!(ds.train.labels, Some(vec![0, 2]));
        // the null image, the null and the negative labels, each named
        let only = |k: usize| {
            let r = vec![rows[0].clone(), rows[k].clone()];
            write_table(&path, &r, 4, ImageColumn::Struct, true).unwrap();
            open_as("parquet", &path, false).unwrap_err().to_string()
        };
        assert!(
            only(2).contains("row 1 (row group 0): expected image bytes, found null"),
            "{}",
            only(2)
        );
        assert!(only(3).contains(
            "row 1 (row group 0): expected a class number label below 100000, found null"
        ));
        assert!(only(4).contains("expected a class number label below 100000, found -3"));

        // a damaged file: the footer cut off, then bytes of a page overwritten
        write_table(&path, &rows[..1], 4, ImageColumn::Struct, true).unwrap();
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let e = open_as("parquet", &path, true).unwrap_err();
        assert!(matches!(e, DataError::Format { .. }), "{e:?}");
        assert!(e.to_string().contains("t.parquet"), "{e}");
        let mut broken = good.clone();
        for b in &mut broken[10..200] {
            *b = 0xff;
        }
        std::fs::write(&path, &broken).unwrap();
        let msg = open_as("parquet", &path, false).unwrap_err().to_string();
        assert!(msg.contains("t.parquet") && msg.contains("row"), "{msg}");
        // a table without an image column
        std::fs::write(&path, b"not parquet at all").unwrap();
        assert!(open_as("parquet", &path, false)
            .unwrap_err()
            .to_string()
            .contains("t.parquet"));
    }

    /// Tables written by pyarrow (the fuzz seeds: Hugging Face's struct layout, Snappy, row
    /// groups of 2; a plain binary column, uncompressed).
    #[test]
    fn reads_tables_written_by_pyarrow() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parquet_table");
        let ds = open_as("parquet", &seeds.join("hf_layout.parquet"), false).unwrap();
        assert_eq!((ds.train.n, ds.train.channels), (3, 3));
        assert_eq!(ds.train.labels, Some(vec![0, 1, 2]));
        assert_eq!(ds.train.image(0).unwrap(), ds.train.image(2).unwrap());
        assert_ne!(ds.train.image(0).unwrap(), ds.train.image(1).unwrap());
        let ds = open_as("parquet", &seeds.join("binary_unlabelled.parquet"), false).unwrap();
        assert_eq!((ds.train.n, ds.train.labels.is_none()), (2, true));
    }

    #[test]
    fn columns_by_name_or_type() {
        use parquet::schema::parser::parse_message_type;
        let find = |s: &str| {
            let t = Arc::new(parse_message_type(s).unwrap());
            find_columns(&SchemaDescriptor::new(t))
        };
        let c = find("message m { optional binary caption (STRING); optional group image { optional binary bytes; optional binary path (STRING); } optional int64 label; }").unwrap();
        assert_eq!(
            c,
            Columns {
                image: 1,
                label: Some(3)
            }
        );
        let c = find("message m { required binary caption (STRING); required binary pixels; required int32 y; }").unwrap();
        assert_eq!(
            c,
            Columns {
                image: 1,
                label: Some(2)
            }
        );
        let c =
            find("message m { required binary img; required int64 id; required int64 labels; }")
                .unwrap();
        assert_eq!(
            c,
            Columns {
                image: 0,
                label: Some(2)
            }
        );
        let e =
            find("message m { required binary caption (STRING); required int64 id; }").unwrap_err();
        assert!(
            e.contains("expected an image column") && e.contains("caption"),
            "{e}"
        );
    }
}
