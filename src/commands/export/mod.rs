//! `pretext export`: a run's encoder in a format other tools load, with the run's metadata.
//!
//! ```text
//! pretext export --from runs/ssl --format onnx  --out encoder.onnx   # any ONNX runtime
//! pretext export --from runs/ssl --format torch --out encoder/       # PyTorch, see torch.rs
//! ```
//!
//! Both take the same input: float32 [batch, C, H, W] pixels / 255 of an image resized as the
//! run's data was (a folder image: shorter side to H with a triangle filter, centre crop), after
//! the run's input transform; both normalise inside the model and return the pooled features of
//! the last stage — exactly what `pretext embed` writes. [`ExportMeta`] (`config.json`, and the
//! ONNX model's `metadata_props`) says so, with the architecture, task, data and steps.
//!
//! A text run (causal-lm, masked-lm) exports its transformer as the function `pretext embed`
//! computes for it (see [`text`]): inputs `input_ids` and `attention_mask` (int64 [batch, seq]),
//! output the mean-pooled final hidden states; the run's tokenizer is written beside the model
//! (`encoder.tokenizer.json` next to `encoder.onnx`, `tokenizer.json` in a torch directory), and
//! the metadata says how `embed` tokenizes (no specials added, the first max_len tokens,
//! `<eos>` for an empty document, padding on the right).

pub mod onnx;
pub mod params;
mod run_export;
pub mod text_export;
pub mod torch;

pub use run_export::command;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::engine::checkpoint::latest_checkpoint;
use crate::engine::run_dir::{load_run, read_run_info, RunInfo, TextRunInfo, RUN_INFO};
use crate::error::{Error, Result};
use crate::nn::input::{InputSpec, InputTransform};
use crate::platform::fsio::write_atomic;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Onnx,
    Torch,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "onnx" => Ok(Self::Onnx),
            "torch" | "pytorch" => Ok(Self::Torch),
            other => Err(Error::Usage(format!(
                "--format {other}: expected onnx or torch"
            ))),
        }
    }
}

pub struct ExportRequest {
    pub from: PathBuf,
    pub format: Format,
    /// `FILE.onnx` for onnx, a directory for torch.
    pub out: PathBuf,
    pub device: Device,
}

/// The architecture as the Python module and an ONNX reader need it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Architecture {
    /// `convnet`, `resnet18`, `vit`, `vit-small` or `vit-base`.
    pub name: String,
    pub in_channels: usize,
    /// Base width: stage widths are width × 1, 2, 4, 8 (a ViT: the token width).
    pub width: usize,
    /// Stages `features_at` accepts (a ViT: its blocks).
    pub stages: usize,
    /// Width of the output vector.
    pub dim: usize,
    pub batch_norm_eps: f32,
    /// ViT: the patch side p (images are zero-padded bottom/right to multiples of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<usize>,
    /// ViT: the number of blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// ViT: attention heads per block (width / heads each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    /// ViT: the epsilon of every LayerNorm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_norm_eps: Option<f32>,
}

/// How to turn an image into the model's input.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preprocessing {
    /// [C, H, W] of the model's input.
    pub input_shape: [usize; 3],
    /// Channel count of the images before `input_transform` (3 for `lightness`).
    pub image_channels: usize,
    /// `none`, or `lightness`: RGB → CIE L*/100, one channel (stored as u8, round(255·L/100)).
    pub input_transform: InputTransform,
    pub resize: String,
    /// The model's input: `pixel / 255`.
    pub scale: String,
    /// Per-channel mean and std of the training images (in [0, 1] units).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Instead of (x − mean) / std, each image is standardised on its own over C, H, W (std
    /// floored at 0.02): a jigsaw encoder pretrained on per-tile standardised tiles.
    pub per_image: bool,
    /// Whether the normalisation happens inside the exported model (it does in both formats).
    pub normalization_included: bool,
}

/// `config.json` of a torch export; the same JSON is the `pretext` entry of an ONNX model's
/// metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportMeta {
    pub producer: String,
    pub architecture: Architecture,
    pub preprocessing: Preprocessing,
    pub output: String,
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// Where an export comes from and how it was written: the same keys in an image and a text
/// export's `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Provenance {
    pub task: String,
    pub data: String,
    /// Training steps done (summary.json, or the latest checkpoint's state).
    pub steps: Option<u64>,
    pub run: PathBuf,
    /// `onnx` or `torch`.
    pub format: String,
    /// torch: the weights file in the directory, under PyTorch names.
    pub weights: Option<String>,
    /// onnx: the opset of the default domain.
    pub opset: Option<i64>,
}

impl Provenance {
    /// The ONNX metadata entries a model viewer shows: task, data and steps.
    fn onnx_props(&self) -> [(String, String); 3] {
        [
            ("task".into(), self.task.clone()),
            ("data".into(), self.data.clone()),
            (
                "steps".into(),
                self.steps.map_or(String::new(), |s| s.to_string()),
            ),
        ]
    }

    fn new(task: &str, data: &str, run: &Path, format: Format) -> Self {
        let onnx = matches!(format, Format::Onnx);
        Self {
            task: task.to_string(),
            data: data.to_string(),
            steps: steps_done(run),
            run: run.to_path_buf(),
            format: if onnx { "onnx" } else { "torch" }.into(),
            weights: (!onnx).then(|| torch::WEIGHTS.into()),
            opset: onnx.then_some(onnx::OPSET),
        }
    }
}

/// Steps the run trained: `summary.json`'s, else the latest checkpoint's.
fn steps_done(run: &Path) -> Option<u64> {
    let summary = std::fs::read(run.join("summary.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("steps_done")?.as_u64());
    summary.or_else(|| latest_checkpoint(run).ok().flatten().map(|(_, s)| s.step))
}

/// `config.json` of a torch export of a text run; the same JSON is the `pretext` entry of an
/// ONNX model's metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TextExportMeta {
    pub producer: String,
    /// `text`.
    pub kind: String,
    pub architecture: text_export::TextArchitecture,
    pub tokenization: text_export::Tokenization,
    /// The model's inputs.
    pub input: String,
    pub output: String,
    #[serde(flatten)]
    pub provenance: Provenance,
}

#[derive(Clone, Debug)]
pub struct ExportResult {
    pub path: PathBuf,
    /// Bytes written (the model, its config and module, the tokenizer).
    pub bytes: u64,
    /// Floats in the exported tensors.
    pub params: usize,
    pub wall_s: f64,
    /// `convnet`, `resnet18`, `vit`, `vit-small`, `vit-base` or `transformer`.
    pub architecture: String,
    pub task: String,
    pub steps: Option<u64>,
    /// `onnx` or `torch`.
    pub format: String,
    /// The tokenizer file written beside the model (text runs).
    pub tokenizer: Option<PathBuf>,
    /// What `config.json` (or the ONNX `pretext` metadata entry) holds.
    pub config: serde_json::Value,
}

/// Refuse an `--out` of the wrong kind for the format; create an ONNX file's folder.
fn check_out(req: &ExportRequest) -> Result<()> {
    match req.format {
        Format::Onnx => {
            if req.out.is_dir() {
                return Err(Error::Usage(format!(
                    "--out {}: a directory; --format onnx writes one file (e.g. encoder.onnx)",
                    req.out.display()
                )));
            }
            if let Some(dir) = req.out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
        }
        Format::Torch => {
            if req.out.is_file() {
                return Err(Error::Usage(format!(
                    "--out {}: a file; --format torch writes a directory",
                    req.out.display()
                )));
            }
        }
    }
    Ok(())
}

pub fn export(req: &ExportRequest) -> Result<ExportResult> {
    let t0 = Instant::now();
    let info = match read_run_info(&req.from)? {
        Some(RunInfo::Image(i)) => i,
        Some(RunInfo::Text(i)) => return export_text(req, &i, t0),
        None => {
            return Err(Error::Usage(format!(
                "--from {}: no {RUN_INFO} there; pass a directory written by `pretext pretrain`",
                req.from.display()
            )))
        }
    };
    check_out(req)?;
    let encoder = crate::commands::embed::images::load(&req.from, &info, &req.device)?;
    let kind = info.backbone.kind;
    let params = params::torch_params(&encoder, kind)?;
    let n_params: usize = params.values().map(|p| p.data.len()).sum();
    let input: &InputSpec = &info.input;
    let vit = kind.vit();
    let meta = ExportMeta {
        producer: concat!("pretext ", env!("CARGO_PKG_VERSION")).into(),
        architecture: Architecture {
            name: kind.name().into(),
            in_channels: info.backbone.in_channels,
            width: info.backbone.width,
            stages: encoder.stages(),
            dim: encoder.dim(),
            batch_norm_eps: onnx::BN_EPS,
            patch: vit.map(|_| info.backbone.patch_side()),
            depth: vit.map(|v| v.depth),
            heads: vit.map(|v| info.backbone.width / v.head_dim),
            layer_norm_eps: vit.map(|_| text_export::LN_EPS),
        },
        preprocessing: Preprocessing {
            input_shape: [input.channels, input.height, input.width],
            image_channels: crate::commands::embed::images::data_channels(&info),
            input_transform: info.input_transform,
            resize: format!(
                "folder images: shorter side to {} (triangle filter), centre crop to {}x{}",
                input.height, input.height, input.width
            ),
            scale: "pixel / 255".into(),
            mean: input.mean.clone(),
            std: input.std.clone(),
            per_image: input.per_image,
            normalization_included: true,
        },
        output: if vit.is_some() {
            format!(
                "float32 [batch, {}]: the mean of the final tokens (after the last layer norm)",
                encoder.dim()
            )
        } else {
            format!(
                "float32 [batch, {}]: global average of the last stage's feature map",
                encoder.dim()
            )
        },
        provenance: Provenance::new(&info.task, &info.data, &req.from, req.format),
    };
    let bytes = match req.format {
        Format::Onnx => {
            let json = serde_json::to_string(&meta).expect("json");
            let p = &meta.preprocessing;
            let join = |v: &[f32]| {
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let mut props = vec![
                ("pretext".to_string(), json),
                ("architecture".into(), kind.name().into()),
            ];
            props.extend(meta.provenance.onnx_props());
            props.extend([
                ("input".into(), "pixel / 255, [batch, C, H, W]".into()),
                (
                    "input_transform".into(),
                    format!("{:?}", p.input_transform).to_lowercase(),
                ),
                (
                    "normalization".into(),
                    if p.per_image {
                        "included: each image standardised on its own (x - mean(x)) / max(std(x), 0.02) over C, H, W".into()
                    } else {
                        "included: (x - mean) / std".into()
                    },
                ),
                ("mean".into(), join(&p.mean)),
                ("std".into(), join(&p.std)),
            ]);
            let bytes = onnx::model_bytes(&info.backbone, input, encoder.dim(), &params, &props)?;
            write_atomic(&req.out, &bytes)?;
            bytes.len() as u64
        }
        Format::Torch => {
            let json = serde_json::to_vec_pretty(&meta).expect("json");
            if vit.is_some() {
                // Linear weights as nn.Linear keeps them, [out, in].
                torch::write_dir(&req.out, &text_export::torch_layout(&params), &json)?
            } else {
                torch::write_dir(&req.out, &params, &json)?
            }
        }
    };
    Ok(ExportResult {
        path: req.out.clone(),
        bytes,
        params: n_params,
        wall_s: t0.elapsed().as_secs_f64(),
        architecture: meta.architecture.name.clone(),
        task: meta.provenance.task.clone(),
        steps: meta.provenance.steps,
        format: meta.provenance.format.clone(),
        tokenizer: None,
        config: serde_json::to_value(&meta).expect("json"),
    })
}

/// Where the tokenizer goes: `FILE.tokenizer.json` beside `FILE.onnx`, `tokenizer.json` in a
/// torch directory.
pub fn tokenizer_path(format: Format, out: &Path) -> PathBuf {
    match format {
        Format::Onnx => out.with_extension("tokenizer.json"),
        Format::Torch => out.join("tokenizer.json"),
    }
}

/// A text run's transformer (see [`text`]) with its tokenizer beside it.
fn export_text(req: &ExportRequest, info: &TextRunInfo, t0: Instant) -> Result<ExportResult> {
    let tok_file = req.from.join(&info.tokenizer);
    if !tok_file.is_file() {
        return Err(Error::Usage(format!(
            "--from {}: the run's tokenizer {} is missing; a text export needs the tokenizer the \
             run was trained with",
            req.from.display(),
            tok_file.display()
        )));
    }
    check_out(req)?;
    let (info, model, tok) = load_run(&req.from, &req.device)?;
    let spec = &info.spec;
    let params = text_export::params(&model)?;
    let n_params: usize = params.values().map(|p| p.data.len()).sum();
    let tok_out = tokenizer_path(req.format, &req.out);
    let tok_name = tok_out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tokenization = text_export::Tokenization::new(&tok_name, &tok, spec.max_len);
    let meta = TextExportMeta {
        producer: concat!("pretext ", env!("CARGO_PKG_VERSION")).into(),
        kind: "text".into(),
        architecture: text_export::TextArchitecture::new(spec),
        input: format!(
            "input_ids: int64 [batch, seq] (seq <= {}), token ids padded on the right; \
             attention_mask: int64 [batch, seq], 1 = token, 0 = padding",
            spec.max_len
        ),
        output: format!(
            "float32 [batch, {}]: the mean of the final hidden states (after the last layer \
             norm) over each document's tokens, as pretext embed writes it",
            spec.d_model
        ),
        provenance: Provenance::new(&info.task, &info.data, &req.from, req.format),
        tokenization,
    };
    let tok_json = std::fs::read(&tok_file).map_err(|e| Error::io(&tok_file, e))?;
    let bytes = match req.format {
        Format::Onnx => {
            let t = &meta.tokenization;
            let mut props = vec![
                (
                    "pretext".to_string(),
                    serde_json::to_string(&meta).expect("json"),
                ),
                ("architecture".into(), "transformer".into()),
            ];
            props.extend(meta.provenance.onnx_props());
            props.extend([
                ("tokenizer".into(), tok_name.clone()),
                (
                    "tokenization".into(),
                    format!(
                        "Hugging Face tokenizer.json beside this file ({tok_name}, byte-level \
                         BPE): encode with add_special_tokens=False; keep the first {} tokens of \
                         a longer document (pretext embed embeds only those, it does not split \
                         documents); a document with no tokens is [{}] (<eos>); pad on the right \
                         with {} (<pad>) and attention_mask 0",
                        t.max_len, t.eos_id, t.pad_id
                    ),
                ),
                ("max_len".into(), spec.max_len.to_string()),
                ("pad_id".into(), t.pad_id.to_string()),
                ("eos_id".into(), t.eos_id.to_string()),
                (
                    "pooling".into(),
                    "mean over tokens with attention_mask 1".into(),
                ),
                ("input".into(), meta.input.clone()),
                ("output".into(), meta.output.clone()),
            ]);
            let bytes = text_export::onnx_bytes(spec, &params, &props)?;
            write_atomic(&req.out, &bytes)?;
            bytes.len() as u64
        }
        Format::Torch => {
            let json = serde_json::to_vec_pretty(&meta).expect("json");
            torch::write_dir(&req.out, &text_export::torch_layout(&params), &json)?
        }
    };
    write_atomic(&tok_out, &tok_json)?;
    Ok(ExportResult {
        path: req.out.clone(),
        bytes: bytes + tok_json.len() as u64,
        params: n_params,
        wall_s: t0.elapsed().as_secs_f64(),
        architecture: "transformer".into(),
        task: meta.provenance.task.clone(),
        steps: meta.provenance.steps,
        format: meta.provenance.format.clone(),
        tokenizer: Some(tok_out),
        config: serde_json::to_value(&meta).expect("json"),
    })
}
