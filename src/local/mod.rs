//! Local features: the check that tells a heavy crop, a screenshot or a
//! stickered copy of a photo from a photo that merely looks alike.
//!
//! One pooled CNN vector per image describes the whole picture, so a copy
//! that keeps 15 % of it, or shows it small inside a screenshot, drifts
//! away from it. Keypoints do not: [`extract`] finds a few hundred per
//! image (ORB-style, [`orb`]), stored compactly with the record
//! ([`Keypoints::to_bytes`], about 18 KB), and [`verify`] counts the
//! matches one scale-rotation-shift explains. The engine runs it on the
//! best candidates of a query (see `engine::query`), so a copy that the
//! cosine ranks second or tenth comes first once its geometry agrees.

mod nearest;
mod orb;
mod verify;

pub use orb::{analysed, extract, extract_grey, ANALYSED_SIDE, MAX_KEYPOINTS, QUERY_KEYPOINTS};
pub use verify::{
    judged_distance, verify, Evidence, SAME_PICTURE_COVERAGE, SAME_PICTURE_INLIERS,
    SHARED_PART_INLIERS, SHARED_PART_MARGIN,
};

use crate::error::{Error, Result};

/// One keypoint: where it is in the analysed image, its orientation and
/// pyramid scale, and its 256-bit descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Keypoint {
    pub x: f32,
    pub y: f32,
    /// Radians.
    pub angle: f32,
    /// Shrink of the pyramid level it was found on (1 = full size).
    pub scale: f32,
    pub descriptor: [u64; 4],
}

/// An image's keypoints, in the coordinates of the image as analysed
/// (longest side at most [`ANALYSED_SIDE`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Keypoints {
    pub width: u32,
    pub height: u32,
    pub points: Vec<Keypoint>,
}

/// Layout version of [`Keypoints::to_bytes`].
const FORMAT: u8 = 1;
/// Bytes per keypoint: x, y (u16, 1/8 pixel), angle (u8), level scale
/// (u8, 1/16), descriptor (32).
const POINT_BYTES: usize = 2 + 2 + 1 + 1 + 32;

impl Keypoints {
    /// What an image keeps once stored: its strongest [`MAX_KEYPOINTS`]
    /// (points are kept strongest first). A query checks all it found
    /// against these, so that is how two uploaded images are compared too.
    pub fn stored(&self) -> Keypoints {
        Keypoints {
            points: self.stored_points().to_vec(),
            ..*self
        }
    }

    /// The points [`Keypoints::stored`] keeps.
    fn stored_points(&self) -> &[Keypoint] {
        &self.points[..self.points.len().min(MAX_KEYPOINTS)]
    }

    /// Compact encoding of [`Keypoints::stored`], about 38 bytes per
    /// keypoint.
    pub fn to_bytes(&self) -> Vec<u8> {
        let points = self.stored_points();
        let mut out = Vec::with_capacity(7 + points.len() * POINT_BYTES);
        out.push(FORMAT);
        out.extend((self.width.min(u16::MAX as u32) as u16).to_le_bytes());
        out.extend((self.height.min(u16::MAX as u32) as u16).to_le_bytes());
        out.extend((points.len() as u16).to_le_bytes());
        for p in points {
            out.extend(((p.x * 8.0).round().clamp(0.0, 65535.0) as u16).to_le_bytes());
            out.extend(((p.y * 8.0).round().clamp(0.0, 65535.0) as u16).to_le_bytes());
            let turn = p.angle.rem_euclid(std::f32::consts::TAU) / std::f32::consts::TAU;
            out.push(((turn * 256.0).round() as u32 % 256) as u8);
            out.push((p.scale * 16.0).round().clamp(0.0, 255.0) as u8);
            for word in p.descriptor {
                out.extend(word.to_le_bytes());
            }
        }
        out
    }

    /// Reads [`Keypoints::to_bytes`] back.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |what: &str| Error::Storage(format!("stored keypoints: {what}"));
        if bytes.len() < 7 || bytes[0] != FORMAT {
            return Err(bad("unknown format"));
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let count = u16_at(5) as usize;
        if bytes.len() != 7 + count * POINT_BYTES {
            return Err(bad("length does not match the count"));
        }
        let points = bytes[7..]
            .chunks_exact(POINT_BYTES)
            .map(|c| {
                let word = |k: usize| {
                    u64::from_le_bytes(c[6 + 8 * k..14 + 8 * k].try_into().unwrap_or_default())
                };
                Keypoint {
                    x: u16::from_le_bytes([c[0], c[1]]) as f32 / 8.0,
                    y: u16::from_le_bytes([c[2], c[3]]) as f32 / 8.0,
                    angle: c[4] as f32 / 256.0 * std::f32::consts::TAU,
                    scale: c[5] as f32 / 16.0,
                    descriptor: [word(0), word(1), word(2), word(3)],
                }
            })
            .collect();
        Ok(Keypoints {
            width: u16_at(1) as u32,
            height: u16_at(3) as u32,
            points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    fn photo(name: &str) -> RgbImage {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        image::open(path).expect("open photo").into_rgb8()
    }

    /// A copy keeping `side` of each side of `image`, from (x, y) as shares.
    fn crop(image: &RgbImage, side: f32, x: f32, y: f32) -> RgbImage {
        let (w, h) = image.dimensions();
        let (cw, ch) = ((w as f32 * side) as u32, (h as f32 * side) as u32);
        let (x0, y0) = (((w - cw) as f32 * x) as u32, ((h - ch) as f32 * y) as u32);
        image::imageops::crop_imm(image, x0, y0, cw, ch).to_image()
    }

    #[test]
    fn a_heavy_crop_matches_its_photo_and_unrelated_photos_do_not() {
        let cow = extract(&photo("animal-cow.jpg"));
        assert!(cow.points.len() > 100, "{} keypoints", cow.points.len());
        // 16 % of the photo, from its lower right, grown back to full size.
        let part = crop(&photo("animal-cow.jpg"), 0.4, 0.8, 0.7);
        let (w, h) = part.dimensions();
        let part =
            image::imageops::resize(&part, w * 2, h * 2, image::imageops::FilterType::Triangle);
        let copy = verify(&extract(&part), &cow);
        assert!(copy.inliers >= 20, "{copy:?}");
        assert!(copy.coverage >= 0.5, "{copy:?}");
        for other in [
            "bird-duck.jpg",
            "animal-sheep.jpg",
            "monument-taj-mahal.jpg",
        ] {
            let unrelated = verify(&extract(&photo(other)), &cow);
            assert!(unrelated.inliers <= 6, "{other}: {unrelated:?}");
        }
    }

    #[test]
    fn keypoints_read_back_as_written() {
        let found = extract(&photo("bird-duck.jpg"));
        assert!(found.points.len() > MAX_KEYPOINTS, "{}", found.points.len());
        let points = found.stored();
        assert_eq!(points.points[..], found.points[..MAX_KEYPOINTS]);
        let bytes = found.to_bytes();
        assert_eq!(bytes.len(), 7 + points.points.len() * POINT_BYTES);
        let back = Keypoints::from_bytes(&bytes).expect("decode");
        assert_eq!((back.width, back.height), (points.width, points.height));
        for (a, b) in points.points.iter().zip(&back.points) {
            assert_eq!(a.descriptor, b.descriptor);
            assert!((a.x - b.x).abs() <= 1.0 / 16.0 && (a.y - b.y).abs() <= 1.0 / 16.0);
        }
        assert_eq!(
            verify(&points, &back).inliers,
            verify(&points, &points).inliers
        );
        assert!(Keypoints::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(Keypoints::from_bytes(&[9, 0, 0]).is_err());
        let tiny = extract(&RgbImage::new(20, 20));
        assert!(tiny.points.is_empty());
        assert_eq!(
            Keypoints::from_bytes(&tiny.to_bytes()).expect("empty"),
            tiny
        );
    }

    /// Two different photos shown in the same app share its title bar and
    /// caption: that is not one picture, though the frame alone gives
    /// these pairs enough inliers spread widely enough; the photos inside,
    /// which no inlier explains, tell.
    #[cfg(feature = "lab")]
    #[test]
    fn screenshots_of_different_photos_do_not_verify() {
        use crate::lab::augment::{screenshot, sticker};
        let shot = |name| extract(&screenshot(&photo(name), 0.6, 0.3, "MY PHOTOS - GALLERY"));
        for (a, b) in [
            ("bird-duck.jpg", "animal-cat-kitten.jpg"),
            ("tool-screwdriver.jpg", "solar-panel-1.jpg"),
            ("monument-statue-of-liberty-1.jpg", "windmill-post-mill.jpg"),
        ] {
            let e = verify(&shot(a), &shot(b).stored());
            assert!(e.enough_and_spread(), "{a}, {b}: {e:?}");
            assert!(!e.same_picture(), "{a}, {b}: {e:?}");
            // What they share is the frame: the verdict holds their
            // Siamese distance to a shorter threshold.
            assert!(e.shares_only_a_part(), "{a}, {b}: {e:?}");
        }
        // The photo itself inside its screenshot does, and so does the
        // photo under a sticker hiding a quarter of its middle.
        let cow = extract(&photo("animal-cow.jpg"));
        let e = verify(&shot("animal-cow.jpg"), &cow.stored());
        assert!(e.same_picture(), "{e:?}");
        assert!(!e.shares_only_a_part(), "{e:?}");
        for round in [false, true] {
            let covered = sticker(
                &photo("animal-cow.jpg"),
                0.25,
                0.5,
                0.5,
                round,
                [220, 30, 40],
            );
            let e = verify(&extract(&covered), &cow.stored());
            assert!(e.same_picture(), "round {round}: {e:?}");
        }
    }
}
