//! `tollgate-bench replicas`: several gates appending to one ledger stream,
//! as several proxy or ingest processes do. They run in this one process,
//! each with its own NATS connection and its own state (accounts, appends
//! in flight, the chaining average), which is what a process of its own
//! would have. One user per client: a client calls the way the proxy does,
//! waiting for the reserve while its commit is settled on a task of its own
//! (the proxy answers its client before the commit's acknowledgement).
//! Between a commit and the next reserve, a one-byte round trip over
//! loopback TCP stands for the answer going to a client on this machine and
//! its next request coming back: the window in which another gate's append
//! refuses a chained one (`--no-turnaround` leaves it out). Each gate count
//! runs with every [`Chaining`] mode.

use crate::drive::{self, Outcome, Pair};
use crate::env::TIER;
use crate::refs::{actual, reserve_held};
use anyhow::Context as _;
use ledger::gate::{Chaining, LoadStats};
use ledger::Gate;
use schemas::plan::{Plan, Tier};
use schemas::{Account, ProjectId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::nats::NatsServer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A connection to a task that sends back each byte it reads, until closed.
async fn echo() -> anyhow::Result<tokio::net::TcpStream> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ours = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    let (mut theirs, _) = listener.accept().await?;
    ours.set_nodelay(true)?;
    theirs.set_nodelay(true)?;
    tokio::spawn(async move {
        let mut byte = [0u8; 1];
        while theirs.read_exact(&mut byte).await.is_ok() {
            if theirs.write_all(&byte).await.is_err() {
                break;
            }
        }
    });
    Ok(ours)
}

pub struct Row {
    pub gates: usize,
    pub chaining: Chaining,
    /// `first`: the reserve; `second`: the client's turnaround.
    pub outcome: Outcome,
    /// Summed over the gates (the average: the highest).
    pub stats: LoadStats,
}

/// Commits that failed, over every caller of a row.
#[derive(Clone, Default)]
struct Failures(Arc<Mutex<(u64, Option<String>)>>);

impl Failures {
    fn add(&self, e: &anyhow::Error) {
        if let Ok(mut f) = self.0.lock() {
            f.0 += 1;
            f.1.get_or_insert_with(|| format!("{e:#}"));
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        let f = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("failures poisoned"))?;
        match &f.1 {
            Some(first) => anyhow::bail!("{} commits failed, the first: {first}", f.0),
            None => Ok(()),
        }
    }
}

/// A user of one gate: reserve, then a commit it does not wait for.
struct Caller {
    gate: Gate,
    project: ProjectId,
    account: Account,
    tier: Tier,
    failures: Failures,
    /// This caller's end of a connection to an echo task, if any.
    turnaround: Option<tokio::net::TcpStream>,
}

impl Pair for Caller {
    /// The reserve; its commit goes on on a task of its own.
    async fn first(&mut self) -> anyhow::Result<()> {
        let id = reserve_held(&self.gate, self.project, &self.account, &self.tier).await?;
        let (gate, project, account) = (self.gate.clone(), self.project, self.account.clone());
        let failures = self.failures.clone();
        tokio::spawn(async move {
            if let Err(e) = gate
                .commit(project, id, Some(&account), actual(), None)
                .await
            {
                failures.add(&e.into());
            }
        });
        Ok(())
    }

    /// The answer out to the client, its next request in.
    async fn second(&mut self) -> anyhow::Result<()> {
        if let Some(turnaround) = self.turnaround.as_mut() {
            turnaround.write_all(b"x").await?;
            turnaround.read_exact(&mut [0u8; 1]).await?;
        }
        Ok(())
    }
}

pub const MODES: [Chaining; 3] = [Chaining::Adaptive, Chaining::Always, Chaining::Off];

pub async fn run(
    gate_counts: &[usize],
    clients_per_gate: usize,
    turnaround: bool,
    seconds: u64,
    warmup: u64,
) -> anyhow::Result<Vec<Row>> {
    let nats = NatsServer::start().await.context("starting nats-server")?;
    let tier = Plan::from_yaml(crate::env::PLAN)?
        .tiers
        .get(TIER)
        .cloned()
        .context("bench tier")?;
    let project = ProjectId::new();
    let mut rows = Vec::new();
    for (run, &gates) in gate_counts.iter().enumerate() {
        for chaining in MODES {
            eprintln!("replicas: {gates} gate(s), chaining {chaining:?}…");
            let mut handles = Vec::new();
            for _ in 0..gates {
                let client = ledger::stream::connect(&nats.url()).await?;
                let gate = Gate::new(client, Arc::new(ledger::SystemClock), None).await?;
                gate.set_chaining(chaining);
                handles.push(gate);
            }
            let failures = Failures::default();
            let mut workers = Vec::new();
            for (g, gate) in handles.iter().enumerate() {
                for c in 0..clients_per_gate {
                    workers.push(Caller {
                        gate: gate.clone(),
                        project,
                        account: Account::Identity {
                            identity: format!("replicas-r{run}-{chaining:?}-g{g}-c{c}"),
                        },
                        tier: tier.clone(),
                        failures: failures.clone(),
                        turnaround: if turnaround {
                            Some(echo().await?)
                        } else {
                            None
                        },
                    });
                }
            }
            let outcome = drive::drive(
                workers,
                Duration::from_secs(warmup),
                Duration::from_secs(seconds.max(1)),
                &crate::cpu::Probe {
                    nats_port: Some(nats.port()),
                    db_name: None,
                },
            )
            .await?;
            // The last commits, still settling when the row ended.
            tokio::time::sleep(Duration::from_millis(200)).await;
            failures.check()?;
            let mut stats = LoadStats::default();
            for gate in &handles {
                let s = gate.load_stats();
                stats.appends_chained += s.appends_chained;
                stats.chains_refused += s.chains_refused;
                stats.chains_refused_lately =
                    stats.chains_refused_lately.max(s.chains_refused_lately);
            }
            rows.push(Row {
                gates,
                chaining,
                outcome,
                stats,
            });
        }
    }
    Ok(rows)
}

pub fn report(rows: &[Row], clients_per_gate: usize, turnaround: bool) {
    println!(
        "replicas: gates on one stream (in this process, each with its own connection and state), {clients_per_gate} client(s) per gate, each its own user; the reserve awaited, its commit settled behind it{}",
        if turnaround { ", then a loopback round trip for the client's turnaround" } else { ", no turnaround" }
    );
    println!(
        "{:>5} {:>8} | {:>9} {:>11} {:>9} | {:>9} {:>9} {:>7}",
        "gates", "chaining", "calls/s", "reserve p50", "p99", "chained", "refused", "lately"
    );
    for row in rows {
        let o = &row.outcome;
        let ms = |q: f64| o.first.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:>5} {:>8} | {:>9.0} {:>9.3}ms {:>7.3}ms | {:>9} {:>9} {:>6}%",
            row.gates,
            format!("{:?}", row.chaining).to_lowercase(),
            o.pairs_per_sec(),
            ms(0.5),
            ms(0.99),
            row.stats.appends_chained,
            row.stats.chains_refused,
            row.stats.chains_refused_lately,
        );
    }
}
