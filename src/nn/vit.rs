//! Vision transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), built from the
//! text model's blocks ([`super::transformer::Block`], bidirectional): the image is cut into p×p
//! patches, each flattened and linearly embedded as a token; fixed 2-D sine-cosine positions are
//! added (computed for the grid at hand, so any image size works); `depth` pre-LayerNorm blocks,
//! a final LayerNorm and mean pooling over the tokens give the feature vector.
//!
//! Stage k (1-based) is the output of block k, so per-layer probes see every block, and the U-Net
//! decoders of the generative tasks see each stage as a [b, d, h/p, w/p] map. MAE
//! (the `mae` task) runs the same blocks on the visible patches only ([`Vit::encode`]).

use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::ops::PadMode;

use super::transformer::Block;

#[derive(Module, Debug)]
pub struct Vit {
    /// c·p·p → d: the patch embedding (a stride-p convolution, written as a matmul).
    embed: Linear,
    blocks: Vec<Block>,
    norm: LayerNorm,
    patch: usize,
    dim: usize,
}

impl Vit {
    /// `dim` must be a multiple of 4 (the sine-cosine positions) and of `heads`.
    pub fn new(
        in_channels: usize,
        dim: usize,
        depth: usize,
        heads: usize,
        patch: usize,
        device: &Device,
    ) -> Self {
        let resid_std = 0.02 / ((2 * depth) as f64).sqrt();
        Self {
            embed: LinearConfig::new(in_channels * patch * patch, dim).init(device),
            blocks: (0..depth)
                .map(|_| Block::new(dim, heads, 4 * dim, 0.0, false, resid_std, device))
                .collect(),
            norm: LayerNormConfig::new(dim).init(device),
            patch,
            dim,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn patch(&self) -> usize {
        self.patch
    }

    /// Number of blocks (= stages).
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// Parameter ids by depth, input side first: the patch embedding, then one group per
    /// block. The final LayerNorm belongs with the head (MAE's layer-wise decay does the same).
    pub fn depth_groups(&self) -> Vec<Vec<burn::module::ParamId>> {
        std::iter::once(crate::nn::param_ids(&self.embed))
            .chain(self.blocks.iter().map(crate::nn::param_ids))
            .collect()
    }

    /// x: [b, c, h, w] → embedded patches with their positions [b, gh·gw, d] and the grid
    /// [gh, gw]. Sides that are not multiples of p are padded with zeros at the bottom/right.
    pub fn tokens(&self, x: Tensor<4>) -> (Tensor<3>, [usize; 2]) {
        let p = self.patch;
        let [_, _, h, w] = x.dims();
        let (ph, pw) = (h.div_ceil(p) * p - h, w.div_ceil(p) * p - w);
        let x = if ph + pw > 0 {
            x.pad((0, pw, 0, ph), PadMode::Constant(0.0))
        } else {
            x
        };
        let [_, _, h, w] = x.dims();
        let grid = [h / p, w / p];
        let t = self.embed.forward(patchify(x, p));
        let pos = sincos_2d(grid, self.dim, &t.device()).unsqueeze::<3>();
        (t + pos, grid)
    }

    /// Tokens [b, t, d] → after blocks 1..=`upto` [b, t, d]; the final LayerNorm when `upto` is
    /// the last block.
    pub fn blocks(&self, mut x: Tensor<3>, upto: usize) -> Tensor<3> {
        for block in &self.blocks[..upto] {
            x = block.forward(x, None);
        }
        if upto == self.blocks.len() {
            self.norm.forward(x)
        } else {
            x
        }
    }

    /// Tokens [b, t, d] through every block and the final LayerNorm.
    pub fn encode(&self, x: Tensor<3>) -> Tensor<3> {
        self.blocks(x, self.blocks.len())
    }

    /// x: [b, c, h, w] → mean of the tokens after block `stage` [b, d].
    pub fn features_at(&self, x: Tensor<4>, stage: usize) -> Tensor<2> {
        let (t, _) = self.tokens(x);
        let t = self.blocks(t, stage);
        let [b, _, d] = t.dims();
        t.mean_dim(1).reshape([b, d])
    }

    /// x: [b, c, h, w] → the tokens after blocks 1..=`stage` as maps [b, d, gh, gw] each.
    pub fn stage_maps(&self, x: Tensor<4>, stage: usize) -> Vec<Tensor<4>> {
        let (mut t, [gh, gw]) = self.tokens(x);
        let [b, _, d] = t.dims();
        let mut maps = Vec::with_capacity(stage);
        for k in 1..=stage {
            t = self.blocks[k - 1].forward(t, None);
            let shown = if k == self.blocks.len() {
                self.norm.forward(t.clone())
            } else {
                t.clone()
            };
            // [b, gh·gw, d] → [b, gh, gw, d] → [b, d, gh, gw]
            maps.push(shown.reshape([b, gh, gw, d]).permute([0, 3, 1, 2]));
        }
        maps
    }
}

/// x: [b, c, h, w] (h, w multiples of p) → patches [b, (h/p)·(w/p), p·p·c], the grid row by row,
/// each patch's values ordered (row, column, channel) — MAE's `patchify`.
pub fn patchify(x: Tensor<4>, p: usize) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    let (gh, gw) = (h / p, w / p);
    // [b, c, gh, p, gw, p] → [b, gh, gw, p, p, c]
    x.reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 3, 5, 1])
        .reshape([b, gh * gw, p * p * c])
}

/// The inverse of [`patchify`]: [b, gh·gw, p·p·c] → [b, c, gh·p, gw·p].
pub fn unpatchify(t: Tensor<3>, p: usize, c: usize, grid: [usize; 2]) -> Tensor<4> {
    let [b, _, _] = t.dims();
    let [gh, gw] = grid;
    // [b, gh, gw, p, p, c] → [b, c, gh, p, gw, p]
    t.reshape([b, gh, gw, p, p, c])
        .permute([0, 5, 1, 3, 2, 4])
        .reshape([b, c, gh * p, gw * p])
}

/// Fixed 2-D sine-cosine positions [gh·gw, d] (MAE's): the first d/2 values encode the column,
/// the last d/2 the row, each as d/4 sines then d/4 cosines of pos·ω_i, ω_i = 10000^(−i/(d/4)).
/// d must be a multiple of 4.
pub fn sincos_2d(grid: [usize; 2], d: usize, device: &Device) -> Tensor<2> {
    let [gh, gw] = grid;
    let q = d / 4;
    let omega: Vec<f64> = (0..q)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / q as f64))
        .collect();
    let mut v = Vec::with_capacity(gh * gw * d);
    for y in 0..gh {
        for x in 0..gw {
            for pos in [x as f64, y as f64] {
                v.extend(omega.iter().map(|o| (pos * o).sin() as f32));
                v.extend(omega.iter().map(|o| (pos * o).cos() as f32));
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [gh * gw, d]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: [usize; 4], device: &Device) -> Tensor<4> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    #[test]
    fn patchify_round_trip_is_exact_and_patches_are_the_image_squares() {
        let device = Device::flex();
        let x = ramp([2, 3, 8, 12], &device);
        let t = patchify(x.clone(), 4);
        assert_eq!(t.dims(), [2, 6, 48]);
        let back = unpatchify(t.clone(), 4, 3, [2, 3]);
        assert_eq!(
            back.into_data().try_to_vec::<f32>().unwrap(),
            x.clone().into_data().try_to_vec::<f32>().unwrap()
        );
        // Patch 4 (grid row 1, column 1) of image 1, its value at (row 2, column 3, channel 1)
        // is pixel (1, 4 + 2, 4 + 3) of image 1.
        let tv = t.into_data().try_to_vec::<f32>().unwrap();
        let xv = x.into_data().try_to_vec::<f32>().unwrap();
        let got = tv[(6 + 4) * 48 + (2 * 4 + 3) * 3 + 1];
        let want = xv[((3 + 1) * 8 + 6) * 12 + 7];
        assert_eq!(got, want);
    }

    #[test]
    fn positions_are_distinct_and_bounded() {
        let device = Device::flex();
        let pos = sincos_2d([3, 4], 16, &device)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(pos.len(), 12 * 16);
        assert!(pos.iter().all(|v| v.abs() <= 1.0));
        for a in 0..12 {
            for b in a + 1..12 {
                let d: f32 = (0..16)
                    .map(|k| (pos[a * 16 + k] - pos[b * 16 + k]).abs())
                    .sum();
                assert!(d > 1e-3, "positions {a} and {b} coincide");
            }
        }
        // Position (0, 0): sines 0, cosines 1.
        assert_eq!(&pos[..8], &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn shapes_of_features_and_maps_and_padding_of_odd_sizes() {
        let device = Device::flex();
        let vit = crate::platform::device::seeded(&device, 0, || Vit::new(1, 32, 3, 4, 4, &device));
        let x = ramp([2, 1, 10, 13], &device).div_scalar(100.0);
        let (t, grid) = vit.tokens(x.clone());
        assert_eq!((t.dims(), grid), ([2, 12, 32], [3, 4]));
        assert_eq!(vit.features_at(x.clone(), 2).dims(), [2, 32]);
        let maps = vit.stage_maps(x.clone(), 3);
        assert_eq!(maps.len(), 3);
        assert!(maps.iter().all(|m| m.dims() == [2, 32, 3, 4]));
        // The last map pooled is the last stage's feature vector.
        let pooled = maps[2]
            .clone()
            .reshape([2, 32, 12])
            .mean_dim(2)
            .reshape([2, 32]);
        let f = vit.features_at(x, 3);
        let diff = (pooled - f).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }
}
