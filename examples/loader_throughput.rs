//! How fast the loader delivers rotation batches from a folder, streamed or in memory:
//! images/s decoded + resized + augmented + batched, with the default worker count.
//!
//! cargo run --release --example loader_throughput -- DIR [always|never] [seconds]

use std::sync::Arc;
use std::time::Instant;

use pretext::data::augment::Img;
use pretext::data::loader::{Loader, LoaderConfig};
use pretext::data::rngs::BatchRngs;
use pretext::data::{open, OpenOptions, Stream};
use pretext::nn::input::InputSpec;
use pretext::tasks::rotation::{make_batch, RotationConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .ok_or("usage: loader_throughput DIR [always|never] [seconds]")?;
    let stream = match args.get(2).map(String::as_str) {
        Some("never") => Stream::Never,
        _ => Stream::Always,
    };
    let secs: f64 = args.get(3).map_or(Ok(10.0), |s| s.parse())?;
    let t0 = Instant::now();
    let opts = OpenOptions {
        image_size: Some(32),
        stream,
        ..Default::default()
    };
    let ds = open(&format!("folder:{dir}"), &opts)?;
    let set = Arc::new(ds.train);
    let input = InputSpec::from_images(&set)?;
    println!(
        "opened {} images ({:?}) in {:.2}s incl. input statistics",
        set.n,
        stream,
        t0.elapsed().as_secs_f64()
    );
    let rot = RotationConfig::default();
    let workers = pretext::engine::default_workers();
    let loader = Loader::new(
        set,
        LoaderConfig {
            batch_size: 64,
            seed: 0,
            workers,
            prefetch: 4,
            start_batch: 0,
            drop_last: true,
        },
        Arc::new(move |imgs: &[Img], _: &[u32], rngs: &BatchRngs| {
            make_batch(imgs, &rot, &input, rngs)
        }),
    );
    let t1 = Instant::now();
    let mut n = 0usize;
    for b in loader {
        n += b?.shape[0] / 4; // rotation expands each source image into 4 inputs
        if t1.elapsed().as_secs_f64() > secs {
            break;
        }
    }
    let s = t1.elapsed().as_secs_f64();
    println!(
        "{workers} workers: {n} source images in {s:.2}s = {:.0} images/s",
        n as f64 / s
    );
    Ok(())
}
