//! `pretext export` from the command line.

use super::{export, ExportRequest, Format};
use crate::commands::cli::ExportArgs;
use crate::platform::device;
use crate::Result;

pub fn command(a: ExportArgs) -> Result<()> {
    let r = export(&ExportRequest {
        from: a.from,
        format: Format::parse(&a.format)?,
        out: a.out,
        device: device::parse("cpu")?,
    })?;
    println!(
        "exported {} ({} floats, {} steps of {}) as {} in {:.2}s: {} ({:.1} MB)",
        r.architecture,
        r.params,
        r.steps.map_or("?".to_string(), |s| s.to_string()),
        r.task,
        r.format,
        r.wall_s,
        r.path.display(),
        r.bytes as f64 / 1e6
    );
    if let Some(tok) = &r.tokenizer {
        println!("tokenizer: {}", tok.display());
    }
    Ok(())
}
