//! API keys through the real daemon: every RPC without a key, with a wrong
//! one, with the read-only key and with the full key; keys from files;
//! health open to probes; reflection behind the key (grpcurl); the CLI
//! client's --api-key.

mod common;

use std::{collections::HashMap, path::Path, process::Command};

use common::{photos, read, Daemon};
use lookalike::api::proto::{
    image_ref::Source, lookalike_client::LookalikeClient, CompareRequest, DeleteRequest,
    GetRequest, ImageRef, InsertRequest, QueryRequest, SnapshotRequest, StatsRequest,
};
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, transport::Channel, Code,
    Request, Status,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const FULL: &str = "full-access-key-0123";
const READ: &str = "read-only-key-4567";

/// Adds a header to each call.
type AddHeader = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;

/// A client that sends `header: value` with every call, if given.
type Keyed = LookalikeClient<InterceptedService<Channel, AddHeader>>;

async fn client(daemon: &Daemon, header: Option<(&'static str, String)>) -> Keyed {
    let channel = Channel::from_shared(daemon.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let add: AddHeader = Box::new(move |mut req: Request<()>| {
        if let Some((name, value)) = &header {
            let value: MetadataValue<_> = value.parse().expect("metadata value");
            req.metadata_mut().insert(*name, value);
        }
        Ok(req)
    });
    LookalikeClient::with_interceptor(channel, add).max_encoding_message_size(64 << 20)
}

fn image(path: &Path) -> Option<ImageRef> {
    Some(ImageRef {
        source: Some(Source::Data(read(path))),
    })
}

/// Calls every RPC once; the status code of each (`Ok` as `Code::Ok`), by
/// name. `n` makes the ids unique per caller.
async fn call_each(c: &mut Keyed, n: usize) -> Vec<(&'static str, Code)> {
    let set = photos();
    let code = |r: Result<(), Status>| r.err().map_or(Code::Ok, |s| s.code());
    let id = format!("photo-{n}");
    let insert = InsertRequest {
        id: id.clone(),
        image: read(&set[n % set.len()].1),
        metadata: HashMap::new(),
        upsert: true,
    };
    let mut out = vec![("Insert", code(c.insert(insert.clone()).await.map(|_| ())))];
    let stream = async {
        let mut responses = c
            .insert_stream(tokio_stream::iter(vec![InsertRequest {
                id: format!("{id}-streamed"),
                ..insert.clone()
            }]))
            .await?
            .into_inner();
        while let Some(r) = responses.message().await? {
            assert!(r.error.is_none(), "{r:?}");
        }
        Ok(())
    };
    out.push(("InsertStream", code(stream.await)));
    out.push((
        "Query",
        code(
            c.query(QueryRequest {
                image: image(&set[0].1),
                k: 3,
                min_similarity: None,
                omit_metadata: false,
            })
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "Compare",
        code(
            c.compare(CompareRequest {
                a: image(&set[0].1),
                b: image(&set[1].1),
                max_distance: None,
            })
            .await
            .map(|_| ()),
        ),
    ));
    out.push((
        "Get",
        code(
            c.get(GetRequest {
                id: "seed".into(),
                include_features: false,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        ),
    ));
    out.push(("Stats", code(c.stats(StatsRequest {}).await.map(|_| ()))));
    out.push((
        "Delete",
        code(c.delete(DeleteRequest { id }).await.map(|_| ())),
    ));
    let snapshot = async {
        let mut chunks = c.snapshot(SnapshotRequest {}).await?.into_inner();
        while chunks.message().await?.is_some() {}
        Ok(())
    };
    out.push(("Snapshot", code(snapshot.await)));
    out
}

fn expect_codes(got: &[(&str, Code)], want: impl Fn(&str) -> Code, who: &str) {
    for (rpc, code) in got {
        assert_eq!(*code, want(rpc), "{who} calling {rpc}: {got:?}");
    }
}

fn is_write(rpc: &str) -> bool {
    matches!(rpc, "Insert" | "InsertStream" | "Delete" | "Snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("read-only.key");
    // A trailing newline, as `echo KEY > file` or a mounted secret leaves.
    std::fs::write(&key_file, format!("{READ}\n")).expect("key file");
    let data = dir.path().join("data");
    let key_path = key_file.to_string_lossy().into_owned();
    let daemon = Daemon::start(
        &data,
        &["--api-key", FULL, "--read-only-api-key-file", &key_path],
    )
    .await;
    let bearer = |key: &str| Some(("authorization", format!("Bearer {key}")));

    let mut full = client(&daemon, bearer(FULL)).await;
    full.insert(InsertRequest {
        id: "seed".into(),
        image: read(&photos()[2].1),
        metadata: HashMap::new(),
        upsert: false,
    })
    .await
    .expect("the full key inserts");
    let got = call_each(&mut full, 1).await;
    expect_codes(&got, |_| Code::Ok, "the full key");

    let mut x_api_key = client(&daemon, Some(("x-api-key", FULL.to_string()))).await;
    expect_codes(
        &call_each(&mut x_api_key, 2).await,
        |_| Code::Ok,
        "x-api-key",
    );

    let mut read_only = client(&daemon, bearer(READ)).await;
    let want = |rpc: &str| {
        if is_write(rpc) {
            Code::PermissionDenied
        } else {
            Code::Ok
        }
    };
    expect_codes(
        &call_each(&mut read_only, 3).await,
        want,
        "the read-only key",
    );

    for (who, header) in [
        ("no key", None),
        ("a wrong key", bearer("wrong-key")),
        ("a near miss", bearer(&FULL[..FULL.len() - 1])),
        (
            "the key without Bearer",
            Some(("authorization", FULL.to_string())),
        ),
    ] {
        let mut c = client(&daemon, header).await;
        expect_codes(&call_each(&mut c, 4).await, |_| Code::Unauthenticated, who);
    }

    // Nothing the refused calls tried was stored: the seed and the full
    // key's two callers' streamed copies (their plain inserts were deleted).
    let stats = full
        .stats(StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count, 3, "{stats:?}");

    // Health stays open to probes.
    let channel = Channel::from_shared(daemon.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a key");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_the_cli_follow_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &["--api-key", FULL]).await;
    let addr = daemon.addr.to_string();
    let grpcurl = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let list = |extra: &[&str]| {
        Command::new(&grpcurl)
            .args(["-plaintext"])
            .args(extra)
            .args([addr.as_str(), "list"])
            .output()
            .expect("grpcurl")
    };
    let refused = list(&[]);
    assert!(
        !refused.status.success(),
        "reflection answered without a key"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let header = format!("authorization: Bearer {FULL}");
    let listed = list(&["-H", &header]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("lookalike.v1.Lookalike"));

    let cli = |key: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lookalike"));
        cmd.env_remove("LOOKALIKE_API_KEY")
            .args(["stats", "--server", &daemon.url()]);
        if let Some(key) = key {
            cmd.args(["--api-key", key]);
        }
        cmd.output().expect("lookalike stats")
    };
    let without = cli(None);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("needs an API key"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    // `lookalike health` (the container health check) needs no key.
    let health = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .env_remove("LOOKALIKE_API_KEY")
        .args(["health", "--server", &daemon.url()])
        .output()
        .expect("lookalike health");
    assert!(health.status.success(), "{health:?}");
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "SERVING");
    let with = cli(Some(FULL));
    assert!(with.status.success(), "{with:?}");
    assert!(String::from_utf8_lossy(&with.stdout).contains("images"));
    daemon.stop();
}

/// The log of a daemon started on `listen` with `extra` flags and stopped
/// once it has printed its address.
fn start_log(listen: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    common::LoggedServe::start(listen, dir.path(), extra, "warn").stop()
}

#[test]
fn listening_beyond_loopback_without_a_key_warns() {
    let warning = "without an API key";
    let open = start_log("0.0.0.0:0", &[]);
    assert!(open.contains(warning), "no warning:\n{open}");
    assert!(!start_log("0.0.0.0:0", &["--api-key", FULL]).contains(warning));
    assert!(!start_log("127.0.0.1:0", &[]).contains(warning));
}
