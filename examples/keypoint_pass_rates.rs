//! How often the keypoint check alone calls a copy "one picture", per copy
//! family of `lookalike eval near-dup` (both plans), and how often it says
//! so of unrelated photos (each copy against 12 other photos) and of
//! different photos shown in one app's frame (every ordered pair, each in
//! the screenshot family's frame), on folders of photos: a one-minute
//! measure of a change to `lookalike::local`, before the full eval with
//! distractors.
//!
//! `cargo run --release --example keypoint_pass_rates -- DIR...`; photos
//! are first shrunk to 2048 px at most. `LK_SEEDS=N` makes N seeded copy
//! sets per photo, `LK_FAM=crop,text` keeps only those families,
//! `LK_DEBUG=1` prints every copy's evidence, and that of each framed pair
//! with enough inliers; `LK_FRAME=0.5,0.0` frames the photos at 50 % of
//! the canvas, at its left (0.6, 0.3 unless set).
use lookalike::lab::eval::plan;
use lookalike::local::{self, Evidence, Keypoints};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// A copy's family, its inliers and coverage against its photo, and the
/// same against unrelated photos.
type Outcome = (&'static str, Evidence, Vec<Evidence>);

/// Keypoints as the daemon stores them.
fn kp(bytes: &[u8]) -> Keypoints {
    qkp(bytes).stored()
}

/// Keypoints as the daemon finds them in a query.
fn qkp(bytes: &[u8]) -> Keypoints {
    let d =
        lookalike::decode::for_network(bytes, u64::MAX, (224, &[]), None, true).expect("decode");
    local::extract_grey(d.for_keypoints.expect("keypoints asked for"))
}

/// The photo, shrunk to 2048 px at most and re-encoded.
fn shrunk(bytes: Vec<u8>) -> Vec<u8> {
    let img = lookalike::decode::decode(&bytes, u64::MAX).unwrap();
    let (w, h) = img.dimensions();
    if w.max(h) <= 2048 {
        return bytes;
    }
    let s = 2048.0 / w.max(h) as f32;
    let img = image::imageops::resize(
        &img,
        (w as f32 * s) as u32,
        (h as f32 * s) as u32,
        image::imageops::FilterType::Triangle,
    );
    lookalike::lab::augment::encode_jpeg(&img, 92).unwrap()
}

fn main() {
    let dirs: Vec<std::path::PathBuf> = std::env::args().skip(1).map(Into::into).collect();
    let files = lookalike::files::image_files(&dirs).expect("photo folders");
    let t = std::time::Instant::now();
    let stored: Vec<(Keypoints, Vec<plan::Variant>)> = files
        .par_iter()
        .enumerate()
        .map(|(i, f)| {
            let bytes = shrunk(std::fs::read(f).unwrap());
            let img = lookalike::decode::decode(&bytes, u64::MAX).unwrap();
            let fams = std::env::var("LK_FAM").unwrap_or_default();
            let seeds = std::env::var("LK_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1u64);
            let mut v = Vec::new();
            for seed in 0..seeds {
                let s = i as u64 + 1 + seed * 1000;
                v.extend(plan::hard_variants(&img, s).unwrap());
                v.extend(plan::variants(&img, s).unwrap());
            }
            v.retain(|x| fams.is_empty() || fams.split(',').any(|f| f == x.family));
            (kp(&bytes), v)
        })
        .collect();
    let mut npoints = 0usize;
    for s in &stored {
        npoints += s.0.points.len();
    }
    eprintln!(
        "{} photos, mean {} stored points, {:.1}s",
        files.len(),
        npoints / files.len(),
        t.elapsed().as_secs_f64()
    );
    let results: Vec<Outcome> = stored
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, (s, vars))| {
            let stored = &stored;
            let files = &files;
            let n = stored.len();
            vars.iter().map(move |v| {
                let q = qkp(&v.bytes);
                let e = local::verify(&q, s);
                // negatives: 12 other photos
                let negs: Vec<Evidence> = (1..=12.min(n - 1))
                    .map(|k| {
                        let o = (i + k * 7) % n;
                        let o = if o == i { (o + 1) % n } else { o };
                        local::verify(&q, &stored[o].0)
                    })
                    .collect();
                if std::env::var("LK_DEBUG").is_ok() {
                    println!(
                        "case {} {} {} {} {:.2} {:.2} q{} s{}",
                        files[i].display(),
                        v.label,
                        e.same_picture(),
                        e.inliers,
                        e.coverage,
                        e.unexplained.unwrap_or(f32::NAN),
                        q.points.len(),
                        s.points.len()
                    );
                }
                (v.family, e, negs)
            })
        })
        .collect();
    // Per family: copies, and copies passing.
    let mut fam: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let (mut neg_n, mut neg_pass, mut neg_8) = (0, 0, 0);
    for (f, e, negs) in &results {
        let counts = fam.entry(f).or_default();
        counts.0 += 1;
        counts.1 += usize::from(e.same_picture());
        for n in negs {
            neg_n += 1;
            neg_pass += usize::from(n.same_picture());
            neg_8 += usize::from(n.inliers >= 8);
        }
    }
    // Unexplained share of the copies that pass without that rule.
    let mut un: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    for (f, e, _) in &results {
        if e.enough_and_spread() {
            un.entry(f)
                .or_default()
                .push(e.unexplained.unwrap_or(f32::NAN));
        }
    }
    for (f, v) in &mut un {
        v.sort_by(f32::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
        println!(
            "unexplained {f:20} p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
    }
    let (mut tn, mut tp) = (0, 0);
    for (f, (n, p)) in &fam {
        println!("{f:20} {p:4}/{n:4} {:.3}", *p as f64 / *n as f64);
        tn += n;
        tp += p;
    }
    println!(
        "all {tp}/{tn} {:.4}; negatives passing {neg_pass}/{neg_n}, >=8 inliers {neg_8}; {:.1}s",
        tp as f64 / tn as f64,
        t.elapsed().as_secs_f64()
    );
    framed(&files);
}

/// Different photos shown in one app's frame (the screenshot family's
/// title bar and caption): every ordered pair of the photos, the query's
/// title the stored one's or another, how many the check calls one
/// picture.
fn framed(files: &[std::path::PathBuf]) {
    const TITLES: [&str; 2] = ["MY PHOTOS - GALLERY", "SHARED WITH YOU"];
    // The photo's share of the canvas and where it sits across it.
    let frame: (f32, f32) = std::env::var("LK_FRAME")
        .ok()
        .and_then(|v| {
            let (a, l) = v.split_once(',')?;
            Some((a.parse().ok()?, l.parse().ok()?))
        })
        .unwrap_or((0.6, 0.3));
    let shot = |f: &std::path::PathBuf, title: &str| {
        let img = lookalike::decode::decode(&shrunk(std::fs::read(f).unwrap()), u64::MAX).unwrap();
        let shot = lookalike::lab::augment::screenshot(&img, frame.0, frame.1, title);
        lookalike::lab::augment::encode_jpeg(&shot, 90).unwrap()
    };
    let stored: Vec<Keypoints> = files.par_iter().map(|f| kp(&shot(f, TITLES[0]))).collect();
    let queries: Vec<[Keypoints; 2]> = files
        .par_iter()
        .map(|f| TITLES.map(|t| qkp(&shot(f, t))))
        .collect();
    let evidence: Vec<Evidence> = (0..files.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            let (stored, queries) = (&stored, &queries);
            (0..files.len())
                .filter(move |&j| j != i)
                .flat_map(move |j| {
                    (0..TITLES.len()).map(move |t| {
                        let e = local::verify(&queries[i][t], &stored[j]);
                        if std::env::var("LK_DEBUG").is_ok()
                            && e.inliers >= local::SAME_PICTURE_INLIERS
                        {
                            println!(
                                "framed {} {} title{t} {} {} {:.2} {:.2}",
                                files[i].display(),
                                files[j].display(),
                                e.same_picture(),
                                e.inliers,
                                e.coverage,
                                e.unexplained.unwrap_or(f32::NAN)
                            );
                        }
                        e
                    })
                })
        })
        .collect();
    let old = evidence
        .iter()
        .filter(|e| e.enough_and_spread())
        .collect::<Vec<_>>();
    let mut un: Vec<f32> = old
        .iter()
        .map(|e| e.unexplained.unwrap_or(f32::NAN))
        .collect();
    un.sort_by(f32::total_cmp);
    let q = |p: f64| {
        un.get(((un.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "framed: passing {}/{} (inliers and coverage alone {}); their unexplained min {:.2} p10 {:.2} p50 {:.2}",
        evidence.iter().filter(|e| e.same_picture()).count(),
        evidence.len(),
        old.len(),
        q(0.0),
        q(0.1),
        q(0.5)
    );
}
