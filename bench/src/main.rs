//! `tollgate-bench`: reserve+commit throughput and latency over HTTP at 1, 16
//! and 64 clients, and replay speed, on a private nats-server and PostgreSQL
//! database with the services running in this process as `tollgate up` runs
//! them. Reference rows split the HTTP numbers by layer. See bench/README.md.
#![allow(clippy::print_stdout)]

mod env;
mod http;
mod load;
mod refs;
mod replay;
mod replay_ref;
mod replicas;
mod report;
mod suite;

use clap::{Args, Parser, Subcommand};
use tollgate_bench::{client, cpu, drive};

/// The allocator `tollgate` uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate-bench",
    about = "Tollgate benchmark: ingest reserve+commit over HTTP, and replay speed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reserve → commit pairs over HTTP at each client count, then the reference rows.
    Ingest(IngestArgs),
    /// Publish N events to a fresh ledger stream and time `ledger::replay::replay`.
    Replay(ReplayArgs),
    /// Cold account loads by history length, with and without a snapshot.
    Load(LoadArgs),
    /// Several gates (each as a process would have) on one stream, with each way of chaining settlements.
    Replicas(ReplicasArgs),
    /// `ingest` then `replay`.
    All {
        #[command(flatten)]
        ingest: IngestArgs,
        #[command(flatten)]
        replay: ReplayArgs,
    },
}

#[derive(Args, Clone, Debug)]
pub struct IngestArgs {
    /// Measured seconds per client count.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Warm-up seconds before each measurement (not recorded).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Worker threads of the load generator's own runtime (the services get one per core, as in `tollgate up`).
    #[arg(long, default_value_t = 2)]
    pub loadgen_threads: usize,
    /// Skip the reference rows (gate in-process, raw JetStream, empty axum handler).
    #[arg(long)]
    pub no_references: bool,
    /// Diagnostic: run the ingest service alone, without the ledger/projector consumers and expiry.
    #[arg(long)]
    pub no_consumers: bool,
}

#[derive(Args, Clone, Debug)]
pub struct ReplicasArgs {
    /// Measured seconds per row.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Warm-up seconds before each row (not recorded).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Gates on the stream, comma-separated: a row for each, per way of chaining.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub gates: Vec<usize>,
    /// Clients per gate, each its own user.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Leave out the loopback round trip standing for the client's turnaround.
    #[arg(long)]
    pub no_turnaround: bool,
}

#[derive(Args, Clone, Debug)]
pub struct ReplayArgs {
    /// Events on the stream (reserved + committed pairs).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Accounts the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub accounts: u64,
    /// Give up on replay after this many seconds (its transaction rolls back); the rate so far is reported.
    #[arg(long, default_value_t = 600)]
    pub replay_limit: u64,
}

#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Events in the account's history, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub history: Vec<u64>,
    /// Other accounts' events on the stream per event of the account.
    #[arg(long, default_value_t = 3)]
    pub noise: u64,
    /// Days the account's events are spread over (settlements of the last
    /// day are kept in its state, for idempotent retries).
    #[arg(long, default_value_t = 30)]
    pub days: u64,
}

impl ReplayArgs {
    async fn run(&self) -> anyhow::Result<replay::ReplayResult> {
        let limit = std::time::Duration::from_secs(self.replay_limit.max(1));
        replay::run(self.events, self.accounts, limit).await
    }
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // As `tollgate` runs (src/main.rs).
    ingest::alloc::no_huge_pages();
    let cli = Cli::parse();
    // The services' runtime: one worker per core, as `#[tokio::main]` gives `tollgate up`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(cpu::SERVICE_THREAD)
        .enable_all()
        .build()?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    report::facts();
    match command {
        Command::Ingest(args) => {
            let ingest = suite::run(&args).await?;
            println!("PostgreSQL {}\n", ingest.pg_version);
            report::ingest(&ingest, args.seconds, args.warmup);
            report::targets(Some(&ingest), None);
        }
        Command::Replay(args) => {
            let replay = args.run().await?;
            report::replay(&replay);
            report::targets(None, Some(&replay));
        }
        Command::Load(args) => {
            let rows = load::run(&args.history, args.noise, args.days).await?;
            load::report(&rows, args.noise, args.days);
        }
        Command::Replicas(args) => {
            let turnaround = !args.no_turnaround;
            let rows = replicas::run(
                &args.gates,
                args.clients,
                turnaround,
                args.seconds,
                args.warmup,
            )
            .await?;
            replicas::report(&rows, args.clients, turnaround);
        }
        Command::All { ingest, replay } => {
            let ingest_report = suite::run(&ingest).await?;
            println!("PostgreSQL {}\n", ingest_report.pg_version);
            report::ingest(&ingest_report, ingest.seconds, ingest.warmup);
            let replay_report = replay.run().await?;
            report::replay(&replay_report);
            report::targets(Some(&ingest_report), Some(&replay_report));
        }
    }
    Ok(())
}
