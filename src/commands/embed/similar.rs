//! `pretext similar`: the k rows of an embedding file closest to a query image by cosine
//! similarity — exact, one pass over the rows (no index structure to build or go stale).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::Device;

use super::{npy, read_ids, EmbedInfo};
use crate::engine::run_dir::read_encoder_info;
use crate::error::{Error, Result};

pub struct SimilarRequest {
    pub from: PathBuf,
    /// `FILE.npy` written by `pretext embed` (`FILE.csv` and `FILE.json` beside it are read).
    pub index: PathBuf,
    pub query: PathBuf,
    pub k: usize,
    pub device: Device,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
    /// The row's id from the CSV (its file), or `row N` without one.
    pub id: String,
}

/// Where the time went, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    pub load_index_ms: f64,
    pub embed_query_ms: f64,
    pub search_ms: f64,
    pub rows: usize,
}

/// The `k` rows of `rows` (row-major, `dim` wide) with the highest cosine similarity to `query`,
/// best first (ties: lower row first). Rows of norm 0 score 0.
pub fn top_k(rows: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<(usize, f32)> {
    let qn = norm(query).max(f32::MIN_POSITIVE);
    let mut scores: Vec<(usize, f32)> = rows
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, r)| {
            let (dot, rn) = dot_and_norm(r, query);
            (i, if rn > 0.0 { dot / (rn * qn) } else { 0.0 })
        })
        .collect();
    let by_score = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(scores.len());
    if k < scores.len() && k > 0 {
        scores.select_nth_unstable_by(k - 1, by_score);
    }
    scores.truncate(k);
    scores.sort_by(by_score);
    scores
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// (r·q, |r|) in one pass, eight lanes wide so the compiler can vectorise it.
fn dot_and_norm(r: &[f32], q: &[f32]) -> (f32, f32) {
    let mut dot = [0f32; 8];
    let mut sq = [0f32; 8];
    let (rc, qc) = (r.chunks_exact(8), q.chunks_exact(8));
    let (rr, qr) = (rc.remainder(), qc.remainder());
    for (a, b) in rc.zip(qc) {
        for l in 0..8 {
            dot[l] += a[l] * b[l];
            sq[l] += a[l] * a[l];
        }
    }
    let mut d: f32 = dot.iter().sum();
    let mut s: f32 = sq.iter().sum();
    for (a, b) in rr.iter().zip(qr) {
        d += a * b;
        s += a * a;
    }
    (d, s.sqrt())
}

/// What `FILE.json` beside an index says, if it is there.
fn index_info(index: &Path) -> Result<Option<EmbedInfo>> {
    let path = index.with_extension("json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::checkpoint(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

pub fn similar(req: &SimilarRequest) -> Result<(Vec<Hit>, Timing)> {
    if req.k == 0 {
        return Err(Error::Usage("-k must be at least 1".into()));
    }
    if req.index.extension().is_some_and(|e| e == "parquet") {
        return Err(Error::Usage(format!(
            "--index {}: `similar` reads the .npy index; embed with --out FILE.npy for it",
            req.index.display()
        )));
    }
    let info = read_encoder_info(&req.from)?;
    let meta = index_info(&req.index)?;
    if let Some(m) = meta.as_ref().filter(|m| m.kind != "image") {
        return Err(Error::Usage(format!(
            "--index {}: vectors of {} data ({}); `similar` takes an image query",
            req.index.display(),
            m.kind,
            m.data
        )));
    }
    let stage = meta.as_ref().and_then(|m| m.stage);
    let t = Instant::now();
    let (rows, n, dim) = npy::read(&req.index)?;
    let load_index_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let q = super::images::embed_file(&req.from, &info, &req.query, stage, &req.device)?;
    let embed_query_ms = t.elapsed().as_secs_f64() * 1e3;
    if q.len() != dim {
        return Err(Error::Usage(format!(
            "--index {} holds {dim}-wide vectors but the encoder of {} gives {} (stage {}); \
             embed with the same run and --stage",
            req.index.display(),
            req.from.display(),
            q.len(),
            stage.map_or("last".to_string(), |s| s.to_string())
        )));
    }
    let t = Instant::now();
    let best = top_k(&rows, dim, &q, req.k);
    let search_ms = t.elapsed().as_secs_f64() * 1e3;
    let ids = read_ids(&req.index.with_extension("csv"))?;
    if let Some(ids) = ids.as_ref().filter(|ids| ids.len() != n) {
        return Err(Error::Usage(format!(
            "{}: {} rows, but {} has {n} vectors; write both with one `pretext embed`",
            req.index.with_extension("csv").display(),
            ids.len(),
            req.index.display()
        )));
    }
    let hits = best
        .into_iter()
        .map(|(row, score)| Hit {
            row,
            score,
            id: ids
                .as_ref()
                .map_or_else(|| format!("row {row}"), |ids| ids[row].clone()),
        })
        .collect();
    Ok((
        hits,
        Timing {
            load_index_ms,
            embed_query_ms,
            search_ms,
            rows: n,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ranks_by_cosine_and_breaks_ties_by_row() {
        // rows: [1,0], [0,1], [2,0] (same direction as row 0), [1,1], [0,0]
        let rows = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let best = top_k(&rows, 2, &[3.0, 0.0], 3);
        assert_eq!(best.iter().map(|b| b.0).collect::<Vec<_>>(), [0, 2, 3]);
        assert!((best[0].1 - 1.0).abs() < 1e-6 && (best[2].1 - 0.70710677).abs() < 1e-6);
        assert_eq!(top_k(&rows, 2, &[0.0, 1.0], 10).len(), 5);
        // 19 wide: the 8-lane loop and its remainder
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let (d, n) = dot_and_norm(&a, &a);
        assert!((d - n * n).abs() < 1e-3);
    }
}
