//! What an operator sees, through the real daemon: Prometheus metrics
//! scraped after some calls (request counts and latencies per method and
//! code, embedding, state gauges), and logs: JSON lines with a request line
//! per call at debug level, no colour codes when stderr is not a terminal.

mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use common::{by_id, data, photos, read, Daemon, LoggedServe};
use lookalike::api::proto::{
    lookalike_client::LookalikeClient, GetRequest, InsertRequest, QueryRequest, StatsRequest,
};
use tonic::Code;

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `GET path` over HTTP/1.1: the status line and the body.
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the series whose line starts with `series` (name and
/// labels, as Prometheus writes them).
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_and_show_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(dir.path(), &["--metrics-listen", &listen]).await;
    let mut c = daemon.client().await;
    let set = photos();
    for (name, path) in &set[..3] {
        c.insert(InsertRequest {
            id: name.clone(),
            image: read(path),
            metadata: HashMap::new(),
            upsert: false,
        })
        .await
        .expect("insert");
    }
    c.query(QueryRequest {
        image: data(read(&set[0].1)),
        k: 2,
        min_similarity: None,
        omit_metadata: false,
    })
    .await
    .expect("query");
    c.query(QueryRequest {
        image: by_id(&set[1].0),
        k: 2,
        min_similarity: None,
        omit_metadata: false,
    })
    .await
    .expect("query by id");
    let missing = c
        .get(GetRequest {
            id: "nope".into(),
            include_features: false,
            ..Default::default()
        })
        .await
        .expect_err("missing id");
    assert_eq!(missing.code(), Code::NotFound);

    let (status, metrics) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    let calls = |method: &str, code: &str| {
        value(
            &metrics,
            &format!("lookalike_requests_total{{method=\"{method}\",code=\"{code}\"}}"),
        )
    };
    assert_eq!(calls("Insert", "Ok"), 3.0);
    assert_eq!(calls("Query", "Ok"), 2.0);
    assert_eq!(calls("Get", "NotFound"), 1.0);
    assert_eq!(
        value(
            &metrics,
            "lookalike_request_duration_seconds_count{method=\"Query\",code=\"Ok\"}"
        ),
        2.0
    );
    assert!(metrics.contains(
        "lookalike_request_duration_seconds_bucket{method=\"Insert\",code=\"Ok\",le=\"0.005\"}"
    ));
    // Three inserts and one query by bytes went through the network.
    assert!(value(&metrics, "lookalike_embed_batch_size_sum") >= 4.0);
    assert!(value(&metrics, "lookalike_embed_forward_seconds_count") >= 1.0);
    assert_eq!(value(&metrics, "lookalike_decode_seconds_count"), 4.0);
    assert_eq!(value(&metrics, "lookalike_images"), 3.0);
    assert_eq!(value(&metrics, "lookalike_index_graph"), 0.0);
    assert!(value(&metrics, "lookalike_store_disk_bytes") > 0.0);
    assert_eq!(value(&metrics, "lookalike_inserts_in_flight"), 0.0);

    let (status, _) = http_get(port, "/other");
    assert!(status.contains("404"), "{status}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_a_request_line_per_call_and_text_logs_no_colour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let level = "debug,h2=info,hyper=info,tower=info,sled=info";
    let json = LoggedServe::start(
        "127.0.0.1:0",
        &dir.path().join("a"),
        &["--log-format", "json"],
        level,
    );
    let url = format!("http://{}", json.addr);
    let mut client = loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
        {
            break LookalikeClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let started = Instant::now();
    while client.stats(StatsRequest {}).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = client
        .get(GetRequest {
            id: "some-id".into(),
            include_features: false,
            ..Default::default()
        })
        .await;
    let logs = json.stop();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let call = lines
        .iter()
        .find(|l| l["fields"]["method"] == "Get")
        .unwrap_or_else(|| panic!("no request line for Get in:\n{logs}"));
    assert_eq!(call["fields"]["id"], "some-id", "{call}");
    assert_eq!(call["fields"]["code"], "NotFound", "{call}");
    assert!(call["fields"]["elapsed_ms"].as_f64().is_some(), "{call}");
    assert!(lines.iter().any(|l| l["fields"]["method"] == "Stats"));

    let logs = LoggedServe::start(
        "127.0.0.1:0",
        &dir.path().join("b"),
        &["--log-format", "text"],
        level,
    )
    .stop();
    assert!(logs.contains("serving"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in a piped log:\n{logs}"
    );
}
