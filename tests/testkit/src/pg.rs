//! A fresh, migrated PostgreSQL database per test.
//!
//! Which server: `TOLLGATE_TEST_DATABASE_URL` (set by `scripts/test.sh`) if present;
//! otherwise one private cluster per test process, started on first use through
//! `scripts/pg.sh` (which handles initdb, trust auth on 127.0.0.1 and running as
//! the `postgres` OS user when we are root) in `.tollgate/test-clusters/pg-*`.
//! A detached reaper shell destroys that cluster once this process has exited,
//! however it exits. Each call makes a new database `tg_test_<uuid>` and applies
//! the migrations found at run time in the top-level `migrations/` folder (loaded
//! with `Migrator::new`, not `migrate!`, so this crate compiles whatever the folder
//! holds; a missing or empty folder means no migrations). Databases are not
//! dropped: the cluster is throw-away.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection as _;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::ports::try_free_port;
use crate::repo_root;

/// Environment variable naming an already running server (its maintenance database).
pub const DATABASE_URL_ENV: &str = "TOLLGATE_TEST_DATABASE_URL";
/// Optional override for where private clusters are created.
pub const CLUSTER_DIR_ENV: &str = "TOLLGATE_TEST_CLUSTER_DIR";
/// Connections per [`TestDb::pool`].
pub const POOL_MAX_CONNECTIONS: u32 = 20;

/// A throw-away database with all migrations applied.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// `postgres://…/tg_test_<uuid>`.
    pub url: String,
    pub pool: PgPool,
    /// The database name, `tg_test_<uuid>`.
    pub name: String,
}

impl TestDb {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Creates a new database on the test server, migrates it and returns a pool for it.
pub async fn fresh_database() -> anyhow::Result<TestDb> {
    let server = server_url().await?;
    let name = format!("tg_test_{}", Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&server)
        .await
        .with_context(|| format!("connecting to the test server {server}"))?;
    sqlx::raw_sql(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    admin
        .close()
        .await
        .context("closing the admin connection")?;

    let url = with_database(&server, &name);
    let pool = PgPoolOptions::new()
        .max_connections(POOL_MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    migrator()
        .await?
        .run(&pool)
        .await
        .with_context(|| format!("migrating {name}"))?;
    Ok(TestDb { url, pool, name })
}

/// Every row of `table` as text (`table: (col, col, …)`), ordered by
/// `order_by`: for comparing whole tables, column for column.
pub async fn rows_as_text(
    pool: &PgPool,
    table: &str,
    order_by: &str,
) -> anyhow::Result<Vec<String>> {
    let sql =
        format!("SELECT '{table}: ' || t::text FROM (SELECT * FROM {table} ORDER BY {order_by}) t");
    sqlx::query_scalar::<_, String>(&sql)
        .fetch_all(pool)
        .await
        .with_context(|| format!("reading {table}"))
}

/// Every row of every projection table (`reservations`, `account_balances`,
/// `usage_counters`) as text, in key order: what replay equality compares.
pub async fn projection_rows(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for (table, key) in [
        ("reservations", "project_id, reservation_id"),
        ("account_balances", "project_id, account_token, unit"),
        (
            "usage_counters",
            "project_id, account_token, window_kind, period_start, unit, model",
        ),
    ] {
        rows.extend(rows_as_text(pool, table, key).await?);
    }
    Ok(rows)
}

/// URL of the test server's maintenance database: `TOLLGATE_TEST_DATABASE_URL`,
/// or the private cluster of this process (started on first call).
pub async fn server_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
        if !url.trim().is_empty() {
            return Ok(url);
        }
    }
    // Tests run on many runtimes; only the URL is shared (never a pool, whose
    // tasks belong to the runtime that made it). A failure is kept, not retried
    // by every test.
    static PRIVATE: OnceCell<Result<String, String>> = OnceCell::const_new();
    PRIVATE
        .get_or_init(|| async { start_private_cluster().await.map_err(|e| format!("{e:#}")) })
        .await
        .clone()
        .map_err(|e| anyhow!("private PostgreSQL cluster unavailable: {e}"))
}

/// The top-level `migrations/` folder.
pub fn migrations_dir() -> PathBuf {
    repo_root().join("migrations")
}

/// Migrations loaded at run time from [`migrations_dir`]; none if it does not exist
/// (git does not keep empty folders).
pub async fn migrator() -> anyhow::Result<Migrator> {
    let dir = migrations_dir();
    if dir.is_dir() {
        return Migrator::new(dir.clone())
            .await
            .with_context(|| format!("loading migrations from {}", dir.display()));
    }
    let empty = tempfile::tempdir().context("creating an empty migrations dir")?;
    Migrator::new(empty.path())
        .await
        .context("loading no migrations")
}

/// Replaces the database (path) of a `postgres://` URL, keeping any query string.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn start_private_cluster() -> anyhow::Result<String> {
    let root = repo_root();
    let script = root.join("scripts").join("pg.sh");
    let base = std::env::var_os(CLUSTER_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tollgate").join("test-clusters"));
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("pg-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a cluster dir in {}", base.display()))?
        .keep();
    // tempdir is 0700; as root, scripts/pg.sh needs the postgres user to reach it.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.display()))?;
    }
    spawn_reaper(&script, &dir)?;

    let mut last_error = String::new();
    for _ in 0..3 {
        let port = try_free_port().context("finding a free port for PostgreSQL")?;
        let output = tokio::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if output.status.success() {
            return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
        }
        last_error = String::from_utf8_lossy(&output.stderr).into_owned();
    }
    Err(anyhow!(
        "scripts/pg.sh start {} failed (run scripts/deps.sh if PostgreSQL is missing): {last_error}",
        dir.display()
    ))
}

/// A detached shell, in its own process group (so a Ctrl-C aimed at the tests does
/// not reach it), that waits for this process to exit and then destroys the cluster.
fn spawn_reaper(script: &Path, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    const REAPER: &str =
        r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec bash "$2" destroy "$3""#;
    std::process::Command::new("sh")
        .arg("-c")
        .arg(REAPER)
        .arg("tollgate-pg-reaper")
        .arg(std::process::id().to_string())
        .arg(script)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawning the cluster reaper")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_path() {
        let base = "postgres://postgres@127.0.0.1:5432/postgres";
        assert_eq!(
            with_database(base, "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/db?sslmode=disable", "y"),
            "postgres://u:p@h:1/y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "z"), "postgres://h:1/z");
        assert_eq!(
            with_database("postgres://h:1/?a=b", "z"),
            "postgres://h:1/z?a=b"
        );
    }
}
