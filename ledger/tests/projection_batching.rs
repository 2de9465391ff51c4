//! The ledger projection gives the same rows however the stream is cut into
//! batches (the live consumer folds each batch before writing it), and the
//! same rows as the in-memory rebuild `tollgate replay` copies in, including
//! for streams a well-behaved gate never writes: repeated `reserved`, second
//! settlements, settlements of unknown holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use projector::consumer::{apply_batch, Raw};
use projector::copy::copy_into;
use projector::rebuild::Accounts;
use schemas::Envelope;
use serde_json::{json, Value};
use sqlx::PgPool;
use tollgate_ledger::projection::{
    LedgerProjection, LedgerRebuild, BALANCE_COLUMNS, RESERVATION_COLUMNS,
};

const PROJECT: &str = "019aa5c0-0000-7000-8000-000000000001";

fn id(n: u32) -> String {
    format!("019aa5c2-7f3e-7c41-9a6e-{n:012}")
}

fn hold(n: u32, held: Value) -> Value {
    json!({"reservation_id": id(n), "reserved_at": "2026-11-21T20:15:03.123456Z", "model": "gpt-4o-mini", "held": held})
}

fn envelope(k: u32, identity: &str, event: Value) -> Envelope {
    let v = json!({
        "event_id": format!("019aa5c2-8000-7c41-9a6e-{k:012}"),
        "schema_version": 1,
        "occurred_at": format!("2026-11-21T20:15:{:02}.5Z", 4 + k % 50),
        "project_id": PROJECT,
        "account": {"kind": "identity", "identity": identity},
        "event": event,
    });
    Envelope::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap()
}

/// A stream with every case the projection distinguishes.
fn stream() -> Vec<Envelope> {
    let held = json!({"requests": "1", "tokens": "1000", "usd": "0.05"});
    let reserved = |n: u32, tier: Option<&str>| json!({"type": "reserved", "reservation_id": id(n), "model": "gpt-4o-mini", "amounts": held.clone(), "expires_at": "2026-11-21T20:16:03Z", "tier": tier});
    let committed = |n: u32, tokens: u32| {
        json!({"type": "committed", "hold": hold(n, held.clone()), "actual": {"requests": "1", "tokens": tokens.to_string(), "usd": "0.0042"},
               "overage": if tokens > 1000 { json!({"tokens": (tokens - 1000).to_string()}) } else { json!({}) }})
    };
    let released = |n: u32| json!({"type": "released", "hold": hold(n, held.clone()), "reason": "client\tgone\\now"});
    let expired = |n: u32| json!({"type": "expired", "hold": hold(n, held.clone()), "expires_at": "2026-11-21T20:16:03Z"});
    let events = vec![
        ("u1", reserved(1, Some("free"))),
        ("u1", reserved(2, None)),
        ("u1", committed(1, 420)),
        ("u1", released(2)),
        ("u1", reserved(1, Some("pro"))), // repeated: ignored
        ("u1", committed(1, 999)),        // second settlement: ignored
        ("u2", expired(3)),               // unknown hold: no row
        ("u2", reserved(3, None)),        // its row is created open
        ("u2", reserved(4, None)),
        ("u2", expired(4)),
        (
            "u2",
            json!({"type": "usage_recorded", "usage_id": id(90), "model": "gpt-4o", "amounts": {"images": "2"}}),
        ),
        ("u3 with\nnewline", reserved(5, None)), // stays open
        ("u2", committed(3, 1300)),
        ("u2", released(3)), // after its commit: ignored
        ("u1", reserved(6, None)),
        ("u1", released(6)),
        ("u1", reserved(6, None)), // repeated after settlement: ignored
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(k, (who, event))| envelope(k as u32, who, event))
        .collect()
}

fn raws(events: &[Envelope]) -> Vec<Raw> {
    events
        .iter()
        .enumerate()
        .map(|(k, env)| Raw {
            seq: k as u64 + 1,
            subject: "tollgate.ledger.v1.test".to_owned(),
            payload: env.to_vec().unwrap().into(),
        })
        .collect()
}

async fn rows(pool: &PgPool) -> Vec<String> {
    let mut out = Vec::new();
    for (table, key) in [
        ("reservations", "project_id, reservation_id"),
        ("account_balances", "project_id, account_token, unit"),
    ] {
        out.extend(testkit::pg::rows_as_text(pool, table, key).await.unwrap());
    }
    out
}

async fn live(batch_sizes: &[usize]) -> Vec<String> {
    let db = testkit::pg::fresh_database().await.unwrap();
    let all = raws(&stream());
    let mut rest: &[Raw] = &all;
    for size in batch_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at((*size).min(rest.len()));
        apply_batch(db.pool(), &LedgerProjection, batch)
            .await
            .unwrap();
        rest = tail;
    }
    rows(db.pool()).await
}

#[tokio::test]
async fn batching_changes_nothing_and_rebuild_equals_live() {
    let one_by_one = live(&[1]).await;
    assert_eq!(one_by_one, live(&[usize::MAX]).await, "one batch");
    assert_eq!(one_by_one, live(&[3, 1, 4, 2]).await, "mixed batches");

    // What the rows must say, beyond agreeing with each other.
    let text = one_by_one.join("\n");
    let reservations: Vec<&String> = one_by_one
        .iter()
        .filter(|r| r.starts_with("reservations: "))
        .collect();
    assert_eq!(reservations.len(), 6, "{text}");
    for (n, status) in [
        (1, "committed"),
        (2, "released"),
        (3, "committed"),
        (4, "expired"),
        (5, "open"),
        (6, "released"),
    ] {
        let row = reservations
            .iter()
            .find(|r| r.contains(&id(n)))
            .unwrap_or_else(|| panic!("no row {n}\n{text}"));
        assert!(
            row.contains(&format!(",{status},")),
            "{n} should be {status}: {row}"
        );
    }
    let first = reservations.iter().find(|r| r.contains(&id(1))).unwrap();
    assert!(
        first.contains(",free,") && first.contains("\"\"420\"\""),
        "first reserve and commit win: {first}"
    );

    // The rebuild's COPY rows give the same tables.
    let db = testkit::pg::fresh_database().await.unwrap();
    let (mut accounts, mut rebuild) = (Accounts::default(), LedgerRebuild::default());
    for (k, env) in stream().iter().enumerate() {
        let account = accounts.id(env);
        rebuild.add(&accounts, account, k as u64 + 1, env);
    }
    let (mut reservations, mut balances) = rebuild.finish(&accounts);
    let mut conn = db.pool().acquire().await.unwrap();
    copy_into(
        &mut conn,
        "reservations",
        RESERVATION_COLUMNS,
        reservations.take(),
    )
    .await
    .unwrap();
    copy_into(
        &mut conn,
        "account_balances",
        BALANCE_COLUMNS,
        balances.take(),
    )
    .await
    .unwrap();
    drop(conn);
    assert_eq!(one_by_one, rows(db.pool()).await, "rebuild");
}

/// A batch that does not continue where the checkpoint stands is refused
/// and changes nothing, from checkpoint 0 too (a first batch that failed,
/// then a fetch that returned later events): acking it would skip events
/// for good. Events a purge removed from the stream are not waited for.
#[tokio::test]
async fn batches_that_skip_events_are_refused_from_the_first_one() {
    use projector::consumer::{apply_batch_to, ApplyError};
    let db = testkit::pg::fresh_database().await.unwrap();
    let all = raws(&stream());
    let gap = |r: Result<usize, ApplyError>| match r {
        Err(ApplyError::Gap {
            after_next, first, ..
        }) => (after_next, first),
        other => panic!("expected a gap, got {other:?}"),
    };
    assert_eq!(
        gap(apply_batch(db.pool(), &LedgerProjection, &all[2..]).await),
        (1, 3)
    );
    assert!(rows(db.pool()).await.is_empty(), "nothing applied");
    apply_batch(db.pool(), &LedgerProjection, &all[..2])
        .await
        .unwrap();
    assert_eq!(
        gap(apply_batch(db.pool(), &LedgerProjection, &all[3..]).await),
        (3, 4)
    );
    // The stream was purged up to sequence 5: 3 and 4 no longer exist.
    apply_batch_to(db.pool(), &[&LedgerProjection], &all[4..], 5)
        .await
        .unwrap();

    // From checkpoint 0 on a stream purged up to sequence 3.
    let db = testkit::pg::fresh_database().await.unwrap();
    assert_eq!(
        gap(apply_batch_to(db.pool(), &[&LedgerProjection], &all[3..], 3).await),
        (3, 4)
    );
    apply_batch_to(db.pool(), &[&LedgerProjection], &all[2..], 3)
        .await
        .unwrap();
}
