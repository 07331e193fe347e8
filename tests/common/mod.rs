//! Shared test harness: runs the real `lookalike` binary on loopback over a
//! real sled directory and talks to it with the generated tonic client.

#![allow(dead_code)]

pub mod crash;
pub mod stress;
pub mod watchdog;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use lookalike::api::proto::{image_ref::Source, lookalike_client::LookalikeClient, ImageRef};
use lookalike::lab::child::ChildDaemon;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

pub type Client = LookalikeClient<Channel>;

/// A running daemon; killed when dropped.
pub struct Daemon {
    inner: ChildDaemon,
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts `lookalike serve` on a free port with `extra` flags and waits
    /// (up to two minutes) until health says SERVING.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_waiting(data_dir, extra, Duration::from_secs(120)).await
    }

    /// [`Daemon::start`] with a longer wait, for big databases.
    pub async fn start_waiting(data_dir: &Path, extra: &[&str], wait: Duration) -> Daemon {
        // LOOKALIKE_BIN runs another build instead (a "before", for A/B).
        let other = std::env::var_os("LOOKALIKE_BIN").map(PathBuf::from);
        let binary = other
            .as_deref()
            .unwrap_or(Path::new(env!("CARGO_BIN_EXE_lookalike")));
        let inner = ChildDaemon::start(binary, data_dir, extra, wait)
            .await
            .expect("start lookalike");
        Daemon {
            addr: inner.addr(),
            inner,
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    pub async fn client(&self) -> Client {
        LookalikeClient::new(self.inner.channel().await.expect("connect"))
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        self.inner.health(service).await.expect("health check")
    }

    /// SIGTERM and wait: a clean shutdown, which must exit 0.
    pub fn stop(self) {
        assert!(
            self.inner.stop().expect("stop"),
            "daemon exited with an error"
        );
    }

    /// Sends a signal (`TERM`, `INT`) without waiting.
    pub fn signal(&self, signal: &str) {
        self.inner.signal(signal).expect("signal the daemon");
    }

    /// Its exit status once it exits within `wait`, else `None`.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        self.inner.wait_exit(wait).expect("wait for the daemon")
    }

    /// SIGKILL: a crash, no chance to flush.
    pub fn kill9(self) {
        self.inner.kill();
    }
}

/// A count from the environment variable `name`, else `default`
/// (benchmark and stress sizes).
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// Peak resident memory of process `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A kB field of `/proc/PID/status`, in MiB (NaN if unreadable).
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The sizes a bench runs at: `BENCH_SIZES` (comma-separated), else `default`.
pub fn bench_sizes(default: &str) -> Vec<usize> {
    std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Waits up to `wait` until the index holds exactly what the store does
/// (its points less its tombstones equal the count), asserting on every
/// poll that Stats counts `stored` images; `tick` runs once per poll (a
/// watchdog's counter).
pub async fn index_matches_store(
    client: &mut Client,
    stored: usize,
    wait: Duration,
    mut tick: impl FnMut(),
) {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let s = client
            .stats(lookalike::api::proto::StatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        assert_eq!(s.count as usize, stored, "Stats disagrees: {s:?}");
        if s.index_size - s.index_tombstones == s.count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the index never matched the store: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        tick();
    }
}

/// The committed test photos, sorted by name.
pub fn photos() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("tests/data")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .map(|p| {
            (
                p.file_stem().expect("stem").to_string_lossy().into_owned(),
                p,
            )
        })
        .collect();
    out.sort();
    out
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn data(bytes: Vec<u8>) -> Option<ImageRef> {
    Some(ImageRef {
        source: Some(Source::Data(bytes)),
    })
}

/// Query by stored id, k = 10, all matches; panics on error (tests, benches).
pub async fn query_by_id(client: &mut Client, id: &str) {
    client
        .query(lookalike::api::proto::QueryRequest {
            image: by_id(id),
            k: 10,
            min_similarity: None,
            omit_metadata: false,
        })
        .await
        .expect("query by id");
}

/// The matches of a query (metadata left out); panics on error.
pub async fn matches(
    client: &mut Client,
    image: Option<ImageRef>,
    k: u32,
) -> Vec<lookalike::api::proto::Match> {
    client
        .query(lookalike::api::proto::QueryRequest {
            image,
            k,
            min_similarity: None,
            omit_metadata: true,
        })
        .await
        .expect("query")
        .into_inner()
        .matches
}

pub fn by_id(id: &str) -> Option<ImageRef> {
    Some(ImageRef {
        source: Some(Source::Id(id.into())),
    })
}

/// A `lookalike serve` whose log (stderr) the test reads, unlike [`Daemon`].
pub struct LoggedServe {
    child: std::process::Child,
    /// `host:port` it printed.
    pub addr: String,
}

impl LoggedServe {
    /// Starts `lookalike serve --listen LISTEN --data-dir DIR EXTRA...` at log
    /// level `log`, with no key or log format from this process's
    /// environment, and waits for the address it prints.
    pub fn start(listen: &str, data_dir: &Path, extra: &[&str], log: &str) -> LoggedServe {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lookalike"))
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("LOOKALIKE_LOG", log)
            .env_remove("LOOKALIKE_LOG_FORMAT")
            .env_remove("LOOKALIKE_API_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start lookalike");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let addr = line
            .trim()
            .strip_prefix(lookalike::server::LISTENING)
            .expect("listening line")
            .to_string();
        LoggedServe { child, addr }
    }

    /// SIGTERM; its whole log, once it exited 0.
    pub fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let (log, status) = self.log_and_exit();
        assert!(status.success(), "{log}");
        log
    }

    /// SIGKILL (a crash: nothing saved); its whole log.
    pub fn kill9(mut self) -> String {
        self.child.kill().expect("kill -9");
        self.log_and_exit().0
    }

    /// Its whole log and exit status, once it exited.
    fn log_and_exit(&mut self) -> (String, std::process::ExitStatus) {
        use std::io::Read;
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut log)
            .expect("log");
        (log, self.child.wait().expect("exit"))
    }
}

/// A test that fails before [`LoggedServe::stop`] must not leave the daemon
/// running.
impl Drop for LoggedServe {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
