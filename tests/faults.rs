//! Faults an operator meets, through the real daemon: a saved index that
//! is truncated, overwritten with garbage or from an older lookalike is
//! never used (it would panic hnsw_rs's loader or give silently wrong
//! answers); the daemon logs why, rebuilds from the store and gives the
//! same answers as before.

mod common;

use std::{path::Path, time::Duration};

use common::{by_id, photos, read, Client, LoggedServe};
use lookalike::api::proto::{
    lookalike_client::LookalikeClient, InsertRequest, QueryRequest, StatsRequest,
};
use lookalike::lab::augment;

const GRAPH: [&str; 2] = ["--pca-min-images", "20"];

async fn connect(addr: &str) -> Client {
    LookalikeClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// The best match for each id, by query-by-id, once the index is loaded.
/// (Lower ranks may differ between a graph and its rebuild: HNSW builds
/// in parallel are not deterministic.)
async fn answers(c: &mut Client, ids: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    for id in ids {
        loop {
            let r = c
                .query(QueryRequest {
                    image: by_id(id),
                    k: 1,
                    min_similarity: None,
                    omit_metadata: true,
                })
                .await;
            match r {
                Ok(r) => {
                    let best = r.into_inner().matches.into_iter().next().expect("a match");
                    out.push(best.id);
                    break;
                }
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    assert!(std::time::Instant::now() < deadline, "never ready: {s:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("query {id}: {s:?}"),
            }
        }
    }
    out
}

/// Overwrites `len` bytes in the middle of `path` with a fixed pattern
/// (same length: only a checksum can tell).
fn scribble(path: &Path, len: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    let len = len.min(bytes.len() / 2);
    let start = bytes.len() / 2 - len / 2;
    for (i, b) in bytes[start..start + len].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0xA5;
    }
    std::fs::write(path, bytes).expect("write");
}

fn truncate_half(path: &Path) {
    let bytes = std::fs::read(path).expect("read");
    std::fs::write(path, &bytes[..bytes.len() / 2]).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_saved_index_is_rebuilt_never_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = LoggedServe::start("127.0.0.1:0", dir.path(), &GRAPH, "info");
    let mut c = connect(&serve.addr).await;
    let mut ids = Vec::new();
    for (name, path) in photos() {
        let bytes = read(&path);
        let grey = image::load_from_memory(&bytes).expect("decode").to_rgb8();
        let grey = augment::encode_jpeg(&augment::greyscale(&grey), 85).expect("jpeg");
        for (id, image) in [(name.clone(), bytes), (format!("{name}-grey"), grey)] {
            c.insert(InsertRequest {
                id: id.clone(),
                image,
                ..Default::default()
            })
            .await
            .expect("insert");
            ids.push(id);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = c.stats(StatsRequest {}).await.expect("stats").into_inner();
        if s.pca_fitted && s.index_size as usize == ids.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no graph: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = answers(&mut c, &ids).await;
    // Each photo's best match is its grey copy and the other way round.
    for pair in ids.chunks(2).zip(before.chunks(2)) {
        assert_eq!(pair.0, [pair.1[1].clone(), pair.1[0].clone()]);
    }
    serve.stop();
    let index = dir.path().join("index");

    // An intact saved graph is used as it is.
    let serve = LoggedServe::start("127.0.0.1:0", dir.path(), &GRAPH, "info");
    let mut c = connect(&serve.addr).await;
    assert_eq!(answers(&mut c, &ids).await, before);
    let log = serve.stop();
    assert!(
        !log.contains("rebuilding"),
        "an intact graph was rebuilt:\n{log}"
    );

    type Damage = fn(&Path);
    let damages: [(&str, Damage, &str); 5] = [
        (
            "garbage in the re-rank codes",
            |d| scribble(&d.join("rerank.codes"), 64 << 10),
            "damaged",
        ),
        (
            "a truncated graph",
            |d| truncate_half(&d.join("graph.hnsw.graph")),
            "damaged",
        ),
        (
            "garbage in the graph's vectors",
            |d| scribble(&d.join("graph.hnsw.data"), 64 << 10),
            "damaged",
        ),
        (
            "a stamp without checksums (an older lookalike)",
            |d| {
                let path = d.join("stamp.json");
                let mut stamp: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
                stamp.as_object_mut().expect("object").remove("files");
                std::fs::write(&path, stamp.to_string()).expect("write");
            },
            "checksummed",
        ),
        (
            "an unreadable stamp",
            |d| std::fs::write(d.join("stamp.json"), b"\x00garbage").expect("write"),
            "stamp",
        ),
    ];
    for (what, damage, reason) in damages {
        assert!(
            index.join("stamp.json").exists(),
            "no saved index to damage"
        );
        damage(&index);
        let serve = LoggedServe::start("127.0.0.1:0", dir.path(), &GRAPH, "info");
        let mut c = connect(&serve.addr).await;
        let after = answers(&mut c, &ids).await;
        let log = serve.stop();
        assert_eq!(after, before, "different answers after {what}");
        assert!(
            log.contains("rebuilding from the store") && log.contains(reason),
            "{what}: the log does not say why the graph was rebuilt:\n{log}"
        );
    }
}
