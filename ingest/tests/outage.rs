//! NATS stopped mid-load: every reservation fails closed with a 503 JSON
//! error (invariant 7), service resumes when NATS returns, and nothing is
//! counted twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::Harness;

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    limits:
      - { unit: requests, window: day, cap: 1000000 }
"#;

#[tokio::test]
async fn nats_outage_fails_closed_and_recovers_without_double_counting() {
    let mut h = Harness::start(PLAN).await;
    let h_ref = Arc::new(tokio::sync::RwLock::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(parking_lot::Mutex::new(HashSet::new()));
    let (unavailable, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (base, secret, http) = (h.base.clone(), h.secret.clone(), h.http.clone());
    let mut clients = Vec::new();
    for c in 0..16 {
        let (stop, admitted, unavailable, other, base, secret, http, _g) = (
            stop.clone(),
            admitted.clone(),
            unavailable.clone(),
            other.clone(),
            base.clone(),
            secret.clone(),
            http.clone(),
            h_ref.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                let id = uuid::Uuid::now_v7();
                let body = json!({"identity": format!("user-{}", c % 4), "reservation_id": id, "amounts": {"tokens": 10}});
                let r = http.post(format!("{base}/v1/reservations")).bearer_auth(&secret).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().await.unwrap();
                match status {
                    200 => {
                        admitted.lock().insert(id);
                    }
                    503 => {
                        assert_eq!(v["error"]["code"], "ledger_unavailable", "{v}");
                        unavailable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let count = |a: &Arc<parking_lot::Mutex<HashSet<uuid::Uuid>>>| a.lock().len();
    testkit::wait::until(
        Duration::from_secs(20),
        Duration::from_millis(10),
        || async { count(&admitted) >= 200 },
    )
    .await
    .unwrap();
    h.nats.stop().await;
    let before_outage = count(&admitted);
    testkit::wait::until(
        Duration::from_secs(20),
        Duration::from_millis(10),
        || async { unavailable.load(Ordering::Relaxed) >= 50 },
    )
    .await
    .unwrap();
    let during_outage = count(&admitted);
    h.nats.restart().await.unwrap();
    testkit::wait::until(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { count(&admitted) >= during_outage + 200 },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "only 200 and 503 are acceptable answers"
    );
    // A request in flight when NATS died may still have been admitted: at most one per client.
    assert!(
        during_outage - before_outage <= 16,
        "admissions while NATS was down: {}",
        during_outage - before_outage
    );

    // Every admitted reservation is on the stream exactly once; nothing else was appended
    // except holds whose client saw a 503 (their fate was unknown), which are never counted twice.
    let mut reserved = Vec::new();
    for user in 0..4 {
        for (kind, event) in h.events(&format!("user-{user}")).await {
            assert_eq!(kind, "reserved");
            reserved.push(
                event["reservation_id"]
                    .as_str()
                    .unwrap()
                    .parse::<uuid::Uuid>()
                    .unwrap(),
            );
        }
    }
    let unique: HashSet<_> = reserved.iter().copied().collect();
    assert_eq!(
        unique.len(),
        reserved.len(),
        "a reservation was appended twice"
    );
    let admitted = admitted.lock().clone();
    assert!(
        admitted.is_subset(&unique),
        "an admitted reservation is missing from the stream"
    );
    assert!(unique.len() - admitted.len() <= unavailable.load(Ordering::Relaxed));
    // Every HTTP thread answers again: one whose own NATS connection was
    // between two reconnect attempts when NATS came back refuses until its
    // next one (`ledger::stream::MAX_RECONNECT_DELAY`), however many
    // requests the other threads admitted meanwhile.
    let view = testkit::wait::until_ok(Duration::from_secs(5), Duration::from_millis(20), || {
        let h = &h;
        async move {
            let (status, view) = h.get("/v1/usage?identity=user-0").await;
            anyhow::ensure!(status == 200, "{status}: {view}");
            Ok(view)
        }
    })
    .await
    .unwrap();
    assert!(Harness::limit(&view, "requests", "day")["held"]
        .as_str()
        .is_some());
}

/// A 503 does not claim that nothing was recorded (an append whose ack was
/// lost may be stored), and names the id Tollgate chose, so the client can
/// retry with it: the retry returns the first outcome, never a second hold.
#[tokio::test]
async fn a_503_names_the_id_tollgate_chose_so_a_retry_is_idempotent() {
    let mut h = Harness::start_without_consumers(PLAN).await;
    h.nats.stop().await;
    let (s, v) = h
        .reserve(json!({"identity": "una", "amounts": {"tokens": 10}}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("ledger_unavailable")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(!message.contains("nothing was recorded"), "{message}");
    assert!(message.contains("release"), "{message}");
    let id: uuid::Uuid = v["reservation_id"].as_str().unwrap().parse().unwrap();
    let (s, u) = h
        .post(
            "/v1/usage",
            json!({"identity": "una", "amounts": {"images": 1}}),
        )
        .await;
    assert_eq!(s, 503, "{u}");
    let usage_id: uuid::Uuid = u["usage_id"].as_str().unwrap().parse().unwrap();

    h.nats.restart().await.unwrap();
    let retry = json!({"identity": "una", "reservation_id": id, "amounts": {"tokens": 10}});
    let (s, r) = testkit::wait::until_ok(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let (s, r) = h.reserve(retry.clone()).await;
            (s == 200)
                .then_some((s, r))
                .ok_or_else(|| anyhow::anyhow!("not yet"))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (s, r["reservation_id"].as_str()),
        (200, Some(&*id.to_string()))
    );
    let body = json!({"identity": "una", "usage_id": usage_id, "amounts": {"images": 1}});
    assert_eq!(h.post("/v1/usage", body.clone()).await.0, 200);
    let (_, again) = h.post("/v1/usage", body).await;
    assert_eq!(again["recorded"].as_bool(), Some(false));
    let types: Vec<_> = h.events("una").await.into_iter().map(|e| e.0).collect();
    assert_eq!(types, vec!["reserved", "usage_recorded"]);
}
