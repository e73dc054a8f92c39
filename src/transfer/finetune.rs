//! Fine-tuning: the whole encoder plus a linear head trained end-to-end on the labelled subset,
//! with light augmentation (random resized crop, horizontal flip). With a randomly initialised
//! encoder this is the "from scratch" baseline: same architecture, same budget. The steps go
//! through the engine's [`Bound`], so fine-tuning uses every core as pretraining does (one
//! replica per core, see `engine::replicas`).

use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use rand::Rng;

use crate::data::augment::{hflip, random_resized_crop};
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::data::{DataError, ImageSet};
use crate::engine::optim::optimizer;
use crate::engine::progress::Progress;
use crate::engine::replicas::{resolve, split_batch};
use crate::engine::schedule::lr_at;
use crate::engine::step::{classification_step, images_tensor, labels_tensor};
use crate::engine::{Bound, StepCtx, StepStats, Task, Trainable};
use crate::input::InputSpec;
use crate::nn::heads::LinearHead;
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
    pub workers: usize,
    pub quiet: bool,
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

/// Fine-tuning as the engine steps it: cross-entropy on a labelled batch.
#[derive(Clone)]
struct Finetune {
    device: Device,
}

impl Task for Finetune {
    type Model = Classifier;
    type Encoder = Backbone;
    type Batch = Batch;

    fn step(
        &mut self,
        model: Classifier,
        batch: Batch,
        cx: &mut StepCtx,
    ) -> (Classifier, StepStats) {
        let y = labels_tensor(&batch.labels, &self.device);
        let x = images_tensor(
            batch.images,
            [batch.b, batch.c, batch.h, batch.w],
            &self.device,
        );
        classification_step(model, cx, y, |m| m.forward(x))
    }

    fn items(batch: &Batch) -> u64 {
        batch.b as u64
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
) -> Result<f32, DataError> {
    let ad = device.clone().autodiff();
    let dim = encoder.dim();
    let head = match head {
        // `train()`: the probe was built without autodiff; its weights must take gradients here.
        Some(h) => h.to_device(&ad).train(),
        None => crate::device::seeded(&ad, s.seed, || LinearHead::new(dim, classes, &ad)),
    };
    let model = Classifier {
        backbone: encoder.to_device(&ad).train(),
        head,
    };
    let bs = s.batch_size.min(train.n);
    let replicas = resolve(0, bs, &ad).unwrap_or(1);
    let mut bound = Bound::new(
        Finetune { device: ad.clone() },
        model,
        &optimizer(crate::config::OptimizerKind::Adamw, s.weight_decay, 0.9),
        false,
    )
    .with_replicas(replicas);
    let (crop, flip, spec) = (s.crop_scale_min, s.flip, input.clone());
    let size = input.height;
    let augment = move |images: &[crate::data::augment::Img],
                        labels: &[u32],
                        rng: &mut rand_chacha::ChaCha8Rng| {
        let mut out = Vec::new();
        for img in images {
            let mut img = if crop < 1.0 && spec.height == spec.width {
                random_resized_crop(img, size, (crop, 1.0), (3.0 / 4.0, 4.0 / 3.0), rng)
            } else {
                img.clone()
            };
            if flip && rng.gen_bool(0.5) {
                img = hflip(&img);
            }
            spec.normalize(&mut img);
            out.extend_from_slice(&img.data);
        }
        Batch {
            b: images.len(),
            c: spec.channels,
            h: spec.height,
            w: spec.width,
            images: out,
            labels: labels.to_vec(),
        }
    };
    // One part per replica, each augmented with its own generator.
    let make: crate::data::loader::MakeBatch<Box<dyn crate::engine::AnyBatch>> =
        Arc::new(move |images, labels, rng| {
            split_batch(images.len(), replicas, rng, |r, rng| {
                augment(&images[r.clone()], &labels[r], rng)
            })
        });
    let loader = Loader::new(
        Arc::new(train),
        LoaderConfig {
            batch_size: bs,
            seed: s.seed,
            workers: s.workers,
            prefetch: 4,
            start_batch: 0,
            drop_last: true,
        },
        make,
    );
    let progress = Progress::new("finetune", 0, s.steps, s.quiet);
    for (step, batch) in loader.take(s.steps as usize).enumerate() {
        let lr = lr_at(step as u64, s.lr, s.steps / 20, s.steps, 0.0);
        let stats = bound.step(batch?, step as u64, lr);
        let log = (step + 1) % 50 == 0;
        progress.update(
            step as u64 + 1,
            &format!(
                "loss {:.4} acc {:.3}",
                stats.loss,
                stats.metrics.first().map_or(f32::NAN, |m| m.1)
            ),
            log,
            Default::default(),
        );
    }
    progress.finish();
    let model = bound.model().valid().to_device(device);
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
