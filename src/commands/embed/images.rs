//! Image runs: every image of the data through the run's encoder, in order, in batches.
//!
//! A producer thread prepares batch k+1 (decoding a streamed folder's files on worker threads,
//! the run's input transform, its normalisation) while the encoder runs on batch k; at most two
//! prepared batches wait, so memory does not grow with the folder. Folders are always streamed
//! (each file is decoded once either way). A file that fails to decode stops the command, naming
//! it; with `--skip-bad` it is left out (with a warning) and the CSV lists only the rows written.
//! (The training loader is not used: it shuffles, and under `skip_bad` it substitutes the next
//! good image, where an embedding must keep each row with its own file.)

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;

use super::{EmbedInfo, EmbedRequest, OutPaths, RowId, Sink};
use crate::data::augment::Img;
use crate::data::folder::Streamed;
use crate::data::{DataError, ImageSet, OpenOptions, Stream};
use crate::engine::checkpoint::load_encoder;
use crate::engine::progress::Progress;
use crate::engine::run_dir::{transferable_weights, EncoderInfo};
use crate::error::{Error, Result};
use crate::nn::input::{lightness, InputTransform};
use crate::nn::Backbone;

/// Images per forward pass unless `--batch-size`.
const BATCH: usize = 256;

/// The run's encoder with its trained weights, in inference mode.
pub fn load(run: &Path, info: &EncoderInfo, device: &Device) -> Result<Backbone> {
    let weights = transferable_weights(run)?;
    Ok(load_encoder(info.backbone.init(device), &weights)?.valid())
}

/// `stage` checked against the encoder (the last stage when `None`).
pub fn check_stage(encoder: &Backbone, stage: Option<usize>) -> Result<usize> {
    let last = encoder.stages();
    match stage {
        None => Ok(last),
        Some(s) if (1..=last).contains(&s) => Ok(s),
        Some(s) => Err(Error::Usage(format!(
            "--stage {s}: the encoder has stages 1 to {last}"
        ))),
    }
}

/// The channel count the encoder wants from the data (3 for a lightness run, which converts).
pub fn data_channels(info: &EncoderInfo) -> usize {
    match info.input_transform {
        InputTransform::None => info.input.channels,
        InputTransform::Lightness => 3,
    }
}

/// One image as the encoder sees it: transform, then normalisation; CHW floats.
fn prepare(px: &[u8], set: &ImageSet, info: &EncoderInfo) -> Vec<f32> {
    prepare_img(Img::from_u8(set.channels, set.height, set.width, px), info)
}

/// [`prepare`] of an image already in [0, 1].
fn prepare_img(mut img: Img, info: &EncoderInfo) -> Vec<f32> {
    if info.input_transform == InputTransform::Lightness && img.c == 3 {
        // As `InputTransform::apply` does for transfer: L/100 stored as u8, then read back.
        let l = lightness(&img).to_u8();
        img = Img::from_u8(1, img.h, img.w, &l);
    }
    info.input.normalize(&mut img);
    img.data
}

/// Whether `set` has the shape the encoder was trained on (after the run's transform).
fn check_shape(set: &ImageSet, info: &EncoderInfo, what: &str) -> Result<()> {
    let c = info.input_transform.channels(set.channels);
    let want = &info.input;
    if (c, set.height, set.width) != (want.channels, want.height, want.width) {
        return Err(Error::Usage(format!(
            "{what} has images of {}×{}×{} (channels×height×width{}) but the encoder was trained on {}×{}×{}",
            c,
            set.height,
            set.width,
            if info.input_transform == InputTransform::None { "" } else { ", after the run's input transform" },
            want.channels,
            want.height,
            want.width
        )));
    }
    Ok(())
}

/// A prepared batch: each image's row id and normalised pixels; skipped files are absent.
struct Prepared {
    ids: Vec<RowId>,
    pixels: Vec<f32>,
    skipped: usize,
}

/// Decode (streamed sets) and prepare images `idx` of `set` on `workers` threads.
fn prepare_batch(
    set: &ImageSet,
    idx: std::ops::Range<usize>,
    row_id: &(dyn Fn(usize) -> RowId + Sync),
    info: &EncoderInfo,
    skip_bad: bool,
    workers: usize,
) -> Result<Prepared> {
    let n = idx.len();
    let workers = if set.is_streamed() {
        workers.clamp(1, n.max(1))
    } else {
        1
    };
    let one = |i: usize| -> std::result::Result<Vec<f32>, DataError> {
        Ok(prepare(&set.image(i)?, set, info))
    };
    let mut done: Vec<(usize, std::result::Result<Vec<f32>, DataError>)> =
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|t| {
                    let idx = idx.clone();
                    s.spawn(move || {
                        idx.skip(t)
                            .step_by(workers)
                            .map(|i| (i, one(i)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("image preparation panicked"))
                .collect()
        });
    done.sort_by_key(|(i, _)| *i);
    let mut out = Prepared {
        ids: Vec::with_capacity(n),
        pixels: Vec::with_capacity(n * set.image_len()),
        skipped: 0,
    };
    for (i, r) in done {
        match r {
            Ok(px) => {
                out.ids.push(row_id(i));
                out.pixels.extend(px);
            }
            Err(DataError::Decode { path, message }) if skip_bad => {
                eprintln!(
                    "warning: {}: cannot decode image: {message}; left out (--skip-bad)",
                    path.display()
                );
                out.skipped += 1;
            }
            Err(e @ DataError::Member { .. }) if skip_bad => {
                eprintln!("warning: {e}; left out");
                out.skipped += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Pooled features of `stage` for a batch of prepared images: row-major [b, dim].
fn forward(
    encoder: &Backbone,
    pixels: Vec<f32>,
    info: &EncoderInfo,
    stage: usize,
    device: &Device,
) -> Vec<f32> {
    let (c, h, w) = (info.input.channels, info.input.height, info.input.width);
    let b = pixels.len() / (c * h * w);
    // [b, c, h, w] → [b, stage_dim]
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [b, c, h, w]), device);
    encoder
        .features_at(x, stage)
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 features")
}

pub fn embed(req: &EmbedRequest, info: &EncoderInfo, paths: &OutPaths) -> Result<EmbedInfo> {
    let t0 = Instant::now();
    let data = req.data.clone().unwrap_or_else(|| info.data.clone());
    if super::is_text_spec(&data) {
        return Err(Error::Usage(format!(
            "--from {}: an image run ({}); its encoder takes images, not {data}",
            req.from.display(),
            info.task
        )));
    }
    let encoder = load(&req.from, info, &req.device)?;
    let stage = check_stage(&encoder, req.stage)?;
    let opts = OpenOptions {
        image_size: Some(info.input.height),
        skip_bad: req.skip_bad,
        limit: None,
        stream: Stream::Always,
    };
    let ds = crate::data::open(&data, &opts)?;
    if ds.skipped > 0 {
        eprintln!(
            "warning: skipped {} unreadable images in {data}",
            ds.skipped
        );
    }
    let mut splits: Vec<(&str, &ImageSet)> = vec![("train", &ds.train)];
    if let Some(t) = &ds.test {
        splits.push(("test", t));
    }
    for (_, set) in &splits {
        check_shape(set, info, &data)?;
    }
    let total: usize = splits.iter().map(|(_, s)| s.n).sum();
    let bs = req.batch_size.unwrap_or(BATCH);
    let workers = crate::engine::default_workers();
    let label_of = |set: &ImageSet, i: usize| {
        set.label(i).map(|l| {
            ds.classes
                .get(l as usize)
                .cloned()
                .unwrap_or_else(|| l.to_string())
        })
    };
    let id_of = |split: &str, set: &ImageSet, i: usize| match &set.stream {
        Some(s) => s.name(i),
        None => format!("{split}/{i}"),
    };

    let mut sink = Sink::create(paths, encoder.stage_dim(stage))?;
    let progress = Progress::new("embed", 0, total as u64, req.quiet);
    let mut skipped = ds.skipped;
    let mut seen = 0usize;
    let mut batches = 0u64;
    let streamed = std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Prepared>>(2);
        let splits = &splits;
        let (label_of, id_of) = (&label_of, &id_of);
        let skip_bad = req.skip_bad;
        s.spawn(move || {
            for &(split, set) in splits {
                let row_id = |i: usize| RowId {
                    id: id_of(split, set, i),
                    label: label_of(set, i),
                };
                for start in (0..set.n).step_by(bs) {
                    let idx = start..(start + bs).min(set.n);
                    let batch = prepare_batch(set, idx, &row_id, info, skip_bad, workers);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            }
        });
        for batch in rx {
            let batch = batch?;
            seen += batch.ids.len() + batch.skipped;
            skipped += batch.skipped;
            if !batch.ids.is_empty() {
                let v = forward(&encoder, batch.pixels, info, stage, &req.device);
                sink.push(&v, &batch.ids)?;
            }
            batches += 1;
            let rate = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let eta = std::time::Duration::from_secs_f64((total - seen) as f64 / rate.max(1e-9));
            progress.update(
                seen as u64,
                &format!("{rate:.0} images/s"),
                batches.is_multiple_of(20),
                eta,
            );
        }
        Ok(())
    });
    progress.finish();
    let rows = sink.rows();
    if let Err(e) = streamed {
        sink.abandon();
        return Err(e);
    }
    if rows == 0 {
        sink.abandon();
        return Err(Error::Usage(format!(
            "{data}: none of the {total} images could be decoded"
        )));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let out = EmbedInfo {
        kind: "image".into(),
        run: req.from.clone(),
        task: info.task.clone(),
        data,
        stage: Some(stage),
        pooling: Some("global average over the stage's feature map".into()),
        rows,
        dim: encoder.stage_dim(stage),
        skipped,
        wall_s,
        items_per_s: rows as f64 / wall_s.max(1e-9),
        train_items_per_s: super::train_items_per_s(&req.from),
    };
    sink.finish(&out)?;
    Ok(out)
}

/// The vector of one image file, decoded as a folder image is (resized and cropped to the run's
/// input size) — the query of `pretext similar`.
pub fn embed_file(
    run: &Path,
    info: &EncoderInfo,
    path: &Path,
    stage: Option<usize>,
    device: &Device,
) -> Result<Vec<f32>> {
    let gray = crate::data::folder::header(path)?;
    let channels = data_channels(info);
    if channels == 1 && !gray {
        return Err(Error::Usage(format!(
            "{}: a colour image, but the encoder of {} takes grayscale images",
            path.display(),
            run.display()
        )));
    }
    let size = info.input.height;
    let mut set = ImageSet::in_memory(Vec::new(), None, 1, channels, size, size);
    set.stream = Some(Arc::new(Streamed::new(
        vec![path.to_path_buf()],
        size,
        channels,
        false,
    )));
    check_shape(&set, info, &path.display().to_string())?;
    let encoder = load(run, info, device)?;
    let stage = check_stage(&encoder, stage)?;
    let px = prepare(&set.image(0)?, &set, info);
    Ok(forward(&encoder, px, info, stage, device))
}

/// Images handed over in memory (the Python package's `embed`), CHW.
pub enum InMemory<'a> {
    /// `n` images of `c×h×w` bytes, as the data readers produce them.
    U8 {
        pixels: &'a [u8],
        n: usize,
        chw: (usize, usize, usize),
    },
    /// `n` images of `c×h×w` floats in [0, 1].
    F32 {
        pixels: &'a [f32],
        n: usize,
        chw: (usize, usize, usize),
    },
    /// Image files, decoded as a `folder:` data set's are (resized and cropped to the run's input
    /// size; grayscale only when every file is).
    Files(&'a [std::path::PathBuf]),
}

/// The vectors of images held in memory, row-major [n, dim], and `dim`: the same batches,
/// preparation and forward pass as [`embed`], so the same images give the same bits.
pub fn embed_in_memory(
    run: &Path,
    info: &EncoderInfo,
    images: InMemory,
    stage: Option<usize>,
    batch_size: Option<usize>,
    device: &Device,
) -> Result<(Vec<f32>, usize)> {
    let bs = batch_size.unwrap_or(BATCH);
    if bs == 0 {
        return Err(Error::Usage("batch_size must be at least 1".into()));
    }
    let set = match &images {
        InMemory::U8 { pixels, n, chw } => {
            let (c, h, w) = *chw;
            ImageSet::in_memory(pixels.to_vec(), None, *n, c, h, w)
        }
        InMemory::F32 { chw, .. } => ImageSet::in_memory(Vec::new(), None, 0, chw.0, chw.1, chw.2),
        InMemory::Files(paths) => {
            let mut all_gray = true;
            for p in paths.iter() {
                all_gray &= crate::data::folder::header(p)?;
            }
            let channels = if all_gray { 1 } else { 3 };
            let size = info.input.height;
            let mut set = ImageSet::in_memory(Vec::new(), None, paths.len(), channels, size, size);
            set.stream = Some(Arc::new(Streamed::new(
                paths.to_vec(),
                size,
                channels,
                false,
            )));
            set
        }
    };
    check_shape(&set, info, "the images")?;
    let encoder = load(run, info, device)?;
    let stage = check_stage(&encoder, stage)?;
    let dim = encoder.stage_dim(stage);
    let mut out = Vec::new();
    if let InMemory::F32 { pixels, n, chw } = images {
        let (c, h, w) = chw;
        let len = c * h * w;
        for start in (0..n).step_by(bs) {
            let end = (start + bs).min(n);
            let mut batch = Vec::with_capacity((end - start) * len);
            for i in start..end {
                let data = pixels[i * len..(i + 1) * len].to_vec();
                batch.extend(prepare_img(Img { c, h, w, data }, info));
            }
            out.extend(forward(&encoder, batch, info, stage, device));
        }
        return Ok((out, dim));
    }
    let no_id = |_: usize| RowId {
        id: String::new(),
        label: None,
    };
    let workers = crate::engine::default_workers();
    for start in (0..set.n).step_by(bs) {
        let idx = start..(start + bs).min(set.n);
        let batch = prepare_batch(&set, idx, &no_id, info, false, workers)?;
        out.extend(forward(&encoder, batch.pixels, info, stage, device));
    }
    Ok((out, dim))
}
