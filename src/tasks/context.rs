//! Context prediction (Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning
//! by Context Prediction"): take a 3×3 grid of patches from an image, show the network the centre
//! patch and one of its 8 neighbours, and ask where the neighbour sits — an 8-way classification
//! that needs the network to know what objects and their parts look like. Both patches go through
//! the same encoder (shared weights); the head sees their features concatenated.
//!
//! Shortcut defences (as in the paper): a gap between patches and a random jitter of each patch's
//! position (so edges and textures cannot simply be continued across the border), and, on colour
//! data, colour dropping — each patch keeps one random channel and the others are replaced by
//! faint Gaussian noise (so chromatic aberration cannot reveal where a patch was in the frame).
//!
//! Each image yields the centre and `pairs` distinct neighbours; the centre is encoded once.
//!
//! `pretext pretrain --task context --data idx:../shared/data/fashion-mnist --out runs/context`

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{backbone, bind, Build, ClassBatch, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{at_least_one, count_in, non_negative, parse_section};
use crate::data::augment::{crop, resize_bilinear, Img};
use crate::data::loader::MakeBatch;
use crate::data::rngs::BatchRngs;
use crate::engine::{StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::heads::MlpHead;
use crate::nn::input::InputSpec;
use crate::nn::Backbone;
use crate::report::canvas::{for_display, Canvas};
use crate::report::grid::zoom_for;

pub const ENTRY: TaskEntry = TaskEntry {
    name: "context",
    description: "predict where a patch sits among the 8 neighbours of the centre patch (Doersch et al. 2015)",
    build: Build::Image(build),
};

/// Grid positions (row-major 0..9) of the 8 classes; the centre is 4.
pub const NEIGHBOURS: [usize; 8] = [0, 1, 2, 3, 5, 6, 7, 8];
/// Class names, in class order.
pub const POSITION_NAMES: [&str; 8] = [
    "top-left",
    "top",
    "top-right",
    "left",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
];

/// `[context]` config section. Geometry left unset is scaled to the image size.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// Side of each square patch (default: a quarter of the image side, less where the gaps and
    /// jitter would not fit).
    pub patch: Option<usize>,
    /// Pixels between neighbouring patches (default: 2 × jitter + 1; must exceed 2 × jitter, so
    /// two neighbouring patches never touch whatever their jitter).
    pub gap: Option<usize>,
    /// Largest random shift of each patch in y and x (default: 4% of the image side, at least 1).
    pub jitter: Option<usize>,
    /// Side the patches are resized to (bilinear) before the encoder, so that every stage of a
    /// backbone sees real spatial input and not 1×1 maps (default: the patch side, at least 16).
    pub input_size: Option<usize>,
    /// Neighbours asked about per image (1..=8, distinct positions).
    pub pairs: usize,
    /// On colour data, keep one random channel per patch and replace the others by noise.
    pub color_drop: bool,
    /// Standard deviation of that noise, in normalised units (the channel's std is 1).
    pub noise_std: f32,
    /// Hidden width of the head over the two concatenated features.
    pub hidden: usize,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            patch: None,
            gap: None,
            jitter: None,
            input_size: None,
            pairs: 8,
            color_drop: true,
            noise_std: 0.01,
            hidden: 512,
        }
    }
}

/// Resolved grid geometry in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    pub patch: usize,
    pub gap: usize,
    pub jitter: usize,
    /// Side of the patches the encoder sees (resized from `patch`).
    pub input: usize,
}

impl Geometry {
    /// Side of the area the grid can touch: three patches, two gaps, and the jitter on both ends.
    pub fn extent(&self) -> usize {
        3 * self.patch + 2 * self.gap + 2 * self.jitter
    }
}

impl ContextConfig {
    /// Geometry for h×w images, or a config error saying what to change.
    pub fn geometry(&self, h: usize, w: usize) -> Result<Geometry> {
        let side = h.min(w);
        let jitter = self
            .jitter
            .unwrap_or(((side as f32 * 0.04).round() as usize).max(1));
        let gap = self.gap.unwrap_or(2 * jitter + 1);
        let patch = self.patch.unwrap_or_else(|| {
            let fits = side.saturating_sub(2 * gap + 2 * jitter) / 3;
            ((side as f32 * 0.25).round() as usize).min(fits).max(2)
        });
        let g = Geometry {
            patch,
            gap,
            jitter,
            input: self.input_size.unwrap_or(patch.max(16)),
        };
        at_least_one("context.patch", patch)?;
        at_least_one("context.input_size", g.input)?;
        if g.gap <= 2 * g.jitter {
            return Err(Error::config(
                "context.gap",
                format!(
                    "{} must be more than 2 × jitter ({}), or two neighbouring patches can touch \
                     and the network can continue edges across the border",
                    g.gap, g.jitter
                ),
            ));
        }
        if 4 * g.jitter >= g.patch + g.gap {
            return Err(Error::config(
                "context.jitter",
                format!(
                    "{} must be less than a quarter of patch + gap ({} + {}), or the offsets of \
                     neighbouring positions overlap and the labels become ambiguous",
                    g.jitter, g.patch, g.gap
                ),
            ));
        }
        if g.extent() > side {
            return Err(Error::config(
                "context.patch",
                format!(
                    "3 patches of {} + 2 gaps of {} + jitter 2×{} need {} pixels but the images are {h}×{w}; \
                     use a smaller context.patch, context.gap or context.jitter",
                    g.patch,
                    g.gap,
                    g.jitter,
                    g.extent()
                ),
            ));
        }
        Ok(g)
    }

    fn validate(&self) -> Result<()> {
        count_in("context.pairs", self.pairs, 1, 8)?;
        non_negative("context.noise_std", self.noise_std)?;
        at_least_one("context.hidden", self.hidden)
    }
}

/// Shared patch encoder + head over [centre features, neighbour features].
#[derive(Module, Debug)]
pub struct ContextModel {
    pub backbone: Backbone,
    pub head: MlpHead,
}

impl ContextModel {
    /// patches: [n·(1+pairs), c, p, p] (per image the centre, then its neighbours)
    /// → logits [n·pairs, 8]
    pub fn forward(&self, patches: Tensor<4>, pairs: usize) -> Tensor<2> {
        let feats = self.backbone.features(patches);
        let [b, d] = feats.dims();
        let n = b / (1 + pairs);
        let feats = feats.reshape([n, 1 + pairs, d]);
        let centre = feats.clone().narrow(1, 0, 1).repeat_dim(1, pairs);
        let neighbours = feats.narrow(1, 1, pairs);
        let both = Tensor::cat(vec![centre, neighbours], 2).reshape([n * pairs, 2 * d]);
        self.head.forward(both)
    }
}

#[derive(Clone)]
pub struct Context {
    config: ContextConfig,
    geometry: Geometry,
    input: InputSpec,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let config: ContextConfig = parse_section("context", ctx.config.section("context"))?;
    config.validate()?;
    let geometry = config.geometry(ctx.input.height, ctx.input.width)?;
    let backbone = backbone(ctx, ctx.input.channels);
    let head = MlpHead::new(2 * backbone.dim(), config.hidden, 8, &ctx.device);
    let task = Context {
        config,
        geometry,
        input: ctx.input.clone(),
        device: ctx.device.clone(),
    };
    Ok(bind(task, ContextModel { backbone, head }, ctx))
}

/// Top-left corners of the 9 patches (row-major; 4 is the centre) for an h×w image: the grid is
/// placed at a random spot and every patch is shifted by up to ±jitter in y and x.
pub fn patch_boxes(g: &Geometry, h: usize, w: usize, rng: &mut impl Rng) -> [(usize, usize); 9] {
    let oy = rng.gen_range(0..=h - g.extent());
    let ox = rng.gen_range(0..=w - g.extent());
    let j = g.jitter;
    std::array::from_fn(|i| {
        let (r, c) = (i / 3, i % 3);
        (
            oy + r * (g.patch + g.gap) + rng.gen_range(0..=2 * j),
            ox + c * (g.patch + g.gap) + rng.gen_range(0..=2 * j),
        )
    })
}

/// Keep channel `keep`; replace the others with N(0, std²) noise (a normalised patch).
fn drop_colour(patch: &mut Img, std: f32, rng: &mut impl Rng) {
    let keep = rng.gen_range(0..patch.c);
    let plane = patch.h * patch.w;
    for ch in (0..patch.c).filter(|&ch| ch != keep) {
        patch.data[ch * plane..(ch + 1) * plane]
            .iter_mut()
            .for_each(|v| *v = std * standard_normal(rng));
    }
}

/// One N(0, 1) draw (Box–Muller).
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// The pure "damage the data, keep the answer" half. Output per image: the centre patch, then
/// `pairs` neighbours ([n·(1+pairs), c, p, p]); labels: the neighbours' classes (index into
/// [`NEIGHBOURS`]), n·pairs of them.
pub fn make_batch(
    images: &[Img],
    config: &ContextConfig,
    g: &Geometry,
    input: &InputSpec,
    rngs: &BatchRngs,
) -> ClassBatch {
    let (c, p, side) = (input.channels, g.patch, g.input);
    let per_image = 1 + config.pairs;
    let mut out = Vec::with_capacity(images.len() * per_image * c * side * side);
    let mut labels = Vec::with_capacity(images.len() * config.pairs);
    for (i, img) in images.iter().enumerate() {
        let rng = &mut rngs.item(i);
        let boxes = patch_boxes(g, img.h, img.w, rng);
        let mut classes: Vec<u32> = (0..8).collect();
        classes.shuffle(rng);
        classes.truncate(config.pairs);
        let grid = std::iter::once(4).chain(classes.iter().map(|&k| NEIGHBOURS[k as usize]));
        for pos in grid {
            let (y, x) = boxes[pos];
            let mut patch = crop(img, y, x, p, p);
            if side != p {
                patch = resize_bilinear(&patch, side, side);
            }
            input.normalize(&mut patch);
            if c == 3 && config.color_drop {
                drop_colour(&mut patch, config.noise_std, rng);
            }
            out.extend_from_slice(&patch.data);
        }
        labels.extend_from_slice(&classes);
    }
    // Per image the centre patch, then its `pairs` neighbours; the neighbours' classes (index
    // into [`NEIGHBOURS`]) as labels, n·pairs of them.
    ClassBatch {
        images: out,
        shape: [images.len() * per_image, c, side, side],
        labels,
        drawn: images.len(),
    }
}

impl Task for Context {
    type Model = ContextModel;
    type Batch = ClassBatch;
    type Encoder = Backbone;

    fn step(
        &mut self,
        model: ContextModel,
        b: ClassBatch,
        cx: &mut StepCtx,
    ) -> (ContextModel, StepStats) {
        let pairs = self.config.pairs;
        b.step(model, cx, &self.device, |m, x| m.forward(x, pairs))
    }

    fn items(batch: &ClassBatch) -> u64 {
        batch.drawn as u64
    }

    fn encoder(model: &ContextModel) -> Backbone {
        model.backbone.clone()
    }
}

impl ImageTask for Context {
    fn make_batch(&self) -> MakeBatch<ClassBatch> {
        let (config, g, input) = (self.config.clone(), self.geometry, self.input.clone());
        Arc::new(move |images, _labels, rngs| make_batch(images, &config, &g, &input, rngs))
    }

    fn write_samples(&self, _model: &ContextModel, batch: &ClassBatch, dir: &Path) -> Result<()> {
        write_pairs(batch, self.config.pairs, &dir.join("context-samples.png"))
    }
}

/// One row per image (at most 6): the pair as the network sees it (centre | neighbour), then a
/// 3×3 board with the centre and the neighbour drawn where the answer puts it. `PATH.json` lists
/// each row's answer.
pub fn write_pairs(batch: &ClassBatch, pairs: usize, path: &Path) -> Result<()> {
    let [b, c, p, _] = batch.shape;
    let per_image = 1 + pairs;
    let rows = (b / per_image).min(6);
    let zoom = zoom_for(p);
    let (pz, pad) = (p * zoom, 3);
    let board = 3 * pz + 2 * pad;
    let mut canvas = Canvas::new(rows * (board + 8) + 8, 2 * pz + pad + 32 + board + 8);
    let len = c * p * p;
    let patch = |i: usize| for_display(&batch.images[i * len..(i + 1) * len], c, p, p);
    let mut answers = Vec::new();
    for row in 0..rows {
        let y0 = 8 + row * (board + 8);
        let (centre, neighbour) = (patch(row * per_image), patch(row * per_image + 1));
        let class = batch.labels[row * pairs] as usize;
        canvas.paste(&centre, y0 + pz, 8, zoom);
        canvas.paste(&neighbour, y0 + pz, 8 + pz + pad, zoom);
        let bx = 8 + 2 * pz + pad + 24;
        canvas.fill(y0, bx, board, board, [40, 40, 40]);
        canvas.paste(&centre, y0 + pz + pad, bx + pz + pad, zoom);
        let pos = NEIGHBOURS[class];
        canvas.paste(
            &neighbour,
            y0 + (pos / 3) * (pz + pad),
            bx + (pos % 3) * (pz + pad),
            zoom,
        );
        answers.push(
            serde_json::json!({ "row": row, "label": class, "position": POSITION_NAMES[class] }),
        );
    }
    canvas.save_png_with_note(
        path,
        "each row: centre | neighbour as the network sees them, then both placed on the 3×3 grid by the answer",
        answers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn spec(c: usize, h: usize, w: usize) -> InputSpec {
        InputSpec {
            channels: c,
            height: h,
            width: w,
            mean: vec![0.0; c],
            std: vec![1.0; c],
            per_image: false,
        }
    }

    #[test]
    fn default_geometry_scales_with_the_image() {
        let cfg = ContextConfig::default();
        let g = cfg.geometry(28, 28).unwrap();
        assert_eq!((g.patch, g.gap, g.jitter, g.input), (6, 3, 1, 16));
        assert!(g.extent() <= 28);
        for s in [32, 64, 96, 224] {
            assert!(cfg.geometry(s, s).unwrap().extent() <= s);
        }
        let g = cfg.geometry(96, 96).unwrap();
        assert_eq!((g.patch, g.gap, g.jitter, g.input), (23, 9, 4, 23));
        let err = ContextConfig {
            patch: Some(12),
            ..ContextConfig::default()
        }
        .geometry(28, 28)
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("context.patch") && err.contains("28×28"),
            "{err}"
        );
        let err = ContextConfig {
            patch: Some(10),
            jitter: Some(7),
            ..ContextConfig::default()
        }
        .geometry(96, 96)
        .unwrap_err()
        .to_string();
        assert!(err.contains("ambiguous"), "{err}");
        let err = ContextConfig {
            gap: Some(2),
            jitter: Some(1),
            ..ContextConfig::default()
        }
        .geometry(28, 28)
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("context.gap") && err.contains("touch"),
            "{err}"
        );
    }

    /// Neighbouring patches never touch: at least one pixel between them in every draw.
    #[test]
    fn neighbouring_patches_never_touch() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for s in [28, 32, 64, 96, 224] {
            let g = ContextConfig::default().geometry(s, s).unwrap();
            for _ in 0..2000 {
                let b = patch_boxes(&g, s, s, &mut rng);
                for r in 0..3 {
                    for c in 0..2 {
                        let (left, right) = (b[r * 3 + c], b[r * 3 + c + 1]);
                        assert!(right.1 > left.1 + g.patch, "{s}px: {left:?} {right:?}");
                        let (top, below) = (b[c * 3 + r], b[(c + 1) * 3 + r]);
                        assert!(below.0 > top.0 + g.patch, "{s}px: {top:?} {below:?}");
                    }
                }
            }
        }
    }

    /// Which side (0 before, 1 level, 2 after) offset `d` puts a patch on, asserting that `d` is
    /// within the jitter band of a grid step `step`.
    fn side(d: i64, step: i64, jitter: i64) -> i64 {
        let k = (d as f64 / step as f64).round() as i64;
        assert!(
            (d - k * step).abs() <= 2 * jitter,
            "offset {d} for step {step}"
        );
        k + 1
    }

    /// Every patch stays inside the image for every position and jitter draw, and each
    /// neighbour lies strictly on the side of the centre its label names.
    #[test]
    fn patches_in_bounds_and_labels_match_geometry() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (h, w, cfg) in [
            (28, 28, ContextConfig::default()),
            (96, 96, ContextConfig::default()),
            (40, 64, ContextConfig::default()),
            (
                30,
                30,
                ContextConfig {
                    patch: Some(7),
                    gap: Some(3),
                    jitter: Some(1),
                    ..ContextConfig::default()
                },
            ),
        ] {
            let g = cfg.geometry(h, w).unwrap();
            for _ in 0..2000 {
                let boxes = patch_boxes(&g, h, w, &mut rng);
                let (cy, cx) = boxes[4];
                for &(y, x) in &boxes {
                    assert!(y + g.patch <= h && x + g.patch <= w);
                }
                for (class, &pos) in NEIGHBOURS.iter().enumerate() {
                    let (y, x) = boxes[pos];
                    let (step, j) = ((g.patch + g.gap) as i64, g.jitter as i64);
                    let dy = side(y as i64 - cy as i64, step, j);
                    let dx = side(x as i64 - cx as i64, step, j);
                    assert_eq!(
                        (dy, dx),
                        ((pos / 3) as i64, (pos % 3) as i64),
                        "class {class} ({})",
                        POSITION_NAMES[class]
                    );
                }
            }
        }
    }

    #[test]
    fn batch_holds_centre_then_labelled_neighbours() {
        // A 1-channel image whose pixel value encodes its coordinates: each patch's top-left
        // pixel tells where it was cut from.
        let (h, w) = (28, 28);
        let img = Img::from_fn(1, h, w, |_, y, x| (y * w + x) as f32);
        let cfg = ContextConfig {
            pairs: 3,
            input_size: Some(6),
            ..ContextConfig::default()
        };
        let g = cfg.geometry(h, w).unwrap();
        let b = make_batch(
            &[img.clone(), img],
            &cfg,
            &g,
            &spec(1, h, w),
            &BatchRngs::new(4, 0),
        );
        assert_eq!(b.shape, [8, 1, 6, 6]);
        assert_eq!(b.labels.len(), 6);
        assert_eq!(Context::items(&b), 2);
        let len = 36;
        let corner = |i: usize| {
            let v = b.images[i * len] as usize;
            (v / w, v % w)
        };
        for k in 0..2 {
            let (cy, cx) = corner(k * 4);
            let mut seen = std::collections::HashSet::new();
            for j in 0..3 {
                let class = b.labels[k * 3 + j] as usize;
                assert!(seen.insert(class), "neighbours are distinct");
                let pos = NEIGHBOURS[class];
                let (y, x) = corner(k * 4 + 1 + j);
                let dy = side(y as i64 - cy as i64, 9, 1);
                let dx = side(x as i64 - cx as i64, 9, 1);
                assert_eq!((dy, dx), ((pos / 3) as i64, (pos % 3) as i64));
            }
        }
    }

    #[test]
    fn colour_dropping_keeps_one_channel() {
        let img = Img::from_fn(3, 32, 32, |c, y, x| {
            0.2 + 0.1 * c as f32 + 0.001 * (y + x) as f32
        });
        let cfg = ContextConfig {
            pairs: 1,
            ..ContextConfig::default()
        };
        let g = cfg.geometry(32, 32).unwrap();
        let b = make_batch(&[img], &cfg, &g, &spec(3, 32, 32), &BatchRngs::new(0, 0));
        let plane = g.input * g.input;
        assert_eq!(b.shape, [2, 3, 16, 16], "8-px patches are resized to 16");
        for patch in b.images.chunks(3 * plane) {
            let kept: Vec<bool> = patch
                .chunks(plane)
                .map(|ch| ch.iter().all(|&v| v >= 0.2))
                .collect();
            assert_eq!(kept.iter().filter(|&&k| k).count(), 1, "{kept:?}");
            for (ch, _) in kept.iter().enumerate().filter(|(_, &k)| !k) {
                let noise = &patch[ch * plane..(ch + 1) * plane];
                assert!(noise.iter().all(|v| v.abs() < 0.1));
            }
        }
    }

    #[test]
    fn sample_picture_is_written() {
        let cfg = ContextConfig::default();
        let img = Img::from_fn(1, 28, 28, |_, y, x| ((y * 3 + x) % 7) as f32 / 7.0);
        let g = cfg.geometry(28, 28).unwrap();
        let b = make_batch(
            &[img.clone(), img],
            &cfg,
            &g,
            &spec(1, 28, 28),
            &BatchRngs::new(0, 0),
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(b.labels.len(), 2 * cfg.pairs);
        write_pairs(&b, cfg.pairs, &dir.path().join("c.png")).unwrap();
        assert!(image::open(dir.path().join("c.png")).is_ok());
        let note: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("c.json")).unwrap()).unwrap();
        assert_eq!(note["rows"].as_array().unwrap().len(), 2);
    }
}
