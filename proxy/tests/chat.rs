//! The proxy end to end against mock providers speaking the real wire
//! formats: every provider, streamed and not, is answered in OpenAI's shape
//! and its usage is committed at the price table's exact price; cancelled
//! streams commit what was consumed; limits refuse in OpenAI's 429 shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use futures::StreamExt;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::str::FromStr;
use std::time::Duration;
use support::Proxy;
use testkit::mock_providers::MockToolCall;

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    message: "You used {{usage}} of {{limit}} {{unit}} this {{window}}; upgrade for more (resets {{resets_at}})"
    deep_link: "myapp://upgrade"
    limits:
      - { unit: requests, window: day, cap: 1000 }
      - { unit: usd, window: month, cap: "5.00" }
  tiny:
    limits:
      - { unit: requests, window: minute, cap: 2 }
  groq_once:
    limits:
      - { unit: requests, window: day, cap: 1, model: "groq/*" }
  gpt4o_only:
    models: ["gpt-4o*"]
    limits:
      - { unit: requests, window: day, cap: 10 }
  trial:
    message: "Your {{limit}} free {{unit}} are used (resets {{resets_at}})"
    limits:
      - { unit: requests, window: lifetime, cap: 1 }
"#;

/// (model as the client names it, price-table key) for each provider.
const MODELS: [(&str, &str); 4] = [
    ("gpt-4o", "gpt-4o"),
    ("claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20240620"),
    ("gemini-2.0-flash", "gemini/gemini-2.0-flash"),
    ("grok-2-1212", "xai/grok-2-1212"),
];

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap()).unwrap()
}

/// input × input price + output × output price, straight from the shipped table.
fn expected_usd(table_key: &str, input: u64, output: u64) -> Decimal {
    let table: Value = serde_json::from_str(include_str!("../prices/model_prices.json")).unwrap();
    let p = &table["models"][table_key];
    Decimal::from(input) * dec(&p["input_cost_per_token"])
        + Decimal::from(output) * dec(&p["output_cost_per_token"])
}

fn chat_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 200, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello to the test suite, please."}]})
}

#[tokio::test]
async fn every_provider_answers_in_openai_shape_and_commits_usage_at_the_exact_price() {
    let p = Proxy::start(PLAN).await;
    for mock in [&p.openai, &p.anthropic, &p.gemini, &p.xai] {
        mock.update_behavior(|b| {
            b.input_tokens = Some(1234);
            b.output_tokens = Some(56);
        });
    }
    for (i, (model, key)) in MODELS.iter().enumerate() {
        let identity = format!("plain-{i}");
        let (status, headers, body) = p.chat(&identity, chat_body(model, false)).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["object"], "chat.completion", "{model}");
        assert!(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .contains("mock provider"),
            "{model}: {body}"
        );
        assert_eq!(body["usage"]["prompt_tokens"], 1234, "{model}");
        assert_eq!(body["usage"]["completion_tokens"], 56, "{model}");
        assert!(
            headers.contains_key("x-ratelimit-remaining-requests"),
            "{model}"
        );
        let settled = p.settled(&identity, 1).await;
        assert_eq!(settled[0].0, "committed", "{model}");
        let actual = &settled[0].1["actual"];
        assert_eq!(
            (
                actual["input_tokens"].as_str(),
                actual["output_tokens"].as_str()
            ),
            (Some("1234"), Some("56")),
            "{model}"
        );
        assert_eq!(dec(&actual["usd"]), expected_usd(key, 1234, 56), "{model}");
    }
}

/// The JSON events of an OpenAI SSE stream, without the final `[DONE]`.
fn sse_events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The tool calls of an answer, JSON or streamed (deltas joined by index),
/// as (id, name, arguments parsed as JSON), and the finish reason.
async fn tool_calls_of(
    r: reqwest::Response,
    stream: bool,
) -> (Vec<(String, String, Value)>, Value) {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let finish;
    if stream {
        let events = sse_events(&r.text().await.unwrap());
        for delta in events.iter().flat_map(|e| {
            e["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }) {
            let i = usize::try_from(delta["index"].as_u64().unwrap()).unwrap();
            if calls.len() <= i {
                calls.resize(i + 1, Default::default());
            }
            if let Some(id) = delta["id"].as_str() {
                calls[i].0 = id.to_owned();
            }
            if let Some(name) = delta["function"]["name"].as_str() {
                calls[i].1 = name.to_owned();
            }
            calls[i].2 += delta["function"]["arguments"].as_str().unwrap_or_default();
        }
        finish = events
            .iter()
            .rev()
            .map(|e| e["choices"][0]["finish_reason"].clone())
            .find(|f| !f.is_null())
            .unwrap_or_default();
    } else {
        let body: Value = r.json().await.unwrap();
        for call in body["choices"][0]["message"]["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            calls.push((
                call["id"].as_str().unwrap().to_owned(),
                call["function"]["name"].as_str().unwrap().to_owned(),
                call["function"]["arguments"].as_str().unwrap().to_owned(),
            ));
        }
        finish = body["choices"][0]["finish_reason"].clone();
    }
    let parsed = calls
        .into_iter()
        .map(|(id, name, args)| {
            let args = serde_json::from_str(&args)
                .unwrap_or_else(|e| panic!("arguments {args:?} are not JSON: {e}"));
            (id, name, args)
        })
        .collect();
    (parsed, finish)
}

#[tokio::test]
async fn tool_calls_reach_the_client_and_go_back_on_every_provider() {
    // Each mock answers with a tool call in its own wire format (Anthropic
    // streams a parameterless tool as one empty piece, Gemini leaves out its
    // `args` and, for Gemini 3, signs it); the client sees OpenAI tool calls
    // whose arguments parse, and sends the conversation back: Gemini 3's
    // mock, like the API, refuses a call that comes back unsigned.
    // (No dollar limit: the shipped price table predates Gemini 3.)
    let p = Proxy::start("default_tier: free\ntiers:\n  free:\n    limits:\n      - { unit: requests, window: day, cap: 1000 }\n").await;
    // (`plan` is a nested model as Pydantic writes it: Gemini's mock, like
    // the API, refuses `$defs` and `$ref`, so the proxy must inline them.)
    let tools = json!([{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "plan", "parameters": {"$defs": {"Step": {"type": "object", "additionalProperties": false,
            "properties": {"what": {"type": "string"}}, "required": ["what"]}}, "type": "object", "additionalProperties": false,
            "properties": {"steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}}}, "required": ["steps"]}}}]);
    let cases = [
        (&p.openai, "gpt-4o"),
        (&p.anthropic, "claude-3-5-sonnet-20240620"),
        (&p.gemini, "gemini-3-pro-preview"),
    ];
    for (i, (mock, model)) in cases.into_iter().enumerate() {
        for (j, arguments) in [json!({}), json!({"city": "Zürich ☀"})]
            .into_iter()
            .enumerate()
        {
            let name = if j == 0 { "get_time" } else { "get_weather" };
            // The mock answers with the call (again, after each follow-up).
            let answer_with_call = || {
                mock.update_behavior(|b| {
                    b.reply_text = String::new();
                    b.tool_call = Some(MockToolCall {
                        name: name.to_owned(),
                        arguments: arguments.clone(),
                        thought_signature: Some(format!("sig-{i}-{j}")),
                    });
                })
            };
            answer_with_call();
            for stream in [false, true] {
                let identity = format!("tools-{i}-{j}-{stream}");
                let question = json!([{"role": "user", "content": "What now?"}]);
                let body = json!({"model": model, "stream": stream, "max_tokens": 100, "tools": tools, "messages": question});
                let r = p.request(&identity, &body).send().await.unwrap();
                assert_eq!(r.status(), 200, "{model} stream {stream}");
                let (calls, finish) = tool_calls_of(r, stream).await;
                assert_eq!(finish, "tool_calls", "{model} stream {stream}");
                assert_eq!(calls.len(), 1, "{model} stream {stream}: {calls:?}");
                let (id, called, args) = &calls[0];
                assert_eq!(
                    (called.as_str(), args),
                    (name, &arguments),
                    "{model} stream {stream}"
                );
                assert_eq!(p.settled(&identity, 1).await[0].0, "committed");

                // The conversation goes back with the call and its result.
                let mut messages = question.as_array().unwrap().clone();
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": id, "type": "function", "function": {"name": called, "arguments": args.to_string()}}]}));
                messages
                    .push(json!({"role": "tool", "tool_call_id": id, "content": "{\"ok\": true}"}));
                mock.update_behavior(|b| {
                    b.reply_text = "Done.".to_owned();
                    b.tool_call = None;
                });
                let (status, _, answer) = p
                    .chat(&identity, json!({"model": model, "max_tokens": 100, "tools": tools, "messages": messages}))
                    .await;
                assert_eq!(status, 200, "{model} stream {stream}: {answer}");
                assert_eq!(answer["choices"][0]["message"]["content"], "Done.");
                answer_with_call();
            }
        }
    }
    // Without the signature, Gemini 3 refuses (so the check above is real).
    let unsigned = json!({"model": "gemini-3-pro-preview", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "What now?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_x", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "{}"}]});
    let (status, _, answer) = p.chat("tools-unsigned", unsigned).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("thought_signature"),
        "{answer}"
    );
}

#[tokio::test]
async fn structured_outputs_reach_claude_as_a_forced_tool_and_come_back_as_text() {
    // Claude has no JSON mode: `response_format` goes as a tool the request
    // forces (the mock, like the API, answers a forced tool with a call to
    // it alone), and the client gets that call's input as the message text.
    let p = Proxy::start(PLAN).await;
    let answer = json!({"reasoning": "Forty-two is the answer.", "answer": "42"});
    p.anthropic.update_behavior(|b| {
        b.reply_text = "text that a forced tool call leaves out".to_owned();
        b.tool_call = Some(MockToolCall {
            name: "whatever the request forces".to_owned(),
            arguments: answer.clone(),
            thought_signature: None,
        });
    });
    let schema = json!({"type": "object", "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["reasoning", "answer"], "additionalProperties": false});
    let format = json!({"type": "json_schema", "json_schema": {"name": "reply", "strict": true, "schema": schema}});
    for stream in [false, true] {
        let identity = format!("structured-{stream}");
        let body = json!({"model": "claude-sonnet-4-5", "stream": stream, "max_tokens": 100, "response_format": format,
            "messages": [{"role": "user", "content": "What is the answer?"}]});
        let r = p.request(&identity, &body).send().await.unwrap();
        assert_eq!(r.status(), 200, "stream {stream}");
        let (text, finish, calls) = if stream {
            let events = sse_events(&r.text().await.unwrap());
            let text: String = events
                .iter()
                .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
                .collect();
            let finish = events
                .iter()
                .find_map(|e| e["choices"][0]["finish_reason"].as_str().map(str::to_owned));
            let calls = events
                .iter()
                .filter(|e| e["choices"][0]["delta"].get("tool_calls").is_some())
                .count();
            (text, finish.unwrap_or_default(), calls)
        } else {
            let answer: Value = r.json().await.unwrap();
            let message = &answer["choices"][0]["message"];
            let calls = message["tool_calls"].as_array().map_or(0, Vec::len);
            (
                message["content"].as_str().unwrap_or_default().to_owned(),
                answer["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                calls,
            )
        };
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            answer,
            "stream {stream}: {text}"
        );
        assert_eq!((finish.as_str(), calls), ("stop", 0), "stream {stream}");
        assert_eq!(p.settled(&identity, 1).await[0].0, "committed");
    }
    let sent = p.anthropic.requests_seen();
    let last = sent.last().unwrap().json().unwrap();
    assert_eq!(
        last["tool_choice"],
        json!({"type": "tool", "name": "tollgate_json_output", "disable_parallel_tool_use": true})
    );
    assert_eq!(last["tools"][0]["input_schema"], schema);

    // Beside tools of its own, the model may call one of them (the answer
    // is then a tool call) or answer with the JSON.
    p.anthropic.update_behavior(|b| {
        b.reply_text = String::new();
        b.tool_call = Some(MockToolCall {
            name: "get_time".to_owned(),
            arguments: json!({}),
            thought_signature: None,
        });
    });
    let (status, _, reply) = p
        .chat("structured-tools", json!({"model": "claude-sonnet-4-5", "response_format": format, "max_tokens": 100,
            "tools": [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}],
            "messages": [{"role": "user", "content": "What time is it?"}]}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["choices"][0]["finish_reason"], "tool_calls",
        "{reply}"
    );
    assert_eq!(
        reply["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_time"
    );
    let last = p.anthropic.requests_seen().last().unwrap().json().unwrap();
    assert_eq!(
        last["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(last["tools"][1]["name"], "tollgate_json_output");
    assert_eq!(p.settled("structured-tools", 1).await[0].0, "committed");
}

#[tokio::test]
async fn claude_takes_requests_with_newline_stops_and_blank_replies() {
    // `stop: ["\n"]` and a blank assistant reply in the history are fine for
    // OpenAI; Anthropic's API (and its mock) refuse both as sent.
    let p = Proxy::start(PLAN).await;
    let (status, _, answer) = p
        .chat(
            "blank",
            json!({"model": "claude-sonnet-4-5", "max_tokens": 50, "stop": ["\n", "END"],
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " \n"},
                {"role": "user", "content": "Hi again"}]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let sent = p.anthropic.requests_seen().last().unwrap().json().unwrap();
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert_eq!(p.settled("blank", 1).await[0].0, "committed");
}

#[tokio::test]
async fn streamed_calls_are_translated_and_metered_on_every_provider() {
    let p = Proxy::start(PLAN).await;
    for mock in [&p.openai, &p.anthropic, &p.gemini, &p.xai] {
        mock.update_behavior(|b| {
            b.input_tokens = Some(777);
            b.output_tokens = Some(45);
            // Reported each provider's way: inside OpenAI's and Anthropic's
            // output, beside it for Gemini (`thoughtsTokenCount`) and xAI
            // (left out of `completion_tokens`); billed as output by all.
            b.reasoning_tokens = 10;
        });
    }
    for (i, (model, key)) in MODELS.iter().enumerate() {
        let identity = format!("stream-{i}");
        let r = p
            .request(&identity, &chat_body(model, true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = r.text().await.unwrap();
        let events = sse_events(&text);
        assert!(text.trim_end().ends_with("data: [DONE]"), "{model}: {text}");
        assert!(
            events
                .iter()
                .all(|e| e["object"] == "chat.completion.chunk"),
            "{model}: {text}"
        );
        assert!(
            events
                .iter()
                .all(|e| e.get("usage").is_none_or(Value::is_null)),
            "{model}: usage chunk must be hidden when not asked for"
        );
        let content: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(content.contains("mock provider"), "{model}: {content}");
        let settled = p.settled(&identity, 1).await;
        let actual = &settled[0].1["actual"];
        // The provider's own counts, not the proxy's estimate of the
        // text it saw (a few tokens here), reasoning counted once.
        assert_eq!(
            (&actual["input_tokens"], &actual["output_tokens"]),
            (&json!("777"), &json!("55")),
            "{model}: {actual}"
        );
        assert_eq!(dec(&actual["usd"]), expected_usd(key, 777, 55), "{model}");
    }
    // A client that asks for usage gets the final usage chunk.
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]});
    let text = p
        .request("usage-asker", &body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"prompt_tokens\":777"), "{text}");
}

/// A stream whose events all reached the proxy together goes to the client
/// in one piece (at most two), not one write per event (each a system call and a loopback
/// delivery: a quarter of the proxy's CPU in `proxy-bench`).
#[tokio::test]
async fn a_stream_that_arrived_whole_goes_out_in_one_piece() {
    let p = Proxy::start(PLAN).await;
    let mut r = p
        .request("whole", &chat_body("gpt-4o", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (mut pieces, mut text) = (0, Vec::new());
    while let Some(piece) = r.chunk().await.unwrap() {
        pieces += 1;
        text.extend_from_slice(&piece);
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let events = sse_events(&text);
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk"),
        "{text}"
    );
    let events = events.len();
    assert!(events >= 5, "{events} events: {text}");
    // One, or two if the provider's bytes reached the proxy in two reads.
    assert!(pieces <= 2, "{pieces} pieces for {events} events");
}

#[tokio::test]
async fn a_cancelled_stream_commits_what_was_consumed_never_zero() {
    let p = Proxy::start(PLAN).await;
    for mock in [&p.openai, &p.anthropic, &p.gemini] {
        mock.update_behavior(|b| {
            b.reply_text = "word ".repeat(200);
            b.chunk_delay = Duration::from_millis(20);
        });
    }
    for (i, (model, _)) in MODELS.iter().take(3).enumerate() {
        let identity = format!("cancel-{i}");
        let r = p
            .request(&identity, &chat_body(model, true))
            .send()
            .await
            .unwrap();
        let mut body = r.bytes_stream();
        let mut seen = 0;
        while seen < 3 {
            body.next().await.unwrap().unwrap();
            seen += 1;
        }
        drop(body);
        let settled = p.settled(&identity, 1).await;
        assert_eq!(settled[0].0, "committed", "{model}: {settled:?}");
        let actual = &settled[0].1["actual"];
        let output: u64 = actual["output_tokens"].as_str().unwrap().parse().unwrap();
        assert!(
            output > 0 && output < 200,
            "{model}: partial output {output}"
        );
        assert!(dec(&actual["usd"]) > Decimal::ZERO, "{model}");
    }
}

/// A provider on a bare socket, for answers no mock gives: each connection's
/// request is read (its first 64 KB), then `answer` has the connection.
/// Returns the base URL to register it at.
async fn raw_provider<F, Fut>(answer: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = conn.read(&mut buf).await;
                answer(conn).await;
            });
        }
    });
    format!("http://{addr}/v1")
}

/// The head of a raw provider's streamed answer.
const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// One HTTP chunk holding one SSE event of an OpenAI-style chunk with
/// `choices` (and `usage`, unless null).
fn sse_chunk(choices: Value, usage: Value) -> Vec<u8> {
    let mut data = json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
        "model": "m", "choices": choices});
    if !usage.is_null() {
        data["usage"] = usage;
    }
    let event = format!("data: {data}\n\n");
    format!("{:x}\r\n{event}\r\n", event.len()).into_bytes()
}

/// Sends a JSON call of `model`, which must fail with `status` and `code`,
/// saying `x-should-retry: false` exactly when it was `charged` (the SDKs
/// would retry it, and be charged again).
async fn failed_call(
    p: &Proxy,
    identity: &str,
    model: &str,
    status: u16,
    code: &str,
    charged: bool,
) {
    let r = p
        .request(identity, &chat_body(model, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), status);
    let retry = r
        .headers()
        .get("x-should-retry")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(retry.as_deref(), charged.then_some("false"));
    // Failed after its hold: the account's limits are known, and the
    // answer carries them as every other answer does (PLAN: 1,000 a day).
    let limit = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        limit("x-ratelimit-limit-requests").as_deref(),
        Some("1000"),
        "{model}"
    );
    assert!(limit("x-ratelimit-remaining-requests").is_some(), "{model}");
    assert!(limit("x-ratelimit-reset-requests").is_some(), "{model}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
}

/// [`failed_call`], not charged: released. Returns the settling events.
async fn released_and_may_be_retried(
    p: &Proxy,
    identity: &str,
    model: &str,
    status: u16,
    code: &str,
) -> Vec<(String, Value)> {
    failed_call(p, identity, model, status, code, false).await;
    let settled = p.settled(identity, 1).await;
    assert_eq!(settled[0].0, "released", "{settled:?}");
    settled
}

/// [`failed_call`] for a call the provider does not finish: committed (not
/// released, not expired) at what it held.
async fn charged_the_hold_and_not_retried(
    p: &Proxy,
    identity: &str,
    model: &str,
    status: u16,
    code: &str,
) {
    failed_call(p, identity, model, status, code, true).await;
    charged_the_hold(p, identity).await;
}

/// `identity`'s one call was committed (not released, not expired) at
/// exactly what it held.
async fn charged_the_hold(p: &Proxy, identity: &str) {
    p.settled(identity, 1).await;
    let events = p.events(identity).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "committed", "{events:?}");
    assert_eq!(
        events[1].1["actual"], events[0].1["amounts"],
        "charged the hold"
    );
}

/// A stream the network cuts before any text (a model still thinking, a
/// reset connection) was still read by the provider: it is charged its
/// input, not released at $0 as a provider's own error event is.
#[tokio::test]
async fn a_stream_cut_before_any_text_is_charged_its_input() {
    let p = Proxy::start(PLAN).await;
    for (i, (model, _)) in MODELS.iter().take(3).enumerate() {
        for mock in [&p.openai, &p.anthropic, &p.gemini] {
            // Each mock's first write carries no text (OpenAI's role chunk,
            // Anthropic's message_start; Gemini's first chunk is text, so
            // it is cut before any write).
            let writes = if mock.kind() == testkit::mock_providers::MockKind::Gemini {
                0
            } else {
                1
            };
            mock.update_behavior(|b| b.cut_after_writes = Some(writes));
        }
        let identity = format!("cut-{i}");
        let r = p
            .request(&identity, &chat_body(model, true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("ended before the answer was complete"),
            "{model}: {text}"
        );
        assert!(text.trim_end().ends_with("data: [DONE]"), "{model}: {text}");
        let settled = p.settled(&identity, 1).await;
        assert_eq!(settled[0].0, "committed", "{model}: {settled:?}");
        let actual = &settled[0].1["actual"];
        let input: u64 = actual["input_tokens"].as_str().unwrap().parse().unwrap();
        assert!(input > 0, "{model}: {actual}");
        assert!(dec(&actual["usd"]) > Decimal::ZERO, "{model}: {actual}");
    }
}

/// Reads a stream's events until one satisfies `until`, then hangs up
/// after `linger`; returns the call's settlement.
async fn leave_stream(
    p: &Proxy,
    identity: &str,
    body: &Value,
    until: impl Fn(&str) -> bool,
    linger: Duration,
) -> Value {
    let r = p.request(identity, body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{identity}");
    let mut events = r.bytes_stream();
    let mut seen = String::new();
    while !until(&seen) {
        let chunk = events.next().await.unwrap().unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    tokio::time::sleep(linger).await;
    drop(events);
    let settled = p.settled(identity, 1).await;
    assert_eq!(settled[0].0, "committed", "{identity}: {settled:?}");
    settled[0].1["actual"].clone()
}

fn tokens(actual: &Value, unit: &str) -> u64 {
    actual[unit].as_str().unwrap().parse().unwrap()
}

/// A model that reasons without streaming its reasoning (o3 here) reports
/// what it thought only at the end: a stream cut before then is charged
/// its thinking time as reasoning (`TOLLGATE_HIDDEN_REASONING_TOKENS_PER_SEC`,
/// 250 a second), within the cap the call was sent with, so leaving before
/// the answer does not get a minute of reasoning for the price of the
/// prompt. A model that does not reason is charged its input only.
#[tokio::test]
async fn a_reasoning_stream_cut_before_its_report_is_charged_its_thinking_time() {
    let p = Proxy::start(PLAN).await;
    let per_sec = tollgate_proxy::server::HIDDEN_REASONING_TOKENS_PER_SEC;
    // The role chunk at once, then nothing for a long while: thinking.
    p.openai
        .update_behavior(|b| b.chunk_delay = Duration::from_secs(30));
    let role_seen = |seen: &str| seen.contains("\"role\"");
    for (model, cap, charged) in [("o3", 200, 200), ("gpt-4o", 200, 0)] {
        let mut body = chat_body(model, true);
        body["max_tokens"] = json!(cap);
        // A second of thinking is 250 tokens: more than the cap left.
        let actual = leave_stream(
            &p,
            &format!("thinking-{model}"),
            &body,
            role_seen,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            tokens(&actual, "output_tokens"),
            charged,
            "{model}: {actual}"
        );
        let input = tokens(&actual, "input_tokens");
        assert!(input > 0, "{model}: {actual}");
        assert_eq!(
            dec(&actual["usd"]),
            expected_usd(model, input, charged),
            "{model}: reasoning is priced as output"
        );
    }

    // Thinking, then the answer starts: the time until its first text is
    // charged on top of the text, at least.
    let delay = Duration::from_millis(700);
    p.openai.update_behavior(|b| {
        b.chunk_delay = delay;
        b.reply_text = "word ".repeat(40);
    });
    let mut body = chat_body("o3", true);
    body["max_tokens"] = json!(5000);
    let actual = leave_stream(
        &p,
        "answered-o3",
        &body,
        |seen| seen.contains("\"content\":\"word"),
        Duration::ZERO,
    )
    .await;
    let output = tokens(&actual, "output_tokens");
    let thought = u64::try_from(delay.as_millis()).unwrap() * per_sec / 1000;
    assert!(
        output > thought,
        "{thought} tokens of thinking and the text streamed: {actual}"
    );
}

/// With several choices, one that finished does not end the stream: the
/// others may still be thinking, and a client leaving then is charged
/// every choice's thinking time.
#[tokio::test]
async fn a_choice_finished_does_not_end_the_other_choices_reasoning() {
    use tokio::io::AsyncWriteExt;
    let p = Proxy::start(PLAN).await;
    let url = raw_provider(|mut conn| async move {
        let _ = conn.write_all(SSE_HEAD.as_bytes()).await;
        for choices in [
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null},
                   {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            json!([{"index": 0, "delta": {"content": "Hi."}, "finish_reason": "stop"}]),
        ] {
            let _ = conn.write_all(&sse_chunk(choices, Value::Null)).await;
        }
        // Choice 1 thinks on.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    tollgate_proxy::project_config::add_custom_provider(p.db.pool(), p.project_id, "think", &url)
        .await
        .unwrap();
    let price = tollgate_proxy::pricing::ModelPrice {
        supports_reasoning: true,
        ..tollgate_proxy::pricing::ModelPrice::per_token(Decimal::new(1, 6), Decimal::new(2, 6))
    };
    tollgate_proxy::project_config::set_price_override(
        p.db.pool(),
        p.project_id,
        "think/m",
        &price,
    )
    .await
    .unwrap();
    let mut body = chat_body("think/m", true);
    body["n"] = json!(2);
    body["max_tokens"] = json!(5000);
    let linger = Duration::from_secs(1);
    let actual = leave_stream(
        &p,
        "two-choices",
        &body,
        |seen| seen.contains("\"stop\""),
        linger,
    )
    .await;
    let per_sec = tollgate_proxy::server::HIDDEN_REASONING_TOKENS_PER_SEC;
    let thought = 2 * per_sec * u64::try_from(linger.as_millis()).unwrap() / 1000;
    let output = tokens(&actual, "output_tokens");
    assert!(
        output > thought,
        "two choices thinking for a second at least: {actual}"
    );
}

/// `reasoning_effort` reaches Gemini as the thinking budget Google's own
/// OpenAI-compatible endpoint gives it; a value neither knows is a 400
/// naming the field, before anything is held.
#[tokio::test]
async fn reasoning_effort_reaches_gemini_as_a_thinking_budget() {
    let p = Proxy::start(PLAN).await;
    for (effort, budget) in [("none", 0), ("low", 1024), ("high", 24_576)] {
        let mut body = chat_body("gemini-2.5-flash", false);
        body["reasoning_effort"] = json!(effort);
        let (status, _, answer) = p.chat(&format!("effort-{effort}"), body).await;
        assert_eq!(status, 200, "{effort}: {answer}");
        let sent: Value = p.gemini.last_request().unwrap().json().unwrap();
        assert_eq!(
            sent["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget": budget}),
            "{effort}: {sent}"
        );
    }
    let mut body = chat_body("gemini-2.5-flash", false);
    body["reasoning_effort"] = json!("extreme");
    let (status, _, answer) = p.chat("effort-extreme", body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "reasoning_effort", "{answer}");
    assert!(p.events("effort-extreme").await.is_empty(), "nothing held");
}

/// A provider that takes the request and drops the connection before
/// answering may bill for it: the hold is charged, and the SDKs are told
/// not to retry on their own (a retry would be charged again). A provider
/// that cannot be connected to at all is not charged.
#[tokio::test]
async fn a_connection_broken_after_sending_is_charged_and_not_retried() {
    let p = Proxy::start(PLAN).await;
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    // Read the request, then hang up without a word.
    let hangup = raw_provider(move |conn| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { drop(conn) }
    })
    .await;
    // Nothing listens on `closed`.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    p.add_priced_provider("hangup", &hangup).await;
    p.add_priced_provider("nowhere", &format!("http://{closed}/v1"))
        .await;
    charged_the_hold_and_not_retried(&p, "broken", "hangup/m", 502, "upstream_interrupted").await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Never reached: released, and the SDKs may retry.
    released_and_may_be_retried(&p, "refused", "nowhere/m", 502, "upstream_unreachable").await;
}

/// A provider that answers 2xx with a body that cannot be read (cut by a
/// middlebox, an HTML page) did the work: the hold is charged, and the
/// SDKs are told not to retry, which would be charged again.
#[tokio::test]
async fn an_unreadable_answer_is_charged_and_not_retried() {
    let p = Proxy::start(PLAN).await;
    let garbled = raw_provider(|mut conn| async move {
        use tokio::io::AsyncWriteExt;
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
    })
    .await;
    p.add_priced_provider("garbled", &garbled).await;
    charged_the_hold_and_not_retried(&p, "garbled", "garbled/m", 502, "upstream_malformed").await;
}

/// A request that names no output cap is held, and sent, the default cap:
/// the general one, or, for a model that reasons before answering by
/// default (its reasoning counts against the cap), the larger reasoning
/// one, lest answers come back empty, cut at 4,096 tokens of reasoning.
/// Claude reasons only when asked to.
#[tokio::test]
async fn a_request_without_a_cap_is_given_the_default_for_its_kind_of_model() {
    let p = Proxy::start(PLAN).await;
    let reasoning = tollgate_proxy::server::DEFAULT_MAX_REASONING_OUTPUT_TOKENS;
    for (model, sent_cap, reasons) in [
        ("gpt-4o", "/max_completion_tokens", false),
        ("o3", "/max_completion_tokens", true),
        ("gpt-5", "/max_completion_tokens", true),
        (
            "gemini-2.5-flash",
            "/generationConfig/maxOutputTokens",
            true,
        ),
        ("claude-sonnet-4-20250514", "/max_tokens", false),
    ] {
        let identity = format!("uncapped-{model}");
        let mut body = chat_body(model, false);
        body.as_object_mut().unwrap().remove("max_tokens");
        let (status, _, answer) = p.chat(&identity, body).await;
        assert_eq!(status, 200, "{model}: {answer}");
        let want = if reasons { reasoning } else { 4096 };
        let mock = match model {
            m if m.starts_with("gemini") => &p.gemini,
            m if m.starts_with("claude") => &p.anthropic,
            _ => &p.openai,
        };
        let sent: Value = mock.last_request().unwrap().json().unwrap();
        assert_eq!(
            sent.pointer(sent_cap),
            Some(&json!(want)),
            "{model}: {sent}"
        );
        let held = &p.events(&identity).await[0].1["amounts"]["output_tokens"];
        assert_eq!(held, &json!(want.to_string()), "{model}");
    }
}

/// The caller's `x-request-id` is echoed and recorded on the call's
/// events, for tracing a call through the audit; one too long to keep in
/// every event (or not printable) is replaced with a new id, echoed and
/// recorded in its place.
#[tokio::test]
async fn a_callers_request_id_is_recorded_unless_it_is_unusable() {
    let p = Proxy::start(PLAN).await;
    let long = "r".repeat(ingest::http::MAX_REQUEST_ID_BYTES + 1);
    for (identity, sent) in [
        ("traced", "trace-0af7651916cd43dd8448eb211c80319c"),
        ("long", long.as_str()),
        ("spaced", "an id with spaces"),
    ] {
        let r = p
            .request(identity, &chat_body("gpt-4o-mini", false))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{identity}");
        let echoed = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        if identity == "traced" {
            assert_eq!(echoed, sent);
        } else {
            assert_ne!(echoed, sent, "{identity}");
            assert!(
                uuid::Uuid::parse_str(&echoed).is_ok(),
                "{identity}: {echoed}"
            );
        }
        p.settled(identity, 1).await;
        let mut recorded = Vec::new();
        let account = schemas::Account::Identity {
            identity: identity.into(),
        };
        ledger::audit::audit(p.gate.jetstream(), p.project_id, &account, |_, env| {
            recorded.push(env.request_id.clone());
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(recorded, vec![Some(echoed.clone()); 2], "{identity}");
    }
}

/// A provider (a base URL a project set) that sends without end, a stream
/// event that never ends or a JSON answer that never does, cannot fill the
/// proxy's memory: the stream ends at the event limit with the cut-stream
/// notice, the JSON call at the answer limit as a broken one, both charged.
#[tokio::test]
async fn a_provider_that_sends_without_end_is_cut_off_and_charged() {
    let p = Proxy::start(PLAN).await;
    let serve = |content_type: &'static str, start: &'static [u8]| async move {
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = sent.clone();
        let url = raw_provider(move |mut conn| {
            let counted = counted.clone();
            async move {
                use tokio::io::AsyncWriteExt;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
                    start.len()
                );
                let mut out = head.into_bytes();
                out.extend_from_slice(start);
                out.extend_from_slice(b"\r\n");
                let _ = conn.write_all(&out).await;
                let piece = vec![b'a'; 1 << 20];
                let chunk =
                    [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
                // Until the proxy hangs up.
                while conn.write_all(&chunk).await.is_ok() {
                    counted.fetch_add(piece.len(), std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
        .await;
        (url, sent)
    };
    let (stream_url, streamed) = serve("text/event-stream", b"data: ").await;
    let (json_url, answered) = serve("application/json", b"{\"id\":\"").await;
    p.add_priced_provider("endless", &stream_url).await;
    p.add_priced_provider("endlessjson", &json_url).await;

    let r = p
        .request("endless", &chat_body("endless/m", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("ended before the answer was complete"),
        "{}",
        &text[..text.len().min(400)]
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert!(text.len() < 4096, "the endless event is not passed on");
    let settled = p.settled("endless", 1).await;
    assert_eq!(settled[0].0, "committed", "{settled:?}");
    let sent = streamed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent >= tollgate_proxy::providers::MAX_SSE_EVENT_BYTES,
        "read up to the limit: {sent}"
    );

    charged_the_hold_and_not_retried(
        &p,
        "endlessjson",
        "endlessjson/m",
        502,
        "upstream_interrupted",
    )
    .await;
    let sent = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent >= tollgate_proxy::upstream::MAX_ANSWER_BYTES,
        "read up to the limit: {sent}"
    );
}

/// A call may not outlive its hold: the ledger would expire the hold and
/// free its budget while the provider still works. It is cut before
/// (`Settings::call_limit`) and settled as a shutdown cut is: a stream with
/// what it consumed, a JSON call with its hold.
#[tokio::test]
async fn a_call_is_cut_before_its_hold_could_expire() {
    let p = Proxy::start_with_hold_ttl(PLAN, Duration::from_secs(2)).await;
    p.anthropic.update_behavior(|b| {
        b.reply_text = "word ".repeat(200);
        b.chunk_delay = Duration::from_millis(100);
    });
    p.openai
        .update_behavior(|b| b.answer_delay = Duration::from_secs(20));
    let streamed = p
        .request(
            "long-stream",
            &chat_body("claude-3-5-sonnet-20240620", true),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert!(
        text.contains("ended before the answer was complete"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let output = committed_output(&p, "long-stream").await;
    assert!(output > 0 && output < 200, "partial output {output}");

    charged_the_hold_and_not_retried(&p, "long-json", "gpt-4o", 504, "call_outlived_hold").await;
}

/// A hold that takes the call's whole time to be taken (here: a call may
/// run for no time at all) is released and the call not sent, rather than
/// charged for a call the provider never saw.
#[tokio::test]
async fn a_call_whose_hold_took_all_its_time_is_not_sent_nor_charged() {
    let p = Proxy::start_with_hold_ttl(PLAN, Duration::ZERO).await;
    let settled =
        released_and_may_be_retried(&p, "slow-hold", "gpt-4o", 503, "hold_too_slow").await;
    assert_eq!(p.openai.request_count(), 0, "nothing was sent");
    assert_eq!(settled[0].1["reason"], "hold_outlasted_call", "{settled:?}");
}

/// `identity`'s one call was committed (not released, not expired): the
/// output tokens it was charged.
async fn committed_output(p: &Proxy, identity: &str) -> u64 {
    let settled = p.settled(identity, 1).await;
    assert_eq!(settled[0].0, "committed", "not expired: {settled:?}");
    tokens(&settled[0].1["actual"], "output_tokens")
}

/// A provider generating fast (a custom one, `fast/m`), and a streamed call
/// to it from a client with a 4 KB window that never reads: the proxy's
/// writes to it soon block. Returns the client's socket (kept open) and
/// whether the provider's connection was dropped.
async fn stalled_stream(
    p: &Proxy,
    identity: &str,
) -> (
    tokio::net::TcpStream,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::AsyncWriteExt;
    let hung_up = std::sync::Arc::new(AtomicBool::new(false));
    let url = raw_provider({
        let hung_up = hung_up.clone();
        move |mut conn| {
            let hung_up = hung_up.clone();
            async move {
                let _ = conn.write_all(SSE_HEAD.as_bytes()).await;
                let chunk = sse_chunk(
                    json!([{"index": 0, "delta": {"content": "word ".repeat(800)}, "finish_reason": null}]),
                    Value::Null,
                );
                // A provider generating fast, until the proxy hangs up.
                while conn.write_all(&chunk).await.is_ok() {}
                hung_up.store(true, Ordering::SeqCst);
            }
        }
    })
    .await;
    p.add_priced_provider("fast", &url).await;
    (stalled_client(p, identity, "fast/m").await, hung_up)
}

/// A streamed call of `model` from a client with a 4 KB window that never
/// reads: the proxy's writes to it soon block. Returns its socket.
async fn stalled_client(p: &Proxy, identity: &str, model: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr: std::net::SocketAddr = p.base.strip_prefix("http://").unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small window, so the proxy's writes block soon.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    let body = serde_json::to_vec(&chat_body(model, true)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nx-project-key: {}\r\n\
         x-identity: {identity}\r\nauthorization: Bearer sk-provider-test-key\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        p.project_key,
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body).await.unwrap();
    client
}

/// The stalled call was committed with what it consumed (not released,
/// not left to expire: the times tell, since the harness runs no expiry)
/// and the provider's connection dropped.
async fn settled_while_held(p: &Proxy, identity: &str, hung_up: &std::sync::atomic::AtomicBool) {
    let output = committed_output(p, identity).await;
    assert!(output > 0, "what was consumed is charged");
    let mut times = Vec::new();
    let account = schemas::Account::Identity {
        identity: identity.into(),
    };
    ledger::audit::audit(p.gate.jetstream(), p.project_id, &account, |_, env| {
        times.push((env.occurred_at, serde_json::to_value(&env.event)?));
        Ok(())
    })
    .await
    .unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(times[0].1["expires_at"].clone()).unwrap();
    assert!(
        times[1].0 < expires_at,
        "committed at {} for a hold expiring at {expires_at}",
        times[1].0
    );
    for _ in 0..500 {
        if hung_up.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the provider's connection was not dropped");
}

/// A client that stops reading a stream (an app sent to the background, a
/// stalled network) leaves the answer's body unpolled: hyper polls a body
/// only when it can write. The call is still cut before its hold could
/// expire, charged what it consumed, and the provider's connection dropped.
#[tokio::test]
async fn a_stream_whose_client_stopped_reading_is_cut_before_its_hold_could_expire() {
    let p = Proxy::start_with_hold_ttl(PLAN, Duration::from_secs(2)).await;
    let (client, hung_up) = stalled_stream(&p, "stalled").await;
    // Nothing is read from here on.
    settled_while_held(&p, "stalled", &hung_up).await;
    drop(client);
}

/// Long before that, a connection whose writes stay blocked for the send
/// timeout is closed: the call ends there, charged what it consumed.
#[tokio::test]
async fn a_client_that_reads_nothing_for_the_send_timeout_is_disconnected() {
    use tokio::io::AsyncReadExt;
    // Holds live 10 minutes: only the send timeout can end this call.
    let p = Proxy::start_with_send_timeout(PLAN, Duration::from_millis(500)).await;
    let (mut client, hung_up) = stalled_stream(&p, "stalled").await;
    settled_while_held(&p, "stalled", &hung_up).await;
    // The proxy closed the connection: reading drains what the kernel
    // holds, then ends.
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was closed");
}

/// A provider that sends a whole streamed answer at once, 8 MB (far more
/// than the proxy passes on to a client that does not read), then its
/// usage (21 in, 777,777 out) and the end; registered as `name/m`.
async fn bulk_provider(p: &Proxy, name: &str) {
    use tokio::io::AsyncWriteExt;
    let url = raw_provider(|mut conn| async move {
        let mut out = SSE_HEAD.as_bytes().to_vec();
        let words = sse_chunk(
            json!([{"index": 0, "delta": {"content": "word ".repeat(3200)}, "finish_reason": null}]),
            Value::Null,
        );
        for _ in 0..512 {
            out.extend_from_slice(&words);
        }
        out.extend(sse_chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            Value::Null,
        ));
        out.extend(sse_chunk(
            json!([]),
            json!({"prompt_tokens": 21, "completion_tokens": 777_777, "total_tokens": 777_798}),
        ));
        out.extend(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n".iter());
        let _ = conn.write_all(&out).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    p.add_priced_provider(name, &url).await;
}

/// `identity`'s call was committed with the provider's own count (within
/// 30 s: a deadline of 18 s included).
async fn charged_the_providers_count(p: &Proxy, identity: &str) {
    let settled = p.settled_within(identity, 1, Duration::from_secs(30)).await;
    assert_eq!(settled[0].0, "committed", "{settled:?}");
    let actual = &settled[0].1["actual"];
    assert_eq!(
        (
            tokens(actual, "input_tokens"),
            tokens(actual, "output_tokens")
        ),
        (21, 777_777),
        "the provider's own count: {actual}"
    );
}

/// What a provider sent while the client was not reading waits in the
/// socket buffers, unread, billed all the same: when the send timeout
/// closes the connection, the proxy reads it before settling, here to the
/// provider's own usage, rather than charging only what it had passed on
/// (4 MB or so).
#[tokio::test]
async fn a_stalled_client_is_charged_what_the_provider_sent_meanwhile() {
    // Past the second without a read after which a stream's end is taken
    // for a stall rather than a client that left while reading.
    let p = Proxy::start_with_send_timeout(PLAN, Duration::from_secs(2)).await;
    bulk_provider(&p, "bulk").await;
    let _client = stalled_client(&p, "stalled-bulk", "bulk/m").await;
    charged_the_providers_count(&p, "stalled-bulk").await;
}

/// The same for a stream its deadline cuts (a client reading too little to
/// trip the send timeout, here none at all with holds of 20 s): what the
/// provider sent is read before the hold is settled, within its margin.
#[tokio::test]
async fn a_stream_cut_at_its_deadline_is_charged_what_the_provider_sent() {
    let p = Proxy::start_with_hold_ttl(PLAN, Duration::from_secs(20)).await;
    bulk_provider(&p, "bulk").await;
    let _client = stalled_client(&p, "deadline-bulk", "bulk/m").await;
    charged_the_providers_count(&p, "deadline-bulk").await;
}

#[tokio::test]
async fn calls_still_running_at_shutdown_are_settled_before_the_proxy_stops() {
    let mut p = Proxy::start(PLAN).await;
    // A stream that would take 20 s, and a JSON answer that would take 20 s.
    p.anthropic.update_behavior(|b| {
        b.reply_text = "word ".repeat(200);
        b.chunk_delay = Duration::from_millis(100);
    });
    p.openai.update_behavior(|b| {
        b.answer_delay = Duration::from_secs(20);
    });
    let r = p
        .request("streaming", &chat_body("claude-3-5-sonnet-20240620", true))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    for _ in 0..3 {
        body.next().await.unwrap().unwrap();
    }
    let waiting = tokio::spawn(p.request("waiting", &chat_body("gpt-4o", false)).send());
    while p.openai.request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.shutdown.cancel();
    // The stream ends after the grace period, well before its 20 s.
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            break;
        }
    }
    // The cut JSON call says it was charged, and not to retry it.
    let waited_answer = waiting.await.unwrap().unwrap();
    assert_eq!(waited_answer.status(), 503);
    assert_eq!(waited_answer.headers()["x-should-retry"], "false");
    let answer: Value = waited_answer.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "shutting_down", "{answer}");
    tokio::time::timeout(Duration::from_secs(30), &mut p.served)
        .await
        .expect("the proxy stops after its grace period")
        .unwrap();
    // Both were settled before the proxy's threads stopped: the stream with
    // what it consumed, the JSON call with its hold (its usage is unknown).
    let streamed = p.events("streaming").await;
    assert_eq!(streamed.len(), 2, "{streamed:?}");
    assert_eq!(streamed[1].0, "committed");
    let output: u64 = streamed[1].1["actual"]["output_tokens"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(output > 0 && output < 200, "partial output {output}");
    charged_the_hold(&p, "waiting").await;
}

#[tokio::test]
async fn upstream_errors_release_the_hold_and_keep_the_provider_status() {
    let p = Proxy::start(PLAN).await;
    p.anthropic.fail_with(529, "Overloaded");
    let (status, _, body) = p
        .chat("err", chat_body("claude-3-5-sonnet-20240620", false))
        .await;
    assert_eq!(status, 529, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Overloaded"),
        "{body}"
    );
    let settled = p.settled("err", 1).await;
    assert_eq!(settled[0].0, "released");
    // A provider's rate limit keeps its advice on when to retry, and the answer still
    // carries Tollgate's own rate-limit headers.
    p.anthropic.fail_with(
        429,
        "Number of request tokens has exceeded your per-minute rate limit",
    );
    let r = p
        .request("err", &chat_body("claude-3-5-sonnet-20240620", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
    let settled = p.settled("err", 2).await;
    assert_eq!(settled[1].0, "released");
}

#[tokio::test]
async fn a_projects_price_overrides_match_like_the_price_table() {
    let p = Proxy::start(PLAN).await;
    let price = |input: i64, output: i64| {
        tollgate_proxy::pricing::ModelPrice::per_token(
            Decimal::new(input, 6),
            Decimal::new(output, 6),
        )
    };
    // Under the price table's own id (prefixed), and undated: both must win
    // over the bundled entries for the model the client names.
    for (key, input, output) in [("gemini/gemini-2.0-flash", 3, 7), ("gpt-4o", 5, 11)] {
        tollgate_proxy::project_config::set_price_override(
            &p.db.pool,
            p.project_id,
            key,
            &price(input, output),
        )
        .await
        .unwrap();
    }
    for mock in [&p.openai, &p.gemini] {
        mock.update_behavior(|b| {
            b.input_tokens = Some(100);
            b.output_tokens = Some(10);
        });
    }
    for (i, (model, input, output)) in [("gemini-2.0-flash", 3, 7), ("gpt-4o-2024-08-06", 5, 11)]
        .into_iter()
        .enumerate()
    {
        let identity = format!("priced-{i}");
        let (status, _, body) = p.chat(&identity, chat_body(model, false)).await;
        assert_eq!(status, 200, "{model}: {body}");
        let settled = p.settled(&identity, 1).await;
        let usd = dec(&settled[0].1["actual"]["usd"]);
        let want = Decimal::new(100 * input + 10 * output, 6);
        assert_eq!(usd, want, "{model} is priced by the project's override");
    }
}

#[tokio::test]
async fn anthropic_cache_reads_and_one_hour_writes_are_priced_as_billed() {
    let p = Proxy::start(PLAN).await;
    p.anthropic.update_behavior(|b| {
        b.input_tokens = Some(1000);
        b.cached_input_tokens = 100;
        b.cache_write_1h_input_tokens = 400;
        b.output_tokens = Some(50);
    });
    let table: Value = serde_json::from_str(include_str!("../prices/model_prices.json")).unwrap();
    let price = &table["models"]["claude-3-5-sonnet-20240620"];
    // 500 fresh + 100 read from cache + 400 written to the 1-hour cache, 50 out.
    let want = Decimal::from(500) * dec(&price["input_cost_per_token"])
        + Decimal::from(100) * dec(&price["cache_read_input_token_cost"])
        + Decimal::from(400) * dec(&price["cache_creation_input_token_cost_above_1hr"])
        + Decimal::from(50) * dec(&price["output_cost_per_token"]);
    assert_eq!(
        dec(&price["cache_creation_input_token_cost_above_1hr"]),
        dec(&price["input_cost_per_token"]) * Decimal::TWO,
        "Anthropic bills 1-hour writes at twice the input price"
    );
    for (i, stream) in [false, true].into_iter().enumerate() {
        let identity = format!("cached-{i}");
        let (status, _, body) = p
            .chat(&identity, chat_body("claude-3-5-sonnet-20240620", stream))
            .await;
        assert_eq!(status, 200, "{body}");
        let settled = p.settled(&identity, 1).await;
        let actual = &settled[0].1["actual"];
        assert_eq!(actual["input_tokens"], "1000", "stream {stream}: {actual}");
        assert_eq!(dec(&actual["usd"]), want, "stream {stream}: {actual}");
    }
}

/// Gemini past 200k prompt tokens, Claude's 1M-context Sonnet past 200k
/// and Grok 4 past 128k bill every token of the call at higher prices,
/// output and cache reads included; at the threshold, the base prices.
#[tokio::test]
async fn long_context_calls_are_priced_at_the_providers_long_context_rates() {
    let p = Proxy::start(PLAN).await;
    let table: Value = serde_json::from_str(include_str!("../prices/model_prices.json")).unwrap();
    // (model, price-table key, mock, input tokens reported, of which read from cache)
    let cases = [
        (
            "gemini-2.5-pro",
            "gemini/gemini-2.5-pro",
            &p.gemini,
            250_000,
            0,
        ),
        (
            "gemini-2.5-pro",
            "gemini/gemini-2.5-pro",
            &p.gemini,
            200_000,
            0,
        ),
        (
            "claude-sonnet-4-5",
            "claude-sonnet-4-5",
            &p.anthropic,
            300_000,
            100_000,
        ),
        ("grok-4-0709", "xai/grok-4-0709", &p.xai, 128_001, 0),
    ];
    for (i, (model, key, mock, input, cached)) in cases.into_iter().enumerate() {
        let price = &table["models"][key];
        let tier = &price["long_context"][0];
        let threshold = tier["above_input_tokens"].as_u64().unwrap();
        let prices = if input > threshold { tier } else { price };
        let cache_read = match &prices["cache_read_input_token_cost"] {
            Value::Null => Decimal::ZERO,
            read => dec(read),
        };
        let want = Decimal::from(input - cached) * dec(&prices["input_cost_per_token"])
            + Decimal::from(cached) * cache_read
            + Decimal::from(80) * dec(&prices["output_cost_per_token"]);
        mock.update_behavior(|b| {
            b.input_tokens = Some(input);
            b.cached_input_tokens = cached;
            b.output_tokens = Some(80);
        });
        for stream in [false, true] {
            let identity = format!("long-{i}-{stream}");
            let (status, _, body) = p.chat(&identity, chat_body(model, stream)).await;
            assert_eq!(status, 200, "{model}: {body}");
            let settled = p.settled(&identity, 1).await;
            let actual = &settled[0].1["actual"];
            assert_eq!(
                actual["input_tokens"],
                input.to_string(),
                "{model}: {actual}"
            );
            assert_eq!(
                dec(&actual["usd"]),
                want,
                "{model} {input} stream {stream}: {actual}"
            );
        }
    }
}

/// OpenAI bills a call at the processing tier its answer reports
/// (`service_tier`): `priority` dearer, `flex` cheaper. A priority call is
/// held at the priority prices too.
#[tokio::test]
async fn openai_calls_are_priced_at_the_service_tier_they_were_served_at() {
    let p = Proxy::start(PLAN).await;
    p.openai.update_behavior(|b| {
        b.input_tokens = Some(1000);
        b.cached_input_tokens = 200;
        b.output_tokens = Some(40);
    });
    let table: Value = serde_json::from_str(include_str!("../prices/model_prices.json")).unwrap();
    for (model, tier) in [
        ("gpt-5-mini", "priority"),
        ("gpt-5-mini", "flex"),
        ("gpt-4o", "priority"),
    ] {
        let prices = &table["models"][model]["service_tiers"][tier];
        let want = Decimal::from(800) * dec(&prices["input_cost_per_token"])
            + Decimal::from(200) * dec(&prices["cache_read_input_token_cost"])
            + Decimal::from(40) * dec(&prices["output_cost_per_token"]);
        for stream in [false, true] {
            let identity = format!("tier-{model}-{tier}-{stream}");
            let mut body = chat_body(model, stream);
            body["service_tier"] = json!(tier);
            let (status, _, answer) = p.chat(&identity, body).await;
            assert_eq!(status, 200, "{model} {tier}: {answer}");
            let settled = p.settled(&identity, 1).await;
            let (actual, held) = (&settled[0].1["actual"], &settled[0].1["hold"]["held"]);
            assert_eq!(
                dec(&actual["usd"]),
                want,
                "{model} {tier} stream {stream}: {actual}"
            );
            if tier == "priority" {
                // 200 output tokens held at the priority output price at least.
                assert!(
                    dec(&held["usd"]) >= Decimal::from(200) * dec(&prices["output_cost_per_token"]),
                    "{model}: {held}"
                );
            }
        }
    }
}

/// OpenAI's search models charge a fee per call on top of the tokens, by
/// the request's `search_context_size` (`medium` when not given).
#[tokio::test]
async fn a_web_search_call_is_charged_its_search_fee() {
    let p = Proxy::start(PLAN).await;
    p.openai.update_behavior(|b| {
        b.input_tokens = Some(500);
        b.output_tokens = Some(60);
    });
    let table: Value = serde_json::from_str(include_str!("../prices/model_prices.json")).unwrap();
    let model = "gpt-4o-search-preview";
    let price = &table["models"][model];
    let tokens = Decimal::from(500) * dec(&price["input_cost_per_token"])
        + Decimal::from(60) * dec(&price["output_cost_per_token"]);
    for (size, options) in [
        ("medium", Value::Null),
        ("high", json!({"search_context_size": "high"})),
        (
            "low",
            json!({"search_context_size": "low", "user_location": {"type": "approximate"}}),
        ),
    ] {
        let fee = dec(&price["web_search_cost_per_call"][size]);
        assert!(fee > Decimal::ZERO);
        for stream in [false, true] {
            let identity = format!("search-{size}-{stream}");
            let mut body = chat_body(model, stream);
            if !options.is_null() {
                body["web_search_options"] = options.clone();
            }
            let (status, _, answer) = p.chat(&identity, body).await;
            assert_eq!(status, 200, "{size}: {answer}");
            let settled = p.settled(&identity, 1).await;
            let (actual, held) = (&settled[0].1["actual"], &settled[0].1["hold"]["held"]);
            assert_eq!(
                dec(&actual["usd"]),
                tokens + fee,
                "{size} stream {stream}: {actual}"
            );
            assert!(dec(&held["usd"]) >= fee, "{size}: {held}");
        }
    }
}

/// An `input_audio` part reaches Gemini as inline audio, and the audio
/// Gemini reports (`promptTokensDetails`) is charged at its audio price
/// (Gemini 2.5 Flash: $1.00 per million, against $0.30 for text) and held.
#[tokio::test]
async fn gemini_audio_input_is_charged_at_the_audio_price() {
    use base64::Engine;
    let p = Proxy::start(PLAN).await;
    // Ten seconds at 25 tokens a second (Gemini publishes 32, which the
    // proxy's own count uses): 250 audio tokens, + 20 of text.
    p.gemini.update_behavior(|b| {
        b.audio_tokens_per_second = 25;
        b.input_tokens = Some(20);
        b.output_tokens = Some(30);
    });
    let wav = testkit::mock_providers::pcm_wav(8_000, 1, 8, 10);
    let data = base64::engine::general_purpose::STANDARD.encode(wav);
    let table: Value = serde_json::from_str(include_str!("../prices/model_prices.json")).unwrap();
    let price = &table["models"]["gemini/gemini-2.5-flash"];
    let want = Decimal::from(20) * dec(&price["input_cost_per_token"])
        + Decimal::from(250) * dec(&price["input_cost_per_audio_token"])
        + Decimal::from(30) * dec(&price["output_cost_per_token"]);
    for stream in [false, true] {
        let identity = format!("gemini-voice-{stream}");
        let body = json!({"model": "gemini-2.5-flash", "stream": stream, "max_tokens": 100,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is said in this recording?"},
                {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]}]});
        let (status, _, answer) = p.chat(&identity, body).await;
        assert_eq!(status, 200, "{answer}");
        let sent = p.gemini.last_request().unwrap().json().unwrap();
        assert_eq!(
            sent["contents"][0]["parts"][1]["inlineData"]["mimeType"],
            "audio/wav"
        );
        let settled = p.settled(&identity, 1).await;
        let (actual, held) = (&settled[0].1["actual"], &settled[0].1["hold"]["held"]);
        assert_eq!(actual["input_tokens"], "270", "{actual}");
        assert_eq!(dec(&actual["usd"]), want, "stream {stream}: {actual}");
        assert!(
            dec(&held["usd"]) >= want,
            "the hold covers the audio: {held}"
        );
    }
}

/// Claude reads past 200k tokens only with Anthropic's `context-1m` beta:
/// the proxy passes that beta on, and no other (those that change the
/// answer's shape would not translate). The hold of such a call covers the
/// model's whole window (`estimate`'s unit tests).
#[tokio::test]
async fn the_1m_context_beta_alone_reaches_anthropic() {
    let p = Proxy::start(PLAN).await;
    let model = "claude-sonnet-4-20250514";
    let send = |identity: &'static str, beta: Option<&'static str>| {
        let p = &p;
        async move {
            let mut request = p.request(identity, &chat_body(model, false));
            if let Some(beta) = beta {
                request = request.header("anthropic-beta", beta);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let sent = p.anthropic.last_request().unwrap();
            sent.header("anthropic-beta").map(str::to_owned)
        }
    };
    assert_eq!(send("beta-none", None).await, None);
    assert_eq!(
        send(
            "beta-1m",
            Some("context-1m-2025-08-07, computer-use-2025-01-24")
        )
        .await,
        Some("context-1m-2025-08-07".to_owned())
    );
    assert_eq!(
        send("beta-other", Some("computer-use-2025-01-24")).await,
        None
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_charged_what_the_provider_reported() {
    let p = Proxy::start(PLAN).await;
    p.openai.update_behavior(|b| {
        b.input_tokens = Some(300);
        b.output_tokens = Some(40);
        b.answer_delay = std::time::Duration::from_millis(400);
    });
    // The client gives up while the provider is still writing its answer
    // (once the call was forwarded, however long the proxy took to get there).
    let client = tokio::spawn(p.request("impatient", &chat_body("gpt-4o", false)).send());
    for _ in 0..500 {
        if p.openai.request_count() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(p.openai.request_count(), 1, "the call was forwarded");
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    let settled = p.settled("impatient", 1).await;
    assert_eq!(settled[0].0, "committed", "{settled:?}");
    let actual = &settled[0].1["actual"];
    assert_eq!(
        (
            actual["input_tokens"].as_str(),
            actual["output_tokens"].as_str()
        ),
        (Some("300"), Some("40")),
        "the answer is read to its end and charged in full: {actual}"
    );
    assert_eq!(dec(&actual["usd"]), expected_usd("gpt-4o", 300, 40));
}

#[tokio::test]
async fn an_answer_without_usage_is_charged_the_counted_prompt_and_estimated_output() {
    let p = Proxy::start(PLAN).await;
    for mock in [&p.openai, &p.gemini] {
        mock.update_behavior(|b| b.omit_usage = true);
    }
    // The same prompt to both: OpenAI's hold is its o200k_base count; Gemini's
    // is widened by a quarter for its own tokenizer (`input_margin_percent`).
    let mut counted = None;
    for (i, model) in ["gpt-4o", "gemini-2.0-flash"].into_iter().enumerate() {
        let identity = format!("no-usage-{i}");
        let (status, _, body) = p.chat(&identity, chat_body(model, false)).await;
        assert_eq!(status, 200, "{model}: {body}");
        let settled = p.settled(&identity, 1).await;
        assert_eq!(settled[0].0, "committed", "{model}");
        let actual = &settled[0].1["actual"];
        // The prompt as counted with the tokenizer, not as widened for the
        // hold; the reply's 9 words (47 characters) estimated at 4 characters a token.
        let held = dec(&p.events(&identity).await[0].1["amounts"]["input_tokens"]);
        let count = *counted.get_or_insert(held);
        assert_eq!(dec(&actual["input_tokens"]), count, "{model}: {actual}");
        assert!(count > Decimal::ZERO, "{model}");
        if model.starts_with("gemini") {
            assert_eq!(held, (count * Decimal::new(125, 2)).ceil(), "{model}");
        }
        assert_eq!(actual["output_tokens"], "12", "{model}: {actual}");
        assert!(dec(&actual["usd"]) > Decimal::ZERO, "{model}: {actual}");
    }
}

#[tokio::test]
async fn hitting_a_limit_is_an_openai_429_with_the_tiers_message() {
    let p = Proxy::start(PLAN).await;
    let send = |tier: &'static str| {
        p.request("limited", &chat_body("gpt-4o", false))
            .header("x-tier", tier)
            .send()
    };
    assert_eq!(send("tiny").await.unwrap().status(), 200);
    assert_eq!(send("tiny").await.unwrap().status(), 200);
    let r = send("tiny").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Within the minute the SDKs wait for: they may retry.
    assert!(!r.headers().contains_key("x-should-retry"));
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (
            body["error"]["type"].as_str(),
            body["error"]["code"].as_str()
        ),
        (Some("rate_limit_exceeded"), Some("limit_exceeded"))
    );
    assert_eq!(
        p.openai.request_count(),
        2,
        "a refused call is never forwarded"
    );

    // A lifetime limit never resets: no `Retry-After` or reset header to
    // give, and the SDKs are told not to retry; the message says so.
    let trial = || {
        p.request("trying", &chat_body("gpt-4o", false))
            .header("x-tier", "trial")
            .send()
    };
    assert_eq!(trial().await.unwrap().status(), 200);
    let r = trial().await.unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers();
    assert!(!h.contains_key("retry-after"), "{h:?}");
    assert!(!h.contains_key("x-ratelimit-reset-requests"), "{h:?}");
    assert_eq!(h["x-should-retry"], "false", "{h:?}");
    assert_eq!(h["x-ratelimit-limit-requests"], "1", "{h:?}");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0", "{h:?}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "Your 1 free requests are used (resets never)",
        "{body}"
    );
    assert_eq!(p.openai.request_count(), 3);

    // The free tier's dollar cap with its custom message and deep link.
    let big = json!({"model": "gpt-4o", "max_tokens": 100000, "messages": [{"role": "user", "content": "x".repeat(20000)}]});
    p.openai.update_behavior(|b| {
        b.input_tokens = Some(400_000);
        b.output_tokens = Some(100_000);
    });
    let mut denied = None;
    for _ in 0..20 {
        let (status, headers, body) = p.chat("spender", big.clone()).await;
        if status == 429 {
            denied = Some((headers, body));
            break;
        }
    }
    let (headers, body) = denied.expect("the $5 cap must stop this spender");
    // A month's cap resets later than the SDKs would wait: no retries.
    assert_eq!(headers["x-should-retry"], "false", "{headers:?}");
    let message = body["error"]["message"].as_str().unwrap();
    // Dollars to the cent: "You used 4.32 of 5.00 usd this month; …".
    let used = message
        .strip_prefix("You used ")
        .and_then(|rest| rest.split_once(" of 5.00 usd this month; upgrade for more"))
        .map(|(used, _)| used);
    assert!(
        used.is_some_and(|u| u.len() >= 4 && u.as_bytes()[u.len() - 3] == b'.'),
        "{message}"
    );
    assert_eq!(body["error"]["deep_link"], "myapp://upgrade");
}

#[tokio::test]
async fn a_project_can_point_a_builtin_provider_or_a_custom_one_at_its_own_base_url() {
    let p = Proxy::start(PLAN).await;
    let own =
        testkit::mock_providers::MockProvider::start(testkit::mock_providers::MockKind::OpenAi)
            .await
            .unwrap();
    let compatible =
        testkit::mock_providers::MockProvider::start(testkit::mock_providers::MockKind::OpenAi)
            .await
            .unwrap();
    tollgate_proxy::project_config::add_custom_provider(
        p.db.pool(),
        p.project_id,
        "openai",
        &own.base_url(),
    )
    .await
    .unwrap();
    tollgate_proxy::project_config::add_custom_provider(
        p.db.pool(),
        p.project_id,
        "groq",
        &compatible.base_url(),
    )
    .await
    .unwrap();
    let (status, _, body) = p.chat("own-url", chat_body("gpt-4o", false)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (own.request_count(), p.openai.request_count()),
        (1, 0),
        "the project's own OpenAI base URL is used"
    );
    let (status, _, body) = p
        .chat("own-url", chat_body("groq/llama-3.1-8b-instant", false))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(compatible.request_count(), 1);
    assert_eq!(
        compatible.last_request().unwrap().json().unwrap()["model"],
        "llama-3.1-8b-instant"
    );
    // A custom provider's models are named with its prefix, in limits and in the ledger.
    let once = |model: &str| {
        p.request("groq-user", &chat_body(model, false))
            .header("x-tier", "groq_once")
            .send()
    };
    assert_eq!(
        once("groq/llama-3.1-8b-instant").await.unwrap().status(),
        200
    );
    assert_eq!(
        once("groq/llama-3.1-8b-instant").await.unwrap().status(),
        429
    );
    assert_eq!(
        once("gpt-4o").await.unwrap().status(),
        200,
        "the limit is on groq/* only"
    );
    let events = p.events("groq-user").await;
    assert_eq!(events[0].1["model"], "groq/llama-3.1-8b-instant");
}

/// On a shared deployment (`TOLLGATE_PRIVATE_UPSTREAMS=deny`) a base URL a
/// project sets may not lead to a loopback, private or link-local address:
/// whoever holds the project's secret key could make the proxy call the
/// operator's internal services. Names are judged by what they resolve to.
/// The operator's own base URLs may be anywhere. Refused calls are released.
/// (`proxy/src/upstream.rs` tests the numeric hosts and the egress proxy.)
#[tokio::test]
async fn a_shared_deployment_refuses_project_base_urls_that_lead_inside() {
    let p = Proxy::start_denying_private_upstreams(PLAN).await;
    let inside =
        testkit::mock_providers::MockProvider::start(testkit::mock_providers::MockKind::OpenAi)
            .await
            .unwrap();
    let port = inside.addr().port();
    let projects_urls = [
        ("literal", format!("http://127.0.0.1:{port}/v1")),
        ("named", format!("http://localhost:{port}/v1")),
        ("six", format!("http://[::1]:{port}/v1")),
        ("metadata", "http://169.254.169.254/v1".to_owned()),
        ("xai", format!("http://127.0.0.1:{port}/v1")),
        // The operator's own Anthropic URL, set by the project: judged as
        // the project's (the path or the scheme could differ).
        ("anthropic", p.anthropic.base_url()),
    ];
    for (name, url) in &projects_urls {
        p.add_priced_provider(name, url).await;
    }
    // The operator's base URLs (the mocks, on 127.0.0.1) are called.
    let (status, _, body) = p.chat("operator", chat_body("gpt-4o", false)).await;
    assert_eq!(status, 200, "{body}");
    for (model, stream) in [
        ("literal/m", false),
        ("named/m", true),
        ("six/m", false),
        ("metadata/m", false),
        ("grok-4", true),
        ("claude-sonnet-4-5", false),
    ] {
        let identity = format!("refused-{}", model.replace('/', "-"));
        let (status, _, body) = p.chat(&identity, chat_body(model, stream)).await;
        assert_eq!(status, 403, "{model}: {body}");
        assert_eq!(body["error"]["code"], "upstream_address_refused", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("TOLLGATE_PRIVATE_UPSTREAMS"), "{message}");
        let settled = p.settled(&identity, 1).await;
        assert_eq!(settled[0].0, "released", "{model}: {settled:?}");
    }
    assert_eq!(inside.request_count(), 0);
    assert_eq!(p.anthropic.request_count(), 0);
}

#[tokio::test]
async fn the_model_list_holds_what_the_project_can_call() {
    let p = Proxy::start(PLAN).await;
    tollgate_proxy::project_config::add_custom_provider(
        p.db.pool(),
        p.project_id,
        "groq",
        "http://127.0.0.1:9/v1",
    )
    .await
    .unwrap();
    let list = |tier: &'static str| {
        let url = format!("{}/v1/models", p.base);
        let request = p.http.get(url).header("x-project-key", &p.project_key);
        async move {
            let r = request.header("x-tier", tier).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.unwrap();
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect::<Vec<String>>()
        }
    };
    let all = list("free").await;
    for callable in [
        "gpt-4o",
        "claude-3-5-sonnet-20240620",
        "gemini/gemini-2.0-flash",
        "xai/grok-2-1212",
        "groq/llama-3.1-8b-instant",
    ] {
        assert!(all.iter().any(|m| m == callable), "{callable} is missing");
    }
    // Every id listed routes to a provider Tollgate calls; ids priced for
    // other platforms (Azure, Bedrock, Vertex AI) are not offered.
    let routes = |id: &str| {
        tollgate_proxy::providers::route(
            id,
            &[tollgate_proxy::providers::CustomProvider {
                name: "groq".into(),
                base_url: "http://127.0.0.1:9/v1".into(),
            }],
            &tollgate_proxy::providers::BaseUrls::default(),
        )
        .is_ok()
    };
    assert!(all.iter().all(|m| routes(m)), "an unroutable id is listed");
    for elsewhere in ["azure/gpt-4o", "anthropic.claude-v2:1"] {
        assert!(!all.iter().any(|m| m == elsewhere), "{elsewhere} is listed");
    }
    // A tier that allows some models lists only those.
    let some = list("gpt4o_only").await;
    assert!(some.iter().any(|m| m == "gpt-4o"));
    assert!(some.iter().all(|m| m.starts_with("gpt-4o")), "{some:?}");
    // One model, as the SDKs' `models.retrieve` asks (ids may hold a `/`).
    let retrieve = |tier: &'static str, id: &'static str| {
        let url = format!("{}/v1/models/{id}", p.base);
        let request = p.http.get(url).header("x-project-key", &p.project_key);
        async move {
            let r = request.header("x-tier", tier).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    for id in [
        "gpt-4o",
        "gemini/gemini-2.0-flash",
        "groq/llama-3.1-8b-instant",
        // The same calls named as chat also takes them.
        "openai/gpt-4o",
        "gemini-2.0-flash",
    ] {
        let (status, model) = retrieve("free", id).await;
        assert_eq!(status, 200, "{id}: {model}");
        assert_eq!(
            (model["id"].as_str(), model["object"].as_str()),
            (Some(id), Some("model"))
        );
    }
    for (tier, id) in [
        ("free", "no-such-model"),
        ("gpt4o_only", "claude-3-5-sonnet-20240620"),
    ] {
        let (status, body) = retrieve(tier, id).await;
        assert_eq!(status, 404, "{id}: {body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    }
}

/// A call whose only credential is the project key (as the SDK's
/// `api_key`): no provider key is passed through.
async fn project_key_only(p: &Proxy, identity: &str, model: &str) -> reqwest::Response {
    p.http
        .post(format!("{}/v1/chat/completions", p.base))
        .bearer_auth(&p.project_key)
        .header("x-identity", identity)
        .json(&chat_body(model, false))
        .send()
        .await
        .unwrap()
}

/// A stored key this server cannot decrypt (another TOLLGATE_ENCRYPTION_KEY,
/// or none) is the operator's mistake: a 503 saying so, not a 401 asking
/// the app for a provider key. Nothing is held or forwarded.
#[tokio::test]
async fn a_stored_key_the_server_cannot_decrypt_is_a_503_naming_the_cause() {
    let stored_with = tollgate_proxy::keys::EncryptionKey::generate();
    for server_key in [Some(tollgate_proxy::keys::EncryptionKey::generate()), None] {
        let p = Proxy::start_with(PLAN, server_key).await;
        let key = tollgate_proxy::providers::ProviderKey::new("sk-ant-stored-key-0123456789");
        tollgate_proxy::keys::store_provider_key(
            p.db.pool(),
            p.project_id,
            "anthropic",
            &key,
            &stored_with,
        )
        .await
        .unwrap();
        let r = project_key_only(&p, "undecryptable", "claude-3-5-sonnet-20240620").await;
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "provider_key_unavailable", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("TOLLGATE_ENCRYPTION_KEY"),
            "{body}"
        );
        assert_eq!(p.anthropic.request_count(), 0);
        assert!(p.events("undecryptable").await.is_empty());
        // A provider with no stored key still asks the app for one.
        let r = project_key_only(&p, "undecryptable", "gpt-4o").await;
        assert_eq!(r.status(), 401);
    }
}

#[tokio::test]
async fn a_stored_provider_key_is_used_when_the_app_sends_none() {
    let enc = tollgate_proxy::keys::EncryptionKey::generate();
    let p = Proxy::start_with(PLAN, Some(enc.clone())).await;
    let key = tollgate_proxy::providers::ProviderKey::new("sk-ant-stored-key-0123456789");
    tollgate_proxy::keys::store_provider_key(p.db.pool(), p.project_id, "anthropic", &key, &enc)
        .await
        .unwrap();
    // The app sends only its project key (as the SDK's api_key) and the identity.
    let r = project_key_only(&p, "stored", "claude-3-5-sonnet-20240620").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        p.anthropic.last_request().unwrap().header("x-api-key"),
        Some("sk-ant-stored-key-0123456789")
    );
    // Without a stored key for OpenAI and without a pass-through key: 401.
    let r = project_key_only(&p, "stored", "gpt-4o").await;
    assert_eq!(r.status(), 401);
    assert_eq!(p.openai.request_count(), 0);
}
