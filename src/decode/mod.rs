//! Turning request bytes into network input.
//!
//! First stage of every request that carries an image: decode the encoded
//! bytes (JPEG, PNG, WebP, GIF, BMP, TIFF) under a pixel limit, so a
//! decompression bomb is refused before it allocates, then resize to the
//! network's square input (the whole image, or its centre: [`View`]),
//! scaled to about [-1, 1], pixel-major (HWC) order.
//!
//! Large JPEGs take a shortcut: [`jpeg_eighth`] reads them at 1/8 scale
//! from the entropy-coded data when that still leaves enough pixels.

mod budget;
mod facts;
// Public only to the fuzz targets (cargo-fuzz builds with `--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod jpeg_eighth;
#[cfg(not(fuzzing))]
mod jpeg_eighth;
mod resize;

pub use budget::{DecodeBudget, Reservation};
pub use facts::{thumbnail, thumbnail_at, ImageFacts};
pub use resize::{resize_target, to_input, View};

use std::io::Cursor;

use image::{ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Decodes an encoded image into RGB at full size, refusing images over
/// `max_pixels`, with its EXIF orientation applied.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    decode_at_least(bytes, max_pixels, u32::MAX)
}

/// Decodes an encoded image straight into the input of a network that
/// reads `size` x `size` pixels as `view` shows it (see [`to_input`]), at
/// the smallest decode scale that still covers it.
pub fn network_input(bytes: &[u8], max_pixels: u64, size: u32, view: View) -> Result<Vec<f32>> {
    let image = decode_at_least(bytes, max_pixels, resize_target(size))?;
    Ok(to_input(&image, size, view))
}

/// What a request image gives the engine.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The network's input (see [`to_input`]), one per view asked for, in
    /// that order.
    pub inputs: Vec<Vec<f32>>,
    pub facts: ImageFacts,
    /// A JPEG thumbnail, when one was asked for.
    pub thumbnail: Option<Vec<u8>>,
    /// The image as keypoints are found in ([`crate::local::analysed`]),
    /// when asked for: grey, at most 480 px.
    pub for_keypoints: Option<image::GrayImage>,
}

/// [`network_input`], plus the image's facts and, when asked for, its
/// keypoints and (with `thumbnail_side`) a thumbnail that size (all made
/// from the pixels decoded for the network, so they cost no second decode).
pub fn for_network(
    bytes: &[u8],
    max_pixels: u64,
    (size, views): (u32, &[View]),
    thumbnail_side: Option<u32>,
    keypoints: bool,
) -> Result<Decoded> {
    let (image, (width, height)) = decode_oriented(bytes, max_pixels, resize_target(size))?;
    let thumbnail = thumbnail_side
        .map(|side| thumbnail(&image, side))
        .transpose()?;
    Ok(Decoded {
        inputs: views.iter().map(|&v| to_input(&image, size, v)).collect(),
        facts: ImageFacts::of(bytes, width, height, &image),
        thumbnail,
        for_keypoints: keypoints.then(|| crate::local::analysed(&image)),
    })
}

/// What decoding `bytes` for a network of `size` x `size` input will
/// allocate at most, in bytes, read from the header alone (the pixel limit
/// applies, as in [`for_network`]); and the image in words ("a 4000x3000
/// PNG") for messages. For the decode memory budget ([`DecodeBudget`]).
///
/// Deliberately an upper bound, not a guess: what the decoder may allocate
/// (`Probe::decoder_allowance`, which the decode enforces: a GIF frame
/// larger than its declared screen cannot allocate past it), the RGB copy
/// and the rotated copy an EXIF orientation makes (3 bytes per pixel each);
/// a JPEG may keep 16-bit DCT coefficients for every component of every
/// pixel (progressive files) whatever scale it is read at: 6 bytes per
/// pixel more.
pub fn cost(bytes: &[u8], max_pixels: u64) -> Result<(u64, String)> {
    let probe = probe(bytes, max_pixels)?;
    let pixels = u64::from(probe.width) * u64::from(probe.height);
    // The RGB copy and the rotated copy.
    let copies = pixels * 6;
    let coefficients = if probe.format == image::ImageFormat::Jpeg {
        pixels * 6
    } else {
        0
    };
    let format = probe
        .format
        .extensions_str()
        .first()
        .copied()
        .unwrap_or("image");
    let what = format!(
        "a {}x{} {}",
        probe.width,
        probe.height,
        format.to_uppercase()
    );
    Ok((probe.decoder_allowance() + copies + coefficients, what))
}

/// Like [`decode`], but a JPEG may be decoded at a reduced scale (1/2, 1/4
/// or 1/8, done in the DCT: much faster than decoding in full and shrinking)
/// as long as its shorter side stays at least `min_short_side`.
pub fn decode_at_least(bytes: &[u8], max_pixels: u64, min_short_side: u32) -> Result<RgbImage> {
    Ok(decode_oriented(bytes, max_pixels, min_short_side)?.0)
}

/// [`decode_at_least`], plus the image's full size as shown (after its
/// orientation).
fn decode_oriented(
    bytes: &[u8],
    max_pixels: u64,
    min_short_side: u32,
) -> Result<(RgbImage, (u32, u32))> {
    let probe = probe(bytes, max_pixels)?;
    let eighth = (probe.format == image::ImageFormat::Jpeg
        && probe.short_side().div_ceil(8) >= min_short_side)
        .then(|| jpeg_eighth::decode(bytes, max_pixels))
        .flatten();
    let image = match eighth {
        Some(image) => image,
        None => decode_general(bytes, &probe, min_short_side)?,
    };
    let mut image = image::DynamicImage::ImageRgb8(image);
    image.apply_orientation(probe.orientation);
    use image::metadata::Orientation::*;
    let shown = match probe.orientation {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (probe.height, probe.width),
        _ => (probe.width, probe.height),
    };
    Ok((image.into_rgb8(), shown))
}

/// Every format and JPEG layout: JPEGs at 1/2 or 1/4 scale where
/// `min_short_side` allows, the rest in full.
fn decode_general(bytes: &[u8], probe: &Probe, min_short_side: u32) -> Result<RgbImage> {
    if probe.format != image::ImageFormat::Jpeg {
        return decode_full(bytes, probe);
    }
    if jpeg_is_truncated(bytes) {
        return Err(Error::BadImage(format!(
            "the JPEG is truncated ({} bytes, no end-of-image marker after its scan data)",
            bytes.len()
        )));
    }
    let scaled = if probe.short_side() / 2 >= min_short_side {
        decode_jpeg_scaled(bytes, probe, min_short_side)?
    } else {
        None
    };
    match scaled {
        Some(image) => Ok(image),
        None => decode_full(bytes, probe),
    }
}

/// What the headers say, checked against the limits.
struct Probe {
    format: image::ImageFormat,
    width: u32,
    height: u32,
    /// Of the decoder's own colour type.
    bytes_per_pixel: u8,
    orientation: image::metadata::Orientation,
}

impl Probe {
    fn short_side(&self) -> u32 {
        self.width.min(self.height)
    }

    /// What a full decode may allocate: its output in the decoder's own
    /// colour type, as much again for the decoder's working buffers, and
    /// 1 MiB. Enforced as the `image` crate's `max_alloc`.
    fn decoder_allowance(&self) -> u64 {
        let pixels = u64::from(self.width) * u64::from(self.height);
        pixels * u64::from(self.bytes_per_pixel) * 2 + (1 << 20)
    }
}

fn probe(bytes: &[u8], max_pixels: u64) -> Result<Probe> {
    if bytes.is_empty() {
        return Err(Error::BadImage("the image is empty (0 bytes)".into()));
    }
    let reader = reader(bytes)?;
    let format = reader.format().ok_or_else(|| {
        Error::BadImage(format!(
            "unrecognised format ({} bytes starting {}); expected JPEG, PNG, WebP, GIF, BMP or TIFF",
            bytes.len(),
            hex_prefix(bytes)
        ))
    })?;
    let mut decoder = reader.into_decoder().map_err(bad_image)?;
    let (width, height) = decoder.dimensions();
    let bytes_per_pixel = decoder.color_type().bytes_per_pixel();
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
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
    Ok(Probe {
        format,
        width,
        height,
        bytes_per_pixel,
        orientation,
    })
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::BadImage(e.to_string()))
}

fn bad_image(e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::TooLarge(l.to_string()),
        other => Error::BadImage(other.to_string()),
    }
}

/// Full decode with the `image` crate, allocation bounded by the probe.
fn decode_full(bytes: &[u8], probe: &Probe) -> Result<RgbImage> {
    let mut reader = reader(bytes)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(probe.width);
    limits.max_image_height = Some(probe.height);
    limits.max_alloc = Some(probe.decoder_allowance());
    reader.limits(limits);
    Ok(reader.decode().map_err(bad_image)?.into_rgb8())
}

/// DCT-scaled JPEG decode; `None` for layouts it does not handle (CMYK,
/// 16-bit), which then take the full path.
fn decode_jpeg_scaled(
    bytes: &[u8],
    probe: &Probe,
    min_short_side: u32,
) -> Result<Option<RgbImage>> {
    let short = probe.width.min(probe.height);
    let want = |side: u32| (u64::from(side) * u64::from(min_short_side)).div_ceil(u64::from(short));
    let (w, h) = (want(probe.width), want(probe.height));
    let (Ok(w), Ok(h)) = (u16::try_from(w), u16::try_from(h)) else {
        return Ok(None);
    };
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder
        .scale(w, h)
        .map_err(|e| Error::BadImage(e.to_string()))?;
    let pixels = decoder
        .decode()
        .map_err(|e| Error::BadImage(e.to_string()))?;
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let rgb = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => pixels,
        jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => return Ok(None),
    };
    Ok(RgbImage::from_raw(w, h, rgb))
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
    fn facts_tell_a_lossless_resave_and_a_thumbnail_is_small() {
        let bytes = png(300, 200);
        let decoded =
            for_network(&bytes, 1 << 20, (224, &[View::Whole]), Some(128), true).expect("decode");
        let f = decoded.facts;
        assert_eq!(
            (f.width, f.height, f.file_bytes),
            (300, 200, bytes.len() as u64)
        );
        // The same pixels as BMP: another file, the same image.
        let img = decode(&bytes, 1 << 20).expect("decode");
        let mut bmp = Vec::new();
        img.write_to(&mut Cursor::new(&mut bmp), image::ImageFormat::Bmp)
            .expect("encode bmp");
        let g = for_network(&bmp, 1 << 20, (224, &[]), None, false)
            .expect("decode")
            .facts;
        assert_ne!(f.file_hash, g.file_hash);
        assert!(f.same_image(&g));
        let other = for_network(&png(300, 201), 1 << 20, (224, &[]), None, false).expect("decode");
        assert!(!f.same_image(&other.facts));
        let thumb = decoded.thumbnail.expect("thumbnail");
        let t = image::load_from_memory(&thumb).expect("thumbnail decodes");
        assert_eq!((t.width(), t.height()), (128, 85));
    }

    #[test]
    fn input_is_square_and_scaled() {
        for (w, h) in [(640, 480), (300, 900), (20, 10), (224, 224)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([255, 0, 128]));
            let input = to_input(&img, 224, View::Whole);
            assert_eq!(input.len(), 3 * 224 * 224);
            for px in [0, 224 * 224 - 1, 224 * 112 + 17] {
                assert!((input[3 * px] - 1.0).abs() < 0.01);
                assert!((input[3 * px + 1] + 127.0 / 128.0).abs() < 1e-6);
                assert!((input[3 * px + 2] - 1.0 / 128.0).abs() < 1e-6);
            }
        }
    }
}
