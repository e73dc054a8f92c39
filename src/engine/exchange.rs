//! Where the replicas of one step meet (see [`super::replicas`]): at each optimiser update
//! ([`Exchange::update`]: gradients summed, one update, the updated module handed back), and
//! for the collectives a step may make across the parts of the global batch —
//! [`Exchange::all_reduce`] (f64 sums: synchronised batch norm, colorize's colour counts) and
//! [`Exchange::gather`] (rows of every part: SimCLR's embeddings). Replica 0, the *leader*,
//! combines what every replica brings, in replica order, then across MPI ranks
//! ([`crate::platform::dist`]), so the result is the same on every replica of every rank.
//!
//! A meeting that cannot complete — a replica returned or unwound without joining it — is
//! *broken*: nobody waits for ever; updates leave the module as it was, collectives give NaN,
//! and the engine treats the step as non-finite. A broken leader still makes its MPI calls (with
//! NaN), so the other ranks are not left waiting and undo (or stop at) the same step.

use std::any::Any;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use burn::module::Module;
use burn::optim::GradientsParams;

use super::task::Optimizers;

/// Where the replicas of one step meet.
pub struct Exchange {
    n: usize,
    state: Mutex<State>,
    cv: Condvar,
}

struct State {
    /// Updates completed in this step.
    round: u64,
    arrived: usize,
    grads: Vec<Option<GradientsParams>>,
    /// The updated module for each replica but the leader.
    outbox: Vec<Option<Box<dyn Any + Send>>>,
    /// Collectives completed in this step, replicas waiting in the current one, what each
    /// brought, and the last result.
    c_round: u64,
    c_arrived: usize,
    c_in: Vec<Option<Vec<f64>>>,
    c_out: Option<Arc<Vec<f64>>>,
    /// Replicas whose step has returned.
    done: Vec<bool>,
    /// A replica returned without joining a meeting the others made.
    broken: bool,
}

impl Exchange {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            state: Mutex::new(State {
                round: 0,
                arrived: 0,
                grads: (0..n).map(|_| None).collect(),
                outbox: (0..n).map(|_| None).collect(),
                c_round: 0,
                c_arrived: 0,
                c_in: vec![None; n],
                c_out: None,
                done: vec![false; n],
                broken: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replica `r`'s update of `module` with its `grads`; `optim` is the leader's optimisers
    /// (None on the other replicas). Returns the module every replica agrees on, or `module`
    /// unchanged when the meeting broke.
    pub fn update<M: Module + 'static>(
        &self,
        r: usize,
        optim: Option<&mut Optimizers>,
        name: &str,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> M {
        let mut s = self.lock();
        if s.broken || s.done.iter().any(|&d| d) {
            s.broken = true;
            self.cv.notify_all();
            return module;
        }
        s.grads[r] = Some(grads);
        s.arrived += 1;
        let round = s.round;
        self.cv.notify_all();
        if r == 0 {
            while s.arrived < self.n && !s.broken {
                s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.broken {
                s.grads.iter_mut().for_each(|g| *g = None);
                // The other ranks wait for this one's gradients: send NaN, so they undo (or
                // stop at) this step too.
                super::ranks::join_without_grads(&module);
                return module;
            }
            let grads: Vec<GradientsParams> = s
                .grads
                .iter_mut()
                .map(|g| g.take().expect("every replica's gradients"))
                .collect();
            let optim = optim.expect("the leader holds the optimisers");
            let updated = if crate::platform::dist::size() > 1 {
                // Summed here, then over every rank.
                let grads = super::ranks::sum_local_then_ranks(&module, grads);
                optim.step(name, lr, module, grads)
            } else {
                optim.step_multi(name, lr, module, grads)
            };
            for out in s.outbox.iter_mut().skip(1) {
                *out = Some(Box::new(updated.valid().train()));
            }
            s.arrived = 0;
            s.round += 1;
            self.cv.notify_all();
            updated
        } else {
            while s.round == round && !s.broken {
                s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.round == round {
                s.grads[r] = None;
                return module;
            }
            *s.outbox[r]
                .take()
                .expect("the leader left this replica its module")
                .downcast::<M>()
                .expect("the module type this replica updated")
        }
    }

    /// `values` summed element-wise over every replica (in replica order), then over every
    /// rank; None when the meeting broke.
    pub fn all_reduce(&self, r: usize, values: Vec<f64>) -> Option<Arc<Vec<f64>>> {
        let len = values.len();
        self.collective(
            r,
            values,
            len,
            |all| {
                let mut sum = all[0].clone();
                for (i, v) in all.iter().enumerate().skip(1) {
                    assert_eq!(
                        v.len(),
                        sum.len(),
                        "replicas out of step: replica {i} brought {} values to a sum of {}",
                        v.len(),
                        sum.len()
                    );
                    sum.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                }
                sum
            },
            |mut sum| {
                crate::platform::dist::all_reduce_sum_f64(&mut sum);
                sum
            },
        )
    }

    /// Every replica's `values` concatenated in replica order, then every rank's in rank order
    /// (each rank must bring as many); None when the meeting broke.
    pub fn gather(&self, r: usize, values: Vec<f64>) -> Option<Arc<Vec<f64>>> {
        // A broken leader sends what a whole meeting of parts like its own would have.
        let len = values.len() * self.n;
        self.collective(
            r,
            values,
            len,
            |all| all.concat(),
            |local| crate::platform::dist::all_gather_f64(&local),
        )
    }

    /// One collective: replica `r` brings `values`; the leader combines everything with `local`
    /// (in replica order) and `ranks` (over MPI), or when the meeting broke passes `ranks`
    /// `broken_len` NaN.
    fn collective(
        &self,
        r: usize,
        values: Vec<f64>,
        broken_len: usize,
        local: impl FnOnce(Vec<Vec<f64>>) -> Vec<f64>,
        ranks: impl FnOnce(Vec<f64>) -> Vec<f64>,
    ) -> Option<Arc<Vec<f64>>> {
        let mut s = self.lock();
        if s.broken || s.done.iter().any(|&d| d) {
            s.broken = true;
            self.cv.notify_all();
            drop(s);
            if r == 0 {
                ranks(vec![f64::NAN; broken_len]);
            }
            return None;
        }
        s.c_in[r] = Some(values);
        s.c_arrived += 1;
        let round = s.c_round;
        self.cv.notify_all();
        if r != 0 {
            while s.c_round == round && !s.broken {
                s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.c_round == round {
                s.c_in[r] = None;
                return None;
            }
            return s.c_out.clone();
        }
        while s.c_arrived < self.n && !s.broken {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.broken {
            s.c_in.iter_mut().for_each(|v| *v = None);
            drop(s);
            ranks(vec![f64::NAN; broken_len]);
            return None;
        }
        let all: Vec<Vec<f64>> = s
            .c_in
            .iter_mut()
            .map(|v| v.take().expect("every replica's values"))
            .collect();
        // Everyone else waits for the result: combine (and talk to the other ranks) unlocked.
        drop(s);
        let out = Arc::new(ranks(local(all)));
        let mut s = self.lock();
        s.c_out = Some(out.clone());
        s.c_arrived = 0;
        s.c_round += 1;
        self.cv.notify_all();
        Some(out)
    }

    /// Replica `r`'s step has returned (or unwound): anyone waiting for it waits in vain.
    pub fn finish(&self, r: usize) {
        let mut s = self.lock();
        s.done[r] = true;
        if s.arrived > 0 || s.c_arrived > 0 {
            s.broken = true;
        }
        self.cv.notify_all();
    }

    pub fn broken(&self) -> bool {
        self.lock().broken
    }
}

/// Calls [`Exchange::finish`] when a replica's step ends, panics included.
pub struct Finished<'a>(pub &'a Exchange, pub usize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

/// Synchronised batch norm on the calling thread while held (burn-flex's
/// [`burn_flex::set_batch_norm_sync`]): every batch-norm layer in training mode normalises with
/// the statistics of the whole global batch, its sums added over every part. The previous hook
/// (none) is back when this drops, panics included, so a pool thread never keeps a step's hook.
pub struct SyncBatchNorm(Option<burn_flex::BatchNormSync>);

impl SyncBatchNorm {
    /// For replica `r` of a step meeting at `exchange` (and across ranks through its leader).
    pub fn replica(exchange: Arc<Exchange>, r: usize) -> Self {
        Self::set(Arc::new(move |buf: &mut [f64]| {
            match exchange.all_reduce(r, buf.to_vec()) {
                Some(sum) => buf.copy_from_slice(&sum),
                None => buf.fill(f64::NAN),
            }
        }))
    }

    /// For a single replica per rank: sums across ranks only.
    pub fn ranks() -> Self {
        Self::set(Arc::new(|buf: &mut [f64]| {
            crate::platform::dist::all_reduce_sum_f64(buf)
        }))
    }

    fn set(hook: burn_flex::BatchNormSync) -> Self {
        Self(burn_flex::set_batch_norm_sync(Some(hook)))
    }
}

impl Drop for SyncBatchNorm {
    fn drop(&mut self) {
        burn_flex::set_batch_norm_sync(self.0.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` replicas meeting at one exchange, each running `f(r, exchange)` on its own thread.
    fn replicas<T: Send>(n: usize, f: impl Fn(usize, &Exchange) -> T + Sync) -> Vec<T> {
        let ex = Exchange::new(n);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|r| {
                    let (ex, f) = (&ex, &f);
                    scope.spawn(move || {
                        let _done = Finished(ex, r);
                        f(r, ex)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn collectives_sum_and_gather_in_replica_order() {
        let out = replicas(3, |r, ex| {
            let mut got = Vec::new();
            for round in 0..20 {
                let x = (r * 100 + round) as f64;
                let sum = ex.all_reduce(r, vec![x, 1.0]).unwrap();
                let all = ex.gather(r, vec![x; r + 1]).unwrap();
                got.push((sum.to_vec(), all.to_vec()));
            }
            got
        });
        for (round, got) in out[0].iter().enumerate() {
            let x = |r: usize| (r * 100 + round) as f64;
            assert_eq!(got.0, vec![x(0) + x(1) + x(2), 3.0]);
            assert_eq!(got.1, vec![x(0), x(1), x(1), x(2), x(2), x(2)]);
        }
        assert!(
            out.iter().all(|o| o == &out[0]),
            "every replica gets the same"
        );
    }

    #[test]
    fn a_replica_that_leaves_breaks_the_meeting_instead_of_hanging() {
        for leaver in [0, 1] {
            let out = replicas(2, |r, ex| {
                // Both meet once; then `leaver` returns while the other waits for it.
                let first = ex.all_reduce(r, vec![1.0]).map(|v| v[0]);
                let second = (r != leaver).then(|| ex.all_reduce(r, vec![1.0]).is_none());
                let third = (r != leaver).then(|| ex.gather(r, vec![1.0]).is_none());
                (first, second, third)
            });
            assert_eq!(out[leaver], (Some(2.0), None, None), "leaver {leaver}");
            assert_eq!(out[1 - leaver], (Some(2.0), Some(true), Some(true)));
        }
    }
}
