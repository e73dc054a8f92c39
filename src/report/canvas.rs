//! A canvas of small images (tiles, patches, reconstructions) pasted at chosen positions and
//! saved as a PNG: what the sample pictures of every task are drawn on.

use std::path::Path;

use crate::data::augment::Img;
use crate::error::{Error, Result};

/// An RGB canvas.
pub struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with a neutral grey.
    pub fn new(h: usize, w: usize) -> Self {
        Self::filled(h, w, [96, 96, 96])
    }

    pub fn filled(h: usize, w: usize, rgb: [u8; 3]) -> Self {
        Self {
            w,
            h,
            rgb: rgb.repeat(h * w),
        }
    }

    /// Paste `img` (1 or 3 channels, values in [0,1]) with its top-left corner at (y, x), each
    /// pixel drawn as a `zoom`×`zoom` block. Parts outside the canvas are cut off.
    pub fn paste(&mut self, img: &Img, y: usize, x: usize, zoom: usize) {
        for yy in 0..img.h * zoom {
            for xx in 0..img.w * zoom {
                let (cy, cx) = (y + yy, x + xx);
                if cy >= self.h || cx >= self.w {
                    continue;
                }
                for ch in 0..3 {
                    let v = img.get(ch.min(img.c - 1), yy / zoom, xx / zoom);
                    self.rgb[(cy * self.w + cx) * 3 + ch] =
                        (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }

    /// Fill a rectangle with one colour (frames, markers).
    pub fn fill(&mut self, y: usize, x: usize, h: usize, w: usize, rgb: [u8; 3]) {
        for cy in y..(y + h).min(self.h) {
            for cx in x..(x + w).min(self.w) {
                self.rgb[(cy * self.w + cx) * 3..][..3].copy_from_slice(&rgb);
            }
        }
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        let img = image::RgbImage::from_raw(self.w as u32, self.h as u32, self.rgb.clone())
            .expect("buffer matches the canvas size");
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Usage(format!("encoding {}: {e}", path.display())))?;
        crate::platform::fsio::write_atomic(path, &bytes)
    }

    /// The PNG at `path`, and beside it (`.json`) what the picture shows and the answer of
    /// each row, for a reader who wants the numbers behind it.
    pub fn save_png_with_note(
        &self,
        path: &Path,
        picture: &str,
        rows: Vec<serde_json::Value>,
    ) -> Result<()> {
        self.save_png(path)?;
        let note = serde_json::json!({ "picture": picture, "rows": rows });
        crate::platform::fsio::write_atomic(
            &path.with_extension("json"),
            &serde_json::to_vec_pretty(&note).expect("json"),
        )
    }
}

/// One image of a batch (CHW floats, normalised however the task did it) stretched to [0,1] for
/// display: each channel mapped by the min and max over the whole image.
pub fn for_display(data: &[f32], c: usize, h: usize, w: usize) -> Img {
    let lo = data.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = (hi - lo).max(1e-6);
    Img {
        c,
        h,
        w,
        data: data.iter().map(|v| (v - lo) / span).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paste_zooms_and_clips_and_png_decodes() {
        let mut c = Canvas::new(10, 12);
        let img = Img::from_fn(1, 2, 2, |_, y, x| (y * 2 + x) as f32 / 3.0);
        c.paste(&img, 8, 10, 2); // partly outside: clipped
        c.paste(&img, 0, 0, 2);
        assert_eq!(&c.rgb[..3], &[0, 0, 0]);
        assert_eq!(c.rgb[(3 * 12 + 3) * 3], 255); // (3,3) is pixel (1,1) zoomed ×2
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        c.save_png(&path).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!((back.width(), back.height()), (12, 10));
        assert_eq!(back.into_raw(), c.rgb);
    }

    #[test]
    fn display_stretches_to_unit_range() {
        let img = for_display(&[-2.0, 0.0, 2.0], 1, 1, 3);
        assert_eq!(img.data, vec![0.0, 0.5, 1.0]);
    }
}
