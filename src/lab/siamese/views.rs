//! Random views of a photo for Siamese training: what a copy of a photo
//! goes through on its way back to us.
//!
//! Each transform is applied with its own probability, in the order an
//! editor would: crop (down to 30 % of each side), rotation (up to 20
//! degrees, straightened), flip, brightness / contrast, hue / saturation,
//! greyscale, a caption or watermark, rescale (down to 25 %), and a JPEG
//! re-encode (quality 10 to 95). Every draw comes from the caller's seeded
//! generator, so a training run is reproducible.

use image::RgbImage;
use rand::{rngs::StdRng, Rng};

use crate::error::Result;
use crate::lab::augment;

/// Shorter side a view is brought down to after its crop.
const WORKING_SHORT_SIDE: u32 = 320;
/// Words a caption is drawn from.
const WORDS: [&str; 8] = [
    "SALE",
    "2026",
    "HOLIDAY",
    "COPYRIGHT",
    "MY PHOTO",
    "LOOK",
    "DAY 7",
    "NEW",
];

/// One random view of `image`.
pub fn random_view(image: &RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
    let mut img = image.clone();
    if rng.random_bool(0.6) {
        let keep = rng.random_range(0.3..1.0);
        img = augment::crop(
            &img,
            keep,
            rng.random_range(0.0..1.0),
            rng.random_range(0.0..1.0),
        );
    }
    // The network sees a 256 px shorter side: the rest of the chain need
    // not work on more than this.
    let short = img.width().min(img.height());
    if short > WORKING_SHORT_SIDE {
        let scale = WORKING_SHORT_SIDE as f32 / short as f32;
        let (w, h) = (img.width() as f32 * scale, img.height() as f32 * scale);
        img = image::imageops::thumbnail(&img, w.round() as u32, h.round() as u32);
    }
    if rng.random_bool(0.3) {
        img = augment::rotate(&img, rng.random_range(-20.0..20.0));
    }
    if rng.random_bool(0.5) {
        img = augment::flip_horizontal(&img);
    }
    if rng.random_bool(0.5) {
        let gain = rng.random_range(0.6..1.4);
        let contrast = rng.random_range(0.6..1.4);
        img = augment::brightness_contrast(&img, gain, contrast);
    }
    if rng.random_bool(0.4) {
        let hue = rng.random_range(-45.0..45.0);
        let saturation = rng.random_range(0.2..1.8);
        img = augment::hue_saturation(&img, hue, saturation);
    }
    if rng.random_bool(0.1) {
        img = augment::greyscale(&img);
    }
    if rng.random_bool(0.25) {
        img = caption(&img, rng);
    }
    if rng.random_bool(0.3) {
        img = augment::rescale(&img, rng.random_range(0.25..0.8));
    }
    if rng.random_bool(0.5) {
        img = augment::jpeg(&img, rng.random_range(10..=95))?;
    }
    Ok(img)
}

/// A caption or watermark of random words, size, place and colour.
fn caption(image: &RgbImage, rng: &mut StdRng) -> RgbImage {
    let text = WORDS[rng.random_range(0..WORDS.len())];
    let (w, h) = image.dimensions();
    let width = w as f32 * rng.random_range(0.2..0.7);
    let scale = (width / (text.len() as f32 * 6.0)).max(1.0) as u32;
    let x = rng.random_range(0..(w / 3).max(1));
    let y = rng.random_range(0..h.saturating_sub(8 * scale).max(1));
    let colour = if rng.random_bool(0.5) {
        [255, 255, 255]
    } else {
        [rng.random(), rng.random(), rng.random()]
    };
    augment::overlay_text(image, text, x, y, scale, colour)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn views_are_seeded() {
        let img = RgbImage::from_fn(200, 150, |x, y| image::Rgb([x as u8, y as u8, 90]));
        let a: Vec<RgbImage> = {
            let mut rng = StdRng::seed_from_u64(5);
            (0..6)
                .map(|_| random_view(&img, &mut rng).expect("view"))
                .collect()
        };
        let mut rng = StdRng::seed_from_u64(5);
        for want in &a {
            assert_eq!(&random_view(&img, &mut rng).expect("view"), want);
        }
        assert!(a.iter().any(|v| v != &img), "views change the photo");
    }
}
