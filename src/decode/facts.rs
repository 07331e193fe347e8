//! What the decoder saw of an image, kept with its record: the basis of
//! the *exact* tier (same file, or same pixels) and of the keep-best rule
//! (size, then compression); and the small thumbnail stored beside it.

use std::io::Cursor;

use image::RgbImage;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// What the decoder saw of an image: the basis of the *exact* tier (same
/// file, or same pixels) and of the keep-best rule (size, compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageFacts {
    /// Pixels across and down, after the EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// Size of the encoded file.
    pub file_bytes: u64,
    /// The first 16 bytes of the SHA-256 of the encoded file.
    pub file_hash: [u8; 16],
    /// The first 16 bytes of the SHA-256 of the decoded pixels (with the
    /// size they were decoded at): equal for a lossless re-save.
    pub pixel_hash: [u8; 16],
}

impl ImageFacts {
    /// Whether two images are the same file or the same pixels.
    pub fn same_image(&self, other: &ImageFacts) -> bool {
        self.file_hash == other.file_hash
            || (self.pixel_hash == other.pixel_hash
                && (self.width, self.height) == (other.width, other.height))
    }

    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// The first 16 bytes of a SHA-256.
fn digest16(parts: &[&[u8]]) -> [u8; 16] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize()[..16]);
    out
}

impl ImageFacts {
    /// The facts of a file of `bytes` shown `width` x `height` (after its
    /// orientation), decoded to `pixels` at some scale.
    pub(super) fn of(bytes: &[u8], width: u32, height: u32, pixels: &RgbImage) -> Self {
        let (dw, dh) = pixels.dimensions();
        ImageFacts {
            width,
            height,
            file_bytes: bytes.len() as u64,
            file_hash: digest16(&[bytes]),
            pixel_hash: digest16(&[&dw.to_le_bytes(), &dh.to_le_bytes(), pixels.as_raw()]),
        }
    }
}

/// JPEG quality of thumbnails: about 3-5 KB at 128 px for a photo.
const THUMBNAIL_QUALITY: u8 = 80;

/// A JPEG thumbnail whose longer side is at most `side` pixels.
pub fn thumbnail(image: &RgbImage, side: u32) -> Result<Vec<u8>> {
    thumbnail_at(image, side, THUMBNAIL_QUALITY)
}

/// [`thumbnail`] at a given JPEG quality (1-100).
pub fn thumbnail_at(image: &RgbImage, side: u32, quality: u8) -> Result<Vec<u8>> {
    let (w, h) = image.dimensions();
    let scale = f64::from(side) / f64::from(w.max(h));
    let small;
    let image = if scale < 1.0 {
        let tw = ((f64::from(w) * scale).round() as u32).max(1);
        let th = ((f64::from(h) * scale).round() as u32).max(1);
        small = box_shrink(image, tw, th);
        &small
    } else {
        image
    };
    let mut out = Vec::with_capacity(8 << 10);
    image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut out), quality)
        .encode_image(image)
        .map_err(|e| Error::Internal(format!("encoding a thumbnail: {e}")))?;
    Ok(out)
}

/// `image` shrunk to `tw` x `th` (each at most the image's own), every
/// output pixel the rounded mean of the block of whole pixels it covers:
/// the box filter of `image::imageops::thumbnail` without its fractional
/// edges, which made it 3.6 % of a bulk insert's CPU (`perf record` on
/// the daemon during an InsertStream of 640 x 480 JPEGs); this is one
/// addition per source byte.
fn box_shrink(image: &RgbImage, tw: u32, th: u32) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (tw, th) = (
        tw.clamp(1, w.max(1) as u32) as usize,
        th.clamp(1, h.max(1) as u32) as usize,
    );
    // Block `i` of `n` over `len` source pixels (never empty).
    let span = |i: usize, n: usize, len: usize| {
        let start = i * len / n;
        start..((i + 1) * len / n).max(start + 1)
    };
    let src = image.as_raw();
    let mut out = Vec::with_capacity(tw * th * 3);
    let mut sums = vec![0u32; w * 3];
    for oy in 0..th {
        let rows = span(oy, th, h);
        sums.iter_mut().for_each(|s| *s = 0);
        for y in rows.clone() {
            for (s, &v) in sums.iter_mut().zip(&src[y * w * 3..(y + 1) * w * 3]) {
                *s += u32::from(v);
            }
        }
        for ox in 0..tw {
            let columns = span(ox, tw, w);
            let count = (rows.len() * columns.len()) as u32;
            for c in 0..3 {
                let total: u32 = columns.clone().map(|x| sums[x * 3 + c]).sum();
                out.push(((total + count / 2) / count) as u8);
            }
        }
    }
    RgbImage::from_raw(tw as u32, th as u32, out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn box_shrink_is_the_mean_of_each_block() {
        let mut rng = StdRng::seed_from_u64(7);
        for (w, h, tw, th) in [
            (640, 480, 128, 96),
            (7, 5, 3, 2),
            (100, 3, 9, 1),
            (5, 5, 5, 5),
        ] {
            let img = RgbImage::from_fn(w, h, |_, _| image::Rgb(rng.random::<[u8; 3]>()));
            let small = box_shrink(&img, tw, th);
            assert_eq!(small.dimensions(), (tw, th));
            for (ox, oy, px) in small.enumerate_pixels() {
                let xs = ox * w / tw..((ox + 1) * w / tw).max(ox * w / tw + 1);
                let ys = oy * h / th..((oy + 1) * h / th).max(oy * h / th + 1);
                for c in 0..3 {
                    let (mut total, mut n) = (0.0f64, 0.0);
                    for y in ys.clone() {
                        for x in xs.clone() {
                            total += f64::from(img.get_pixel(x, y)[c]);
                            n += 1.0;
                        }
                    }
                    let mean = total / n;
                    assert!(
                        (f64::from(px[c]) - mean).abs() <= 0.5,
                        "{w}x{h} -> {tw}x{th} at ({ox}, {oy}) channel {c}: {} vs {mean}",
                        px[c]
                    );
                }
            }
        }
        // A flat image stays flat; the same size is the same image.
        let flat = RgbImage::from_pixel(33, 17, image::Rgb([200, 10, 99]));
        assert!(box_shrink(&flat, 4, 3)
            .pixels()
            .all(|p| p.0 == [200, 10, 99]));
        let img = RgbImage::from_fn(6, 4, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(box_shrink(&img, 6, 4), img);
    }
}
