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
        small = image::imageops::thumbnail(image, tw, th);
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
