//! What an encoder expects as input: image shape and per-channel normalisation, computed from the
//! training images and saved with every run so transfer feeds the encoder the same way.

use serde::{Deserialize, Serialize};

use crate::data::augment::Img;
use crate::data::ImageSet;

/// A conversion applied to the dataset's images before the encoder sees them (saved in
/// `run.json` as `input_transform`, so transfer converts the same way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputTransform {
    /// The images as they are.
    #[default]
    None,
    /// RGB → CIE L* / 100, one channel (the colorization encoder's input).
    Lightness,
}

impl InputTransform {
    /// Channels the encoder gets from images with `channels` channels.
    pub fn channels(self, channels: usize) -> usize {
        match self {
            Self::None => channels,
            Self::Lightness => 1,
        }
    }

    /// Convert a whole set (u8 pixels; L/100 is stored as round(255·L/100)). A no-op for `None`
    /// and for sets that do not have 3 channels.
    pub fn apply(self, set: &ImageSet) -> Result<ImageSet, crate::data::DataError> {
        if self == Self::None || set.channels != 3 {
            return Ok(set.clone());
        }
        let mut images = Vec::with_capacity(set.n * set.height * set.width);
        for i in 0..set.n {
            let img = Img::from_u8(3, set.height, set.width, &set.image(i)?);
            images.extend(lightness(&img).to_u8());
        }
        Ok(ImageSet::in_memory(
            images,
            set.labels.clone(),
            set.n,
            1,
            set.height,
            set.width,
        ))
    }
}

/// RGB image in [0,1] → its CIE lightness L*/100 in [0,1], one channel.
pub fn lightness(img: &Img) -> Img {
    let lab = crate::data::augment::rgb_to_lab(img);
    let plane = img.h * img.w;
    Img {
        c: 1,
        h: img.h,
        w: img.w,
        data: lab.data[..plane].iter().map(|l| l / 100.0).collect(),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Per-channel mean of the training images, in [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of the training images.
    pub std: Vec<f32>,
    /// Instead of (x − mean) / std: standardise each image on its own, over all its pixels and
    /// channels (std floored at [`PER_IMAGE_STD_FLOOR`]) — what jigsaw does to every tile, so its
    /// encoder is fed the same way at transfer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_image: bool,
}

/// The smallest spread a per-image standardisation divides by (a blank image stays near 0).
pub const PER_IMAGE_STD_FLOOR: f32 = 0.02;

/// Standardise `data` (one image) to zero mean and unit variance, std floored.
pub fn standardize_image(data: &mut [f32]) {
    let n = data.len().max(1) as f32;
    let mean = data.iter().sum::<f32>() / n;
    let var = data.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
    let std = var.sqrt().max(PER_IMAGE_STD_FLOOR);
    data.iter_mut().for_each(|v| *v = (*v - mean) / std);
}

impl InputSpec {
    /// `c` channels of `s`×`s` pixels, every channel normalised by `mean` and `std` (for tests).
    #[cfg(test)]
    pub fn square(c: usize, s: usize, mean: f32, std: f32) -> Self {
        Self {
            channels: c,
            height: s,
            width: s,
            mean: vec![mean; c],
            std: vec![std; c],
            per_image: false,
        }
    }

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
            per_image: false,
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

    /// The same on a tensor: x [b, channels, h, w] in [0,1] → (x - mean) / std per channel.
    pub fn normalize_tensor(&self, x: burn::prelude::Tensor<4>) -> burn::prelude::Tensor<4> {
        use burn::prelude::Tensor;
        let (device, c) = (x.device(), self.channels);
        if self.per_image {
            let [b, c, h, w] = x.dims();
            let flat = x.reshape([b, c * h * w]);
            let mean = flat.clone().mean_dim(1);
            let centred = flat - mean;
            let std = centred
                .clone()
                .powi_scalar(2)
                .mean_dim(1)
                .sqrt()
                .clamp_min(PER_IMAGE_STD_FLOOR);
            return (centred / std).reshape([b, c, h, w]);
        }
        let mean = Tensor::<1>::from_floats(self.mean.as_slice(), &device).reshape([1, c, 1, 1]);
        let std = Tensor::<1>::from_floats(self.std.as_slice(), &device).reshape([1, c, 1, 1]);
        (x - mean) / std
    }

    /// Normalise one image in place: (x - mean) / std per channel, or each image on its own
    /// when `per_image`.
    pub fn normalize(&self, img: &mut Img) {
        if self.per_image {
            standardize_image(&mut img.data);
        } else {
            crate::data::augment::normalize(img, &self.mean, &self.std);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::{Device, Tensor, TensorData};

    #[test]
    fn per_image_standardisation_is_the_same_on_images_and_tensors() {
        let spec = InputSpec {
            channels: 2,
            height: 3,
            width: 4,
            mean: vec![0.5, 0.5],
            std: vec![0.2, 0.2],
            per_image: true,
        };
        let imgs: Vec<Img> = (0..3)
            .map(|k| {
                Img::from_fn(2, 3, 4, |c, y, x| {
                    ((k * 7 + c * 5 + y * 3 + x) % 11) as f32 / 11.0
                })
            })
            .collect();
        // A blank image stays at 0 (the floor), not NaN.
        let mut blank = Img::from_fn(2, 3, 4, |_, _, _| 0.3);
        spec.normalize(&mut blank);
        assert!(
            blank.data.iter().all(|v| v.abs() < 1e-5),
            "{:?}",
            blank.data
        );
        let flat: Vec<f32> = imgs.iter().flat_map(|i| i.data.clone()).collect();
        let d = Device::flex();
        let t = spec.normalize_tensor(Tensor::from_data(TensorData::new(flat, [3, 2, 3, 4]), &d));
        let got = t.into_data().try_into_vec::<f32>().unwrap();
        for (k, img) in imgs.into_iter().enumerate() {
            let mut img = img;
            spec.normalize(&mut img);
            let n = img.data.len() as f32;
            let mean = img.data.iter().sum::<f32>() / n;
            let var = img.data.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
                "{mean} {var}"
            );
            for (a, b) in img.data.iter().zip(&got[k * 24..(k + 1) * 24]) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn run_metadata_written_before_per_image_still_reads() {
        let old = r#"{"channels":1,"height":28,"width":28,"mean":[0.28],"std":[0.35]}"#;
        let spec: InputSpec = serde_json::from_str(old).unwrap();
        assert!(!spec.per_image);
        // And it is not written when off, so older pretext versions read new runs too.
        assert!(!serde_json::to_string(&spec).unwrap().contains("per_image"));
    }
}
