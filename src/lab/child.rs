//! A lookalike daemon run as a child process.
//!
//! `lookalike eval` measures a private daemon of its own, and the
//! end-to-end tests and benchmarks drive the real binary the same way: start
//! `lookalike serve` on a free loopback port over a given data folder, learn
//! the port from its first line of output, and wait until health says
//! SERVING. The child is killed if the handle is dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::error::{Error, Result};
use crate::server::LISTENING;

/// A running child daemon.
pub struct ChildDaemon {
    child: Child,
    addr: SocketAddr,
    /// How to reach it when it serves TLS.
    tls: Option<ClientTlsConfig>,
}

impl ChildDaemon {
    /// Starts `binary serve --listen 127.0.0.1:0 --data-dir DIR EXTRA...`
    /// (with `LOOKALIKE_*` settings of this process removed, so only `extra`
    /// configures it) and waits up to `wait` for SERVING.
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        extra: &[&str],
        wait: Duration,
    ) -> Result<Self> {
        Self::start_with_tls(binary, data_dir, extra, wait, None).await
    }

    /// [`ChildDaemon::start`] for a daemon that serves TLS (its `extra`
    /// flags say so): connections use `tls`.
    pub async fn start_with_tls(
        binary: &Path,
        data_dir: &Path,
        extra: &[&str],
        wait: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::Internal(format!("{what} '{}': {e}", binary.display()))
        };
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("LOOKALIKE_") && key != "LOOKALIKE_LOG" {
                cmd.env_remove(key);
            }
        }
        if std::env::var_os("LOOKALIKE_LOG").is_none() {
            cmd.env("LOOKALIKE_LOG", "warn");
        }
        let mut child = cmd.spawn().map_err(|e| fail("cannot start", &e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout from", &"pipe missing"))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| fail("cannot read from", &e))?;
        let addr = line
            .trim()
            .strip_prefix(LISTENING)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| fail("unexpected first line from", &format!("{line:?}")))?;
        let daemon = ChildDaemon { child, addr, tls };
        daemon.wait_serving(wait).await?;
        Ok(daemon)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new connection to the daemon.
    pub async fn channel(&self) -> Result<Channel> {
        let mut endpoint =
            Channel::from_shared(self.url()).map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| Error::Internal(format!("TLS settings: {e}")))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to {}: {e}", self.addr)))
    }

    /// The health status of `service` ("" for the whole server).
    pub async fn health(&self, service: &str) -> Result<ServingStatus> {
        let resp = HealthClient::new(self.channel().await?)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_err(|e| Error::Unavailable(format!("health check: {e}")))?;
        Ok(resp.into_inner().status())
    }

    async fn wait_serving(&self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            if matches!(self.health("").await, Ok(ServingStatus::Serving)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "daemon at {} not SERVING after {wait:?}",
                    self.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits: a clean shutdown. Returns whether it exited 0.
    pub fn stop(mut self) -> Result<bool> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| Error::Internal(format!("cannot signal the daemon: {e}")))?;
        let status = self
            .child
            .wait()
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(status.success())
    }

    /// Sends `signal` (a `kill` name: `TERM`, `INT`) and returns at once.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .map_err(|e| Error::Internal(format!("cannot signal the daemon: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Internal(format!("kill -{signal} failed: {status}")))
        }
    }

    /// Waits up to `wait` for the daemon to exit: its exit status, or
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, wait: Duration) -> Result<Option<std::process::ExitStatus>> {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| Error::Internal(e.to_string()))?
            {
                return Ok(Some(status));
            }
            if started.elapsed() >= wait {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash, with no chance to flush or save.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
