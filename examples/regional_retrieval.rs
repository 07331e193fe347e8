//! Would regional vectors on the stored side find more copies first? An
//! offline replica of a query by image, exact (no graph), on the photos and
//! copies of `lookalike eval near-dup` (both plans, the eval's seeds), with
//! four rankings side by side, recall@1 per family:
//!
//! - `cosine`: the CNN cosine alone;
//! - `daemon`: the daemon's rule: the best 24 by cosine get the keypoint
//!   check (64 when none of the 24 shows one picture), ranked by cosine
//!   plus 0.03 per inlier (up to 10), plus 2 for one picture;
//! - `regional`: the same, with the regional cosine (the best of the
//!   stored photo's nine parts or its whole,
//!   `lookalike::embed::regions`) for the cosine, in choosing the
//!   candidates and in ranking them;
//! - `union`: the best 64 by either cosine checked, ranked by the regional
//!   one;
//! - `re-ranked`: the daemon's candidates (by cosine), ranked by the
//!   regional cosine: what storing the parts changes without indexing them.
//!
//! Images are seen in their centre view: this replicates a database made
//! before 2026-12-07 (`lookalike::decode::View`), as the measurements in
//! BENCHMARKS.md that cite it were.
//!
//! `cargo run --release --example regional_retrieval -- PHOTOS DISTRACTORS...`
//! (as `eval near-dup --images PHOTOS --distractors DISTRACTORS...`).
//! `LK_MISSES=1` prints the copies a ranking misses that `daemon` finds,
//! and the reverse.
use lookalike::decode;
use lookalike::embed::regions::{regional_cosine, regional_vectors};
use lookalike::embed::{Embedder, ModelKind};
use lookalike::lab::eval::plan;
use lookalike::local::{self, Evidence, Keypoints};
use lookalike::vector::dot;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The daemon's `CHECKED_CANDIDATES`, `EXTENDED_CANDIDATES`, keypoint
/// bonus, its cap, and `SAME_PICTURE_RANK` (`src/engine/local.rs`).
const CHECKED: usize = 24;
const EXTENDED: usize = 64;
const BONUS: f32 = 0.03;
const CAP: usize = 10;
const SAME_PICTURE: f32 = 2.0;

/// What a query or a stored image gives.
struct Described {
    features: Vec<f32>,
    regions: Vec<Vec<f32>>,
    keypoints: Keypoints,
}

fn describe(embedder: &Embedder, files: &[Vec<u8>], stored: bool) -> Vec<Described> {
    let decoded: Vec<decode::Decoded> = files
        .par_iter()
        .map(|b| {
            decode::for_network(b, u64::MAX, (224, &[decode::View::Centre]), None, true)
                .expect("decode")
        })
        .collect();
    let keypoints: Vec<Keypoints> = decoded
        .par_iter()
        .map(|d| {
            let k = local::extract_grey(d.for_keypoints.clone().expect("asked for"));
            if stored {
                k.stored()
            } else {
                k
            }
        })
        .collect();
    let inputs: Vec<Vec<f32>> = decoded.into_iter().flat_map(|d| d.inputs).collect();
    let shape = embedder.tap_shape();
    let mut out = Vec::with_capacity(inputs.len());
    for (chunk, kps) in inputs.chunks(64).zip(keypoints.chunks(64)) {
        for (e, k) in embedder.embed_inputs_with_taps(chunk).into_iter().zip(kps) {
            out.push(Described {
                regions: if stored {
                    regional_vectors(&e.tap, shape)
                } else {
                    Vec::new()
                },
                features: e.features,
                keypoints: k.clone(),
            });
        }
    }
    out
}

fn rank(similarity: f32, e: Option<&Evidence>) -> f32 {
    e.map_or(similarity, |e| {
        similarity
            + BONUS * e.inliers.min(CAP) as f32
            + if e.same_picture() { SAME_PICTURE } else { 0.0 }
    })
}

/// Indices of the `n` best by `score`, best first; ties to the lower
/// index, as the eval's ties go to the photo over a distractor with the
/// same pixels (some class photos are near-dup bases too).
fn best(score: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    let nth = n.min(idx.len() - 1);
    let order = |a: &usize, b: &usize| score[*b].total_cmp(&score[*a]).then(a.cmp(b));
    idx.select_nth_unstable_by(nth, order);
    idx.truncate(n);
    idx.sort_by(order);
    idx
}

/// The keypoint check of the query against the stored images `ids`.
fn check(q: &Described, stored: &[Described], ids: &[usize]) -> Vec<(usize, Evidence)> {
    ids.par_iter()
        .map(|&i| (i, local::verify(&q.keypoints, &stored[i].keypoints)))
        .collect()
}

/// The first result after checking `candidates` (best first) the daemon's
/// way, ranked by `similarity`.
fn first(q: &Described, stored: &[Described], candidates: &[usize], similarity: &[f32]) -> usize {
    let mut checked = check(q, stored, &candidates[..candidates.len().min(CHECKED)]);
    if !checked.iter().any(|(_, e)| e.same_picture()) {
        let more = &candidates[checked.len()..candidates.len().min(EXTENDED)];
        checked.extend(check(q, stored, more));
    }
    ranked_first(&checked, similarity)
}

/// The best of checked candidates by [`rank`] on `similarity`, ties to
/// the lower index.
fn ranked_first(checked: &[(usize, Evidence)], similarity: &[f32]) -> usize {
    winner(
        checked
            .iter()
            .map(|(i, e)| (*i, rank(similarity[*i], Some(e)))),
    )
}

/// The best ranked, ties to the lower index.
fn winner(ranked: impl Iterator<Item = (usize, f32)>) -> usize {
    ranked
        .min_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)))
        .map_or(0, |(i, _)| i)
}

fn main() {
    let dirs: Vec<std::path::PathBuf> = std::env::args().skip(1).map(Into::into).collect();
    let photos = lookalike::files::image_files(&dirs[..1]).expect("photos");
    let distractors = lookalike::files::image_files(&dirs[1..]).expect("distractors");
    let embedder = Embedder::load(ModelKind::EfficientNetLite0, None, 0).expect("model");
    let t = std::time::Instant::now();
    let files: Vec<Vec<u8>> = photos
        .iter()
        .chain(&distractors)
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    let stored = describe(&embedder, &files, true);
    eprintln!("{} stored in {:.0?}", stored.len(), t.elapsed());
    let copies: Vec<(usize, plan::Variant)> = files[..photos.len()]
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, bytes)| {
            let img = decode::decode(bytes, u64::MAX).expect("decode");
            let seed = 1u64.wrapping_mul(1_000_003).wrapping_add(i as u64);
            plan::variants(&img, seed)
                .expect("copies")
                .into_iter()
                .chain(plan::hard_variants(&img, seed).expect("hard copies"))
                .map(move |v| (i, v))
        })
        .collect();
    let bytes: Vec<Vec<u8>> = copies.iter().map(|(_, v)| v.bytes.clone()).collect();
    let queries = describe(&embedder, &bytes, false);
    eprintln!("{} copies in {:.0?}", queries.len(), t.elapsed());
    const NAMES: [&str; 5] = ["cosine", "daemon", "regional", "union", "re-ranked"];
    let mut tally: BTreeMap<&str, [usize; 6]> = BTreeMap::new();
    let misses = std::env::var("LK_MISSES").is_ok();
    for ((target, v), q) in copies.iter().zip(&queries) {
        let cosine: Vec<f32> = stored
            .par_iter()
            .map(|s| dot(&q.features, &s.features))
            .collect();
        let regional: Vec<f32> = stored
            .par_iter()
            .map(|s| regional_cosine(&q.features, &s.features, &s.regions))
            .collect();
        let by_cosine = best(&cosine, EXTENDED);
        let by_regional = best(&regional, EXTENDED);
        let mut union = by_regional.clone();
        union.extend(by_cosine.iter().filter(|i| !by_regional.contains(i)));
        let firsts = [
            by_cosine[0],
            first(q, &stored, &by_cosine, &cosine),
            first(q, &stored, &by_regional, &regional),
            // All of the union checked: no early stop.
            ranked_first(&check(q, &stored, &union), &regional),
            first(q, &stored, &by_cosine, &regional),
        ];
        let found = firsts.map(|f| f == *target);
        if std::env::var("LK_DEBUG").is_ok() && !found[0] {
            let name = |i: usize| {
                photos
                    .iter()
                    .chain(&distractors)
                    .nth(i)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            };
            eprintln!(
                "{} of {}: first {} cos {:.3}, target cos {:.3}",
                v.label,
                name(*target),
                name(by_cosine[0]),
                cosine[by_cosine[0]],
                cosine[*target]
            );
        }
        for family in [v.family, "all"] {
            let t = tally.entry(family).or_default();
            for (k, hit) in found.iter().enumerate() {
                t[k] += usize::from(*hit);
            }
            t[5] += 1;
        }
        if misses && found[1] != found[2] {
            eprintln!(
                "{}: daemon {} regional {} ({})",
                v.label,
                found[1],
                found[2],
                photos[*target].display()
            );
        }
    }
    println!("| family | copies | {} |", NAMES.join(" | "));
    println!("|---|---|---|---|---|---|---|");
    for (family, t) in &tally {
        let cells: Vec<String> = t[..5]
            .iter()
            .map(|n| format!("{:.4}", *n as f64 / t[5] as f64))
            .collect();
        println!("| {family} | {} | {} |", t[5], cells.join(" | "));
    }
    eprintln!("done in {:.0?}", t.elapsed());
}
