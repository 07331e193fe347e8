//! How many pairs of different photos the keypoint check calls one
//! picture: every ordered pair of the photos listed in `datasets/splits.tsv`
//! (the class photos and the near-dup bases) whose groups differ (a group
//! is one photo, wherever it is stored), each checked as a query against
//! the other stored. The rule's own count, then how many would meet the
//! inliers and coverage at a few inlier counts around the rule's.
//!
//! `cargo run --release --example keypoint_false_matches`, from the
//! repository root after `scripts/fetch-datasets.sh`.
use lookalike::local::{self, Evidence, Keypoints};
use rayon::prelude::*;

/// Keypoints as the daemon finds them in a query.
fn query_keypoints(bytes: &[u8]) -> Keypoints {
    let d =
        lookalike::decode::for_network(bytes, u64::MAX, (224, &[]), None, true).expect("decode");
    local::extract_grey(d.for_keypoints.expect("keypoints asked for"))
}

fn main() {
    let splits = std::fs::read_to_string("datasets/splits.tsv").expect("datasets/splits.tsv");
    // (path, group) per photo.
    let photos: Vec<(String, String)> = splits
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            Some((
                format!("datasets/{}", fields.first()?),
                fields.get(2)?.to_string(),
            ))
        })
        .collect();
    let keypoints: Vec<(Keypoints, Keypoints)> = photos
        .par_iter()
        .map(|(path, _)| {
            let query = query_keypoints(&std::fs::read(path).expect("photo"));
            let stored = query.stored();
            (query, stored)
        })
        .collect();
    let n = photos.len();
    let checked: Vec<(usize, usize, Evidence)> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let (photos, keypoints) = (&photos, &keypoints);
            (0..n)
                .filter(move |&j| photos[i].1 != photos[j].1)
                .map(move |j| (i, j, local::verify(&keypoints[i].0, &keypoints[j].1)))
        })
        .collect();
    let one_picture: Vec<_> = checked.iter().filter(|c| c.2.same_picture()).collect();
    println!(
        "{} pairs of different photos; called one picture: {}",
        checked.len(),
        one_picture.len()
    );
    for (i, j, e) in &one_picture {
        println!(
            "  {} as a query against {}: {e:?}",
            photos[*i].0, photos[*j].0
        );
    }
    let rule = local::SAME_PICTURE_INLIERS;
    for t in (rule.saturating_sub(2)..=rule + 2).rev() {
        let met = checked
            .iter()
            .filter(|c| c.2.inliers >= t && c.2.coverage >= local::SAME_PICTURE_COVERAGE)
            .count();
        println!(
            "{t}+ inliers over coverage {}: {met}",
            local::SAME_PICTURE_COVERAGE
        );
    }
}
