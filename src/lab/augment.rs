//! Seeded image transforms: the near-duplicates lookalike must recognise.
//!
//! Used by the tests and by evaluation to make transformed copies of real
//! photos: crops, rescales, JPEG re-encoding, rotation, flips, colour
//! shifts, greyscale, a text caption, and the harder copies a user meets:
//! the photo inside a screenshot, a sticker over it, a perspective view,
//! blur with noise. Each transform is a plain function of the image and its
//! parameters, so a copy can be described and reproduced exactly.

use std::io::Cursor;

use image::{codecs::jpeg::JpegEncoder, imageops, imageops::FilterType, Rgb, RgbImage};

use crate::error::{Error, Result};

/// Keeps a centred window of `fraction` of each side (0 < fraction <= 1).
pub fn crop_center(image: &RgbImage, fraction: f32) -> RgbImage {
    crop(image, fraction, 0.5, 0.5)
}

/// Keeps a window of `fraction` of each side whose centre sits at
/// (`cx`, `cy`), given as fractions of the free margin (0 = left/top edge).
pub fn crop(image: &RgbImage, fraction: f32, cx: f32, cy: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let f = fraction.clamp(0.01, 1.0);
    let (cw, ch) = (
        ((w as f32) * f).round().max(1.0) as u32,
        ((h as f32) * f).round().max(1.0) as u32,
    );
    let x = ((w - cw) as f32 * cx.clamp(0.0, 1.0)) as u32;
    let y = ((h - ch) as f32 * cy.clamp(0.0, 1.0)) as u32;
    imageops::crop_imm(image, x, y, cw, ch).to_image()
}

/// Rescales both sides by `scale`.
pub fn rescale(image: &RgbImage, scale: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let nw = ((w as f32) * scale).round().max(1.0) as u32;
    let nh = ((h as f32) * scale).round().max(1.0) as u32;
    imageops::resize(image, nw, nh, FilterType::Triangle)
}

/// Encodes as JPEG at `quality` (1..=100).
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode_image(image)
        .map_err(|e| Error::Internal(format!("jpeg encode: {e}")))?;
    Ok(out)
}

/// Encodes as PNG (lossless).
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| Error::Internal(format!("png encode: {e}")))?;
    Ok(out)
}

/// Round-trips through JPEG at `quality`, keeping its artefacts.
pub fn jpeg(image: &RgbImage, quality: u8) -> Result<RgbImage> {
    let bytes = encode_jpeg(image, quality)?;
    Ok(image::load_from_memory(&bytes)
        .map_err(|e| Error::Internal(format!("jpeg decode: {e}")))?
        .into_rgb8())
}

/// Rotates by `degrees` about the centre (bilinear), then crops to the
/// largest centred window free of the blank corners, as a photo editor's
/// straighten tool does.
pub fn rotate(image: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let rotated = RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let sx = cos * dx + sin * dy + cx - 0.5;
        let sy = -sin * dx + cos * dy + cy - 0.5;
        bilinear(image, sx, sy)
    });
    let a = degrees.to_radians().abs();
    let (long, short) = (w.max(h) as f32, w.min(h) as f32);
    // Largest axis-aligned rectangle inside the rotated one (same aspect).
    let keep = short / (short * a.cos() + long * a.sin());
    crop_center(&rotated, keep.clamp(0.1, 1.0))
}

fn bilinear(image: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (w, h) = image.dimensions();
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let p = |xx, yy| image.get_pixel(xx, yy).0;
    let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
    Rgb(std::array::from_fn(|i| {
        let top = a[i] as f32 * (1.0 - fx) + b[i] as f32 * fx;
        let bottom = c[i] as f32 * (1.0 - fx) + d[i] as f32 * fx;
        (top * (1.0 - fy) + bottom * fy).round() as u8
    }))
}

/// Mirrors left to right.
pub fn flip_horizontal(image: &RgbImage) -> RgbImage {
    imageops::flip_horizontal(image)
}

/// Scales brightness by `gain` and contrast about mid-grey by `contrast`.
pub fn brightness_contrast(image: &RgbImage, gain: f32, contrast: f32) -> RgbImage {
    map_pixels(image, |p| {
        p.map(|v| ((v as f32 * gain - 128.0) * contrast + 128.0).clamp(0.0, 255.0) as u8)
    })
}

/// Rotates hue by `degrees` and scales saturation by `saturation`.
pub fn hue_saturation(image: &RgbImage, degrees: f32, saturation: f32) -> RgbImage {
    // Rotation about the grey axis in RGB space, then a blend towards grey.
    let (sin, cos) = degrees.to_radians().sin_cos();
    let k = (1.0 - cos) / 3.0;
    let s3 = (1.0f32 / 3.0).sqrt() * sin;
    let m = [
        [cos + k, k - s3, k + s3],
        [k + s3, cos + k, k - s3],
        [k - s3, k + s3, cos + k],
    ];
    map_pixels(image, |p| {
        let v = p.map(f32::from);
        let grey = (v[0] + v[1] + v[2]) / 3.0;
        std::array::from_fn(|i| {
            let rotated = m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2];
            (grey + (rotated - grey) * saturation).clamp(0.0, 255.0) as u8
        })
    })
}

/// Converts to grey (kept as three equal channels).
pub fn greyscale(image: &RgbImage) -> RgbImage {
    map_pixels(image, |p| {
        let [r, g, b] = p.map(f32::from);
        let y = (0.299 * r + 0.587 * g + 0.114 * b).round() as u8;
        [y, y, y]
    })
}

/// Draws `text` (A-Z, 0-9, space and `-`; others as blanks) in a 5x7
/// bitmap font, each font pixel `scale` pixels wide, with its top-left
/// corner at (`x`, `y`), in `colour`, over a darkened band, as a caption or
/// watermark would be. Text running off the image is clipped.
pub fn overlay_text(
    image: &RgbImage,
    text: &str,
    x: u32,
    y: u32,
    scale: u32,
    colour: [u8; 3],
) -> RgbImage {
    let mut out = image.clone();
    let (w, h) = out.dimensions();
    let scale = scale.max(1);
    let band_w = (text.chars().count() as u32 * 6 + 1) * scale;
    for py in y.saturating_sub(scale)..(y + 8 * scale).min(h) {
        for px in x.saturating_sub(scale)..(x + band_w).min(w) {
            let p = out.get_pixel_mut(px, py);
            p.0 = p.0.map(|v| v / 3);
        }
    }
    for (i, ch) in text.chars().enumerate() {
        let glyph = glyph(ch);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                let gx = x + (i as u32 * 6 + col) * scale;
                let gy = y + row as u32 * scale;
                for dy in 0..scale {
                    for dx in 0..scale {
                        if gx + dx < w && gy + dy < h {
                            out.put_pixel(gx + dx, gy + dy, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Rows of a 5x7 glyph, the high 5 bits of each byte left to right.
fn glyph(ch: char) -> [u8; 7] {
    const LETTERS: [[u8; 7]; 26] = [
        [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11], // A
        [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E], // B
        [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E], // C
        [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E], // D
        [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F], // E
        [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10], // F
        [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F], // G
        [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11], // H
        [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E], // I
        [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C], // J
        [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11], // K
        [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F], // L
        [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11], // M
        [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11], // N
        [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], // O
        [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10], // P
        [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D], // Q
        [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11], // R
        [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E], // S
        [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04], // T
        [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], // U
        [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04], // V
        [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A], // W
        [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11], // X
        [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04], // Y
        [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F], // Z
    ];
    const DIGITS: [[u8; 7]; 10] = [
        [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], // 0
        [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E], // 1
        [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], // 2
        [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E], // 3
        [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], // 4
        [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E], // 5
        [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], // 6
        [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08], // 7
        [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], // 8
        [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C], // 9
    ];
    let c = ch.to_ascii_uppercase();
    match c {
        'A'..='Z' => LETTERS[(c as u8 - b'A') as usize],
        '0'..='9' => DIGITS[(c as u8 - b'0') as usize],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        _ => [0; 7],
    }
}

/// The photo as a screenshot shows it: scaled onto a larger light canvas
/// so that it covers `area` of it (0 < area < 1), under a dark title bar
/// with a title, above a caption line, at a seeded-free fixed layout
/// (`left` in 0..1 places it horizontally).
pub fn screenshot(image: &RgbImage, area: f32, left: f32, title: &str) -> RgbImage {
    let (w, h) = image.dimensions();
    // Canvas of the photo's aspect, scaled up so the photo covers `area`.
    let grow = 1.0 / area.clamp(0.05, 1.0).sqrt();
    let (cw, ch) = ((w as f32 * grow) as u32, (h as f32 * grow) as u32);
    let mut canvas = RgbImage::from_pixel(cw, ch, Rgb([236, 236, 240]));
    let bar = (ch / 14).max(8);
    for y in 0..bar {
        for x in 0..cw {
            canvas.put_pixel(x, y, Rgb([45, 48, 56]));
        }
    }
    let scale = (bar / 10).max(1);
    let canvas = overlay_text(
        &canvas,
        title,
        bar / 2,
        (bar - 7 * scale) / 2,
        scale,
        [230; 3],
    );
    let mut canvas = canvas;
    let free_x = cw - w;
    let x0 = (free_x as f32 * left.clamp(0.0, 1.0)) as u32;
    let y0 = bar + (ch - h - bar) / 3;
    imageops::replace(&mut canvas, image, x0 as i64, y0 as i64);
    let text_y = (y0 + h + scale * 3).min(ch.saturating_sub(8 * scale));
    overlay_text(&canvas, "PHOTO 1 OF 12", x0, text_y, scale, [20; 3])
}

/// An opaque sticker (a filled disc or square in `colour`, with a white
/// ring) covering `area` of the image, centred at (`cx`, `cy`) in 0..1.
pub fn sticker(
    image: &RgbImage,
    area: f32,
    cx: f32,
    cy: f32,
    round: bool,
    colour: [u8; 3],
) -> RgbImage {
    let mut out = image.clone();
    let (w, h) = out.dimensions();
    let total = (w * h) as f32 * area.clamp(0.0, 1.0);
    // Side of the square, or radius of the disc, covering `total`.
    let half = if round {
        (total / std::f32::consts::PI).sqrt()
    } else {
        total.sqrt() / 2.0
    };
    let (x, y) = (cx.clamp(0.0, 1.0) * w as f32, cy.clamp(0.0, 1.0) * h as f32);
    let ring = (half * 0.12).max(1.0);
    for py in 0..h {
        for px in 0..w {
            let (dx, dy) = (px as f32 + 0.5 - x, py as f32 + 0.5 - y);
            let d = if round {
                (dx * dx + dy * dy).sqrt()
            } else {
                dx.abs().max(dy.abs())
            };
            if d <= half {
                let c = if d > half - ring { [255; 3] } else { colour };
                out.put_pixel(px, py, Rgb(c));
            }
        }
    }
    out
}

/// A perspective (keystone) view: the side `edge` (0 top, 1 right, 2
/// bottom, 3 left) shrunk to `1 - shrink` of its length about its middle,
/// the opposite side kept, as a photo of a screen or print taken at an
/// angle; the uncovered corners are mid-grey.
pub fn perspective(image: &RgbImage, edge: u8, shrink: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (wf, hf) = (w as f32, h as f32);
    let shrink = shrink.clamp(0.0, 0.9);
    RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = ((x as f32 + 0.5) / wf, (y as f32 + 0.5) / hf);
        // Across the shrunk side `t` runs 0 (shrunk side) to 1 (kept side).
        // The view's width is linear in `t` (its sides are straight), and
        // the homography that keeps rows horizontal maps `t` to `t / width`
        // in the photo; along the row, the photo is squeezed by `width`.
        let (t, s) = match edge % 4 {
            0 => (v, u),
            1 => (1.0 - u, v),
            2 => (1.0 - v, u),
            _ => (u, v),
        };
        let width = 1.0 - shrink * (1.0 - t);
        let s = 0.5 + (s - 0.5) / width;
        let t = t / width;
        if !(0.0..=1.0).contains(&s) || !(0.0..=1.0).contains(&t) {
            return Rgb([128; 3]);
        }
        let (su, sv) = match edge % 4 {
            0 => (s, t),
            1 => (1.0 - t, s),
            2 => (s, 1.0 - t),
            _ => (t, s),
        };
        bilinear(image, su * wf - 0.5, sv * hf - 0.5)
    })
}

/// Gaussian blur of `sigma` pixels, then seeded Gaussian-like noise of
/// standard deviation `noise` (0-255 scale) on every channel.
pub fn blur_noise(image: &RgbImage, sigma: f32, noise: f32, seed: u64) -> RgbImage {
    let mut out = imageops::blur(image, sigma);
    let mut state = seed | 1;
    let mut uniform = move || {
        // xorshift64*: reproducible without a generator crate here.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    for p in out.pixels_mut() {
        for c in p.0.iter_mut() {
            // Sum of 4 uniforms: close to a Gaussian of variance 4/12.
            let g = (uniform() + uniform() + uniform() + uniform() - 2.0) * 3f32.sqrt();
            *c = (*c as f32 + g * noise).clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn map_pixels(image: &RgbImage, f: impl Fn([u8; 3]) -> [u8; 3]) -> RgbImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        p.0 = f(p.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(80, 60, |x, y| Rgb([(x * 3) as u8, (y * 4) as u8, 100]))
    }

    #[test]
    fn geometry() {
        let img = gradient();
        assert_eq!(crop_center(&img, 0.5).dimensions(), (40, 30));
        assert_eq!(rescale(&img, 0.25).dimensions(), (20, 15));
        let r = rotate(&img, 10.0);
        assert!(r.width() < 80 && r.width() > 50, "{:?}", r.dimensions());
        assert_eq!(rotate(&img, 0.0).dimensions(), (80, 60));
        assert_eq!(flip_horizontal(&img).get_pixel(0, 0), img.get_pixel(79, 0));
    }

    #[test]
    fn colour() {
        let img = gradient();
        assert_eq!(hue_saturation(&img, 0.0, 1.0), img);
        let g = greyscale(&img);
        assert!(g.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        assert_eq!(brightness_contrast(&img, 1.0, 1.0), img);
        let j = jpeg(&img, 20).expect("jpeg");
        assert_eq!(j.dimensions(), img.dimensions());
        let t = overlay_text(&img, "HI 2", 2, 2, 1, [255, 255, 255]);
        // 'H' has its left column lit; the band under the text is darkened.
        assert_eq!(t.get_pixel(2, 2).0, [255, 255, 255]);
        assert_eq!(t.get_pixel(3, 2).0, img.get_pixel(3, 2).0.map(|v| v / 3));
        assert_eq!(t.get_pixel(60, 50), img.get_pixel(60, 50));
    }

    #[test]
    fn the_harder_copies_cover_what_they_say() {
        let img = RgbImage::from_fn(400, 300, |x, y| Rgb([(x % 251) as u8, (y % 241) as u8, 7]));
        // The photo covers 60 % of the screenshot, pixel for pixel.
        let shot = screenshot(&img, 0.6, 0.5, "TITLE");
        let share = (400 * 300) as f32 / (shot.width() * shot.height()) as f32;
        assert!((share - 0.6).abs() < 0.02, "{share}");
        let kept = shot.pixels().filter(|p| p[2] == 7 && p[0] != p[1]).count() as f32;
        assert!(kept > 0.9 * (400 * 300) as f32, "{kept}");
        // A sticker covers the stated area (square: exactly; disc: about).
        for round in [false, true] {
            let s = sticker(&img, 0.25, 0.5, 0.5, round, [1, 2, 3]);
            let covered = s.pixels().zip(img.pixels()).filter(|(a, b)| a != b).count() as f32;
            let share = covered / (400 * 300) as f32;
            assert!((share - 0.25).abs() < 0.02, "round {round}: {share}");
        }
        // A perspective view keeps the far side whole and squeezes the near
        // one; with no shrink it is the photo.
        assert_eq!(perspective(&img, 0, 0.0), img);
        let p = perspective(&img, 0, 0.3);
        assert_eq!(p.get_pixel(0, 0).0, [128; 3], "a corner is uncovered");
        assert_eq!(p.get_pixel(0, 299), img.get_pixel(0, 299), "the kept side");
        // Blur and noise change every region but keep the mean.
        let b = blur_noise(&img, 2.0, 12.0, 5);
        let mean = |i: &RgbImage| i.pixels().map(|p| p[0] as f64).sum::<f64>() / (400.0 * 300.0);
        assert!((mean(&b) - mean(&img)).abs() < 2.0);
        assert_ne!(b, img);
        assert_eq!(b, blur_noise(&img, 2.0, 12.0, 5), "seeded");
    }
}
