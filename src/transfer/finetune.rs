//! Fine-tuning: the whole encoder plus a linear head trained end-to-end on the labelled subset,
//! with light augmentation (random resized crop, horizontal flip). With a randomly initialised
//! encoder this is the "from scratch" baseline: same architecture, same budget. The steps go
//! through the engine's [`Bound`], so fine-tuning uses every core as pretraining does (one
//! replica per core, see `engine::replicas`).

use std::path::Path;
use std::sync::Arc;

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::Rng;

use crate::config::NonFinite;
use crate::data::augment::{inception_crop, maybe_flip, Img};
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::data::mix::{mix_batch, Mix, MixSettings};
use crate::data::rngs::BatchRngs;
use crate::data::{DataError, ImageSet};
use crate::engine::checkpoint::{checkpoints_dir, latest_checkpoint};
use crate::engine::optim::optimizer;
use crate::engine::replicas::{resolve, split_batch};
use crate::engine::run_loop::{self, LoopSettings};
use crate::engine::step::{classification_step_with, images_tensor, labels_tensor};
use crate::engine::{AnyBatch, Bound, StepCtx, StepStats, Task, Trainable};
use crate::error::{Error, Result};
use crate::nn::heads::LinearHead;
use crate::nn::input::InputSpec;
use crate::nn::Backbone;
use crate::transfer::features::normalized_images;
use crate::transfer::linear_probe::accuracy;

pub struct FinetuneSettings {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub crop_scale_min: f32,
    pub flip: bool,
    /// Layer-wise learning-rate decay: the head (and a ViT's final norm) trains at `lr`, the
    /// encoder's top group at `lr·d`, the next one down at `lr·d²`, … (1 = one rate for all).
    pub layer_decay: f64,
    /// Label smoothing ε of the cross-entropy (0 = none).
    pub label_smoothing: f32,
    /// Mixup / CutMix of the augmented batches (off by default).
    pub mix: MixSettings,
    pub workers: usize,
    pub quiet: bool,
    /// Stop after this step with a checkpoint, as Ctrl-C would (as `pretrain --stop-after`);
    /// None = all `steps`.
    pub stop_after: Option<u64>,
}

impl FinetuneSettings {
    /// The light augmentation fine-tuning trains on (the semi-supervised stage's weak view).
    pub fn weak(&self) -> WeakView {
        WeakView {
            crop_scale_min: self.crop_scale_min,
            flip: self.flip,
        }
    }
}

/// Fine-tuning's augmentation: a random resized crop of at least `crop_scale_min` of the area
/// (square images; 1 = none) and a horizontal flip at even odds.
#[derive(Clone, Copy, Debug)]
pub struct WeakView {
    pub crop_scale_min: f32,
    pub flip: bool,
}

impl WeakView {
    /// One view of `img` (values in [0, 1]), the same size.
    pub fn view(&self, img: &Img, rng: &mut impl Rng) -> Img {
        let mut out = if self.crop_scale_min < 1.0 && img.h == img.w {
            inception_crop(img, img.h, self.crop_scale_min, rng)
        } else {
            img.clone()
        };
        out = maybe_flip(out, self.flip, rng);
        out
    }
}

/// Fine-tuning's optimisers: `model` (the head, and everything when there is no decay), then
/// one per depth group under layer-wise decay ([`DEPTH_OPTIMIZERS`]).
const FINETUNE_OPTIMIZERS: &[&str] = &[
    "model", "depth0", "depth1", "depth2", "depth3", "depth4", "depth5", "depth6", "depth7",
    "depth8", "depth9", "depth10", "depth11", "depth12", "depth13", "depth14", "depth15",
];

/// The depth groups' optimiser names (input side first); deeper encoders share the first name
/// among their lowest groups.
const DEPTH_OPTIMIZERS: &[&str] = FINETUNE_OPTIMIZERS.split_at(1).1;

/// Depth groups (input side first) with their learning-rate factors `decay^(groups − k)` (k = 0
/// at the input), at most one group per [`DEPTH_OPTIMIZERS`] name: the lowest ones merge.
fn layer_groups(groups: Vec<Vec<ParamId>>, decay: f64) -> Vec<(Vec<ParamId>, f64)> {
    let n = groups.len();
    let merged = n.saturating_sub(DEPTH_OPTIMIZERS.len());
    let mut out: Vec<(Vec<ParamId>, f64)> = Vec::new();
    for (k, ids) in groups.into_iter().enumerate() {
        if k <= merged && !out.is_empty() {
            out[0].0.extend(ids);
        } else {
            out.push((ids, decay.powi((n - k) as i32)));
        }
    }
    out
}

#[derive(Module, Debug)]
pub struct Classifier {
    pub backbone: Backbone,
    pub head: LinearHead,
}

impl Classifier {
    /// x: [batch, c, h, w] → logits [batch, classes]
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.backbone.features(x))
    }
}

/// Where fine-tuning keeps its checkpoints and how it treats a non-finite loss.
pub struct FitDir<'a> {
    /// The stage directory: `checkpoints/` and `metrics.jsonl`. A checkpoint there (from an
    /// interrupted run of the same fine-tuning: the callers keep a stage directory only for the
    /// same record, [`super::semi::prepare_finetune_dir`]) is continued from; the checkpoints
    /// are removed once the last step is done.
    pub dir: &'a Path,
    pub checkpoint_every: u64,
    /// `on_nonfinite = "skip"`: a step with a NaN/Inf loss is undone and fine-tuning goes on.
    pub skip_nonfinite: bool,
}

impl<'a> FitDir<'a> {
    pub fn new(dir: &'a Path, checkpoint_every: u64, on_nonfinite: NonFinite) -> Self {
        Self {
            dir,
            checkpoint_every,
            skip_nonfinite: on_nonfinite == NonFinite::Skip,
        }
    }

    /// Create the directory and load its checkpoint into `bound`, if it holds one (saying so
    /// unless `quiet`); the step fine-tuning continues from.
    pub fn resume(&self, bound: &mut dyn Trainable, quiet: bool) -> Result<u64> {
        if crate::platform::dist::is_writer() {
            std::fs::create_dir_all(self.dir).map_err(|e| Error::io(self.dir, e))?;
        }
        let resumed = latest_checkpoint(self.dir)?;
        let start = run_loop::resume(bound, &resumed, self.dir, true)?;
        if start > 0 && !quiet {
            eprintln!(
                "finetune: continuing {} from step {start}",
                self.dir.display()
            );
        }
        Ok(start)
    }

    /// The engine loop's settings for fine-tuning: a cosine schedule from `lr` to 0 after
    /// `warmup_steps`, one checkpoint kept.
    #[allow(clippy::too_many_arguments)]
    pub fn loop_settings(
        &self,
        steps: u64,
        lr: f64,
        warmup_steps: u64,
        seed: u64,
        log_every: u64,
        unit: &'static str,
        quiet: bool,
    ) -> LoopSettings {
        LoopSettings::transfer_stage(
            "finetune",
            steps,
            lr,
            warmup_steps,
            seed,
            log_every,
            self.checkpoint_every,
            unit,
            quiet,
        )
    }

    /// Steps `start..end` of a fine-tuning of `settings.steps` steps through the engine's loop
    /// (`next` gives the batches): stopped early (Ctrl-C) it is an error naming its checkpoint;
    /// after the last step the checkpoints go ([`Self::finished`]).
    pub fn train(
        &self,
        bound: &mut dyn Trainable,
        next: &mut run_loop::BatchSource,
        settings: &LoopSettings,
        start: u64,
        end: u64,
    ) -> Result<()> {
        if start < end {
            run_loop::run(bound, next, settings, self.dir, start, end)?.reached(
                end,
                "fine-tuning",
                self.dir,
            )?;
        }
        if end == settings.steps {
            self.finished()?;
        }
        Ok(())
    }

    /// After the last step: the result file records what fine-tuning gave, so its checkpoints
    /// (the size of three models) go.
    fn finished(&self) -> Result<()> {
        if !crate::platform::dist::is_writer() {
            return Ok(());
        }
        let dir = checkpoints_dir(self.dir);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&dir, e)),
            _ => Ok(()),
        }
    }
}

/// A labelled batch as fine-tuning steps it: the images, and how they were mixed if they were.
#[derive(Clone)]
struct MixedBatch {
    batch: Batch,
    mix: Option<Mix>,
}

/// Fine-tuning as the engine steps it: cross-entropy on a labelled batch (against mixed
/// targets when the batch was mixed); with layer-wise decay, each depth group is updated by
/// its own optimiser at its own rate.
#[derive(Clone)]
struct Finetune {
    device: Device,
    groups: Arc<Vec<(Vec<ParamId>, f64)>>,
    label_smoothing: f32,
}

impl Task for Finetune {
    type Model = Classifier;
    type Encoder = Backbone;
    type Batch = MixedBatch;
    const OPTIMIZERS: &'static [&'static str] = FINETUNE_OPTIMIZERS;

    fn step(
        &mut self,
        model: Classifier,
        MixedBatch { batch, mix }: MixedBatch,
        cx: &mut StepCtx,
    ) -> (Classifier, StepStats) {
        let y = labels_tensor(&batch.labels, &self.device);
        let mix = mix.map(|m| (labels_tensor(&m.partner, &self.device), m.lam));
        let x = images_tensor(
            batch.images,
            [batch.b, batch.c, batch.h, batch.w],
            &self.device,
        );
        let groups = self.groups.clone();
        classification_step_with(
            model,
            cx,
            y,
            self.label_smoothing,
            mix,
            |m| m.forward(x),
            |mut model, cx, mut grads| {
                for (k, (ids, scale)) in groups.iter().enumerate() {
                    let g = GradientsParams::from_params(&mut grads, &model, ids);
                    model = cx.update(DEPTH_OPTIMIZERS[k], cx.lr * scale, model, g);
                }
                let rest = GradientsParams::from_grads(grads, &model);
                cx.update("model", cx.lr, model, rest)
            },
        )
    }

    fn items(batch: &MixedBatch) -> u64 {
        batch.batch.b as u64
    }

    fn encoder(model: &Classifier) -> Backbone {
        model.backbone.clone()
    }
}

/// Fine-tune `encoder` and a linear head (`head`, or a random one) on `train` (labelled),
/// return accuracy on `test`.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    encoder: Backbone,
    head: Option<LinearHead>,
    train: ImageSet,
    test: &ImageSet,
    test_idx: &[usize],
    classes: usize,
    input: &InputSpec,
    s: &FinetuneSettings,
    device: &Device,
    at: &FitDir,
) -> Result<f32> {
    let model = train_classifier(encoder, head, train, classes, input, s, device, at)?;
    Ok(test_accuracy(&model, test, test_idx, input, device)?)
}

/// Fine-tune `encoder` and a linear head (`head`, or a random one) on `train` (labelled),
/// through the engine's loop in `at` (checkpoints, Ctrl-C, NaN skip, resume); the trained
/// classifier, on `device` (no autodiff).
#[allow(clippy::too_many_arguments)]
pub fn train_classifier(
    encoder: Backbone,
    head: Option<LinearHead>,
    train: ImageSet,
    classes: usize,
    input: &InputSpec,
    s: &FinetuneSettings,
    device: &Device,
    at: &FitDir,
) -> Result<Classifier> {
    let ad = device.clone().autodiff();
    let dim = encoder.dim();
    let head = match head {
        // `train()`: the probe was built without autodiff; its weights must take gradients here.
        Some(h) => h.to_device(&ad).train(),
        None => crate::platform::device::seeded(&ad, s.seed, || LinearHead::new(dim, classes, &ad)),
    };
    let model = Classifier {
        backbone: encoder.to_device(&ad).train(),
        head,
    };
    let groups = if s.layer_decay == 1.0 {
        Vec::new()
    } else {
        layer_groups(model.backbone.depth_groups(), s.layer_decay)
    };
    let bs = s.batch_size.min(train.n);
    let replicas = resolve(0, bs, &ad).unwrap_or(1);
    let mut bound = Bound::new(
        Finetune {
            device: ad.clone(),
            groups: Arc::new(groups),
            label_smoothing: s.label_smoothing,
        },
        model,
        &optimizer(crate::config::OptimizerKind::Adamw, s.weight_decay, 0.9),
        at.skip_nonfinite,
    )
    .with_replicas(replicas);
    let start = at.resume(&mut bound, s.quiet)?;
    let (weak, mix, spec) = (s.weak(), s.mix, input.clone());
    // Every image's crop and flip come from its own generator (the same whatever the replica
    // count); mixup/CutMix pairs images within a replica's part, with λ (and CutMix's box) drawn
    // once per batch from its shared generator, so mixed batches still depend on the count.
    let augment = move |images: &[crate::data::augment::Img], labels: &[u32], rngs: &BatchRngs| {
        let mut views: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, img)| weak.view(img, &mut rngs.item(i)))
            .collect();
        let mix = mix_batch(&mut views, labels, &mix, &mut rngs.shared());
        let mut out = Vec::new();
        for mut img in views {
            spec.normalize(&mut img);
            out.extend_from_slice(&img.data);
        }
        MixedBatch {
            batch: Batch {
                b: images.len(),
                c: spec.channels,
                h: spec.height,
                w: spec.width,
                images: out,
                labels: labels.to_vec(),
            },
            mix,
        }
    };
    // One part per replica.
    let make: crate::data::loader::MakeBatch<Box<dyn crate::engine::AnyBatch>> =
        Arc::new(move |images, labels, rngs| {
            split_batch(images.len(), replicas, rngs, |r, rngs| {
                augment(&images[r.clone()], &labels[r], rngs)
            })
        });
    let mut loader = Loader::new(
        Arc::new(train),
        LoaderConfig {
            batch_size: bs,
            seed: s.seed,
            workers: s.workers,
            prefetch: 4,
            start_batch: start,
            drop_last: true,
        },
        make,
    );
    let mut next = |_step: u64| -> Result<Box<dyn AnyBatch>> {
        match loader.next() {
            Some(b) => Ok(b?),
            None => Err(Error::Usage("the labelled images ran out".into())),
        }
    };
    let settings = at.loop_settings(s.steps, s.lr, s.steps / 20, s.seed, 50, "images", s.quiet);
    let end = s.stop_after.map_or(s.steps, |e| e.min(s.steps));
    at.train(&mut bound, &mut next, &settings, start, end)?;
    Ok(bound.model().valid().to_device(device))
}

/// Accuracy of `model` (in inference mode) on `test[test_idx]`.
pub fn test_accuracy(
    model: &Classifier,
    test: &ImageSet,
    test_idx: &[usize],
    input: &InputSpec,
    device: &Device,
) -> Result<f32, DataError> {
    let (c, h, w) = (test.channels, test.height, test.width);
    let x = normalized_images(test, test_idx, input)?;
    let y: Vec<u32> = test_idx
        .iter()
        .map(|&i| test.labels.as_ref().expect("labelled")[i])
        .collect();
    let dim_in = c * h * w;
    // The classifier takes images; wrap rows of flattened images back into [n, c, h, w].
    Ok(accuracy(
        |rows| {
            let n = rows.dims()[0];
            model.forward(rows.reshape([n, c, h, w]))
        },
        &x,
        &y,
        dim_in,
        device,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{BackboneKind, BackboneSpec};

    #[test]
    fn layer_groups_decay_from_the_top_and_merge_the_lowest() {
        let ids = |n: usize| (0..n).map(|_| vec![ParamId::new()]).collect::<Vec<_>>();
        let g = layer_groups(ids(4), 0.5);
        let scales: Vec<f64> = g.iter().map(|(_, s)| *s).collect();
        assert_eq!(scales, vec![0.0625, 0.125, 0.25, 0.5]);
        // 20 groups on 16 names: the 5 lowest share the first name, at the lowest one's rate.
        let deep = ids(20);
        let g = layer_groups(deep.clone(), 0.9);
        assert_eq!(g.len(), DEPTH_OPTIMIZERS.len());
        assert_eq!(g[0].0.len(), 5);
        assert!((g[0].1 - 0.9f64.powi(20)).abs() < 1e-12);
        assert_eq!(g[15].0, deep[19]);
        assert_eq!(g[15].1, 0.9);
    }

    #[test]
    fn every_encoder_parameter_is_in_one_depth_group() {
        let device = Device::flex();
        for (kind, groups) in [
            (BackboneKind::Convnet, 4),
            (BackboneKind::Resnet18, 5),
            (BackboneKind::Vit, 7),
        ] {
            let spec = BackboneSpec {
                kind,
                in_channels: 1,
                width: if kind == BackboneKind::Vit { 32 } else { 4 },
                patch: 0,
            };
            let enc = spec.init(&device);
            let g = enc.depth_groups();
            assert_eq!(g.len(), groups, "{kind:?}");
            let mut grouped: Vec<ParamId> = g.concat();
            let n = grouped.len();
            grouped.sort();
            grouped.dedup();
            assert_eq!(grouped.len(), n, "{kind:?}: a parameter in two groups");
            let all = crate::nn::param_ids(&enc);
            // A ViT's final norm (weight, bias) sits on top with the head.
            let top = if kind == BackboneKind::Vit { 2 } else { 0 };
            assert_eq!(all.len(), n + top, "{kind:?}");
        }
    }

    const CLASSES: usize = 3;

    /// A width-4 conv net with a 3-class head, and a batch of six 16×16 grey images.
    fn fixture(device: &Device) -> (Classifier, Batch) {
        let spec = BackboneSpec {
            kind: BackboneKind::Convnet,
            in_channels: 1,
            width: 4,
            patch: 0,
        };
        let model = crate::platform::device::seeded(device, 3, || Classifier {
            backbone: spec.init(device),
            head: LinearHead::new(32, CLASSES, device),
        });
        let (b, side) = (6, 16);
        let images: Vec<f32> = (0..b * side * side)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
            .collect();
        let batch = Batch {
            images,
            labels: vec![0, 1, 2, 0, 1, 2],
            b,
            c: 1,
            h: side,
            w: side,
        };
        (model, batch)
    }

    /// Fine-tuning on the built-in images stopped after step 3 (with its checkpoint, as Ctrl-C
    /// stops it) and run again from other starting weights continues from the checkpoint and
    /// ends with the very bits of an uninterrupted run: one replica per core, crops, flips and
    /// batch norm included. The finished run leaves no checkpoint behind.
    #[test]
    fn an_interrupted_fine_tuning_resumes_bit_for_bit() {
        let device = Device::flex();
        let data = crate::data::builtin::builtin_dataset().unwrap();
        let train = data.train.subset(&(0..48).collect::<Vec<_>>());
        let input = InputSpec::square(1, 28, 0.286, 0.353);
        let spec = BackboneSpec {
            kind: BackboneKind::Convnet,
            in_channels: 1,
            width: 4,
            patch: 0,
        };
        let encoder = |seed| crate::platform::device::seeded(&device, seed, || spec.init(&device));
        let s = FinetuneSettings {
            steps: 6,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 5e-4,
            seed: 1,
            crop_scale_min: 0.8,
            flip: true,
            layer_decay: 1.0,
            label_smoothing: 0.0,
            mix: MixSettings::default(),
            workers: 1,
            quiet: true,
            stop_after: None,
        };
        let tmp = tempfile::tempdir().unwrap();
        let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
        let at = |dir| FitDir::new(dir, 2, NonFinite::Stop);
        let fit = |seed, s: &FinetuneSettings, dir| {
            train_classifier(
                encoder(seed),
                None,
                train.clone(),
                10,
                &input,
                s,
                &device,
                &at(dir),
            )
            .unwrap()
        };
        let a = fit(3, &s, &whole);
        assert!(!checkpoints_dir(&whole).exists());
        let first = FinetuneSettings {
            stop_after: Some(3),
            ..s
        };
        fit(3, &first, &parts);
        let saved = latest_checkpoint(&parts).unwrap().expect("a checkpoint");
        assert_eq!(saved.1.step, 3);
        // Other starting weights: only the checkpoint can carry the first three steps.
        let b = fit(4, &s, &parts);
        let file = |m: &Classifier, name: &str| {
            let path = tmp.path().join(name);
            crate::engine::checkpoint::save_weights(m, &path).unwrap();
            std::fs::read(path).unwrap()
        };
        assert!(file(&a, "a.safetensors") == file(&b, "b.safetensors"));
    }

    /// One AdamW step moves each weight by about its group's rate (Adam's first step is
    /// lr·g/|g|): the head by `lr`, the convnet's stages by lr·d⁴ … lr·d.
    #[test]
    fn layer_decay_scales_each_stage_update() {
        let device = Device::flex().autodiff();
        let (model, batch) = fixture(&device);
        let before = model.clone();
        let groups = layer_groups(model.backbone.depth_groups(), 0.5);
        let task = Finetune {
            device: device.clone(),
            groups: Arc::new(groups.clone()),
            label_smoothing: 0.0,
        };
        let optim = optimizer(crate::config::OptimizerKind::Adamw, 0.0, 0.9);
        let mut bound = Bound::new(task, model, &optim, false);
        let lr = 0.01;
        bound.step_typed(MixedBatch { batch, mix: None }, 0, lr);
        let after = bound.model().clone();
        let moved = |a: &Classifier, b: &Classifier, ids: &[ParamId]| -> f32 {
            let (a, b) = (flat_params(a), flat_params(b));
            ids.iter()
                .map(|id| {
                    let (x, y) = (&a[id], &b[id]);
                    x.iter()
                        .zip(y)
                        .map(|(p, q)| (p - q).abs())
                        .fold(0.0, f32::max)
                })
                .fold(0.0, f32::max)
        };
        for (ids, scale) in &groups {
            let m = moved(&before, &after, ids);
            let want = (lr * scale) as f32;
            assert!(
                m <= want * 1.001 && m >= want * 0.9,
                "moved {m}, want {want}"
            );
        }
        let head = crate::nn::param_ids(&before.head);
        let m = moved(&before, &after, &head);
        assert!(
            m <= lr as f32 * 1.001 && m >= lr as f32 * 0.9,
            "head moved {m}"
        );
    }

    /// The step's loss is the cross-entropy against smoothed targets, (1 − ε)·one-hot + ε/K,
    /// computed here by hand from the model's logits before the step.
    #[test]
    fn label_smoothing_reaches_the_loss() {
        let device = Device::flex().autodiff();
        let (model, mut batch) = fixture(&device);
        let k = CLASSES;
        let logits = train_logits(&model, &batch, &device);
        // Each image labelled with its least likely class: smoothing then lowers the loss by
        // ε times the label's excess over the mean log-loss, whatever the initialisation.
        batch.labels = logits.chunks(k).map(least_likely).collect();
        let labels = batch.labels.clone();
        let by_hand = |eps: f32| ce_by_hand(&logits, &labels, k, eps);
        for eps in [0.0f32, 0.3] {
            let loss = step_loss(&model, &batch, None, eps, &device);
            let want = by_hand(eps);
            assert!(
                (loss - want).abs() < 1e-4 * want.max(1.0),
                "ε {eps}: loss {loss} vs {want} by hand"
            );
        }
        // The two targets give losses far enough apart for the check above to tell them apart.
        assert!(by_hand(0.3) < by_hand(0.0) - 1e-3);
    }

    /// A mixed batch's loss is λ·CE(own labels) + (1 − λ)·CE(partners' labels), smoothing
    /// included, against the logits of the (already mixed) images.
    #[test]
    fn mixed_targets_weight_the_two_losses_by_lambda() {
        let device = Device::flex().autodiff();
        let (model, mut batch) = fixture(&device);
        let k = CLASSES;
        let logits = train_logits(&model, &batch, &device);
        // Own labels the least likely classes, partners the most likely: the two losses then
        // differ by the rows' logit spread, so a wrong λ cannot pass, whatever the initialisation.
        batch.labels = logits.chunks(k).map(least_likely).collect();
        let partner: Vec<u32> = logits
            .chunks(k)
            .map(|row| (0..k).max_by(|&a, &c| row[a].total_cmp(&row[c])).unwrap() as u32)
            .collect();
        for (lam, eps) in [(0.3f32, 0.0f32), (0.8, 0.1), (1.0, 0.0)] {
            let mix = Mix {
                partner: partner.clone(),
                lam,
            };
            let loss = step_loss(&model, &batch, Some(mix), eps, &device);
            let want = lam * ce_by_hand(&logits, &batch.labels, k, eps)
                + (1.0 - lam) * ce_by_hand(&logits, &partner, k, eps);
            assert!(
                (loss - want).abs() < 1e-4 * want.max(1.0),
                "λ {lam} ε {eps}: loss {loss} vs {want} by hand"
            );
        }
        // λ matters: own labels and partners' give losses far enough apart for the check above.
        let own = ce_by_hand(&logits, &batch.labels, k, 0.0);
        assert!(own - ce_by_hand(&logits, &partner, k, 0.0) > 1e-2);
    }

    /// The model's logits for `batch` in training mode, as the step sees them (batch norm on
    /// the batch's statistics), rows of [`CLASSES`].
    fn train_logits(model: &Classifier, batch: &Batch, device: &Device) -> Vec<f32> {
        let shape = [batch.b, batch.c, batch.h, batch.w];
        model
            .clone()
            .forward(images_tensor(batch.images.clone(), shape, device))
            .into_data()
            .iter::<f32>()
            .collect()
    }

    fn least_likely(row: &[f32]) -> u32 {
        (0..row.len())
            .min_by(|&a, &c| row[a].total_cmp(&row[c]))
            .unwrap() as u32
    }

    /// The loss of one fine-tuning step on `batch` (mixed by `mix`) with label smoothing `eps`.
    fn step_loss(
        model: &Classifier,
        batch: &Batch,
        mix: Option<Mix>,
        eps: f32,
        device: &Device,
    ) -> f32 {
        let task = Finetune {
            device: device.clone(),
            groups: Arc::new(Vec::new()),
            label_smoothing: eps,
        };
        let optim = optimizer(crate::config::OptimizerKind::Adamw, 0.0, 0.9);
        let mut bound = Bound::new(task, model.clone(), &optim, false);
        let batch = MixedBatch {
            batch: batch.clone(),
            mix,
        };
        bound.step_typed(batch, 0, 0.01).loss
    }

    /// Mean cross-entropy of `logits` (rows of `k`) against `labels` smoothed by `eps`.
    fn ce_by_hand(logits: &[f32], labels: &[u32], k: usize, eps: f32) -> f32 {
        let mut total = 0.0;
        for (i, &y) in labels.iter().enumerate() {
            let row = &logits[i * k..(i + 1) * k];
            let m = row.iter().copied().fold(f32::MIN, f32::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            for (c, v) in row.iter().enumerate() {
                let q = eps / k as f32 + if c == y as usize { 1.0 - eps } else { 0.0 };
                total -= q * (v - lse);
            }
        }
        total / labels.len() as f32
    }

    fn flat_params(m: &Classifier) -> std::collections::HashMap<ParamId, Vec<f32>> {
        struct Collect(std::collections::HashMap<ParamId, Vec<f32>>);
        impl burn::module::ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                let v = p.val().into_data().iter::<f32>().collect();
                self.0.insert(p.id, v);
            }
        }
        let mut c = Collect(Default::default());
        m.visit(&mut c);
        c.0
    }
}
