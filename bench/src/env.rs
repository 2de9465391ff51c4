//! A private Tollgate: its own nats-server, a fresh PostgreSQL database, a
//! project with a plan that never denies, and the services running in this
//! process as `tollgate up` runs them (`src/services.rs`: one gate, the
//! ingest HTTP server, the ledger and projector consumers, hold expiry).
//! Mirrored here rather than calling `tollgate::services::run`, so these
//! benches run without the proxy (this package still builds the proxy crate,
//! which `proxy-bench` uses).

use crate::cpu::Probe;
use anyhow::{bail, Context as _};
use schemas::plan::{Plan, Tier};
use schemas::{subjects, ProjectId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::nats::NatsServer;
use testkit::pg::TestDb;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Huge caps on every unit the benchmark uses: nothing is ever denied.
pub const PLAN: &str = r#"
default_tier: bench
tiers:
  bench:
    limits:
      - { unit: requests, window: day, cap: 1000000000 }
      - { unit: tokens, window: day, cap: 1000000000000 }
      - { unit: usd, window: month, cap: "1000000000" }
"#;
pub const TIER: &str = "bench";
pub const MODEL: &str = "gpt-4o-mini";

pub struct Services {
    pub nats: NatsServer,
    pub db: TestDb,
    pub client: async_nats::Client,
    /// `http://127.0.0.1:PORT` of the ingest API.
    pub base: String,
    pub secret: String,
    pub project_id: ProjectId,
    pub tier: Tier,
    pub consumers: bool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Starts a nats-server and a fresh database (no services).
pub async fn backends() -> anyhow::Result<(NatsServer, TestDb)> {
    let nats = NatsServer::start().await.context("starting nats-server")?;
    let db = testkit::pg::fresh_database()
        .await
        .context("creating a PostgreSQL database (set TOLLGATE_TEST_DATABASE_URL or have scripts/pg.sh work)")?;
    Ok((nats, db))
}

impl Services {
    /// Starts everything; `consumers: false` runs the ingest service alone (a diagnostic).
    pub async fn start(consumers: bool) -> anyhow::Result<Services> {
        let (nats, db) = backends().await?;
        let project = ledger::control::create_project(db.pool(), "bench").await?;
        let plan = Plan::from_yaml(PLAN)?;
        if !ledger::control::apply_plan(db.pool(), &project.project_key, &plan).await? {
            bail!("the bench project vanished before its plan was applied");
        }
        let tier = plan.tiers.get(TIER).cloned().context("bench tier")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let tracker = run_services(&nats.url(), db.url(), listener, consumers, &shutdown).await?;
        tracker.close();
        wait_healthy(&base).await?;
        let client = ledger::stream::connect(&nats.url()).await?;
        Ok(Services {
            nats,
            db,
            client,
            base,
            secret: project.secret_key,
            project_id: project.project_id,
            tier,
            consumers,
            shutdown,
            tracker,
        })
    }

    pub fn probe(&self) -> Probe {
        Probe {
            nats_port: Some(self.nats.port()),
            db_name: Some(self.db.name().to_owned()),
        }
    }

    /// Events the projections have not applied yet (max over both).
    pub async fn projection_lag(&self) -> anyhow::Result<u64> {
        let js = ledger::stream::jetstream(self.client.clone());
        let mut stream = js.get_stream(subjects::LEDGER_STREAM).await?;
        let last = stream.info().await?.state.last_sequence;
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT projection, last_seq FROM checkpoints")
                .fetch_all(self.db.pool())
                .await?;
        let applied = |name: &str| {
            rows.iter()
                .find(|r| r.0 == name)
                .map(|r| u64::try_from(r.1).unwrap_or(0))
                .unwrap_or(0)
        };
        let slowest = applied(subjects::LEDGER_CONSUMER).min(applied(subjects::PROJECTOR_CONSUMER));
        Ok(last.saturating_sub(slowest))
    }

    /// Waits until the projections caught up. Returns (lag when called, time to catch up).
    pub async fn settle_projections(&self) -> anyhow::Result<(u64, Duration)> {
        if !self.consumers {
            return Ok((0, Duration::ZERO));
        }
        let started = Instant::now();
        let lag = self.projection_lag().await?;
        let mut now = lag;
        while now > 0 {
            if started.elapsed() > Duration::from_secs(300) {
                bail!("projections still {now} events behind after 300 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            now = self.projection_lag().await?;
        }
        Ok((lag, started.elapsed()))
    }

    /// Stops the services (drains HTTP and consumers), then nats-server.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            eprintln!("warning: some services did not stop within 10 s");
        }
        drop(self.nats);
        Ok(())
    }
}

/// What `tollgate::services::run` does for `tollgate up`, on our listener.
async fn run_services(
    nats_url: &str,
    database_url: &str,
    listener: tokio::net::TcpListener,
    consumers: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<TaskTracker> {
    // Same pool settings as `services::connect_db`.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url)
        .await?;
    let client = ledger::stream::connect(nats_url).await?;
    let gate = ledger::Gate::new(
        client.clone(),
        Arc::new(ledger::SystemClock),
        Some(pool.clone()),
    )
    .await?;
    let tracker = TaskTracker::new();
    let control = ledger::control::ControlCache::new(pool.clone());
    control.follow_changes(client.clone());
    // One runtime, NATS connection and gate handle per HTTP thread, as
    // `services::serve_http` does (`ingest::threads`).
    let (url, main_gate) = (nats_url.to_owned(), gate.clone());
    let setup = move |_: ingest::threads::Worker| {
        let (url, gate, control) = (url.clone(), main_gate.clone(), control.clone());
        async move {
            let gate = gate.on_this_thread(&url).await?;
            Ok(vec![ingest::router(ingest::AppState { gate, control })])
        }
    };
    let served = ingest::threads::serve(
        vec![listener],
        tollgate_bench::http_threads(),
        tollgate_bench::busy_poll(),
        setup,
        shutdown.clone(),
    )
    .await?;
    tracker.spawn(served);
    if !consumers {
        return Ok(tracker);
    }
    // The consumers on their own thread, as `services::run` runs them.
    tracker.spawn(ledger::consumers::spawn(
        ledger::consumers::Consumers::all(nats_url, database_url),
        shutdown.clone(),
    )?);
    tracker.spawn(ledger::expiry::run(
        pool,
        gate,
        Duration::from_millis(1000),
        shutdown.clone(),
    ));
    Ok(tracker)
}

async fn wait_healthy(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if Instant::now() > deadline => bail!("ingest did not answer {base}/healthz in 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
