//! The mock providers refuse bad requests like the real APIs, and their
//! answers (JSON and SSE) round-trip through `prepare_upstream` and the
//! translators over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{events, streamed_text};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use testkit::mock_providers::{MockBehavior, MockKind, MockProvider};
use tollgate_proxy::providers::{
    parse_request, prepare_upstream, route, translate_error, translate_response, BaseUrls,
    ProviderKey, StreamTranslator, Usage,
};

const KINDS: [(MockKind, &str); 4] = [
    (MockKind::OpenAi, "gpt-4o"),
    (MockKind::Anthropic, "claude-3-5-sonnet-20240620"),
    (MockKind::Gemini, "gemini-2.0-flash"),
    (MockKind::Xai, "grok-3-mini"),
];

fn base_urls(mock: &MockProvider) -> BaseUrls {
    let url = mock.base_url();
    BaseUrls {
        openai: url.clone(),
        anthropic: url.clone(),
        gemini: url.clone(),
        xai: url,
    }
}

/// Sends `body` (an OpenAI request) to `mock` the way the proxy would.
async fn call(
    mock: &MockProvider,
    body: Value,
) -> (tollgate_proxy::providers::Route, reqwest::Response) {
    let request = parse_request(body.to_string().as_bytes()).unwrap();
    let route = route(&request.model, &[], &base_urls(mock)).unwrap();
    let up = prepare_upstream(&route, &request, &ProviderKey::new("test-key"), None).unwrap();
    let response = reqwest::Client::new()
        .request(up.method, &up.url)
        .headers(up.headers)
        .body(up.body)
        .send()
        .await
        .unwrap();
    (route, response)
}

fn chat(model: &str, stream: bool, include_usage: bool) -> Value {
    let mut body = json!({"model": model, "stream": stream, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."}]});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn behavior() -> MockBehavior {
    MockBehavior {
        reply_text: "Hello there, general Kenobi.".to_owned(),
        input_tokens: Some(120),
        output_tokens: Some(7),
        cached_input_tokens: 20,
        reasoning_tokens: 3,
        ..MockBehavior::default()
    }
}

/// The normalised usage `behavior()` must produce for each provider.
fn expected_usage(kind: MockKind) -> Usage {
    Usage {
        input_tokens: 120,
        cached_input_tokens: 20,
        output_tokens: 10,
        reasoning_tokens: if kind == MockKind::Anthropic { 0 } else { 3 },
        // Gemini's modality split says there was no audio; OpenAI's format
        // says `audio_tokens: 0`, which is not taken as said.
        audio_input_reported: kind == MockKind::Gemini,
        ..Usage::default()
    }
}

/// `completion_tokens` as the client sees it: OpenAI-compatible answers pass
/// through unchanged, so xAI's leave out its 3 reasoning tokens.
fn visible_completion_tokens(kind: MockKind) -> u64 {
    if kind == MockKind::Xai {
        7
    } else {
        10
    }
}

async fn post_raw(url: String, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).body(body.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn openai_mock_refuses_like_openai() {
    let mock = MockProvider::start(MockKind::OpenAi).await.unwrap();
    let url = format!("{}/chat/completions", mock.base_url());
    let auth = [("authorization", "Bearer sk-test")];
    let user = json!([{"role": "user", "content": "hi"}]);
    let (status, body) = post_raw(
        url.clone(),
        &[],
        json!({"model": "gpt-4o", "messages": user}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, _) = post_raw(url.clone(), &auth, json!({"messages": user})).await;
    assert_eq!(status, 400);
    let (status, body) = post_raw(url.clone(), &auth, json!({"model": "gpt-4o"})).await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("messages"))
    );
    let (status, body) = post_raw(
        url.clone(),
        &auth,
        json!({"model": "gpt-4o", "messages": []}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("empty_array"))
    );
    let with_options =
        json!({"model": "gpt-4o", "messages": user, "stream_options": {"include_usage": true}});
    assert_eq!(post_raw(url.clone(), &auth, with_options).await.0, 400);
    assert_eq!(
        post_raw(url, &auth, json!({"model": "gpt-4o", "messages": user}))
            .await
            .0,
        200
    );
    assert_eq!(mock.request_count(), 6);
}

#[tokio::test]
async fn anthropic_mock_refuses_like_anthropic() {
    let mock = MockProvider::start(MockKind::Anthropic).await.unwrap();
    let url = format!("{}/v1/messages", mock.base_url());
    let headers = [("x-api-key", "sk-ant"), ("anthropic-version", "2023-06-01")];
    let ok = |messages: Value| json!({"model": "claude-x", "max_tokens": 10, "messages": messages});
    let user = json!({"role": "user", "content": "hi"});
    let assistant = json!({"role": "assistant", "content": "yo"});

    let (status, body) = post_raw(url.clone(), &headers[1..], ok(json!([user]))).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    assert_eq!(body["type"], "error");
    assert_eq!(
        post_raw(url.clone(), &headers[..1], ok(json!([user])))
            .await
            .0,
        400
    );
    let (status, body) = post_raw(
        url.clone(),
        &headers,
        json!({"model": "claude-x", "messages": [user]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    for bad in [
        json!([assistant, user]),
        json!([user, user]),
        json!([{"role": "system", "content": "x"}, user]),
    ] {
        assert_eq!(
            post_raw(url.clone(), &headers, ok(bad.clone())).await.0,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        post_raw(url, &headers, ok(json!([user, assistant, user])))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn gemini_mock_refuses_like_gemini() {
    let mock = MockProvider::start(MockKind::Gemini).await.unwrap();
    let url = format!(
        "{}/v1beta/models/gemini-2.0-flash:generateContent",
        mock.base_url()
    );
    let contents = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let (status, body) = post_raw(url.clone(), &[], contents.clone()).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    assert_eq!(
        post_raw(format!("{url}?key=abc"), &[], contents.clone())
            .await
            .0,
        200
    );
    let key = [("x-goog-api-key", "abc")];
    let (status, body) = post_raw(url.clone(), &key, json!({})).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let bad_role = json!({"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]});
    assert_eq!(post_raw(url, &key, bad_role).await.0, 400);
    // Thinking: a budget for 2.5 (Pro cannot stop), a level for 3, not both.
    let thinking = |model: &str, config: Value| {
        let url = format!("{}/v1beta/models/{model}:generateContent", mock.base_url());
        let mut body = contents.clone();
        body["generationConfig"] = json!({ "thinkingConfig": config });
        async move { post_raw(url, &key, body).await.0 }
    };
    for (model, config, status) in [
        ("gemini-2.5-flash", json!({"thinkingBudget": 0}), 200),
        ("gemini-2.5-pro", json!({"thinkingBudget": 0}), 400),
        ("gemini-2.5-flash", json!({"thinkingBudget": "low"}), 400),
        ("gemini-2.5-flash", json!({"thinkingLevel": "low"}), 400),
        ("gemini-3-pro-preview", json!({"thinkingLevel": "low"}), 200),
        (
            "gemini-3-pro-preview",
            json!({"thinkingLevel": "extreme"}),
            400,
        ),
        (
            "gemini-3-pro-preview",
            json!({"thinkingLevel": "low", "thinkingBudget": 1024}),
            400,
        ),
    ] {
        assert_eq!(
            thinking(model, config.clone()).await,
            status,
            "{model} {config}"
        );
    }
}

#[tokio::test]
async fn json_answers_round_trip() {
    for (kind, model) in KINDS {
        let mock = MockProvider::start_with(kind, behavior()).await.unwrap();
        let (route, response) = call(&mock, chat(model, false, false)).await;
        let status = response.status();
        let body = response.bytes().await.unwrap();
        let (bytes, usage) = translate_response(route.kind, status, &body, model).unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(answer["object"], "chat.completion", "{kind:?}");
        assert_eq!(
            answer["choices"][0]["message"]["content"], "Hello there, general Kenobi.",
            "{kind:?}"
        );
        assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{kind:?}");
        assert_eq!(usage, expected_usage(kind), "{kind:?}");
        assert_eq!(answer["usage"]["prompt_tokens"], 120, "{kind:?}");
        assert_eq!(
            answer["usage"]["completion_tokens"],
            visible_completion_tokens(kind),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn translated_requests_reach_the_mocks_as_expected() {
    let mock = MockProvider::start(MockKind::Anthropic).await.unwrap();
    let _ = call(&mock, chat("claude-3-haiku", false, false)).await;
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.header("x-api-key"), Some("test-key"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    let body = seen.json().unwrap();
    assert_eq!(body["system"], "You are terse.");
    assert_eq!(body["max_tokens"], 4096);

    let mock = MockProvider::start(MockKind::Gemini).await.unwrap();
    let _ = call(&mock, chat("gemini-2.0-flash", true, false)).await;
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    );
    assert_eq!(seen.query_param("alt"), Some("sse"));
    assert_eq!(
        seen.json().unwrap()["systemInstruction"],
        json!({"parts": [{"text": "You are terse."}]})
    );

    let mock = MockProvider::start(MockKind::OpenAi).await.unwrap();
    let _ = call(&mock, chat("openai/gpt-4o", true, false)).await;
    let body = mock.last_request().unwrap().json().unwrap();
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

/// Streams `body` from the mock through a translator; returns client events.
async fn stream_through(
    mock: &MockProvider,
    model: &str,
    wants_usage: bool,
) -> (Vec<Value>, StreamTranslator) {
    let (route, response) = call(mock, chat(model, true, wants_usage)).await;
    assert!(response.status().is_success());
    let mut translator = StreamTranslator::new(route.kind, wants_usage, model);
    let mut out = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&translator.push(&piece.unwrap()));
    }
    out.extend_from_slice(&translator.finish());
    (events(&out), translator)
}

#[tokio::test]
async fn sse_answers_round_trip() {
    for (kind, model) in KINDS {
        let mock = MockProvider::start_with(kind, behavior()).await.unwrap();
        for wants_usage in [false, true] {
            let (evs, translator) = stream_through(&mock, model, wants_usage).await;
            let label = format!("{kind:?} usage={wants_usage}");
            assert_eq!(
                streamed_text(&evs),
                "Hello there, general Kenobi.",
                "{label}"
            );
            assert_eq!(evs.last(), Some(&json!("[DONE]")), "{label}");
            let usage_chunks: Vec<&Value> = evs.iter().filter(|e| e["usage"].is_object()).collect();
            assert_eq!(usage_chunks.len(), usize::from(wants_usage), "{label}");
            if let Some(chunk) = usage_chunks.first() {
                assert_eq!(chunk["choices"], json!([]), "{label}");
                assert_eq!(
                    chunk["usage"]["completion_tokens"],
                    visible_completion_tokens(kind),
                    "{label}"
                );
            }
            assert!(translator.is_complete(), "{label}");
            assert_eq!(translator.usage_so_far(), expected_usage(kind), "{label}");
        }
    }
}

#[tokio::test]
async fn max_tokens_truncation_maps_to_length() {
    for (kind, model) in KINDS {
        let mock = MockProvider::start(kind).await.unwrap();
        let mut body = chat(model, false, false);
        body["max_tokens"] = json!(2);
        let (route, response) = call(&mock, body).await;
        let status = response.status();
        let (bytes, usage) =
            translate_response(route.kind, status, &response.bytes().await.unwrap(), model)
                .unwrap();
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(answer["choices"][0]["finish_reason"], "length", "{kind:?}");
        assert_eq!(
            answer["choices"][0]["message"]["content"], "Hello from ",
            "{kind:?}"
        );
        assert_eq!(usage.output_tokens, 2, "{kind:?}");
    }
}

#[tokio::test]
async fn forced_errors_come_back_in_openai_shape() {
    for (kind, model) in KINDS {
        let mock = MockProvider::start(kind).await.unwrap();
        mock.fail_with(429, "slow down");
        let (route, response) = call(&mock, chat(model, false, false)).await;
        let status = response.status();
        let err = translate_error(route.kind, status, &response.bytes().await.unwrap());
        assert_eq!(err.status().as_u16(), 429, "{kind:?}");
        assert_eq!(err.to_openai().error.message, "slow down", "{kind:?}");
        assert!(translate_response(route.kind, status, b"", model).is_err());
    }
}

#[tokio::test]
async fn cancelling_mid_stream_keeps_an_estimate() {
    for (kind, model) in KINDS {
        let slow = MockBehavior {
            chunk_delay: Duration::from_millis(200),
            ..behavior()
        };
        let mock = MockProvider::start_with(kind, slow).await.unwrap();
        let (route, response) = call(&mock, chat(model, true, false)).await;
        let mut translator = StreamTranslator::new(route.kind, false, model);
        let mut out = Vec::new();
        let mut body = response.bytes_stream();
        // Read until the first two words arrived, then hang up.
        while streamed_text(&events(&out)).split_inclusive(' ').count() < 2 {
            let piece = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            out.extend_from_slice(&translator.push(&piece));
        }
        drop(body);
        let usage = translator.usage_so_far();
        assert!(usage.estimated, "{kind:?}");
        assert!(!translator.is_complete(), "{kind:?}");
        // "Hello there, " is 13 characters → at least ⌈13/4⌉ = 4.
        assert!(
            usage.output_tokens >= 4 && usage.output_tokens < 10,
            "{kind:?}: {usage:?}"
        );
    }
}

#[tokio::test]
async fn a_dropped_upstream_stream_ends_with_an_error_event() {
    for (kind, model) in KINDS {
        let cut = MockBehavior {
            cut_after_writes: Some(3),
            ..behavior()
        };
        let mock = MockProvider::start_with(kind, cut).await.unwrap();
        let (route, response) = call(&mock, chat(model, true, true)).await;
        let mut translator = StreamTranslator::new(route.kind, true, model);
        let mut out = Vec::new();
        let mut body = response.bytes_stream();
        let mut saw_error = false;
        while let Some(piece) = body.next().await {
            match piece {
                Ok(bytes) => out.extend_from_slice(&translator.push(&bytes)),
                Err(_) => saw_error = true,
            }
        }
        out.extend_from_slice(&translator.finish());
        assert!(saw_error, "{kind:?}: the connection was cut");
        let evs = events(&out);
        assert_eq!(
            evs[evs.len() - 2]["error"]["type"],
            "server_error",
            "{kind:?}"
        );
        assert_eq!(evs.last(), Some(&json!("[DONE]")), "{kind:?}");
        assert!(translator.usage_so_far().estimated, "{kind:?}");
    }
}
