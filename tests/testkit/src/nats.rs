//! One private `nats-server` with JetStream per test.
//!
//! The server listens on 127.0.0.1 on a free port and stores JetStream data in a
//! temporary directory that lives as long as the [`NatsServer`]. `stop` kills it
//! with SIGKILL (a crash, not a clean shutdown); `restart` brings it back on the
//! same port with the same store, so tests can check what survives a crash.
//! Dropping the handle kills the process. Readiness means "JetStream answers",
//! checked in a bounded polling loop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use crate::ports::try_free_port;

/// How long a (re)started server may take to answer JetStream requests.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried by [`NatsServer::start`] when the chosen one was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// A running (or stopped) nats-server owned by one test.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    /// Holds `js/` (the JetStream store) and `nats.log`; removed on drop.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server on a free port and waits until JetStream answers.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let bin = nats_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-nats-")
            .tempdir()
            .context("creating the nats-server store dir")?;
        let mut server = NatsServer {
            child: None,
            port: 0,
            bin,
            dir,
        };
        let mut last_error = anyhow!("no attempt made");
        for _ in 0..START_ATTEMPTS {
            server.port = try_free_port().context("finding a free port for nats-server")?;
            match server.spawn_and_wait(Instant::now() + READY_TIMEOUT).await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last_error = e;
                    server.kill().await;
                }
            }
        }
        Err(last_error.context(format!(
            "nats-server did not start on any of {START_ATTEMPTS} ports"
        )))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The TCP port, stable across [`NatsServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// The server's combined stdout/stderr, useful when a test fails.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// A client connected to this server.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .with_context(|| format!("connecting to {}", self.url()))
    }

    /// Kills the server with SIGKILL and waits for it to exit. No-op when stopped.
    pub async fn stop(&mut self) {
        self.kill().await;
    }

    /// Stops the server if running, then starts it again on the same port with the
    /// same store and waits until JetStream answers (streams are recovered by then).
    /// The old port may be briefly unavailable, so a failed bind is retried until
    /// the ready timeout.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait(deadline).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("restarting nats-server on port {}", self.port)))
                }
                Err(_) => {
                    self.kill().await;
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn spawn_and_wait(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening nats.log")?;
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store_dir())
            .env("GOMAXPROCS", gomaxprocs())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the nats.log handle")?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready(deadline).await
    }

    async fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling nats-server")? {
                    self.child = None;
                    bail!(
                        "nats-server exited with {status} on port {}; log:\n{}",
                        self.port,
                        self.log_tail()
                    );
                }
            }
            if self.jetstream_answers().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nats-server on port {} not ready in time; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    async fn jetstream_answers(&self) -> bool {
        if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            return false;
        }
        let check = async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(1))
                .connect(self.url())
                .await
                .ok()?;
            // A raw account-info request: any reply means JetStream is serving.
            // (`Context::query_account` cannot decode nats-server 2.9's reply.)
            let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
            Some(!reply.payload.is_empty())
        };
        matches!(timeout(Duration::from_secs(2), check).await, Ok(Some(true)))
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine; either way wait() reaps it.
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            // Give the kernel a moment to tear the process down before the store
            // dir is removed; bounded, and usually done after the first check.
            for _ in 0..50 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// `TOLLGATE_NATS_SERVER_BIN`, else `nats-server` on `PATH`, else `/usr/sbin/nats-server`.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TOLLGATE_NATS_SERVER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            anyhow!("nats-server not found (TOLLGATE_NATS_SERVER_BIN, PATH, /usr/sbin): run scripts/deps.sh")
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// GOMAXPROCS for a nats-server started here: the environment's, else half the
/// cores, at least one, as `scripts/nats.sh` does for `tollgate up` (the reason
/// is written there). Tests and benches share the cores with the server.
fn gomaxprocs() -> String {
    if let Some(set) = std::env::var("GOMAXPROCS").ok().filter(|v| !v.is_empty()) {
        return set;
    }
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    (cores / 2).max(1).to_string()
}
