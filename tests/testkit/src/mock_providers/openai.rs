//! OpenAI Chat Completions look-alike: `POST /v1/chat/completions`.
//!
//! Checks `Authorization: Bearer …` (401 `invalid_api_key`), a JSON body,
//! `model`, a non-empty `messages` array with known roles, and that
//! `stream_options` only comes with `stream: true` (400s). Streams send a role
//! chunk, one chunk per piece, a finish chunk, and, only when
//! `stream_options.include_usage` is true, a usage chunk with `choices: []`
//! (other chunks then carry `"usage": null`), then `data: [DONE]`.

use super::{
    answer_id, halves, json_response, now_unix_s, sse_response, MockBehavior, RecordedRequest,
    Reply,
};
use axum::response::Response;
use serde_json::{json, Value};

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// How `usage` counts reasoning tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Convention {
    /// Inside `completion_tokens` (`completion_tokens_details` splits them out).
    OpenAi,
    /// Outside `completion_tokens`, inside `total_tokens` (xAI's documented usage).
    Xai,
}

pub(super) fn handle(
    request: &RecordedRequest,
    behavior: &MockBehavior,
    convention: Convention,
) -> Response {
    if request.method != "POST" || request.path != "/v1/chat/completions" {
        let message = format!("Invalid URL ({} {})", request.method, request.path);
        return error(404, &message, "invalid_request_error", None, None);
    }
    let authorised = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| !key.trim().is_empty());
    if !authorised {
        return error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        );
    }
    if let Some(forced) = &behavior.error {
        let kind = match forced.status {
            429 => "requests",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        return error(forced.status, &forced.message, kind, None, None);
    }
    let body = match request.json() {
        Some(body @ Value::Object(_)) => body,
        _ => {
            return error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
                "invalid_request_error",
                None,
                None,
            )
        }
    };
    if let Some(refusal) = refusal(&body) {
        return refusal;
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let cap = body["max_completion_tokens"]
        .as_u64()
        .or(body["max_tokens"].as_u64());
    let reply = Reply::plan(behavior, &body["messages"], cap);
    let model = body["model"].as_str().unwrap_or_default();
    let tier = service_tier(&body, convention);
    if stream {
        stream_reply(&reply, model, include_usage, behavior, convention, tier)
    } else {
        let mut answer = completion(&reply, model, convention);
        if let Some(tier) = tier {
            answer["service_tier"] = json!(tier);
        }
        if behavior.omit_usage {
            answer.as_object_mut().map(|a| a.remove("usage"));
        }
        json_response(200, &answer)
    }
}

/// The 400 the real API would send for this body, if any.
fn refusal(body: &Value) -> Option<Response> {
    if body["model"].as_str().is_none_or(|m| m.is_empty()) {
        return Some(error(
            400,
            "you must provide a model parameter",
            "invalid_request_error",
            None,
            None,
        ));
    }
    let Some(messages) = body.get("messages") else {
        return Some(error(
            400,
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            Some("messages"),
            Some("missing_required_parameter"),
        ));
    };
    let Some(messages) = messages.as_array().filter(|m| !m.is_empty()) else {
        return Some(error(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "invalid_request_error",
            Some("messages"),
            Some("empty_array"),
        ));
    };
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if !ROLES.contains(&role) {
            let param = format!("messages[{i}].role");
            let text = format!("Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.");
            return Some(error(
                400,
                &text,
                "invalid_request_error",
                Some(&param),
                Some("invalid_value"),
            ));
        }
    }
    if body.get("stream_options").is_some_and(|o| !o.is_null())
        && body["stream"].as_bool() != Some(true)
    {
        return Some(error(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "invalid_request_error",
            Some("stream_options"),
            Some("invalid_value"),
        ));
    }
    None
}

fn error(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn finish_reason(reply: &Reply) -> &'static str {
    if reply.truncated {
        "length"
    } else if reply.tool_call.is_some() {
        "tool_calls"
    } else {
        "stop"
    }
}

const TOOL_CALL_ID: &str = "call_mock1";

fn usage(reply: &Reply, convention: Convention) -> Value {
    let all_output = reply.output_tokens.saturating_add(reply.reasoning_tokens);
    let completion = match convention {
        Convention::OpenAi => all_output,
        Convention::Xai => reply.output_tokens,
    };
    json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": completion,
        "total_tokens": reply.input_tokens.saturating_add(all_output),
        "prompt_tokens_details": {"cached_tokens": reply.cached_input_tokens, "audio_tokens": reply.audio_input_tokens},
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
        }
    })
}

/// The processing tier OpenAI reports serving the call at, on the answer
/// and on every chunk: the one asked for (`priority`, `flex`), else
/// `default`. xAI's answers have no such field.
fn service_tier(body: &Value, convention: Convention) -> Option<&'static str> {
    match (convention, body["service_tier"].as_str()) {
        (Convention::Xai, _) => None,
        (Convention::OpenAi, Some("priority")) => Some("priority"),
        (Convention::OpenAi, Some("flex")) => Some("flex"),
        (Convention::OpenAi, _) => Some("default"),
    }
}

fn completion(reply: &Reply, model: &str, convention: Convention) -> Value {
    json!({
        "id": format!("chatcmpl-mock{}", answer_id()),
        "object": "chat.completion",
        "created": now_unix_s(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message(reply),
            "logprobs": null,
            "finish_reason": finish_reason(reply)
        }],
        "usage": usage(reply, convention),
        "system_fingerprint": "fp_mock"
    })
}

fn message(reply: &Reply) -> Value {
    let text = reply.text();
    let mut message =
        json!({"role": "assistant", "content": text, "refusal": null, "annotations": []});
    if let Some(call) = &reply.tool_call {
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = json!([{"id": TOOL_CALL_ID, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments.to_string()}}]);
    }
    message
}

fn stream_reply(
    reply: &Reply,
    model: &str,
    include_usage: bool,
    behavior: &MockBehavior,
    convention: Convention,
    tier: Option<&str>,
) -> Response {
    let id = format!("chatcmpl-mock{}", answer_id());
    let created = now_unix_s();
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock", "choices": choices
        });
        if let Some(tier) = tier {
            c["service_tier"] = json!(tier);
        }
        if include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        format!("data: {c}\n\n")
    };
    let delta = |delta: Value, finish: Value| {
        chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        )
    };
    let mut writes = vec![delta(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    writes.extend(
        reply
            .pieces
            .iter()
            .map(|p| delta(json!({"content": p}), Value::Null)),
    );
    if let Some(call) = &reply.tool_call {
        // The call's id and name first, then its arguments in two pieces.
        writes.push(delta(
            json!({"tool_calls": [{"index": 0, "id": TOOL_CALL_ID, "type": "function",
                "function": {"name": call.name, "arguments": ""}}]}),
            Value::Null,
        ));
        let arguments = call.arguments.to_string();
        let (a, b) = halves(&arguments);
        for piece in [a, b] {
            writes.push(delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    // The end arrives in one write, as real servers often coalesce it.
    let mut end = delta(json!({}), json!(finish_reason(reply)));
    if include_usage {
        end.push_str(&chunk(json!([]), Some(usage(reply, convention))));
    }
    end.push_str("data: [DONE]\n\n");
    writes.push(end);
    sse_response(writes, behavior.chunk_delay, behavior.cut_after_writes)
}
