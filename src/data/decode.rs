//! Decoding shared by the image readers (folders, `wds:` shards, `parquet:` tables): an image
//! becomes RGB (or one gray channel when every image of the set is grayscale), its shorter side
//! resized to the set's size (Triangle filter) and centre-cropped to a square, CHW bytes.
//!
//! Bytes in memory (a shard's member, a table's cell) and a file on disk give the same pixels:
//! both go through [`finish`].

use std::io::Cursor;

use image::imageops::FilterType;
use image::{ColorType, DynamicImage, ImageDecoder, RgbImage};

/// Whether a colour type is grayscale (decides the channel count of a set).
pub fn is_gray(c: ColorType) -> bool {
    matches!(
        c,
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16
    )
}

/// A decoded image to RGB, resized (shorter side) and centre-cropped to `size`x`size`, and
/// whether it was grayscale. An image without pixels is an error (`expected … found …`).
pub fn finish(img: DynamicImage, size: usize) -> Result<(RgbImage, bool), String> {
    if img.width() == 0 || img.height() == 0 {
        return Err(format!(
            "expected an image with pixels, found {}x{}",
            img.width(),
            img.height()
        ));
    }
    let gray = is_gray(img.color());
    let rgb = img.to_rgb8();
    Ok((resize_crop(&rgb, size as u32), gray))
}

/// What a decoder may allocate and how large an image may say it is: a few bytes that claim a
/// 1 × 200-million-pixel PNG (found by the parquet_table fuzz target) are an error, not gigabytes.
pub fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// The longest side an image file may have (pixels).
pub const MAX_SIDE: u32 = 16_384;
/// What decoding one image may allocate.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// The format of encoded image bytes, from their magic number: PNG, JPEG or WebP.
fn guessed(bytes: &[u8]) -> Result<image::ImageReader<Cursor<&[u8]>>, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    reader.limits(limits());
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) => {
            Ok(reader)
        }
        Some(other) => Err(format!(
            "expected a PNG, JPEG or WebP image, found {other:?} data"
        )),
        None => Err(format!(
            "expected a PNG, JPEG or WebP image, found {}",
            describe(bytes)
        )),
    }
}

/// What unknown bytes look like, for an error message: their length and first bytes.
pub fn describe(bytes: &[u8]) -> String {
    let head: String = bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    if bytes.is_empty() {
        "0 bytes".into()
    } else {
        format!("{} bytes starting {head}", bytes.len())
    }
}

/// Decode encoded image bytes (PNG, JPEG, WebP) like a folder's file: see [`finish`].
pub fn decode_bytes(bytes: &[u8], size: usize) -> Result<(RgbImage, bool), String> {
    let img = guessed(bytes)?.decode().map_err(|e| e.to_string())?;
    finish(img, size)
}

/// Read only the header of encoded image bytes: a supported format with pixels? Returns
/// whether it is grayscale. `bytes` may be a prefix of the image.
pub fn header_bytes(bytes: &[u8]) -> Result<bool, String> {
    let decoder = guessed(bytes)?.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("expected an image with pixels, found {w}x{h}"));
    }
    Ok(is_gray(decoder.color_type()))
}

/// HWC interleaved RGB -> CHW planes, keeping the first `channels` (1: the gray value).
pub fn to_chw(img: &RgbImage, channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(channels * img.len() / 3);
    for c in 0..channels {
        out.extend(img.pixels().map(|p| p.0[c]));
    }
    out
}

/// Shorter side to `size`, then the centre `size`x`size` square.
pub fn resize_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (
            size,
            ((h as f64 * size as f64 / w as f64).round() as u32).max(size),
        )
    } else {
        (
            ((w as f64 * size as f64 / h as f64).round() as u32).max(size),
            size,
        )
    };
    let resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let (x, y) = ((nw - size) / 2, (nh - size) / 2);
    image::imageops::crop_imm(&resized, x, y, size, size).to_image()
}
