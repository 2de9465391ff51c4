//! Replay equality (invariant 3): after a mixed workload, dropping every
//! projection and replaying the stream gives exactly the same balances and
//! counters, and the live projections agree with the gate's own view.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::time::Duration;
use support::Harness;

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    limits:
      - { unit: requests, window: day, cap: 100000 }
      - { unit: usd, window: month, cap: "1000" }
      - { unit: tokens, window: hour, cap: 10000000, model: "gpt-4o*" }
"#;

async fn caught_up(h: &Harness) -> bool {
    let mut stream = h
        .gate
        .jetstream()
        .get_stream(schemas::subjects::LEDGER_STREAM)
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence as i64;
    let rows: Vec<i64> = sqlx::query_scalar("SELECT last_seq FROM checkpoints")
        .fetch_all(h.db.pool())
        .await
        .unwrap();
    rows.len() == 2 && rows.iter().all(|s| *s >= last)
}

/// Every row of every projection table, as text, in key order.
async fn projection_rows(h: &Harness) -> Vec<String> {
    let rows = testkit::pg::projection_rows(h.db.pool()).await.unwrap();
    assert!(rows.iter().any(|r| r.starts_with("reservations: ")));
    rows
}

#[tokio::test]
async fn replaying_the_stream_rebuilds_identical_balances_and_counters() {
    let h = Harness::start(PLAN).await;
    let models = [
        "gpt-4o",
        "gpt-4o-mini",
        "claude-3-5-sonnet",
        "gemini-2.0-flash",
    ];
    let mut open = Vec::new();
    for i in 0..240u32 {
        let identity = format!("user-{}", i % 7);
        let model = models[(i % 4) as usize];
        let body = json!({"identity": identity, "model": model, "ttl_ms": if i % 5 == 4 || i % 11 == 0 { 1 } else { 60_000 },
            "amounts": {"input_tokens": 100 + i, "output_tokens": 50, "usd": format!("0.{:03}", 5 + i % 90)}});
        let (s, r) = h.reserve(body).await;
        assert_eq!(s, 200, "{r}");
        let id = r["reservation_id"].as_str().unwrap().to_owned();
        let path = |verb: &str| format!("/v1/reservations/{id}/{verb}");
        match i % 5 {
            0 | 1 => assert_eq!(h.post(&path("commit"), json!({"amounts": {"input_tokens": 90 + i, "output_tokens": 20, "usd": "0.004"}})).await.0, 200),
            2 => assert_eq!(h.post(&path("commit"), json!({"amounts": {"output_tokens": 80, "usd": "0.5"}})).await.0, 200),
            3 => assert_eq!(h.post(&path("release"), json!({"reason": "client_gone"})).await.0, 200),
            _ => open.push((identity, id)),
        }
        if i % 13 == 0 {
            let body =
                json!({"identity": format!("user-{}", i % 3), "amounts": {"images": 1 + i % 3}});
            assert_eq!(h.post("/v1/usage", body).await.0, 200);
        }
    }
    // Some holds expire through the ledger's own path.
    for (identity, id) in &open {
        let account = schemas::Account::Identity {
            identity: identity.clone(),
        };
        h.gate
            .expire(h.project_id, &account, id.parse().unwrap())
            .await
            .unwrap();
    }
    testkit::wait::until(Duration::from_secs(30), Duration::from_millis(20), || {
        caught_up(&h)
    })
    .await
    .unwrap();
    let live = ledger::checksum::checksum(h.db.pool()).await.unwrap();
    assert!(live.balances > 0 && live.counters > 0);
    let live_rows = projection_rows(&h).await;

    let report = ledger::replay::replay(h.gate.jetstream(), h.db.pool(), |_, _| {})
        .await
        .unwrap();
    assert!(
        report.events >= 240 * 2,
        "replayed {} events",
        report.events
    );
    let replayed = ledger::checksum::checksum(h.db.pool()).await.unwrap();
    assert_eq!(live, replayed);
    // Row for row, every column (reservations included), not only the checksum.
    let replayed_rows = projection_rows(&h).await;
    assert_eq!(live_rows.len(), replayed_rows.len());
    for (live_row, replayed_row) in live_rows.iter().zip(&replayed_rows) {
        assert_eq!(live_row, replayed_row);
    }

    // The checksum notices a change (it is not a constant).
    sqlx::query("UPDATE account_balances SET committed = committed + 0.0000000001 WHERE unit = 'usd' AND identity = 'user-1'").execute(h.db.pool()).await.unwrap();
    assert_ne!(
        ledger::checksum::checksum(h.db.pool()).await.unwrap(),
        replayed
    );
    ledger::replay::replay(h.gate.jetstream(), h.db.pool(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        ledger::checksum::checksum(h.db.pool()).await.unwrap(),
        replayed
    );

    // The projected counters agree with what the gate enforces with.
    for u in 0..7 {
        let (_, view) = h.get(&format!("/v1/usage?identity=user-{u}")).await;
        let used_usd: rust_decimal::Decimal = Harness::limit(&view, "usd", "month")["used"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let projected: rust_decimal::Decimal = sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount), 0) FROM usage_counters WHERE identity = $1 AND unit = 'usd' AND window_kind = 'month' AND period_start = date_trunc('month', now())",
        )
        .bind(format!("user-{u}"))
        .fetch_one(h.db.pool())
        .await
        .unwrap();
        assert_eq!(used_usd, projected, "user-{u}");
        let held: rust_decimal::Decimal = sqlx::query_scalar(
            "SELECT COALESCE(SUM(held), 0) FROM account_balances WHERE identity = $1",
        )
        .bind(format!("user-{u}"))
        .fetch_one(h.db.pool())
        .await
        .unwrap();
        assert_eq!(held, rust_decimal::Decimal::ZERO, "every hold was settled");
    }
    let open_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reservations WHERE status = 'open'")
            .fetch_one(h.db.pool())
            .await
            .unwrap();
    assert_eq!(open_rows, 0);
}

/// Publishes `event` of `identity` straight to the stream, as another
/// producer could, bypassing the ingest API's checks.
async fn publish_raw(h: &Harness, identity: &str, event: serde_json::Value) {
    let account = schemas::Account::Identity {
        identity: identity.into(),
    };
    let envelope = json!({
        "event_id": uuid::Uuid::now_v7(),
        "schema_version": 1,
        "occurred_at": "2026-11-21T20:15:03Z",
        "project_id": h.project_id,
        "account": {"kind": "identity", "identity": identity},
        "event": event,
    });
    h.gate
        .jetstream()
        .publish(
            schemas::subjects::account_subject(h.project_id, &account),
            serde_json::to_vec(&envelope).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// PostgreSQL cannot store NUL in text. Events on the stream that carry it
/// (in a reason, identity, model or tier, or in an undecodable event's
/// error) must not stop the projections, and replay must store them as the
/// live consumers do.
#[tokio::test]
async fn nul_characters_on_the_stream_do_not_stop_the_projections() {
    let h = Harness::start(PLAN).await;
    let id = uuid::Uuid::now_v7();
    let held = json!({"requests": "1", "usd": "0.01"});
    let hold = json!({"reservation_id": id, "reserved_at": "2026-11-21T20:15:03Z", "model": "m\u{0}1", "held": held});
    let who = "nul\u{0}user";
    publish_raw(&h, who, json!({"type": "reserved", "reservation_id": id, "model": "m\u{0}1", "amounts": held, "expires_at": "2026-11-21T20:16:03Z", "tier": "t\u{0}"})).await;
    publish_raw(
        &h,
        who,
        json!({"type": "released", "hold": hold, "reason": "a\u{0}b"}),
    )
    .await;
    // Two models that are stored alike add to one counter row.
    for model in ["m\u{0}2", "m\u{FFFD}2"] {
        publish_raw(&h, "u", json!({"type": "usage_recorded", "usage_id": uuid::Uuid::now_v7(), "model": model, "amounts": {"requests": "1"}})).await;
    }
    publish_raw(&h, "u", json!({"type": "no\u{0}such_type"})).await;
    // An ordinary reservation after them is projected too.
    let (s, r) = h
        .reserve(json!({"identity": "after", "model": "gpt-4o"}))
        .await;
    assert_eq!(s, 200, "{r}");
    testkit::wait::until(Duration::from_secs(30), Duration::from_millis(20), || {
        caught_up(&h)
    })
    .await
    .unwrap();

    let row: (String, String, String, String) = sqlx::query_as(
        "SELECT identity, model, tier, reason FROM reservations WHERE reservation_id = $1",
    )
    .bind(id)
    .fetch_one(h.db.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "nul\u{FFFD}user".into(),
            "m\u{FFFD}1".into(),
            "t\u{FFFD}".into(),
            "a\u{FFFD}b".into()
        )
    );
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reservations WHERE identity = 'after'")
            .fetch_one(h.db.pool())
            .await
            .unwrap();
    assert_eq!(after, 1);
    let merged: Vec<rust_decimal::Decimal> = sqlx::query_scalar(
        "SELECT amount FROM usage_counters WHERE identity = 'u' AND window_kind = 'day'",
    )
    .fetch_all(h.db.pool())
    .await
    .unwrap();
    assert_eq!(merged, vec![rust_decimal::Decimal::from(2)]);
    let dead: Vec<String> = sqlx::query_scalar("SELECT error FROM dead_letters")
        .fetch_all(h.db.pool())
        .await
        .unwrap();
    assert_eq!(dead.len(), 2, "one per projection: {dead:?}");
    assert!(
        dead.iter().all(|e| e.contains("no\u{FFFD}such_type")),
        "{dead:?}"
    );

    // Replay stores the same rows.
    let live_rows = projection_rows(&h).await;
    ledger::replay::replay(h.gate.jetstream(), h.db.pool(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(live_rows, projection_rows(&h).await);
}

/// Events purged from the stream before the projections applied them no
/// longer exist: the projections start at the stream's first event, as
/// replay does, instead of waiting for the purged ones forever.
#[tokio::test]
async fn projections_start_at_the_first_event_of_a_purged_stream() {
    let h = Harness::start_without_consumers(PLAN).await;
    let reserve = |who: &'static str| h.reserve(json!({"identity": who, "model": "gpt-4o"}));
    for _ in 0..3 {
        assert_eq!(reserve("purged").await.0, 200);
    }
    let stream = h
        .gate
        .jetstream()
        .get_stream(schemas::subjects::LEDGER_STREAM)
        .await
        .unwrap();
    stream.purge().await.unwrap();
    for _ in 0..2 {
        assert_eq!(reserve("kept").await.0, 200);
    }
    ledger::consumers::spawn(
        ledger::consumers::Consumers::all(h.nats.url(), h.db.url().to_owned()),
        h.shutdown.clone(),
    )
    .unwrap();
    testkit::wait::until(Duration::from_secs(30), Duration::from_millis(20), || {
        caught_up(&h)
    })
    .await
    .unwrap();
    let identities: Vec<String> =
        sqlx::query_scalar("SELECT identity FROM reservations ORDER BY reserved_seq")
            .fetch_all(h.db.pool())
            .await
            .unwrap();
    assert_eq!(identities, ["kept", "kept"]);
    let live_rows = projection_rows(&h).await;
    ledger::replay::replay(h.gate.jetstream(), h.db.pool(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(live_rows, projection_rows(&h).await);
}
