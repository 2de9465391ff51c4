//! `tollgate up`'s zero-configuration bootstrap: when `NATS_URL` or
//! `DATABASE_URL` is unset, start a private nats-server (JetStream) and a
//! private PostgreSQL with their data under `./.tollgate/`, installing them
//! with the system package manager when missing and possible (or printing
//! the exact command), and stop them again on shutdown.
//!
//! The start/stop logic is the project's own shell scripts, embedded in the
//! binary so it works from any directory; they are the same scripts the test
//! command uses, so there is one implementation of "run PostgreSQL as root".

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use tokio::process::Command;

const DEPS_SH: &str = include_str!("../scripts/deps.sh");
const PG_SH: &str = include_str!("../scripts/pg.sh");
const NATS_SH: &str = include_str!("../scripts/nats.sh");

/// What `tollgate up` uses, and what it must stop.
pub struct Local {
    pub nats_url: String,
    pub database_url: String,
    base: PathBuf,
    started_nats: bool,
    started_pg: bool,
}

fn base_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_dir()
        .context("current directory")?
        .join(".tollgate"))
}

async fn script(base: &Path, name: &str, text: &str, args: &[&str]) -> anyhow::Result<()> {
    let bin = base.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let path = bin.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let status = Command::new("bash")
        .arg(&path)
        .args(args)
        .status()
        .await
        .with_context(|| format!("running {name}"))?;
    if !status.success() {
        anyhow::bail!(
            "{name} {} failed ({status}); see the message above",
            args.join(" ")
        );
    }
    Ok(())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn pick_port(preferred: u16) -> anyhow::Result<u16> {
    if port_free(preferred) {
        return Ok(preferred);
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts what is not configured; returns the URLs to use.
pub async fn start(
    nats_url: Option<String>,
    database_url: Option<String>,
) -> anyhow::Result<Local> {
    let base = base_dir()?;
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    if nats_url.is_none() || database_url.is_none() {
        script(&base, "deps.sh", DEPS_SH, &[]).await?;
    }
    let mut local = Local {
        nats_url: String::new(),
        database_url: String::new(),
        base: base.clone(),
        started_nats: false,
        started_pg: false,
    };
    local.nats_url = match nats_url {
        Some(url) => url,
        None => {
            let port = pick_port(4222)?;
            let dir = base.join("nats");
            script(
                &base,
                "nats.sh",
                NATS_SH,
                &["start", &dir.to_string_lossy(), &port.to_string()],
            )
            .await?;
            local.started_nats = true;
            tracing::info!(port, store = %dir.display(), "started nats-server with JetStream");
            format!("nats://127.0.0.1:{port}")
        }
    };
    // What fails from here on stops the nats-server started above.
    let rest = async {
        local.database_url = match database_url {
            Some(url) => url,
            None => {
                let port = pick_port(54329)?;
                let dir = base.join("pg");
                script(
                    &base,
                    "pg.sh",
                    PG_SH,
                    &["start", &dir.to_string_lossy(), &port.to_string()],
                )
                .await?;
                local.started_pg = true;
                tracing::info!(port, data = %dir.display(), "started PostgreSQL");
                format!("postgres://postgres@127.0.0.1:{port}/postgres")
            }
        };
        let urls = serde_json::json!({"nats_url": local.nats_url, "database_url": local.database_url, "pid": std::process::id()});
        std::fs::write(base.join("urls.json"), urls.to_string())
            .context("writing .tollgate/urls.json")
    }
    .await;
    match rest {
        Ok(()) => Ok(local),
        Err(e) => {
            local.stop().await;
            Err(e)
        }
    }
}

impl Local {
    /// Stops what `start` started.
    pub async fn stop(self) {
        let _ = std::fs::remove_file(self.base.join("urls.json"));
        if self.started_pg {
            let dir = self.base.join("pg");
            if let Err(e) = script(
                &self.base,
                "pg.sh",
                PG_SH,
                &["stop", &dir.to_string_lossy()],
            )
            .await
            {
                tracing::warn!(error = %e, "stopping PostgreSQL");
            }
        }
        if self.started_nats {
            let dir = self.base.join("nats");
            if let Err(e) = script(
                &self.base,
                "nats.sh",
                NATS_SH,
                &["stop", &dir.to_string_lossy()],
            )
            .await
            {
                tracing::warn!(error = %e, "stopping nats-server");
            }
        }
    }
}

/// The URLs of a `tollgate up` running from this directory, if any, so
/// other commands need no configuration either.
pub fn running_urls() -> Option<(String, String)> {
    let text = std::fs::read_to_string(base_dir().ok()?.join("urls.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = v["pid"].as_u64()?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    Some((
        v["nats_url"].as_str()?.to_owned(),
        v["database_url"].as_str()?.to_owned(),
    ))
}
