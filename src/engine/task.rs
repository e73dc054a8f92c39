//! What a pretext task gives the engine, and what the engine keeps for it.
//!
//! A task ([`Task`]) is its idea: a typed batch, the model it trains (one burn `Module`; a GAN
//! puts its generator and discriminator in one struct) and its `step` — the loss, and for a GAN
//! the order of the discriminator and generator phases. The engine ([`Bound`]) owns everything
//! else: the model between steps, the named optimisers, saving and loading them, and undoing a
//! step whose loss was NaN/Inf (`on_nonfinite = "skip"`).

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::Tensor;
use burn::tensor::Gradients;

use super::checkpoint::{load_module, load_optimizer, save_module, save_optimizer, save_weights};
use super::clip;
use super::exchange::{Exchange, Finished, SyncBatchNorm};
use super::replicas::{self, Parts, Pools};
use super::step::StepStats;
use crate::error::{Error, Result};

/// The named optimisers of a run, one per network the task steps (`model`, or `generator` and
/// `discriminator`). Saved as `optim-NAME.bpk` in every checkpoint. With [`Self::with_global_clip`]
/// every update first measures the global norm of its gradients and clips them (see [`clip`]).
#[derive(Clone)]
pub struct Optimizers {
    named: Vec<(&'static str, ModuleOptimizer)>,
    /// Measure each update's global gradient norm and clip to this (0 = measure only); None:
    /// neither.
    global_clip: Option<f64>,
    /// The global gradient norm of the last update by each optimiser (in `named`'s order), until
    /// taken.
    norms: Vec<Option<f32>>,
}

impl Optimizers {
    /// One optimiser per name, each a fresh copy of `proto`.
    pub fn new(names: &[&'static str], proto: &ModuleOptimizer) -> Self {
        Self {
            named: names.iter().map(|&n| (n, proto.clone())).collect(),
            global_clip: None,
            norms: vec![None; names.len()],
        }
    }

    /// Clip every update's gradients to the global L2 norm `max_norm` (0 = measure the norm
    /// only), as `torch.nn.utils.clip_grad_norm_`; [`Self::take_norm`] then gives the norm.
    pub fn with_global_clip(mut self, max_norm: f64) -> Self {
        self.global_clip = Some(max_norm);
        self
    }

    fn index(&self, name: &str) -> usize {
        self.named
            .iter()
            .position(|(n, _)| *n == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = self.named.iter().map(|(n, _)| *n).collect();
                panic!("no optimiser named {name:?}; the task declares {names:?}");
            })
    }

    /// One update of `module` with its gradients by the optimiser `name` at learning rate `lr`
    /// (the gradients clipped first when a global clip is set). `grads` are the ones applied:
    /// already summed over replicas and ranks.
    pub fn step<M: Module>(&mut self, name: &str, lr: f64, module: M, grads: GradientsParams) -> M {
        let i = self.index(name);
        let grads = match self.global_clip {
            None => grads,
            Some(max_norm) => {
                let (grads, norm) = clip::clip_global(&module, grads, max_norm);
                self.norms[i] = Some(norm);
                grads
            }
        };
        self.named[i].1.step(lr, module, grads)
    }

    /// One update of `module` with the sum of several replicas' gradients (summed in replica
    /// order).
    pub fn step_multi<M: Module>(
        &mut self,
        name: &str,
        lr: f64,
        module: M,
        grads: Vec<GradientsParams>,
    ) -> M {
        let grads = clip::sum(&module, grads);
        self.step(name, lr, module, grads)
    }

    /// The global gradient norm (before clipping) of the last update by `name`, if it was
    /// measured since the last call.
    pub fn take_norm(&mut self, name: &str) -> Option<f32> {
        let i = self.named.iter().position(|(n, _)| *n == name)?;
        self.norms[i].take()
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

/// What a step gets besides the model and the batch. A task computes its losses and hands
/// them to [`StepCtx::backward`], and its gradients to [`StepCtx::update`]; with replicas (see
/// [`super::replicas`]) these are where the replicas' work is combined. A loss over the whole
/// global batch takes [`StepCtx::gather`], [`StepCtx::all_reduce`] and
/// [`StepCtx::backward_global`].
pub struct StepCtx<'a> {
    /// Steps completed before this one (0 for the first).
    pub step: u64,
    /// The scheduled learning rate of this step.
    pub lr: f64,
    /// Which replica runs this step (0 = the one whose model the engine keeps) …
    pub replica: usize,
    /// … of how many, each on its own part of the batch.
    pub replicas: usize,
    optim: Option<&'a mut Optimizers>,
    exchange: Option<&'a Exchange>,
}

impl<'a> StepCtx<'a> {
    /// A step without replicas, updating with `optim`.
    pub fn new(step: u64, lr: f64, optim: &'a mut Optimizers) -> Self {
        Self {
            step,
            lr,
            replica: 0,
            replicas: 1,
            optim: Some(optim),
            exchange: None,
        }
    }

    /// Which part of the global batch this replica steps: replicas of rank 0 first, then of
    /// rank 1, … (per-part randomness, e.g. dropout masks, follows the part, so it does not
    /// depend on how parts are shared between processes and threads).
    pub fn part(&self) -> usize {
        crate::platform::dist::rank() * self.replicas + self.replica
    }

    /// How many parts the global batch is in: replicas × ranks.
    pub fn parts(&self) -> usize {
        self.replicas * crate::platform::dist::size()
    }

    /// Gradients of `loss` (this part's mean), scaled by 1/(replicas × ranks) so the sum over
    /// every replica of every rank is the mean over the whole (global) batch.
    pub fn backward(&self, loss: Tensor<1>) -> Gradients {
        let parts = self.parts();
        if parts > 1 {
            loss.mul_scalar(1.0 / parts as f64).backward()
        } else {
            loss.backward()
        }
    }

    /// Gradients of a loss every part computes alike over the whole global batch, with only its
    /// own rows attached ([`Self::gather`]), or of this part's share of a global sum
    /// ([`Self::all_reduce`]): unscaled, as the parts' gradients summed are then exactly the
    /// loss's gradient.
    pub fn backward_global(&self, loss: Tensor<1>) -> Gradients {
        loss.backward()
    }

    /// `values` summed element-wise over every part of the global batch (every replica of
    /// every rank, in part order), in place; NaN when a replica left the step (a broken
    /// meeting, see [`super::exchange`]). Alone: unchanged.
    pub fn all_reduce(&self, values: &mut [f64]) {
        match self.exchange {
            Some(ex) => match ex.all_reduce(self.replica, values.to_vec()) {
                Some(sum) => values.copy_from_slice(&sum),
                None => values.fill(f64::NAN),
            },
            None => crate::platform::dist::all_reduce_sum_f64(values),
        }
    }

    /// The rows of every part of the global batch, in part order (replicas of rank 0 first, …):
    /// `rows` is this part's `[m, d]` block and stays as given (attached to this replica's graph),
    /// the other parts' arrive as constants. A loss on the result computed alike by every part
    /// and handed to [`Self::backward_global`] gives exactly the global loss's gradient once the
    /// parts' gradients are summed. Alone: `rows` itself. NaN rows when a replica left the step.
    pub fn gather(&self, rows: Tensor<2>) -> Tensor<2> {
        if self.parts() <= 1 {
            return rows;
        }
        let [m, d] = rows.dims();
        let device = rows.device();
        let data = rows.clone().detach().into_data().convert::<f32>();
        // This part's row count, then its rows.
        let mut mine = Vec::with_capacity(1 + m * d);
        mine.push(m as f64);
        mine.extend(
            data.as_slice::<f32>()
                .expect("f32 rows")
                .iter()
                .map(|&v| v as f64),
        );
        let all = match self.exchange {
            Some(ex) => ex.gather(self.replica, mine),
            None => Some(Arc::new(crate::platform::dist::all_gather_f64(&mine))),
        };
        let me = self.part();
        // A broken meeting (here or on another rank) sends NaN: no well-formed blocks.
        let Some(parts) = all.as_deref().and_then(|all| gathered_blocks(all, d)) else {
            return Tensor::full([m, d], f32::NAN, &device);
        };
        if parts.get(me).map(|b| b.len()) != Some(m * d) {
            return Tensor::full([m, d], f32::NAN, &device);
        }
        let blocks = parts
            .into_iter()
            .enumerate()
            .filter(|(_, values)| !values.is_empty())
            .map(|(part, values)| {
                if part == me {
                    return rows.clone();
                }
                let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                let shape = [values.len() / d, d];
                Tensor::from_data(burn::tensor::TensorData::new(v, shape), &device)
            })
            .collect();
        Tensor::cat(blocks, 0)
    }

    /// One descent step on `loss`: its gradients ([`Self::backward`]) applied to `module` by the
    /// optimiser `name` at `lr` ([`Self::update`]).
    pub fn descend<M: Module + 'static>(
        &mut self,
        name: &str,
        lr: f64,
        module: M,
        loss: Tensor<1>,
    ) -> M {
        let grads = GradientsParams::from_grads(self.backward(loss), &module);
        self.update(name, lr, module, grads)
    }

    /// One update of `module` by the optimiser `name` at learning rate `lr`; with replicas, with
    /// the sum of every replica's gradients (each replica gets the same updated module).
    pub fn update<M: Module + 'static>(
        &mut self,
        name: &str,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> M {
        match self.exchange {
            None => {
                let grads = super::ranks::all_reduce_grads(&module, grads);
                self.optim
                    .as_deref_mut()
                    .expect("a step without replicas holds the optimisers")
                    .step(name, lr, module, grads)
            }
            Some(ex) => ex.update(
                self.replica,
                self.optim.as_deref_mut(),
                name,
                lr,
                module,
                grads,
            ),
        }
    }
}

/// The parts' blocks of what [`StepCtx::gather`] gathered (each a row count, then its rows of
/// `d` values), or None when the buffer is not made of such blocks.
fn gathered_blocks(all: &[f64], d: usize) -> Option<Vec<&[f64]>> {
    let (mut blocks, mut at) = (Vec::new(), 0);
    while at < all.len() {
        let rows = all[at];
        if !(rows.is_finite() && rows >= 0.0 && rows.fract() == 0.0) {
            return None;
        }
        let end = at + 1 + rows as usize * d;
        blocks.push(all.get(at + 1..end)?);
        at = end;
    }
    Some(blocks)
}

/// A pretext task as the engine runs it. `Clone` so the engine can undo a skipped step of a
/// task with state of its own (colorize's colour prior).
pub trait Task: Clone + Send + 'static {
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
    /// Two numbers that change with any trainable weight (see [`super::ranks::checksum`]).
    fn checksum(&self) -> [f64; 2];
}

/// A task with its model and optimisers: the one implementation of [`Trainable`].
pub struct Bound<T: Task> {
    pub task: T,
    model: Option<T::Model>,
    optim: Optimizers,
    skip_nonfinite: bool,
    first: Option<T::Batch>,
    /// One pool per replica (none: the step runs on the caller's thread and rayon's global pool).
    pools: Option<Pools>,
    /// Batch norm with the global batch's statistics when the batch is in parts (replicas,
    /// ranks): see [`SyncBatchNorm`].
    sync_bn: bool,
}

impl<T: Task> Bound<T> {
    /// `proto` is the optimiser every name in `T::OPTIMIZERS` gets a copy of.
    pub fn new(task: T, model: T::Model, proto: &ModuleOptimizer, skip_nonfinite: bool) -> Self {
        Self {
            task,
            model: Some(crate::platform::device::init_now(model)),
            optim: Optimizers::new(T::OPTIMIZERS, proto),
            skip_nonfinite,
            first: None,
            pools: None,
            sync_bn: true,
        }
    }

    /// Step with `n` replicas (see [`replicas`]): every batch must then come as `n` parts.
    pub fn with_replicas(mut self, n: usize) -> Self {
        self.set_replicas(n);
        self
    }

    pub fn set_replicas(&mut self, n: usize) {
        if n != self.replicas() {
            self.pools = (n > 1).then(|| Pools::new(n));
        }
    }

    /// Whether batch norm takes the statistics of the whole global batch when it is in parts
    /// (the default: the same step whatever the replica and rank counts) or of each part alone.
    pub fn set_sync_bn(&mut self, on: bool) {
        self.sync_bn = on;
    }

    /// Clip every update's gradients to the global norm `max_norm` (0 = no clipping), after the
    /// sum over replicas and ranks, and report the norm of the `model` optimiser's update (before
    /// clipping) as the step metric `grad_norm` (see [`clip`]).
    pub fn with_global_clip(mut self, max_norm: f64) -> Self {
        self.optim = self.optim.with_global_clip(max_norm);
        self
    }

    /// How many replicas step together (1 = none).
    pub fn replicas(&self) -> usize {
        self.pools.as_ref().map_or(1, |p| p.len())
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
        self.step_parts(vec![batch], step, lr)
    }

    /// One step on a batch made as one part per replica (a single part without replicas).
    pub fn step_parts(&mut self, parts: Vec<T::Batch>, step: u64, lr: f64) -> StepStats {
        assert_eq!(
            parts.len(),
            self.replicas(),
            "a batch in as many parts as there are replicas"
        );
        if self.first.is_none() {
            self.first = Some(parts[0].clone());
        }
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
        let (model, stats) = match &self.pools {
            None => {
                let batch = parts.into_iter().next().expect("one part");
                let items = T::items(&batch);
                // One part per rank: batch norm's sums go across ranks.
                let _bn =
                    (self.sync_bn && crate::platform::dist::size() > 1).then(SyncBatchNorm::ranks);
                let mut cx = StepCtx::new(step, lr, &mut self.optim);
                let (model, stats) = self.task.step(model, batch, &mut cx);
                (model, StepStats { items, ..stats })
            }
            Some(pools) => replicated_step(
                pools,
                &mut self.task,
                &mut self.optim,
                model,
                parts,
                (step, lr),
                self.sync_bn,
            ),
        };
        // Under MPI: the numbers of the global batch, the same on every rank.
        let mut stats = super::ranks::merge_stats(stats);
        // Measured on the summed gradients: the same on every replica and rank.
        if let Some(norm) = self.optim.take_norm("model") {
            stats.metrics.push(("grad_norm", norm));
        }
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

/// One step by every replica, each in its own pool (replica 0 steps `model` itself, the others
/// independent copies and clones of the task), meeting at each update and collective; with
/// `sync_bn` batch norm sums its statistics over every replica (and rank).
fn replicated_step<T: Task>(
    pools: &Pools,
    task: &mut T,
    optim: &mut Optimizers,
    model: T::Model,
    parts: Vec<T::Batch>,
    (step, lr): (u64, f64),
    sync_bn: bool,
) -> (T::Model, StepStats) {
    let n = parts.len();
    let exchange = Arc::new(Exchange::new(n));
    let bn = |r: usize| sync_bn.then(|| SyncBatchNorm::replica(exchange.clone(), r));
    let mut parts = parts.into_iter();
    let lead_batch = parts.next().expect("a part per replica");
    // Independent copies: own autodiff leaves and own batch-norm running statistics.
    let others: Vec<(T, T::Model, T::Batch)> = parts
        .map(|b| (task.clone(), model.valid().train(), b))
        .collect();
    let ex = &*exchange;
    let bn = &bn;
    let (lead, rest) = std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .into_iter()
            .enumerate()
            .map(|(i, (mut task, model, batch))| {
                let (r, pool) = (i + 1, pools.get(i + 1));
                scope.spawn(move || {
                    pool.install(move || {
                        let _done = Finished(ex, r);
                        let _bn = bn(r);
                        let items = T::items(&batch);
                        let mut cx = StepCtx {
                            step,
                            lr,
                            replica: r,
                            replicas: n,
                            optim: None,
                            exchange: Some(ex),
                        };
                        let (_, stats) = task.step(model, batch, &mut cx);
                        StepStats { items, ..stats }
                    })
                })
            })
            .collect();
        let lead = pools.get(0).install(|| {
            let _done = Finished(ex, 0);
            let _bn = bn(0);
            let items = T::items(&lead_batch);
            let mut cx = StepCtx {
                step,
                lr,
                replica: 0,
                replicas: n,
                optim: Some(optim),
                exchange: Some(ex),
            };
            let (model, stats) = task.step(model, lead_batch, &mut cx);
            (model, StepStats { items, ..stats })
        });
        let rest: Vec<StepStats> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        (lead, rest)
    });
    let (model, lead_stats) = lead;
    let stats = replicas::merge(std::iter::once(lead_stats).chain(rest).collect());
    assert!(
        !exchange.broken() || !stats.finite(),
        "replicas went out of step with finite losses (a task updated a data-dependent number of times)"
    );
    (model, stats)
}

impl<T: Task> Trainable for Bound<T> {
    fn step(&mut self, batch: Box<dyn AnyBatch>, step: u64, lr: f64) -> StepStats {
        let batch = batch.into_any();
        let parts = match batch.downcast::<Parts<T::Batch>>() {
            Ok(parts) => parts.0,
            Err(batch) => vec![*batch
                .downcast::<T::Batch>()
                .unwrap_or_else(|_| panic!("a batch made for another task"))],
        };
        self.step_parts(parts, step, lr)
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

    fn checksum(&self) -> [f64; 2] {
        super::ranks::checksum(self.model())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_blocks_are_read_back_or_refused() {
        let all = [2.0, 1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 5.0, 6.0];
        let blocks = gathered_blocks(&all, 2).unwrap();
        assert_eq!(
            blocks,
            vec![&[1.0, 2.0, 3.0, 4.0][..], &[][..], &[5.0, 6.0][..]]
        );
        // What a broken meeting sends, a count past the end, a fractional count.
        assert!(gathered_blocks(&[f64::NAN; 6], 2).is_none());
        assert!(gathered_blocks(&[3.0, 1.0, 2.0], 2).is_none());
        assert!(gathered_blocks(&[0.5, 1.0], 2).is_none());
    }
}
