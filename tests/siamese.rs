//! The Siamese duplicate verdict through the real daemon: a photo and its
//! transformed copy are duplicates, two photos of one kind of thing are
//! not; the distance is symmetric and zero for an image with itself; Insert
//! and Query use the same verdict; two different photos in one app frame
//! are not duplicates; bad Compare inputs get clear statuses.

mod common;

use std::collections::HashMap;

use common::{by_id, data, photos, read, Daemon};
use lookalike::api::proto::{
    groups_response::Item, CompareRequest, CompareResponse, DeleteRequest, GroupsRequest, ImageRef,
    InsertRequest, StatsRequest,
};
use lookalike::lab::augment;
use tonic::Code;

/// The Siamese distance of a comparison; every image here has an embedding.
fn siamese_distance(c: &CompareResponse) -> f32 {
    c.distance.expect("both images have a Siamese embedding")
}

async fn compare(
    c: &mut common::Client,
    a: Option<ImageRef>,
    b: Option<ImageRef>,
) -> CompareResponse {
    c.compare(CompareRequest {
        a,
        b,
        max_distance: None,
    })
    .await
    .expect("compare")
    .into_inner()
}

fn photo(name: &str) -> Vec<u8> {
    let (_, path) = photos()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no test photo {name}"));
    read(&path)
}

/// A copy as it comes back from the web: cropped, captioned, re-encoded.
fn copy_of(bytes: &[u8]) -> Vec<u8> {
    let img = image::load_from_memory(bytes).expect("decode").into_rgb8();
    let img = augment::crop(&img, 0.75, 0.3, 0.6);
    let img = augment::overlay_text(&img, "MY PHOTO", 10, 10, 3, [255, 255, 255]);
    augment::encode_jpeg(&img, 40).expect("jpeg")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_tells_duplicates_from_similar_photos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut c = daemon.client().await;
    let stats = c.stats(StatsRequest {}).await.expect("stats").into_inner();
    let threshold = stats
        .duplicate_distance
        .expect("the bundled Siamese model sets a threshold");
    assert!(threshold > 0.0 && threshold < 2.0, "{stats:?}");

    // Pairs of different photos of one kind of thing. Not here:
    // monument-eiffel-tower-1 / -2 (two photographers, similar viewpoints),
    // which the bundled model wrongly calls duplicates (distance 0.217 at
    // threshold 0.342): a known false positive, counted in the quality
    // report of models/README.md (same-class false-positive rate 0.04).
    let names = [
        "monument-statue-of-liberty-1",
        "monument-statue-of-liberty-2",
        "tool-hammer-1",
        "tool-hammer-2",
        "fish-clownfish",
        "fish-discus",
        "animal-giraffe-1",
        "animal-giraffe-2",
        "windmill-kinderdijk",
        "windmill-post-mill",
    ];
    for name in names {
        c.insert(InsertRequest {
            id: name.into(),
            image: photo(name),
            metadata: HashMap::new(),
            upsert: false,
        })
        .await
        .expect("insert");
    }

    // Every copy is a duplicate by the verdict; by the Siamese distance
    // alone all but one (whole-image views, which databases have since
    // 2026-12-07: the Statue of Liberty's copy is at 0.50, its keypoints
    // decide; in centre views all ten were within the threshold).
    let mut within = 0;
    for name in names {
        let original = photo(name);
        let copy = compare(&mut c, by_id(name), data(copy_of(&original))).await;
        assert!(copy.duplicate, "{name} vs its copy: {copy:?}");
        let (distance, at) = (siamese_distance(&copy), copy.threshold);
        assert!(distance >= 0.0, "{copy:?}");
        within += usize::from(Some(distance) <= at);
        assert_eq!(at, Some(threshold));

        let itself = compare(&mut c, by_id(name), by_id(name)).await;
        assert!(
            siamese_distance(&itself).abs() < 1e-6 && itself.duplicate,
            "{itself:?}"
        );
        let bytes = compare(&mut c, by_id(name), data(original)).await;
        assert!(
            siamese_distance(&bytes) < 1e-3,
            "stored vs re-sent bytes: {bytes:?}"
        );
    }
    assert!(
        within >= names.len() - 1,
        "{within} copies within the threshold"
    );

    // Two photos of one kind of thing: similar, not duplicates.
    for pair in names.chunks(2) {
        let ab = compare(&mut c, by_id(pair[0]), by_id(pair[1])).await;
        assert!(!ab.duplicate, "{} vs {}: {ab:?}", pair[0], pair[1]);
        assert!(Some(siamese_distance(&ab)) > ab.threshold, "{ab:?}");
        let ba = compare(&mut c, by_id(pair[1]), by_id(pair[0])).await;
        assert!(
            (siamese_distance(&ab) - siamese_distance(&ba)).abs() < 1e-6,
            "symmetric: {ab:?} {ba:?}"
        );
        assert_eq!(ab.similarity, ba.similarity);
    }

    // A per-request threshold overrides the server's.
    let strict = c
        .compare(CompareRequest {
            a: by_id(names[0]),
            b: data(copy_of(&photo(names[0]))),
            max_distance: Some(1e-4),
        })
        .await
        .expect("compare")
        .into_inner();
    assert!(!strict.duplicate, "{strict:?}");

    // Insert and Query use the same verdict (a copy the distance alone
    // calls a duplicate).
    let inserted = c
        .insert(InsertRequest {
            id: "copy".into(),
            image: copy_of(&photo(names[2])),
            metadata: HashMap::new(),
            upsert: false,
        })
        .await
        .expect("insert copy")
        .into_inner();
    let dup_ids: Vec<&str> = inserted.duplicates.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(dup_ids, [names[2]], "{inserted:?}");
    let distance = inserted.duplicates[0].distance.expect("a Siamese distance");
    assert!(distance <= threshold, "{inserted:?}");
    let hits = common::matches(&mut c, by_id(names[4]), 3).await;
    assert!(!hits.is_empty());
    for m in &hits {
        let distance = m.distance.expect("a Siamese distance");
        assert!(distance > 0.0, "{m:?}");
        assert_eq!(m.duplicate, distance <= threshold, "{m:?}");
    }
    daemon.stop();
}

/// Sides a and b, max_distance, the status code and a word of its message.
type BadCompare = (
    Option<ImageRef>,
    Option<ImageRef>,
    Option<f32>,
    Code,
    &'static str,
);

/// The photo at 320 x 240 in one gallery app's window: the same frame, at
/// the same size, around whatever photo it shows.
fn in_app_frame(bytes: &[u8]) -> Vec<u8> {
    let img = image::load_from_memory(bytes).expect("decode").into_rgb8();
    let img = image::imageops::resize(&img, 320, 240, image::imageops::FilterType::Triangle);
    let shot = augment::screenshot(&img, 0.6, 0.3, "MY PHOTOS - GALLERY");
    augment::encode_jpeg(&shot, 90).expect("jpeg")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_photos_in_one_app_frame_are_not_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut c = daemon.client().await;
    let stats = c.stats(StatsRequest {}).await.expect("stats").into_inner();
    let threshold = stats.duplicate_distance.expect("a Siamese threshold");
    // Different photos of one kind whose framed Siamese distances fall
    // within the threshold (0.27-0.34): the frame pulls them together.
    // The keypoints match the frame (30+ matches on one geometry), not
    // the photos, so the verdict holds the distance to a shorter one.
    for (a, b) in [
        ("fish-discus", "fish-goldfish"),
        ("tool-hammer-1", "tool-scissors-1"),
        ("bird-kingfisher", "bird-scarlet-macaw"),
        ("animal-panda", "animal-polar-bear"),
    ] {
        let (fa, fb) = (in_app_frame(&photo(a)), in_app_frame(&photo(b)));
        let ab = compare(&mut c, data(fa.clone()), data(fb)).await;
        let d = siamese_distance(&ab);
        assert!(
            d <= threshold,
            "{a} / {b}: the rule is not exercised: {ab:?}"
        );
        assert!(ab.keypoint_matches >= Some(20), "{a} / {b}: {ab:?}");
        assert!(!ab.duplicate, "{a} / {b} in one frame: {ab:?}");
        let shorter = ab.threshold.expect("a threshold");
        assert!(shorter < d && shorter < threshold - 0.05, "{ab:?}");
        // The photo itself in that frame is still its duplicate.
        let own = compare(&mut c, data(fa), data(photo(a))).await;
        assert!(own.duplicate, "{a} and its screenshot: {own:?}");
        // A caller's own max_distance is the whole rule.
        let asked = c
            .compare(CompareRequest {
                a: data(in_app_frame(&photo(a))),
                b: data(in_app_frame(&photo(b))),
                max_distance: Some(threshold),
            })
            .await
            .expect("compare")
            .into_inner();
        assert!(asked.duplicate, "{a} / {b} at max_distance: {asked:?}");
        assert_eq!(asked.threshold, Some(threshold));

        // Insert and Groups give the same verdict (the pair alone stored).
        for (id, name) in [(format!("{a}-framed"), a), (format!("{b}-framed"), b)] {
            let inserted = c
                .insert(InsertRequest {
                    id: id.clone(),
                    image: in_app_frame(&photo(name)),
                    metadata: HashMap::new(),
                    upsert: false,
                })
                .await
                .expect("insert")
                .into_inner();
            let named: Vec<&str> = inserted.duplicates.iter().map(|m| m.id.as_str()).collect();
            assert!(named.is_empty(), "{id}: {named:?}");
        }
        let mut stream = c
            .groups(GroupsRequest::default())
            .await
            .expect("groups")
            .into_inner();
        while let Some(resp) = stream.message().await.expect("groups stream") {
            if let Some(Item::Group(g)) = resp.item {
                panic!("{a} / {b} in one frame grouped as duplicates: {g:?}");
            }
        }
        for id in [format!("{a}-framed"), format!("{b}-framed")] {
            c.delete(DeleteRequest { id }).await.expect("delete");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compare_inputs_get_clear_statuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut c = daemon.client().await;
    let bytes = photo("fish-discus");
    let cases: [BadCompare; 6] = [
        (
            data(bytes.clone()),
            None,
            None,
            Code::InvalidArgument,
            "'b' is missing",
        ),
        (
            None,
            data(bytes.clone()),
            None,
            Code::InvalidArgument,
            "'a' is missing",
        ),
        (
            data(bytes.clone()),
            data(b"this is not an image".to_vec()),
            None,
            Code::InvalidArgument,
            "decode",
        ),
        (
            data(bytes.clone()),
            by_id("nope"),
            None,
            Code::NotFound,
            "nope",
        ),
        (
            data(bytes.clone()),
            data(bytes.clone()),
            Some(3.0),
            Code::InvalidArgument,
            "max_distance",
        ),
        (
            data(bytes.clone()),
            data(bytes.clone()),
            Some(0.0),
            Code::InvalidArgument,
            "max_distance",
        ),
    ];
    for (a, b, max_distance, code, needle) in cases {
        let status = c
            .compare(CompareRequest { a, b, max_distance })
            .await
            .expect_err("must fail");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{status:?} lacks {needle:?}"
        );
    }
    // Still serving.
    let ok = compare(&mut c, data(bytes.clone()), data(bytes)).await;
    assert!(ok.duplicate && siamese_distance(&ok) < 1e-3, "{ok:?}");
    daemon.stop();
}

/// Vectors of two Siamese models cannot be compared: a database refuses
/// weights other than the ones its vectors came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refuses_other_siamese_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    Daemon::start(dir.path(), &[]).await.stop();
    let bundled =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/siamese.safetensors");
    let mut other = lookalike::siamese::Siamese::from_bytes(&read(&bundled)).expect("load");
    other.set_threshold(0.5);
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other_path = other_dir.path().join("other.safetensors");
    other.save(&other_path).expect("save");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--siamese-weights")
        .arg(&other_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    // It must exit by itself; one still serving after a minute is a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon started with other Siamese weights");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Siamese vectors come from"), "{stderr}");
    // The weights it was built with still open it.
    Daemon::start(
        dir.path(),
        &["--siamese-weights", bundled.to_str().expect("utf-8")],
    )
    .await
    .stop();
}
