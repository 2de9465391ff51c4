//! Window roll-over at minute, day and month boundaries, with the gate
//! reading an injected clock that the test steps over midnight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::{DateTime, Duration, Utc};
use ledger::ManualClock;
use serde_json::json;
use std::sync::Arc;
use support::Harness;

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    limits:
      - { unit: requests, window: minute, cap: 2 }
      - { unit: requests, window: day, cap: 3 }
      - { unit: usd, window: month, cap: "1.00" }
"#;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn use_one(h: &Harness, identity: &str, usd: &str) -> (u16, serde_json::Value) {
    let (s, r) = h
        .reserve(json!({"identity": identity, "amounts": {"usd": usd}}))
        .await;
    if s == 200 {
        let id = r["reservation_id"].as_str().unwrap();
        assert_eq!(
            h.post(&format!("/v1/reservations/{id}/commit"), json!({}))
                .await
                .0,
            200
        );
    }
    (s, r)
}

#[tokio::test]
async fn minute_and_day_limits_reset_at_their_boundaries() {
    let clock = ManualClock::new(at("2026-01-31T23:59:58Z"));
    let h = Harness::start_with_clock(PLAN, Arc::new(clock.clone())).await;
    assert_eq!(use_one(&h, "u", "0.01").await.0, 200);
    assert_eq!(use_one(&h, "u", "0.01").await.0, 200);
    let (s, denied) = use_one(&h, "u", "0.01").await;
    assert_eq!(s, 429);
    assert_eq!(
        Harness::limit(&denied, "requests", "minute")["resets_at"],
        "2026-02-01T00:00:00Z"
    );

    clock.set(at("2026-01-31T23:59:59.999Z"));
    let r = h
        .http
        .post(format!("{}/v1/reservations", h.base))
        .bearer_auth(&h.secret)
        .json(&json!({"identity": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");

    // Midnight: a new minute, a new day and a new month at once.
    clock.set(at("2026-02-01T00:00:00Z"));
    let (s, ok) = use_one(&h, "u", "0.01").await;
    assert_eq!(s, 200);
    assert_eq!(
        Harness::limit(&ok, "requests", "day")["resets_at"],
        "2026-02-02T00:00:00Z"
    );
    assert_eq!(
        Harness::limit(&ok, "usd", "month")["resets_at"],
        "2026-03-01T00:00:00Z"
    );
    assert_eq!(Harness::limit(&ok, "usd", "month")["held"], "0.01");

    // Two more in the next minute: the day cap (3) stops the third of the day.
    clock.advance(Duration::minutes(1));
    assert_eq!(use_one(&h, "u", "0.01").await.0, 200);
    assert_eq!(use_one(&h, "u", "0.01").await.0, 200);
    clock.advance(Duration::minutes(1));
    let (s, denied) = use_one(&h, "u", "0.01").await;
    assert_eq!(s, 429);
    assert_eq!(Harness::limit(&denied, "requests", "day")["remaining"], "0");
    assert_eq!(Harness::limit(&denied, "requests", "minute")["used"], "0");
    clock.set(at("2026-02-02T00:00:00Z"));
    assert_eq!(use_one(&h, "u", "0.01").await.0, 200);
}

#[tokio::test]
async fn monthly_dollars_reset_on_the_first_and_a_hold_counts_in_the_period_it_was_taken() {
    let clock = ManualClock::new(at("2026-02-28T23:59:59Z"));
    let h = Harness::start_with_clock(PLAN, Arc::new(clock.clone())).await;
    assert_eq!(use_one(&h, "m", "0.90").await.0, 200);
    let (s, _) = h
        .reserve(json!({"identity": "m", "amounts": {"usd": "0.20"}}))
        .await;
    assert_eq!(s, 429);
    // A hold taken in February and committed in March is February's spend.
    let (s, open) = h
        .reserve(json!({"identity": "m", "amounts": {"usd": "0.10"}}))
        .await;
    assert_eq!(s, 200);
    clock.set(at("2026-03-01T00:00:00Z"));
    let id = open["reservation_id"].as_str().unwrap();
    assert_eq!(
        h.post(&format!("/v1/reservations/{id}/commit"), json!({}))
            .await
            .0,
        200
    );
    the_whole_month_is_left(&h, "m").await;
}

/// `identity` can hold the month's whole dollar: nothing of it is used.
async fn the_whole_month_is_left(h: &Harness, identity: &str) {
    let (s, r) = h
        .reserve(json!({"identity": identity, "amounts": {"usd": "1.00"}}))
        .await;
    assert_eq!(s, 200, "{r}");
    let usd = Harness::limit(&r, "usd", "month");
    assert_eq!(
        (usd["used"].as_str(), usd["held"].as_str()),
        (Some("0"), Some("1"))
    );
}

/// A hold taken in February that expired, then committed late in March, is
/// still February's spend: in the account's state, whose March is left
/// whole, and in the ledger's counters.
#[tokio::test]
async fn a_late_commit_counts_in_the_period_its_hold_was_taken() {
    let clock = ManualClock::new(at("2026-02-28T23:59:50Z"));
    let h = Harness::start_with_clock(PLAN, Arc::new(clock.clone())).await;
    let (s, open) = h
        .reserve(json!({"identity": "late", "ttl_ms": 1000, "amounts": {"usd": "0.10"}}))
        .await;
    assert_eq!(s, 200, "{open}");
    let id: schemas::ReservationId = open["reservation_id"].as_str().unwrap().parse().unwrap();
    clock.set(at("2026-03-01T00:00:30Z"));
    let account = schemas::Account::Identity {
        identity: "late".into(),
    };
    assert!(h.gate.expire(h.project_id, &account, id).await.unwrap());
    let (s, c) = h
        .post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"usd": "0.08"}}),
        )
        .await;
    assert_eq!((s, c["late"].as_bool()), (200, Some(true)), "{c}");
    // March's whole dollar is left: the late $0.08 was February's.
    the_whole_month_is_left(&h, "late").await;
    let month_of = |period: &'static str| {
        let pool = h.db.pool().clone();
        async move {
            sqlx::query_scalar::<_, rust_decimal::Decimal>(
                "SELECT amount FROM usage_counters WHERE identity = 'late' \
                 AND window_kind = 'month' AND unit = 'usd' AND period_start = $1::timestamptz",
            )
            .bind(period)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    testkit::wait::until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(20),
        || async { month_of("2026-02-01T00:00:00Z").await.is_some() },
    )
    .await
    .unwrap();
    assert_eq!(
        month_of("2026-02-01T00:00:00Z").await,
        Some(rust_decimal::Decimal::new(8, 2))
    );
    assert_eq!(month_of("2026-03-01T00:00:00Z").await, None);
}

/// A refusal caused only by holds in flight (what is used leaves room)
/// tells the client to retry in a second, when a hold may have settled;
/// one caused by what is used tells it when the period resets.
#[tokio::test]
async fn retry_after_says_when_a_refused_request_can_succeed() {
    let clock = ManualClock::new(at("2026-04-30T22:00:00Z"));
    let h = Harness::start_with_clock(PLAN, Arc::new(clock.clone())).await;
    let reserve = |usd: &'static str| {
        h.http
            .post(format!("{}/v1/reservations", h.base))
            .bearer_auth(&h.secret)
            .json(&json!({"identity": "r", "amounts": {"usd": usd}}))
            .send()
    };
    let open = reserve("0.90").await.unwrap();
    assert_eq!(open.status(), 200);
    let open: serde_json::Value = open.json().await.unwrap();
    // 0.90 held, nothing used: 0.20 more does not fit until the hold settles.
    let r = reserve("0.20").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // Committed at 0.85: used, so 0.20 waits for the month to end (2 h).
    let id = open["reservation_id"].as_str().unwrap();
    let (s, _) = h
        .post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"usd": "0.85"}}),
        )
        .await;
    assert_eq!(s, 200);
    let r = reserve("0.20").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7200");
    // What the hold freed fits at once.
    assert_eq!(reserve("0.15").await.unwrap().status(), 200);
}
