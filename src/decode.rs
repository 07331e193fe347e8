//! Turning request bytes into network input.
//!
//! First stage of every request that carries an image: decode the encoded
//! bytes (JPEG, PNG, WebP, GIF, BMP, TIFF) under a pixel limit, so a
//! decompression bomb is refused before it allocates, then resize the shorter
//! side and centre-crop to the network's square input, scaled to about [-1, 1] in
//! channel-major (CHW) order.

use std::io::Cursor;

use image::{imageops, imageops::FilterType, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Decodes an encoded image into RGB, refusing images over `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::BadImage("the image is empty (0 bytes)".into()));
    }
    let reader = || -> Result<ImageReader<Cursor<&[u8]>>> {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::BadImage(e.to_string()))?;
        if reader.format().is_none() {
            return Err(Error::BadImage(format!(
                "unrecognised format ({} bytes starting {}); expected JPEG, PNG, WebP, GIF, BMP or TIFF",
                bytes.len(),
                hex_prefix(bytes)
            )));
        }
        Ok(reader)
    };
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| Error::BadImage(e.to_string()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(Error::BadImage(format!(
            "the image is {width}x{height} pixels"
        )));
    }
    if pixels > max_pixels {
        return Err(Error::TooLarge(format!(
            "{width}x{height} = {pixels} pixels, over the limit of {max_pixels}"
        )));
    }
    let mut reader = reader()?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && jpeg_is_truncated(bytes) {
        return Err(Error::BadImage(format!(
            "the JPEG is truncated ({} bytes, no end-of-image marker after its scan data)",
            bytes.len()
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels.saturating_mul(16).max(64 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => Error::TooLarge(l.to_string()),
        other => Error::BadImage(other.to_string()),
    })?;
    Ok(image.into_rgb8())
}

/// The JPEG decoder pads a cut-off file with grey instead of failing, which
/// would store a half-blank picture. A complete JPEG ends its last scan with
/// an EOI marker (FF D9); entropy-coded data never contains FF D9 (0xFF is
/// stuffed as FF 00), so the last EOI must come after the last SOS (FF DA).
/// An embedded EXIF thumbnail has its own SOS and EOI, both early in the file.
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Resizes the shorter side to `size / 0.875` (256 for 224), centre-crops a
/// `size` square and returns it as CHW floats `(v - 127) / 128`, the scaling the
/// EfficientNet-Lite weights were trained with.
pub fn to_input(image: &RgbImage, size: u32) -> Vec<f32> {
    let resized = resize_shorter_side(image, (size as f32 / 0.875).round() as u32);
    let (w, h) = resized.dimensions();
    let x0 = (w - size.min(w)) / 2;
    let y0 = (h - size.min(h)) / 2;
    let plane = (size * size) as usize;
    let mut out = vec![0f32; 3 * plane];
    for y in 0..size.min(h) {
        for x in 0..size.min(w) {
            let p = resized.get_pixel(x0 + x, y0 + y).0;
            let i = (y * size + x) as usize;
            for c in 0..3 {
                out[c * plane + i] = (f32::from(p[c]) - 127.0) / 128.0;
            }
        }
    }
    out
}

/// Scales so the shorter side is `target` pixels, keeping the aspect ratio.
/// Large downscales go through a fast area-averaging pass first.
fn resize_shorter_side(image: &RgbImage, target: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let short = w.min(h).max(1);
    let scale = target as f64 / short as f64;
    let scaled = |side: u32| ((side as f64 * scale).round() as u32).max(1);
    let (nw, nh) = if w <= h {
        (target, scaled(h))
    } else {
        (scaled(w), target)
    };
    if short >= 3 * target {
        let (iw, ih) = (nw * 2, nh * 2);
        let rough = imageops::thumbnail(image, iw, ih);
        imageops::resize(&rough, nw, nh, FilterType::Triangle)
    } else {
        imageops::resize(image, nw, nh, FilterType::Triangle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("encode png");
        out
    }

    #[test]
    fn empty_and_garbage_are_bad_images() {
        assert!(matches!(decode(b"", 1000), Err(Error::BadImage(_))));
        assert!(matches!(
            decode(b"definitely not an image", 1000),
            Err(Error::BadImage(_))
        ));
    }

    #[test]
    fn truncated_png_is_a_bad_image() {
        let bytes = png(64, 64);
        assert!(matches!(
            decode(&bytes[..bytes.len() / 2], 1 << 20),
            Err(Error::BadImage(_))
        ));
    }

    #[test]
    fn truncated_jpeg_is_a_bad_image() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 9]));
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .expect("encode jpeg");
        assert_eq!(
            decode(&bytes, 1 << 20).expect("whole").dimensions(),
            (64, 48)
        );
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"trailing bytes after EOI are common");
        assert!(decode(&trailing, 1 << 20).is_ok());
        assert!(matches!(
            decode(&bytes[..bytes.len() - 20], 1 << 20),
            Err(Error::BadImage(m)) if m.contains("truncated")
        ));
    }

    #[test]
    fn pixel_limit_is_enforced_before_decoding() {
        let bytes = png(100, 100);
        assert!(matches!(decode(&bytes, 9_999), Err(Error::TooLarge(_))));
        assert_eq!(
            decode(&bytes, 10_000).expect("fits").dimensions(),
            (100, 100)
        );
    }

    #[test]
    fn input_is_square_and_scaled() {
        for (w, h) in [(640, 480), (300, 900), (20, 10), (224, 224)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([255, 0, 128]));
            let input = to_input(&img, 224);
            assert_eq!(input.len(), 3 * 224 * 224);
            let plane = 224 * 224;
            assert!((input[0] - 1.0).abs() < 0.01);
            assert!((input[plane] + 127.0 / 128.0).abs() < 1e-6);
            assert!((input[2 * plane] - 1.0 / 128.0).abs() < 1e-6);
        }
    }
}
