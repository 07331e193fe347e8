//! The near-duplicate transform plan: every copy `lookalike eval near-dup`
//! queries with, per family, with its parameters in its label.
//!
//! | family | copies |
//! |---|---|
//! | crop | keep 90, 70, 50, 40 and 30 % of each side, random position |
//! | rescale | 50 % and 25 % of each side |
//! | jpeg | re-encoded at quality 30, 15 and 10 |
//! | rotate | 5, 10 and 20 degrees (random sign), cropped to the rotated content |
//! | flip | mirrored left to right |
//! | colour | brightness/contrast, hue rotation, saturation |
//! | greyscale | grey |
//! | text | a caption in a dark band |
//! | combo | crop 70 % + rotate 5 + colour + JPEG quality 30 |
//!
//! Copies are JPEG (quality 92 unless the family sets it). A seed makes the
//! random choices (positions, signs, amounts) reproducible per photo.

use image::RgbImage;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::Result;
use crate::lab::augment;

/// JPEG quality of copies whose family is not about compression.
const QUALITY: u8 = 92;

/// One transformed copy.
#[derive(Debug, Clone)]
pub struct Variant {
    pub family: &'static str,
    /// Family plus parameters, e.g. `crop-30`.
    pub label: String,
    /// The copy, JPEG-encoded.
    pub bytes: Vec<u8>,
}

/// The families, in report order.
pub const FAMILIES: [&str; 9] = [
    "crop",
    "rescale",
    "jpeg",
    "rotate",
    "flip",
    "colour",
    "greyscale",
    "text",
    "combo",
];

/// All transformed copies of `image`, seeded by `seed`.
pub fn variants(image: &RgbImage, seed: u64) -> Result<Vec<Variant>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut push =
        |family: &'static str, label: String, img: &RgbImage, quality: u8| -> Result<()> {
            out.push(Variant {
                family,
                label,
                bytes: augment::encode_jpeg(img, quality)?,
            });
            Ok(())
        };
    for keep in [90u32, 70, 50, 40, 30] {
        let (cx, cy) = (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0));
        let img = augment::crop(image, keep as f32 / 100.0, cx, cy);
        push("crop", format!("crop-{keep}"), &img, QUALITY)?;
    }
    for pct in [50u32, 25] {
        push(
            "rescale",
            format!("rescale-{pct}"),
            &augment::rescale(image, pct as f32 / 100.0),
            QUALITY,
        )?;
    }
    for q in [30u8, 15, 10] {
        push("jpeg", format!("jpeg-q{q}"), image, q)?;
    }
    for deg in [5u32, 10, 20] {
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        push(
            "rotate",
            format!("rotate-{deg}"),
            &augment::rotate(image, sign * deg as f32),
            QUALITY,
        )?;
    }
    push(
        "flip",
        "flip".into(),
        &augment::flip_horizontal(image),
        QUALITY,
    )?;
    let gain = rng.random_range(0.7..1.3);
    let contrast = rng.random_range(0.7..1.3);
    push(
        "colour",
        "colour-brightness".into(),
        &augment::brightness_contrast(image, gain, contrast),
        QUALITY,
    )?;
    let hue = rng.random_range(20.0..40.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    push(
        "colour",
        "colour-hue".into(),
        &augment::hue_saturation(image, hue, 1.0),
        QUALITY,
    )?;
    let sat = if rng.random_bool(0.5) { 0.3 } else { 1.7 };
    push(
        "colour",
        "colour-saturation".into(),
        &augment::hue_saturation(image, 0.0, sat),
        QUALITY,
    )?;
    push(
        "greyscale",
        "greyscale".into(),
        &augment::greyscale(image),
        QUALITY,
    )?;
    push("text", "text".into(), &caption(image, &mut rng), QUALITY)?;
    let combo = augment::crop(
        image,
        0.7,
        rng.random_range(0.0..1.0),
        rng.random_range(0.0..1.0),
    );
    let combo = augment::rotate(&combo, 5.0);
    let combo = augment::brightness_contrast(&combo, 1.1, 0.9);
    push("combo", "combo".into(), &combo, 30)?;
    Ok(out)
}

/// The harder families, in report order (`lookalike eval near-dup
/// --hard`): the copies a single global vector struggles with.
///
/// | family | copies |
/// |---|---|
/// | crop-area | keep 25 % and 15 % of the area, random position |
/// | crop-turn-colour | keep 30 % of the area, rotate 10-15 degrees, hue and brightness shift |
/// | screenshot | on a canvas with a title bar and a caption, the photo 60 % of it |
/// | sticker | an opaque disc or square over 20-30 % of it |
/// | perspective | one side shrunk by 20-30 %, as a photo taken at an angle |
/// | blur-noise | Gaussian blur (sigma 2-3) and noise (sd 10-16) |
/// | rotate-heavy | 30 and 45 degrees, cropped to the rotated content |
/// | combo-hard | crop 50 % of the area + sticker 15 % + screenshot 70 % + JPEG 40 |
pub const HARD_FAMILIES: [&str; 8] = [
    "crop-area",
    "crop-turn-colour",
    "screenshot",
    "sticker",
    "perspective",
    "blur-noise",
    "rotate-heavy",
    "combo-hard",
];

/// Crop keeping `area` of the image at a random position.
fn crop_area(image: &RgbImage, area: f32, rng: &mut StdRng) -> RgbImage {
    let (cx, cy) = (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0));
    augment::crop(image, area.sqrt(), cx, cy)
}

fn sign(rng: &mut StdRng) -> f32 {
    if rng.random_bool(0.5) {
        1.0
    } else {
        -1.0
    }
}

/// A sticker over `area` of the image, at a random place that keeps it
/// inside, round or square, in a saturated colour.
fn random_sticker(image: &RgbImage, area: f32, rng: &mut StdRng) -> RgbImage {
    const COLOURS: [[u8; 3]; 4] = [[220, 30, 40], [250, 200, 20], [30, 110, 220], [20, 20, 20]];
    let colour = COLOURS[rng.random_range(0..COLOURS.len())];
    let (cx, cy) = (rng.random_range(0.3..0.7), rng.random_range(0.3..0.7));
    augment::sticker(image, area, cx, cy, rng.random_bool(0.5), colour)
}

/// All harder copies of `image` ([`HARD_FAMILIES`]), seeded by `seed`.
pub fn hard_variants(image: &RgbImage, seed: u64) -> Result<Vec<Variant>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4a5d_0000);
    let mut out = Vec::new();
    let mut push = |family: &'static str, label: String, img: &RgbImage, quality: u8| {
        augment::encode_jpeg(img, quality).map(|bytes| {
            out.push(Variant {
                family,
                label,
                bytes,
            })
        })
    };
    for area in [25u32, 15] {
        let img = crop_area(image, area as f32 / 100.0, &mut rng);
        push("crop-area", format!("crop-area-{area}"), &img, QUALITY)?;
    }
    let img = crop_area(image, 0.3, &mut rng);
    let img = augment::rotate(&img, sign(&mut rng) * rng.random_range(10.0..15.0));
    let img = augment::hue_saturation(&img, sign(&mut rng) * rng.random_range(15.0..30.0), 1.0);
    let img = augment::brightness_contrast(&img, rng.random_range(0.8..1.2), 1.0);
    push("crop-turn-colour", "crop-turn-colour".into(), &img, QUALITY)?;
    let left = rng.random_range(0.0..1.0);
    let img = augment::screenshot(image, 0.6, left, "MY PHOTOS - GALLERY");
    push("screenshot", "screenshot-60".into(), &img, QUALITY)?;
    let area = rng.random_range(0.2..0.3);
    let img = random_sticker(image, area, &mut rng);
    push(
        "sticker",
        format!("sticker-{:.0}", area * 100.0),
        &img,
        QUALITY,
    )?;
    let edge = rng.random_range(0..4u8);
    let img = augment::perspective(image, edge, rng.random_range(0.2..0.3));
    push("perspective", "perspective".into(), &img, QUALITY)?;
    let img = augment::blur_noise(
        image,
        rng.random_range(2.0..3.0),
        rng.random_range(10.0..16.0),
        rng.random(),
    );
    push("blur-noise", "blur-noise".into(), &img, QUALITY)?;
    for deg in [30u32, 45] {
        let img = augment::rotate(image, sign(&mut rng) * deg as f32);
        push("rotate-heavy", format!("rotate-{deg}"), &img, QUALITY)?;
    }
    let img = crop_area(image, 0.5, &mut rng);
    let img = random_sticker(&img, 0.15, &mut rng);
    let img = augment::screenshot(&img, 0.7, rng.random_range(0.0..1.0), "SHARED WITH YOU");
    push("combo-hard", "combo-hard".into(), &img, 40)?;
    Ok(out)
}

/// A caption across the image, sized to about 60 % of its width.
fn caption(image: &RgbImage, rng: &mut StdRng) -> RgbImage {
    const WORDS: [&str; 6] = [
        "SALE 2026",
        "HOLIDAY",
        "COPYRIGHT",
        "MY PHOTO",
        "LOOK HERE",
        "DAY 42",
    ];
    let text = WORDS[rng.random_range(0..WORDS.len())];
    let (w, h) = image.dimensions();
    let scale = ((w as f32 * 0.6) / (text.len() as f32 * 6.0)).max(1.0) as u32;
    let x = rng.random_range(0..(w / 5).max(1));
    let y = rng.random_range(0..(h.saturating_sub(8 * scale)).max(1));
    augment::overlay_text(image, text, x, y, scale, [255, 255, 255])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_covered_and_seeded() {
        let img = RgbImage::from_fn(120, 90, |x, y| image::Rgb([x as u8, y as u8 * 2, 50]));
        let a = variants(&img, 7).expect("variants");
        let b = variants(&img, 7).expect("variants");
        for family in FAMILIES {
            assert!(a.iter().any(|v| v.family == family), "{family} missing");
        }
        assert_eq!(a.len(), 20);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.bytes == y.bytes),
            "same seed, same copies"
        );
        let hard = hard_variants(&img, 7).expect("hard variants");
        for family in HARD_FAMILIES {
            assert!(hard.iter().any(|v| v.family == family), "{family} missing");
        }
        assert_eq!(hard.len(), 10);
        let again = hard_variants(&img, 7).expect("hard variants");
        assert!(hard.iter().zip(&again).all(|(x, y)| x.bytes == y.bytes));
        let c = variants(&img, 8).expect("variants");
        assert!(
            a.iter().zip(&c).any(|(x, y)| x.bytes != y.bytes),
            "seed changes copies"
        );
    }
}
