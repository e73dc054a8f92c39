//! Transfer to a labelled downstream task: linear probe, k-NN or fine-tuning, with a few labels
//! per class, from a pretrained run, from a frozen random encoder, or from scratch.

pub mod features;
pub mod finetune;
pub mod frozen;
pub mod knn;
pub mod labels;
pub mod linear_probe;
pub mod protocol_tables;
pub mod scores;
pub mod semi;
pub mod split;
pub mod text_features;
pub mod text_finetune;
pub mod text_semi;
pub mod text_transfer;

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::engine::checkpoint::load_encoder;
use crate::engine::run_dir;
use crate::error::{Error, Result};
use crate::nn::input::{InputSpec, InputTransform};
use crate::nn::{Backbone, BackboneKind, BackboneSpec};
use crate::platform::fsio::write_atomic;
use labels::PerClass;
use protocol_tables::{FinetuneTable, KnnTable, ProbeTable, SemiTable};

/// Where the encoder comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A pretraining run directory.
    Run(PathBuf),
    /// The same architecture with random weights, frozen (the floor any pretext task must beat).
    Random,
    /// Random weights trained on the labels only (fine-tuning from scratch).
    Scratch,
}

impl Source {
    pub fn parse(s: &str) -> Self {
        match s {
            "random" => Self::Random,
            "scratch" => Self::Scratch,
            path => Self::Run(PathBuf::from(path)),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Self::Run(p) => p.display().to_string(),
            Self::Random => "random".into(),
            Self::Scratch => "scratch".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Linear,
    Knn,
    Finetune,
    /// Fine-tuning, then the semi-supervised stage on the unlabelled pool ([`semi`]).
    Semi,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Self::Linear),
            "knn" => Ok(Self::Knn),
            "finetune" => Ok(Self::Finetune),
            "semi" => Ok(Self::Semi),
            _ => Err(Error::Usage(format!(
                "--protocol {s}: expected linear, knn, finetune or semi"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Knn => "knn",
            Self::Finetune => "finetune",
            Self::Semi => "semi",
        }
    }

    /// Whether the protocol trains the encoder (fine-tuning, the semi-supervised stage).
    pub fn trains_encoder(self) -> bool {
        matches!(self, Self::Finetune | Self::Semi)
    }
}

/// Where the semi-supervised stage's student starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SemiInit {
    /// The encoder the teacher was fine-tuned from, with the teacher's starting head (SelfMatch).
    Encoder,
    /// The teacher itself.
    Teacher,
}

/// Where fine-tuning's linear head starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinetuneHead {
    /// `probe` for a pretrained encoder (`--from RUN`), `random` for `--from random|scratch`.
    Auto,
    Probe,
    Random,
}

impl FinetuneHead {
    /// Whether fine-tuning `from` starts its head from a linear probe.
    pub fn probe_first(self, from: &Source) -> bool {
        match self {
            Self::Auto => matches!(from, Source::Run(_)),
            Self::Probe => true,
            Self::Random => false,
        }
    }
}

/// Transfer settings (`--set key=value`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TransferConfig {
    pub seed: u64,
    /// Backbone for `--from random|scratch` (a run brings its own).
    pub backbone: BackboneKind,
    /// Backbone base width for `--from random|scratch`; 0 = default.
    pub width: usize,
    /// ViT patch side for `--from random|scratch`; 0 = the preset's.
    pub patch_size: usize,
    /// Encoder stage whose pooled output is probed (linear, knn); 0 = the last, or the one
    /// below it for the linear probe of a rotation, context or jigsaw run on the conv net.
    pub stage: usize,
    /// `probe_*`.
    #[serde(flatten, with = "protocol_tables::probe_keys")]
    pub probe: ProbeTable,
    /// `knn_*`. 20 neighbours, as DINO uses: the same as 200 (InstDisc's choice for 1.28 M
    /// labelled images) within a point at 10 labels per class, 4.5–15 points better at 100 on
    /// Fashion-MNIST, where 200 neighbours drown the nearest ones.
    #[serde(flatten, with = "protocol_tables::knn_keys")]
    pub knn: KnnTable,
    /// `finetune_steps`, `finetune_batch_size`, `finetune_lr`, `finetune_weight_decay`.
    #[serde(flatten, with = "protocol_tables::finetune_keys")]
    pub finetune: FinetuneTable,
    pub finetune_crop_scale_min: f32,
    pub finetune_flip: bool,
    /// Where fine-tuning's head starts: `probe`: a linear probe trained on the frozen features
    /// of the labelled images first (LP-FT, Kumar et al. 2022), so the first steps do not push a
    /// random head's gradients through the encoder; `random`; or `auto` (default): `probe` for
    /// a pretrained encoder, `random` for `--from scratch`. Measured on the built-in data (10
    /// labels per class, 3 draws, 2,000 test images, 100 steps): a SimCLR encoder gains 1–2
    /// points with it (0.715 → 0.736 after 3,000 pretraining steps, 0.719 → 0.724 after 1,000);
    /// from scratch it hurts (0.691 vs 0.710), as the probe then reads random features.
    pub finetune_head: FinetuneHead,
    /// Layer-wise learning-rate decay d for fine-tuning a pretrained encoder: the head trains
    /// at `finetune_lr`, the encoder's top stage (ViT block) at `finetune_lr·d`, the next one
    /// down at `finetune_lr·d²`, … A network trained from scratch always trains every layer at
    /// `finetune_lr` (its lower layers have nothing to keep). 1 = off. It did not help on the
    /// built-in data at 10 labels per class (demo's SimCLR run: 0.715 off, 0.677 at d = 0.5,
    /// 0.649 at 0.3; MAE ViT after 2,000 steps, full Fashion-MNIST, label draws 0 and 1:
    /// 0.712 / 0.692 off, 0.701 / 0.659 at 0.75), hence off by default.
    pub finetune_layer_decay: f64,
    /// Label smoothing ε of fine-tuning's cross-entropy, pretrained and scratch alike (0 = off).
    /// On a validation split of Fashion-MNIST (train images 50,000–59,999, 10 labels per class,
    /// 3 draws) ε = 0.1 lifted the MAE ViT from 0.685 to 0.692 and the ViT from scratch from
    /// 0.585 to 0.593: under a point for either, so it stays off by default.
    pub finetune_label_smoothing: f32,
    /// Mixup's Beta(α, α) for fine-tuning's batches, pretrained and scratch alike (0 = off; the
    /// MAE recipe uses 0.8): each augmented image blended with its mirror in the batch by one
    /// λ per batch, the loss weighted likewise. See [`crate::data::mix`].
    pub finetune_mixup: f32,
    /// CutMix's Beta(α, α) (0 = off; the MAE recipe uses 1.0): a box of the mirrored image
    /// pasted in. With both on, each batch takes one of the two at even odds.
    pub finetune_cutmix: f32,
    /// Fine-tuning (and the semi stage's teacher) writes a checkpoint every this many steps
    /// into its stage directory (`…/transfer/finetune-LABELS-seedK/`, the semi stage's
    /// `teacher/`); running the same command again continues an interrupted one.
    pub finetune_checkpoint_every: u64,
    /// A fine-tuning step whose loss is NaN or infinite: `stop` (naming the step and the last
    /// checkpoint) or `skip` it, the weights left as they were (10 in a row stop). The semi
    /// stage always skips.
    pub on_nonfinite: crate::config::NonFinite,
    /// The semi-supervised stage ([`semi`], `--protocol semi`): `semi_steps`, `semi_batch_size`,
    /// `semi_ratio`, `semi_lr`, `semi_weight_decay`, `semi_threshold`, `semi_adaptive`,
    /// `semi_consistency`, `semi_distill`, `semi_temperature`, `semi_ema`, `semi_align`,
    /// `semi_checkpoint_every` ([`SemiTable`]), and the image-only `semi_*` keys below. The
    /// defaults were chosen on the validation split (`eval_on = "validation"`) of full
    /// Fashion-MNIST, 10 labels per class, SimCLR width 32: see docs/semi.md for the table.
    #[serde(flatten, with = "protocol_tables::semi_keys")]
    pub semi: SemiTable,
    /// FlexMatch's threshold warm-up (every threshold low until most of the pool has been
    /// predicted confidently once).
    pub semi_warmup: bool,
    /// Pseudo-labels from the moving average instead of the student.
    pub semi_pseudo_from_ema: bool,
    /// The weak views' forward normalises with their own batch statistics (training mode, as
    /// FixMatch does) instead of the running statistics.
    pub semi_weak_train_mode: bool,
    /// Where the student starts: `encoder` (the teacher's starting point) or `teacher`.
    pub semi_init: SemiInit,
    /// RandAugment operations per strong view.
    pub semi_strong_ops: usize,
    /// RandAugment's largest magnitude (a fraction of each operation's range).
    pub semi_strong_magnitude: f32,
    /// Side of the strong view's Cutout square, a fraction of the image side (0 = none).
    pub semi_cutout: f32,
    /// With `eval_on = "validation"`: the student's validation accuracy every this many steps
    /// in the stage's `metrics.jsonl` (`val_acc`; 0 = never). Never measured on the test split.
    pub semi_eval_every: u64,
    /// Linear and k-NN: re-estimate the encoder's batch-norm statistics on (up to 2,048 of) the
    /// downstream training images, labels unused, before taking features.
    pub bn_reestimate: bool,
    /// Evaluate on at most this many test images; 0 = all.
    pub test_limit: usize,
    /// `test` (the test split, or the fixed held-out 20% of data without one) or `validation`
    /// (10% of the other training images, never labelled nor in the unlabelled pool): choose
    /// settings on `validation`, report on `test`.
    pub eval_on: split::EvalOn,
    /// Folder images are resized to this square size (when not given by the run).
    pub image_size: usize,
    pub workers: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            backbone: BackboneKind::Convnet,
            width: 0,
            patch_size: 0,
            stage: 0,
            probe: ProbeTable {
                steps: 500,
                batch_size: 256,
                lr: 1e-2,
                weight_decay: 1e-3,
            },
            knn: KnnTable {
                k: 20,
                temperature: 0.1,
            },
            finetune: FinetuneTable {
                steps: 300,
                batch_size: 64,
                lr: 1e-3,
                weight_decay: 5e-4,
            },
            finetune_crop_scale_min: 0.8,
            finetune_flip: true,
            finetune_head: FinetuneHead::Auto,
            finetune_layer_decay: 1.0,
            finetune_label_smoothing: 0.0,
            finetune_mixup: 0.0,
            finetune_cutmix: 0.0,
            finetune_checkpoint_every: 100,
            on_nonfinite: crate::config::NonFinite::Stop,
            semi: SemiTable::with_shared_losses(3000, 32, 7, 1e-3, 5e-4, 500),
            semi_warmup: false,
            semi_pseudo_from_ema: false,
            semi_weak_train_mode: false,
            semi_init: SemiInit::Teacher,
            semi_strong_ops: 2,
            semi_strong_magnitude: 1.0,
            semi_cutout: 0.5,
            semi_eval_every: 250,
            bn_reestimate: true,
            test_limit: 0,
            eval_on: split::EvalOn::Test,
            image_size: 32,
            workers: 0,
        }
    }
}

impl TransferConfig {
    /// The linear probe's and k-NN's settings.
    pub fn frozen_settings(&self) -> frozen::FrozenSettings {
        protocol_tables::frozen_settings(&self.probe, &self.knn, self.seed)
    }

    /// The fine-tuning settings for an encoder from `from` (layer decay only for a pretrained one).
    pub fn finetune_settings(&self, from: &Source, quiet: bool) -> finetune::FinetuneSettings {
        finetune::FinetuneSettings {
            steps: self.finetune.steps,
            batch_size: self.finetune.batch_size,
            lr: self.finetune.lr,
            weight_decay: self.finetune.weight_decay,
            seed: self.seed,
            crop_scale_min: self.finetune_crop_scale_min,
            flip: self.finetune_flip,
            layer_decay: match from {
                Source::Run(_) => self.finetune_layer_decay,
                Source::Random | Source::Scratch => 1.0,
            },
            label_smoothing: self.finetune_label_smoothing,
            mix: crate::data::mix::MixSettings {
                mixup: self.finetune_mixup,
                cutmix: self.finetune_cutmix,
            },
            workers: self.workers(),
            quiet,
            stop_after: None,
        }
    }

    /// Where fine-tuning in `dir` keeps its checkpoints, and what it does with a NaN/Inf loss.
    pub fn fit_dir<'a>(&self, dir: &'a std::path::Path) -> finetune::FitDir<'a> {
        finetune::FitDir::new(dir, self.finetune_checkpoint_every, self.on_nonfinite)
    }

    /// Loader workers: `workers`, or half the cores when 0.
    pub fn workers(&self) -> usize {
        if self.workers == 0 {
            crate::engine::default_workers()
        } else {
            self.workers
        }
    }

    /// The strong view of the semi-supervised stage.
    pub fn strong(&self) -> crate::data::randaugment::StrongConfig {
        crate::data::randaugment::StrongConfig {
            ops: self.semi_strong_ops,
            magnitude: self.semi_strong_magnitude,
            cutout: self.semi_cutout,
        }
    }

    /// The semi-supervised stage's settings (its weak view is fine-tuning's augmentation).
    pub fn semi_settings(&self) -> semi::SemiSettings {
        let weak = semi::WeakSettings {
            crop_scale_min: self.finetune_crop_scale_min,
            flip: self.finetune_flip,
        };
        semi::SemiSettings {
            warmup: self.semi_warmup,
            pseudo_from_ema: self.semi_pseudo_from_ema,
            weak_train_mode: self.semi_weak_train_mode,
            ..semi::SemiSettings::from_table(&self.semi, weak, self.strong(), self.seed)
        }
    }

    /// Range checks that serde cannot express.
    pub fn validate(&self) -> Result<()> {
        use crate::config::{crop_scale, in_range, in_range_open, positive, width_at_most_max};
        let width = if self.width == 0 {
            self.backbone.default_width()
        } else {
            self.width
        };
        self.backbone.check_shape(width, self.patch_size)?;
        self.probe.validate()?;
        self.knn.validate()?;
        self.finetune.validate()?;
        crop_scale("finetune_crop_scale_min", self.finetune_crop_scale_min)?;
        if !(self.finetune_layer_decay > 0.0 && self.finetune_layer_decay <= 1.0) {
            return Err(Error::config(
                "finetune_layer_decay",
                format!("must be in (0, 1], found {}", self.finetune_layer_decay),
            ));
        }
        in_range_open(
            "finetune_label_smoothing",
            self.finetune_label_smoothing,
            0.0,
            1.0,
        )?;
        // Beta concentrations (0 = off).
        in_range("finetune_mixup", self.finetune_mixup, 0.0, 100.0)?;
        in_range("finetune_cutmix", self.finetune_cutmix, 0.0, 100.0)?;
        positive(
            "finetune_checkpoint_every",
            self.finetune_checkpoint_every as f64,
        )?;
        self.semi.validate()?;
        self.strong()
            .check()
            .map_err(|(key, message)| Error::config(semi_strong_key(key), message))?;
        positive("image_size", self.image_size as f64)?;
        width_at_most_max(self.width)
    }
}

/// The config key of a strong-view setting.
fn semi_strong_key(key: &str) -> &'static str {
    match key {
        "ops" => "semi_strong_ops",
        "magnitude" => "semi_strong_magnitude",
        _ => "semi_cutout",
    }
}

pub struct TransferRequest {
    pub from: Source,
    pub protocol: Protocol,
    pub labels_per_class: PerClass,
    pub config: TransferConfig,
    /// Where the result JSON goes; a run writes into `RUN/transfer/` by default.
    pub out: Option<PathBuf>,
    pub device: Device,
    pub quiet: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferResult {
    pub from: String,
    pub protocol: Protocol,
    pub labels_per_class: String,
    pub n_train: usize,
    pub n_test: usize,
    pub stage: usize,
    pub accuracy: f32,
    pub seed: u64,
    pub wall_s: f64,
    /// "test split" or "held-out 20% of train" when the data has no test split.
    pub evaluated_on: String,
    /// The semi-supervised stage's own numbers (`--protocol semi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semi: Option<SemiReport>,
}

/// What `--protocol semi` reports besides the student's accuracy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SemiReport {
    /// The teacher's (fine-tuned) accuracy on the same evaluation images.
    pub teacher_accuracy: f32,
    /// Unlabelled images the student learned from (the training split, never evaluation images).
    pub pool: usize,
    /// Seconds: fine-tuning the teacher and its logits on the pool (0 when cached), the student.
    pub teacher_s: f64,
    pub student_s: f64,
    /// Where the stage keeps its teacher, checkpoints and metrics.
    pub stage_dir: String,
}

/// Run one transfer evaluation on `dataset` and write its JSON next to the run (or into `out`).
pub fn transfer(dataset: &Dataset, req: &TransferRequest) -> Result<(TransferResult, PathBuf)> {
    let t0 = Instant::now();
    // An encoder pretrained on converted images (colorization: lightness only) gets the same
    // conversion of the downstream images.
    let converted;
    let dataset = match &req.from {
        Source::Run(run) => match read_encoder_info(run)?.input_transform {
            InputTransform::None => dataset,
            t => {
                converted = Dataset {
                    name: dataset.name.clone(),
                    train: t.apply(&dataset.train)?,
                    test: dataset.test.as_ref().map(|s| t.apply(s)).transpose()?,
                    classes: dataset.classes.clone(),
                    skipped: dataset.skipped,
                };
                &converted
            }
        },
        _ => dataset,
    };
    let cfg = &req.config;
    cfg.validate()?;
    let protocol = protocol_of(req);
    if req.from == Source::Scratch && !protocol.trains_encoder() {
        return Err(Error::Usage(
            "--from scratch trains the encoder on the labels, so it needs --protocol finetune or semi"
                .into(),
        ));
    }
    if req.from == Source::Random && protocol.trains_encoder() {
        return Err(Error::Usage(format!(
            "--from random is the frozen floor (linear, knn); --protocol {} trains the encoder: \
             use --from scratch",
            protocol.name()
        )));
    }
    let split = split::labelled_split(
        dataset,
        req.labels_per_class,
        cfg.test_limit,
        cfg.seed,
        cfg.eval_on,
    )?;
    let (encoder, input, run_info) = load_source(&req.from, dataset, cfg, &req.device)?;
    input.check(&dataset.train, &dataset.name)?;
    // (Fine-tuning's probe-first head is trained on these features too; fine-tuning then
    // replaces the statistics as it trains.)
    let probe_first = protocol.trains_encoder() && cfg.finetune_head.probe_first(&req.from);
    let encoder = if cfg.bn_reestimate && (!protocol.trains_encoder() || probe_first) {
        let idx = features::bn_sample_of(&split.pool, cfg.seed);
        features::reestimate_bn(encoder, &dataset.train, &idx, &input, &req.device)?
    } else {
        encoder
    };
    let stage = if cfg.stage == 0 {
        default_stage(run_info.as_ref(), protocol, encoder.stages())
    } else {
        cfg.stage
    };
    if stage > encoder.stages() {
        return Err(Error::config(
            "stage",
            format!("the encoder has {} stages, found {stage}", encoder.stages()),
        ));
    }
    let dir = match (&req.out, &req.from) {
        (Some(d), _) => d.clone(),
        (None, Source::Run(run)) => run.join("transfer"),
        (None, other) => PathBuf::from("runs").join(format!("baseline-{}", other.label())),
    };
    let path = dir.join(format!(
        "{}-{}-seed{}.json",
        protocol.name(),
        req.labels_per_class.label(),
        cfg.seed
    ));
    let mut semi_report = None;
    let accuracy = match protocol {
        Protocol::Linear | Protocol::Knn => {
            let (train_x, dim) = features::extract(
                &encoder,
                &dataset.train,
                &split.chosen,
                &input,
                Some(stage),
                &req.device,
            )?;
            let (test_x, _) = features::extract(
                &encoder,
                split.test_set,
                &split.test_idx,
                &input,
                Some(stage),
                &req.device,
            )?;
            // The linear probe's standardiser is fitted on unlabelled images of the pool.
            let pool_x = if protocol == Protocol::Linear {
                Some(pool_features(
                    &encoder,
                    dataset,
                    &split.pool,
                    &input,
                    stage,
                    cfg.seed,
                    &req.device,
                )?)
            } else {
                None
            };
            let f = frozen::Features {
                train_x,
                train_y: split.train_y.clone(),
                test_x,
                pool_x,
                dim,
                classes: split.classes,
            };
            scores::accuracy(
                &frozen::predict(protocol, f, &cfg.frozen_settings(), &req.device),
                &split.test_y,
            )
        }
        Protocol::Finetune | Protocol::Semi => {
            let head = if probe_first {
                Some(probe_head(
                    &encoder,
                    dataset,
                    &split,
                    &input,
                    cfg,
                    &req.device,
                )?)
            } else {
                None
            };
            let s = cfg.finetune_settings(&req.from, req.quiet);
            if protocol == Protocol::Finetune {
                let stage = semi::stage_dir(&path);
                let record = semi::StageRecord {
                    teacher_key: teacher_key(req, dataset, &split, &input, head.as_ref())?,
                    student_init: "finetune".into(),
                    settings: serde_json::Value::Null,
                };
                semi::prepare_finetune_dir(&stage, &record)?;
                finetune::finetune(
                    encoder,
                    head,
                    dataset.train.subset(&split.chosen),
                    split.test_set,
                    &split.test_idx,
                    split.classes,
                    &input,
                    &s,
                    &req.device,
                    &cfg.fit_dir(&stage),
                )?
            } else {
                let (accuracy, report) =
                    semi_stage(encoder, head, dataset, &split, &input, &s, req, &path)?;
                semi_report = Some(report);
                accuracy
            }
        }
    };
    let result = TransferResult {
        from: req.from.label(),
        protocol,
        labels_per_class: req.labels_per_class.label(),
        n_train: split.chosen.len(),
        n_test: split.test_idx.len(),
        stage,
        accuracy,
        seed: cfg.seed,
        wall_s: t0.elapsed().as_secs_f64(),
        evaluated_on: split.evaluated_on.clone(),
        semi: semi_report,
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    write_atomic(&path, &serde_json::to_vec_pretty(&result).expect("json"))?;
    Ok((result, path))
}

/// LP-FT's starting head: a linear probe on the frozen last-stage features of the labelled
/// images (standardised on the pool), folded into one affine map.
fn probe_head(
    encoder: &Backbone,
    dataset: &Dataset,
    split: &split::LabelledSplit,
    input: &InputSpec,
    cfg: &TransferConfig,
    device: &Device,
) -> Result<crate::nn::heads::LinearHead> {
    let last = encoder.stages();
    let (train_x, dim) = features::extract(
        encoder,
        &dataset.train,
        &split.chosen,
        input,
        Some(last),
        device,
    )?;
    let pool_x = pool_features(encoder, dataset, &split.pool, input, last, cfg.seed, device)?;
    let probe = linear_probe::train_probe(
        train_x,
        &split.train_y,
        Some(&pool_x),
        dim,
        split.classes,
        &cfg.frozen_settings().probe,
        device,
    );
    Ok(probe.folded(device))
}

/// The semi-supervised stage of `--protocol semi` (see [`semi`]): the teacher (fine-tuned, or
/// cached in the stage directory beside `result`), its logits on the pool, the student; the
/// student's accuracy and the stage's report.
#[allow(clippy::too_many_arguments)]
fn semi_stage(
    encoder: Backbone,
    head: Option<crate::nn::heads::LinearHead>,
    dataset: &Dataset,
    split: &split::LabelledSplit,
    input: &InputSpec,
    s: &finetune::FinetuneSettings,
    req: &TransferRequest,
    result: &std::path::Path,
) -> Result<(f32, SemiReport)> {
    let cfg = &req.config;
    let device = &req.device;
    let settings = cfg.semi_settings();
    let stage_dir = semi::stage_dir(result);
    let record = semi::StageRecord {
        teacher_key: teacher_key(req, dataset, split, input, head.as_ref())?,
        student_init: format!("{:?}", cfg.semi_init).to_lowercase(),
        settings: serde_json::to_value(&settings).expect("settings serialise"),
    };
    semi::prepare_dir(&stage_dir, &record)?;
    let template = finetune::Classifier {
        head: head.clone().unwrap_or_else(|| {
            crate::platform::device::seeded(device, cfg.seed, || {
                crate::nn::heads::LinearHead::new(encoder.dim(), split.classes, device)
            })
        }),
        backbone: encoder.clone(),
    };
    let t0 = Instant::now();
    let (teacher, logits) = match semi::cached_teacher(&stage_dir, template.clone()) {
        Some(cached) => cached,
        None => {
            if !req.quiet {
                println!(
                    "semi: fine-tuning the teacher on {} labelled images",
                    split.chosen.len()
                );
            }
            let teacher = finetune::train_classifier(
                encoder,
                head,
                dataset.train.subset(&split.chosen),
                split.classes,
                input,
                s,
                device,
                &cfg.fit_dir(&stage_dir.join("teacher")),
            )?;
            let logits = semi::logits_on(&teacher, &dataset.train, &split.pool, input, device)?;
            semi::cache_teacher(&stage_dir, &teacher, &logits, split.classes)?;
            (teacher, logits)
        }
    };
    let teacher_s = t0.elapsed().as_secs_f64();
    let teacher_accuracy =
        finetune::test_accuracy(&teacher, split.test_set, &split.test_idx, input, device)?;
    if !req.quiet {
        println!(
            "semi: teacher accuracy {teacher_accuracy:.4}; training the student on {} unlabelled images",
            split.pool.len()
        );
    }
    let student = match cfg.semi_init {
        SemiInit::Teacher => teacher,
        SemiInit::Encoder => template,
    };
    let pool = dataset.train.subset(&split.pool);
    let data = semi::SemiData {
        labelled: dataset.train.subset(&split.chosen),
        pool: &pool,
        teacher_logits: std::sync::Arc::new(logits),
        classes: split.classes,
        input,
        // The curve is only drawn on the validation split: the test split is never looked at
        // before the end.
        monitor: (cfg.eval_on == split::EvalOn::Validation && cfg.semi_eval_every > 0).then(|| {
            let idx = split::sample_limit(split.test_idx.clone(), 2000, cfg.seed);
            std::sync::Arc::new(semi::Monitor {
                images: split.test_set.subset(&idx),
                input: input.clone(),
            })
        }),
    };
    let t1 = Instant::now();
    let run = semi::StageRun {
        dir: &stage_dir,
        checkpoint_every: cfg.semi.checkpoint_every,
        eval_every: cfg.semi_eval_every,
        workers: cfg.workers(),
        quiet: req.quiet,
    };
    let student = semi::train_student(student, &data, &settings, &run, device)?;
    semi::save_student(&student, &stage_dir)?;
    let student_s = t1.elapsed().as_secs_f64();
    let accuracy =
        finetune::test_accuracy(&student, split.test_set, &split.test_idx, input, device)?;
    Ok((
        accuracy,
        SemiReport {
            teacher_accuracy,
            pool: split.pool.len(),
            teacher_s,
            student_s,
            stage_dir: stage_dir.display().to_string(),
        },
    ))
}

/// A digest of everything the semi stage's teacher depends on: the encoder it starts from (the
/// run's weights, or the baseline's architecture and seed), its starting head, the labelled
/// images, the data and the fine-tuning settings.
fn teacher_key(
    req: &TransferRequest,
    dataset: &Dataset,
    split: &split::LabelledSplit,
    input: &InputSpec,
    head: Option<&crate::nn::heads::LinearHead>,
) -> Result<String> {
    use sha2::{Digest, Sha256};
    let cfg = &req.config;
    let mut h = Sha256::new();
    match &req.from {
        Source::Run(run) => {
            let weights = run_dir::transferable_weights(run)?;
            h.update(text_features::content_digest(&weights)?.as_bytes());
        }
        other => h.update(
            format!(
                "{}:{:?}:{}:{}:{}",
                other.label(),
                cfg.backbone,
                cfg.width,
                cfg.patch_size,
                cfg.seed
            )
            .as_bytes(),
        ),
    }
    if let Some(head) = head {
        let (w, b) = head.affine();
        for v in w.iter().chain(&b) {
            h.update(v.to_le_bytes());
        }
    }
    h.update(dataset.name.as_bytes());
    h.update(format!("{}x{}", dataset.train.n, dataset.train.image_len()).as_bytes());
    for i in &split.chosen {
        h.update((*i as u64).to_le_bytes());
    }
    h.update(serde_json::to_vec(input).expect("json"));
    h.update(
        format!(
            "{} {} {} {} {} {} {} {} {} {} {}",
            cfg.finetune.steps,
            cfg.finetune.batch_size,
            cfg.finetune.lr,
            cfg.finetune.weight_decay,
            cfg.finetune_crop_scale_min,
            cfg.finetune_flip,
            cfg.finetune_layer_decay,
            cfg.finetune_label_smoothing,
            cfg.finetune_mixup,
            cfg.finetune_cutmix,
            cfg.seed
        )
        .as_bytes(),
    );
    Ok(format!("{:x}", h.finalize()))
}

/// Features of `stage` for a seeded sample of unlabelled training images (at most
/// [`linear_probe::STANDARDIZER_POOL`]): what the linear probe's standardiser is fitted on.
fn pool_features(
    encoder: &Backbone,
    dataset: &Dataset,
    pool: &[usize],
    input: &InputSpec,
    stage: usize,
    seed: u64,
    device: &Device,
) -> Result<Vec<f32>> {
    let pool = split::sample_limit(pool.to_vec(), linear_probe::STANDARDIZER_POOL, seed);
    let (x, _) = features::extract(encoder, &dataset.train, &pool, input, Some(stage), device)?;
    Ok(x)
}

/// The protocol a request runs (training from scratch is always fine-tuning).
fn protocol_of(req: &TransferRequest) -> Protocol {
    if req.from == Source::Scratch && req.protocol != Protocol::Semi {
        Protocol::Finetune
    } else {
        req.protocol
    }
}

/// Build the encoder (on the plain, non-autodiff device) and the input spec it expects.
fn load_source(
    from: &Source,
    dataset: &Dataset,
    cfg: &TransferConfig,
    device: &Device,
) -> Result<(Backbone, InputSpec, Option<run_dir::EncoderInfo>)> {
    match from {
        Source::Run(run) => {
            let info = read_encoder_info(run)?;
            let weights = run_dir::transferable_weights(run)?;
            let encoder = load_encoder(info.backbone.init(device), &weights)?;
            Ok((encoder, info.input.clone(), Some(info)))
        }
        Source::Random | Source::Scratch => {
            let input = InputSpec::from_images(&dataset.train)?;
            let width = if cfg.width == 0 {
                cfg.backbone.default_width()
            } else {
                cfg.width
            };
            let spec = BackboneSpec {
                kind: cfg.backbone,
                in_channels: input.channels,
                width,
                patch: cfg.patch_size,
            };
            Ok((
                crate::platform::device::seeded(device, cfg.seed, || spec.init(device)),
                input,
                None,
            ))
        }
    }
}

pub use run_dir::read_encoder_info;

/// Tasks whose best frozen features sit one stage below the top of the plain conv net (the
/// last stage specialises in the pretext task: Gidaris et al. 2018, Noroozi & Favaro 2016,
/// Doersch et al. 2015; on ResNets Kolesnikov et al. 2019 found the last the best).
const MID_STAGE_TASKS: [&str; 3] = ["rotation", "context", "jigsaw"];

/// Whether the linear probe of a `task` run on `kind` reads the stage below the last by
/// default. Measured on full Fashion-MNIST (1,000 steps, width 32, 10 labels per class, 3
/// draws): rotation 0.678 → 0.701, context 0.635 → 0.665, jigsaw 0.624 → 0.680; k-NN is not
/// moved, as it loses at stage 3 for rotation (0.641 → 0.602) and context (0.575 → 0.549).
fn probes_below_the_top(task: &str, kind: BackboneKind, protocol: Protocol) -> bool {
    protocol == Protocol::Linear && kind == BackboneKind::Convnet && MID_STAGE_TASKS.contains(&task)
}

/// The stage `stage = 0` stands for: the last, or the one below it where
/// [`probes_below_the_top`] says so for the run the encoder comes from (`None`: a baseline).
fn default_stage(run: Option<&run_dir::EncoderInfo>, protocol: Protocol, stages: usize) -> usize {
    match run {
        Some(info)
            if stages > 1 && probes_below_the_top(&info.task, info.backbone.kind, protocol) =>
        {
            stages - 1
        }
        _ => stages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_linear_probe_of_patch_and_rotation_tasks_on_the_conv_net_reads_below_the_top() {
        use BackboneKind::{Convnet, Resnet18, Vit};
        for task in ["rotation", "context", "jigsaw"] {
            assert!(
                probes_below_the_top(task, Convnet, Protocol::Linear),
                "{task}"
            );
            assert!(
                !probes_below_the_top(task, Convnet, Protocol::Knn),
                "{task}"
            );
            assert!(
                !probes_below_the_top(task, Convnet, Protocol::Finetune),
                "{task}"
            );
            assert!(
                !probes_below_the_top(task, Resnet18, Protocol::Linear),
                "{task}"
            );
            assert!(!probes_below_the_top(task, Vit, Protocol::Linear), "{task}");
        }
        for task in ["simclr", "byol", "mae", "inpaint", "superres", "colorize"] {
            assert!(
                !probes_below_the_top(task, Convnet, Protocol::Linear),
                "{task}"
            );
        }
        // Baselines have no task: the last stage.
        assert_eq!(default_stage(None, Protocol::Linear, 4), 4);
    }

    #[test]
    fn fine_tuning_rates_out_of_range_are_refused_by_name() {
        let with = |f: fn(&mut TransferConfig)| {
            let mut c = TransferConfig::default();
            f(&mut c);
            c.validate().err().map(|e| e.to_string())
        };
        assert!(with(|_| {}).is_none());
        assert!(with(|c| c.finetune_label_smoothing = 0.1).is_none());
        for bad in [
            with(|c| c.finetune_label_smoothing = 1.0),
            with(|c| c.finetune_label_smoothing = -0.1),
            with(|c| c.finetune_label_smoothing = f32::NAN),
        ] {
            let e = bad.expect("refused");
            assert!(
                e.contains("finetune_label_smoothing") && e.contains("[0, 1)"),
                "{e}"
            );
        }
        let e = with(|c| c.finetune_layer_decay = 0.0).expect("refused");
        assert!(e.contains("finetune_layer_decay"), "{e}");
        assert!(with(|c| {
            c.finetune_mixup = 0.8;
            c.finetune_cutmix = 1.0
        })
        .is_none());
        for (key, bad) in [
            ("finetune_mixup", with(|c| c.finetune_mixup = -0.5)),
            ("finetune_mixup", with(|c| c.finetune_mixup = f32::NAN)),
            ("finetune_cutmix", with(|c| c.finetune_cutmix = 1e3)),
        ] {
            let e = bad.expect("refused");
            assert!(e.contains(key) && e.contains("[0, 100]"), "{e}");
        }
    }

    #[test]
    fn auto_head_probes_pretrained_encoders_only() {
        let run = Source::Run(PathBuf::from("runs/x"));
        assert_eq!(TransferConfig::default().finetune_head, FinetuneHead::Auto);
        assert!(FinetuneHead::Auto.probe_first(&run));
        assert!(!FinetuneHead::Auto.probe_first(&Source::Scratch));
        assert!(!FinetuneHead::Auto.probe_first(&Source::Random));
        assert!(FinetuneHead::Probe.probe_first(&Source::Scratch));
        assert!(!FinetuneHead::Random.probe_first(&run));
    }
}
