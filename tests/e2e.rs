//! End to end through the real daemon: insert real photos, find their
//! transformed copies, survive restarts and kill -9, delete, PCA + HNSW.

mod common;

use std::collections::HashMap;

use common::{by_id, data, photos, read, Client, Daemon};
use image::RgbImage;
use lookalike::api::proto::{
    DeleteRequest, GetRequest, InsertRequest, QueryRequest, QueryResponse, StatsRequest,
};
use lookalike::lab::augment;

/// The transformed copies every photo must be found from: (name, transform).
fn copies(img: &RgbImage) -> Vec<(&'static str, Vec<u8>)> {
    let jpeg = |i: &RgbImage, q| augment::encode_jpeg(i, q).expect("jpeg");
    vec![
        ("crop70", jpeg(&augment::crop(img, 0.7, 0.3, 0.6), 90)),
        ("half-jpeg30", jpeg(&augment::rescale(img, 0.5), 30)),
        ("rotate8", jpeg(&augment::rotate(img, 8.0), 85)),
        (
            "colour",
            jpeg(
                &augment::hue_saturation(&augment::brightness_contrast(img, 1.15, 0.9), 15.0, 1.2),
                85,
            ),
        ),
        ("flip", jpeg(&augment::flip_horizontal(img), 85)),
    ]
}

async fn insert_all(client: &mut Client) -> Vec<String> {
    let mut ids = Vec::new();
    for (name, path) in photos() {
        let resp = client
            .insert(InsertRequest {
                id: name.clone(),
                image: read(&path),
                metadata: HashMap::from([("file".to_string(), name.clone())]),
                upsert: false,
            })
            .await
            .unwrap_or_else(|e| panic!("insert {name}: {e}"))
            .into_inner();
        assert_eq!(resp.id, name);
        ids.push(name);
    }
    ids
}

async fn query(
    client: &mut Client,
    image: Option<lookalike::api::proto::ImageRef>,
    k: u32,
) -> QueryResponse {
    client
        .query(QueryRequest {
            image,
            k,
            min_similarity: None,
            omit_metadata: false,
        })
        .await
        .expect("query")
        .into_inner()
}

/// Queries every photo's transformed copies; returns (found first, total)
/// and prints the misses.
async fn recall_at_1(client: &mut Client) -> (usize, usize) {
    let (mut hits, mut total) = (0, 0);
    for (name, path) in photos() {
        let img = image::load_from_memory(&read(&path))
            .expect("decode")
            .into_rgb8();
        for (transform, bytes) in copies(&img) {
            let resp = query(client, data(bytes), 3).await;
            total += 1;
            match resp.matches.first() {
                Some(m) if m.id == name => hits += 1,
                other => eprintln!("MISS {name} / {transform}: got {other:?}"),
            }
        }
    }
    (hits, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformed_copies_find_their_original_exact_then_pca_hnsw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = photos().len();
    assert!(n >= 30, "expected the committed photo set, found {n}");
    // Below the PCA threshold: exact search.
    let daemon = Daemon::start(dir.path(), &["--pca-min-images", "1000"]).await;
    let mut client = daemon.client().await;
    insert_all(&mut client).await;
    let stats = client
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count as usize, n);
    assert!(!stats.pca_fitted);
    let (hits, total) = recall_at_1(&mut client).await;
    eprintln!("exact search: recall@1 = {hits}/{total}");
    assert!(
        hits as f64 >= 0.97 * total as f64,
        "exact recall@1 {hits}/{total}"
    );
    daemon.stop();

    // Above the threshold (restarted with a lower one): PCA + HNSW + re-rank.
    let daemon = Daemon::start(dir.path(), &["--pca-min-images", "20"]).await;
    let mut client = daemon.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = client
            .stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        if s.pca_fitted {
            assert_eq!(
                s.pca_dimensions as usize,
                n - 1,
                "PCA keeps at most n-1 components"
            );
            assert_eq!(s.index_size as usize, n);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "PCA never fitted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (pca_hits, pca_total) = recall_at_1(&mut client).await;
    eprintln!("PCA + HNSW: recall@1 = {pca_hits}/{pca_total}");
    assert_eq!(
        pca_hits, hits,
        "PCA + HNSW + re-rank must find what exact search finds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_kill9_delete_and_query_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    let ids = insert_all(&mut client).await;
    let probe = &ids[3];
    let before = query(&mut client, by_id(probe), 5).await;
    assert_eq!(before.matches.len(), 5);
    assert!(
        before.matches.iter().all(|m| &m.id != probe),
        "query by id must exclude itself"
    );
    // Best first: by score (cosine plus the keypoint bonus).
    assert!(before.matches.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(
        before.matches[0].metadata.get("file"),
        Some(&before.matches[0].id)
    );

    // A clean restart keeps everything and answers the same.
    daemon.stop();
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    let after = query(&mut client, by_id(probe), 5).await;
    assert_eq!(after, before);

    // kill -9 right after an acknowledged insert: it is still there.
    let (name, path) = &photos()[0];
    let late = client
        .insert(InsertRequest {
            id: format!("{name}-again"),
            image: read(path),
            metadata: HashMap::new(),
            upsert: false,
        })
        .await
        .expect("insert")
        .into_inner();
    assert_eq!(
        late.duplicates.first().map(|d| d.id.as_str()),
        Some(name.as_str()),
        "the same photo again must be reported as a duplicate of the first"
    );
    daemon.kill9();
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut client = daemon.client().await;
    let stats = client
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count as usize, ids.len() + 1);
    client
        .get(GetRequest {
            id: format!("{name}-again"),
            include_features: false,
            ..Default::default()
        })
        .await
        .expect("acknowledged insert survives kill -9");

    // Delete removes it from results and from Get.
    let top = query(&mut client, by_id(probe), 1).await.matches[0]
        .id
        .clone();
    client
        .delete(DeleteRequest { id: top.clone() })
        .await
        .expect("delete");
    let now = query(&mut client, by_id(probe), 5).await;
    assert!(
        now.matches.iter().all(|m| m.id != top),
        "deleted id still returned"
    );
    let gone = client
        .get(GetRequest {
            id: top.clone(),
            include_features: false,
            ..Default::default()
        })
        .await
        .expect_err("get deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let again = client
        .delete(DeleteRequest { id: top })
        .await
        .expect_err("delete twice");
    assert_eq!(again.code(), tonic::Code::NotFound);
}
