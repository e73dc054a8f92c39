//! Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
//! Solving Jigsaw Puzzles"): a (randomly cropped) image is cut into a 3×3 grid, a random tile is
//! taken inside each cell (so tiles do not touch), the 9 tiles are shuffled by one permutation of
//! a fixed set, and the network predicts which permutation it was. The encoder sees one tile at a
//! time (a siamese "context-free" network with shared weights); the head sees the 9 feature
//! vectors concatenated in the shuffled order.
//!
//! Shortcut defences: the gaps between tiles (no continuing edges across borders), per-tile
//! normalisation (no matching of brightness/contrast between neighbours), per-tile colour jitter
//! and random grayscale on a share of the images (no matching of colour).
//!
//! `pretext pretrain --task jigsaw --data idx:../shared/data/fashion-mnist --out runs/jigsaw`

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::shared::permutations::{PermutationSet, MAX_SIZE};
use super::{backbone, bind, Build, ClassBatch, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{at_least_one, count_in, crop_scale, in_range, parse_section};
use crate::data::augment::{color_jitter, crop, grayscale, inception_crop, resize_bilinear, Img};
use crate::data::loader::MakeBatch;
use crate::data::rngs::BatchRngs;
use crate::engine::{StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::heads::MlpHead;
use crate::nn::input::{standardize_image, InputSpec, InputTransform};
use crate::nn::Backbone;
use crate::platform::fsio::write_atomic;
use crate::report::canvas::{for_display, Canvas};
use crate::report::grid::zoom_for;

pub const ENTRY: TaskEntry = TaskEntry {
    name: "jigsaw",
    description:
        "predict which permutation shuffled the 9 tiles of a 3×3 grid (Noroozi & Favaro 2016)",
    build: Build::Image(build),
};

/// `[jigsaw]` config section. Geometry left unset is scaled to the image size.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JigsawConfig {
    /// Number of permutations (classes), chosen greedily for maximal Hamming distance.
    pub permutations: usize,
    /// Seed of the permutation set (fixed per run; saved as `permutations.json`).
    pub permutation_seed: u64,
    /// Side of the square region cut into the 3×3 grid (default: the largest multiple of 3 that
    /// fits the image).
    pub crop: Option<usize>,
    /// Smallest area fraction of the random resized crop that makes the region (1 = a plain
    /// random crop of `crop` pixels, no resizing).
    pub crop_scale_min: f32,
    /// Side of each tile, taken at a random place inside its cell (default: 80% of the cell).
    pub tile: Option<usize>,
    /// Side the tiles are resized to (bilinear) before the encoder, so that every stage of a
    /// backbone sees real spatial input and not 1×1 maps (default: the tile side, at least 16).
    pub input_size: Option<usize>,
    /// Normalise each tile to zero mean and unit variance on its own.
    pub tile_norm: bool,
    /// Share of colour images turned grey before cutting.
    pub grayscale_prob: f32,
    /// Strength of the per-tile brightness/contrast/saturation jitter (0 = off).
    pub color_jitter: f32,
    /// Hidden width of the head over the 9 concatenated tile features.
    pub hidden: usize,
}

impl Default for JigsawConfig {
    fn default() -> Self {
        Self {
            permutations: 100,
            permutation_seed: 1,
            crop: None,
            crop_scale_min: 0.7,
            tile: None,
            input_size: None,
            tile_norm: true,
            grayscale_prob: 0.3,
            color_jitter: 0.4,
            hidden: 512,
        }
    }
}

/// Resolved puzzle geometry in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    /// Side of the square region (3 × cell ≤ crop).
    pub crop: usize,
    pub cell: usize,
    pub tile: usize,
    /// Side of the tiles the encoder sees (resized from `tile`).
    pub input: usize,
}

impl JigsawConfig {
    /// Geometry for h×w images, or a config error saying what to change.
    pub fn geometry(&self, h: usize, w: usize) -> Result<Geometry> {
        let side = h.min(w);
        let crop = self.crop.unwrap_or(side / 3 * 3);
        if crop > side {
            return Err(Error::config(
                "jigsaw.crop",
                format!("{crop} is larger than the {h}×{w} images; use at most {side}"),
            ));
        }
        let cell = crop / 3;
        if cell < 2 {
            return Err(Error::config(
                "jigsaw.crop",
                format!("{crop} pixels make grid cells of {cell}; need at least 6 (cells of 2)"),
            ));
        }
        let tile = self.tile.unwrap_or((cell * 4 / 5).max(1));
        if tile == 0 || tile > cell {
            return Err(Error::config(
                "jigsaw.tile",
                format!("must be between 1 and the grid cell ({cell} pixels), found {tile}"),
            ));
        }
        let input = self.input_size.unwrap_or(tile.max(16));
        at_least_one("jigsaw.input_size", input)?;
        Ok(Geometry {
            crop,
            cell,
            tile,
            input,
        })
    }

    fn validate(&self) -> Result<()> {
        count_in("jigsaw.permutations", self.permutations, 2, MAX_SIZE)?;
        in_range("jigsaw.grayscale_prob", self.grayscale_prob, 0.0, 1.0)?;
        in_range("jigsaw.color_jitter", self.color_jitter, 0.0, 1.0)?;
        crop_scale("jigsaw.crop_scale_min", self.crop_scale_min)?;
        at_least_one("jigsaw.hidden", self.hidden)
    }
}

/// Shared tile encoder + head over the 9 concatenated tile features.
#[derive(Module, Debug)]
pub struct JigsawModel {
    pub backbone: Backbone,
    pub head: MlpHead,
}

impl JigsawModel {
    /// tiles: [9·n, c, t, t] (9 consecutive tiles per puzzle, in shuffled order) → logits [n, P]
    pub fn forward(&self, tiles: Tensor<4>) -> Tensor<2> {
        let feats = self.backbone.features(tiles);
        let [b, d] = feats.dims();
        self.head.forward(feats.reshape([b / 9, 9 * d]))
    }
}

#[derive(Clone)]
pub struct Jigsaw {
    config: JigsawConfig,
    geometry: Geometry,
    perms: Arc<PermutationSet>,
    input: InputSpec,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let config: JigsawConfig = parse_section("jigsaw", ctx.config.section("jigsaw"))?;
    config.validate()?;
    let geometry = config.geometry(ctx.input.height, ctx.input.width)?;
    let perms = PermutationSet::greedy(config.permutations, config.permutation_seed);
    let backbone = backbone(ctx, ctx.input.channels);
    let head = MlpHead::new(
        9 * backbone.dim(),
        config.hidden,
        config.permutations,
        &ctx.device,
    );
    let task = Jigsaw {
        config,
        geometry,
        perms: Arc::new(perms),
        input: ctx.input.clone(),
        device: ctx.device.clone(),
    };
    Ok(bind(task, JigsawModel { backbone, head }, ctx))
}

/// Top-left corners of the 9 tiles inside the crop region, cell by cell in reading order: each
/// tile lies at a random place inside its cell.
pub fn tile_boxes(g: &Geometry, rng: &mut impl Rng) -> [(usize, usize); 9] {
    std::array::from_fn(|i| {
        let (r, c) = (i / 3, i % 3);
        let slack = g.cell - g.tile;
        (
            r * g.cell + rng.gen_range(0..=slack),
            c * g.cell + rng.gen_range(0..=slack),
        )
    })
}

/// Zero mean and unit variance over all of the tile's values (a flat tile becomes all zeros).
fn normalize_tile(tile: &mut Img) {
    standardize_image(&mut tile.data);
}

/// The pure "damage the data, keep the answer" half. Output: 9 tiles per image in shuffled order
/// ([9·n, c, tile, tile]) and one label per image, the permutation's index.
pub fn make_batch(
    images: &[Img],
    config: &JigsawConfig,
    g: &Geometry,
    perms: &PermutationSet,
    input: &InputSpec,
    rngs: &BatchRngs,
) -> ClassBatch {
    let c = input.channels;
    let mut out = Vec::with_capacity(images.len() * 9 * c * g.input * g.input);
    let mut labels = Vec::with_capacity(images.len());
    for (i, img) in images.iter().enumerate() {
        let rng = &mut rngs.item(i);
        let mut region = if config.crop_scale_min < 1.0 {
            inception_crop(img, g.crop, config.crop_scale_min, rng)
        } else {
            let y = rng.gen_range(0..=img.h - g.crop);
            let x = rng.gen_range(0..=img.w - g.crop);
            crop(img, y, x, g.crop, g.crop)
        };
        if c == 3 && config.grayscale_prob > 0.0 && rng.gen_bool(config.grayscale_prob as f64) {
            region = grayscale(&region);
        }
        let tiles: Vec<Img> = tile_boxes(g, rng)
            .iter()
            .map(|&(y, x)| {
                let mut t = crop(&region, y, x, g.tile, g.tile);
                if g.input != g.tile {
                    t = resize_bilinear(&t, g.input, g.input);
                }
                if config.color_jitter > 0.0 {
                    let s = config.color_jitter;
                    t = color_jitter(&t, s, s, s, rng);
                }
                if config.tile_norm {
                    normalize_tile(&mut t);
                } else {
                    input.normalize(&mut t);
                }
                t
            })
            .collect();
        let label = rng.gen_range(0..perms.len());
        for &tile in &perms.perms[label] {
            out.extend_from_slice(&tiles[tile as usize].data);
        }
        labels.push(label as u32);
    }
    // [9·n, c, tile, tile]: 9 consecutive tiles per image, in shuffled order; one label per
    // image: the index of its permutation in the set.
    ClassBatch {
        images: out,
        shape: [labels.len() * 9, c, g.input, g.input],
        drawn: labels.len(),
        labels,
    }
}

impl Task for Jigsaw {
    type Model = JigsawModel;
    type Batch = ClassBatch;
    type Encoder = Backbone;

    fn step(
        &mut self,
        model: JigsawModel,
        b: ClassBatch,
        cx: &mut StepCtx,
    ) -> (JigsawModel, StepStats) {
        b.step(model, cx, &self.device, |m, x| m.forward(x))
    }

    fn items(batch: &ClassBatch) -> u64 {
        batch.drawn as u64
    }

    fn encoder(model: &JigsawModel) -> Backbone {
        model.backbone.clone()
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        save_permutations(&self.perms, dir)
    }

    /// The checkpoint's permutation set must be the one the config makes, or the head's classes
    /// would change meaning.
    fn load_state(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("permutations.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let saved: PermutationSet = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Usage(format!(
                "{}: not a permutation set ({e}); the checkpoint is damaged",
                path.display()
            ))
        })?;
        if saved.perms != self.perms.perms {
            return Err(Error::Usage(format!(
                "{}: the checkpoint's permutation set differs from the one the config makes \
                 ({} permutations, seed {}); the head's classes would change meaning",
                path.display(),
                self.perms.len(),
                self.perms.seed
            )));
        }
        Ok(())
    }
}

impl ImageTask for Jigsaw {
    fn make_batch(&self) -> MakeBatch<ClassBatch> {
        let (config, g, perms, input) = (
            self.config.clone(),
            self.geometry,
            self.perms.clone(),
            self.input.clone(),
        );
        Arc::new(move |images, _labels, rngs| make_batch(images, &config, &g, &perms, &input, rngs))
    }

    /// With `tile_norm` every tile is standardised on its own, so at transfer (and in embed and
    /// the exports) each image is too: run.json records `per_image = true`.
    fn encoder_input(&self, data: &InputSpec) -> (InputSpec, InputTransform) {
        let spec = InputSpec {
            per_image: self.config.tile_norm,
            ..data.clone()
        };
        (spec, InputTransform::None)
    }

    fn write_samples(&self, _model: &JigsawModel, batch: &ClassBatch, dir: &Path) -> Result<()> {
        save_permutations(&self.perms, dir)?;
        write_puzzles(batch, &self.perms, &dir.join("jigsaw-samples.png"))
    }
}

fn save_permutations(perms: &PermutationSet, dir: &Path) -> Result<()> {
    write_atomic(
        &dir.join("permutations.json"),
        &serde_json::to_vec(perms).expect("json"),
    )
}

/// One row per puzzle (at most 6): the 9 tiles as the network sees them, in shuffled order, then
/// the same tiles put back where the answer says they belong. `PATH.json` lists each row's label.
pub fn write_puzzles(batch: &ClassBatch, perms: &PermutationSet, path: &Path) -> Result<()> {
    let [_, c, t, _] = batch.shape;
    let rows = batch.labels.len().min(6);
    let zoom = zoom_for(t);
    let (tz, pad) = (t * zoom, 2);
    let board = 3 * tz + 2 * pad;
    let mut canvas = Canvas::new(rows * (board + 8) + 8, 2 * board + 40);
    let tile_len = c * t * t;
    let mut answers = Vec::new();
    for (row, &label) in batch.labels.iter().take(rows).enumerate() {
        let perm = &perms.perms[label as usize];
        let y0 = 8 + row * (board + 8);
        for (pos, &orig) in perm.iter().enumerate() {
            let start = (row * 9 + pos) * tile_len;
            let tile = for_display(&batch.images[start..start + tile_len], c, t, t);
            let at = |i: usize| (y0 + (i / 3) * (tz + pad), (i % 3) * (tz + pad));
            let (y, x) = at(pos);
            canvas.paste(&tile, y, 8 + x, zoom);
            let (y, x) = at(orig as usize);
            canvas.paste(&tile, y, 32 + board + x, zoom);
        }
        answers.push(serde_json::json!({ "row": row, "label": label, "permutation": perm }));
    }
    canvas.save_png_with_note(
        path,
        "each row: the 9 tiles in the order the network sees them | the same tiles put back by the answer",
        answers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn spec(c: usize, s: usize) -> InputSpec {
        InputSpec::square(c, s, 0.0, 1.0)
    }

    fn noise_img(c: usize, s: usize, seed: u64) -> Img {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Img {
            c,
            h: s,
            w: s,
            data: (0..c * s * s).map(|_| rng.gen::<f32>()).collect(),
        }
    }

    #[test]
    fn default_geometry_scales_with_the_image() {
        let cfg = JigsawConfig::default();
        let g = cfg.geometry(28, 28).unwrap();
        assert_eq!((g.crop, g.cell, g.tile, g.input), (27, 9, 7, 16));
        let g = cfg.geometry(96, 96).unwrap();
        assert_eq!((g.crop, g.cell, g.tile, g.input), (96, 32, 25, 25));
        let big = JigsawConfig {
            crop: Some(40),
            ..JigsawConfig::default()
        };
        let err = big.geometry(28, 28).unwrap_err().to_string();
        assert!(
            err.contains("jigsaw.crop") && err.contains("larger"),
            "{err}"
        );
        let big_tile = JigsawConfig {
            tile: Some(10),
            ..JigsawConfig::default()
        };
        assert!(big_tile.geometry(28, 28).is_err());
    }

    #[test]
    fn tiles_stay_inside_their_cells() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (s, tile) in [(28, None), (96, None), (32, Some(10)), (30, Some(1))] {
            let cfg = JigsawConfig {
                tile,
                ..JigsawConfig::default()
            };
            let g = cfg.geometry(s, s).unwrap();
            for _ in 0..500 {
                for (i, &(y, x)) in tile_boxes(&g, &mut rng).iter().enumerate() {
                    let (r, c) = (i / 3, i % 3);
                    assert!(y >= r * g.cell && y + g.tile <= (r + 1) * g.cell);
                    assert!(x >= c * g.cell && x + g.tile <= (c + 1) * g.cell);
                    assert!(y + g.tile <= g.crop && x + g.tile <= g.crop);
                }
            }
        }
    }

    #[test]
    fn inverting_the_permutation_restores_the_grid() {
        // No randomness in the tiles themselves: the region is the whole 27×27 image and each
        // tile fills its cell, so the unshuffled tiles are known exactly.
        let cfg = JigsawConfig {
            crop_scale_min: 1.0,
            tile: Some(9),
            input_size: Some(9),
            tile_norm: false,
            color_jitter: 0.0,
            grayscale_prob: 0.0,
            ..JigsawConfig::default()
        };
        let input = spec(3, 27);
        let g = cfg.geometry(27, 27).unwrap();
        let perms = PermutationSet::greedy(100, 0);
        let imgs: Vec<Img> = (0..4).map(|i| noise_img(3, 27, i)).collect();
        let b = make_batch(&imgs, &cfg, &g, &perms, &input, &BatchRngs::new(9, 0));
        assert_eq!(b.shape, [36, 3, 9, 9]);
        assert_eq!(b.labels.len(), 4);
        assert_eq!(Jigsaw::items(&b), 4);
        let n = 3 * 9 * 9;
        let mut distinct = std::collections::HashSet::new();
        for (k, img) in imgs.iter().enumerate() {
            let label = b.labels[k] as usize;
            distinct.insert(label);
            let inv = super::super::shared::permutations::inverse(&perms.perms[label]);
            for (i, &pos) in inv.iter().enumerate() {
                let start = (k * 9 + pos as usize) * n;
                let got = &b.images[start..start + n];
                let want = crop(img, (i / 3) * 9, (i % 3) * 9, 9, 9);
                assert_eq!(got, &want.data[..], "image {k} tile {i}");
            }
        }
        assert!(distinct.len() > 1, "labels vary between images");
    }

    #[test]
    fn tiles_are_normalised_one_by_one() {
        let cfg = JigsawConfig::default();
        let input = spec(3, 32);
        let g = cfg.geometry(32, 32).unwrap();
        let perms = PermutationSet::greedy(10, 0);
        let b = make_batch(
            &[noise_img(3, 32, 5)],
            &cfg,
            &g,
            &perms,
            &input,
            &BatchRngs::new(2, 0),
        );
        let n = 3 * g.input * g.input;
        assert_eq!(b.shape, [9, 3, 16, 16], "8-px tiles are resized to 16");
        for t in b.images.chunks(n) {
            let mean = t.iter().sum::<f32>() / n as f32;
            let var = t.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n as f32;
            assert!(
                mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
                "{mean} {var}"
            );
        }
    }

    #[test]
    fn the_encoder_is_fed_standardised_images_when_tiles_are() {
        let task = |tile_norm| Jigsaw {
            config: JigsawConfig {
                tile_norm,
                ..JigsawConfig::default()
            },
            geometry: JigsawConfig::default().geometry(28, 28).unwrap(),
            perms: Arc::new(PermutationSet::greedy(10, 0)),
            input: spec(1, 28),
            device: Device::flex(),
        };
        let (fed, _) = task(true).encoder_input(&spec(1, 28));
        assert!(fed.per_image);
        let mut img = noise_img(1, 28, 3);
        fed.normalize(&mut img);
        let n = img.data.len() as f32;
        let mean = img.data.iter().sum::<f32>() / n;
        let var = img.data.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
        assert!(
            mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
        assert!(!task(false).encoder_input(&spec(1, 28)).0.per_image);
    }

    #[test]
    fn the_permutation_set_is_checkpointed_and_checked() {
        let task = |seed| Jigsaw {
            config: JigsawConfig::default(),
            geometry: JigsawConfig::default().geometry(28, 28).unwrap(),
            perms: Arc::new(PermutationSet::greedy(10, seed)),
            input: spec(1, 28),
            device: Device::flex(),
        };
        let dir = tempfile::tempdir().unwrap();
        task(0).save_state(dir.path()).unwrap();
        task(0).load_state(dir.path()).unwrap();
        let err = task(1).load_state(dir.path()).unwrap_err().to_string();
        assert!(err.contains("permutation set differs"), "{err}");
    }

    #[test]
    fn sample_picture_is_written() {
        let cfg = JigsawConfig::default();
        let input = spec(1, 28);
        let g = cfg.geometry(28, 28).unwrap();
        let perms = PermutationSet::greedy(10, 0);
        let imgs: Vec<Img> = (0..3).map(|i| noise_img(1, 28, i)).collect();
        let b = make_batch(&imgs, &cfg, &g, &perms, &input, &BatchRngs::new(2, 0));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.png");
        write_puzzles(&b, &perms, &path).unwrap();
        let png = image::open(&path).unwrap();
        assert!(png.height() > 3 * 3 * 7);
        let note: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("j.json")).unwrap()).unwrap();
        assert_eq!(note["rows"].as_array().unwrap().len(), 3);
    }
}
