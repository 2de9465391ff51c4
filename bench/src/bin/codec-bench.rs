//! `codec-bench`: nanoseconds per encode and decode of each golden v1 event
//! (`schemas::Envelope`), the per-event CPU every appender, consumer and
//! replay pays.
//!
//! `cargo run --release -p tollgate-bench --bin codec-bench -- [ITERATIONS]`
#![allow(clippy::print_stdout)]

use anyhow::Context as _;
use schemas::events::Envelope;
use std::hint::black_box;
use std::time::Instant;

const EVENTS: [&str; 5] = [
    "reserved",
    "committed",
    "released",
    "expired",
    "usage_recorded",
];

fn main() -> anyhow::Result<()> {
    let n: u32 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().context("ITERATIONS must be a whole number")?,
        None => 200_000,
    };
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/golden/v1");
    println!(
        "{:<16} {:>6} {:>12} {:>12}",
        "event", "bytes", "decode ns", "encode ns"
    );
    for name in EVENTS {
        let bytes = std::fs::read(format!("{golden}/{name}.json"))
            .with_context(|| format!("reading the golden {name} event"))?;
        let env = Envelope::from_slice(&bytes)?;
        let t = Instant::now();
        for _ in 0..n {
            black_box(Envelope::from_slice(black_box(&bytes))?);
        }
        let decode = t.elapsed().as_nanos() as f64 / f64::from(n);
        let t = Instant::now();
        for _ in 0..n {
            black_box(black_box(&env).to_vec()?);
        }
        let encode = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!(
            "{name:<16} {:>6} {decode:>12.0} {encode:>12.0}",
            bytes.len()
        );
    }
    Ok(())
}
