//! Runs Tollgate's services in this process: any subset of ingest, ledger,
//! projector and proxy. One cancellation token and one task tracker: on
//! SIGINT/SIGTERM HTTP drains, consumers finish the batch they hold, and
//! everything stops under a deadline.

use anyhow::Context as _;
use ledger::control::ControlCache;
use ledger::{Gate, SystemClock};
use projector::service::CountersProjection;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Ingest,
    Ledger,
    Projector,
    Proxy,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Ingest,
        Service::Ledger,
        Service::Projector,
        Service::Proxy,
    ];

    pub fn parse_list(list: &str) -> anyhow::Result<BTreeSet<Service>> {
        let services: BTreeSet<Service> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "ingest" => Ok(Service::Ingest),
                "ledger" => Ok(Service::Ledger),
                "projector" => Ok(Service::Projector),
                "proxy" => Ok(Service::Proxy),
                other => anyhow::bail!(
                    "--only: unknown service `{other}` (services: ingest, ledger, projector, proxy)"
                ),
            })
            .collect::<anyhow::Result<_>>()?;
        if services.is_empty() {
            anyhow::bail!("--only: name at least one service (ingest, ledger, projector, proxy)");
        }
        Ok(services)
    }
}

/// Everything `serve` needs, validated. (No `Debug`: its URLs may carry
/// credentials.)
#[derive(Clone)]
pub struct ServeConfig {
    pub nats_url: String,
    pub database_url: String,
    pub ingest_addr: SocketAddr,
    pub proxy_addr: SocketAddr,
    pub expiry_interval_ms: u64,
    /// See `projector::consumer::LIVE_BATCH_WINDOW`.
    pub projection_window: Duration,
    /// Threads serving HTTP (`ingest::threads`).
    pub http_threads: usize,
    /// How the HTTP threads poll while the process is nearly idle (`ingest::busy_poll`).
    pub busy_poll: ingest::threads::BusyPoll,
    /// How long an unused account stays in memory (`Gate::forget_idle`).
    pub account_idle: Duration,
    /// See `ledger::gate::SNAPSHOT_EVERY` (0: no snapshots).
    pub snapshot_every: u64,
    /// See `ingest::threads::SEND_TIMEOUT`.
    pub send_timeout: Duration,
    pub services: BTreeSet<Service>,
    pub proxy: proxy::server::Settings,
    /// Decrypts stored provider keys; without it only pass-through keys work.
    pub encryption_key: Option<proxy::keys::EncryptionKey>,
}

pub async fn connect_db(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    ledger::MIGRATOR
        .run(pool)
        .await
        .context("applying migrations")
}

/// Runs the configured services until `shutdown`.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = connect_db(&config.database_url).await?;
    migrate(&pool).await?;
    let client = ledger::stream::connect(&config.nats_url).await?;
    let gate = Gate::new(client.clone(), Arc::new(SystemClock), Some(pool.clone())).await?;
    gate.set_snapshot_every(config.snapshot_every);
    let tracker = TaskTracker::new();
    tracker.spawn(gate.clone().forget_idle_every(
        (config.account_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        config.account_idle,
        shutdown.clone(),
    ));
    // The projection consumers pull batches of thousands of events: on their
    // own thread, NATS connection and pool, so the request path never queues
    // behind a batch (ledger/src/consumers.rs).
    let mut projections: Vec<Box<dyn projector::consumer::Projection>> = Vec::new();
    let mut http = Vec::new();
    for service in &config.services {
        match service {
            Service::Ingest | Service::Proxy => http.push(*service),
            Service::Ledger => {
                projections.push(Box::new(ledger::projection::LedgerProjection));
                let interval = Duration::from_millis(config.expiry_interval_ms);
                tracker.spawn(ledger::expiry::run(
                    pool.clone(),
                    gate.clone(),
                    interval,
                    shutdown.clone(),
                ));
            }
            Service::Projector => projections.push(Box::new(CountersProjection)),
        }
    }
    if !http.is_empty() {
        let served = serve_http(&config, &http, &pool, &client, &gate, &shutdown).await?;
        tracker.spawn(served);
    }
    if !projections.is_empty() {
        let consumers = ledger::consumers::spawn(
            ledger::consumers::Consumers {
                nats_url: config.nats_url.clone(),
                database_url: config.database_url.clone(),
                projections,
                window: config.projection_window,
            },
            shutdown.clone(),
        )
        .context("starting the projection consumers' thread")?;
        tracker.spawn(consumers);
    }
    tracker.close();
    tracing::info!(services = ?config.services, "tollgate running");
    shutdown.cancelled().await;
    tracing::info!("shutting down: draining requests and consumers");
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10 s");
    }
    // The accounts in memory, saved so the next process reads less of them.
    match tokio::time::timeout(Duration::from_secs(5), gate.save_snapshots()).await {
        Ok(saved) => tracing::debug!(saved, "saved account snapshots"),
        Err(_) => tracing::warn!("saving account snapshots took more than 5 s; stopped"),
    }
    close_nats(&client).await;
    Ok(())
}

/// Flushes and closes `client`, waiting (at most 2 s) until it is closed, so
/// a nats-server stopped right after (`tollgate up`) does not leave it
/// trying to reconnect, and logging so, until the process exits. The
/// caches' change subscriptions hold clones of it: draining ends them too.
async fn close_nats(client: &async_nats::Client) {
    client.flush().await.ok();
    if client.drain().await.is_err() {
        return;
    }
    // async-nats (0.42) finishes a drain the next time its connection task
    // wakes up, and a command wakes it: flush until the client refuses
    // because it has closed.
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if client.flush().await.is_err() {
            return;
        }
    }
    tracing::debug!("the NATS connection did not close within 2 s");
}

/// Serves the HTTP services in `http` (ingest, proxy) on
/// `config.http_threads` threads, each with its own NATS connection and gate
/// handle (`ingest::threads`). Returns what ends when they have drained.
async fn serve_http(
    config: &ServeConfig,
    http: &[Service],
    pool: &PgPool,
    client: &async_nats::Client,
    gate: &Gate,
    shutdown: &CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let control = ControlCache::new(pool.clone());
    control.follow_changes(client.clone());
    let configs =
        proxy::project_config::ProjectConfigCache::new(pool.clone(), config.encryption_key.clone());
    if http.contains(&Service::Proxy) {
        configs.follow_changes(client.clone());
    }
    let mut listeners = Vec::new();
    for service in http {
        let (addr, name, variable) = match service {
            Service::Proxy => (config.proxy_addr, "the proxy", "TOLLGATE_PROXY_ADDR"),
            _ => (config.ingest_addr, "ingest", "TOLLGATE_INGEST_ADDR"),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {name} to {addr} ({variable})"))?;
        tracing::info!(%addr, service = ?service, "listening");
        listeners.push(listener);
    }
    let (nats_url, gate, http, settings) = (
        config.nats_url.clone(),
        gate.clone(),
        http.to_vec(),
        config.proxy.clone(),
    );
    let setup = move |worker: ingest::threads::Worker| {
        let (nats_url, gate, control, configs, http, settings) = (
            nats_url.clone(),
            gate.clone(),
            control.clone(),
            configs.clone(),
            http.clone(),
            settings.clone(),
        );
        async move {
            let gate = gate.on_this_thread(&nats_url).await?;
            let mut routers = Vec::new();
            for service in http {
                routers.push(match service {
                    Service::Proxy => proxy::server::router(proxy::server::ProxyState::new(
                        gate.clone(),
                        control.clone(),
                        configs.clone(),
                        worker.tracker.clone(),
                        worker.cut_off.clone(),
                        settings.clone(),
                    )?),
                    _ => ingest::router(ingest::AppState {
                        gate: gate.clone(),
                        control: control.clone(),
                    }),
                });
            }
            Ok(routers)
        }
    };
    ingest::threads::serve_with(
        listeners,
        config.http_threads,
        config.busy_poll,
        setup,
        shutdown.clone(),
        ingest::threads::Timeouts {
            send: config.send_timeout,
            ..Default::default()
        },
    )
    .await
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        // SIGTERM (a service manager) and SIGHUP (the terminal closed): stop
        // the same way as Ctrl-C, so `up` stops what it started.
        #[cfg(unix)]
        let term = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(mut term), Ok(mut hup)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::Service;

    #[test]
    fn only_accepts_every_service_and_nothing_else() {
        let all = Service::parse_list("ingest, ledger,projector,proxy").ok();
        assert_eq!(all, Some(Service::ALL.into_iter().collect()));
        let proxy = Service::parse_list("proxy").ok();
        assert_eq!(proxy, Some([Service::Proxy].into_iter().collect()));
        for bad in ["", " , ", "ingest,billing"] {
            assert!(Service::parse_list(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
