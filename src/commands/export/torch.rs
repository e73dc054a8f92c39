//! `pretext export --format torch`: a directory PyTorch loads with no pretext installed.
//!
//! ```text
//! OUT/model.safetensors   the encoder's state dict under PyTorch names (see `params`)
//! OUT/config.json         architecture, preprocessing, task, data, steps
//! OUT/pretext_encoder.py  the same architectures in PyTorch, and load(); needs only torch
//! ```
//!
//! ```python
//! import sys; sys.path.insert(0, "OUT")
//! import pretext_encoder
//! model = pretext_encoder.load("OUT")   # eval mode; model(x) with x = pixels / 255, [b, C, H, W]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::params::{norm_modules, Param};
use crate::error::{Error, Result};
use crate::platform::fsio::write_atomic;

/// The Python module, shipped in the binary (the repository's `python/pretext/pretext_encoder.py`,
/// which is also the Python package's `pretext.torch`).
pub const MODULE: &str = include_str!("../../../python/pretext/pretext_encoder.py");
pub const WEIGHTS: &str = "model.safetensors";

/// safetensors bytes of `params` plus a zero `num_batches_tracked` per batch norm, as a PyTorch
/// state dict has.
pub fn safetensors_bytes(params: &BTreeMap<String, Param>) -> Result<Vec<u8>> {
    let floats: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .iter()
        .map(|(k, p)| {
            let bytes = p.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), p.shape.clone(), bytes)
        })
        .collect();
    let zero = 0i64.to_le_bytes();
    let counters: Vec<String> = norm_modules(params)
        .into_iter()
        .map(|m| format!("{m}.num_batches_tracked"))
        .collect();
    let err = |e: safetensors::SafeTensorError| Error::Usage(format!("writing safetensors: {e}"));
    let mut views = Vec::with_capacity(floats.len() + counters.len());
    for (k, shape, bytes) in &floats {
        views.push((
            k.clone(),
            TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(err)?,
        ));
    }
    for k in &counters {
        views.push((
            k.clone(),
            TensorView::new(Dtype::I64, vec![], &zero).map_err(err)?,
        ));
    }
    // One metadata key, the one PyTorch checkpoints on the Hub carry.
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(err)
}

/// Write the directory; returns the bytes written.
pub fn write_dir(out: &Path, params: &BTreeMap<String, Param>, config_json: &[u8]) -> Result<u64> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let weights = safetensors_bytes(params)?;
    write_atomic(&out.join(WEIGHTS), &weights)?;
    write_atomic(&out.join("config.json"), config_json)?;
    write_atomic(&out.join("pretext_encoder.py"), MODULE.as_bytes())?;
    Ok((weights.len() + config_json.len() + MODULE.len()) as u64)
}
