//! Sample grids: rows of same-sized images, side by side with a 2-pixel gap, written as PNG.

use std::path::Path;

use super::canvas::Canvas;
use crate::data::augment::Img;
use crate::error::Result;

/// Write `rows` (each a list of images of one size; 1- or 3-channel, values in [0,1]) as one PNG,
/// every image scaled by `zoom` (nearest neighbour) so small images stay visible.
pub fn write_grid(path: &Path, rows: &[Vec<Img>], zoom: usize) -> Result<()> {
    let gap = 2;
    let cell_h = rows.iter().flatten().map(|i| i.h).max().unwrap_or(1) * zoom;
    let cell_w = rows.iter().flatten().map(|i| i.w).max().unwrap_or(1) * zoom;
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut canvas = Canvas::filled(
        rows.len() * (cell_h + gap) + gap,
        cols * (cell_w + gap) + gap,
        [255, 255, 255],
    );
    for (r, row) in rows.iter().enumerate() {
        for (k, img) in row.iter().enumerate() {
            canvas.paste(
                img,
                gap + r * (cell_h + gap),
                gap + k * (cell_w + gap),
                zoom,
            );
        }
    }
    canvas.save_png(path)
}

/// Zoom that makes an image side at least ~96 px in a grid.
pub fn zoom_for(side: usize) -> usize {
    (96 / side.max(1)).clamp(1, 8)
}

/// The first `n` images of a [b, c, h, w] tensor.
pub fn tensor_images(t: burn::prelude::Tensor<4>, n: usize) -> Vec<Img> {
    let [b, c, h, w] = t.dims();
    let v = t.into_data().try_to_vec::<f32>().expect("f32 images");
    (0..n.min(b))
        .map(|i| Img {
            c,
            h,
            w,
            data: v[i * c * h * w..(i + 1) * c * h * w].to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_the_expected_size() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("g.png");
        let gray = Img::from_fn(1, 4, 5, |_, y, x| (y + x) as f32 / 8.0);
        let rgb = Img::from_fn(3, 4, 5, |c, _, _| c as f32 / 2.0);
        write_grid(&path, &[vec![gray.clone(), rgb], vec![gray]], 2).unwrap();
        let png = image::open(&path).unwrap();
        assert_eq!((png.width(), png.height()), (2 * 12 + 2, 2 * 10 + 2));
    }
}
