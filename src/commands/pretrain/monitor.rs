//! Watching a pretraining run learn: when the data has labels, every `eval_every` steps the
//! current encoder's k-NN accuracy on a fixed labelled subset (the labels are used for this
//! number only, never for training), evaluated on 1,000 images of the validation split (10% of
//! the training images, never the test split: the curve is watched while defaults are chosen).
//! The subset and the classifier are exactly those of `pretext transfer --protocol knn
//! --labels-per-class 100 --set test_limit=1000 --set eval_on="validation"` (same seed), so the
//! curve ends where that command starts. (Data with fewer than 100 images of some class
//! uses as many per class as it has: 50, 20, 10, 5 or 2.)

use std::path::Path;

use burn::prelude::Device;

use crate::data::{Dataset, ImageSet};
use crate::engine::{AnyBatch, StepStats, Trainable};
use crate::error::Result;
use crate::nn::input::{InputSpec, InputTransform};
use crate::tasks::ImageTrainer;
use crate::transfer::labels::PerClass;
use crate::transfer::{features, frozen, scores, split, Protocol, TransferConfig};

/// Labelled examples per class the monitor's k-NN keeps (at most), and evaluation images.
pub const PER_CLASS: usize = 100;
pub const TEST_IMAGES: usize = 1000;

/// The fixed labelled subset and the k-NN settings of a run's monitor.
pub struct KnnMonitor {
    /// The labelled examples and the evaluation images (converted as the encoder sees them).
    train: ImageSet,
    train_y: Vec<u32>,
    test: ImageSet,
    test_y: Vec<u32>,
    classes: usize,
    /// The images the encoder's batch-norm statistics are re-estimated on before each
    /// measurement (as `transfer` does), when that is on.
    bn: Option<ImageSet>,
    /// The encoder's input normalisation.
    input: InputSpec,
    settings: frozen::FrozenSettings,
    device: Device,
}

impl KnnMonitor {
    /// `None` when the data has no labels (or too few of a class): nothing to watch.
    pub fn new(
        dataset: &Dataset,
        input: InputSpec,
        transform: InputTransform,
        seed: u64,
        device: &Device,
    ) -> Result<Option<Self>> {
        if dataset.train.labels.is_none() {
            return Ok(None);
        }
        // 100 per class, or as many as the smallest class has (a small slice of the data).
        let Some(s) = [PER_CLASS, 50, 20, 10, 5, 2].iter().find_map(|&n| {
            split::labelled_split(
                dataset,
                PerClass::N(n),
                TEST_IMAGES,
                seed,
                split::EvalOn::Validation,
            )
            .ok()
        }) else {
            return Ok(None);
        };
        let (train, test) = (
            dataset.train.subset(&s.chosen),
            s.test_set.subset(&s.test_idx),
        );
        let (train, test) = (transform.apply(&train)?, transform.apply(&test)?);
        let cfg = TransferConfig {
            seed,
            ..Default::default()
        };
        let bn = if cfg.bn_reestimate {
            let idx = features::bn_sample_of(&s.pool, seed);
            Some(transform.apply(&dataset.train.subset(&idx))?)
        } else {
            None
        };
        Ok(Some(Self {
            train,
            train_y: s.train_y,
            test,
            test_y: s.test_y,
            classes: s.classes,
            bn,
            input,
            settings: cfg.frozen_settings(),
            device: device.clone(),
        }))
    }

    /// k-NN accuracy of `trainer`'s current encoder (last stage).
    pub fn measure(&self, trainer: &dyn ImageTrainer) -> Result<f32> {
        let mut encoder = trainer.encoder();
        if let Some(bn) = &self.bn {
            let all: Vec<usize> = (0..bn.n).collect();
            encoder = features::reestimate_bn(encoder, bn, &all, &self.input, &self.device)?;
        }
        let all = |n: usize| (0..n).collect::<Vec<usize>>();
        let (train_x, dim) = features::extract(
            &encoder,
            &self.train,
            &all(self.train.n),
            &self.input,
            None,
            &self.device,
        )?;
        let (test_x, _) = features::extract(
            &encoder,
            &self.test,
            &all(self.test.n),
            &self.input,
            None,
            &self.device,
        )?;
        let f = frozen::Features {
            train_x,
            train_y: self.train_y.clone(),
            test_x,
            pool_x: None,
            dim,
            classes: self.classes,
        };
        let pred = frozen::predict(Protocol::Knn, f, &self.settings, &self.device);
        Ok(scores::accuracy(&pred, &self.test_y))
    }
}

/// An image task with the monitor as its held-out validation (`knn` in `metrics.jsonl`). A
/// monitor that cannot read its images (a file that stopped decoding) is switched off with a
/// warning: it must never stop the training it watches.
pub struct Monitored<'a> {
    pub inner: &'a mut dyn ImageTrainer,
    pub monitor: Option<KnnMonitor>,
    pub failed: std::cell::Cell<bool>,
}

impl Trainable for Monitored<'_> {
    fn step(&mut self, batch: Box<dyn AnyBatch>, step: u64, lr: f64) -> StepStats {
        self.inner.step(batch, step, lr)
    }
    fn save(&self, dir: &Path) -> Result<()> {
        self.inner.save(dir)
    }
    fn load(&mut self, dir: &Path) -> Result<()> {
        self.inner.load(dir)
    }
    fn save_transferable(&self, path: &Path) -> Result<()> {
        self.inner.save_transferable(path)
    }
    fn validate(&self) -> Result<Vec<(String, f32)>> {
        let mut out = self.inner.validate()?;
        if let (Some(m), false) = (&self.monitor, self.failed.get()) {
            match m.measure(&*self.inner) {
                Ok(acc) => out.push(("knn".into(), acc)),
                Err(e) => {
                    eprintln!("warning: k-NN monitor switched off: {e}");
                    self.failed.set(true);
                }
            }
        }
        Ok(out)
    }
    fn num_params(&self) -> usize {
        self.inner.num_params()
    }
    fn checksum(&self) -> [f64; 2] {
        self.inner.checksum()
    }
}
