//! The semi-supervised stage for text (`--protocol semi` on labelled documents): the same
//! stage as for images ([`super::semi`]) — a fine-tuned teacher, its logits on the unlabelled
//! pool (every training document, never a held-out one) cached in the stage directory, then a
//! student trained on labelled documents plus pseudo-labelled and distilled unlabelled ones —
//! with views made of tokens: the weak view of a document is the document, the strong view
//! ([`noisy`]) has a share of its ordinary tokens deleted, masked (bidirectional models: their
//! pretraining's `<mask>`) or replaced by random ones (UDA's word replacement, Xie et al. 2020,
//! on tokens).

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::AdamWConfig;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use rand::Rng;

use super::semi::{self, SemiSettings, SharedStatus};
use super::text_transfer::{Example, TextClassifier};
use crate::data::loader::batch_indices;
use crate::data::rngs::BatchRngs;
use crate::engine::checkpoint::latest_checkpoint;
use crate::engine::replicas::{resolve, split_batch};
use crate::engine::run_loop;
use crate::engine::{AnyBatch, Bound, StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::transformer::Transformer;

/// How a strong view damages a document.
#[derive(Clone, Debug)]
pub struct Noise {
    /// Share of the ordinary tokens damaged: of those, 20% deleted, 40% masked (or, for a
    /// causal model, replaced) and 40% replaced by a random ordinary token.
    pub rate: f32,
    /// `<mask>` for bidirectional models; None for causal ones (replacement instead).
    pub mask: Option<u32>,
    /// The ordinary (non-special) token ids a replacement draws from.
    pub ordinary: Arc<Vec<u32>>,
    /// Whether a token id is special (padding, `<cls>`, …): never damaged.
    pub special: Arc<Vec<bool>>,
}

/// A strong view of `doc`: every ordinary token damaged with probability `noise.rate`.
pub fn noisy(doc: &[u32], noise: &Noise, rng: &mut impl Rng) -> Vec<u32> {
    let mut out = Vec::with_capacity(doc.len());
    for &t in doc {
        let special = noise.special.get(t as usize).copied().unwrap_or(false);
        if special || rng.gen::<f32>() >= noise.rate {
            out.push(t);
            continue;
        }
        let u = rng.gen::<f32>();
        let random = noise.ordinary[rng.gen_range(0..noise.ordinary.len().max(1))];
        if u < 0.2 {
            continue;
        }
        out.push(match noise.mask {
            Some(m) if u < 0.6 => m,
            _ => random,
        });
    }
    if out.is_empty() {
        out.push(doc.first().copied().unwrap_or(0));
    }
    out
}

/// One step's documents: labelled ones (with labels), and unlabelled ones as they are (weak)
/// and damaged (strong), with the teacher's logits for them.
#[derive(Clone, Debug)]
pub struct TextSemiBatch {
    pub labelled: Vec<Vec<u32>>,
    pub labels: Vec<u32>,
    pub weak: Vec<Vec<u32>>,
    pub strong: Vec<Vec<u32>>,
    pub positions: Vec<u32>,
    pub teacher: Vec<f32>,
    /// The pool documents' true classes, only to log the pseudo-labels' accuracy.
    pub truth: Vec<u32>,
}

/// The student and its moving average.
#[derive(Module, Debug)]
pub struct TextSemiModel {
    pub student: TextClassifier,
    pub ema: TextClassifier,
}

#[derive(Clone)]
struct TextSemi {
    device: Device,
    classes: usize,
    pad: u32,
    cls: Option<bool>,
    s: SemiSettings,
    status: SharedStatus,
}

fn refs(docs: &[Vec<u32>]) -> Vec<&[u32]> {
    docs.iter().map(Vec::as_slice).collect()
}

impl Task for TextSemi {
    type Model = TextSemiModel;
    type Encoder = Transformer;
    type Batch = TextSemiBatch;

    fn step(
        &mut self,
        model: TextSemiModel,
        b: TextSemiBatch,
        cx: &mut StepCtx,
    ) -> (TextSemiModel, StepStats) {
        // Dropout masks from the step's own stream (as pretraining's), so a resumed stage
        // repeats the uninterrupted one.
        let (seed, part) = (self.s.seed ^ 0xd409 ^ (cx.step << 20), cx.part() as u64);
        crate::nn::dropout::with_generator(seed, part, || self.semi_step(model, b, cx))
    }

    fn items(b: &TextSemiBatch) -> u64 {
        (b.labelled.len() + b.strong.len()) as u64
    }

    fn encoder(model: &TextSemiModel) -> Transformer {
        model.student.lm.clone()
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        self.status.save(dir)
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        self.status.load(dir)
    }
}

impl TextSemi {
    fn semi_step(
        &mut self,
        model: TextSemiModel,
        b: TextSemiBatch,
        cx: &mut StepCtx,
    ) -> (TextSemiModel, StepStats) {
        let k = self.classes;
        let pseudo = if self.s.consistency > 0.0 && !b.weak.is_empty() {
            let inner = self.device.clone().inner();
            let labeller = if self.s.pseudo_from_ema {
                model.ema.valid()
            } else {
                model.student.valid()
            };
            let logits = labeller.logits(&refs(&b.weak), self.pad, self.cls, &inner);
            let probs = softmax(logits, 1);
            Some(
                self.status
                    .pseudo_labels(probs, &b.positions, &b.truth, cx.step, &self.s),
            )
        } else {
            None
        };
        let mut docs = refs(&b.labelled);
        docs.extend(refs(&b.strong));
        let logits = model
            .student
            .logits(&docs, self.pad, self.cls, &self.device);
        let average = |mut m: TextSemiModel, decay| {
            m.ema = crate::nn::ema::ema_update(m.ema, &m.student, decay);
            m
        };
        let targets = semi::Targets {
            labels: &b.labels,
            pseudo: pseudo.as_ref(),
            teacher: &b.teacher,
            classes: k,
        };
        semi::learn(model, logits, targets, &self.s, cx, &self.device, average)
    }
}

/// What the text stage learns from.
pub struct TextSemiData<'a> {
    pub labelled: &'a [&'a Example],
    /// Every training document (the labelled ones among them), never a held-out one.
    pub pool: &'a [&'a Example],
    pub teacher_logits: &'a [f32],
    pub classes: usize,
    pub pad: u32,
    pub cls: Option<bool>,
    pub noise: Noise,
}

/// Train the student (`student`, no autodiff) in the stage directory, continuing from its last
/// checkpoint there; the trained student (its moving average when `s.ema > 0`).
pub fn train_student(
    student: TextClassifier,
    data: &TextSemiData,
    s: &SemiSettings,
    run: &semi::StageRun,
    device: &Device,
) -> Result<TextClassifier> {
    let ad = device.clone().autodiff();
    let b_l = s.batch_size;
    let n_u = s.ratio * b_l;
    if data.labelled.is_empty() {
        return Err(Error::Usage(
            "the semi stage needs labelled documents".into(),
        ));
    }
    if data.pool.len() < n_u || s.ratio == 0 {
        return Err(Error::Usage(format!(
            "the semi stage needs an unlabelled pool of at least semi_ratio × semi_batch_size = \
             {n_u} documents, found {}",
            data.pool.len()
        )));
    }
    let replicas = resolve(0, b_l, &ad).unwrap_or(1);
    let status = SharedStatus::new(data.pool.len(), data.classes);
    let task = TextSemi {
        device: ad.clone(),
        classes: data.classes,
        pad: data.pad,
        cls: data.cls,
        s: s.clone(),
        status,
    };
    let student = student.to_device(&ad).train();
    let ema = crate::nn::ema::detached_copy(&student);
    let mut bound = Bound::new(
        task,
        TextSemiModel { student, ema },
        &AdamWConfig::new()
            .with_weight_decay(s.weight_decay as f32)
            .init(),
        true,
    )
    .with_replicas(replicas);
    let resumed = latest_checkpoint(run.dir)?;
    let start = run_loop::resume(&mut bound, &resumed, run.dir, true)?;
    if start > 0 && !run.quiet {
        eprintln!("semi: continuing {} from step {start}", run.dir.display());
    }
    let mut next = |step: u64| -> Result<Box<dyn AnyBatch>> {
        let rngs = BatchRngs::new(s.seed ^ 0x7e47, step);
        let unl = batch_indices(data.pool.len(), n_u, true, s.seed ^ 0x5e41, step);
        let mut shared = rngs.shared();
        let lab: Vec<usize> = if b_l <= data.labelled.len() {
            rand::seq::index::sample(&mut shared, data.labelled.len(), b_l).into_vec()
        } else {
            (0..b_l)
                .map(|_| shared.gen_range(0..data.labelled.len()))
                .collect()
        };
        let total = replicas * crate::platform::dist::size();
        Ok(split_batch(n_u, replicas, &rngs, |r, part| {
            let p = r.start * total / n_u;
            let ls = &lab[p * b_l / total..(p + 1) * b_l / total];
            let (mut weak, mut strong, mut positions, mut teacher, mut truth) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (i, &j) in unl[r.clone()].iter().enumerate() {
                let doc = &data.pool[j];
                weak.push(doc.tokens.clone());
                strong.push(noisy(&doc.tokens, &data.noise, &mut part.item(i)));
                positions.push(j as u32);
                truth.push(doc.label);
                if s.distill > 0.0 {
                    teacher.extend_from_slice(
                        &data.teacher_logits[j * data.classes..(j + 1) * data.classes],
                    );
                }
            }
            TextSemiBatch {
                labelled: ls
                    .iter()
                    .map(|&i| data.labelled[i].tokens.clone())
                    .collect(),
                labels: ls.iter().map(|&i| data.labelled[i].label).collect(),
                weak,
                strong,
                positions,
                teacher,
                truth,
            }
        }))
    };
    let settings = s.loop_settings(
        s.steps / 10,
        25,
        run.checkpoint_every,
        "documents",
        run.quiet,
    );
    if start < s.steps {
        run_loop::run(&mut bound, &mut next, &settings, run.dir, start, s.steps)?.reached(
            s.steps,
            "the semi stage",
            run.dir,
        )?;
    }
    let m = bound.model();
    let out = if s.ema > 0.0 { &m.ema } else { &m.student };
    Ok(out.valid().to_device(device))
}

/// The teacher's logits on `docs`, rows of `classes`.
pub fn logits_on(
    net: &TextClassifier,
    docs: &[&Example],
    pad: u32,
    cls: Option<bool>,
    device: &Device,
) -> Vec<f32> {
    let mut out = Vec::new();
    for chunk in docs.chunks(32) {
        let d: Vec<&[u32]> = chunk.iter().map(|e| e.tokens.as_slice()).collect();
        out.extend(net.logits(&d, pad, cls, device).into_data().iter::<f32>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn noise_damages_ordinary_tokens_only_at_its_rate() {
        let noise = Noise {
            rate: 0.3,
            mask: Some(2),
            ordinary: Arc::new((10..100).collect()),
            special: Arc::new((0..100).map(|i| i < 10).collect()),
        };
        let doc: Vec<u32> = (0..2000).map(|i| 10 + (i % 90)).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let out = noisy(&doc, &noise, &mut rng);
        // 20% of the damaged are deleted: ~6% shorter.
        let short = 1.0 - out.len() as f32 / doc.len() as f32;
        assert!((0.03..0.09).contains(&short), "{short}");
        let masked = out.iter().filter(|&&t| t == 2).count() as f32 / doc.len() as f32;
        assert!((0.08..0.16).contains(&masked), "{masked}");
        // Kept tokens are never touched; a document never comes back empty.
        let pads = vec![0u32; 50];
        assert_eq!(noisy(&pads, &noise, &mut rng), pads);
        let all = Noise { rate: 1.0, ..noise };
        assert_eq!(noisy(&[50], &all, &mut rng).len(), 1);
    }
}
