//! How well a duplicate verdict works, measured on photos never trained on.
//!
//! Positive pairs are each validation photo against each of its seeded
//! transformed copies: the 20 of `lookalike eval near-dup` and, when asked
//! (`lookalike eval siamese` does; training calibrates without them, as the
//! shipped model was), the 10 of its `--hard` plan (heavy crops,
//! screenshots, stickers...; see [`crate::lab::eval::plan`]); negative pairs are every two different
//! validation photos, split into same-class ("two fish": similar, not
//! duplicate) and other-class pairs, and with the harder copies also every
//! two shown in one app's frame (the screenshot family's title bar and
//! caption: alike around the photos, which differ). Seven scores are compared on the same
//! pairs: the Siamese distance, the CNN cosine, a 64-bit dHash Hamming
//! distance, the keypoint check's inliers (see [`crate::local`]), the
//! daemon's verdict (Siamese distance, or the keypoints when they show one
//! picture), the regional cosine (the copy against the best of the photo's
//! parts or the whole, [`crate::embed::regions`]), and that or the keypoints. For each: ROC AUC, and the threshold that keeps precision at
//! the target (calibration) with precision and recall there, overall and
//! per transform family. The threshold the model ships with is the
//! Siamese one calibrated on all validation pairs; a two-fold check
//! (calibrate on half the photos, measure on the other half) shows how
//! well it carries to photos it was not calibrated on, and the Siamese
//! distance and the verdict are also counted at the shipped threshold.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use image::{imageops, RgbImage};
use rayon::prelude::*;
use serde::Serialize;

use super::photos::Photo;
use crate::decode;
use crate::embed::regions::{regional_cosine, regional_vectors};
use crate::embed::Embedder;
use crate::error::Result;
use crate::lab::augment;
use crate::lab::eval::plan;
use crate::local::{self, Evidence, Keypoints};
use crate::siamese::{distance, Siamese};
use crate::vector::dot;

/// Seed of the transformed copies (per photo: this plus its index).
const SEED: u64 = 2026;
/// Label of negative pairs of one class / of two classes.
pub const SAME_CLASS: &str = "negative, same class";
pub const OTHER_CLASS: &str = "negative, other class";
/// Label of negative pairs of two photos in one app's frame.
pub const ONE_FRAME: &str = "negative, one app frame";

/// One image's descriptors.
struct Described {
    features: Vec<f32>,
    siamese: Vec<f32>,
    dhash: u64,
    keypoints: Keypoints,
    /// Its head map pooled over parts ([`crate::embed::regions`]).
    regions: Vec<Vec<f32>>,
}

/// One scored pair. Scores are "higher = more alike".
#[derive(Debug, Clone)]
pub struct Pair {
    pub positive: bool,
    /// Transform family for positives, [`SAME_CLASS`] / [`OTHER_CLASS`] /
    /// [`ONE_FRAME`] else.
    pub family: String,
    /// The validation photos involved (for the two-fold check).
    pub photos: (usize, usize),
    /// One per [`METHODS`].
    pub scores: [f32; 7],
    /// The keypoint check behind the inliers' and the verdict's scores.
    pub evidence: Evidence,
}

/// Names of the scores in [`Pair::scores`].
pub const METHODS: [&str; 7] = [
    "Siamese distance",
    "CNN cosine",
    "dHash (64-bit)",
    "Keypoint inliers",
    "Verdict: Siamese or keypoints",
    "Regional cosine",
    "Regional cosine or keypoints",
];
/// Index of the Siamese distance and of the daemon's verdict in [`METHODS`].
pub const SIAMESE: usize = 0;
pub const VERDICT: usize = 4;
/// Index of the regional cosine, and of it or the keypoints, in [`METHODS`].
pub const REGIONAL: usize = 5;
pub const REGIONAL_VERDICT: usize = 6;
/// What the verdict's score adds for keypoints that show one picture: more
/// than any Siamese distance (0..2) or cosine, so at a threshold `-t` the
/// score says duplicate exactly when the daemon does (distance <= t, or
/// keypoints), and the regional one when its cosine or the keypoints do.
const SAME_PICTURE_SCORE: f32 = 4.0;

/// Scores every validation pair; `hard`: the harder copies too.
pub fn score_pairs(
    embedder: &Embedder,
    siamese: &Siamese,
    photos: &[Photo],
    hard: bool,
) -> Result<Vec<Pair>> {
    let originals = describe(
        embedder,
        siamese,
        photos.iter().map(|p| p.image.clone()).collect(),
    )?;
    let mut pairs = Vec::new();
    for (i, photo) in photos.iter().enumerate() {
        let mut copies = plan::variants(&photo.image, SEED + i as u64)?;
        if hard {
            copies.extend(plan::hard_variants(&photo.image, SEED + i as u64)?);
        }
        let images = copies
            .iter()
            .map(|v| decode::decode(&v.bytes, 1 << 28))
            .collect::<Result<Vec<_>>>()?;
        let described = describe(embedder, siamese, images)?;
        for (copy, d) in copies.iter().zip(&described) {
            pairs.push(pair(
                true,
                copy.family.to_string(),
                (i, i),
                &originals[i],
                d,
            ));
        }
    }
    let framed = if hard {
        let shots = photos
            .par_iter()
            .map(|p| {
                let shot = augment::screenshot(&p.image, 0.6, 0.3, "MY PHOTOS - GALLERY");
                decode::decode(&augment::encode_jpeg(&shot, 90)?, 1 << 28)
            })
            .collect::<Result<Vec<_>>>()?;
        describe(embedder, siamese, shots)?
    } else {
        Vec::new()
    };
    for i in 0..photos.len() {
        for j in i + 1..photos.len() {
            let family = if photos[i].class == photos[j].class {
                SAME_CLASS
            } else {
                OTHER_CLASS
            };
            pairs.push(pair(
                false,
                family.into(),
                (i, j),
                &originals[i],
                &originals[j],
            ));
            if hard {
                pairs.push(pair(
                    false,
                    ONE_FRAME.into(),
                    (i, j),
                    &framed[i],
                    &framed[j],
                ));
            }
        }
    }
    Ok(pairs)
}

fn pair(
    positive: bool,
    family: String,
    photos: (usize, usize),
    a: &Described,
    b: &Described,
) -> Pair {
    let d = distance(&a.siamese, &b.siamese);
    // As the daemon checks a query (b) against a stored image (a).
    let evidence = local::verify(&b.keypoints, &a.keypoints.stored());
    // Inliers count as far as their coverage reaches the rule's.
    let spread = (evidence.coverage / local::SAME_PICTURE_COVERAGE).min(1.0);
    let regional = regional_cosine(&b.features, &a.features, &a.regions);
    Pair {
        positive,
        family,
        photos,
        scores: [
            -d,
            dot(&a.features, &b.features),
            -((a.dhash ^ b.dhash).count_ones() as f32),
            evidence.inliers as f32 * spread,
            verdict_score(d, &evidence),
            regional,
            same_picture_score(&evidence) + regional,
        ],
        evidence,
    }
}

/// The daemon's verdict as a score: at or above `-t` exactly when the
/// keypoints show one picture or the Siamese distance is at most `t`
/// (at most `t` less the margin when they show the pair shares only a
/// part: [`local::judged_distance`]).
fn verdict_score(distance: f32, evidence: &Evidence) -> f32 {
    same_picture_score(evidence) - local::judged_distance(distance, Some(evidence))
}

/// [`SAME_PICTURE_SCORE`] when the keypoints show one picture, else 0.
fn same_picture_score(evidence: &Evidence) -> f32 {
    if evidence.same_picture() {
        SAME_PICTURE_SCORE
    } else {
        0.0
    }
}

fn describe(
    embedder: &Embedder,
    siamese: &Siamese,
    images: Vec<RgbImage>,
) -> Result<Vec<Described>> {
    let inputs: Vec<Vec<f32>> = images.par_iter().map(|i| embedder.input(i)).collect();
    let hashes: Vec<u64> = images.par_iter().map(dhash).collect();
    let keypoints: Vec<Keypoints> = images.par_iter().map(local::extract).collect();
    let embedded = embedder.embed_inputs_with_taps(&inputs);
    let taps: Vec<&[f32]> = embedded.iter().map(|e| e.tap.as_slice()).collect();
    let regions: Vec<Vec<Vec<f32>>> = taps
        .iter()
        .map(|map| regional_vectors(map, embedder.tap_shape()))
        .collect();
    let mut vectors = Vec::with_capacity(taps.len());
    for chunk in taps.chunks(32) {
        vectors.extend(siamese.embed_taps(chunk, embedder.tap_shape())?);
    }
    Ok(embedded
        .into_iter()
        .zip(vectors)
        .zip(hashes)
        .zip(keypoints)
        .zip(regions)
        .map(|((((e, s), h), k), r)| Described {
            features: e.features,
            siamese: s,
            dhash: h,
            keypoints: k,
            regions: r,
        })
        .collect())
}

/// The difference hash: a 9x8 greyscale thumbnail, one bit per pair of
/// horizontal neighbours (is the left one brighter?).
pub fn dhash(image: &RgbImage) -> u64 {
    let grey = image::DynamicImage::ImageRgb8(image.clone()).into_luma8();
    let small = imageops::resize(&grey, 9, 8, imageops::FilterType::Triangle);
    let mut bits = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let brighter = small.get_pixel(x, y)[0] > small.get_pixel(x + 1, y)[0];
            bits = (bits << 1) | u64::from(brighter);
        }
    }
    bits
}

/// ROC AUC of `scores` (higher = positive): the chance that a random
/// positive outscores a random negative, ties counting half.
pub fn roc_auc(pairs: &[&Pair], method: usize) -> f64 {
    let mut scored: Vec<(f32, bool)> = pairs
        .iter()
        .map(|p| (p.scores[method], p.positive))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut positives) = (0f64, 0f64);
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let mid_rank = (i + j + 1) as f64 / 2.0;
        let tied_pos = scored[i..j].iter().filter(|s| s.1).count() as f64;
        rank_sum += mid_rank * tied_pos;
        positives += tied_pos;
        i = j;
    }
    let negatives = scored.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// The threshold with the highest recall whose precision is at least
/// `target` (a pair is a duplicate at or above it), halfway to the next
/// lower score so it is not fitted to one pair; `None` if no threshold
/// reaches the target.
pub fn calibrate(pairs: &[&Pair], method: usize, target: f64) -> Option<f32> {
    let mut scored: Vec<(f32, bool)> = pairs
        .iter()
        .map(|p| (p.scores[method], p.positive))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            tp += usize::from(scored[j].1);
            fp += usize::from(!scored[j].1);
            j += 1;
        }
        if tp as f64 / (tp + fp) as f64 >= target && best.is_none_or(|(btp, _)| tp > btp) {
            best = Some((tp, j));
        }
        i = j;
    }
    let (_, end) = best?;
    let at = scored[end - 1].0;
    Some(match scored.get(end) {
        Some(next) => (at + next.0) / 2.0,
        None => at,
    })
}

/// Precision, recall and counts at `threshold`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AtThreshold {
    pub precision: f64,
    pub recall: f64,
    pub false_positives: usize,
    pub false_negatives: usize,
}

pub fn at_threshold(pairs: &[&Pair], method: usize, threshold: f32) -> AtThreshold {
    let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
    for p in pairs {
        let said = p.scores[method] >= threshold;
        match (said, p.positive) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => {}
        }
    }
    AtThreshold::from_counts(tp, fp, fneg)
}

impl AtThreshold {
    fn from_counts(tp: usize, fp: usize, fneg: usize) -> Self {
        AtThreshold {
            precision: if tp + fp == 0 {
                1.0
            } else {
                tp as f64 / (tp + fp) as f64
            },
            recall: tp as f64 / (tp + fneg).max(1) as f64,
            false_positives: fp,
            false_negatives: fneg,
        }
    }
}

/// One method's results.
#[derive(Debug, Clone, Serialize)]
pub struct MethodReport {
    pub method: String,
    pub auc: f64,
    /// In the method's own unit (distance, cosine, bits); `None`: the
    /// target precision is never reached.
    pub threshold: Option<f32>,
    pub overall: Option<AtThreshold>,
    /// Two-fold: calibrated on one half of the photos, measured on the other.
    pub held_out: Option<AtThreshold>,
    /// At the model's own threshold (the Siamese distance and the verdict;
    /// `None` for the others).
    pub shipped: Option<AtThreshold>,
    /// Share of each family's pairs called duplicate at the threshold
    /// (recall for transforms, false-positive rate for negatives).
    pub duplicate_rate: BTreeMap<String, f64>,
    /// The same at the model's own threshold (empty where `shipped` is
    /// `None`).
    pub shipped_duplicate_rate: BTreeMap<String, f64>,
}

/// What [`report`] measures.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub target_precision: f64,
    pub positives: usize,
    pub negatives: usize,
    pub same_class_negatives: usize,
    pub one_frame_negatives: usize,
    pub methods: Vec<MethodReport>,
}

/// Share of each family's pairs that `method` scores at or above
/// `threshold`.
fn duplicate_rates(pairs: &[&Pair], method: usize, threshold: f32) -> BTreeMap<String, f64> {
    let mut tally: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for p in pairs {
        let e = tally.entry(&p.family).or_default();
        e.0 += usize::from(p.scores[method] >= threshold);
        e.1 += 1;
    }
    tally
        .into_iter()
        .map(|(family, (hit, n))| (family.to_string(), hit as f64 / n as f64))
        .collect()
}

/// The full report over `pairs` at `target` precision; `shipped`: the
/// model's Siamese threshold, when it has one.
pub fn report(pairs: &[Pair], target: f64, shipped: Option<f32>) -> QualityReport {
    let all: Vec<&Pair> = pairs.iter().collect();
    let methods = (0..METHODS.len())
        .map(|m| {
            let threshold = calibrate(&all, m, target);
            let shipped = shipped.filter(|_| m == SIAMESE || m == VERDICT);
            MethodReport {
                method: METHODS[m].to_string(),
                auc: roc_auc(&all, m),
                threshold: threshold.map(|t| display_threshold(m, t)),
                overall: threshold.map(|t| at_threshold(&all, m, t)),
                held_out: held_out(&all, m, target),
                shipped: shipped.map(|t| at_threshold(&all, m, -t)),
                duplicate_rate: threshold
                    .map(|t| duplicate_rates(&all, m, t))
                    .unwrap_or_default(),
                shipped_duplicate_rate: shipped
                    .map(|t| duplicate_rates(&all, m, -t))
                    .unwrap_or_default(),
            }
        })
        .collect();
    QualityReport {
        target_precision: target,
        positives: pairs.iter().filter(|p| p.positive).count(),
        negatives: pairs.iter().filter(|p| !p.positive).count(),
        same_class_negatives: pairs.iter().filter(|p| p.family == SAME_CLASS).count(),
        one_frame_negatives: pairs.iter().filter(|p| p.family == ONE_FRAME).count(),
        methods,
    }
}

/// Scores are "higher = alike"; thresholds are shown in the method's unit.
fn display_threshold(method: usize, t: f32) -> f32 {
    match method {
        // A cosine or inliers; the last, a cosine (keypoints add 4).
        1 | 3 | REGIONAL | REGIONAL_VERDICT => t,
        _ => -t,
    }
}

/// Two folds by photo parity: calibrate on one, count on the other, both
/// ways, pooled. Pairs across the folds are left out.
fn held_out(pairs: &[&Pair], method: usize, target: f64) -> Option<AtThreshold> {
    let fold = |p: &Pair| (p.photos.0 % 2 == p.photos.1 % 2).then_some(p.photos.0 % 2);
    let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
    for f in 0..2 {
        let calib: Vec<&Pair> = pairs
            .iter()
            .copied()
            .filter(|p| fold(p) == Some(f))
            .collect();
        let test: Vec<&Pair> = pairs
            .iter()
            .copied()
            .filter(|p| fold(p) == Some(1 - f))
            .collect();
        let t = calibrate(&calib, method, target)?;
        let r = at_threshold(&test, method, t);
        let pos = test.iter().filter(|p| p.positive).count();
        let found = pos - r.false_negatives;
        tp += found;
        fp += r.false_positives;
        fneg += r.false_negatives;
    }
    Some(AtThreshold::from_counts(tp, fp, fneg))
}

impl QualityReport {
    /// Markdown tables: the summary, then the duplicate rate per family.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} positive pairs, {} negative pairs ({} same class, {} in one app frame); thresholds at precision >= {}\n",
            self.positives,
            self.negatives,
            self.same_class_negatives,
            self.one_frame_negatives,
            self.target_precision
        );
        let _ = writeln!(out, "| method | ROC AUC | threshold | precision | recall | held-out precision | held-out recall | shipped precision | shipped recall |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        for m in &self.methods {
            let _ = writeln!(
                out,
                "| {} | {:.4} | {} | {} | {} | {} | {} | {} | {} |",
                m.method,
                m.auc,
                m.threshold.map_or("-".to_string(), |t| format!("{t:.4}")),
                fmt(m.overall.map(|o| o.precision)),
                fmt(m.overall.map(|o| o.recall)),
                fmt(m.held_out.map(|o| o.precision)),
                fmt(m.held_out.map(|o| o.recall)),
                fmt(m.shipped.map(|o| o.precision)),
                fmt(m.shipped.map(|o| o.recall)),
            );
        }
        let families: Vec<&String> = self
            .methods
            .iter()
            .flat_map(|m| m.duplicate_rate.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = writeln!(out, "\nShare of pairs called duplicate at each threshold, then at the shipped one (recall for transforms, false-positive rate for negatives):\n");
        let shipped: Vec<&MethodReport> = self
            .methods
            .iter()
            .filter(|m| !m.shipped_duplicate_rate.is_empty())
            .collect();
        let header: Vec<String> = self
            .methods
            .iter()
            .map(|m| m.method.clone())
            .chain(shipped.iter().map(|m| format!("{}, shipped", m.method)))
            .collect();
        let _ = writeln!(out, "| pairs | {} |", header.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(header.len()));
        for family in families {
            let cells: Vec<String> = self
                .methods
                .iter()
                .map(|m| fmt(m.duplicate_rate.get(family).copied()))
                .chain(
                    shipped
                        .iter()
                        .map(|m| fmt(m.shipped_duplicate_rate.get(family).copied())),
                )
                .collect();
            let _ = writeln!(out, "| {family} | {} |", cells.join(" | "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(positive: bool, score: f32) -> Pair {
        Pair {
            positive,
            family: String::new(),
            photos: (0, 0),
            scores: [score; 7],
            evidence: Evidence::default(),
        }
    }

    #[test]
    fn auc_and_calibration_on_known_scores() {
        let pairs = [
            p(true, 0.9),
            p(true, 0.8),
            p(false, 0.7),
            p(true, 0.6),
            p(false, 0.1),
        ];
        let refs: Vec<&Pair> = pairs.iter().collect();
        // Positive beats negative in 5 of 6 (positive, negative) pairings.
        assert!((roc_auc(&refs, 0) - 5.0 / 6.0).abs() < 1e-9);
        // Precision 1.0 allows the top two only: threshold between 0.8 and 0.7.
        assert_eq!(calibrate(&refs, 0, 1.0), Some(0.75));
        let r = at_threshold(&refs, 0, 0.75);
        assert_eq!(
            (r.precision, r.false_negatives, r.false_positives),
            (1.0, 1, 0)
        );
        // Precision 0.75 reaches all three positives (3 of 4 above 0.6).
        let t = calibrate(&refs, 0, 0.75).expect("reachable");
        assert!((t - 0.35).abs() < 1e-6, "{t}");
    }

    #[test]
    fn the_verdict_score_says_what_the_daemon_says() {
        let t = 0.34;
        let copy = Evidence {
            inliers: local::SAME_PICTURE_INLIERS,
            coverage: local::SAME_PICTURE_COVERAGE,
            unexplained: Some(0.0),
        };
        let framed = Evidence {
            coverage: 0.3,
            ..copy
        };
        // Many inliers in one frame around two different photos.
        let shared_frame = Evidence {
            inliers: local::SHARED_PART_INLIERS,
            ..framed
        };
        let shorter = t - local::SHARED_PART_MARGIN;
        for d in [0.0, 0.2, shorter - 1e-3, shorter + 1e-3, t, 0.5, 1.2, 2.0] {
            assert!(verdict_score(d, &copy) >= -t, "{d}");
            assert_eq!(verdict_score(d, &framed) >= -t, d <= t, "{d}");
            assert_eq!(verdict_score(d, &shared_frame) >= -t, d < shorter, "{d}");
            let none = Evidence::default();
            assert_eq!(verdict_score(d, &none) >= -t, d <= t, "{d}");
        }
    }

    #[test]
    fn dhash_ignores_scale_and_sees_flips() {
        let img = RgbImage::from_fn(90, 80, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x * y) % 255) as u8])
        });
        let half = imageops::resize(&img, 45, 40, imageops::FilterType::Triangle);
        assert!((dhash(&img) ^ dhash(&half)).count_ones() <= 4);
        let flipped = imageops::flip_horizontal(&img);
        assert!((dhash(&img) ^ dhash(&flipped)).count_ones() > 16);
    }
}
