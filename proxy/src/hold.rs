//! The proxy's hold handle: taken before the upstream call and settled on
//! every path — committed with the measured usage, released on upstream
//! error, committed with what was consumed when the client goes away. A
//! handle dropped unsettled releases its hold. Settlement runs on the
//! task tracker of the HTTP thread that served the request (`ingest::threads`),
//! so shutdown waits for it, and is retried while the ledger is unavailable:
//! a commit until it lands (one that lands after the hold expired is
//! recorded as late usage, never lost), a release for the hold's lifetime.

use ledger::{Gate, GateError};
use schemas::{Account, Amounts, ProjectId, ReservationId};
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// How long settlement keeps retrying: past the hold's lifetime the ledger
/// expires it, which is what a release would have done. A commit retries an
/// unavailable ledger for as long as the process runs instead: one landing
/// after its hold expired is recorded as late usage, and one given up would
/// leave the call's spend unrecorded. (Calls are refused while the ledger
/// is unavailable, so only those in flight when it went away wait; shutdown
/// waits for them a few seconds, `ingest::threads`.)
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(600);

/// The reason a hold whose reserve was never acknowledged is released with
/// (`chat.rs`).
pub const UNCONFIRMED: &str = "unconfirmed";

/// How long the release of an unconfirmed hold keeps looking for it after
/// it was first found missing: its append may still land after its
/// acknowledgement timed out (queued in the client while NATS reconnects,
/// which sends it as soon as it is back, or stored late by a slow server),
/// and a hold that lands after its release gave up would take its budget
/// and a concurrency slot until it expires.
const UNCONFIRMED_MAY_LAND_FOR: Duration = Duration::from_secs(5);

#[must_use = "a hold must be committed or released"]
pub struct Hold {
    gate: Gate,
    tracker: TaskTracker,
    project: ProjectId,
    account: Account,
    reservation_id: ReservationId,
    request_id: Option<String>,
    settled: bool,
}

enum Settle {
    Commit(Amounts),
    Release(&'static str),
}

impl Hold {
    pub fn new(
        gate: Gate,
        tracker: TaskTracker,
        project: ProjectId,
        account: Account,
        reservation_id: ReservationId,
        request_id: Option<String>,
    ) -> Hold {
        Hold {
            gate,
            tracker,
            project,
            account,
            reservation_id,
            request_id,
            settled: false,
        }
    }

    pub fn reservation_id(&self) -> ReservationId {
        self.reservation_id
    }

    /// The tasks that settle holds, which shutdown waits for.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Commits the actual usage in the background.
    pub fn commit(mut self, actual: Amounts) {
        self.settled = true;
        self.spawn(Settle::Commit(actual));
    }

    /// Releases the hold in the background.
    pub fn release(mut self, reason: &'static str) {
        self.settled = true;
        self.spawn(Settle::Release(reason));
    }

    fn spawn(&self, settle: Settle) {
        let (gate, project, account, id, rid) = (
            self.gate.clone(),
            self.project,
            self.account.clone(),
            self.reservation_id,
            self.request_id.clone(),
        );
        // Boxed for the reason `chat::completions` boxes the call.
        self.tracker.spawn(Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut missing_since = None;
            let mut backoff = Duration::from_millis(50);
            loop {
                let result = match &settle {
                    Settle::Commit(actual) => gate.commit(project, id, Some(&account), actual.clone(), rid.clone()).await.map(|_| ()),
                    Settle::Release(reason) => gate.release(project, id, Some(&account), Some((*reason).to_owned()), rid.clone()).await.map(|_| ()),
                };
                match result {
                    Ok(()) => return,
                    Err(GateError::Conflict { status }) => {
                        tracing::warn!(reservation_id = %id, status, "hold was already settled");
                        return;
                    }
                    // A hold whose reserve was never confirmed, and has not
                    // landed (yet: see UNCONFIRMED_MAY_LAND_FOR).
                    Err(GateError::NotFound) => {
                        let since = *missing_since.get_or_insert_with(tokio::time::Instant::now);
                        if !settle.looks_again(since.elapsed()) {
                            return;
                        }
                    }
                    Err(e) if settle.retries(&e, started.elapsed()) => {
                        tracing::warn!(reservation_id = %id, error = %e, "settling a hold failed; retrying");
                    }
                    Err(e) => {
                        tracing::error!(reservation_id = %id, error = %e, "gave up settling a hold; it will expire");
                        return;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }));
    }
}

impl Settle {
    /// Whether a hold not found, `elapsed` after it was first found
    /// missing, is looked for again: only an unconfirmed one, which may
    /// still land.
    fn looks_again(&self, elapsed: Duration) -> bool {
        matches!(self, Settle::Release(UNCONFIRMED)) && elapsed < UNCONFIRMED_MAY_LAND_FOR
    }

    /// Whether a settlement that failed with `error`, `elapsed` after its
    /// first try, is tried again (see [`SETTLE_RETRY_FOR`]).
    fn retries(&self, error: &GateError, elapsed: Duration) -> bool {
        let ledger_away = matches!(
            error,
            GateError::Unavailable(_) | GateError::Unconfirmed(_) | GateError::Contention
        );
        elapsed < SETTLE_RETRY_FOR || (matches!(self, Settle::Commit(_)) && ledger_away)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.spawn(Settle::Release("dropped"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_outlasts_an_unavailable_ledger_and_a_release_its_hold() {
        let commit = Settle::Commit(Amounts::new());
        let release = Settle::Release("upstream_error");
        let away = GateError::Unavailable("not connected to NATS".into());
        let hour = Duration::from_secs(3_600);
        for settle in [&commit, &release] {
            assert!(settle.retries(&away, Duration::ZERO));
            assert!(settle.retries(&GateError::Contention, Duration::from_secs(1)));
        }
        // Past the hold's lifetime: the ledger has expired it, so a commit
        // lands as late usage, and a release has nothing left to do.
        assert!(commit.retries(&away, hour));
        assert!(commit.retries(&GateError::Unconfirmed("no ack".into()), hour));
        assert!(!release.retries(&away, hour));
        // An error no retry mends ends the retries in time, for both.
        let broken = GateError::Internal(anyhow::anyhow!("an event cannot be read"));
        assert!(commit.retries(&broken, Duration::ZERO));
        assert!(!commit.retries(&broken, hour));
    }

    #[test]
    fn only_an_unconfirmed_hold_not_found_is_looked_for_again_for_a_while() {
        let unconfirmed = Settle::Release(UNCONFIRMED);
        assert!(unconfirmed.looks_again(Duration::ZERO));
        assert!(unconfirmed.looks_again(Duration::from_secs(4)));
        assert!(!unconfirmed.looks_again(UNCONFIRMED_MAY_LAND_FOR));
        // A confirmed hold not found was settled already or never existed.
        assert!(!Settle::Release("upstream_error").looks_again(Duration::ZERO));
        assert!(!Settle::Commit(Amounts::new()).looks_again(Duration::ZERO));
    }
}
