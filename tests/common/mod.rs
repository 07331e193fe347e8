//! Shared test harness: runs the real `lookalike` binary on loopback over a
//! real sled directory and talks to it with the generated tonic client.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lookalike::api::proto::{image_ref::Source, lookalike_client::LookalikeClient, ImageRef};
use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

pub type Client = LookalikeClient<Channel>;

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Daemon {
    /// Starts `lookalike serve` on a free port with `extra` flags and waits
    /// (up to two minutes) until health says SERVING.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_waiting(data_dir, extra, Duration::from_secs(120)).await
    }

    /// [`Daemon::start`] with a longer wait, for big databases.
    pub async fn start_waiting(data_dir: &Path, extra: &[&str], wait: Duration) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lookalike"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("LOOKALIKE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars() {
            if key.starts_with("LOOKALIKE_") && key != "LOOKALIKE_LOG" {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().expect("spawn lookalike");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .strip_prefix("lookalike listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .expect("address");
        let daemon = Daemon {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        };
        daemon.wait_serving(wait).await;
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> Client {
        LookalikeClient::new(self.channel().await)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let mut health = HealthClient::new(self.channel().await);
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check");
        resp.into_inner().status()
    }

    async fn wait_serving(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            if self.health("").await == ServingStatus::Serving {
                return;
            }
            assert!(Instant::now() < deadline, "daemon never became SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "daemon exited with {status}");
    }

    /// SIGKILL: a crash, no chance to flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

pub fn by_id(id: &str) -> Option<ImageRef> {
    Some(ImageRef {
        source: Some(Source::Id(id.into())),
    })
}
