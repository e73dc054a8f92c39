//! What an encoder expects as input: image shape and per-channel normalisation, computed from the
//! training images and saved with every run so transfer feeds the encoder the same way.

use serde::{Deserialize, Serialize};

use crate::data::augment::Img;
use crate::data::ImageSet;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Per-channel mean of the training images, in [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of the training images.
    pub std: Vec<f32>,
}

impl InputSpec {
    /// Shape and statistics of `set` (computed over at most 10,000 images).
    pub fn from_images(set: &ImageSet) -> Self {
        let (c, hw) = (set.channels, set.height * set.width);
        let n = set.n.min(10_000);
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for i in 0..n {
            let img = set.image(i);
            for ch in 0..c {
                for &p in &img[ch * hw..(ch + 1) * hw] {
                    let v = p as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let count = (n * hw).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, &m)| ((s / count - (m as f64).powi(2)).max(1e-8).sqrt() as f32).max(1e-3))
            .collect();
        Self {
            channels: c,
            height: set.height,
            width: set.width,
            mean,
            std,
        }
    }

    /// Does `set` have the shape this encoder was trained on?
    pub fn check(&self, set: &ImageSet, what: &str) -> crate::error::Result<()> {
        if (set.channels, set.height, set.width) != (self.channels, self.height, self.width) {
            return Err(crate::error::Error::Usage(format!(
                "{what} has images of {}×{}×{} (channels×height×width) but the encoder was trained on {}×{}×{}",
                set.channels, set.height, set.width, self.channels, self.height, self.width
            )));
        }
        Ok(())
    }

    /// The same on a tensor: x [b, channels, h, w] in [0,1] → (x - mean) / std per channel.
    pub fn normalize_tensor(&self, x: burn::prelude::Tensor<4>) -> burn::prelude::Tensor<4> {
        use burn::prelude::Tensor;
        let (device, c) = (x.device(), self.channels);
        let mean = Tensor::<1>::from_floats(self.mean.as_slice(), &device).reshape([1, c, 1, 1]);
        let std = Tensor::<1>::from_floats(self.std.as_slice(), &device).reshape([1, c, 1, 1]);
        (x - mean) / std
    }

    /// Normalise one image in place: (x - mean) / std per channel.
    pub fn normalize(&self, img: &mut Img) {
        crate::data::augment::normalize(img, &self.mean, &self.std);
    }
}
