//! Wire-format guards: the committed JSON Schemas match the types, and every
//! golden event of every published version still reads (and reads the same).
//!
//! Set `TOLLGATE_BLESS=1` to regenerate `schemas/json/` after an intended change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use schemars::schema_for;
use std::path::{Path, PathBuf};
use tollgate_schemas::events::{Committed, Envelope, Expired, Released, Reserved, UsageRecorded};
use tollgate_schemas::Event;

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn schemas() -> Vec<(&'static str, schemars::schema::RootSchema)> {
    vec![
        ("envelope.v1.json", schema_for!(Envelope)),
        ("reserved.v1.json", schema_for!(Reserved)),
        ("committed.v1.json", schema_for!(Committed)),
        ("released.v1.json", schema_for!(Released)),
        ("expired.v1.json", schema_for!(Expired)),
        ("usage_recorded.v1.json", schema_for!(UsageRecorded)),
    ]
}

#[test]
fn committed_json_schemas_are_current() {
    let bless = std::env::var("TOLLGATE_BLESS").is_ok();
    for (name, schema) in schemas() {
        let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = dir("json").join(name);
        if bless {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed, generated,
            "{name} is stale: run TOLLGATE_BLESS=1 cargo test -p tollgate-schemas"
        );
    }
}

#[test]
fn every_golden_event_of_every_version_reads_back_identically() {
    let mut seen_types = std::collections::BTreeSet::new();
    let mut count = 0;
    for version in std::fs::read_dir(dir("golden")).unwrap() {
        for file in std::fs::read_dir(version.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let envelope = Envelope::from_slice(text.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen_types.insert(envelope.event.type_name());
            // Writing it again yields the same JSON value: nothing lost, nothing invented.
            let original: serde_json::Value = serde_json::from_str(&text).unwrap();
            let rewritten = serde_json::to_value(&envelope).unwrap();
            assert_eq!(original, rewritten, "{}", path.display());
            count += 1;
        }
    }
    assert!(count >= 5);
    for t in [
        "reserved",
        "committed",
        "released",
        "expired",
        "usage_recorded",
    ] {
        assert!(seen_types.contains(t), "no golden file for {t}");
    }
}

#[test]
fn unknown_fields_are_tolerated_and_newer_versions_refused() {
    let text = std::fs::read_to_string(dir("golden/v1/reserved.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["added_later"] = serde_json::json!({"x": 1});
    v["event"]["also_added"] = serde_json::json!(true);
    let e = Envelope::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(e.event, Event::Reserved(_)));
    v["schema_version"] = serde_json::json!(99);
    assert!(Envelope::from_slice(&serde_json::to_vec(&v).unwrap()).is_err());
}

/// Moves `key` to the end of a JSON object's text (serde_json keeps keys sorted
/// in a `Value`, so the reordering is done on the text).
fn tag_last(object: &serde_json::Value, key: &str) -> String {
    let map = object.as_object().unwrap();
    let mut parts: Vec<String> = map
        .iter()
        .filter(|(k, _)| k.as_str() != key)
        .map(|(k, v)| format!("{}:{}", serde_json::json!(k), v))
        .collect();
    parts.push(format!("{}:{}", serde_json::json!(key), map[key]));
    format!("{{{}}}", parts.join(","))
}

#[test]
fn tags_are_read_wherever_they_are_in_the_object() {
    for name in [
        "reserved",
        "committed",
        "released",
        "expired",
        "usage_recorded",
    ] {
        let text = std::fs::read_to_string(dir(&format!("golden/v1/{name}.json"))).unwrap();
        let expected = Envelope::from_slice(text.as_bytes()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        // Rebuild the envelope text with `event.type` and `account.kind` last.
        let mut fields: Vec<String> = Vec::new();
        for (k, val) in v.as_object().unwrap() {
            let val = match k.as_str() {
                "event" => tag_last(val, "type"),
                "account" => tag_last(val, "kind"),
                _ => val.to_string(),
            };
            fields.push(format!("{}:{val}", serde_json::json!(k)));
        }
        let reordered = format!("{{{}}}", fields.join(","));
        assert!(reordered.contains(r#""type":"#) && !reordered.contains(r#"{"type":"#));
        let decoded = Envelope::from_slice(reordered.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}\n{reordered}"));
        assert_eq!(decoded, expected, "{name}");
    }
}

#[test]
fn bad_tags_are_refused_with_a_reason() {
    let text = std::fs::read_to_string(dir("golden/v1/committed.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["event"]["type"] = serde_json::json!("refunded");
    let err = Envelope::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("refunded"), "{err}");
    v["event"].as_object_mut().unwrap().remove("type");
    let err = Envelope::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("type"), "{err}");
    v["event"]["type"] = serde_json::json!(7);
    assert!(Envelope::from_slice(&serde_json::to_vec(&v).unwrap()).is_err());
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["account"]["kind"] = serde_json::json!("team");
    let err = Envelope::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("team"), "{err}");
}
