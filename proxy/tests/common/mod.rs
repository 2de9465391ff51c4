//! Helpers shared by the proxy's integration tests: fixtures, fixed response
//! metadata, and running/reading translated streams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use serde_json::Value;
use tollgate_proxy::providers::{ProviderKind, ResponseMeta, StreamTranslator, Usage};

pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

pub fn meta() -> ResponseMeta {
    ResponseMeta {
        id: "chatcmpl-test".to_owned(),
        created_unix_s: 1_700_000_000,
        model: "requested-model".to_owned(),
    }
}

/// Feeds `pieces` in order, then finishes; returns the client bytes and usage.
pub fn run_stream(kind: ProviderKind, wants_usage: bool, pieces: &[&[u8]]) -> (Vec<u8>, Usage) {
    let mut t = StreamTranslator::with_meta(kind, wants_usage, meta());
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&t.push(piece));
    }
    out.extend_from_slice(&t.finish());
    (out, t.usage_so_far())
}

/// The client-side view of an OpenAI SSE stream: each event's data, JSON or
/// the literal `[DONE]` as a string.
pub fn events(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).expect("stream output is UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "every event is terminated: {text:?}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"));
            if data == "[DONE]" {
                Value::String(data.to_owned())
            } else {
                serde_json::from_str(data).unwrap_or_else(|err| panic!("bad chunk {data:?}: {err}"))
            }
        })
        .collect()
}

/// Concatenated `delta.content` of all chunks.
pub fn streamed_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

pub fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}
