//! The ingest API served on several threads (`ingest::threads`), each with
//! its own runtime and NATS connection: an account's limits and holds are
//! the same whichever thread a request lands on. The projections do not run
//! here, so nothing can be answered from PostgreSQL instead of the gate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::{Harness, HTTP_THREADS};

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    limits:
      - { unit: requests, window: day, cap: 20 }
"#;

/// A client with its own connection (connections go to the threads in turn).
fn connection() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

async fn post(h: &Harness, client: &reqwest::Client, path: &str, body: Value) -> (u16, Value) {
    let r = client
        .post(format!("{}{path}", h.base))
        .bearer_auth(&h.secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_hold_taken_on_one_thread_is_settled_on_another() {
    let h = Harness::start_without_consumers(PLAN).await;
    // Consecutive new connections land on different threads.
    let clients: Vec<_> = (0..HTTP_THREADS * 2).map(|_| connection()).collect();
    for (i, pair) in clients.chunks(2).enumerate() {
        let (s, r) = post(
            &h,
            &pair[0],
            "/v1/reservations",
            json!({"identity": "ann", "amounts": {"requests": 1}}),
        )
        .await;
        assert_eq!(s, 200, "reserve {i}: {r}");
        let id = r["reservation_id"].as_str().unwrap().to_owned();
        let (s, c) = post(
            &h,
            &pair[1],
            &format!("/v1/reservations/{id}/commit"),
            json!({}),
        )
        .await;
        assert_eq!(s, 200, "commit {i} on the other connection: {c}");
        let (s, again) = post(
            &h,
            &pair[0],
            &format!("/v1/reservations/{id}/release"),
            json!({}),
        )
        .await;
        assert_eq!(s, 409, "release after commit {i}: {again}");
    }
    let types: Vec<String> = h.events("ann").await.into_iter().map(|e| e.0).collect();
    assert_eq!(
        types,
        ["reserved", "committed"].repeat(HTTP_THREADS),
        "one event per change, in order"
    );
}

#[tokio::test]
async fn a_cap_holds_across_threads() {
    let h = Harness::start_without_consumers(PLAN).await;
    let clients: Vec<_> = (0..40).map(|_| connection()).collect();
    let answers = futures::future::join_all(clients.iter().map(|c| {
        post(
            &h,
            c,
            "/v1/reservations",
            json!({"identity": "bo", "amounts": {"requests": 1}}),
        )
    }))
    .await;
    let admitted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, r)| r)
        .collect();
    let denied = answers.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(admitted.len(), 20, "{answers:?}");
    assert_eq!(denied, 20, "{answers:?}");
    let reserved = h
        .events("bo")
        .await
        .into_iter()
        .filter(|e| e.0 == "reserved")
        .count();
    assert_eq!(reserved, 20, "only admitted holds are on the stream");
}
