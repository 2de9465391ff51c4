//! Helpers for tests that run `tollgate serve` as real child processes
//! against one private nats-server and one fresh PostgreSQL database.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::{anyhow, bail, Context as _};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use ledger::control::NewProject;
use rust_decimal::Decimal;
use schemas::events::{Envelope, Event};
use schemas::{subjects, Account};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use testkit::nats::NatsServer;
use testkit::pg::TestDb;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use uuid::Uuid;

/// How long a spawned ingest process may take to answer `GET /healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `tollgate serve --only …` child process. Killed (SIGKILL) on drop.
pub struct Proc {
    child: Child,
    /// `http://127.0.0.1:PORT` (meaningful for ingest).
    pub base: String,
    log: PathBuf,
}

impl Proc {
    /// SIGKILL: a crash, not a clean shutdown. Waits until the process is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The last lines the process wrote to stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("--- {} ---\n{tail}", self.log.display())
    }

    async fn wait_healthy(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/healthz", self.base);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("tollgate exited early with {status}");
            }
            let probe = http.get(&url).timeout(Duration::from_secs(1)).send().await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{url} did not answer within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// An HTTP answer: status, JSON body (Null if none) and `Retry-After`.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Resp {
    pub fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

/// NATS + PostgreSQL + one project with a plan; spawns `tollgate` processes on them.
pub struct Stack {
    pub nats: NatsServer,
    pub db: TestDb,
    pub project: NewProject,
    pub http: reqwest::Client,
    logs: tempfile::TempDir,
    spawned: AtomicUsize,
}

impl Stack {
    pub async fn new(plan_yaml: &str) -> anyhow::Result<Stack> {
        let nats = NatsServer::start().await?;
        let db = testkit::pg::fresh_database().await?;
        let project = ledger::control::create_project(db.pool(), "cross-process").await?;
        let plan = schemas::plan::Plan::from_yaml(plan_yaml).map_err(|e| anyhow!("plan: {e}"))?;
        anyhow::ensure!(
            ledger::control::apply_plan(db.pool(), &project.project_key, &plan).await?,
            "plan not applied"
        );
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(30))
            .build()?;
        let logs = tempfile::Builder::new()
            .prefix("tollgate-xproc-")
            .tempdir()?;
        Ok(Stack {
            nats,
            db,
            project,
            http,
            logs,
            spawned: AtomicUsize::new(0),
        })
    }

    /// Spawns `tollgate serve --only <only>`; for ingest, waits until `/healthz` answers.
    pub async fn spawn(&self, only: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut last = anyhow!("not started");
        for _ in 0..3 {
            let port = testkit::ports::free_port();
            let n = self.spawned.fetch_add(1, Ordering::Relaxed);
            let log = self.logs.path().join(format!("{n:02}-{only}.log"));
            let stderr = std::fs::File::create(&log).context("creating the process log")?;
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
            cmd.args(["serve", "--only", only])
                .env("NATS_URL", self.nats.url())
                .env("DATABASE_URL", self.db.url())
                .env("TOLLGATE_INGEST_ADDR", format!("127.0.0.1:{port}"))
                .env("TOLLGATE_LOG", "warn")
                .env_remove("TOLLGATE_LOG_FORMAT")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .kill_on_drop(true);
            for (k, v) in extra_env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().context("spawning tollgate")?;
            let mut proc = Proc {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log,
            };
            if !only.contains("ingest") {
                return Ok(proc);
            }
            match proc.wait_healthy(&self.http).await {
                Ok(()) => return Ok(proc),
                Err(e) => {
                    last = e.context(proc.log_tail());
                    proc.kill().await;
                }
            }
        }
        Err(last)
    }

    pub fn sk(&self) -> &str {
        &self.project.secret_key
    }

    pub async fn post(&self, base: &str, path: &str, body: &Value) -> anyhow::Result<Resp> {
        let req = self
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(self.sk())
            .json(body);
        read(req.send().await?).await
    }

    pub async fn get(&self, base: &str, path: &str) -> anyhow::Result<Resp> {
        let req = self
            .http
            .get(format!("{base}{path}"))
            .bearer_auth(self.sk());
        read(req.send().await?).await
    }

    /// Every event of `identity`'s account, in stream order, read from the stream.
    pub async fn events(&self, identity: &str) -> anyhow::Result<Vec<(u64, Envelope)>> {
        let js = ledger::stream::jetstream(ledger::stream::connect(&self.nats.url()).await?);
        let account = Account::Identity {
            identity: identity.to_owned(),
        };
        let mut out = Vec::new();
        ledger::audit::audit(&js, self.project.project_id, &account, |seq, env| {
            out.push((seq, env.clone()));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Last sequence of the ledger stream.
    pub async fn stream_last_seq(&self) -> anyhow::Result<u64> {
        let js = ledger::stream::jetstream(ledger::stream::connect(&self.nats.url()).await?);
        let mut stream = js.get_stream(subjects::LEDGER_STREAM).await?;
        Ok(stream.info().await?.state.last_sequence)
    }

    /// Last sequence the ledger projection applied to PostgreSQL.
    pub async fn ledger_checkpoint(&self) -> anyhow::Result<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM checkpoints WHERE projection = $1")
                .bind(subjects::LEDGER_CONSUMER)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }
}

async fn read(r: reqwest::Response) -> anyhow::Result<Resp> {
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = r.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok(Resp {
        status,
        body,
        retry_after,
    })
}

/// A decimal from a JSON string (or number).
pub fn dec(v: &Value) -> Decimal {
    match v {
        Value::String(s) => {
            Decimal::from_str(s).unwrap_or_else(|e| panic!("not a decimal: {s}: {e}"))
        }
        Value::Number(n) => {
            Decimal::from_str(&n.to_string()).unwrap_or_else(|e| panic!("not a decimal: {n}: {e}"))
        }
        other => panic!("not a decimal: {other}"),
    }
}

/// `(cap, used, held)` of the `unit` entry of a `limits` array.
pub fn limit_of(limits: &Value, unit: &str) -> Option<(Decimal, Decimal, Decimal)> {
    let view = limits.as_array()?.iter().find(|l| l["unit"] == unit)?;
    Some((dec(&view["cap"]), dec(&view["used"]), dec(&view["held"])))
}

/// `(open, expired, all)` rows of `reservations` among `ids`.
pub async fn hold_rows(stack: &Stack, ids: &[Uuid]) -> anyhow::Result<(i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'open'), count(*) FILTER (WHERE status = 'expired'), count(*)
         FROM reservations WHERE project_id = $1 AND reservation_id = ANY($2)",
    )
    .bind(stack.project.project_id.0)
    .bind(ids)
    .fetch_one(stack.db.pool())
    .await?)
}

/// Takes `n` holds with `ttl_ms` for identities `prefix-0..3` through `base`;
/// returns their ids and the earliest and latest `expires_at`.
pub async fn take_holds(
    stack: &Stack,
    base: &str,
    prefix: &str,
    n: usize,
    ttl_ms: u64,
) -> anyhow::Result<(Vec<Uuid>, DateTime<Utc>, DateTime<Utc>)> {
    let replies = join_all((0..n).map(|i| {
        let body = json!({"identity": format!("{prefix}-{}", i % 4), "amounts": {"requests": 1}, "ttl_ms": ttl_ms});
        async move { stack.post(base, "/v1/reservations", &body).await }
    }))
    .await;
    let (mut ids, mut earliest, mut latest) = (
        Vec::new(),
        DateTime::<Utc>::MAX_UTC,
        DateTime::<Utc>::MIN_UTC,
    );
    for r in replies {
        let r = r?;
        anyhow::ensure!(r.status == 200, "hold refused: {} {}", r.status, r.body);
        ids.push(
            r.body["reservation_id"]
                .as_str()
                .context("reservation_id")?
                .parse()?,
        );
        let at: DateTime<Utc> = serde_json::from_value(r.body["expires_at"].clone())?;
        (earliest, latest) = (earliest.min(at), latest.max(at));
    }
    Ok((ids, earliest, latest))
}

/// Settling events per reservation (kind, count) across the identities `prefix-0..3`.
pub async fn settlements(
    stack: &Stack,
    prefix: &str,
) -> anyhow::Result<HashMap<Uuid, Vec<&'static str>>> {
    let mut out: HashMap<Uuid, Vec<&'static str>> = HashMap::new();
    for k in 0..4 {
        for (_, env) in stack.events(&format!("{prefix}-{k}")).await? {
            let id = match &env.event {
                Event::Expired(x) => x.hold.reservation_id,
                Event::Committed(c) => c.hold.reservation_id,
                Event::Released(r) => r.hold.reservation_id,
                _ => continue,
            };
            out.entry(id.0).or_default().push(env.event.type_name());
        }
    }
    Ok(out)
}

/// Waits until the `ids` rows are all expired and the projection has applied the whole stream.
pub async fn wait_all_expired(
    stack: &Stack,
    ids: &[Uuid],
    prefix: &str,
) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let n = ids.len() as i64;
    let done = testkit::wait::until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { matches!(hold_rows(stack, ids).await, Ok((0, e, all)) if e == n && all == n) },
    )
    .await;
    if let Err(e) = done {
        let rows = hold_rows(stack, ids).await?;
        let (last, applied) = (
            stack.stream_last_seq().await?,
            stack.ledger_checkpoint().await?,
        );
        let settled = settlements(stack, prefix).await?;
        let open: Vec<_> = ids
            .iter()
            .filter(|id| settled.get(id).is_none_or(|s| s.is_empty()))
            .collect();
        let twice: Vec<_> = settled.iter().filter(|(_, s)| s.len() > 1).collect();
        let mut why = format!(
            "holds not all expired: reservations rows (open, expired, all) = {rows:?}; stream last seq {last}, \
             ledger checkpoint {applied}; holds with no settling event on the stream: {open:?}; \
             holds settled more than once on the stream: {twice:?}"
        );
        // Caught up, yet the table disagrees with the stream: rows missing, or open though settled.
        let missing = ids.len() as i64 - rows.2;
        let stale = rows.0 - open.len() as i64;
        if applied >= last && (missing > 0 || stale > 0) {
            why.push_str(&format!(
                "\n{missing} holds have no row, {stale} rows are open though settled on the stream.\n{SKIPPED_BATCH}"
            ));
        }
        return Err(e.context(why));
    }
    let took = started.elapsed();
    testkit::wait::until(Duration::from_secs(30), Duration::from_millis(50), || async {
        matches!((stack.stream_last_seq().await, stack.ledger_checkpoint().await), (Ok(last), Ok(done)) if done >= last)
    })
    .await?;
    Ok(took)
}

/// What it means when the stream has settled every hold but the projection still shows some open.
pub const SKIPPED_BATCH: &str =
    "the ledger checkpoint is at the stream's end, yet the `reservations` \
     table misses events of the stream: two ledger processes applied batches out of order \
     (the advisory locks in projector::consumer must let only one apply at a time).";

pub fn assert_expired_once(settled: &HashMap<Uuid, Vec<&'static str>>, ids: &[Uuid]) {
    for id in ids {
        assert_eq!(
            settled.get(id).map(Vec::as_slice),
            Some(&["expired"][..]),
            "hold {id}: settling events"
        );
    }
}

/// One HTTP call made by a load client.
pub struct Call {
    pub reserve: bool,
    pub started: std::time::Instant,
    pub ended: std::time::Instant,
    pub status: u16,
    pub code: Option<String>,
    pub id: Uuid,
}

/// A client looping reserve + commit (with its own reservation ids) until `stop`.
pub struct Load {
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<Call>>>,
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub http: reqwest::Client,
    pub base: String,
    pub sk: String,
}

impl Load {
    async fn call(&self, reserve: bool, id: Uuid, path: &str, body: serde_json::Value) -> u16 {
        let started = std::time::Instant::now();
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.sk)
            .json(&body);
        let (status, code) = match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                (status, body["error"]["code"].as_str().map(str::to_owned))
            }
            Err(e) => (0, Some(e.to_string())),
        };
        let ended = std::time::Instant::now();
        self.calls.lock().unwrap().push(Call {
            reserve,
            started,
            ended,
            status,
            code,
            id,
        });
        status
    }

    pub async fn run(self, identity: String) {
        while !self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            let id = Uuid::now_v7();
            let body = json!({"identity": identity, "amounts": {"requests": 1}, "ttl_ms": 3_600_000u64, "reservation_id": id});
            if self.call(true, id, "/v1/reservations", body).await == 200 {
                let commit = json!({"amounts": {"requests": 1}, "identity": identity});
                self.call(false, id, &format!("/v1/reservations/{id}/commit"), commit)
                    .await;
            }
        }
    }
}
