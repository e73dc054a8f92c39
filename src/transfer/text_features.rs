//! Document vectors for the frozen text protocols (linear probe, k-NN), computed once per
//! (encoder, stage, pooling, tokens per document, tokenizer, data) and cached on disk, so a grid
//! of label budgets × draws × protocols encodes each document once.
//!
//! A cache file is `DIR/<key>.safetensors`: `index` (i64 [n], the documents' indices in the data)
//! and `vectors` (f32 [n, d]), with the key's parts in the metadata. The key is a SHA-256 of the
//! encoder's weights file (or, for random weights, its architecture and seed), the tokenizer, the
//! stage, pooling and length, and the data file's bytes: retrain the encoder or edit the data and
//! the old file is simply not found. A damaged file is reported and recomputed, never trusted.
//!
//! Every batch is encoded at one fixed shape (`BATCH` documents × the length limit, short
//! batches filled with padding rows), so a document's vector does not depend on which documents
//! share its batch: cached and freshly computed vectors are the same numbers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::nn::transformer::Transformer;
use crate::platform::fsio::write_atomic;

/// Documents per encoder pass.
const BATCH: usize = 32;

/// How documents become vectors: everything but the documents themselves.
pub struct Encoding<'a> {
    pub model: &'a Transformer,
    pub pad_id: u32,
    /// `<cls>` pooling (first for the bidirectional model, last for the causal one), else mean.
    pub cls: Option<bool>,
    /// 0 = final states; k = after block k.
    pub stage: usize,
    /// Tokens per document at most (every batch is padded to it).
    pub max_tokens: usize,
    pub device: &'a Device,
}

/// What a cache file is the cache of: (name, value) pairs, hashed into the file name.
#[derive(Clone, Debug, Default)]
pub struct CacheKey {
    parts: BTreeMap<String, String>,
}

impl CacheKey {
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.parts.insert(name.to_string(), value.into());
        self
    }

    /// The SHA-256 of the parts, hex (the file name).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"pretext text features v1\n");
        for (k, v) in &self.parts {
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
            h.update(b"\n");
        }
        hex(&h.finalize())
    }
}

/// SHA-256 of a file's bytes, or of a folder's file names, sizes and contents (a `text:` folder).
pub fn content_digest(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        h.update(
            f.strip_prefix(path)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex(&h.finalize()))
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        collect_files(&e, out)?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Vectors by document index, loaded from and saved to one cache file (or kept in memory only).
pub struct DocVectors {
    file: Option<PathBuf>,
    key: CacheKey,
    dim: usize,
    vectors: HashMap<u64, Vec<f32>>,
    /// Vectors computed since the file was read.
    added: usize,
}

impl DocVectors {
    /// No file: vectors live as long as this value.
    pub fn in_memory() -> Self {
        Self {
            file: None,
            key: CacheKey::default(),
            dim: 0,
            vectors: HashMap::new(),
            added: 0,
        }
    }

    /// The cache of `key` in `dir`: what is on disk (a file that does not read back is reported
    /// on stderr and ignored), saved back by [`Self::save`].
    pub fn open(dir: &Path, key: CacheKey) -> Self {
        let file = dir.join(format!("{}.safetensors", key.digest()));
        let mut me = Self {
            file: Some(file.clone()),
            key,
            ..Self::in_memory()
        };
        if file.exists() {
            match read(&file) {
                Ok((dim, vectors)) => {
                    me.dim = dim;
                    me.vectors = vectors;
                }
                Err(why) => eprintln!(
                    "warning: ignoring the feature cache {}: {why}; computing the vectors again",
                    file.display()
                ),
            }
        }
        me
    }

    /// Documents with a vector.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// How many vectors were computed (not found in the cache) so far.
    pub fn computed(&self) -> usize {
        self.added
    }

    /// The vectors of `docs` ((index, tokens) pairs), row-major [docs.len(), dim]; documents
    /// not seen before are encoded.
    pub fn get(&mut self, enc: &Encoding, docs: &[(u64, &[u32])]) -> (Vec<f32>, usize) {
        let mut missing: Vec<(u64, &[u32])> = Vec::new();
        for &(i, t) in docs {
            if !self.vectors.contains_key(&i) && !missing.iter().any(|m| m.0 == i) {
                missing.push((i, t));
            }
        }
        for chunk in missing.chunks(BATCH) {
            let mut rows: Vec<&[u32]> = chunk.iter().map(|d| d.1).collect();
            // Fill the batch with one-token padding documents: a fixed shape, always.
            let filler = [enc.pad_id];
            rows.resize(BATCH, &filler);
            let v = enc.model.pooled_at(
                &rows,
                enc.pad_id,
                enc.cls,
                enc.stage,
                enc.max_tokens,
                enc.device,
            );
            let dim = v.dims()[1];
            let flat: Vec<f32> = v.into_data().iter::<f32>().collect();
            self.dim = dim;
            for (r, &(i, _)) in chunk.iter().enumerate() {
                self.vectors
                    .insert(i, flat[r * dim..(r + 1) * dim].to_vec());
                self.added += 1;
            }
        }
        let mut out = Vec::with_capacity(docs.len() * self.dim);
        for (i, _) in docs {
            out.extend_from_slice(&self.vectors[i]);
        }
        (out, self.dim)
    }

    /// Write the vectors back (atomically) when any were computed; no-op in memory.
    pub fn save(&self) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if self.added == 0 {
            return Ok(());
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut index: Vec<u64> = self.vectors.keys().copied().collect();
        index.sort_unstable();
        let idx_bytes: Vec<u8> = index
            .iter()
            .flat_map(|&i| (i as i64).to_le_bytes())
            .collect();
        let vec_bytes: Vec<u8> = index
            .iter()
            .flat_map(|i| self.vectors[i].iter().flat_map(|v| v.to_le_bytes()))
            .collect();
        let err = |e: safetensors::SafeTensorError| {
            Error::io(
                file,
                std::io::Error::other(format!("writing the feature cache: {e}")),
            )
        };
        let views = vec![
            (
                "index".to_string(),
                TensorView::new(Dtype::I64, vec![index.len()], &idx_bytes).map_err(err)?,
            ),
            (
                "vectors".to_string(),
                TensorView::new(Dtype::F32, vec![index.len(), self.dim], &vec_bytes)
                    .map_err(err)?,
            ),
        ];
        let mut meta: HashMap<String, String> = self.key.parts.clone().into_iter().collect();
        meta.insert("key".into(), self.key.digest());
        let bytes = safetensors::serialize(views, Some(meta)).map_err(err)?;
        write_atomic(file, &bytes)
    }
}

/// (dim, vectors by index) of a cache file, or why it is unusable.
fn read(file: &Path) -> std::result::Result<(usize, HashMap<u64, Vec<f32>>), String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
    let stem = file.file_stem().map(|s| s.to_string_lossy().to_string());
    let key = meta.metadata().as_ref().and_then(|m| m.get("key").cloned());
    if key != stem {
        return Err(format!(
            "its metadata key {key:?} is not its file name {stem:?}"
        ));
    }
    let index = st.tensor("index").map_err(|e| e.to_string())?;
    let vectors = st.tensor("vectors").map_err(|e| e.to_string())?;
    if index.dtype() != Dtype::I64 || vectors.dtype() != Dtype::F32 {
        return Err("expected index as i64 and vectors as f32".into());
    }
    let [n] = index.shape() else {
        return Err(format!("index has shape {:?}, expected [n]", index.shape()));
    };
    let [rows, dim] = vectors.shape() else {
        return Err(format!(
            "vectors have shape {:?}, expected [n, d]",
            vectors.shape()
        ));
    };
    if rows != n || *dim == 0 {
        return Err(format!("{n} indices but vectors of shape [{rows}, {dim}]"));
    }
    let idx: Vec<u64> = index
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u64)
        .collect();
    let vals: Vec<f32> = vectors
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    if vals.iter().any(|v| !v.is_finite()) {
        return Err("it holds NaN or infinite values".into());
    }
    let map = idx
        .into_iter()
        .enumerate()
        .map(|(r, i)| (i, vals[r * dim..(r + 1) * dim].to_vec()))
        .collect();
    Ok((*dim, map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::transformer::TransformerSpec;

    fn model(device: &Device) -> Transformer {
        let spec = TransformerSpec {
            vocab: 40,
            d_model: 16,
            layers: 2,
            heads: 2,
            d_ff: 32,
            max_len: 12,
            dropout: 0.0,
            tie_weights: true,
            causal: false,
        };
        crate::platform::device::seeded(device, 3, || spec.init(device))
    }

    fn docs() -> Vec<(u64, Vec<u32>)> {
        (0..40u64)
            .map(|i| {
                let n = 1 + (i as usize * 7) % 12;
                (
                    i,
                    (0..n).map(|k| 4 + ((i as u32 + k as u32) % 30)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn vectors_do_not_depend_on_batch_mates_and_survive_the_file() {
        let device = Device::flex();
        let m = model(&device);
        let enc = Encoding {
            model: &m,
            pad_id: 0,
            cls: None,
            stage: 0,
            max_tokens: 12,
            device: &device,
        };
        let all = docs();
        let refs: Vec<(u64, &[u32])> = all.iter().map(|(i, t)| (*i, t.as_slice())).collect();
        // All at once, then in another grouping and order: the same numbers.
        let (a, dim) = DocVectors::in_memory().get(&enc, &refs);
        assert_eq!(dim, 16);
        let mut grouped = DocVectors::in_memory();
        let odd: Vec<_> = refs.iter().copied().filter(|d| d.0 % 2 == 1).collect();
        grouped.get(&enc, &odd);
        let (b, _) = grouped.get(&enc, &refs);
        assert_eq!(a, b);

        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::default().with("encoder", "test");
        let mut c = DocVectors::open(dir.path(), key.clone());
        assert!(c.is_empty());
        c.get(&enc, &refs[..10]);
        c.save().unwrap();
        let mut again = DocVectors::open(dir.path(), key.clone());
        assert_eq!(again.len(), 10);
        let (v, _) = again.get(&enc, &refs[..10]);
        assert_eq!(again.computed(), 0);
        assert_eq!(v, a[..10 * dim]);
        // Another key is another file.
        let other = DocVectors::open(dir.path(), key.with("stage", "1"));
        assert!(other.is_empty());
        // A damaged file is ignored (and reported), not trusted.
        let file = dir.path().join(format!(
            "{}.safetensors",
            CacheKey::default().with("encoder", "test").digest()
        ));
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        assert!(
            DocVectors::open(dir.path(), CacheKey::default().with("encoder", "test")).is_empty()
        );
    }

    #[test]
    fn stages_are_the_blocks() {
        let device = Device::flex();
        let m = model(&device);
        let doc: Vec<u32> = vec![5, 6, 7];
        let at = |stage| {
            m.pooled_at(&[&doc], 0, None, stage, 0, &device)
                .into_data()
                .iter::<f32>()
                .collect::<Vec<f32>>()
        };
        assert_eq!(
            at(0),
            m.pooled(&[&doc], 0, None, &device)
                .into_data()
                .iter::<f32>()
                .collect::<Vec<f32>>()
        );
        assert_ne!(at(1), at(2));
        assert_ne!(at(2), at(0));
    }
}
