//! Text runs: each document of `text:`/`jsonl:` data becomes the mean of the transformer's final
//! hidden states over its tokens (the first `max_len`; an empty document is `<eos>`), as
//! `pretext transfer` pools with `pool = "mean"`. Documents are streamed: read, tokenized and
//! embedded a batch at a time.

use std::time::Instant;

use burn::prelude::*;

use super::{EmbedInfo, EmbedRequest, OutPaths, RowId, Sink};
use crate::data::corpus::{Fields, TextSource};
use crate::data::DataError;
use crate::engine::progress::Progress;
use crate::engine::run_dir::{load_run, TextRunInfo};
use crate::error::{Error, Result};
use crate::nn::transformer::Transformer;

/// Documents per forward pass unless `--batch-size`.
const BATCH: usize = 32;
/// The label field looked for in JSON lines (left out of the CSV when the data has none).
const LABEL_FIELD: &str = "label";

/// Mean of the final hidden states over each document's tokens: [docs.len(), d] row-major.
pub fn mean_pooled(
    model: &Transformer,
    docs: &[Vec<u32>],
    pad_id: u32,
    device: &Device,
) -> Vec<f32> {
    let docs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    model
        .pooled(&docs, pad_id, None, device)
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 features")
}

/// The source with its label field when its first document has one, without otherwise.
fn open_source(data: &str, text_field: &str) -> Result<TextSource> {
    let with = TextSource::open(
        data,
        &Fields {
            text: text_field.to_string(),
            label: Some(LABEL_FIELD.into()),
        },
    )?;
    if !with.is_labelled() {
        return Ok(with);
    }
    match with.docs().next() {
        Some(Err(DataError::Line { message, .. })) if message.contains("no label field") => {
            Ok(TextSource::open(
                data,
                &Fields {
                    text: text_field.to_string(),
                    label: None,
                },
            )?)
        }
        _ => Ok(with),
    }
}

pub fn embed(req: &EmbedRequest, info: &TextRunInfo, paths: &OutPaths) -> Result<EmbedInfo> {
    let t0 = Instant::now();
    if req.skip_bad {
        return Err(Error::Usage("--skip-bad is for image data".into()));
    }
    if req.stage.is_some() {
        return Err(Error::Usage(format!(
            "--stage is for image encoders; {} is a {} (text) run, whose vectors are its final hidden states",
            req.from.display(),
            info.task
        )));
    }
    let data = req.data.clone().unwrap_or_else(|| info.data.clone());
    if !super::is_text_spec(&data) {
        return Err(Error::Usage(format!(
            "--from {}: a {} (text) run; its transformer takes text data (text:PATH or jsonl:PATH), not {data}",
            req.from.display(),
            info.task
        )));
    }
    let (info, model, tok) = load_run(&req.from, &req.device)?;
    let source = open_source(&data, &info.text_field)?;
    // A first pass for the progress bar's total (reading is cheap next to the transformer).
    let total = source.docs().filter(|d| d.is_ok()).count();
    let bs = req.batch_size.unwrap_or(BATCH);
    let mut sink = Sink::create(paths, info.spec.d_model)?;
    let progress = Progress::new("embed", 0, total as u64, req.quiet);
    let mut docs: Vec<Vec<u32>> = Vec::with_capacity(bs);
    let mut ids: Vec<RowId> = Vec::with_capacity(bs);
    let mut flush = |docs: &mut Vec<Vec<u32>>, ids: &mut Vec<RowId>| -> Result<()> {
        let v = mean_pooled(&model, docs, tok.pad_id(), &req.device);
        sink.push(&v, ids)?;
        docs.clear();
        ids.clear();
        let done = sink.rows();
        let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        let eta =
            std::time::Duration::from_secs_f64(total.saturating_sub(done) as f64 / rate.max(1e-9));
        progress.update(
            done as u64,
            &format!("{rate:.0} documents/s"),
            (done / bs).is_multiple_of(20),
            eta,
        );
        Ok(())
    };
    let streamed = (|| -> Result<()> {
        for doc in source.docs() {
            let doc = doc?;
            let mut tokens = tok.encode_prefix(&doc.text, info.spec.max_len);
            if tokens.is_empty() {
                tokens.push(tok.eos_id());
            }
            docs.push(tokens);
            ids.push(RowId {
                id: format!("{}:{}", doc.file.display(), doc.line),
                label: doc.label,
            });
            if docs.len() == bs {
                flush(&mut docs, &mut ids)?;
            }
        }
        if !docs.is_empty() {
            flush(&mut docs, &mut ids)?;
        }
        Ok(())
    })();
    progress.finish();
    if let Err(e) = streamed {
        sink.abandon();
        return Err(e);
    }
    let rows = sink.rows();
    let wall_s = t0.elapsed().as_secs_f64();
    let out = EmbedInfo {
        kind: "text".into(),
        run: req.from.clone(),
        task: info.task.clone(),
        data,
        stage: None,
        pooling: Some("mean of the final hidden states over the document's tokens".into()),
        rows,
        dim: info.spec.d_model,
        skipped: 0,
        wall_s,
        items_per_s: rows as f64 / wall_s.max(1e-9),
        train_items_per_s: super::train_items_per_s(&req.from),
    };
    sink.finish(&out)?;
    Ok(out)
}

/// The vectors of documents held in memory (the Python package's `embed`), row-major
/// [docs.len(), d_model], and d_model: tokenized, batched and pooled as [`embed`] does.
pub fn embed_documents(
    run: &std::path::Path,
    docs: &[String],
    batch_size: Option<usize>,
    device: &Device,
) -> Result<(Vec<f32>, usize)> {
    let bs = batch_size.unwrap_or(BATCH);
    if bs == 0 {
        return Err(Error::Usage("batch_size must be at least 1".into()));
    }
    let (info, model, tok) = load_run(run, device)?;
    let mut out = Vec::with_capacity(docs.len() * info.spec.d_model);
    for chunk in docs.chunks(bs) {
        let tokens: Vec<Vec<u32>> = chunk
            .iter()
            .map(|text| {
                let mut t = tok.encode_prefix(text, info.spec.max_len);
                if t.is_empty() {
                    t.push(tok.eos_id());
                }
                t
            })
            .collect();
        out.extend(mean_pooled(&model, &tokens, tok.pad_id(), device));
    }
    Ok((out, info.spec.d_model))
}
