//! The closed-loop driver: N workers, each doing `first` then `second` in a
//! loop (a reserve then its commit, or a reference pair), for a warm-up and
//! then a measured window. A pair counts when it started and finished inside
//! the window; each call's latency goes into an HDR histogram in µs.

use crate::cpu;
use anyhow::anyhow;
use hdrhistogram::Histogram;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// One client's pair of calls. Each worker owns its state (its own identity,
/// connection, subject…), so workers never contend with each other by design.
pub trait Pair: Send + 'static {
    /// The first call (reserve); may remember what the second needs.
    fn first(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The second call (commit).
    fn second(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Latencies are recorded in µs, from 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("histogram: {e:?}"))
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub clients: usize,
    pub pairs: u64,
    pub seconds: f64,
    pub first: Histogram<u64>,
    pub second: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub cpu: cpu::Usage,
}

impl Outcome {
    pub fn pairs_per_sec(&self) -> f64 {
        self.pairs as f64 / self.seconds.max(1e-9)
    }
}

struct WorkerResult {
    first: Histogram<u64>,
    second: Histogram<u64>,
    pairs: u64,
    errors: u64,
    first_error: Option<String>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

async fn run_worker<P: Pair>(
    mut worker: P,
    from: Instant,
    until: Instant,
) -> anyhow::Result<WorkerResult> {
    let mut out = WorkerResult {
        first: histogram()?,
        second: histogram()?,
        pairs: 0,
        errors: 0,
        first_error: None,
    };
    loop {
        let t0 = Instant::now();
        if t0 >= until {
            break;
        }
        let r1 = worker.first().await;
        let t1 = Instant::now();
        let r2 = match r1 {
            Ok(()) => worker.second().await,
            Err(e) => Err(e),
        };
        let t2 = Instant::now();
        if let Err(e) = r2 {
            out.errors += 1;
            out.first_error.get_or_insert_with(|| format!("{e:#}"));
            // Do not spin on a failing server.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if t0 >= from && t2 <= until {
            out.first.saturating_record(micros(t1 - t0));
            out.second.saturating_record(micros(t2 - t1));
            out.pairs += 1;
        }
    }
    Ok(out)
}

/// Runs `workers` for `warmup`, then measures for `measure`. Runs on the
/// current runtime (spawn it on the load generator's runtime for HTTP rows).
pub async fn drive<P: Pair>(
    workers: Vec<P>,
    warmup: Duration,
    measure: Duration,
    probe: &cpu::Probe,
) -> anyhow::Result<Outcome> {
    let clients = workers.len();
    let from = Instant::now() + warmup;
    let until = from + measure;
    let running = tokio::spawn(run_all(workers, from, until));
    let cpu = window_cpu(from, until, probe).await;
    merge(clients, measure, cpu, running.await??)
}

/// Runs every worker as its own task on the current runtime; their results.
async fn run_all<P: Pair>(
    workers: impl IntoIterator<Item = P>,
    from: Instant,
    until: Instant,
) -> anyhow::Result<Vec<WorkerResult>> {
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(run_worker(w, from, until)))
        .collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await??);
    }
    Ok(results)
}

/// CPU use over the measured window `from..until` (waits for its end).
async fn window_cpu(from: Instant, until: Instant, probe: &cpu::Probe) -> cpu::Usage {
    tokio::time::sleep_until(from).await;
    let before = cpu::snapshot(probe);
    tokio::time::sleep_until(until).await;
    cpu::usage(&before, &cpu::snapshot(probe))
}

fn merge(
    clients: usize,
    measure: Duration,
    cpu: cpu::Usage,
    results: Vec<WorkerResult>,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome {
        clients,
        pairs: 0,
        seconds: measure.as_secs_f64(),
        first: histogram()?,
        second: histogram()?,
        errors: 0,
        first_error: None,
        cpu,
    };
    for w in results {
        out.first.add(&w.first).map_err(|e| anyhow!("{e:?}"))?;
        out.second.add(&w.second).map_err(|e| anyhow!("{e:?}"))?;
        out.pairs += w.pairs;
        out.errors += w.errors;
        if out.first_error.is_none() {
            out.first_error = w.first_error;
        }
    }
    Ok(out)
}

/// Like [`drive`], with the workers on `threads` load-generator threads
/// (named [`cpu::LOADGEN_THREAD`]), each a current-thread runtime running
/// every `threads`-th worker, as a separate event-loop-per-thread load
/// generator (wrk) would: a client's connection and its requests stay on
/// one thread. `make(i)` builds worker `i` on its thread.
pub async fn drive_on_loadgen<P, F>(
    threads: usize,
    clients: usize,
    make: F,
    warmup: Duration,
    measure: Duration,
    probe: &cpu::Probe,
) -> anyhow::Result<Outcome>
where
    P: Pair,
    F: Fn(usize) -> anyhow::Result<P> + Send + Sync + 'static,
{
    let threads = threads.clamp(1, clients.max(1));
    let from = Instant::now() + warmup;
    let until = from + measure;
    let make = std::sync::Arc::new(make);
    let mut done = Vec::new();
    // A thread stays until the window's CPU has been read: one that exited
    // before would take its ticks with it.
    let mut releases = Vec::new();
    for t in 0..threads {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        releases.push(release);
        let make = make.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(cpu::LOADGEN_THREAD.into())
            .spawn(move || {
                let result = runtime.block_on(async move {
                    let workers = (t..clients)
                        .step_by(threads)
                        .map(|i| make(i))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    run_all(workers, from, until).await
                });
                let _ = tx.send(result);
                // Returns when `releases` is dropped.
                let _ = released.recv();
            })?;
        done.push(rx);
    }
    let cpu = window_cpu(from, until, probe).await;
    drop(releases);
    let mut results = Vec::new();
    for rx in done {
        results.extend(
            rx.await
                .map_err(|_| anyhow!("a load generator thread died"))??,
        );
    }
    merge(clients, measure, cpu, results)
}
