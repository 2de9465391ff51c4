//! Reserve / commit / release semantics over HTTP: idempotent repeats,
//! conflicting settles, partial commits giving back the rest, overage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::Harness;

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    limits:
      - { unit: requests, window: day, cap: 100 }
      - { unit: tokens, window: day, cap: 10000 }
      - { unit: usd, window: month, cap: "1.00" }
"#;

#[tokio::test]
async fn repeated_reserve_returns_the_first_outcome_and_appends_nothing() {
    let h = Harness::start(PLAN).await;
    let id = uuid::Uuid::now_v7();
    let body = json!({"identity": "alice", "reservation_id": id, "amounts": {"tokens": 500, "usd": "0.10"}});
    let (s1, first) = h.reserve(body.clone()).await;
    let (s2, second) = h.reserve(body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first["reservation_id"], id.to_string());
    assert_eq!(first["expires_at"], second["expires_at"]);
    assert_eq!(
        (first["replayed"].as_bool(), second["replayed"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(Harness::limit(&second, "tokens", "day")["held"], "500");
    let types: Vec<_> = h.events("alice").await.into_iter().map(|e| e.0).collect();
    assert_eq!(types, vec!["reserved"]);
}

#[tokio::test]
async fn partial_commit_returns_the_rest_and_repeats_are_idempotent() {
    let h = Harness::start(PLAN).await;
    let (_, r) = h
        .reserve(json!({"identity": "bob", "amounts": {"tokens": 1000, "usd": "0.50"}}))
        .await;
    let id = r["reservation_id"].as_str().unwrap().to_owned();
    let commit = json!({"amounts": {"tokens": 300, "usd": "0.12"}});
    let (s, c) = h
        .post(&format!("/v1/reservations/{id}/commit"), commit.clone())
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(
        (c["status"].as_str(), c["replayed"].as_bool()),
        (Some("committed"), Some(false))
    );
    assert_eq!(
        c["actual"],
        json!({"requests": "1", "tokens": "300", "usd": "0.12"})
    );
    assert!(c.get("overage").is_none());
    let (s, again) = h
        .post(&format!("/v1/reservations/{id}/commit"), commit)
        .await;
    assert_eq!((s, again["replayed"].as_bool()), (200, Some(true)));

    let (_, view) = h.get("/v1/usage?identity=bob").await;
    let usd = Harness::limit(&view, "usd", "month");
    assert_eq!(
        (
            usd["used"].as_str(),
            usd["held"].as_str(),
            usd["remaining"].as_str()
        ),
        (Some("0.12"), Some("0"), Some("0.88"))
    );
    assert_eq!(Harness::limit(&view, "tokens", "day")["used"], "300");
    let types: Vec<_> = h.events("bob").await.into_iter().map(|e| e.0).collect();
    assert_eq!(types, vec!["reserved", "committed"]);
}

#[tokio::test]
async fn conflicting_settles_are_refused_with_409() {
    let h = Harness::start(PLAN).await;
    let (_, r) = h
        .reserve(json!({"identity": "carol", "amounts": {"tokens": 100}}))
        .await;
    let id = r["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"tokens": 50}})
        )
        .await
        .0,
        200
    );
    let (s, body) = h
        .post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"tokens": 60}}),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(body["error"]["code"], "reservation_already_settled");
    let (s, _) = h
        .post(&format!("/v1/reservations/{id}/release"), json!({}))
        .await;
    assert_eq!(s, 409);

    let (_, r) = h
        .reserve(json!({"identity": "carol", "amounts": {"tokens": 100}}))
        .await;
    let id = r["reservation_id"].as_str().unwrap().to_owned();
    let (s, rel) = h
        .post(
            &format!("/v1/reservations/{id}/release"),
            json!({"reason": "upstream_error"}),
        )
        .await;
    assert_eq!((s, rel["status"].as_str()), (200, Some("released")));
    assert_eq!(
        h.post_raw(&format!("/v1/reservations/{id}/release"), String::new())
            .await
            .0,
        200
    );
    assert_eq!(
        h.post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"tokens": 1}})
        )
        .await
        .0,
        409
    );
    let unknown = uuid::Uuid::now_v7();
    let (s, body) = h
        .post(
            &format!("/v1/reservations/{unknown}/commit"),
            json!({"amounts": {}}),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("reservation_not_found"))
    );
    let types: Vec<_> = h.events("carol").await.into_iter().map(|e| e.0).collect();
    assert_eq!(types, vec!["reserved", "committed", "reserved", "released"]);
}

#[tokio::test]
async fn usage_above_the_hold_is_recorded_in_full_as_overage() {
    let h = Harness::start(PLAN).await;
    let (_, r) = h
        .reserve(json!({"identity": "dave", "amounts": {"tokens": 100, "usd": "0.10"}}))
        .await;
    let id = r["reservation_id"].as_str().unwrap().to_owned();
    let (s, c) = h
        .post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"tokens": 250, "usd": "0.30"}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(c["overage"], json!({"tokens": "150", "usd": "0.2"}));
    let (_, view) = h.get("/v1/usage?identity=dave").await;
    assert_eq!(Harness::limit(&view, "usd", "month")["used"], "0.3");
    let events = h.events("dave").await;
    assert_eq!(
        events[1].1["overage"],
        json!({"tokens": "150", "usd": "0.2"})
    );
}

#[tokio::test]
async fn commit_after_expiry_records_the_usage_instead_of_losing_it() {
    let h = Harness::start(PLAN).await;
    let (_, r) = h
        .reserve(json!({"identity": "erin", "ttl_ms": 1, "amounts": {"usd": "0.05"}}))
        .await;
    let id: schemas::ReservationId = r["reservation_id"].as_str().unwrap().parse().unwrap();
    let account = schemas::Account::Identity {
        identity: "erin".into(),
    };
    testkit::wait::until(
        std::time::Duration::from_secs(5),
        std::time::Duration::from_millis(10),
        || async { h.gate.expire(h.project_id, &account, id).await.unwrap() },
    )
    .await
    .unwrap();
    let (s, c) = h
        .post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"usd": "0.04"}}),
        )
        .await;
    assert_eq!((s, c["late"].as_bool()), (200, Some(true)), "{c}");
    let (s, again) = h
        .post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"usd": "0.04"}}),
        )
        .await;
    assert_eq!((s, again["replayed"].as_bool()), (200, Some(true)));
    // Units left out are committed as held, as the first time: the same commit.
    let (s, again) = h
        .post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"requests": 1, "usd": "0.04"}}),
        )
        .await;
    assert_eq!(
        (s, again["replayed"].as_bool()),
        (200, Some(true)),
        "{again}"
    );
    for different in [
        json!({"usd": "0.05"}),
        json!({"usd": "0.04", "requests": 2}),
    ] {
        let (s, conflict) = h
            .post(
                &format!("/v1/reservations/{id}/commit"),
                json!({"amounts": different}),
            )
            .await;
        assert_eq!(s, 409, "{conflict}");
        assert_eq!(conflict["error"]["code"], "reservation_already_settled");
    }
    let types: Vec<_> = h.events("erin").await.into_iter().map(|e| e.0).collect();
    assert_eq!(types, vec!["reserved", "expired", "usage_recorded"]);
    let (_, view) = h.get("/v1/usage?identity=erin").await;
    assert_eq!(Harness::limit(&view, "usd", "month")["used"], "0.04");
}

#[tokio::test]
async fn usage_without_a_hold_is_recorded_once_per_usage_id() {
    let h = Harness::start(PLAN).await;
    let usage_id = uuid::Uuid::now_v7();
    let body = json!({"identity": "fay", "model": "gpt-4o", "usage_id": usage_id, "amounts": {"input_tokens": 40, "output_tokens": 60}});
    let (s, first) = h.post("/v1/usage", body.clone()).await;
    assert_eq!(
        (s, first["recorded"].as_bool()),
        (200, Some(true)),
        "{first}"
    );
    assert_eq!(
        Harness::limit(&first, "tokens", "day")["used"],
        "100",
        "tokens derive from input + output"
    );
    let (_, second) = h.post("/v1/usage", body).await;
    assert_eq!(second["recorded"].as_bool(), Some(false));
    assert_eq!(h.events("fay").await.len(), 1);
}

/// A reservation is named by (project, reservation_id): the same id for a
/// second identity is refused, so a commit that names no identity settles
/// the one hold there is.
#[tokio::test]
async fn a_reservation_id_names_one_hold_per_project() {
    let h = Harness::start(PLAN).await;
    let id = uuid::Uuid::now_v7();
    let body =
        |who: &str| json!({"identity": who, "reservation_id": id, "amounts": {"tokens": 100}});
    assert_eq!(h.reserve(body("gus")).await.0, 200);
    let (s, refused) = h.reserve(body("hal")).await;
    assert_eq!(s, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "reservation_id_in_use");
    let (s, again) = h.reserve(body("gus")).await;
    assert_eq!((s, again["replayed"].as_bool()), (200, Some(true)));
    let (s, c) = h
        .post(
            &format!("/v1/reservations/{id}/commit"),
            json!({"amounts": {"tokens": 40}}),
        )
        .await;
    assert_eq!((s, c["status"].as_str()), (200, Some("committed")), "{c}");
    let types: Vec<_> = h.events("gus").await.into_iter().map(|e| e.0).collect();
    assert_eq!(types, vec!["reserved", "committed"]);
    assert!(h.events("hal").await.is_empty(), "no second hold");

    // A denied reservation does not keep the id from another identity.
    let full = json!({"identity": "ida", "reservation_id": uuid::Uuid::now_v7(), "amounts": {"tokens": 10001}});
    let (s, _) = h.reserve(full.clone()).await;
    assert_eq!(s, 429);
    let mut other = full;
    other["identity"] = json!("jo");
    other["amounts"] = json!({"tokens": 1});
    assert_eq!(h.reserve(other).await.0, 200);
}

/// Requests racing for one id with different identities: one hold.
#[tokio::test]
async fn racing_identities_for_one_reservation_id_get_one_hold() {
    let h = Harness::start_without_consumers(PLAN).await;
    let id = uuid::Uuid::now_v7();
    let racers = (0..16).map(|n| {
        let h = &h;
        async move {
            let body = json!({"identity": format!("racer-{n}"), "reservation_id": id, "amounts": {"tokens": 1}});
            h.reserve(body).await.0
        }
    });
    let mut statuses = futures::future::join_all(racers).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [vec![200], vec![409; 15]].concat());
}

/// An id taken through another process (here: another gate, so not in this
/// process's memory) is found in the ledger's `reservations` table.
#[tokio::test]
async fn a_reservation_id_taken_by_another_process_is_refused() {
    let h = Harness::start(PLAN).await;
    let id = uuid::Uuid::now_v7();
    let other = ledger::Gate::new(
        ledger::stream::connect(&h.nats.url()).await.unwrap(),
        std::sync::Arc::new(ledger::SystemClock),
        Some(h.db.pool().clone()),
    )
    .await
    .unwrap();
    let tier = schemas::plan::Plan::from_yaml(PLAN)
        .unwrap()
        .tier(None)
        .unwrap()
        .1
        .clone();
    let who = schemas::Account::Identity {
        identity: "kim".into(),
    };
    let req = ledger::gate::decide::ReserveRequest {
        reservation_id: schemas::ReservationId(id),
        model: None,
        amounts: schemas::Amounts::default(),
        expires_at: other.now() + chrono::Duration::minutes(1),
        tier: "free".into(),
        flex: None,
    };
    let outcome = other
        .reserve(h.project_id, &who, &tier, req, None)
        .await
        .unwrap();
    assert!(matches!(outcome, ledger::gate::ReserveOutcome::Admitted(_)));
    until_the_ledger_shows(&h, id, |status| status.is_some()).await;
    let (s, refused) = h
        .reserve(json!({"identity": "lee", "reservation_id": id, "amounts": {"tokens": 1}}))
        .await;
    assert_eq!(s, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "reservation_id_in_use");
    assert!(h.events("lee").await.is_empty());
    let (s, same) = h
        .reserve(json!({"identity": "kim", "reservation_id": id, "amounts": {"tokens": 1}}))
        .await;
    assert_eq!((s, same["replayed"].as_bool()), (200, Some(true)), "{same}");
}

/// A client's reservation id repeated after its account's state forgot the
/// settled hold (a day and 256 events on) is answered with the first
/// outcome, from the ledger's table, as a repeat within the day is: a
/// second hold under the id would never be projected, so never expired.
#[tokio::test]
async fn a_reservation_id_repeated_after_a_day_is_still_a_repeat() {
    const ROOMY: &str = r#"
default_tier: free
tiers:
  free:
    limits:
      - { unit: requests, window: day, cap: 1000 }
"#;
    let clock = ledger::ManualClock::new(chrono::Utc::now());
    let h = Harness::start_with_clock(ROOMY, std::sync::Arc::new(clock.clone())).await;
    let id = uuid::Uuid::now_v7();
    let body = json!({"identity": "ned", "reservation_id": id, "amounts": {"requests": 1}});
    let (s, first) = h.reserve(body.clone()).await;
    assert_eq!(s, 200, "{first}");
    let commit = json!({"amounts": {"requests": 1}});
    let (s, c) = h
        .post(&format!("/v1/reservations/{id}/commit"), commit.clone())
        .await;
    assert_eq!(s, 200, "{c}");
    until_the_ledger_shows(&h, id, |status| status == Some("committed")).await;

    // A day on, enough other calls for the state to prune what it settled then.
    clock.advance(chrono::Duration::hours(25));
    for _ in 0..130 {
        let (s, r) = h
            .reserve(json!({"identity": "ned", "amounts": {"requests": 1}}))
            .await;
        assert_eq!(s, 200, "{r}");
        let other = r["reservation_id"].as_str().unwrap().to_owned();
        let (s, c) = h
            .post(&format!("/v1/reservations/{other}/commit"), commit.clone())
            .await;
        assert_eq!(s, 200, "{c}");
    }

    let (s, again) = h.reserve(body).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        (again["replayed"].as_bool(), again["status"].as_str()),
        (Some(true), Some("committed")),
        "{again}"
    );
    let holds_of_id = h
        .events("ned")
        .await
        .into_iter()
        .filter(|(kind, e)| kind == "reserved" && e["reservation_id"] == id.to_string())
        .count();
    assert_eq!(holds_of_id, 1, "one hold under the id");
}

/// A stored plan this server cannot read (one applied by a newer version)
/// leaves no tier to judge calls by: they are refused (503), not let
/// through unlimited, until the plan is applied again.
#[tokio::test]
async fn a_plan_this_server_cannot_read_refuses_calls_rather_than_drop_limits() {
    let h = Harness::start(PLAN).await;
    let body = json!({"identity": "pat", "amounts": {"tokens": 1}});
    assert_eq!(h.reserve(body.clone()).await.0, 200);
    sqlx::query(
        "UPDATE projects SET plan = plan || '{\"from_a_newer_version\": true}'::jsonb \
         WHERE project_id = $1",
    )
    .bind(h.project_id.0)
    .execute(h.db.pool())
    .await
    .unwrap();
    // (Picked up when the cache entry ages out: no change was announced.)
    let refused = testkit::wait::until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(100),
        || async { h.reserve(body.clone()).await.0 == 503 },
    )
    .await;
    assert!(refused.is_ok(), "still admitted with the plan unreadable");
    let recorded = h.events("pat").await.len();
    let (s, v) = h.reserve(body).await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert_eq!(
        h.events("pat").await.len(),
        recorded,
        "a refused call records nothing"
    );
}

/// Waits until the ledger's `reservations` table shows reservation `id`
/// with a status `wanted` accepts (`None`: no row yet).
async fn until_the_ledger_shows(
    h: &Harness,
    id: uuid::Uuid,
    wanted: impl Fn(Option<&str>) -> bool,
) {
    testkit::wait::until(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(20),
        || async {
            let status = sqlx::query_scalar::<_, String>(
                "SELECT status FROM reservations WHERE reservation_id = $1",
            )
            .bind(id)
            .fetch_optional(h.db.pool())
            .await
            .unwrap();
            wanted(status.as_deref())
        },
    )
    .await
    .unwrap();
}
