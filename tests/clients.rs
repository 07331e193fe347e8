//! The client examples in other languages, run against a live daemon with
//! an API key: `examples/python/client.py` (grpcio, stubs generated from our
//! proto) and `examples/node/client.mjs` (@grpc/grpc-js, proto loaded at run
//! time). scripts/setup-test-tools.sh installs grpcio into `.tools/venv` and
//! the Node packages into `examples/node/node_modules`.

mod common;

use std::{path::Path, process::Command};

use common::{photos, Daemon};

const KEY: &str = "python-client-key-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_inserts_queries_and_compares_with_a_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup-test-tools.sh",
        python.display()
    );
    run_example(
        Command::new(&python).arg(root.join("examples/python/client.py")),
        "False",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_inserts_queries_and_compares_with_a_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("examples/node/node_modules/@grpc/grpc-js")
            .exists(),
        "Node packages missing: run scripts/setup-test-tools.sh"
    );
    run_example(
        Command::new("node").arg(root.join("examples/node/client.mjs")),
        "false",
    )
    .await;
}

/// Runs a client example (`client` with its script) against a daemon with
/// a key and checks what it printed; `no` is the language's `false` as
/// printed.
async fn run_example(client: &mut Command, no: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &["--api-key", KEY]).await;
    let set = photos();
    let (a, b) = (&set[0], &set[5]);
    let out = client
        .args(["--server", &daemon.addr.to_string(), "--api-key", KEY])
        .arg(&a.1)
        .arg(&b.1)
        .env_remove("LOOKALIKE_API_KEY")
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |p: &Path| p.file_name().expect("name").to_string_lossy().into_owned();
    let (a_id, b_id) = (file(&a.1), file(&b.1));
    assert!(stdout.contains(&format!("inserted {a_id}")), "{stdout}");
    assert!(stdout.contains(&format!("inserted {b_id}")), "{stdout}");
    let first_match = stdout
        .lines()
        .find(|l| l.starts_with("match "))
        .expect("a match line");
    assert!(
        first_match.starts_with(&format!("match {a_id} similarity 1.0000"))
            || first_match.starts_with(&format!("match {a_id} similarity 0.999")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("compare {a_id} {b_id}: similarity"))
            && stdout.contains(&format!("duplicate {no}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("stats without a key: UNAUTHENTICATED"),
        "{stdout}"
    );
    daemon.stop();
}
