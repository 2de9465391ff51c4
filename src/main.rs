//! `tollgate`: run the services, manage projects and plans, replay and audit.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use tollgate::services::{self, ServeConfig, Service};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Usage-limit gateway and event-sourced usage ledger for AI apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Conn {
    /// NATS server with JetStream.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(clap::Args, Clone)]
struct Addrs {
    #[arg(long, env = "TOLLGATE_INGEST_ADDR", default_value = ingest::DEFAULT_ADDR)]
    ingest_addr: SocketAddr,
    /// How often the ledger looks for holds past their TTL.
    #[arg(long, env = "TOLLGATE_EXPIRY_INTERVAL_MS", default_value_t = 1000)]
    expiry_interval_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything with zero configuration (starts nats-server and PostgreSQL under ./.tollgate/ when NATS_URL / DATABASE_URL are unset).
    Up {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        addrs: Addrs,
    },
    /// Run services against NATS_URL and DATABASE_URL.
    Serve {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        addrs: Addrs,
        /// Comma-separated subset: ingest,ledger,projector (default: all).
        #[arg(long)]
        only: Option<String>,
    },
    /// Apply database migrations.
    Migrate {
        #[command(flatten)]
        conn: Conn,
    },
    /// Manage projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Manage plans (tiers and limits).
    Plans {
        #[command(subcommand)]
        command: PlansCommand,
    },
    /// Rebuild every projection from the start of the stream and print the balances checksum.
    Replay {
        #[command(flatten)]
        conn: Conn,
    },
    /// Print balances.
    Balances {
        #[command(flatten)]
        conn: Conn,
        /// Print the checksum of all balances and counters.
        #[arg(long)]
        checksum: bool,
    },
    /// Print an account's events in order, as JSON lines.
    Audit {
        #[command(flatten)]
        conn: Conn,
        /// The project's public key (pk_…).
        #[arg(long)]
        project: String,
        #[arg(long)]
        identity: String,
    },
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Create a project; prints its keys once.
    Create {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum PlansCommand {
    /// Set a project's tiers from a YAML file.
    Apply {
        #[command(flatten)]
        conn: Conn,
        /// The project's public key (pk_…).
        #[arg(long)]
        project: String,
        file: PathBuf,
    },
}

fn need(value: Option<String>, var: &str) -> anyhow::Result<String> {
    value.with_context(|| {
        format!("{var} is not set (or run `tollgate up`, which starts local services)")
    })
}

/// Uses the configured URLs, or the ones `tollgate up` left running under ./.tollgate/.
fn resolve(conn: Conn) -> anyhow::Result<(String, String)> {
    let local = tollgate::local::running_urls();
    let nats = conn
        .nats_url
        .or_else(|| local.as_ref().map(|l| l.0.clone()));
    let db = conn.database_url.or_else(|| local.map(|l| l.1));
    Ok((need(nats, "NATS_URL")?, need(db, "DATABASE_URL")?))
}

async fn db(conn: &Conn) -> anyhow::Result<sqlx::PgPool> {
    let (_, db) = resolve(conn.clone())?;
    let pool = services::connect_db(&db).await?;
    services::migrate(&pool).await?;
    Ok(pool)
}

async fn nats(conn: &Conn) -> anyhow::Result<async_nats::Client> {
    let (nats, _) = resolve(conn.clone())?;
    ledger::stream::connect(&nats).await
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Up { conn, addrs } => {
            let shutdown = CancellationToken::new();
            services::cancel_on_signals(shutdown.clone());
            let local = tollgate::local::start(conn.nats_url, conn.database_url).await?;
            let config = ServeConfig {
                nats_url: local.nats_url.clone(),
                database_url: local.database_url.clone(),
                ingest_addr: addrs.ingest_addr,
                expiry_interval_ms: addrs.expiry_interval_ms,
                services: Service::ALL.into_iter().collect(),
            };
            let result = services::run(config, shutdown).await;
            local.stop().await;
            result
        }
        Command::Serve { conn, addrs, only } => {
            let (nats_url, database_url) = (
                need(conn.nats_url, "NATS_URL")?,
                need(conn.database_url, "DATABASE_URL")?,
            );
            let services = match only {
                Some(list) => Service::parse_list(&list)?,
                None => Service::ALL.into_iter().collect(),
            };
            let shutdown = CancellationToken::new();
            services::cancel_on_signals(shutdown.clone());
            let config = ServeConfig {
                nats_url,
                database_url,
                ingest_addr: addrs.ingest_addr,
                expiry_interval_ms: addrs.expiry_interval_ms,
                services,
            };
            services::run(config, shutdown).await
        }
        Command::Migrate { conn } => {
            db(&conn).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Project {
            command: ProjectCommand::Create { conn, name },
        } => tollgate::commands::project_create(&db(&conn).await?, &name).await,
        Command::Plans {
            command:
                PlansCommand::Apply {
                    conn,
                    project,
                    file,
                },
        } => {
            let pool = db(&conn).await?;
            tollgate::commands::plans_apply(&pool, &nats(&conn).await?, &project, &file).await
        }
        Command::Replay { conn } => {
            let pool = db(&conn).await?;
            let js = ledger::stream::jetstream(nats(&conn).await?);
            tollgate::commands::replay(&js, &pool).await
        }
        Command::Balances { conn, checksum } => {
            if !checksum {
                anyhow::bail!("say what to print: --checksum");
            }
            tollgate::commands::balances_checksum(&db(&conn).await?).await
        }
        Command::Audit {
            conn,
            project,
            identity,
        } => {
            let pool = db(&conn).await?;
            let js = ledger::stream::jetstream(nats(&conn).await?);
            tollgate::commands::audit(&js, &pool, &project, &identity).await
        }
    }
}
