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

/// mimalloc instead of glibc malloc: the request path allocates many small,
/// short-lived objects across threads, where glibc's arenas spent ~25 % of
/// the service's CPU (measured with `tollgate-bench ingest` and perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    #[arg(long, env = "TOLLGATE_PROXY_ADDR", default_value = proxy::server::DEFAULT_ADDR)]
    proxy_addr: SocketAddr,
    /// How often the ledger looks for holds past their TTL.
    #[arg(long, env = "TOLLGATE_EXPIRY_INTERVAL_MS", default_value_t = 1000)]
    expiry_interval_ms: u64,
    /// How often the projection consumers fetch new events when few are pending.
    #[arg(long, env = "TOLLGATE_PROJECTION_WINDOW_MS", default_value_t = 1000)]
    projection_window_ms: u64,
    /// Threads serving HTTP, each with its own runtime and NATS connection (default: one per core).
    #[arg(long, env = "TOLLGATE_HTTP_THREADS")]
    http_threads: Option<usize>,
    /// How long (µs) an HTTP thread keeps polling its sockets instead of
    /// sleeping after a request on it started or ended, while the process
    /// has at most one request in flight; 0 turns it off (at most 1000000).
    #[arg(long, env = "TOLLGATE_BUSY_POLL_US", default_value_t = ingest::threads::BusyPoll::DEFAULT_MICROS)]
    busy_poll_us: u64,
    /// How long an account stays in a process's memory after its last use
    /// (with no hold still within its TTL); it is read back from the stream
    /// when used again.
    #[arg(long, env = "TOLLGATE_ACCOUNT_IDLE_SECS", default_value_t = 600)]
    account_idle_secs: u64,
    /// How long a write to a client may stay blocked (it reads nothing)
    /// before its connection is closed; on the proxy that ends the call,
    /// charged what it consumed (1 to 3600).
    #[arg(long, env = "TOLLGATE_SEND_TIMEOUT_SECS", default_value_t = ingest::threads::SEND_TIMEOUT.as_secs())]
    send_timeout_secs: u64,
    /// Save an account's state as a snapshot (in PostgreSQL) after this many
    /// events (or as many as its last snapshot had entries, if more), so a
    /// process reading it back reads only the events since; 0 turns
    /// snapshots off.
    #[arg(long, env = "TOLLGATE_SNAPSHOT_EVERY", default_value_t = ledger::gate::SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// Output tokens the proxy holds for a request that sets no max_tokens.
    #[arg(
        long,
        env = "TOLLGATE_DEFAULT_MAX_OUTPUT_TOKENS",
        default_value_t = 4096
    )]
    default_max_output_tokens: u64,
    /// The same for a model that reasons by default (o-series, GPT-5,
    /// Gemini 2.5), whose reasoning counts against the cap.
    #[arg(
        long,
        env = "TOLLGATE_DEFAULT_MAX_REASONING_OUTPUT_TOKENS",
        default_value_t = proxy::server::DEFAULT_MAX_REASONING_OUTPUT_TOKENS
    )]
    default_max_reasoning_output_tokens: u64,
    /// PEM file of root certificates the proxy trusts for provider
    /// connections besides Mozilla's (a private OpenAI-compatible server).
    #[arg(long, env = "TOLLGATE_UPSTREAM_CA_FILE")]
    upstream_ca_file: Option<std::path::PathBuf>,
    /// How long a proxy hold lives if its process dies before settling it.
    #[arg(long, env = "TOLLGATE_HOLD_TTL_MS", default_value_t = 600_000)]
    hold_ttl_ms: u64,
    /// Largest chat request body the proxy takes, in bytes.
    #[arg(long, env = "TOLLGATE_MAX_BODY_BYTES", default_value_t = proxy::server::MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// `deny`: refuse proxy calls to base URLs a project set (custom
    /// providers, its own URL for a built-in one) when they lead to a
    /// loopback, private or link-local address. For shared deployments.
    #[arg(long, env = "TOLLGATE_PRIVATE_UPSTREAMS", default_value = "allow", value_parser = ["allow", "deny"])]
    private_upstreams: String,
    /// Reasoning tokens a cut stream of a model that reasons without
    /// streaming it (o-series, GPT-5, Gemini 2.5) is charged per second
    /// from the call's start to its answer's first output; 0: none.
    #[arg(
        long,
        env = "TOLLGATE_HIDDEN_REASONING_TOKENS_PER_SEC",
        default_value_t = proxy::server::HIDDEN_REASONING_TOKENS_PER_SEC
    )]
    hidden_reasoning_tokens_per_sec: u64,
}

impl Addrs {
    /// The certificates of `TOLLGATE_UPSTREAM_CA_FILE`, if set.
    fn extra_roots(&self) -> anyhow::Result<Vec<proxy::upstream::CertificateDer<'static>>> {
        match &self.upstream_ca_file {
            Some(path) => proxy::upstream::read_roots(path).context("TOLLGATE_UPSTREAM_CA_FILE"),
            None => Ok(Vec::new()),
        }
    }

    fn config(
        &self,
        nats_url: String,
        database_url: String,
        services: std::collections::BTreeSet<Service>,
        encryption_key: Option<proxy::keys::EncryptionKey>,
        extra_roots: Vec<proxy::upstream::CertificateDer<'static>>,
    ) -> ServeConfig {
        ServeConfig {
            nats_url,
            database_url,
            ingest_addr: self.ingest_addr,
            proxy_addr: self.proxy_addr,
            expiry_interval_ms: self.expiry_interval_ms,
            projection_window: std::time::Duration::from_millis(
                self.projection_window_ms.clamp(1, 60_000),
            ),
            http_threads: self
                .http_threads
                .unwrap_or_else(ingest::threads::default_threads)
                .clamp(1, 256),
            busy_poll: ingest::threads::BusyPoll::from_micros(self.busy_poll_us),
            account_idle: std::time::Duration::from_secs(
                self.account_idle_secs.clamp(1, 366 * 24 * 3600),
            ),
            snapshot_every: self.snapshot_every,
            send_timeout: std::time::Duration::from_secs(self.send_timeout_secs.clamp(1, 3600)),
            services,
            proxy: proxy::server::Settings {
                default_max_output_tokens: self.default_max_output_tokens.max(1),
                default_max_reasoning_output_tokens: self
                    .default_max_reasoning_output_tokens
                    .max(1),
                hold_ttl: std::time::Duration::from_millis(self.hold_ttl_ms.max(1000)),
                base_urls: proxy::providers::BaseUrls::from_env(),
                extra_roots,
                egress: proxy::upstream::Egress::from_env(),
                // A floor, so a typo cannot refuse every request.
                max_body_bytes: self.max_body_bytes.max(64 * 1024),
                deny_private_upstreams: self.private_upstreams == "deny",
                hidden_reasoning_tokens_per_sec: self.hidden_reasoning_tokens_per_sec,
            },
            encryption_key,
        }
    }
}

/// TOLLGATE_ENCRYPTION_KEY, else ./.tollgate/encryption.key; `up` creates that file when neither exists.
fn encryption_key(create: bool) -> anyhow::Result<Option<proxy::keys::EncryptionKey>> {
    let file = std::path::Path::new(".tollgate").join("encryption.key");
    let found =
        proxy::keys::resolve_encryption_key(std::env::var("TOLLGATE_ENCRYPTION_KEY").ok(), &file)?;
    if found.is_some() || !create {
        if found.is_none() {
            tracing::warn!("TOLLGATE_ENCRYPTION_KEY is not set: stored provider keys are unavailable; pass-through keys still work");
        }
        return Ok(found);
    }
    let key = proxy::keys::EncryptionKey::generate();
    std::fs::create_dir_all(".tollgate").context("creating .tollgate")?;
    write_private(&file, &key.to_hex())?;
    tracing::info!(file = %file.display(), "generated an encryption key for stored provider keys");
    Ok(Some(key))
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
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
        /// Comma-separated subset of proxy,ingest,ledger,projector (default: all).
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
    /// Manage a project's provider API keys (stored encrypted with TOLLGATE_ENCRYPTION_KEY).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage a project's custom OpenAI-compatible providers.
    Providers {
        #[command(subcommand)]
        command: ProvidersCommand,
    },
    /// Manage a project's price overrides.
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
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

#[derive(Subcommand)]
enum KeysCommand {
    /// Store a provider's API key, read from standard input; prints only its last 4 characters.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// The project's public key (pk_…).
        #[arg(long)]
        project: String,
        /// openai, anthropic, gemini, xai, or a custom provider of the project.
        #[arg(long)]
        provider: String,
    },
}

#[derive(Subcommand)]
enum ProvidersCommand {
    /// Register (or re-point) a custom OpenAI-compatible provider, used as `NAME/model`.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// The project's public key (pk_…).
        #[arg(long)]
        project: String,
        /// a-z, 0-9, '_' and '-', at most 40 characters.
        #[arg(long)]
        name: String,
        /// Base URL including the version path, e.g. https://api.together.xyz/v1.
        #[arg(long)]
        base_url: String,
    },
}

#[derive(Subcommand)]
enum PricesCommand {
    /// Set the price of a model for a project (US dollars per token, exact decimals).
    Set {
        #[command(flatten)]
        conn: Conn,
        /// The project's public key (pk_…).
        #[arg(long)]
        project: String,
        /// The model id as priced: `model` or `provider/model`.
        #[arg(long)]
        model: String,
        /// US dollars per input token, e.g. 0.000003.
        #[arg(long, allow_negative_numbers = true)]
        input: String,
        /// US dollars per output token, e.g. 0.000015.
        #[arg(long, allow_negative_numbers = true)]
        output: String,
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

/// PostgreSQL's notices (`relation "_sqlx_migrations" already exists,
/// skipping` on every start) say nothing to a user; warnings still show.
const QUIET_NOTICES: &str = "sqlx::postgres::notice=warn";

impl Command {
    /// The log filter when `TOLLGATE_LOG` is unset: services and long jobs
    /// say what they do; one-shot commands print their answer on stdout and
    /// only warnings and errors on stderr.
    fn default_log_filter(&self) -> String {
        let level = match self {
            Command::Up { .. }
            | Command::Serve { .. }
            | Command::Migrate { .. }
            | Command::Replay { .. } => "info",
            Command::Project { .. }
            | Command::Plans { .. }
            | Command::Keys { .. }
            | Command::Providers { .. }
            | Command::Prices { .. }
            | Command::Balances { .. }
            | Command::Audit { .. } => "warn",
        };
        format!("{level},{QUIET_NOTICES}")
    }
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
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
    let cli = Cli::parse();
    init_tracing(&cli.command.default_log_filter());
    ingest::alloc::no_huge_pages();
    match cli.command {
        Command::Up { conn, addrs } => {
            let shutdown = CancellationToken::new();
            services::cancel_on_signals(shutdown.clone());
            // Everything that can refuse to start is checked before anything is started.
            let extra_roots = addrs.extra_roots()?;
            let encryption = encryption_key(true)?;
            let local = tollgate::local::start(conn.nats_url, conn.database_url).await?;
            let config = addrs.config(
                local.nats_url.clone(),
                local.database_url.clone(),
                Service::ALL.into_iter().collect(),
                encryption,
                extra_roots,
            );
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
            let config = addrs.config(
                nats_url,
                database_url,
                services,
                encryption_key(false)?,
                addrs.extra_roots()?,
            );
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
        Command::Keys {
            command:
                KeysCommand::Add {
                    conn,
                    project,
                    provider,
                },
        } => {
            let enc = proxy::keys::resolve_encryption_key(
                std::env::var(proxy::keys::ENCRYPTION_KEY_ENV).ok(),
                std::path::Path::new(proxy::keys::LOCAL_KEY_FILE),
            )?
            .with_context(|| {
                format!(
                    "{} is not set and ./{} does not exist: set it to 64 hex characters (e.g. `openssl rand -hex 32`), the same value the proxy runs with",
                    proxy::keys::ENCRYPTION_KEY_ENV,
                    proxy::keys::LOCAL_KEY_FILE
                )
            })?;
            let pool = db(&conn).await?;
            let client = nats(&conn).await?;
            let stdin = std::io::stdin();
            let key = tollgate::commands::read_provider_key(
                stdin.lock(),
                std::io::IsTerminal::is_terminal(&stdin),
            )?;
            tollgate::commands::keys_add(&pool, &client, &project, &provider, &key, &enc).await
        }
        Command::Providers {
            command:
                ProvidersCommand::Add {
                    conn,
                    project,
                    name,
                    base_url,
                },
        } => {
            let pool = db(&conn).await?;
            tollgate::commands::providers_add(
                &pool,
                &nats(&conn).await?,
                &project,
                &name,
                &base_url,
            )
            .await
        }
        Command::Prices {
            command:
                PricesCommand::Set {
                    conn,
                    project,
                    model,
                    input,
                    output,
                },
        } => {
            let input = tollgate::commands::parse_usd_per_token("--input", &input)?;
            let output = tollgate::commands::parse_usd_per_token("--output", &output)?;
            let pool = db(&conn).await?;
            tollgate::commands::prices_set(
                &pool,
                &nats(&conn).await?,
                &project,
                &model,
                input,
                output,
            )
            .await
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
