//! The gRPC contract through the real daemon: every bad input gets its
//! status and the daemon keeps serving; InsertStream answers per item in
//! order; Compare; health; model mismatch.

mod common;

use std::collections::HashMap;

use common::{by_id, data, photos, read, Daemon};
use lookalike::api::proto::{
    image_ref::Source, CompareRequest, DeleteRequest, GetRequest, ImageRef, InsertRequest,
    InsertResponse, QueryRequest, StatsRequest,
};
use lookalike::lab::augment;
use tonic::Code;

/// Asserts a call failed with `code` and a message containing `needle`.
fn expect<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
) {
    let status = r.expect_err("must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} lacks {needle:?}",
        status.message()
    );
}

fn insert_req(id: &str, image: Vec<u8>) -> InsertRequest {
    InsertRequest {
        id: id.into(),
        image,
        metadata: HashMap::new(),
        upsert: false,
    }
}

/// Every answer of one InsertStream of `reqs`.
async fn stream_all(c: &mut common::Client, reqs: Vec<InsertRequest>) -> Vec<InsertResponse> {
    let mut answers = c
        .insert_stream(tokio_stream::iter(reqs))
        .await
        .expect("stream")
        .into_inner();
    let mut got = Vec::new();
    while let Some(a) = answers.message().await.expect("stream item") {
        got.push(a);
    }
    got
}

fn query_req(image: Option<ImageRef>, k: u32) -> QueryRequest {
    QueryRequest {
        image,
        k,
        min_similarity: None,
        omit_metadata: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_statuses_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--max-message-bytes",
            "4000000",
            "--max-image-pixels",
            "20000000",
        ],
    )
    .await;
    let mut c = daemon.client().await;
    let photo = read(&photos()[0].1);
    c.insert(insert_req("first", photo.clone()))
        .await
        .expect("insert");

    expect(
        c.insert(insert_req("x", vec![])).await,
        Code::InvalidArgument,
        "empty",
    );
    expect(
        c.insert(insert_req("x", b"this is not an image".to_vec()))
            .await,
        Code::InvalidArgument,
        "decode",
    );
    expect(
        c.insert(insert_req("x", photo[..photo.len() / 3].to_vec()))
            .await,
        Code::InvalidArgument,
        "decode",
    );
    expect(
        c.insert(insert_req("first", photo.clone())).await,
        Code::AlreadyExists,
        "first",
    );
    expect(
        c.query(query_req(by_id("nope"), 5)).await,
        Code::NotFound,
        "nope",
    );
    expect(
        c.query(query_req(by_id("first"), 0)).await,
        Code::InvalidArgument,
        "k must be",
    );
    expect(
        c.query(query_req(by_id("first"), 1_000_000)).await,
        Code::InvalidArgument,
        "k must be",
    );
    expect(
        c.query(query_req(None, 5)).await,
        Code::InvalidArgument,
        "missing",
    );
    expect(
        c.query(query_req(Some(ImageRef { source: None }), 5)).await,
        Code::InvalidArgument,
        "missing",
    );
    expect(
        c.query(query_req(
            Some(ImageRef {
                source: Some(Source::Data(vec![1, 2, 3])),
            }),
            5,
        ))
        .await,
        Code::InvalidArgument,
        "decode",
    );
    expect(
        c.get(GetRequest {
            id: "nope".into(),
            include_features: false,
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "nope",
    );
    // Every operation applies Insert's id limit, and no message echoes a
    // long id in full.
    let huge = "x".repeat(1 << 20);
    let get = |id: &str| GetRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let limit = "the limit is 512";
    expect(c.get(get(&huge)).await, Code::InvalidArgument, limit);
    let delete = DeleteRequest { id: huge.clone() };
    expect(c.delete(delete).await, Code::InvalidArgument, limit);
    let by_huge = query_req(by_id(&huge), 5);
    expect(c.query(by_huge).await, Code::InvalidArgument, limit);
    let long = "y".repeat(500);
    let err = c.get(get(&long)).await.expect_err("not stored");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().len() < 120, "{}", err.message());
    expect(
        c.compare(CompareRequest {
            a: by_id("first"),
            b: None,
            max_distance: None,
        })
        .await,
        Code::InvalidArgument,
        "'b' is missing",
    );
    expect(
        c.compare(CompareRequest {
            a: by_id("first"),
            b: by_id("nope"),
            max_distance: None,
        })
        .await,
        Code::NotFound,
        "nope",
    );
    // Over the message limit: RESOURCE_EXHAUSTED.
    expect(
        c.insert(insert_req("big", vec![0u8; 5_000_000])).await,
        Code::ResourceExhausted,
        "too large",
    );
    // A decompression bomb: a small PNG that claims 25 megapixels.
    let bomb = augment::encode_png(&image::RgbImage::new(5000, 5000)).expect("png");
    assert!(bomb.len() < 4_000_000);
    expect(
        c.insert(insert_req("bomb", bomb)).await,
        Code::ResourceExhausted,
        "pixels",
    );

    // Still serving, and nothing bad was stored.
    let s = c.stats(StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(s.count, 1);
    let ok = c
        .query(query_req(data(photo), 1))
        .await
        .expect("query")
        .into_inner();
    assert_eq!(ok.matches[0].id, "first");
    assert!(ok.matches[0].similarity > 0.999);

    // Optional fields: an out-of-range floor is refused, no floor keeps
    // every match, a floor drops those under it.
    let floor = |min_similarity| QueryRequest {
        min_similarity,
        ..query_req(by_id("first"), 5)
    };
    expect(
        c.query(floor(Some(1.5))).await,
        Code::InvalidArgument,
        "min_similarity must be in [-1, 1]",
    );
    c.insert(insert_req("second", read(&photos()[1].1)))
        .await
        .expect("insert second");
    let unfloored = c.query(floor(None)).await.expect("query").into_inner();
    assert_eq!(unfloored.matches.len(), 1, "{unfloored:?}");
    let similarity = unfloored.matches[0].similarity;
    let above = c
        .query(floor(Some((similarity + 0.01).min(1.0))))
        .await
        .expect("query")
        .into_inner();
    assert!(above.matches.is_empty(), "{above:?}");
    // Get returns both stored vectors only when asked.
    let get = |include_features| GetRequest {
        id: "first".into(),
        include_features,
        ..Default::default()
    };
    let bare = c.get(get(false)).await.expect("get").into_inner();
    assert!(
        bare.features.is_empty() && bare.siamese.is_none(),
        "{bare:?}"
    );
    let full = c.get(get(true)).await.expect("get").into_inner();
    assert_eq!(full.features.len() as u32, s.dimensions);
    let siamese = full.siamese.expect("the Siamese embedding").values;
    let norm: f32 = siamese.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(siamese.len() == 128 && (norm - 1.0).abs() < 1e-3, "{norm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_stream_compare_upsert_and_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let mut c = daemon.client().await;
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(daemon.health("").await, ServingStatus::Serving);
    assert_eq!(
        daemon.health("lookalike.v1.Lookalike").await,
        ServingStatus::Serving
    );

    // A stream of 6 with a bad item in the middle: 6 answers, in order.
    let set = photos();
    let mut reqs: Vec<InsertRequest> = set[..5]
        .iter()
        .map(|(n, p)| insert_req(n, read(p)))
        .collect();
    reqs.insert(2, insert_req("broken", b"not an image".to_vec()));
    let expected: Vec<String> = reqs.iter().map(|r| r.id.clone()).collect();
    let got = stream_all(&mut c, reqs).await;
    assert_eq!(
        got.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        expected
    );
    for a in &got {
        match a.id.as_str() {
            "broken" => assert_eq!(
                a.error.as_ref().map(|e| e.code),
                Some(Code::InvalidArgument as i32)
            ),
            _ => assert!(a.error.is_none(), "{a:?}"),
        }
    }
    assert_eq!(
        c.stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner()
            .count,
        5
    );

    // Compare: identical, transformed copy, different photos.
    let (name0, path0) = &set[0];
    let img = image::load_from_memory(&read(path0))
        .expect("decode")
        .into_rgb8();
    let copy = augment::encode_jpeg(&augment::crop(&img, 0.8, 0.5, 0.5), 60).expect("jpeg");
    let same = c
        .compare(CompareRequest {
            a: by_id(name0),
            b: data(read(path0)),
            max_distance: None,
        })
        .await
        .expect("compare")
        .into_inner();
    assert!(same.similarity > 0.999 && same.duplicate, "{same:?}");
    let near = c
        .compare(CompareRequest {
            a: by_id(name0),
            b: data(copy.clone()),
            max_distance: None,
        })
        .await
        .expect("compare")
        .into_inner();
    let far = c
        .compare(CompareRequest {
            a: by_id(name0),
            b: by_id(&set[1].0),
            max_distance: None,
        })
        .await
        .expect("compare")
        .into_inner();
    assert!(
        near.similarity > far.similarity,
        "near {near:?} far {far:?}"
    );
    let back = c
        .compare(CompareRequest {
            a: data(copy),
            b: by_id(name0),
            max_distance: None,
        })
        .await
        .expect("compare")
        .into_inner();
    assert!(
        (back.similarity - near.similarity).abs() < 1e-6,
        "compare must be symmetric"
    );

    // Upsert replaces; the old features stop matching.
    let other = read(&set[10].1);
    let r = c
        .insert(InsertRequest {
            upsert: true,
            ..insert_req(name0, other.clone())
        })
        .await
        .expect("upsert")
        .into_inner();
    assert!(r.replaced);
    let q = c
        .query(query_req(data(other), 1))
        .await
        .expect("query")
        .into_inner();
    assert_eq!(&q.matches[0].id, name0);
    assert_eq!(
        c.stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner()
            .count,
        5
    );

    // Server-assigned ids are content hashes: the same bytes twice collide.
    let bytes = read(&set[11].1);
    let first = c
        .insert(insert_req("", bytes.clone()))
        .await
        .expect("insert")
        .into_inner();
    assert_eq!(first.id.len(), 32);
    let second = c
        .insert(insert_req("", bytes))
        .await
        .expect_err("same content");
    assert_eq!(second.code(), Code::AlreadyExists);

    // A stream's items stored together (one group commit) are answered as
    // if stored one by one: a copy finds the original sent before it, never
    // the other way round, and an id sent twice is stored once.
    let ((n5, p5), (n6, p6)) = (&set[5], &set[6]);
    let again = format!("{n5}-again");
    let reqs = vec![
        insert_req(n5, read(p5)),
        insert_req(&again, read(p5)),
        insert_req(n6, read(p6)),
        insert_req(n6, read(p6)),
    ];
    let got = stream_all(&mut c, reqs).await;
    let duplicates =
        |i: usize| -> Vec<String> { got[i].duplicates.iter().map(|m| m.id.clone()).collect() };
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[..3].iter().all(|a| a.error.is_none()), "{got:?}");
    assert!(!duplicates(0).contains(&again), "{:?}", got[0]);
    assert!(duplicates(1).contains(n5), "{:?}", got[1]);
    assert_eq!(
        got[3].error.as_ref().map(|e| e.code),
        Some(Code::AlreadyExists as i32),
        "{:?}",
        got[3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refuses_another_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    Daemon::start(dir.path(), &[]).await.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model",
            "efficientnet-lite2",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("built with model 'efficientnet-lite0'"),
        "{stderr}"
    );
}
