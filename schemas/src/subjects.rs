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
    let mut token = String::with_capacity(TOKEN_LEN);
    push_account_token(&mut token, project, account);
    token
}

/// `i` and the hex of the first 128 bits of SHA-256(project id ‖ identity).
const TOKEN_LEN: usize = 33;

fn push_account_token(out: &mut String, project: ProjectId, account: &Account) {
    match account {
        Account::Identity { identity } => {
            let mut h = Sha256::new();
            h.update(project.0.as_bytes());
            h.update(identity.as_bytes());
            let digest = h.finalize();
            let mut hex_digits = [0u8; 32];
            // (Cannot fail: the buffer is exactly twice the bytes encoded.)
            if hex::encode_to_slice(&digest[..16], &mut hex_digits).is_ok() {
                out.push('i');
                out.extend(hex_digits.iter().map(|&b| char::from(b)));
            }
        }
    }
}

/// The one subject every event of `account` is appended to.
///
/// Built into one allocation: every reserve and settle names it, and with
/// `format!` it was ~2 % of a request's CPU.
pub fn account_subject(project: ProjectId, account: &Account) -> String {
    let mut subject = String::with_capacity(LEDGER_PREFIX.len() + 2 + 32 + TOKEN_LEN);
    subject.push_str(LEDGER_PREFIX);
    subject.push('.');
    subject.push_str(
        project
            .0
            .simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    subject.push('.');
    push_account_token(&mut subject, project, account);
    subject
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

    /// The subject's layout is part of the stream's contract (subscribers
    /// filter on it, snapshots and reservations name it): pinned here.
    #[test]
    fn subjects_keep_their_layout() {
        let p = ProjectId(uuid::Uuid::from_u128(
            0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        ));
        let a = Account::Identity {
            identity: "user-1".into(),
        };
        let mut h = Sha256::new();
        h.update(p.0.as_bytes());
        h.update(b"user-1");
        let token = format!("i{}", hex::encode(&h.finalize()[..16]));
        assert_eq!(account_token(p, &a), token);
        assert_eq!(
            account_subject(p, &a),
            format!("tollgate.ledger.v1.0123456789abcdef0123456789abcdef.{token}")
        );
    }
}
