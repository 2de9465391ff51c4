//! Stream, subject and consumer names. Built here and nowhere else.
//!
//! Every event of one account goes on one subject, so JetStream's
//! `Nats-Expected-Last-Subject-Sequence` makes appends to an account
//! linearizable (invariant 1). Identities are hashed into the subject so any
//! string is a valid identity and none leaks into subject-based monitoring.

use crate::events::Account;
use crate::ids::ProjectId;
use sha2::{Digest, Sha256};

/// The ledger stream: the source of truth.
pub const LEDGER_STREAM: &str = "TOLLGATE_LEDGER";
/// Every subject of the ledger stream starts with this.
pub const LEDGER_PREFIX: &str = "tollgate.ledger.v1";
/// Durable consumer of the ledger service.
pub const LEDGER_CONSUMER: &str = "tollgate_ledger";
/// Durable consumer of the projector service.
pub const PROJECTOR_CONSUMER: &str = "tollgate_projector";
/// Core-NATS subject announcing control-plane changes (plans, keys).
pub const CONTROL_CHANGED: &str = "tollgate.control.v1.changed";

/// All subjects of the ledger stream.
pub fn ledger_all() -> String {
    format!("{LEDGER_PREFIX}.>")
}

/// All subjects of one project.
pub fn project_filter(project: ProjectId) -> String {
    format!("{LEDGER_PREFIX}.{}.>", project.0.simple())
}

/// The stable token naming an account inside its project's subjects.
pub fn account_token(project: ProjectId, account: &Account) -> String {
    match account {
        Account::Identity { identity } => {
            let mut h = Sha256::new();
            h.update(project.0.as_bytes());
            h.update(identity.as_bytes());
            let digest = h.finalize();
            format!("i{}", hex::encode(&digest[..16]))
        }
    }
}

/// The one subject every event of `account` is appended to.
pub fn account_subject(project: ProjectId, account: &Account) -> String {
    format!(
        "{LEDGER_PREFIX}.{}.{}",
        project.0.simple(),
        account_token(project, account)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_identity_makes_a_valid_single_token_subject() {
        let p = ProjectId::new();
        let weird = Account::Identity {
            identity: "a.b *>\u{1F600} c".into(),
        };
        let s = account_subject(p, &weird);
        assert_eq!(s.split('.').count(), 5);
        assert!(!s.contains(' ') && !s.contains('*') && !s.contains('>'));
        let other = Account::Identity {
            identity: "a.b".into(),
        };
        assert_ne!(s, account_subject(p, &other));
        assert_eq!(s, account_subject(p, &weird));
    }
}
