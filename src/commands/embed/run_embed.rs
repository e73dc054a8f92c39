//! `pretext embed` and `pretext similar` from the command line.

use super::similar::{similar, SimilarRequest};
use super::{embed, EmbedRequest};
use crate::commands::cli::{EmbedArgs, SimilarArgs};
use crate::platform::device;
use crate::Result;

pub fn command(a: EmbedArgs) -> Result<()> {
    let info = embed(&EmbedRequest {
        from: a.from,
        data: a.data,
        out: a.out.clone(),
        stage: a.stage,
        skip_bad: a.skip_bad,
        batch_size: a.batch_size,
        device: device::parse(&a.device)?,
        quiet: a.quiet,
    })?;
    let unit = if info.kind == "text" {
        "documents"
    } else {
        "images"
    };
    println!(
        "{} vectors of {} floats from {} {unit} in {:.1}s ({:.0} {unit}/s{}){}",
        info.rows,
        info.dim,
        info.data,
        info.wall_s,
        info.items_per_s,
        info.train_items_per_s.map_or(String::new(), |t| format!(
            "; training ran at {t:.0} items/s"
        )),
        if info.skipped > 0 {
            format!(", {} skipped", info.skipped)
        } else {
            String::new()
        }
    );
    println!(
        "written to {} (+ {}, {})",
        a.out.display(),
        a.out.with_extension("csv").display(),
        a.out.with_extension("json").display()
    );
    Ok(())
}

pub fn similar_command(a: SimilarArgs) -> Result<()> {
    let (hits, t) = similar(&SimilarRequest {
        from: a.from,
        index: a.index,
        query: a.query,
        k: a.k,
        device: device::parse(&a.device)?,
    })?;
    println!("rank  score   path");
    for (i, h) in hits.iter().enumerate() {
        println!("{:4}  {:.4}  {}", i + 1, h.score, h.id);
    }
    eprintln!(
        "searched {} vectors in {:.1} ms (index read in {:.1} ms, query embedded in {:.1} ms)",
        t.rows, t.search_ms, t.load_index_ms, t.embed_query_ms
    );
    Ok(())
}
