//! The copies one pooled CNN vector loses, found through the real daemon by
//! the keypoint check: a crop keeping 15 % of a photo, the photo inside a
//! screenshot, the photo with a sticker over a quarter of it. And the
//! check's false alarm it must not raise: two different photos shown in
//! the same app frame.

mod common;

use std::collections::HashMap;

use common::{by_id, data, photos, read, Client, Daemon};
use image::RgbImage;
use lookalike::api::proto::{CompareRequest, InsertRequest, Match, QueryRequest};
use lookalike::lab::augment;

/// Keypoint matches the daemon calls a duplicate at (engine::local).
const VERIFIED: u32 = 10;

fn copies(img: &RgbImage, i: usize) -> Vec<(&'static str, Vec<u8>)> {
    let jpeg = |img: &RgbImage| augment::encode_jpeg(img, 90).expect("jpeg");
    // Positions vary by photo, away from the centre the network sees.
    let at = [0.1, 0.9, 0.3, 0.7][i % 4];
    vec![
        (
            "crop-15",
            jpeg(&augment::crop(img, 0.15f32.sqrt(), at, 1.0 - at)),
        ),
        (
            "screenshot",
            jpeg(&augment::screenshot(img, 0.6, at, "MY PHOTOS - GALLERY")),
        ),
        (
            "sticker-25",
            jpeg(&augment::sticker(
                img,
                0.25,
                0.5,
                0.45,
                i.is_multiple_of(2),
                [220, 30, 40],
            )),
        ),
    ]
}

async fn first_match(client: &mut Client, bytes: Vec<u8>) -> Option<Match> {
    let resp = client
        .query(QueryRequest {
            image: data(bytes),
            k: 3,
            min_similarity: None,
            omit_metadata: true,
        })
        .await
        .expect("query")
        .into_inner();
    let m = resp.matches;
    assert!(
        m.windows(2).all(|w| w[0].score >= w[1].score),
        "ordered by score: {m:?}"
    );
    m.into_iter().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_crops_screenshots_and_stickers_come_first_and_are_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    let photos = photos();
    for (name, path) in &photos {
        client
            .insert(InsertRequest {
                id: name.clone(),
                image: read(path),
                metadata: HashMap::new(),
                upsert: false,
            })
            .await
            .unwrap_or_else(|e| panic!("insert {name}: {e}"));
    }

    // Per kind: (found first, found first and called a duplicate, copies).
    let mut found: HashMap<&str, (usize, usize, usize)> = HashMap::new();
    let mut misses = Vec::new();
    for (i, (name, path)) in photos.iter().enumerate() {
        let img = image::load_from_memory(&read(path))
            .expect("decode")
            .into_rgb8();
        for (kind, bytes) in copies(&img, i) {
            let entry = found.entry(kind).or_default();
            entry.2 += 1;
            match first_match(&mut client, bytes).await {
                Some(m) if &m.id == name => {
                    assert!(m.keypoint_matches.is_some(), "both have keypoints: {m:?}");
                    entry.0 += 1;
                    entry.1 += usize::from(m.duplicate);
                }
                other => misses.push(format!("{kind} of {name}: {other:?}")),
            }
        }
    }
    eprintln!("found first: {found:?}; misses: {misses:#?}");
    for (kind, (hits, duplicates, total)) in &found {
        // 40 photos, half of them 320 px wide: a 15 % crop of one is 124 x
        // 93 px, with few corners left (measured: crop 36, screenshot 40,
        // sticker 40 of 40 found first; 30, 40 and 38 called duplicates).
        // Since candidates are ranked by their best stored part (crops
        // found first among 10,368 photos: 0.967 -> 0.978 keeping 15-25 %,
        // 0.945 -> 0.960 the classic crops), 35 crops here: a part of
        // another hammer photo now outranks tool-hammer-3's own; the floor
        // keeps one copy of margin below that.
        let floor = if *kind == "crop-15" { 0.85 } else { 0.9 };
        assert!(
            *hits as f64 >= floor * *total as f64,
            "{kind}: {hits} of {total} found first; misses: {misses:#?}"
        );
        let floor = if *kind == "crop-15" { 0.65 } else { 0.9 };
        assert!(
            *duplicates as f64 >= floor * *total as f64,
            "{kind}: {duplicates} of {total} called duplicates"
        );
    }

    // Insert: a heavy crop names its photo among its duplicates, through
    // the keypoints (its cosine alone is far from a duplicate's).
    let (name, path) = photos
        .iter()
        .find(|(n, _)| n == "monument-colosseum")
        .expect("colosseum");
    let img = image::load_from_memory(&read(path))
        .expect("decode")
        .into_rgb8();
    let crop = augment::encode_jpeg(&augment::crop(&img, 0.4, 0.9, 0.2), 90).expect("jpeg");
    let resp = client
        .insert(InsertRequest {
            id: "colosseum-crop".into(),
            image: crop,
            metadata: HashMap::new(),
            upsert: false,
        })
        .await
        .expect("insert crop")
        .into_inner();
    let dup = resp.duplicates.iter().find(|m| &m.id == name);
    let dup = dup.unwrap_or_else(|| panic!("crop's duplicates: {:?}", resp.duplicates));
    assert!(dup.keypoint_matches.unwrap_or(0) >= VERIFIED, "{dup:?}");

    // Compare by id: the same verdict, with its evidence.
    let c = client
        .compare(CompareRequest {
            a: by_id("colosseum-crop"),
            b: by_id(name),
            max_distance: None,
        })
        .await
        .expect("compare")
        .into_inner();
    assert!(
        c.duplicate && c.keypoint_matches.unwrap_or(0) >= VERIFIED,
        "{c:?}"
    );

    // Two different photos in the same app frame share its title bar and
    // caption, not a picture: not duplicates (the frame alone gives these
    // pairs enough inliers, spread widely enough).
    let frame = |name: &str| {
        let (_, path) = photos.iter().find(|(n, _)| n == name).expect("photo");
        let img = image::load_from_memory(&read(path))
            .expect("decode")
            .into_rgb8();
        let shot = augment::screenshot(&img, 0.6, 0.3, "MY PHOTOS - GALLERY");
        augment::encode_jpeg(&shot, 90).expect("jpeg")
    };
    for (a, b) in [
        ("bird-duck", "animal-cat-kitten"),
        ("tool-screwdriver", "solar-panel-1"),
        ("monument-statue-of-liberty-1", "windmill-post-mill"),
    ] {
        let c = client
            .compare(CompareRequest {
                a: data(frame(a)),
                b: data(frame(b)),
                max_distance: None,
            })
            .await
            .expect("compare")
            .into_inner();
        assert!(!c.duplicate, "{a} and {b} in one frame: {c:?}");
    }
    daemon.stop();
}

/// When none of the best candidates by cosine shows the query's picture,
/// the check goes deeper (`engine::local::EXTENDED_CANDIDATES`): here a
/// stickered photo's original ranks behind 30 mirror images of the
/// stickered photo (alike to the CNN, but no geometry agrees), and is
/// still checked and called a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_behind_the_first_candidates_is_still_checked() {
    /// `engine::local::CHECKED_CANDIDATES`: checked before going deeper.
    const FIRST: usize = 24;
    const DECOYS: usize = 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    let (_, path) = photos()
        .into_iter()
        .find(|(n, _)| n == "monument-colosseum")
        .expect("photo");
    let bytes = read(&path);
    let img = image::load_from_memory(&bytes).expect("decode").into_rgb8();
    let stickered = augment::sticker(&img, 0.25, 0.5, 0.5, true, [220, 30, 40]);
    let mut stored = vec![("original".to_string(), bytes)];
    let mirrored = augment::flip_horizontal(&stickered);
    for i in 0..DECOYS {
        let decoy = augment::hue_saturation(&mirrored, i as f32, 1.0);
        let jpeg = augment::encode_jpeg(&decoy, 90).expect("jpeg");
        stored.push((format!("mirror-{i}"), jpeg));
    }
    for (id, image) in stored {
        client
            .insert(InsertRequest {
                id: id.clone(),
                image,
                metadata: HashMap::new(),
                upsert: false,
            })
            .await
            .unwrap_or_else(|e| panic!("insert {id}: {e}"));
    }
    let query = augment::encode_jpeg(&stickered, 90).expect("jpeg");
    let matches = client
        .query(QueryRequest {
            image: data(query),
            k: DECOYS as u32 + 1,
            min_similarity: None,
            omit_metadata: true,
        })
        .await
        .expect("query")
        .into_inner()
        .matches;
    let original = matches
        .iter()
        .find(|m| m.id == "original")
        .unwrap_or_else(|| panic!("original missing: {matches:?}"));
    let closer = matches
        .iter()
        .filter(|m| m.similarity > original.similarity)
        .count();
    assert!(
        closer >= FIRST,
        "the original must rank behind the first {FIRST} by cosine for this test to mean anything: \
         {closer} ahead of it"
    );
    let mirrors_verified: Vec<&Match> = matches
        .iter()
        .filter(|m| m.id != "original" && m.keypoint_matches.unwrap_or(0) >= VERIFIED)
        .collect();
    assert!(mirrors_verified.is_empty(), "{mirrors_verified:?}");
    assert!(
        original.keypoint_matches.unwrap_or(0) >= VERIFIED && original.duplicate,
        "{original:?}"
    );
    // The copy the keypoints verify comes first, before the flipped
    // versions the CNN finds far closer (cosine 0.88-0.99 against 0.34) and
    // the keypoints cannot verify (3-6 chance matches: they do not see a
    // flip).
    assert_eq!(matches[0].id, "original", "{matches:?}");
    daemon.stop();
}
