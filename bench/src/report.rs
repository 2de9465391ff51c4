//! Printing: machine facts, the latency/throughput table, where the CPU
//! went, the replay figures and the targets with a verdict each.

use crate::cpu;
use crate::replay::ReplayResult;
use crate::suite::{IngestReport, HTTP_ROW};
use hdrhistogram::Histogram;

/// Targets of the benchmark issue (this 2-core machine, load generator on the same cores).
pub const RESERVE_P50_MS: f64 = 0.2;
pub const RESERVE_P99_MS: f64 = 1.0;
pub const PAIRS_AT_64: f64 = 10_000.0;
pub const REPLAY_EVENTS_PER_SEC: f64 = 100_000.0;

fn command(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git_revision() -> String {
    let root = testkit::repo_root();
    let root = root.to_string_lossy();
    match command("git", &["-C", &root, "rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = command("git", &["-C", &root, "status", "--porcelain"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev} (+ uncommitted changes)")
            } else {
                rev
            }
        }
        None => "unknown (no git)".into(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn facts() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let build = if cfg!(debug_assertions) {
        "DEBUG build: numbers are meaningless, use --release"
    } else {
        "release build"
    };
    let nats = command("nats-server", &["--version"]).unwrap_or_else(|| "unknown".into());
    let allocator = "allocator: mimalloc, as `tollgate`";
    println!(
        "tollgate-bench  git {}  ({build}; {allocator})",
        git_revision()
    );
    println!("machine: nproc = {cpus}, {}", cpu_model());
    println!("nats-server: {nats}");
    println!("load average at start (1/5/15 min): {}", cpu::loadavg());
    println!(
        "machine speed now: {:.0} ns to decode the golden committed event (lower is faster; this VM's speed drifts up to 2x, even between runs a minute apart: compare runs only at similar speed, and only from builds with the same codec: since 3ea4544 a decode costs ~17 % less, before it the figure ranged from 2,300 to 4,800)",
        decode_ns()
    );
    println!();
}

/// Single-core speed right now: nanoseconds per decode of a fixed event.
/// This VM's speed drifts by a third over an hour, more than most changes.
pub fn decode_ns() -> f64 {
    let bytes = include_bytes!("../../schemas/golden/v1/committed.json");
    let rounds = 50_000u32;
    for _ in 0..rounds / 5 {
        let _ = std::hint::black_box(schemas::Envelope::from_slice(std::hint::black_box(bytes)));
    }
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        let _ = std::hint::black_box(schemas::Envelope::from_slice(std::hint::black_box(bytes)));
    }
    started.elapsed().as_nanos() as f64 / f64::from(rounds)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn ingest(report: &IngestReport, seconds: u64, warmup: u64) {
    println!(
        "== ingest: closed loop, each client reserves then commits for its own identity; {seconds} s measured after {warmup} s warm-up"
    );
    if !report.consumers {
        println!("   (diagnostic run: --no-consumers, the ledger and projector consumers were NOT running)");
    }
    println!(
        "{:<54} {:>7} {:>9}   {:>17}   {:>17} {:>6}",
        "scenario", "clients", "pairs/s", "1st call p50/p99", "2nd call p50/p99", "errors"
    );
    println!(
        "{:<54} {:>7} {:>9}   {:>17}   {:>17}",
        "", "", "", "(reserve) ms", "(commit) ms"
    );
    let mut last = "";
    for row in &report.rows {
        if row.scenario != last && !last.is_empty() {
            println!();
        }
        last = row.scenario;
        let o = &row.outcome;
        println!(
            "{:<54} {:>7} {:>9}   {:>7.3} / {:>7.3}   {:>7.3} / {:>7.3} {:>6}",
            row.scenario,
            o.clients,
            rate(o.pairs_per_sec()),
            ms(&o.first, 0.5),
            ms(&o.first, 0.99),
            ms(&o.second, 0.5),
            ms(&o.second, 0.99),
            o.errors
        );
    }
    for row in &report.rows {
        if let Some(e) = &row.outcome.first_error {
            println!(
                "   first error ({}, {} clients): {e}",
                row.scenario, row.outcome.clients
            );
        }
    }
    println!();
    println!("== where the CPU went during each measured window (% of one core; 100 × nproc = all cores busy)");
    println!("   service = this process minus the load generator (HTTP server, gate, consumers, in-process reference workers)");
    println!(
        "{:<54} {:>7} {:>8} {:>8} {:>6} {:>9} {:>6} {:>6}   projections behind at end",
        "scenario", "clients", "service", "loadgen", "nats", "postgres", "other", "idle",
    );
    for row in &report.rows {
        let c = &row.outcome.cpu;
        let lag = match row.lag {
            Some((0, _)) => "0".to_owned(),
            Some((n, t)) => format!(
                "{} events, caught up in {:.1} s",
                rate(n as f64),
                t.as_secs_f64()
            ),
            None => "-".to_owned(),
        };
        println!(
            "{:<54} {:>7} {:>8.0} {:>8.0} {:>6.0} {:>9.0} {:>6.0} {:>6.0}   {lag}",
            row.scenario,
            row.outcome.clients,
            c.service,
            c.loadgen,
            c.nats,
            c.postgres,
            c.other,
            c.idle
        );
    }
    println!();
}

pub fn replay(r: &ReplayResult) {
    println!(
        "== replay: {} events ({} reserved+committed pairs over {} accounts)",
        rate(r.events as f64),
        rate((r.events / 2) as f64),
        r.accounts
    );
    let per_sec = |d: std::time::Duration| rate(r.events as f64 / d.as_secs_f64().max(1e-9));
    println!(
        "   setup: published to JetStream in {:.1} s ({} events/s, acks in flight)",
        r.generate.as_secs_f64(),
        per_sec(r.generate)
    );
    println!(
        "   reference: read + decode the stream only, no SQL:        {:>7.1} s = {:>9} events/s",
        r.read_only.as_secs_f64(),
        per_sec(r.read_only)
    );
    match r.replay {
        Some(t) => println!(
            "   ledger::replay::replay:                                   {:>7.1} s = {:>9} events/s",
            t.as_secs_f64(),
            rate(r.events_per_sec())
        ),
        None => println!(
            "   ledger::replay::replay: NOT FINISHED within {} s; {} of {} events applied = {} events/s",
            r.limit.as_secs(),
            rate(r.progress.last().map_or(0, |p| p.0) as f64),
            rate(r.events as f64),
            rate(r.events_per_sec())
        ),
    }
    // How the rate evolves: about ten slices of the run.
    let step = (r.progress.len() / 10).max(1);
    let mut prev = (0u64, std::time::Duration::ZERO);
    let mut slices = Vec::new();
    for (i, p) in r.progress.iter().enumerate() {
        if (i + 1) % step == 0 || i + 1 == r.progress.len() {
            let rate_now = (p.0 - prev.0) as f64 / (p.1 - prev.1).as_secs_f64().max(1e-9);
            slices.push(format!("{}k: {}/s", p.0 / 1000, rate(rate_now)));
            prev = *p;
        }
    }
    if !slices.is_empty() {
        println!(
            "   replay rate per slice (events done: rate over the slice): {}",
            slices.join(", ")
        );
    }
    if let Some(p) = &r.phases {
        println!(
            "   replay phases: setup {:.2} s, stream read and folded {:.2} s, final copies {:.2} s, commit {:.2} s",
            p.setup.as_secs_f64(),
            p.stream.as_secs_f64(),
            p.final_copies.as_secs_f64(),
            p.commit.as_secs_f64()
        );
    }
    if let Some((checksum, reservations, committed)) = &r.checksum {
        println!(
            "   rebuilt: {} reservations ({} committed); checksum {checksum}",
            rate(*reservations as f64),
            rate(*committed as f64)
        );
    }
    println!(
        "   CPU (% of one core)            {:>8} {:>6} {:>9} {:>6} {:>6}",
        "service", "nats", "postgres", "other", "idle"
    );
    for (name, c) in [
        ("read only", &r.read_only_cpu),
        ("ledger::replay::replay", &r.replay_cpu),
    ] {
        println!(
            "   {:<30} {:>8.0} {:>6.0} {:>9.0} {:>6.0} {:>6.0}",
            name, c.service, c.nats, c.postgres, c.other, c.idle
        );
    }
    println!();
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

pub fn targets(ingest: Option<&IngestReport>, replay: Option<&ReplayResult>) {
    println!("== targets (2-core machine, load generator on the same cores)");
    if let Some(report) = ingest {
        let http = |clients: usize| {
            report
                .rows
                .iter()
                .find(|r| r.scenario == HTTP_ROW && r.outcome.clients == clients)
        };
        match http(1) {
            Some(row) => {
                let (p50, p99) = (ms(&row.outcome.first, 0.5), ms(&row.outcome.first, 0.99));
                println!(
                    "   reserve p50 ≤ {RESERVE_P50_MS:.3} ms at 1 client:   {p50:>9.3} ms      {}",
                    verdict(p50 <= RESERVE_P50_MS)
                );
                println!(
                    "   reserve p99 ≤ {RESERVE_P99_MS:.3} ms at 1 client:   {p99:>9.3} ms      {}",
                    verdict(p99 <= RESERVE_P99_MS)
                );
            }
            None => println!("   reserve latency at 1 client: not measured (add 1 to --clients)"),
        }
        match http(64) {
            Some(row) => {
                let v = row.outcome.pairs_per_sec();
                println!(
                    "   ≥ {} pairs/s at 64 clients:     {:>9} pairs/s {}",
                    rate(PAIRS_AT_64),
                    rate(v),
                    verdict(v >= PAIRS_AT_64)
                );
            }
            None => println!("   pairs/s at 64 clients: not measured (add 64 to --clients)"),
        }
    }
    if let Some(r) = replay {
        let v = r.events_per_sec();
        println!(
            "   replay ≥ {} events/s:          {:>9} events/s {}",
            rate(REPLAY_EVENTS_PER_SEC),
            rate(v),
            verdict(v >= REPLAY_EVENTS_PER_SEC)
        );
    }
    println!("   load average at end (1/5/15 min): {}", cpu::loadavg());
}
