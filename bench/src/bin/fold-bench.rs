//! `fold-bench`: what one busy account's state costs as it grows. A state
//! keeps every settled hold of the last day (for idempotent retries), so an
//! account that serves many requests a day holds that many entries in
//! memory, on every gate that serves it, and in its snapshots.
//!
//! Folds PAIRS reserve → commit pairs of one account, MS_BETWEEN apart in
//! event time (default 100 ms: 200,000 pairs span 5.6 hours, all kept), and
//! prints the fold's time per event as the state grows, the process's
//! resident memory per settled pair, and the cost of cloning, encoding and
//! restoring the state (what saving and reading back a snapshot do).
//!
//! `cargo run --release -p tollgate-bench --bin fold-bench -- [PAIRS] [MS_BETWEEN]`
#![allow(clippy::print_stdout)]

use anyhow::Context as _;
use chrono::{DateTime, Duration, Utc};
use projector::snapshot::{JSON_SNAPSHOT_FORMAT, SNAPSHOT_FORMAT};
use projector::AccountState;
use rust_decimal::Decimal;
use schemas::events::{Committed, Envelope, Event, HoldRef, Reserved};
use schemas::{Account, Amounts, EventId, ProjectId, ReservationId, Unit, SCHEMA_VERSION};
use std::time::Instant;

// As `tollgate` allocates (src/main.rs), so the memory figures are its.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory of this process, in KiB.
fn resident_kib() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kib = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim();
    Ok(kib.parse()?)
}

/// A reserve and its commit, with the amounts the proxy records.
fn pair(project: ProjectId, at: DateTime<Utc>) -> [Envelope; 2] {
    let held = Amounts::new()
        .with(Unit::Requests, Decimal::ONE)
        .with(Unit::Tokens, Decimal::from(1_012))
        .with(Unit::InputTokens, Decimal::from(12))
        .with(Unit::OutputTokens, Decimal::from(1_000))
        .with(Unit::Usd, Decimal::new(60_018, 7));
    let actual = Amounts::new()
        .with(Unit::Requests, Decimal::ONE)
        .with(Unit::Tokens, Decimal::from(52))
        .with(Unit::InputTokens, Decimal::from(12))
        .with(Unit::OutputTokens, Decimal::from(40))
        .with(Unit::Usd, Decimal::new(2_418, 7));
    let reservation_id = ReservationId::new();
    let model = Some("gpt-4o-mini".to_owned());
    let envelope = |event, occurred_at| Envelope {
        event_id: EventId::new(),
        schema_version: SCHEMA_VERSION,
        occurred_at,
        project_id: project,
        account: Account::Identity {
            identity: "busy-user".into(),
        },
        request_id: None,
        event,
    };
    let reserved = Event::Reserved(Reserved {
        reservation_id,
        model: model.clone(),
        amounts: held.clone(),
        expires_at: at + Duration::seconds(600),
        tier: Some("free".into()),
    });
    let committed = Event::Committed(Committed {
        hold: HoldRef {
            reservation_id,
            reserved_at: at,
            model,
            held,
        },
        actual,
        overage: Amounts::new(),
    });
    [
        envelope(reserved, at),
        envelope(committed, at + Duration::milliseconds(40)),
    ]
}

fn main() -> anyhow::Result<()> {
    ingest::alloc::no_huge_pages();
    let arg = |n: usize, default: u64| -> anyhow::Result<u64> {
        std::env::args().nth(n).map_or(Ok(default), |a| {
            a.parse()
                .with_context(|| format!("argument {n} must be a whole number"))
        })
    };
    let pairs = arg(1, 200_000)?;
    let between = Duration::milliseconds(i64::try_from(arg(2, 100)?)?);
    let slice = (pairs / 8).max(1);
    let project = ProjectId::new();
    let start = DateTime::from_timestamp(1_790_000_000, 0).context("start time")?;
    println!(
        "{pairs} reserve → commit pairs of one account, {} ms apart",
        between.num_milliseconds()
    );
    println!("{:>10} {:>10} {:>14}", "pairs", "entries", "µs per event");
    let mut state = AccountState::new();
    let before = resident_kib()?;
    let (mut seq, mut at) = (0u64, start);
    let (mut folding, mut folded) = (std::time::Duration::ZERO, 0u32);
    for i in 1..=pairs {
        // Built outside the timed part: the fold alone is measured.
        let events = pair(project, at);
        at += between;
        let t = Instant::now();
        for event in &events {
            seq += 1;
            state.apply(seq, event);
        }
        folding += t.elapsed();
        folded += 2;
        if i % slice == 0 || i == pairs {
            println!(
                "{i:>10} {:>10} {:>14.2}",
                state.entries(),
                folding.as_secs_f64() * 1e6 / f64::from(folded)
            );
            (folding, folded) = (std::time::Duration::ZERO, 0);
        }
    }
    let grown = resident_kib()?.saturating_sub(before);
    println!(
        "resident memory: +{} MiB, {} bytes per pair",
        grown / 1024,
        grown * 1024 / pairs.max(1)
    );
    let t = Instant::now();
    let whole = state.clone();
    let cloned = t.elapsed();
    drop(whole);
    let t = Instant::now();
    let copy = state.snapshot_copy();
    println!(
        "copy to save (made under the account's lock): {:.2} ms (a whole clone: {:.2} ms)",
        t.elapsed().as_secs_f64() * 1e3,
        cloned.as_secs_f64() * 1e3
    );
    // Format 3, what is saved, and format 2 (JSON), what was before it.
    for (format, name) in [
        (SNAPSHOT_FORMAT, "binary"),
        (JSON_SNAPSHOT_FORMAT, "JSON (format 2)"),
    ] {
        let t = Instant::now();
        let bytes = if format == SNAPSHOT_FORMAT {
            copy.to_snapshot()
        } else {
            state.to_json_snapshot()?
        };
        let encoded = t.elapsed();
        let t = Instant::now();
        let back = AccountState::from_snapshot(format, &bytes)?;
        let restored = t.elapsed();
        println!(
            "snapshot, {name}: {} bytes ({} per pair), encoded in {:.1} ms, restored in {:.1} ms",
            bytes.len(),
            bytes.len() as u64 / pairs.max(1),
            encoded.as_secs_f64() * 1e3,
            restored.as_secs_f64() * 1e3
        );
        anyhow::ensure!(back == state, "the state restored from {name} differs");
    }
    Ok(())
}
