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
    /// Shape and statistics of `set` (computed over its first 10,000 images at most; for a
    /// streamed set these are decoded here, and a file that fails to decode is an error naming
    /// it, or replaced as the loader replaces it under `skip_bad`).
    pub fn from_images(set: &ImageSet) -> Result<Self, crate::data::DataError> {
        let (c, hw) = (set.channels, set.height * set.width);
        let n = set.n.min(10_000);
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for i in 0..n {
            let (_, img) = set.image_or_next(i)?;
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
        Ok(Self {
            channels: c,
            height: set.height,
            width: set.width,
            mean,
            std,
        })
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

    /// Normalise one image in place: (x - mean) / std per channel.
    pub fn normalize(&self, img: &mut Img) {
        crate::data::augment::normalize(img, &self.mean, &self.std);
    }
}
