//! The semi-supervised stage (`--protocol semi`): after fine-tuning on the few labels, the
//! unlabelled training images keep teaching.
//!
//! 1. **Teacher**: the encoder fine-tuned on the labelled images (the `finetune` protocol).
//! 2. Its logits on every image of the unlabelled pool — the training split only, never an
//!    evaluation image — computed once on the clean images and cached in the stage directory.
//! 3. **Student**: the pretrained encoder with the teacher's starting head (SelfMatch, Kim et
//!    al. 2021), or the teacher itself (`semi_init = "teacher"`), trained on batches of `B`
//!    labelled and `μ·B` unlabelled images with
//!    `L = CE(weak labelled, y) + λ_u·L_fix + λ_d·L_distil`:
//!    - `L_fix` (FixMatch, Sohn et al. 2020): the student's own prediction on a weak view of an
//!      unlabelled image is its pseudo-label when its confidence clears the class's threshold;
//!      cross-entropy on a strong view (RandAugment + Cutout, [`crate::data::randaugment`]),
//!      summed over the masked images and divided by all `μ·B`. Thresholds per class as in
//!      FlexMatch (Zhang et al. 2021): `T(c) = τ·β(c)/(2 − β(c))`, `β(c) = σ(c) / max(max σ,
//!      unused)`, where `σ(c)` counts pool images last predicted `c` above τ ([`thresholds`]).
//!    - `L_distil` (SimCLRv2, Chen et al. 2020): `T²·Σ −q·log softmax(z/T)` between the
//!      teacher's softened prediction `q` on the clean image and the student's on the strong
//!      view (a noisy student: the teacher sees the clean image, the student the distorted one).
//!
//! The stage runs through the engine (one replica per core, NaN skip, checkpoints, Ctrl-C,
//! metrics, progress) in its own directory (`…/transfer/semi-LABELS-seedK/`): run the same
//! command again and it continues from its last checkpoint, or, finished, is evaluated at once.
//! With `--from scratch` the same stage starts from random weights: the baseline that shows
//! what pretraining adds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::finetune::{Classifier, WeakView};
use super::protocol_tables::SemiTable;
use crate::data::augment::Img;
use crate::data::loader::{Batch, Loader, LoaderConfig, MakeBatch};
use crate::data::randaugment::{strong_view, StrongConfig};
use crate::data::rngs::BatchRngs;
use crate::data::ImageSet;
use crate::engine::checkpoint::{latest_checkpoint, load_module, save_module};
use crate::engine::optim::optimizer;
use crate::engine::replicas::{resolve, split_batch};
use crate::engine::run_loop::{self, LoopSettings};
use crate::engine::step::{images_tensor, labels_tensor};
use crate::engine::{AnyBatch, Bound, StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::input::InputSpec;
use crate::nn::Backbone;
use crate::platform::fsio::write_atomic;

/// The stage's settings (`semi_*` keys of the transfer config).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SemiSettings {
    pub steps: u64,
    /// Labelled images per step (`B`).
    pub batch_size: usize,
    /// Unlabelled images per labelled one (`μ`).
    pub ratio: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// FixMatch's confidence threshold τ.
    pub threshold: f32,
    /// FlexMatch's per-class thresholds (false: τ for every class).
    pub adaptive: bool,
    /// FlexMatch's threshold warm-up: β counts the never-confident images as a class of their
    /// own, so every threshold stays low until most of the pool has been predicted above τ.
    /// Without it (the default, as the paper's non-warm-up form), once any class has confident
    /// predictions a class with none has threshold 0 until one of its images clears τ.
    pub warmup: bool,
    /// λ_u, the weight of the consistency loss (0 = off).
    pub consistency: f32,
    /// λ_d, the weight of the distillation loss (0 = off).
    pub distill: f32,
    /// The distillation temperature T.
    pub temperature: f32,
    /// Decay of the student's exponential moving average (0 = none): the averaged student is
    /// what the stage hands back (and evaluates), as FixMatch evaluates its EMA model.
    pub ema: f64,
    /// Pseudo-labels from the averaged student (mean-teacher style) instead of the student.
    pub pseudo_from_ema: bool,
    /// Distribution alignment of the weak-view predictions before pseudo-labelling.
    pub align: bool,
    /// The weak views' forward with batch statistics (training mode, as FixMatch's) instead of
    /// the running statistics.
    pub weak_train_mode: bool,
    pub weak: WeakSettings,
    pub strong: StrongConfig,
    pub seed: u64,
}

impl SemiSettings {
    /// The settings images and text share, from the `semi_*` table, with the given views; the
    /// image-only switches off (no threshold warm-up, pseudo-labels from the student, weak
    /// views with the running statistics).
    pub fn from_table(
        t: &SemiTable,
        weak: WeakSettings,
        strong: crate::data::randaugment::StrongConfig,
        seed: u64,
    ) -> Self {
        Self {
            steps: t.steps,
            batch_size: t.batch_size,
            ratio: t.ratio,
            lr: t.lr,
            weight_decay: t.weight_decay,
            threshold: t.threshold,
            adaptive: t.adaptive,
            warmup: false,
            consistency: t.consistency,
            distill: t.distill,
            temperature: t.temperature,
            ema: t.ema,
            pseudo_from_ema: false,
            weak_train_mode: false,
            align: t.align,
            weak,
            strong,
            seed,
        }
    }
}

impl SemiSettings {
    /// The training loop's settings for the stage (images or documents): a cosine schedule
    /// from `lr` to 0 after `warmup_steps`, one checkpoint kept, no time budget, no held-out
    /// measurement (`eval_every` 0).
    pub fn loop_settings(
        &self,
        warmup_steps: u64,
        log_every: u64,
        checkpoint_every: u64,
        unit: &'static str,
        quiet: bool,
    ) -> LoopSettings {
        LoopSettings::transfer_stage(
            "semi",
            self.steps,
            self.lr,
            warmup_steps,
            self.seed,
            log_every,
            checkpoint_every,
            unit,
            quiet,
        )
    }
}

/// [`WeakView`] as it is recorded in the stage's settings.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct WeakSettings {
    pub crop_scale_min: f32,
    pub flip: bool,
}

impl From<WeakSettings> for WeakView {
    fn from(w: WeakSettings) -> Self {
        WeakView {
            crop_scale_min: w.crop_scale_min,
            flip: w.flip,
        }
    }
}

/// One step's images: weak views of `B` labelled images, weak and strong views of `μ·B`
/// unlabelled ones, and the teacher's logits for those.
#[derive(Clone, Debug)]
pub struct SemiBatch {
    pub labelled: Batch,
    /// Normalised weak views of the unlabelled images, [n_u, c, h, w].
    pub weak: Vec<f32>,
    /// Normalised strong views of the same images.
    pub strong: Vec<f32>,
    pub n_u: usize,
    /// Their positions in the unlabelled pool.
    pub positions: Vec<u32>,
    /// The teacher's logits for them, [n_u, classes]; empty without distillation.
    pub teacher: Vec<f32>,
    /// Their true classes when the pool happens to be labelled (a benchmark), for the logged
    /// accuracy of the pseudo-labels only: never read by the loss. Empty otherwise.
    pub truth: Vec<u32>,
}

/// FlexMatch's learning status of the pool: for each image, the class it was last predicted
/// above τ, or −1. Shared by the replicas of a step (each records its part); what a step
/// records is applied before any threshold of a later step is computed, in step then position
/// order, so the thresholds do not depend on how the batch was split or which replica ran first.
#[derive(Debug, Default)]
pub struct Status {
    selected: Vec<i16>,
    /// (step, position, class) recorded but not yet applied.
    pending: Vec<(u64, u32, i16)>,
    /// Distribution alignment's running mean of the weak-view predictions, per class.
    mean: Vec<f32>,
    /// (step, first position of the part, the part's summed predictions, its image count).
    pending_mean: Vec<(u64, u32, Vec<f64>, usize)>,
}

/// The pool's status as the replicas of one stage share it.
#[derive(Clone)]
pub struct SharedStatus(Arc<Mutex<Status>>);

impl SharedStatus {
    pub fn new(pool: usize, classes: usize) -> Self {
        Self(Arc::new(Mutex::new(Status::new(pool, classes))))
    }

    /// The status (a replica that panicked holding it leaves it as it was).
    pub fn lock(&self) -> MutexGuard<'_, Status> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`pseudo_labels`] of one step's weak views from their class probabilities
    /// ([n_u, classes]), under the lock.
    pub fn pseudo_labels(
        &self,
        probs: Tensor<2>,
        positions: &[u32],
        truth: &[u32],
        step: u64,
        s: &SemiSettings,
    ) -> Pseudo {
        let classes = probs.dims()[1];
        let probs: Vec<f32> = probs.into_data().iter::<f32>().collect();
        pseudo_labels(&probs, classes, positions, truth, &mut self.lock(), step, s)
    }

    /// Into a checkpoint directory (the engine's `save_state`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.lock().save(dir)
    }

    /// From a checkpoint directory (the engine's `load_state`).
    pub fn load(&self, dir: &Path) -> Result<()> {
        self.lock().load(dir)
    }
}

/// How fast distribution alignment's running mean follows the batches (ReMixMatch averages
/// the last 128 batches; this is about the last 100).
const ALIGN_MOMENTUM: f32 = 0.99;

impl Status {
    pub fn new(pool: usize, classes: usize) -> Self {
        Self {
            selected: vec![-1; pool],
            pending: Vec::new(),
            mean: vec![1.0 / classes.max(1) as f32; classes],
            pending_mean: Vec::new(),
        }
    }

    /// Apply what steps before `step` recorded, in step order (a step's parts summed in
    /// position order first).
    fn apply_before(&mut self, step: u64) {
        let (mut now, later): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|&(s, _, _)| s < step);
        now.sort_unstable();
        for (_, pos, class) in now {
            self.selected[pos as usize] = class;
        }
        self.pending = later;
        let (mut now, later): (Vec<_>, Vec<_>) =
            self.pending_mean.drain(..).partition(|p| p.0 < step);
        now.sort_by_key(|p| (p.0, p.1));
        let mut i = 0;
        while i < now.len() {
            let s = now[i].0;
            let mut sum = vec![0f64; self.mean.len()];
            let mut n = 0;
            while i < now.len() && now[i].0 == s {
                sum.iter_mut().zip(&now[i].2).for_each(|(a, b)| *a += b);
                n += now[i].3;
                i += 1;
            }
            for (m, v) in self.mean.iter_mut().zip(sum) {
                *m = ALIGN_MOMENTUM * *m + (1.0 - ALIGN_MOMENTUM) * (v / n.max(1) as f64) as f32;
            }
        }
        self.pending_mean = later;
    }

    /// Everything recorded, applied.
    pub fn selected(&mut self) -> &[i16] {
        self.apply_before(u64::MAX);
        &self.selected
    }

    /// The whole state as bytes: the status (i16 per pool image) then the running mean (f32
    /// per class), little-endian.
    fn encode(&mut self) -> Vec<u8> {
        self.apply_before(u64::MAX);
        let mut out: Vec<u8> = self.selected.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.extend(self.mean.iter().flat_map(|v| v.to_le_bytes()));
        out
    }

    /// Into a checkpoint directory.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join(STATUS_FILE), &self.encode())
    }

    /// From a checkpoint directory [`Self::save`] wrote.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(STATUS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        self.decode(&bytes).map_err(|m| Error::checkpoint(&path, m))
    }

    fn decode(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        let (n, k) = (self.selected.len(), self.mean.len());
        if bytes.len() != 2 * n + 4 * k {
            return Err(format!(
                "expected the status of {n} pool images and {k} classes ({} bytes), found {} bytes",
                2 * n + 4 * k,
                bytes.len()
            ));
        }
        let (sel, mean) = bytes.split_at(2 * n);
        self.selected = sel
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        self.mean = mean
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        self.pending.clear();
        self.pending_mean.clear();
        Ok(())
    }
}

/// FlexMatch's threshold per class from the pool's learning status: `τ·β/(2 − β)` with
/// `β(c) = σ(c) / max(max_c σ, unused)` (the warm-up form: while most of the pool is unused,
/// every class's threshold is low); τ for every class when not `adaptive`.
pub fn thresholds(
    selected: &[i16],
    classes: usize,
    tau: f32,
    adaptive: bool,
    warmup: bool,
) -> Vec<f32> {
    if !adaptive {
        return vec![tau; classes];
    }
    let mut sigma = vec![0usize; classes];
    let mut unused = 0usize;
    for &s in selected {
        match usize::try_from(s) {
            Ok(c) if c < classes => sigma[c] += 1,
            _ => unused += 1,
        }
    }
    let max_sigma = sigma.iter().copied().max().unwrap_or(0);
    if max_sigma == 0 {
        // Nothing learned yet: τ for every class.
        return vec![tau; classes];
    }
    let denom = if warmup {
        max_sigma.max(unused)
    } else {
        max_sigma
    };
    sigma
        .iter()
        .map(|&s| {
            let beta = if denom == 0 {
                0.0
            } else {
                s as f32 / denom as f32
            };
            tau * beta / (2.0 - beta)
        })
        .collect()
}

/// The student and its moving average (the average takes no gradients).
#[derive(Module, Debug)]
pub struct SemiModel {
    pub student: Classifier,
    pub ema: Classifier,
}

impl SemiModel {
    pub fn new(student: Classifier) -> Self {
        let ema = crate::nn::ema::detached_copy(&student);
        Self { student, ema }
    }

    /// What the stage hands back: the average when there is one.
    fn result(&self, ema: bool) -> &Classifier {
        if ema {
            &self.ema
        } else {
            &self.student
        }
    }
}

/// Batch norm's running-statistics momentum (burn's default).
const BN_MOMENTUM: f64 = 0.1;

/// The semi-supervised stage as the engine steps it.
#[derive(Clone)]
struct Semi {
    device: Device,
    classes: usize,
    shape: [usize; 3],
    s: SemiSettings,
    status: SharedStatus,
    /// Validation images and labels the student is measured on every `eval_every` steps.
    monitor: Option<Arc<Monitor>>,
}

/// What the stage's curve is measured on: validation images (never test images).
pub struct Monitor {
    pub images: ImageSet,
    pub input: InputSpec,
}

/// One image's pseudo-label from its weak-view probabilities: (class, confidence).
fn argmax_row(row: &[f32]) -> (usize, f32) {
    row.iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (c, p)| {
            if p > best.1 {
                (c, p)
            } else {
                best
            }
        })
}

/// Soft targets `softmax(logits / t)` of rows of `classes`.
pub fn soften(logits: &[f32], classes: usize, t: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(classes) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|v| ((v - m) / t).exp()).collect();
        let z: f32 = e.iter().sum();
        out.extend(e.iter().map(|v| v / z));
    }
    out
}

/// The distillation loss `T²·mean_i Σ_c −q_ic·log softmax(z_i/T)_c` of student logits `z`
/// against soft targets `q` ([n, classes]).
pub fn distillation_loss(student: Tensor<2>, targets: Tensor<2>, t: f32) -> Tensor<1> {
    let n = student.dims()[0];
    let logp = log_softmax(student.div_scalar(t as f64), 1);
    (targets * logp)
        .sum()
        .mul_scalar(-(t as f64) * t as f64 / n.max(1) as f64)
}

/// The pseudo-labels of one step's unlabelled images (from their weak-view probabilities) and
/// which of them clear their class's threshold.
pub struct Pseudo {
    pub labels: Vec<i64>,
    pub mask: Vec<f32>,
    /// The mean of the class thresholds used.
    pub threshold: f32,
    /// The kept pseudo-labels' accuracy, when the pool's true classes are known.
    pub accuracy: Option<f32>,
}

/// Pseudo-labels from `probs` (rows of `classes`) of the pool images at `positions`, with the
/// thresholds of the pool's status before `step`; records which images were predicted above τ
/// for the next steps' thresholds. `truth` (possibly empty) only measures the kept labels.
pub fn pseudo_labels(
    probs: &[f32],
    classes: usize,
    positions: &[u32],
    truth: &[u32],
    status: &mut Status,
    step: u64,
    s: &SemiSettings,
) -> Pseudo {
    status.apply_before(step);
    let t = thresholds(&status.selected, classes, s.threshold, s.adaptive, s.warmup);
    let n = probs.len() / classes.max(1);
    // Distribution alignment (ReMixMatch, Berthelot et al. 2020): record this part's mean
    // prediction, and scale every prediction by uniform / running mean, renormalised, so
    // pseudo-labels are not drawn towards the classes the model already favours.
    let mut sum = vec![0f64; classes];
    probs
        .chunks(classes)
        .for_each(|row| sum.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64));
    status
        .pending_mean
        .push((step, positions.first().copied().unwrap_or(0), sum, n));
    let aligned: Vec<f32>;
    let probs = if s.align {
        let mut out = Vec::with_capacity(probs.len());
        for row in probs.chunks(classes) {
            let scaled: Vec<f32> = row
                .iter()
                .zip(&status.mean)
                .map(|(p, m)| p / (classes as f32 * m.max(1e-6)))
                .collect();
            let z: f32 = scaled.iter().sum();
            out.extend(scaled.iter().map(|v| v / z.max(1e-12)));
        }
        aligned = out;
        &aligned[..]
    } else {
        probs
    };
    let (mut labels, mut mask) = (vec![0i64; n], vec![0f32; n]);
    let (mut right, mut kept) = (0usize, 0usize);
    for (i, row) in probs.chunks(classes).enumerate() {
        let (class, conf) = argmax_row(row);
        labels[i] = class as i64;
        if conf >= t[class] {
            mask[i] = 1.0;
            if let Some(&y) = truth.get(i) {
                kept += 1;
                right += usize::from(y as usize == class);
            }
        }
        if conf > s.threshold {
            status.pending.push((step, positions[i], class as i16));
        }
    }
    Pseudo {
        labels,
        mask,
        threshold: t.iter().sum::<f32>() / classes.max(1) as f32,
        accuracy: (!truth.is_empty()).then(|| right as f32 / kept.max(1) as f32),
    }
}

/// The stage's loss on one forward's `logits`: the first `labels.len()` rows are labelled
/// images (cross-entropy), the rest strong views of unlabelled ones (FixMatch's masked
/// cross-entropy against `pseudo`, and distillation from the teacher's `teacher` logits when
/// given); with the numbers a step reports.
/// What one step's logits are scored against: the labelled rows' labels (the first rows), the
/// unlabelled rows' pseudo-labels (None: no consistency loss) and the teacher's logits.
#[derive(Clone, Copy)]
pub struct Targets<'a> {
    pub labels: &'a [u32],
    pub pseudo: Option<&'a Pseudo>,
    pub teacher: &'a [f32],
    pub classes: usize,
}

/// What the student learns once its logits are known, for images and text alike: the stage's
/// loss ([`semi_loss`]), one descent step, and on the first replica `average` (the moving
/// average's update, given the decay) when `s.ema > 0`.
pub fn learn<M: Module + 'static>(
    model: M,
    logits: Tensor<2>,
    targets: Targets,
    s: &SemiSettings,
    cx: &mut StepCtx,
    device: &Device,
    average: impl FnOnce(M, f64) -> M,
) -> (M, StepStats) {
    let (loss, metrics) = semi_loss(logits, targets, s, device);
    let value = loss.clone().detach().into_scalar::<f32>();
    let lr = cx.lr;
    let mut model = cx.descend("model", lr, model, loss);
    if s.ema > 0.0 && cx.replica == 0 {
        model = average(model, s.ema);
    }
    (model, StepStats::new(value, metrics))
}

pub fn semi_loss(
    logits: Tensor<2>,
    targets: Targets,
    s: &SemiSettings,
    device: &Device,
) -> (Tensor<1>, Vec<(&'static str, f32)>) {
    let Targets {
        labels,
        pseudo,
        teacher,
        classes,
    } = targets;
    let n_l = labels.len();
    let n_u = logits.dims()[0] - n_l;
    let logits_l = logits.clone().slice(0..n_l);
    let y = labels_tensor(labels, device);
    let mut loss = CrossEntropyLossConfig::new()
        .init(device)
        .forward(logits_l.clone(), y.clone());
    let correct = logits_l
        .detach()
        .argmax(1)
        .reshape([n_l])
        .equal(y)
        .int()
        .sum()
        .into_scalar::<i64>();
    let mut metrics = vec![("acc", correct as f32 / n_l.max(1) as f32)];
    if n_u == 0 {
        return (loss, metrics);
    }
    let logits_u = logits.slice(n_l..n_l + n_u);
    if let (Some(p), true) = (pseudo, s.consistency > 0.0) {
        let used = p.mask.iter().sum::<f32>();
        let idx = Tensor::<2, Int>::from_data(TensorData::new(p.labels.clone(), [n_u, 1]), device);
        let m = Tensor::<1>::from_data(TensorData::new(p.mask.clone(), [n_u]), device);
        let picked = log_softmax(logits_u.clone(), 1)
            .gather(1, idx)
            .reshape([n_u]);
        let fix = (picked * m).sum().mul_scalar(-1.0 / n_u as f64);
        metrics.push(("mask", used / n_u as f32));
        metrics.push(("threshold", p.threshold));
        if let Some(a) = p.accuracy {
            metrics.push(("pseudo_acc", a));
        }
        metrics.push(("l_fix", fix.clone().detach().into_scalar::<f32>()));
        loss = loss + fix.mul_scalar(s.consistency as f64);
    }
    if s.distill > 0.0 && !teacher.is_empty() {
        let q = soften(teacher, classes, s.temperature);
        let q = Tensor::<2>::from_data(TensorData::new(q, [n_u, classes]), device);
        let d = distillation_loss(logits_u, q, s.temperature);
        metrics.push(("l_distil", d.clone().detach().into_scalar::<f32>()));
        loss = loss + d.mul_scalar(s.distill as f64);
    }
    (loss, metrics)
}

impl Task for Semi {
    type Model = SemiModel;
    type Encoder = Backbone;
    type Batch = SemiBatch;

    fn step(
        &mut self,
        mut model: SemiModel,
        b: SemiBatch,
        cx: &mut StepCtx,
    ) -> (SemiModel, StepStats) {
        let [c, h, w] = self.shape;
        let (n_l, n_u, k) = (b.labelled.b, b.n_u, self.classes);
        // Pseudo-labels from the weak views, by the model as it stands.
        let pseudo = if self.s.consistency > 0.0 && n_u > 0 {
            let labeller = if self.s.pseudo_from_ema {
                &model.ema
            } else {
                &model.student
            };
            let probs = if self.s.weak_train_mode {
                // Batch statistics of the weak batch, as FixMatch's weak forward has them; the
                // running statistics follow the weak views only (the strong forward below
                // leaves them), so evaluation normalises like clean images.
                let weak = images_tensor(b.weak, [n_u, c, h, w], &self.device);
                softmax(labeller.forward(weak).detach(), 1)
            } else {
                let inner = self.device.clone().inner();
                let weak = images_tensor(b.weak, [n_u, c, h, w], &inner);
                softmax(labeller.valid().forward(weak), 1)
            };
            Some(
                self.status
                    .pseudo_labels(probs, &b.positions, &b.truth, cx.step, &self.s),
            )
        } else {
            None
        };
        // One forward of the labelled weak views and the unlabelled strong views.
        let mut pixels = b.labelled.images;
        pixels.extend_from_slice(&b.strong);
        let x = images_tensor(pixels, [n_l + n_u, c, h, w], &self.device);
        if self.s.weak_train_mode && pseudo.is_some() {
            model.student.backbone.set_bn_momentum(0.0);
        }
        let logits = model.student.forward(x);
        model.student.backbone.set_bn_momentum(BN_MOMENTUM);
        let targets = Targets {
            labels: &b.labelled.labels,
            pseudo: pseudo.as_ref(),
            teacher: &b.teacher,
            classes: k,
        };
        learn(
            model,
            logits,
            targets,
            &self.s,
            cx,
            &self.device,
            |mut m, decay| {
                m.ema = crate::nn::ema::ema_update(m.ema, &m.student, decay);
                m
            },
        )
    }

    fn items(b: &SemiBatch) -> u64 {
        (b.labelled.b + b.n_u) as u64
    }

    fn encoder(model: &SemiModel) -> Backbone {
        model.student.backbone.clone()
    }

    fn validate(&self, model: &SemiModel) -> Result<Vec<(String, f32)>> {
        let Some(m) = &self.monitor else {
            return Ok(Vec::new());
        };
        let inner = self.device.clone().inner();
        let model = model.result(self.s.ema > 0.0).valid();
        let idx: Vec<usize> = (0..m.images.n).collect();
        let acc = super::finetune::test_accuracy(&model, &m.images, &idx, &m.input, &inner)?;
        Ok(vec![("val_acc".into(), acc)])
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        self.status.save(dir)
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        self.status.load(dir)
    }
}

/// The pool's status in a checkpoint: one little-endian i16 per pool image (FlexMatch), then
/// one f32 per class (distribution alignment's running mean).
const STATUS_FILE: &str = "semi-status.bin";

/// What the stage trains on and from.
pub struct SemiData<'a> {
    /// The labelled images (the chosen few) with their labels.
    pub labelled: ImageSet,
    /// The unlabelled pool (labels, if any, only measure the pseudo-labels' accuracy).
    pub pool: &'a ImageSet,
    /// The teacher's logits on every pool image, [pool.n, classes].
    pub teacher_logits: Arc<Vec<f32>>,
    pub classes: usize,
    pub input: &'a InputSpec,
    /// Validation images to measure the student on as it trains (`eval_on = "validation"`).
    pub monitor: Option<Arc<Monitor>>,
}

/// The loader's batch maker: `μ·B` unlabelled images arrive (their "labels" are their pool
/// positions); `B` labelled images are drawn here from the batch's generator; each part of a
/// replicated step gets its share of both.
fn make_batch(data: &SemiData, s: &SemiSettings, parts: usize) -> MakeBatch<Box<dyn AnyBatch>> {
    let labelled = Arc::new(data.labelled.clone());
    let teacher = data.teacher_logits.clone();
    let truth = data.pool.labels.clone().map(Arc::new);
    let (input, classes, b_l) = (data.input.clone(), data.classes, s.batch_size);
    let (weak, strong) = (WeakView::from(s.weak), s.strong);
    let distil = s.distill > 0.0;
    Arc::new(move |images: &[Img], positions: &[u32], rngs: &BatchRngs| {
        // The labelled images of the whole step (drawn alike in every part), then split like
        // the unlabelled ones. Unlabelled image i draws its views from item i's generator,
        // labelled image j from item n_u + j's: the same whatever the part count.
        let n = labelled.n;
        let mut shared = rngs.shared();
        let chosen: Vec<usize> = if b_l <= n {
            rand::seq::index::sample(&mut shared, n, b_l).into_vec()
        } else {
            (0..b_l).map(|_| shared.gen_range(0..n)).collect()
        };
        let n_u = images.len();
        let total = parts.max(1) * crate::platform::dist::size();
        let whole = *rngs;
        split_batch(n_u, parts, rngs, |r, part| {
            // The global part index: parts are equal (`resolve` makes the count divide the
            // batch), so the range's start gives it exactly.
            let p = r.start * total / n_u.max(1);
            let (l0, l1) = (p * b_l / total, (p + 1) * b_l / total);
            let mut views = Vec::with_capacity(l1 - l0);
            let mut labels = Vec::with_capacity(l1 - l0);
            for (j, &i) in chosen.iter().enumerate().take(l1).skip(l0) {
                let img = Img::from_u8(
                    labelled.channels,
                    labelled.height,
                    labelled.width,
                    &labelled.image(i).expect("labelled images are in memory"),
                );
                views.push(weak.view(&img, &mut whole.item(n_u + j)));
                labels.push(labelled.labels.as_ref().expect("labelled")[i]);
            }
            let normalised = |mut img: Img| {
                input.normalize(&mut img);
                img.data
            };
            let mut lab_px = Vec::new();
            for v in views {
                lab_px.extend(normalised(v));
            }
            let (mut weak_px, mut strong_px) = (Vec::new(), Vec::new());
            for (i, img) in images[r.clone()].iter().enumerate() {
                let rng = &mut part.item(i);
                weak_px.extend(normalised(weak.view(img, rng)));
                strong_px.extend(normalised(strong_view(&weak.view(img, rng), &strong, rng)));
            }
            let pos = positions[r.clone()].to_vec();
            let teacher = if distil {
                pos.iter()
                    .flat_map(|&p| {
                        teacher[p as usize * classes..(p as usize + 1) * classes].to_vec()
                    })
                    .collect()
            } else {
                Vec::new()
            };
            SemiBatch {
                labelled: Batch {
                    b: labels.len(),
                    c: input.channels,
                    h: input.height,
                    w: input.width,
                    images: lab_px,
                    labels,
                },
                weak: weak_px,
                strong: strong_px,
                n_u: r.len(),
                truth: truth
                    .as_ref()
                    .map_or_else(Vec::new, |t| pos.iter().map(|&p| t[p as usize]).collect()),
                positions: pos,
                teacher,
            }
        })
    })
}

/// Where and how the stage runs (nothing here changes what the student learns).
pub struct StageRun<'a> {
    /// The stage directory: checkpoints, metrics, the cached teacher.
    pub dir: &'a Path,
    pub checkpoint_every: u64,
    /// Measure the student on the validation images every this many steps (0 = never).
    pub eval_every: u64,
    pub workers: usize,
    pub quiet: bool,
}

/// Train the student `student` (on `device`, no autodiff) in the stage directory,
/// continuing from its last checkpoint there when one exists; the trained student.
pub fn train_student(
    student: Classifier,
    data: &SemiData,
    s: &SemiSettings,
    run: &StageRun,
    device: &Device,
) -> Result<Classifier> {
    let (dir, workers, quiet) = (run.dir, run.workers, run.quiet);
    let ad = device.clone().autodiff();
    let b_l = s.batch_size;
    if data.labelled.n == 0 {
        return Err(Error::Usage("the semi stage needs labelled images".into()));
    }
    if data.pool.n < s.ratio * b_l || s.ratio == 0 {
        return Err(Error::Usage(format!(
            "the semi stage needs an unlabelled pool of at least semi_ratio × semi_batch_size = {} \
             images, found {}",
            s.ratio * b_l,
            data.pool.n
        )));
    }
    let replicas = resolve(0, b_l, &ad).unwrap_or(1);
    let task = Semi {
        device: ad.clone(),
        classes: data.classes,
        shape: [data.input.channels, data.input.height, data.input.width],
        s: s.clone(),
        status: SharedStatus::new(data.pool.n, data.classes),
        monitor: data.monitor.clone(),
    };
    let model = SemiModel::new(student.to_device(&ad).train());
    let mut bound = Bound::new(
        task,
        model,
        &optimizer(crate::config::OptimizerKind::Adamw, s.weight_decay, 0.9),
        true,
    )
    .with_replicas(replicas);
    let resumed = latest_checkpoint(dir)?;
    let start = run_loop::resume(&mut bound, &resumed, dir, true)?;
    if start > 0 && !quiet {
        println!("semi: continuing {} from step {start}", dir.display());
    }
    let mut pool = data.pool.clone();
    pool.labels = Some((0..pool.n as u32).collect());
    let loader = Loader::new(
        Arc::new(pool),
        LoaderConfig {
            batch_size: s.ratio * b_l,
            seed: s.seed ^ 0x5e41,
            workers,
            prefetch: 4,
            start_batch: start,
            drop_last: true,
        },
        make_batch(data, s, replicas),
    );
    let mut loader = loader;
    let mut next = |_step: u64| -> Result<Box<dyn AnyBatch>> {
        match loader.next() {
            Some(b) => Ok(b?),
            None => Err(Error::Usage("the unlabelled pool ran out".into())),
        }
    };
    let settings = LoopSettings {
        eval_every: if data.monitor.is_some() {
            run.eval_every
        } else {
            0
        },
        ..s.loop_settings(s.steps / 20, 50, run.checkpoint_every, "images", quiet)
    };
    if start < s.steps {
        run_loop::run(&mut bound, &mut next, &settings, dir, start, s.steps)?.reached(
            s.steps,
            "the semi stage",
            dir,
        )?;
    }
    let mut out = bound.model().result(s.ema > 0.0).valid().to_device(device);
    // The running statistics followed batches of strong views too; evaluation sees clean
    // images: re-estimate them on (up to 2,048) clean pool images, labels unused.
    let idx = super::features::bn_sample_of(&(0..data.pool.n).collect::<Vec<_>>(), s.seed);
    out.backbone =
        super::features::reestimate_bn(out.backbone, data.pool, &idx, data.input, device)?;
    Ok(out)
}

/// The teacher's logits on `set[idx]` (inference mode), rows of `classes`.
pub fn logits_on(
    model: &Classifier,
    set: &ImageSet,
    idx: &[usize],
    input: &InputSpec,
    device: &Device,
) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for chunk in idx.chunks(512) {
        let x = super::features::normalized_images(set, chunk, input)?;
        let x = images_tensor(
            x,
            [chunk.len(), set.channels, set.height, set.width],
            device,
        );
        out.extend(model.forward(x).into_data().iter::<f32>());
    }
    Ok(out)
}

/// The stage directory's record of what it was started with; a directory holding another
/// record is started again from nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageRecord {
    /// Digest of everything the teacher depends on (source weights, labels, fine-tuning).
    pub teacher_key: String,
    pub student_init: String,
    /// The student's settings (images: [`SemiSettings`]; text adds its noise).
    pub settings: serde_json::Value,
}

const RECORD_FILE: &str = "semi.json";
const TEACHER_FILE: &str = "teacher.bpk";
/// The finished student's weights (head included), as safetensors: what the stage learned, for
/// use elsewhere (and for comparing two stages bit for bit: `.bpk` files carry random ids).
pub const STUDENT_FILE: &str = "student.safetensors";

/// Write the finished student into the stage directory.
pub fn save_student<M: Module>(student: &M, stage_dir: &Path) -> Result<()> {
    crate::engine::checkpoint::save_weights(student, &stage_dir.join(STUDENT_FILE))
}
const TEACHER_LOGITS_FILE: &str = "teacher-logits.safetensors";

/// Prepare the stage directory `dir` for `record`: kept when it was started with the same
/// record (a resumed or finished stage), otherwise emptied (only if it is a stage directory).
pub fn prepare_dir(dir: &Path, record: &StageRecord) -> Result<()> {
    prepare_named(dir, record, RECORD_FILE)
}

/// [`prepare_dir`] for fine-tuning's own stage directory (`…/finetune-LABELS-seedK/`), whose
/// record is `finetune.json`.
pub fn prepare_finetune_dir(dir: &Path, record: &StageRecord) -> Result<()> {
    prepare_named(dir, record, "finetune.json")
}

fn prepare_named(dir: &Path, record: &StageRecord, record_file: &str) -> Result<()> {
    let path = dir.join(record_file);
    if dir.exists() {
        let earlier = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StageRecord>(&b).ok());
        if earlier.as_ref() == Some(record) {
            return Ok(());
        }
        if earlier.is_some_and(|r| r.teacher_key == record.teacher_key) {
            // Another student of the same teacher: keep the teacher, start the student anew.
            for old in ["checkpoints", "metrics.jsonl"] {
                let p = dir.join(old);
                let gone = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                match gone {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(&p, e))
                    }
                    _ => {}
                }
            }
        } else if path.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        } else if std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_some()
        {
            return Err(Error::Usage(format!(
                "{} exists and is not a transfer stage directory; move it or choose another --out",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(
        &path,
        &serde_json::to_vec_pretty(record).expect("the record serialises"),
    )
}

/// The cached teacher of a stage directory, if it holds one.
pub fn cached_teacher<M: Module>(dir: &Path, template: M) -> Option<(M, Vec<f32>)> {
    let model = load_module(template, &dir.join(TEACHER_FILE)).ok()?;
    let bytes = std::fs::read(dir.join(TEACHER_LOGITS_FILE)).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let t = st.tensor("logits").ok()?;
    let logits = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some((model, logits))
}

/// Keep the teacher and its pool logits in the stage directory.
pub fn cache_teacher<M: Module>(
    dir: &Path,
    teacher: &M,
    logits: &[f32],
    classes: usize,
) -> Result<()> {
    save_module(teacher.clone(), &dir.join(TEACHER_FILE))?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![logits.len() / classes.max(1), classes],
        &bytes,
    )
    .expect("a consistent shape");
    let out = safetensors::serialize([("logits", view)], None)
        .map_err(|e| Error::checkpoint(dir.join(TEACHER_LOGITS_FILE), e))?;
    write_atomic(&dir.join(TEACHER_LOGITS_FILE), &out)
}

/// `RUN/transfer/semi-LABELS-seedK/`-style stage directory beside the result file `result`.
pub fn stage_dir(result: &Path) -> PathBuf {
    result.with_extension("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flexmatch_thresholds_by_hand() {
        // 10 pool images, 3 classes: class 0 learned by 4, class 1 by 2, class 2 by none,
        // 4 unused. β = σ / max(4, 4) = (1, 0.5, 0); T = τ·β/(2 − β).
        let sel = [0, 0, 0, 0, 1, 1, -1, -1, -1, -1];
        let t = thresholds(&sel, 3, 0.9, true, true);
        let want = [0.9 * 1.0 / 1.0, 0.9 * 0.5 / 1.5, 0.0];
        for (a, b) in t.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{t:?} vs {want:?}");
        }
        // Warm-up: most of the pool unused lowers every class (β = σ / unused).
        let sel = [0, 1, -1, -1, -1, -1, -1, -1];
        let t = thresholds(&sel, 2, 0.95, true, true);
        let beta = 1.0 / 6.0;
        assert!((t[0] - 0.95 * beta / (2.0 - beta)).abs() < 1e-6);
        // Without the warm-up β is relative to the best-learned class: (1, 1) here.
        assert_eq!(thresholds(&sel, 2, 0.95, true, false), vec![0.95, 0.95]);
        let sel = [0, 0, 0, 0, 1, -1];
        let t = thresholds(&sel, 2, 0.9, true, false);
        assert!((t[1] - 0.9 * 0.25 / 1.75).abs() < 1e-6, "{t:?}");
        // Nothing learned yet: τ for every class, with or without the warm-up.
        assert_eq!(thresholds(&[-1, -1], 2, 0.95, true, true), vec![0.95, 0.95]);
        // Fixed: τ everywhere.
        assert_eq!(thresholds(&sel, 2, 0.95, false, false), vec![0.95, 0.95]);
    }

    #[test]
    fn status_applies_earlier_steps_only_in_order() {
        let mut s = Status::new(4, 3);
        s.pending.push((3, 1, 2));
        s.pending.push((2, 1, 0));
        s.pending.push((5, 2, 1));
        s.apply_before(4);
        // Step 2 then step 3 wrote position 1: step 3's class stays.
        assert_eq!(s.selected, vec![-1, 2, -1, -1]);
        assert_eq!(s.pending.len(), 1);
        assert_eq!(s.selected(), &[-1, 2, 1, -1]);
    }

    #[test]
    fn distillation_loss_by_hand() {
        let device = Device::flex();
        let z = [2.0f32, 0.0, -1.0, 0.5, 0.5, 1.0];
        let teacher = [1.0f32, 2.0, 0.0, -1.0, 0.0, 3.0];
        let t = 2.0f32;
        let q = soften(&teacher, 3, t);
        let student = Tensor::<2>::from_data(TensorData::new(z.to_vec(), [2, 3]), &device);
        let targets = Tensor::<2>::from_data(TensorData::new(q.clone(), [2, 3]), &device);
        let got = distillation_loss(student, targets, t).into_scalar::<f32>();
        let mut want = 0.0;
        for i in 0..2 {
            let row = &z[i * 3..i * 3 + 3];
            let lse = row.iter().map(|v| (v / t).exp()).sum::<f32>().ln();
            for c in 0..3 {
                want -= q[i * 3 + c] * (row[c] / t - lse);
            }
        }
        want *= t * t / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Soft targets are distributions, softer at higher T.
        let q1 = soften(&teacher, 3, 1.0);
        assert!((q1[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(q[1] < q1[1], "T = 2 flattens the teacher's peak");
    }
}
