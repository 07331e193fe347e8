//! Graceful stop through the real daemon: SIGTERM during a busy
//! InsertStream and during an idle one ends the stream with UNAVAILABLE,
//! stores nothing that was not acknowledged, exits 0 within the timeout,
//! and every acknowledged insert is there after a restart; health turns
//! NOT_SERVING at once; a second signal exits at once.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use common::{photos, read, Client, Daemon};
use lookalike::api::proto::{GetRequest, InsertRequest, InsertResponse, StatsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

fn item(i: usize, images: &[Vec<u8>]) -> InsertRequest {
    InsertRequest {
        id: format!("item-{i:05}"),
        image: images[i % images.len()].clone(),
        metadata: HashMap::new(),
        upsert: false,
    }
}

/// An InsertStream fed from the returned sender.
async fn open_stream(c: &mut Client) -> (mpsc::Sender<InsertRequest>, Streaming<InsertResponse>) {
    let (tx, rx) = mpsc::channel(8);
    let responses = c
        .insert_stream(ReceiverStream::new(rx))
        .await
        .expect("open stream")
        .into_inner();
    (tx, responses)
}

fn committed_photos() -> Vec<Vec<u8>> {
    photos().iter().map(|(_, path)| read(path)).collect()
}

/// The next acknowledgement of a stream, which must not be an item error.
async fn next_ack(responses: &mut Streaming<InsertResponse>) -> String {
    let r = responses
        .message()
        .await
        .expect("stream answers")
        .expect("stream still open");
    assert!(r.error.is_none(), "{r:?}");
    r.id
}

/// Reads acknowledgements into `acked` until the stream ends; the status
/// it ended with (a clean end is `None`).
async fn drain(
    responses: &mut Streaming<InsertResponse>,
    acked: &mut Vec<String>,
) -> Option<tonic::Status> {
    loop {
        match responses.message().await {
            Ok(Some(r)) => {
                assert!(r.error.is_none(), "{r:?}");
                acked.push(r.id);
            }
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

/// Restarts on the same folder and checks the store holds exactly `acked`.
async fn holds_exactly(dir: &std::path::Path, acked: &[String]) {
    let daemon = Daemon::start(dir, &[]).await;
    let mut c: Client = daemon.client().await;
    let stats = c.stats(StatsRequest {}).await.expect("stats").into_inner();
    let unique: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "an id acknowledged twice");
    assert_eq!(
        stats.count as usize,
        acked.len(),
        "stored images differ from the acknowledged ones"
    );
    for id in acked {
        c.get(GetRequest {
            id: id.clone(),
            include_features: false,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("acknowledged {id} lost: {s:?}"));
    }
    daemon.stop();
}

fn assert_stopping(status: Option<tonic::Status>) {
    let status = status.expect("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_busy_stream_keeps_every_acknowledged_insert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), &["--shutdown-timeout", "30"]).await;
    let mut c = daemon.client().await;
    let images = committed_photos();
    let (tx, mut responses) = open_stream(&mut c).await;
    // The client keeps sending for as long as the server reads.
    let feeder = tokio::spawn(async move {
        for i in 0..5000 {
            if tx.send(item(i, &images)).await.is_err() {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 20 {
        acked.push(next_ack(&mut responses).await);
    }
    daemon.signal("TERM");
    let signalled = Instant::now();
    let before = acked.len();
    assert_stopping(drain(&mut responses, &mut acked).await);
    let status = daemon
        .wait_exit(Duration::from_secs(40))
        .expect("the daemon exits within its shutdown timeout");
    assert!(status.success(), "{status:?}");
    eprintln!(
        "busy stream: {before} acknowledged before SIGTERM, {} after (in flight), exit after {:.2} s",
        acked.len() - before,
        signalled.elapsed().as_secs_f64()
    );
    feeder.abort();
    holds_exactly(dir.path(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_does_not_hold_off_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A timeout far above the bound checked below: an idle stream that held
    // the stop would show.
    let mut daemon = Daemon::start(dir.path(), &["--shutdown-timeout", "120"]).await;
    let mut c = daemon.client().await;
    let images = committed_photos();
    let (tx, mut responses) = open_stream(&mut c).await;
    let mut acked = Vec::new();
    for i in 0..3 {
        tx.send(item(i, &images)).await.expect("send");
        acked.push(next_ack(&mut responses).await);
    }
    // Idle: the sender stays open, nothing more is sent.
    daemon.signal("TERM");
    let signalled = Instant::now();
    assert_stopping(drain(&mut responses, &mut acked).await);
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("an idle stream held off SIGTERM");
    assert!(status.success(), "{status:?}");
    eprintln!(
        "idle stream: exit {:.2} s after SIGTERM",
        signalled.elapsed().as_secs_f64()
    );
    // Sent after the signal: never stored (the check below counts).
    let _ = tx.send(item(3, &images)).await;
    drop(tx);
    assert_eq!(acked.len(), 3);
    holds_exactly(dir.path(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_at_once_and_a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), &["--shutdown-timeout", "120"]).await;
    let mut c = daemon.client().await;
    let images = committed_photos();
    let acked: Vec<String> = (0..2).map(|i| format!("item-{i:05}")).collect();
    for i in 0..2 {
        c.insert(item(i, &images)).await.expect("insert");
    }
    // A Health Watch stream never ends by itself: it holds a graceful stop
    // open until the timeout, which is what a second signal is for.
    let channel = tonic::transport::Channel::from_shared(daemon.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("watch").expect("status");
    assert_eq!(first.status(), ServingStatus::Serving);
    daemon.signal("TERM");
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("health changes within 5 s of SIGTERM")
        .expect("watch")
        .expect("status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert!(
        daemon.wait_exit(Duration::from_secs(2)).is_none(),
        "the Watch stream should hold the graceful stop open"
    );
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("a second signal exits at once");
    assert_eq!(status.code(), Some(130), "{status:?}");
    drop(watch);
    holds_exactly(dir.path(), &acked).await;
}

/// A supervisor may signal the daemon as soon as it prints its address: the
/// signal handlers are in place by then, so the stop is clean (exit 0),
/// never the default action's kill (the old binary died in 13 of 30 tries).
#[test]
fn a_sigterm_right_after_start_stops_cleanly() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().expect("tempdir");
        common::LoggedServe::start("127.0.0.1:0", dir.path(), &[], "warn").stop();
    }
}
