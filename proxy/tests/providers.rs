//! Recorded provider answers (tests/fixtures, byte for byte) through the
//! translators: exact usage and exact OpenAI-shaped output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{events, fixture, meta, run_stream, streamed_text};
use http::StatusCode;
use serde_json::{json, Value};
use tollgate_proxy::providers::{
    translate_error, translate_response_with, ProviderError, ProviderKind, StreamTranslator, Usage,
};

fn translate(kind: ProviderKind, body: &[u8]) -> (Value, Usage) {
    let (bytes, usage) = translate_response_with(kind, StatusCode::OK, body, &meta()).unwrap();
    (serde_json::from_slice(&bytes).unwrap(), usage)
}

#[test]
fn openai_nonstream_passes_through_with_usage() {
    let body = fixture("openai_chat_nonstream.json");
    let (bytes, usage) =
        translate_response_with(ProviderKind::OpenAi, StatusCode::OK, &body, &meta()).unwrap();
    assert_eq!(bytes.as_ref(), body.as_slice());
    assert_eq!(
        usage,
        Usage {
            input_tokens: 16,
            output_tokens: 363,
            ..Usage::default()
        }
    );
}

#[test]
fn openai_stream_passes_through_and_hides_unasked_usage() {
    let body = fixture("openai_chat_stream.sse");
    let (out, usage) = run_stream(ProviderKind::OpenAi, true, &[&body]);
    assert_eq!(out, body, "with include_usage the stream is unchanged");
    assert_eq!(
        usage,
        Usage {
            input_tokens: 14,
            output_tokens: 30,
            ..Usage::default()
        }
    );

    let (out, usage_hidden) = run_stream(ProviderKind::OpenAi, false, &[&body]);
    let evs = events(&out);
    assert_eq!(evs.len(), events(&body).len() - 1);
    assert!(evs.iter().all(|e| e.get("usage").is_none()));
    assert_eq!(evs.last(), Some(&json!("[DONE]")));
    assert_eq!(usage_hidden, usage, "usage is measured even when hidden");
    assert_eq!(
        streamed_text(&evs),
        "I'm unable to provide real-time weather updates. To get the current weather in San Francisco, I recommend checking a reliable weather website or a weather app."
    );
}

#[test]
fn anthropic_nonstream_translates() {
    let (answer, usage) = translate(
        ProviderKind::Anthropic,
        &fixture("anthropic_messages_nonstream.json"),
    );
    assert_eq!(
        answer,
        json!({
            "id": "msg_01QgNtCXZKCJgpWHW3NEwmdP",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "claude-3-5-sonnet-20240620",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I assist you today? Is there anything specific you'd like to know or discuss?"},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": 16, "completion_tokens": 24, "total_tokens": 40,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}
            }
        })
    );
    assert_eq!(
        usage,
        Usage {
            input_tokens: 16,
            output_tokens: 24,
            ..Usage::default()
        }
    );
}

fn chunk(id: &str, model: &str, delta: Value, finish: Value) -> Value {
    json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn usage_chunk(id: &str, model: &str, input: u64, output: u64) -> Value {
    json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [],
           "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output,
                     "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}})
}

#[test]
fn anthropic_stream_translates() {
    let body = fixture("anthropic_messages_stream_basic.sse");
    let (id, model) = (
        "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK",
        "claude-3-opus-latest",
    );
    let (out, usage) = run_stream(ProviderKind::Anthropic, true, &[&body]);
    assert_eq!(
        events(&out),
        vec![
            chunk(
                id,
                model,
                json!({"role": "assistant", "content": ""}),
                Value::Null
            ),
            chunk(id, model, json!({"content": "Hello"}), Value::Null),
            chunk(id, model, json!({"content": " there"}), Value::Null),
            chunk(id, model, json!({"content": "!"}), Value::Null),
            chunk(id, model, json!({}), json!("stop")),
            usage_chunk(id, model, 11, 6),
            json!("[DONE]"),
        ]
    );
    assert_eq!(
        usage,
        Usage {
            input_tokens: 11,
            output_tokens: 6,
            ..Usage::default()
        }
    );
    let (out, _) = run_stream(ProviderKind::Anthropic, false, &[&body]);
    assert_eq!(events(&out).len(), 6, "no usage chunk unless asked");
}

#[test]
fn gemini_nonstream_translates() {
    let (answer, usage) = translate(
        ProviderKind::Gemini,
        &fixture("gemini_generate_nonstream.json"),
    );
    assert_eq!(answer["id"], "chatcmpl-test");
    assert_eq!(answer["model"], "gemini-2.0-flash");
    assert_eq!(
        answer["choices"],
        json!([{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
            "content": "Google's headquarters, also known as the Googleplex, is located in **Mountain View, California**.\n"}}])
    );
    assert_eq!(answer["usage"]["total_tokens"], 29);
    assert_eq!(
        usage,
        Usage {
            input_tokens: 7,
            output_tokens: 22,
            // The fixture's `promptTokensDetails`, text only.
            audio_input_reported: true,
            ..Usage::default()
        }
    );
}

#[test]
fn gemini_stream_translates() {
    let body = fixture("gemini_stream.sse");
    let (id, model) = ("chatcmpl-test", "gemini-2.0-flash");
    let (out, usage) = run_stream(ProviderKind::Gemini, true, &[&body]);
    assert_eq!(
        events(&out),
        vec![
            chunk(
                id,
                model,
                json!({"role": "assistant", "content": ""}),
                Value::Null
            ),
            chunk(id, model, json!({"content": "The"}), Value::Null),
            chunk(
                id,
                model,
                json!({"content": " capital of Wyoming"}),
                Value::Null
            ),
            chunk(
                id,
                model,
                json!({"content": " is **Cheyenne**.\n"}),
                Value::Null
            ),
            chunk(id, model, json!({}), json!("stop")),
            usage_chunk(id, model, 7, 10),
            json!("[DONE]"),
        ]
    );
    assert_eq!(
        usage,
        Usage {
            input_tokens: 7,
            output_tokens: 10,
            audio_input_reported: true,
            ..Usage::default()
        }
    );
}

/// Gemini's early events carry the prompt's count alone; a finishing event
/// without `usageMetadata` leaves the output unreported: estimated from the
/// text streamed, not taken as a final 0.
#[test]
fn gemini_usage_from_before_the_finish_is_not_final() {
    let body = concat!(
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Cheyenne is the capital of Wyoming.\"}],\"role\":\"model\"}}],",
        "\"usageMetadata\":{\"promptTokenCount\":7}}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}]}\r\n\r\n",
    );
    let (_, usage) = run_stream(ProviderKind::Gemini, false, &[body.as_bytes()]);
    assert_eq!(usage.input_tokens, 7);
    assert_eq!(usage.output_tokens, 9, "35 bytes of text / 4");
    assert!(usage.estimated);
}

/// Feeds the first `events_kept` SSE events of a fixture, as if cut there.
fn cut_after(
    kind: ProviderKind,
    body: &[u8],
    separator: &str,
    events_kept: usize,
) -> StreamTranslator {
    let text = std::str::from_utf8(body).unwrap();
    let kept: Vec<&str> = text.split(separator).take(events_kept).collect();
    assert_eq!(kept.len(), events_kept);
    let mut t = StreamTranslator::with_meta(kind, true, meta());
    let _ = t.push((kept.join(separator) + separator).as_bytes());
    t
}

#[test]
fn cut_streams_estimate_output_from_text() {
    // Anthropic: message_start, block start, ping, "Hello", " there".
    let t = cut_after(
        ProviderKind::Anthropic,
        &fixture("anthropic_messages_stream_basic.sse"),
        "\n\n",
        5,
    );
    // "Hello there" = 11 chars → ⌈11/4⌉ = 3 > the 1 reported at message_start.
    assert_eq!(
        t.usage_so_far(),
        Usage {
            input_tokens: 11,
            output_tokens: 3,
            estimated: true,
            ..Usage::default()
        }
    );

    // Gemini: two events, "The capital of Wyoming" = 22 chars → 6.
    let t = cut_after(
        ProviderKind::Gemini,
        &fixture("gemini_stream.sse"),
        "\r\n\r\n",
        2,
    );
    assert_eq!(
        t.usage_so_far(),
        Usage {
            input_tokens: 7,
            output_tokens: 6,
            estimated: true,
            audio_input_reported: true,
            ..Usage::default()
        }
    );

    // OpenAI: role chunk + "I'm" + " unable" = 10 chars → 3; no input known yet.
    let mut t = cut_after(
        ProviderKind::OpenAi,
        &fixture("openai_chat_stream.sse"),
        "\n\n",
        3,
    );
    assert_eq!(
        t.usage_so_far(),
        Usage {
            output_tokens: 3,
            estimated: true,
            ..Usage::default()
        }
    );
    assert!(!t.is_complete());
    let tail = events(&t.finish());
    assert_eq!(
        tail[0]["error"]["type"], "server_error",
        "an incomplete stream ends with an error event"
    );
    assert_eq!(tail[1], json!("[DONE]"));
}

#[test]
fn anthropic_mid_stream_error_becomes_openai_error_event() {
    let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let mut t = StreamTranslator::with_meta(ProviderKind::Anthropic, false, meta());
    let mut out = t.push(body).to_vec();
    out.extend_from_slice(&t.finish());
    let evs = events(&out);
    assert_eq!(
        evs[1],
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null}})
    );
    assert_eq!(evs.last(), Some(&json!("[DONE]")));
    assert!(t.upstream_failed());
    assert_eq!(
        t.usage_so_far(),
        Usage {
            input_tokens: 5,
            output_tokens: 1,
            estimated: true,
            ..Usage::default()
        }
    );
}

#[test]
fn anthropic_stream_tool_use_and_cache_usage() {
    let body = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_t\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":1000,\"cache_creation_input_tokens\":50,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let (out, usage) = run_stream(ProviderKind::Anthropic, false, &[body.as_bytes()]);
    let evs = events(&out);
    assert_eq!(
        evs[1]["choices"][0]["delta"]["tool_calls"],
        json!([{"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}])
    );
    let args: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"city\": \"Paris\"}");
    assert_eq!(
        evs[evs.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(
        usage,
        Usage {
            input_tokens: 1070,
            output_tokens: 42,
            cached_input_tokens: 1000,
            cache_creation_input_tokens: 50,
            ..Usage::default()
        }
    );
}

#[test]
fn anthropic_stream_tool_without_parameters_gets_an_empty_object() {
    // A tool that takes no input streams no JSON (or only empty pieces);
    // OpenAI clients parse `arguments`, so it must end up "{}", as in the
    // non-streamed answer. The second call's own JSON is left as streamed.
    let body = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_e\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_a\",\"name\":\"get_time\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_b\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":30}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let (out, _) = run_stream(ProviderKind::Anthropic, false, &[body.as_bytes()]);
    let evs = events(&out);
    let args = |call: u64| -> String {
        evs.iter()
            .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0].as_object())
            .filter(|c| c["index"] == call)
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect()
    };
    assert_eq!(args(0), "{}");
    assert_eq!(args(1), "{\"city\":\"Oslo\"}");
}

/// Anthropic SSE: each event as `event: <type>` and its JSON.
fn anthropic_sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

#[test]
fn anthropic_response_format_tool_comes_back_as_content() {
    // The forced `response_format` tool's input is the answer: content,
    // finish_reason "stop", no tool call, JSON and streamed alike; its key
    // order is kept. With nothing streamed it is "{}".
    let body = json!({"id": "msg_j", "model": "claude-sonnet-4-5", "stop_reason": "tool_use",
        "content": [{"type": "tool_use", "id": "toolu_j", "name": "tollgate_json_output",
            "input": {"reasoning": "short", "answer": "42"}}],
        "usage": {"input_tokens": 30, "output_tokens": 12}});
    let (answer, usage) = translate(ProviderKind::Anthropic, body.to_string().as_bytes());
    let message = &answer["choices"][0]["message"];
    assert_eq!(
        message["content"],
        "{\"reasoning\":\"short\",\"answer\":\"42\"}"
    );
    assert!(
        message.get("tool_calls").is_none_or(Value::is_null),
        "{message}"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!((usage.input_tokens, usage.output_tokens), (30, 12));

    // Beside a call to a client tool (parallel use is disabled, but) the
    // JSON is dropped: it would be an answer given before the tool ran. Nor
    // is a second format call ever glued on as `{…}{…}`.
    let body = json!({"id": "msg_k", "model": "claude-sonnet-4-5", "stop_reason": "tool_use",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "tollgate_json_output", "input": {"answer": "1"}},
            {"type": "tool_use", "id": "toolu_2", "name": "tollgate_json_output", "input": {"answer": "2"}},
            {"type": "tool_use", "id": "toolu_3", "name": "get_time", "input": {}}],
        "usage": {"input_tokens": 30, "output_tokens": 12}});
    let (answer, _) = translate(ProviderKind::Anthropic, body.to_string().as_bytes());
    let message = &answer["choices"][0]["message"];
    assert!(
        message["content"].as_str().is_none_or(str::is_empty),
        "{message}"
    );
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_time");
    assert_eq!(message["tool_calls"].as_array().unwrap().len(), 1);
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

    let body = json!({"id": "msg_l", "model": "claude-sonnet-4-5", "stop_reason": "tool_use",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "tollgate_json_output", "input": {"answer": "1"}},
            {"type": "tool_use", "id": "toolu_2", "name": "tollgate_json_output", "input": {"answer": "2"}}],
        "usage": {"input_tokens": 30, "output_tokens": 12}});
    let (answer, _) = translate(ProviderKind::Anthropic, body.to_string().as_bytes());
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "{\"answer\":\"1\"}"
    );

    // Streamed: each format call's pieces as given (block index, JSON).
    let stream = |calls: &[(u32, &[&str])]| {
        let mut sent = vec![json!({"type": "message_start", "message": {"id": "msg_s",
            "model": "claude-sonnet-4-5", "usage": {"input_tokens": 20, "output_tokens": 1}}})];
        for (index, pieces) in calls {
            sent.push(json!({"type": "content_block_start", "index": index, "content_block":
                {"type": "tool_use", "id": format!("toolu_{index}"), "name": "tollgate_json_output", "input": {}}}));
            sent.extend(pieces.iter().map(|piece| {
                json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece}})
            }));
            sent.push(json!({"type": "content_block_stop", "index": index}));
        }
        sent.push(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}));
        sent.push(json!({"type": "message_stop"}));
        let (out, usage) = run_stream(
            ProviderKind::Anthropic,
            false,
            &[anthropic_sse(&sent).as_bytes()],
        );
        let evs = events(&out);
        assert!(
            evs.iter()
                .all(|e| e["choices"][0]["delta"].get("tool_calls").is_none()),
            "no tool call reaches the client"
        );
        let finish: Vec<&Value> = evs
            .iter()
            .map(|e| &e["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, [&json!("stop")]);
        assert_eq!(usage.output_tokens, 9);
        streamed_text(&evs)
    };
    assert_eq!(
        stream(&[(0, &["{\"reasoning\": \"sh", "ort\", \"answer\": \"42\"}"])]),
        "{\"reasoning\": \"short\", \"answer\": \"42\"}"
    );
    assert_eq!(stream(&[(0, &[""])]), "{}");
    // A second format call is only counted, not shown.
    assert_eq!(
        stream(&[(0, &["{\"a\":1}"]), (1, &["{\"a\":2}"])]),
        "{\"a\":1}"
    );
}

#[test]
fn gemini_tool_calls_without_args_and_with_thought_signatures() {
    // `args` is optional in Gemini's FunctionCall: OpenAI clients get "{}",
    // not "null". Gemini 3's thought signature rides in the call's id, so a
    // client sending the assistant turn back returns it (tests/requests.rs).
    let body = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_time"}, "thoughtSignature": "c2lnLTE="},
            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
        ]}, "finishReason": "STOP"}],
        "responseId": "resp-2"
    });
    let (answer, _) = translate(ProviderKind::Gemini, body.to_string().as_bytes());
    assert_eq!(
        answer["choices"][0]["message"]["tool_calls"],
        json!([
            {"id": "call_resp-2_0__thought__c2lnLTE=", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            {"id": "call_resp-2_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
        ])
    );
    let event = format!("data: {}\n\n", body);
    let (out, _) = run_stream(ProviderKind::Gemini, false, &[event.as_bytes()]);
    let calls: Vec<Value> = events(&out)
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .cloned()
        })
        .map(Value::Object)
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["arguments"], "{}");
    assert!(calls[0]["id"]
        .as_str()
        .unwrap()
        .ends_with("__thought__c2lnLTE="));
    assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Oslo\"}");
}

#[test]
fn gemini_nonstream_thoughts_tool_calls_and_max_tokens() {
    let body = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "thinking…", "thought": true},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
        ]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 8, "thoughtsTokenCount": 30, "totalTokenCount": 138},
        "responseId": "resp-1"
    });
    let (answer, usage) = translate(ProviderKind::Gemini, body.to_string().as_bytes());
    assert_eq!(answer["id"], "resp-1");
    assert_eq!(answer["model"], "requested-model");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(answer["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(
        answer["choices"][0]["message"]["tool_calls"],
        json!([{"id": "call_resp-1_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    assert_eq!(
        usage,
        Usage {
            input_tokens: 100,
            output_tokens: 38,
            cached_input_tokens: 60,
            reasoning_tokens: 30,
            ..Usage::default()
        }
    );
    let length = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "MAX_TOKENS"}]});
    assert_eq!(
        translate(ProviderKind::Gemini, length.to_string().as_bytes()).0["choices"][0]
            ["finish_reason"],
        "length"
    );
    let safety = json!({"candidates": [{"finishReason": "SAFETY"}]});
    assert_eq!(
        translate(ProviderKind::Gemini, safety.to_string().as_bytes()).0["choices"][0]
            ["finish_reason"],
        "content_filter"
    );
}

#[test]
fn provider_errors_become_openai_errors_with_the_provider_status() {
    let anthropic =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let err = translate_response_with(
        ProviderKind::Anthropic,
        StatusCode::from_u16(529).unwrap(),
        anthropic,
        &meta(),
    )
    .unwrap_err();
    assert_eq!(err.status().as_u16(), 529);
    assert_eq!(
        serde_json::to_value(err.to_openai()).unwrap(),
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null}})
    );

    let gemini = br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
    let err = translate_error(ProviderKind::Gemini, StatusCode::TOO_MANY_REQUESTS, gemini);
    assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        serde_json::to_value(err.to_openai()).unwrap(),
        json!({"error": {"message": "Resource has been exhausted", "type": "invalid_request_error", "param": null, "code": "RESOURCE_EXHAUSTED"}})
    );

    let openai = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let err = translate_error(ProviderKind::OpenAi, StatusCode::UNAUTHORIZED, openai);
    assert_eq!(
        serde_json::to_vec(&err.to_openai()).unwrap(),
        openai.to_vec()
    );

    let err = translate_error(
        ProviderKind::Custom,
        StatusCode::BAD_GATEWAY,
        b"<html>bad gateway</html>",
    );
    assert_eq!(err.to_openai().error.kind, "server_error");
    assert_eq!(
        err.to_openai().error.message,
        "the provider answered with status 502"
    );
    // Other OpenAI-compatible servers' error shapes keep their message.
    for (body, message) in [
        (&br#"{"object":"error","message":"max_tokens is too large","type":"BadRequestError","code":400}"#[..], "max_tokens is too large"),
        (br#"{"error":"model not loaded"}"#, "model not loaded"),
        (br#"{"detail":"Not authenticated"}"#, "Not authenticated"),
        (br#"{"detail":[{"loc":["body","model"],"msg":"field required"}]}"#, r#"[{"loc":["body","model"],"msg":"field required"}]"#),
    ] {
        let err = translate_error(ProviderKind::Custom, StatusCode::BAD_REQUEST, body);
        assert_eq!(err.to_openai().error.message, message);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    let err = translate_response_with(
        ProviderKind::Anthropic,
        StatusCode::OK,
        b"not json",
        &meta(),
    )
    .unwrap_err();
    assert!(matches!(err, ProviderError::Malformed { .. }));
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
}
