//! BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): two random views of every image; an
//! online network (backbone → projector → predictor) predicts the target network's projection of
//! the other view. The target (backbone → projector) gets no gradient: after every step it moves
//! towards the online network as an exponential moving average whose momentum rises from
//! `momentum` to 1 on a cosine schedule over the run. No negatives are needed. The target is part
//! of the model, so checkpoints and `--resume` keep it exactly.
//!
//! `pretext pretrain --task byol --data idx:../shared/data/fashion-mnist --out runs/byol`

use std::sync::Arc;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::simclr::{l2_normalize, resolve_views, two_views};
use super::{backbone, bind, Build, ClassBatch, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{at_least_one, in_range_open, parse_section};
use crate::data::loader::MakeBatch;
use crate::data::views::{ViewConfig, Views};
use crate::engine::step::images_tensor;
use crate::engine::{StepCtx, StepStats, Task};
use crate::error::Result;
use crate::nn::ema::ema_update;
use crate::nn::heads::ProjectionHead;
use crate::nn::input::InputSpec;
use crate::nn::Backbone;

pub const ENTRY: TaskEntry = TaskEntry {
    name: "byol",
    description:
        "predict a slowly moving target network's embedding of another view (Grill et al. 2020)",
    build: Build::Image(build),
};

/// `[byol]` config section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    /// Base momentum τ of the target's moving average (rises to 1 by the last step).
    pub momentum: f64,
    pub proj_hidden: usize,
    pub proj_dim: usize,
    /// How views are made (`byol.views.crop_scale_min = 0.3`, …).
    pub views: ViewConfig,
}

impl Default for ByolConfig {
    fn default() -> Self {
        Self {
            momentum: 0.99,
            proj_hidden: 512,
            proj_dim: 128,
            views: ViewConfig::default(),
        }
    }
}

/// Backbone + projector: the online network's first two parts, and the whole target.
#[derive(Module, Debug)]
pub struct Projected {
    pub backbone: Backbone,
    pub projector: ProjectionHead,
}

impl Projected {
    /// x: [n, c, h, w] → projections [n, proj_dim]
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.projector.forward(self.backbone.features(x))
    }
}

/// The online network (trained) and the target (a moving average of `online.net`).
#[derive(Module, Debug)]
pub struct ByolModel {
    pub online: Projected,
    pub predictor: ProjectionHead,
    pub target: Projected,
}

#[derive(Clone)]
pub struct Byol {
    config: ByolConfig,
    views: Views,
    input: InputSpec,
    /// The run's step budget (the momentum schedule's length).
    steps: u64,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let config: ByolConfig = parse_section("byol", ctx.config.section("byol"))?;
    in_range_open("byol.momentum", config.momentum, 0.0, 1.0)?;
    at_least_one("byol.proj_hidden", config.proj_hidden)?;
    at_least_one("byol.proj_dim", config.proj_dim)?;
    let views = resolve_views("byol", &config.views, ctx.input)?;
    let backbone = backbone(ctx, ctx.input.channels);
    let dim = backbone.dim();
    let (hidden, out) = (config.proj_hidden, config.proj_dim);
    let online = Projected {
        backbone,
        projector: ProjectionHead::new(dim, hidden, out, &ctx.device),
    };
    let predictor = ProjectionHead::new(out, hidden, out, &ctx.device);
    // The target starts as a copy of the online network (parameters of its own, so checkpoints
    // and the optimiser never confuse the two) and is never trained.
    let fresh = Projected {
        backbone: super::backbone(ctx, ctx.input.channels),
        projector: ProjectionHead::new(dim, hidden, out, &ctx.device),
    };
    let target = ema_update(fresh.no_grad(), &online, 0.0);
    let task = Byol {
        config,
        views,
        input: ctx.input.clone(),
        steps: ctx.config.steps,
        device: ctx.device.clone(),
    };
    let model = ByolModel {
        online,
        predictor,
        target,
    };
    Ok(bind(task, model, ctx))
}

/// The target's momentum after `step` of `total` steps: τ₀ rising to 1 on a cosine.
pub fn momentum_at(base: f64, step: u64, total: u64) -> f64 {
    let t = (step as f64 / total.max(1) as f64).min(1.0);
    1.0 - (1.0 - base) * ((std::f64::consts::PI * t).cos() + 1.0) / 2.0
}

/// BYOL's loss: 2 − 2·cos between each online prediction `p` ([2n, d]) and the target projection
/// of the *other* view of the same image (`z`, [2n, d], rows i and i+n the two views), summed
/// over the two directions and averaged over the n images.
pub fn byol_loss(p: Tensor<2>, z: Tensor<2>) -> Tensor<1> {
    let [n2, _] = z.dims();
    let n = n2 / 2;
    let swapped = Tensor::cat(vec![z.clone().slice(n..n2), z.slice(0..n)], 0);
    let cos = (l2_normalize(p) * l2_normalize(swapped)).sum_dim(1);
    (cos.neg() + 1.0).mul_scalar(2.0).sum().div_scalar(n as f64)
}

impl Task for Byol {
    type Model = ByolModel;
    type Batch = ClassBatch;
    type Encoder = Backbone;

    fn step(
        &mut self,
        model: ByolModel,
        batch: ClassBatch,
        cx: &mut StepCtx,
    ) -> (ByolModel, StepStats) {
        let x = images_tensor(batch.images, batch.shape, &self.device);
        let ByolModel {
            online,
            predictor,
            target,
        } = model;
        let p = predictor.forward(online.forward(x.clone()));
        // No gradient into the target: its projections are constants of this step.
        let z = target.forward(x).detach();
        let loss = byol_loss(p, z);
        let value = loss.clone().detach().into_scalar::<f32>();
        let tau = momentum_at(self.config.momentum, cx.step, self.steps);
        let stats = StepStats::new(value, vec![("tau", tau as f32)]);
        let mut grads = cx.backward(loss);
        let g_online = GradientsParams::from_module(&mut grads, &online);
        let g_pred = GradientsParams::from_module(&mut grads, &predictor);
        let online = cx.update("model", cx.lr, online, g_online);
        let predictor = cx.update("predictor", cx.lr, predictor, g_pred);
        let target = ema_update(target, &online, tau);
        let model = ByolModel {
            online,
            predictor,
            target,
        };
        (model, stats)
    }

    const OPTIMIZERS: &'static [&'static str] = &["model", "predictor"];

    fn items(batch: &ClassBatch) -> u64 {
        batch.drawn as u64
    }

    fn encoder(model: &ByolModel) -> Backbone {
        model.online.backbone.clone()
    }
}

impl ImageTask for Byol {
    fn make_batch(&self) -> MakeBatch<ClassBatch> {
        let (views, input) = (self.views.clone(), self.input.clone());
        Arc::new(move |images, _labels, rngs| two_views(images, &views, &input, rngs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gan::flat_params;
    use crate::nn::{BackboneKind, BackboneSpec};

    fn projected(device: &Device) -> Projected {
        let backbone = BackboneSpec {
            kind: BackboneKind::Convnet,
            in_channels: 1,
            width: 4,
            patch: 0,
        }
        .init(device);
        let dim = backbone.dim();
        Projected {
            backbone,
            projector: ProjectionHead::new(dim, 8, 4, device),
        }
    }

    #[test]
    fn the_momentum_rises_from_its_base_to_one() {
        assert!((momentum_at(0.99, 0, 100) - 0.99).abs() < 1e-12);
        assert!((momentum_at(0.99, 50, 100) - 0.995).abs() < 1e-12);
        assert!((momentum_at(0.99, 100, 100) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_ema_update_is_exact_per_parameter() {
        let device = Device::flex().autodiff();
        let (online, target) = crate::platform::device::seeded(&device, 1, || {
            (projected(&device), projected(&device).no_grad())
        });
        let (o, t) = (flat_params(&online), flat_params(&target));
        assert_ne!(o, t);
        let moved = ema_update(target, &online, 0.9);
        let m = flat_params(&moved);
        assert_eq!(m.len(), o.len());
        for ((m, o), t) in m.iter().zip(&o).zip(&t) {
            assert!(
                (m - (0.9 * t + 0.1 * o)).abs() < 1e-6,
                "{m} vs {}",
                0.9 * t + 0.1 * o
            );
        }
    }

    #[test]
    fn the_loss_is_zero_for_perfect_predictions_and_four_per_view_for_opposite_ones() {
        let device = Device::flex();
        let z = Tensor::<2>::from_data(TensorData::new(vec![1.0, 0.0, 0.0, 1.0], [2, 2]), &device);
        // p_i must match z of the other view: swap the rows.
        let p = Tensor::<2>::from_data(TensorData::new(vec![0.0, 3.0, 2.0, 0.0], [2, 2]), &device);
        assert!(byol_loss(p.clone(), z.clone()).into_scalar::<f32>().abs() < 1e-6);
        assert!((byol_loss(p.neg(), z).into_scalar::<f32>() - 8.0).abs() < 1e-5);
    }
}
