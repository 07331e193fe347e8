//! Groups, tiers, review decisions, keep-best, thumbnails and the HTML
//! report, end to end through the real daemon (and the real CLI and a real
//! headless Chromium for the report).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use common::{by_id, photos, read, Client, Daemon};
use image::RgbImage;
use lookalike::api::proto::{
    groups_response::Item, CompareRequest, Decision, DeleteRequest, GetRequest, Group,
    GroupsRequest, InsertRequest, ListReviewsRequest, ReviewRequest, Tier,
};
use lookalike::lab::augment;

/// Originals that get copies, and the copies' kinds.
const ORIGINALS: usize = 6;

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    augment::encode_jpeg(img, quality).expect("jpeg")
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

fn bmp(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Bmp)
        .expect("bmp");
    out
}

async fn insert(client: &mut Client, id: &str, image: Vec<u8>, upsert: bool) -> Vec<String> {
    client
        .insert(InsertRequest {
            id: id.into(),
            image,
            metadata: HashMap::new(),
            upsert,
        })
        .await
        .unwrap_or_else(|e| panic!("insert {id}: {e}"))
        .into_inner()
        .duplicates
        .into_iter()
        .map(|d| d.id)
        .collect()
}

/// The original a stored id is a copy of (ids are `ORIGINAL` or
/// `ORIGINAL~kind`).
fn original(id: &str) -> &str {
    id.split('~').next().unwrap_or(id)
}

/// Stores every committed photo, and for the first few: the same file
/// under another id (exact), a half-size JPEG (near-duplicate, smaller), a
/// 90 % crop (near-duplicate), and for one a PNG with a BMP re-save of
/// the same pixels (exact by pixels).
async fn populate(client: &mut Client) -> Vec<String> {
    let mut originals = Vec::new();
    for (n, (name, path)) in photos().into_iter().enumerate() {
        let bytes = read(&path);
        insert(client, &name, bytes.clone(), false).await;
        if n >= ORIGINALS {
            continue;
        }
        originals.push(name.clone());
        let img = image::load_from_memory(&bytes).expect("decode").to_rgb8();
        insert(client, &format!("{name}~same-file"), bytes, false).await;
        let half = jpeg(&augment::rescale(&img, 0.5), 60);
        insert(client, &format!("{name}~half"), half, false).await;
        let crop = jpeg(&augment::crop(&img, 0.9, 0.5, 0.5), 90);
        insert(client, &format!("{name}~crop"), crop, false).await;
        if n == 0 {
            let small = augment::rescale(&img, 0.25);
            insert(client, &format!("{name}~png"), png(&small), false).await;
            insert(client, &format!("{name}~bmp"), bmp(&small), false).await;
        }
    }
    originals
}

async fn groups(client: &mut Client) -> Vec<Group> {
    groups_with(client, GroupsRequest::default()).await
}

async fn groups_with(client: &mut Client, request: GroupsRequest) -> Vec<Group> {
    let mut stream = client.groups(request).await.expect("groups").into_inner();
    let (mut found, mut progress) = (Vec::new(), 0);
    while let Some(resp) = stream.message().await.expect("groups stream") {
        match resp.item.expect("item") {
            Item::Group(g) => found.push(g),
            Item::Progress(_) => progress += 1,
        }
    }
    assert!(progress > 0, "no progress was reported");
    found
}

/// The group holding `id`, as the set of its members' ids.
fn group_of<'a>(groups: &'a [Group], id: &str) -> Option<&'a Group> {
    groups.iter().find(|g| g.members.iter().any(|m| m.id == id))
}

fn member_ids(g: &Group) -> Vec<&str> {
    g.members.iter().map(|m| m.id.as_str()).collect()
}

async fn review(client: &mut Client, a: &str, b: &str, decision: Decision) -> i32 {
    client
        .review(ReviewRequest {
            a: a.into(),
            b: b.into(),
            decision: decision as i32,
        })
        .await
        .expect("review")
        .into_inner()
        .previous
}

/// Checks what a NOT_DUPLICATE decision about `a` and `b` must change:
/// Groups, Query's verdict, Compare, and Insert's duplicates (upsert).
async fn assert_kept_apart(client: &mut Client, a: &str, b: &str, a_bytes: &[u8]) {
    let found = groups(client).await;
    if let Some(g) = group_of(&found, a) {
        assert!(
            !g.members.iter().any(|m| m.id == b),
            "{a} and {b} still share a group: {:?}",
            member_ids(g)
        );
    }
    let matches = common::matches(client, by_id(a), 20).await;
    let m = matches
        .iter()
        .find(|m| m.id == b)
        .expect("b is still a match");
    assert!(!m.duplicate, "Query still calls {b} a duplicate of {a}");
    assert_eq!(m.review, Decision::NotDuplicate as i32);
    assert_eq!(m.tier, Tier::Similar as i32);
    let c = client
        .compare(CompareRequest {
            a: by_id(a),
            b: by_id(b),
            max_distance: None,
        })
        .await
        .expect("compare")
        .into_inner();
    assert!(!c.duplicate && c.review == Decision::NotDuplicate as i32);
    let dups = insert(client, a, a_bytes.to_vec(), true).await;
    assert!(
        !dups.iter().any(|d| d == b),
        "Insert still lists {b}: {dups:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_tiers_reviews_thumbnails_and_keep_best() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    let originals = populate(&mut client).await;

    let found = groups(&mut client).await;
    assert_eq!(
        found,
        groups(&mut client).await,
        "Groups is not deterministic"
    );
    for g in &found {
        // No chaining: every member is a duplicate of the representative.
        for m in &g.members[1..] {
            assert!(
                m.tier == Tier::Exact as i32 || m.tier == Tier::NearDuplicate as i32,
                "{} in {:?} has tier {}",
                m.id,
                member_ids(g),
                m.tier
            );
        }
        assert_eq!(g.members[0].tier, Tier::Unspecified as i32);
        assert!((g.keep as usize) < g.members.len() && !g.keep_reason.is_empty());
    }
    for name in &originals {
        let g = group_of(&found, name).unwrap_or_else(|| panic!("{name} is in no group"));
        let ids = member_ids(g);
        for kind in ["same-file", "half", "crop"] {
            let copy = format!("{name}~{kind}");
            assert!(
                ids.contains(&copy.as_str()),
                "{copy} not with {name}: {ids:?}"
            );
        }
        let tier_of = |id: &str| g.members.iter().find(|m| m.id == id).map(|m| m.tier);
        let rep = g.members[0].id.as_str();
        if rep == name || rep == format!("{name}~same-file") {
            assert_eq!(
                tier_of(&format!("{name}~half")),
                Some(Tier::NearDuplicate as i32)
            );
        }
        // The original (or its byte-identical twin) is the one to keep: the
        // most pixels; the half-size copy never is.
        let keep = &g.members[g.keep as usize];
        assert_eq!(original(&keep.id), name);
        assert!(
            !keep.id.ends_with("~half") && !keep.id.ends_with("~crop"),
            "{keep:?}"
        );
        assert!(
            g.keep_reason.contains("largest") || g.keep_reason.contains("inserted first"),
            "{}",
            g.keep_reason
        );
    }
    // With a similar floor, merely similar photos join as tier SIMILAR,
    // never as the copy to keep; at most max_group_size members.
    let request = GroupsRequest {
        similar_floor: Some(0.5),
        max_group_size: 4,
        ..Default::default()
    };
    let with_similar = groups_with(&mut client, request).await;
    let similar: Vec<_> = with_similar
        .iter()
        .flat_map(|g| g.members.iter())
        .filter(|m| m.tier == Tier::Similar as i32)
        .collect();
    assert!(!similar.is_empty(), "no similar member at floor 0.5");
    assert!(similar.iter().all(|m| m.similarity >= 0.5), "{similar:?}");
    for g in &with_similar {
        assert!(g.members.len() <= 4, "{:?}", member_ids(g));
        assert_ne!(g.members[g.keep as usize].tier, Tier::Similar as i32);
    }

    // The same file, and the same pixels in another format, are exact.
    let first = &originals[0];
    let twin = format!("{first}~same-file");
    let c = client
        .compare(CompareRequest {
            a: by_id(first),
            b: by_id(&twin),
            max_distance: None,
        })
        .await
        .expect("compare")
        .into_inner();
    assert_eq!((c.tier, c.duplicate), (Tier::Exact as i32, true));
    let (png_id, bmp_id) = (format!("{first}~png"), format!("{first}~bmp"));
    let g = group_of(&found, &png_id).expect("the png copy is grouped");
    assert!(member_ids(g).contains(&bmp_id.as_str()));
    let c = client
        .compare(CompareRequest {
            a: by_id(&png_id),
            b: by_id(&bmp_id),
            max_distance: None,
        })
        .await
        .expect("compare")
        .into_inner();
    assert_eq!(c.tier, Tier::Exact as i32, "a lossless re-save is exact");

    // Thumbnails: a small JPEG, the photo's shape, the photo's size known.
    let got = client
        .get(GetRequest {
            id: first.clone(),
            include_features: false,
            include_thumbnail: true,
        })
        .await
        .expect("get")
        .into_inner();
    let thumb = image::load_from_memory(&got.thumbnail).expect("the thumbnail decodes");
    assert_eq!(thumb.width().max(thumb.height()), 128);
    assert!(
        got.thumbnail.len() < 12_000,
        "{} bytes",
        got.thumbnail.len()
    );
    let full = image::load_from_memory(&read(&photos()[0].1)).expect("decode");
    assert_eq!((got.width, got.height), (full.width(), full.height()));
    let ratio = |w: u32, h: u32| f64::from(w) / f64::from(h);
    assert!((ratio(thumb.width(), thumb.height()) - ratio(got.width, got.height)).abs() < 0.02);

    // A NOT_DUPLICATE decision: honoured everywhere, across a clean
    // restart and a kill -9 right after it was acknowledged.
    let half = format!("{first}~half");
    let first_bytes = read(&photos()[0].1);
    assert_eq!(
        review(&mut client, &half, first, Decision::NotDuplicate).await,
        0
    );
    drop(client);
    daemon.kill9();
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    assert_kept_apart(&mut client, first, &half, &first_bytes).await;
    drop(client);
    daemon.stop();
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    assert_kept_apart(&mut client, first, &half, &first_bytes).await;

    // A DUPLICATE decision joins two different photos; CLEAR revokes it.
    let (x, y) = (&originals[1], &originals[2]);
    assert_eq!(review(&mut client, x, y, Decision::Duplicate).await, 0);
    let found = groups(&mut client).await;
    let g = group_of(&found, x).expect("grouped");
    assert!(member_ids(g).contains(&y.as_str()), "{:?}", member_ids(g));
    let listed = client
        .list_reviews(ListReviewsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .reviews;
    assert_eq!(listed.len(), 2);
    let prev = review(&mut client, y, x, Decision::Clear).await;
    assert_eq!(prev, Decision::Duplicate as i32);
    let found = groups(&mut client).await;
    assert!(!member_ids(group_of(&found, x).expect("grouped")).contains(&y.as_str()));

    // Bad reviews get clear statuses.
    for (a, b, d, code) in [
        (
            first.as_str(),
            "no-such-image",
            Decision::Duplicate,
            tonic::Code::NotFound,
        ),
        (
            first.as_str(),
            first.as_str(),
            Decision::Duplicate,
            tonic::Code::InvalidArgument,
        ),
        (
            "",
            first.as_str(),
            Decision::Duplicate,
            tonic::Code::InvalidArgument,
        ),
        (
            first.as_str(),
            half.as_str(),
            Decision::Unspecified,
            tonic::Code::InvalidArgument,
        ),
    ] {
        let err = client
            .review(ReviewRequest {
                a: a.into(),
                b: b.into(),
                decision: d as i32,
            })
            .await
            .expect_err("a bad review");
        assert_eq!(err.code(), code, "{a} {b}: {}", err.message());
    }

    // Deleting an image drops its decisions.
    client
        .delete(DeleteRequest { id: half.clone() })
        .await
        .expect("delete");
    let listed = client
        .list_reviews(ListReviewsRequest { id: first.clone() })
        .await
        .expect("list")
        .into_inner()
        .reviews;
    assert!(listed.is_empty(), "{listed:?}");
}

/// Finds the report checker's node_modules (installed by
/// scripts/setup-test-tools.sh); the test fails, not skips, without them.
fn report_checker() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/report");
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the report check needs Chromium and tests/report/node_modules: run scripts/setup-test-tools.sh"
    );
    dir.join("check.mjs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_opens_offline_in_chromium_with_groups_and_map() {
    let checker = report_checker();
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    populate(&mut client).await;
    let found = groups(&mut client).await;
    let stored = client
        .stats(lookalike::api::proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .count;

    let out = dir.path().join("report.html");
    let cli = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(["report", "--server", &daemon.url(), "--out"])
        .arg(&out)
        .output()
        .expect("run lookalike report");
    assert!(
        cli.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let html = std::fs::read_to_string(&out).expect("read the report");
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "src=\"//",
        "@import",
    ] {
        let hits: Vec<_> = html.match_indices(external).take(3).collect();
        assert!(hits.is_empty(), "the report refers to {external}: {hits:?}");
    }
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    let check = Command::new("node")
        .arg(&checker)
        .arg(&out)
        .arg(&screenshot)
        .args(["--groups", &found.len().to_string()])
        .args(["--map-points", &stored.to_string()])
        .output()
        .expect("run the report check");
    assert!(
        check.status.success(),
        "the report check failed:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(check.stdout.trim_ascii()).expect("the check's JSON line");
    assert_eq!(summary["console_errors"], 0);
    assert_eq!(
        summary["requests"].as_array().map(Vec::len),
        Some(0),
        "{summary}"
    );
    assert!(std::fs::metadata(&screenshot).expect("screenshot").len() > 10_000);

    // The CLI's JSON groups match the RPC's.
    let json = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(["groups", "--json", "--server", &daemon.url()])
        .output()
        .expect("run lookalike groups");
    assert!(json.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("groups JSON");
    let ids = |g: &serde_json::Value| -> Vec<String> {
        g["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect()
    };
    let from_cli: BTreeMap<usize, Vec<String>> = doc["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(ids)
        .enumerate()
        .collect();
    let from_rpc: BTreeMap<usize, Vec<String>> = found
        .iter()
        .map(|g| member_ids(g).into_iter().map(String::from).collect())
        .enumerate()
        .collect();
    assert_eq!(from_cli, from_rpc);
}

/// A crop keeping a sixth of a photo joins the photo's group through the
/// keypoint check, as Query and Compare call it a duplicate; with the check
/// off, the Siamese distance alone leaves more of them out. The check adds
/// no group that holds two different photos.
#[tokio::test(flavor = "multi_thread")]
async fn heavy_crops_join_their_photos_group_through_the_keypoints() {
    const CROPPED: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    let mut crops = Vec::new();
    for (n, (name, path)) in photos().into_iter().enumerate() {
        let bytes = read(&path);
        insert(&mut client, &name, bytes.clone(), false).await;
        if n < CROPPED {
            let img = image::load_from_memory(&bytes).expect("decode").to_rgb8();
            // 40 % of each side (16 % of the area), off centre.
            let crop = jpeg(&augment::crop(&img, 0.4, 0.35, 0.6), 90);
            let id = format!("{name}~crop40");
            insert(&mut client, &id, crop, false).await;
            crops.push((name, id));
        }
    }
    let joined = |groups: &[Group]| {
        crops
            .iter()
            .filter(|(name, crop)| {
                group_of(groups, crop).is_some_and(|g| member_ids(g).contains(&name.as_str()))
            })
            .count()
    };
    // Groups holding two different committed photos.
    let mixed = |groups: &[Group]| {
        groups
            .iter()
            .filter(|g| {
                let mut photos: Vec<&str> = g.members.iter().map(|m| original(&m.id)).collect();
                photos.sort();
                photos.dedup();
                photos.len() > 1
            })
            .count()
    };
    let checked = groups(&mut client).await;
    let unchecked = groups_with(
        &mut client,
        GroupsRequest {
            keypoints: Some(false),
            ..Default::default()
        },
    )
    .await;
    let (with, without) = (joined(&checked), joined(&unchecked));
    eprintln!(
        "crops with their photo: {with} of {CROPPED} with the check, {without} without; mixed \
         groups {} and {}",
        mixed(&checked),
        mixed(&unchecked)
    );
    assert!(
        with >= CROPPED * 8 / 10,
        "{with} of {CROPPED} crops with their photo: {checked:?}"
    );
    assert!(
        with > without,
        "the check must find crops the Siamese distance misses: {with} vs {without}"
    );
    assert!(
        mixed(&checked) <= mixed(&unchecked),
        "{} mixed groups with the check, {} without: {checked:?}",
        mixed(&checked),
        mixed(&unchecked)
    );
    daemon.stop();
}
