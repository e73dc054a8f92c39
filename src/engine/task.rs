//! What a pretext task gives the engine, and what the engine keeps for it.
//!
//! A task ([`Task`]) is its idea: a typed batch, the model it trains (one burn `Module`; a GAN
//! puts its generator and discriminator in one struct) and its `step` — the loss, and for a GAN
//! the order of the discriminator and generator phases. The engine ([`Bound`]) owns everything
//! else: the model between steps, the named optimisers, saving and loading them, and undoing a
//! step whose loss was NaN/Inf (`on_nonfinite = "skip"`).

use std::any::Any;
use std::path::Path;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};

use super::checkpoint::{load_module, load_optimizer, save_module, save_optimizer, save_weights};
use super::step::StepStats;
use crate::error::{Error, Result};

/// The named optimisers of a run, one per network the task steps (`model`, or `generator` and
/// `discriminator`). Saved as `optim-NAME.bpk` in every checkpoint.
#[derive(Clone)]
pub struct Optimizers {
    named: Vec<(&'static str, ModuleOptimizer)>,
}

impl Optimizers {
    /// One optimiser per name, each a fresh copy of `proto`.
    pub fn new(names: &[&'static str], proto: &ModuleOptimizer) -> Self {
        Self {
            named: names.iter().map(|&n| (n, proto.clone())).collect(),
        }
    }

    fn get(&mut self, name: &str) -> &mut ModuleOptimizer {
        let Some(i) = self.named.iter().position(|(n, _)| *n == name) else {
            let names: Vec<&str> = self.named.iter().map(|(n, _)| *n).collect();
            panic!("no optimiser named {name:?}; the task declares {names:?}");
        };
        &mut self.named[i].1
    }

    /// One update of `module` with its gradients by the optimiser `name` at learning rate `lr`.
    pub fn step<M: Module>(&mut self, name: &str, lr: f64, module: M, grads: GradientsParams) -> M {
        self.get(name).step(lr, module, grads)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        for (name, o) in &self.named {
            save_optimizer(o, &dir.join(format!("optim-{name}.bpk")))?;
        }
        Ok(())
    }

    pub fn load(&mut self, dir: &Path) -> Result<()> {
        for (name, o) in &mut self.named {
            *o = load_optimizer(o.clone(), &dir.join(format!("optim-{name}.bpk")))?;
        }
        Ok(())
    }
}

/// What a step gets besides the model and the batch.
pub struct StepCtx<'a> {
    /// Steps completed before this one (0 for the first).
    pub step: u64,
    /// The scheduled learning rate of this step.
    pub lr: f64,
    pub optim: &'a mut Optimizers,
}

/// A pretext task as the engine runs it. `Clone` so the engine can undo a skipped step of a
/// task with state of its own (colorize's colour prior).
pub trait Task: Clone + 'static {
    /// Everything the task trains, as one module (on the autodiff device).
    type Model: Module;
    /// The part that transfers downstream (a backbone; a language model's transformer).
    type Encoder: Module;
    /// One batch as the data side makes it (on loader threads for images).
    type Batch: Clone + Send + 'static;
    /// The optimisers the engine builds, by name.
    const OPTIMIZERS: &'static [&'static str] = &["model"];

    /// One optimisation step. The engine checks the loss and metrics: on NaN/Inf it stops, or
    /// (`on_nonfinite = "skip"`) restores model, optimisers and task as they were before.
    fn step(
        &mut self,
        model: Self::Model,
        batch: Self::Batch,
        cx: &mut StepCtx,
    ) -> (Self::Model, StepStats);

    /// What a batch counts as for throughput (images drawn, tokens).
    fn items(batch: &Self::Batch) -> u64;

    /// The network that transfers downstream, saved as `encoder.safetensors`.
    fn encoder(model: &Self::Model) -> Self::Encoder;

    /// Task state besides the weights (a permutation set, a colour prior), into a checkpoint.
    fn save_state(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Restore what `save_state` wrote.
    fn load_state(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Held-out measurements every `eval_every` steps (e.g. validation loss); empty = none.
    fn validate(&self, _model: &Self::Model) -> Result<Vec<(String, f32)>> {
        Ok(Vec::new())
    }
}

/// A batch with its type erased, so one loop runs every task.
pub trait AnyBatch: Send {
    fn clone_box(&self) -> Box<dyn AnyBatch>;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + Send + Clone> AnyBatch for T {
    fn clone_box(&self) -> Box<dyn AnyBatch> {
        Box::new(self.clone())
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Clone for Box<dyn AnyBatch> {
    fn clone(&self) -> Self {
        (**self).clone_box()
    }
}

/// What the loop needs of a task bound to its model and optimisers.
pub trait Trainable {
    /// One step on a batch this task made. Undone (and reported `skipped`) when the loss or a
    /// metric is NaN/Inf and `on_nonfinite = "skip"`.
    fn step(&mut self, batch: Box<dyn AnyBatch>, step: u64, lr: f64) -> StepStats;
    /// Model (`model.bpk`), optimisers (`optim-NAME.bpk`), the transferable network
    /// (`encoder.safetensors`) and task state into the checkpoint directory `dir`.
    fn save(&self, dir: &Path) -> Result<()>;
    fn load(&mut self, dir: &Path) -> Result<()>;
    fn save_transferable(&self, path: &Path) -> Result<()>;
    fn validate(&self) -> Result<Vec<(String, f32)>>;
    /// Trainable parameters plus batch-norm statistics of every network, as burn counts them.
    fn num_params(&self) -> usize;
}

/// A task with its model and optimisers: the one implementation of [`Trainable`].
pub struct Bound<T: Task> {
    pub task: T,
    model: Option<T::Model>,
    optim: Optimizers,
    skip_nonfinite: bool,
    first: Option<T::Batch>,
}

impl<T: Task> Bound<T> {
    /// `proto` is the optimiser every name in `T::OPTIMIZERS` gets a copy of.
    pub fn new(task: T, model: T::Model, proto: &ModuleOptimizer, skip_nonfinite: bool) -> Self {
        Self {
            task,
            model: Some(model),
            optim: Optimizers::new(T::OPTIMIZERS, proto),
            skip_nonfinite,
            first: None,
        }
    }

    pub fn model(&self) -> &T::Model {
        self.model.as_ref().expect("model present between steps")
    }

    /// The first batch this task stepped on (for sample pictures).
    pub fn first_batch(&self) -> Option<&T::Batch> {
        self.first.as_ref()
    }

    /// One step on a typed batch (see [`Trainable::step`]).
    pub fn step_typed(&mut self, batch: T::Batch, step: u64, lr: f64) -> StepStats {
        if self.first.is_none() {
            self.first = Some(batch.clone());
        }
        let items = T::items(&batch);
        let model = self.model.take().expect("model present between steps");
        // `valid()` folds a pending batch-norm update into the stored running statistics, so the
        // record holds exactly the state training continues from.
        let before = self.skip_nonfinite.then(|| {
            (
                model.valid().into_record(),
                self.optim.clone(),
                self.task.clone(),
            )
        });
        let mut cx = StepCtx {
            step,
            lr,
            optim: &mut self.optim,
        };
        let (model, mut stats) = self.task.step(model, batch, &mut cx);
        stats.items = items;
        match before {
            Some((record, optim, task)) if !stats.finite() => {
                // Fold this step's running-statistics update in, then overwrite every value.
                let _ = model.valid();
                let model = model
                    .try_load_record(record)
                    .expect("a record taken from this module loads back into it");
                self.model = Some(model);
                self.optim = optim;
                self.task = task;
                stats.skipped = true;
            }
            _ => self.model = Some(model),
        }
        stats
    }
}

impl<T: Task> Trainable for Bound<T> {
    fn step(&mut self, batch: Box<dyn AnyBatch>, step: u64, lr: f64) -> StepStats {
        let batch = *batch
            .into_any()
            .downcast::<T::Batch>()
            .unwrap_or_else(|_| panic!("a batch made for another task"));
        self.step_typed(batch, step, lr)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_module(self.model().clone(), &dir.join("model.bpk"))?;
        self.optim.save(dir)?;
        self.task.save_state(dir)?;
        self.save_transferable(&dir.join("encoder.safetensors"))
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        let model = self.model.take().expect("model present");
        let path = dir.join("model.bpk");
        if !path.exists() {
            self.model = Some(model);
            return Err(Error::checkpoint(
                dir,
                "no model.bpk: the checkpoint was written by an older pretext; \
                 start the run again in a new --out directory",
            ));
        }
        self.model = Some(load_module(model, &path)?);
        self.optim.load(dir)?;
        self.task.load_state(dir)
    }

    fn save_transferable(&self, path: &Path) -> Result<()> {
        save_weights(&T::encoder(self.model()), path)
    }

    fn validate(&self) -> Result<Vec<(String, f32)>> {
        self.task.validate(self.model())
    }

    fn num_params(&self) -> usize {
        self.model().num_params()
    }
}
