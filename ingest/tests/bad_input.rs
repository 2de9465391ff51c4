//! Bad input gets a 4xx with a JSON body naming the problem: never a panic,
//! a 500, or a recorded event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::Harness;

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    models: ["gpt-4o*", "claude-*"]
    limits:
      - { unit: requests, window: day, cap: 100 }
"#;

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, field: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(field) = field {
        assert_eq!(body["error"]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_refused_with_the_field_named() {
    let h = Harness::start(PLAN).await;
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("{\"identity\": ".into(), 400, "invalid_json", None),
        ("not json".into(), 400, "invalid_json", None),
        ("".into(), 400, "invalid_json", None),
        ("[1,2]".into(), 400, "invalid_field", None),
        (
            json!({"amounts": {"requests": 1}}).to_string(),
            400,
            "invalid_field",
            None,
        ),
        (
            json!({"identity": 42}).to_string(),
            400,
            "invalid_field",
            Some("identity"),
        ),
        (
            json!({"identity": "u", "amounts": "lots"}).to_string(),
            400,
            "invalid_field",
            Some("amounts"),
        ),
        (
            json!({"identity": "u", "amounts": {"tokens": "ten"}}).to_string(),
            400,
            "invalid_field",
            Some("amounts.tokens"),
        ),
        (
            json!({"identity": "u", "amounts": {"Not A Unit": 1}}).to_string(),
            400,
            "invalid_field",
            Some("amounts.Not A Unit"),
        ),
        (
            json!({"identity": "u", "ttl_ms": "soon"}).to_string(),
            400,
            "invalid_field",
            Some("ttl_ms"),
        ),
        (
            json!({"identity": "u", "ttl_ms": -5}).to_string(),
            400,
            "invalid_field",
            Some("ttl_ms"),
        ),
        (
            json!({"identity": "u", "reservation_id": "abc"}).to_string(),
            400,
            "invalid_field",
            Some("reservation_id"),
        ),
        (
            json!({"identity": "u", "amountz": {}}).to_string(),
            400,
            "invalid_field",
            None,
        ),
        (
            json!({"identity": "u", "amounts": {"tokens": -1}}).to_string(),
            400,
            "invalid_amount",
            Some("amounts.tokens"),
        ),
        (
            json!({"identity": "u", "amounts": {"usd": "-0.01"}}).to_string(),
            400,
            "invalid_amount",
            Some("amounts.usd"),
        ),
        (
            json!({"identity": "u", "amounts": {"tokens": 1e20}}).to_string(),
            400,
            "invalid_amount",
            Some("amounts.tokens"),
        ),
        (
            r#"{"identity":"u","amounts":{"tokens":123456789012345678901234567890123}}"#.into(),
            400,
            "invalid_field",
            Some("amounts.tokens"),
        ),
        // Each near `Decimal`'s bounds: their derived total must be refused,
        // not overflow.
        (
            json!({"identity": "u", "amounts": {"input_tokens": "50000000000000000000000000000",
                "output_tokens": "50000000000000000000000000000"}})
            .to_string(),
            400,
            "invalid_amount",
            Some("amounts.input_tokens"),
        ),
        (
            json!({"identity": "u", "amounts": {"input_tokens": "-79228162514264337593543950335",
                "output_tokens": "-1"}})
            .to_string(),
            400,
            "invalid_amount",
            Some("amounts.input_tokens"),
        ),
        (
            json!({"identity": "u", "amounts": {"requests": 1.5}}).to_string(),
            400,
            "invalid_amount",
            Some("amounts.requests"),
        ),
        (
            json!({"identity": "", "amounts": {}}).to_string(),
            400,
            "invalid_identity",
            Some("identity"),
        ),
        (
            json!({"identity": "x".repeat(300)}).to_string(),
            400,
            "invalid_identity",
            Some("identity"),
        ),
        (
            json!({"identity": "u", "ttl_ms": 0}).to_string(),
            400,
            "invalid_ttl",
            Some("ttl_ms"),
        ),
        (
            json!({"identity": "u", "tier": "platinum", "model": "gpt-4o"}).to_string(),
            400,
            "unknown_tier",
            Some("tier"),
        ),
        (
            json!({"identity": "u"}).to_string(),
            400,
            "missing_model",
            Some("model"),
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, v) = h.post_raw("/v1/reservations", body.clone()).await;
        assert_error(s, &v, status, code, field);
    }
    let (s, v) = h
        .reserve(json!({"identity": "u", "model": "gemini-2.0-flash"}))
        .await;
    assert_error(s, &v, 403, "model_not_allowed", None);
    assert!(
        h.events("u").await.is_empty(),
        "nothing may be recorded for refused input"
    );
}

#[tokio::test]
async fn keys_paths_and_sizes_are_checked() {
    let h = Harness::start(PLAN).await;
    let url = format!("{}/v1/reservations", h.base);
    let body = json!({"identity": "u", "model": "gpt-4o"}).to_string();
    for auth in [
        None,
        Some("Bearer sk_not_a_real_key"),
        Some("Bearer pk_wrong_kind"),
        Some("Basic abc"),
    ] {
        let mut req = h.http.post(&url).body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        assert_error(
            status,
            &r.json().await.unwrap(),
            401,
            "invalid_secret_key",
            None,
        );
    }
    let huge = json!({"identity": "u", "model": "gpt-4o", "pad": "x".repeat(100_000)}).to_string();
    let (s, v) = h.post_raw("/v1/reservations", huge).await;
    assert_error(s, &v, 413, "body_too_large", None);
    let (s, v) = h
        .post("/v1/reservations/not-a-uuid/commit", json!({"amounts": {}}))
        .await;
    assert_error(s, &v, 400, "invalid_reservation_id", Some("reservation_id"));
    let (s, v) = h
        .post(
            &format!("/v1/reservations/{}/release", uuid::Uuid::now_v7()),
            json!({"reason": 5}),
        )
        .await;
    assert_error(s, &v, 400, "invalid_field", Some("reason"));
    let (s, v) = h.get("/v1/usage").await;
    assert_error(s, &v, 400, "missing_identity", Some("identity"));
    let (s, v) = h
        .post("/v1/usage", json!({"identity": "u", "amounts": {}}))
        .await;
    assert_error(s, &v, 400, "invalid_amount", Some("amounts"));
    let (s, v) = h.get("/v1/nothing-here").await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test]
async fn release_reasons_must_be_printable_text() {
    let h = Harness::start_without_consumers(PLAN).await;
    let (s, r) = h.reserve(json!({"identity": "u", "model": "gpt-4o"})).await;
    assert_eq!(s, 200, "{r}");
    let release = format!(
        "/v1/reservations/{}/release",
        r["reservation_id"].as_str().unwrap()
    );
    for reason in [
        "a\u{0}b",
        "line\nbreak",
        "tab\there",
        "\u{1b}[31m",
        &"x".repeat(201),
    ] {
        let (s, v) = h.post(&release, json!({ "reason": reason })).await;
        assert_error(s, &v, 400, "invalid_reason", Some("reason"));
    }
    assert_eq!(
        h.events("u").await.len(),
        1,
        "a refused release changes nothing: the hold stays open"
    );
    let (s, v) = h
        .post(&release, json!({"reason": "client gone — retried ✓"}))
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("released")), "{v}");
}

/// Rejections made before a handler runs (body size, path, method) are
/// answered in the same JSON error shape as every other error.
#[tokio::test]
async fn rejections_before_the_handler_are_json_too() {
    let h = Harness::start_without_consumers(PLAN).await;
    let release = format!("/v1/reservations/{}/release", uuid::Uuid::now_v7());
    let huge = json!({"reason": "x".repeat(100_000)}).to_string();
    let (s, v) = h.post_raw(&release, huge).await;
    assert_error(s, &v, 413, "body_too_large", None);

    for verb in ["commit", "release"] {
        let (s, v) = h
            .post(&format!("/v1/reservations/%FF/{verb}"), json!({}))
            .await;
        assert_error(s, &v, 400, "invalid_reservation_id", Some("reservation_id"));
    }

    for (method, path, allowed) in [
        (reqwest::Method::GET, "/v1/reservations", "POST"),
        (reqwest::Method::DELETE, "/v1/usage", "GET,POST"),
        (reqwest::Method::PUT, &*release, "POST"),
    ] {
        let r = h
            .http
            .request(method.clone(), format!("{}{path}", h.base))
            .bearer_auth(&h.secret)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let allow = r
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_error(status, &body, 405, "method_not_allowed", None);
        let mut allow: Vec<String> = allow
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        allow.sort();
        assert_eq!(allow.join(","), allowed, "{method} {path}");
    }
}
