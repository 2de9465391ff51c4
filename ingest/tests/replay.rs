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
