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
        let c = variants(&img, 8).expect("variants");
        assert!(
            a.iter().zip(&c).any(|(x, y)| x.bytes != y.bytes),
            "seed changes copies"
        );
    }
}
