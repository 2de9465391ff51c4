//! Where the CPU went during a measurement, read cheaply from `/proc`.
//!
//! Buckets: `service` (this process's threads except the load generator's
//! and the mock's: the HTTP server, the gate, the consumers, and the
//! in-process reference workers), `loadgen` (threads named
//! [`LOADGEN_THREAD`]), `mock` (a mock provider's thread, named
//! [`MOCK_THREAD`]), `nats` (our
//! nats-server), `postgres` (backends connected to our database), `other`
//! (everything else that ran on the machine: PostgreSQL's background writers,
//! other users' compiles, …) and `idle`. Figures are percent of one core, so
//! a 2-core machine has 200 in total.

use std::collections::BTreeMap;
use std::time::Instant;

/// Name of the load generator runtime's threads.
pub const LOADGEN_THREAD: &str = "tg-loadgen";
/// Name of the thread a benchmark runs its mock provider on.
pub const MOCK_THREAD: &str = "tg-mock";
/// Name of the services runtime's threads.
pub const SERVICE_THREAD: &str = "tg-service";
/// Linux reports process times in USER_HZ, which is 100 on every mainstream architecture.
const TICKS_PER_SEC: f64 = 100.0;

/// What to look for on the machine.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// Port of our nats-server (its command line names it).
    pub nats_port: Option<u16>,
    /// Our database's name (a backend's process title names it).
    pub db_name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    at: Instant,
    machine_busy: u64,
    machine_total: u64,
    /// tid → ticks: a thread that exits between two snapshots (the previous
    /// row's load generator) must not make the sum go down.
    service: BTreeMap<u32, u64>,
    loadgen: BTreeMap<u32, u64>,
    mock: BTreeMap<u32, u64>,
    /// pid → ticks, per external bucket.
    nats: BTreeMap<u32, u64>,
    postgres: BTreeMap<u32, u64>,
}

/// CPU use between two snapshots, in percent of one core.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub service: f64,
    pub loadgen: f64,
    /// A mock provider's thread in this process (`proxy-bench`).
    pub mock: f64,
    pub nats: f64,
    pub postgres: f64,
    pub other: f64,
    pub idle: f64,
}

/// `(comm, utime + stime)` from a `/proc/.../stat` line.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // After the comm: state is field 3 of the man page, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn machine() -> (u64, u64) {
    let Some(text) = read("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

pub fn snapshot(probe: &Probe) -> Snapshot {
    let (machine_busy, machine_total) = machine();
    let (mut service, mut loadgen, mut mock) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let path = task.path().join("stat");
            let Some((comm, ticks)) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| parse_stat(&t))
            else {
                continue;
            };
            if comm.starts_with(LOADGEN_THREAD) {
                loadgen.insert(tid, ticks);
            } else if comm.starts_with(MOCK_THREAD) {
                mock.insert(tid, ticks);
            } else {
                service.insert(tid, ticks);
            }
        }
    }
    let (mut nats, mut postgres) = (BTreeMap::new(), BTreeMap::new());
    let me = std::process::id();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Some(cmdline) = read(&format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let is_nats = probe.nats_port.is_some_and(|port| {
                cmdline.contains("nats-server") && cmdline.contains(&port.to_string())
            });
            let is_pg = probe.db_name.as_ref().is_some_and(|db| {
                cmdline.starts_with("postgres:") && cmdline.contains(db.as_str())
            });
            if !is_nats && !is_pg {
                continue;
            }
            let Some((_, ticks)) = read(&format!("/proc/{pid}/stat")).and_then(|t| parse_stat(&t))
            else {
                continue;
            };
            if is_nats {
                nats.insert(pid, ticks);
            } else {
                postgres.insert(pid, ticks);
            }
        }
    }
    Snapshot {
        at: Instant::now(),
        machine_busy,
        machine_total,
        service,
        loadgen,
        mock,
        nats,
        postgres,
    }
}

fn grown(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// CPU use from `a` to `b`.
pub fn usage(a: &Snapshot, b: &Snapshot) -> Usage {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let pct = |ticks: u64| ticks as f64 / TICKS_PER_SEC / secs * 100.0;
    let service = pct(grown(&a.service, &b.service));
    let loadgen = pct(grown(&a.loadgen, &b.loadgen));
    let mock = pct(grown(&a.mock, &b.mock));
    let nats = pct(grown(&a.nats, &b.nats));
    let postgres = pct(grown(&a.postgres, &b.postgres));
    let busy = pct(b.machine_busy.saturating_sub(a.machine_busy));
    let total = pct(b.machine_total.saturating_sub(a.machine_total));
    Usage {
        service,
        loadgen,
        mock,
        nats,
        postgres,
        other: (busy - service - loadgen - mock - nats - postgres).max(0.0),
        idle: (total - busy).max(0.0),
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    read("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "42 (tg loadgen) S 1 42 42 0 -1 4194304 100 0 0 0 250 17 0 0 20 0 4 0 1 0 0";
        assert_eq!(parse_stat(line), Some(("tg loadgen".into(), 267)));
    }
}
