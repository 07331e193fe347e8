//! Snapshot and restore through the real daemon and the real CLI: a
//! snapshot taken under concurrent inserts holds every insert acknowledged
//! before it began and nothing that was never sent; a restored daemon (with
//! the graph, PCA + HNSW serving) gives the same answers to the same
//! queries, and its new inserts get seqs of their own (none lands on a
//! deleted one the graph still knows); restore refuses a non-empty folder.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use common::{data, photos, read, Client, Daemon};
use lookalike::api::proto::{
    Decision, DeleteRequest, GetRequest, InsertRequest, ListReviewsRequest, QueryRequest,
    ReviewRequest, StatsRequest,
};

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .env_remove("LOOKALIKE_API_KEY")
        .args(args)
        .output()
        .expect("run lookalike")
}

fn snapshot(daemon: &Daemon, out: &Path) {
    let out_s = out.to_string_lossy();
    let r = cli(&["snapshot", "--out", &out_s, "--server", &daemon.url()]);
    assert!(r.status.success(), "snapshot: {r:?}");
}

fn restore(file: &Path, dir: &Path) -> std::process::Output {
    cli(&[
        "restore",
        &file.to_string_lossy(),
        "--data-dir",
        &dir.to_string_lossy(),
    ])
}

async fn ids_of(c: &mut Client, ids: &[String]) -> Vec<String> {
    let mut present = Vec::new();
    for id in ids {
        if c.get(GetRequest {
            id: id.clone(),
            include_features: false,
            ..Default::default()
        })
        .await
        .is_ok()
        {
            present.push(id.clone());
        }
    }
    present
}

/// (id, similarity, keypoint matches) of the top 10 for each of the first
/// photos.
async fn answers(c: &mut Client) -> Vec<Vec<(String, f32, Option<u32>)>> {
    let mut all = Vec::new();
    for (_, path) in photos().iter().take(5) {
        let matches = c
            .query(QueryRequest {
                image: data(read(path)),
                k: 10,
                min_similarity: None,
                omit_metadata: false,
            })
            .await
            .expect("query")
            .into_inner()
            .matches;
        all.push(
            matches
                .into_iter()
                .map(|m| (m.id, m.similarity, m.keypoint_matches))
                .collect(),
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_inserts_then_restore_gives_the_same_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A graph from 20 images on: the snapshot carries it.
    let graph = ["--pca-min-images", "20"];
    let original = Daemon::start(&dir.path().join("a"), &graph).await;
    let mut c = original.client().await;
    let set = photos();
    let insert = |id: String, i: usize| InsertRequest {
        id,
        image: read(&set[i % set.len()].1),
        metadata: HashMap::from([("n".to_string(), i.to_string())]),
        upsert: false,
    };
    let mut before: Vec<String> = Vec::new();
    for i in 0..30 {
        let id = format!("early-{i:03}");
        c.insert(insert(id.clone(), i)).await.expect("insert");
        before.push(id);
    }
    let started = std::time::Instant::now();
    while !c
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .pca_fitted
    {
        assert!(
            started.elapsed().as_secs() < 120,
            "PCA + HNSW never took over"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Inserts keep coming while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, sent, acked) = (stop.clone(), sent.clone(), acked.clone());
        let mut c = original.client().await;
        let requests: Vec<InsertRequest> = (0..400)
            .map(|i| insert(format!("late-{i:03}"), i + 7))
            .collect();
        tokio::spawn(async move {
            for r in requests {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                sent.lock().expect("sent").push(r.id.clone());
                let id = r.id.clone();
                c.insert(r).await.expect("insert during the snapshot");
                acked.lock().expect("acked").push(id);
            }
        })
    };
    while acked.lock().expect("acked").len() < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let acked_before_snapshot = acked.lock().expect("acked").clone();
    let busy = dir.path().join("busy.tar");
    let snap = {
        let (busy, url) = (busy.clone(), original.url());
        tokio::task::spawn_blocking(move || {
            cli(&[
                "snapshot",
                "--out",
                &busy.to_string_lossy(),
                "--server",
                &url,
            ])
        })
    };
    let out = snap.await.expect("snapshot task");
    assert!(out.status.success(), "snapshot under load: {out:?}");
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    let sent: Vec<String> = sent.lock().expect("sent").clone();
    let late_acked: Vec<String> = acked.lock().expect("acked").clone();
    assert!(
        late_acked.len() > acked_before_snapshot.len(),
        "no insert ran during the snapshot: the test proves nothing"
    );

    let restored_dir = dir.path().join("b");
    let r = restore(&busy, &restored_dir);
    assert!(r.status.success(), "restore: {r:?}");
    let restored = Daemon::start(&restored_dir, &[]).await;
    let mut rc = restored.client().await;
    let count = rc
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner()
        .count as usize;
    let expected_before: Vec<String> = before
        .iter()
        .chain(&acked_before_snapshot)
        .cloned()
        .collect();
    assert_eq!(
        ids_of(&mut rc, &expected_before).await,
        expected_before,
        "an insert acknowledged before the snapshot is missing"
    );
    let late_present = ids_of(&mut rc, &sent).await;
    assert_eq!(
        count,
        before.len() + late_present.len(),
        "ids not sent were restored"
    );
    let sent_set: BTreeSet<&String> = sent.iter().collect();
    assert!(late_present.iter().all(|id| sent_set.contains(id)));
    eprintln!(
        "snapshot under load: {} early + {} of {} late inserts ({} acknowledged before it began)",
        before.len(),
        late_present.len(),
        sent.len(),
        acked_before_snapshot.len()
    );
    restored.stop();

    // A quiet snapshot restores to the same answers, graph and all. Two
    // deleted images leave tombstones in the graph.
    for id in &before[..2] {
        c.delete(DeleteRequest { id: id.clone() })
            .await
            .expect("delete");
    }
    // A review decision and the thumbnails travel with the snapshot.
    let (ra, rb) = (before[2].clone(), before[3].clone());
    c.review(ReviewRequest {
        a: ra.clone(),
        b: rb.clone(),
        decision: Decision::NotDuplicate as i32,
    })
    .await
    .expect("review");
    let thumbnail = |c: &mut Client, id: String| {
        let mut c = c.clone();
        async move {
            c.get(GetRequest {
                id,
                include_thumbnail: true,
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner()
            .thumbnail
        }
    };
    let quiet = dir.path().join("quiet.tar");
    snapshot(&original, &quiet);
    let same_dir = dir.path().join("c");
    assert!(restore(&quiet, &same_dir).status.success());
    assert!(
        same_dir.join("index").join("stamp.json").exists(),
        "the snapshot's graph was not restored"
    );
    let copy = Daemon::start(&same_dir, &[]).await;
    let mut cc = copy.client().await;
    let (want, got) = (answers(&mut c).await, answers(&mut cc).await);
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        let ids = |v: &Vec<(String, f32, Option<u32>)>| {
            v.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(w), ids(g));
        for ((_, a, ka), (_, b, kb)) in w.iter().zip(g) {
            assert!((a - b).abs() < 1e-6, "{w:?} vs {g:?}");
            // The keypoints travel with the snapshot.
            assert!(ka.is_some() && ka == kb, "{w:?} vs {g:?}");
        }
    }
    let n = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.stats(StatsRequest {})
                .await
                .expect("stats")
                .into_inner()
                .count
        }
    };
    assert_eq!(n(&mut c).await, n(&mut cc).await);
    let reviews = cc
        .list_reviews(ListReviewsRequest::default())
        .await
        .expect("list reviews")
        .into_inner()
        .reviews;
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0].decision, Decision::NotDuplicate as i32);
    let want = thumbnail(&mut c, ra.clone()).await;
    assert!(!want.is_empty());
    assert_eq!(thumbnail(&mut cc, ra).await, want);
    let stats = cc.stats(StatsRequest {}).await.expect("stats").into_inner();
    assert!(stats.pca_fitted && stats.index_size > 0, "{stats:?}");

    // New inserts after a restore are found (their seqs collide with no
    // point the restored graph holds, deleted or not).
    for i in 0..3 {
        let id = format!("after-restore-{i}");
        cc.insert(insert(id.clone(), 11 + i))
            .await
            .expect("insert after restore");
        let top = cc
            .query(QueryRequest {
                image: common::by_id(&id),
                k: 1,
                min_similarity: None,
                omit_metadata: true,
            })
            .await
            .expect("query by the new id");
        assert!(!top.into_inner().matches.is_empty());
        let found = common::matches(&mut cc, data(read(&set[(11 + i) % set.len()].1)), 50).await;
        assert!(
            found.iter().any(|m| m.id == id),
            "{id} not found after restore: {found:?}"
        );
    }

    // Restore refuses a folder that holds something.
    let refused = restore(&quiet, &same_dir);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not empty"),
        "{refused:?}"
    );
    copy.stop();
    original.stop();
}
