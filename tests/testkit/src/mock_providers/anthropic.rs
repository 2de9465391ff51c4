//! Anthropic Messages look-alike: `POST /v1/messages`.
//!
//! Checks `x-api-key` (401 `authentication_error`) and `anthropic-version`
//! headers, then `model`, `max_tokens`, `messages` (roles `user`/`assistant`
//! only, starting with `user`, alternating), content present (400
//! `invalid_request_error`), tools' `input_schema` of type `object`, and a
//! forced `tool_choice` (`{type: tool}`) naming a declared tool, which is
//! then answered with a call to that tool alone. Streams send `message_start` (input usage),
//! `content_block_start`, a `ping`, one `text_delta` per piece,
//! `content_block_stop`, `message_delta` (stop reason, cumulative output
//! tokens) and `message_stop`, each as `event: …\ndata: …\n\n`.

use super::{
    answer_id, halves, json_response, sse_response, MockBehavior, MockToolCall, RecordedRequest,
    Reply,
};
use axum::response::Response;
use serde_json::{json, Value};

pub(super) fn handle(request: &RecordedRequest, behavior: &MockBehavior) -> Response {
    if request.method != "POST" || request.path != "/v1/messages" {
        return error(404, "not_found_error", "Not found");
    }
    if request
        .header("x-api-key")
        .is_none_or(|k| k.trim().is_empty())
    {
        return error(401, "authentication_error", "x-api-key header is required");
    }
    if request.header("anthropic-version").is_none() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    if let Some(forced) = &behavior.error {
        let kind = match forced.status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        return error(forced.status, kind, &forced.message);
    }
    let Some(body @ Value::Object(_)) = request.json() else {
        return error(
            400,
            "invalid_request_error",
            "There was an error parsing the body of your request.",
        );
    };
    if let Err(message) = validate(&body) {
        return error(400, "invalid_request_error", &message);
    }
    let mut reply = Reply::plan(
        behavior,
        &json!([body["system"], body["messages"]]),
        body["max_tokens"].as_u64(),
    );
    // A forced tool is answered with a call to it alone (its input from the
    // behaviour's tool call, else `{}`), as Claude does.
    if let Some(name) = forced_tool(&body) {
        let arguments = behavior
            .tool_call
            .as_ref()
            .map_or_else(|| json!({}), |call| call.arguments.clone());
        // The call is the whole answer: its size, not the reply text's, is
        // the output (about four characters a token), and it is complete.
        reply.pieces.clear();
        reply.truncated = false;
        reply.output_tokens = behavior.output_tokens.unwrap_or_else(|| {
            u64::try_from(arguments.to_string().len().div_ceil(4)).unwrap_or(u64::MAX)
        });
        reply.tool_call = Some(MockToolCall {
            name: name.to_owned(),
            arguments,
            thought_signature: None,
        });
    }
    let model = body["model"].as_str().unwrap_or_default();
    if body["stream"].as_bool().unwrap_or(false) {
        stream_reply(&reply, model, behavior)
    } else {
        json_response(200, &message(&reply, model))
    }
}

fn validate(body: &Value) -> Result<(), String> {
    if !body["model"].is_string() {
        return Err("model: Field required".to_owned());
    }
    if !body["max_tokens"].is_u64() {
        return Err("max_tokens: Field required".to_owned());
    }
    let messages = body["messages"]
        .as_array()
        .ok_or_else(|| "messages: Field required".to_owned())?;
    let mut previous: Option<&str> = None;
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        if i == 0 && role != "user" {
            return Err("messages: first message must use the \"user\" role".to_owned());
        }
        if previous == Some(role) {
            return Err(format!(
                "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"{role}\" roles in a row"
            ));
        }
        let content_ok = match &message["content"] {
            Value::String(s) => !s.is_empty(),
            Value::Array(blocks) => !blocks.is_empty(),
            _ => false,
        };
        let blank_text = message["content"].as_array().is_some_and(|blocks| {
            blocks.iter().any(|b| {
                b["type"] == "text" && b["text"].as_str().is_none_or(|t| t.trim().is_empty())
            })
        });
        if blank_text {
            return Err(
                "messages: text content blocks must contain non-whitespace text".to_owned(),
            );
        }
        if !content_ok {
            return Err(format!(
                "messages.{i}: all messages must have non-empty content"
            ));
        }
        previous = Some(role);
    }
    if messages.is_empty() {
        return Err("messages: at least one message is required".to_owned());
    }
    let stops = body["stop_sequences"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if stops
        .iter()
        .any(|s| s.as_str().is_none_or(|s| s.trim().is_empty()))
    {
        return Err("stop_sequences: each stop sequence must contain non-whitespace".to_owned());
    }
    let tools = body["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, tool) in tools.iter().enumerate() {
        if tool["input_schema"]["type"] != "object" {
            return Err(format!(
                "tools.{i}.custom.input_schema.type: Input should be 'object'"
            ));
        }
    }
    if let Some(name) = forced_tool(body) {
        if !tools.iter().any(|t| t["name"] == name) {
            return Err(format!("tool_choice: Tool '{name}' not found in tools"));
        }
    }
    Ok(())
}

/// The tool `tool_choice` forces, if it forces one.
fn forced_tool(body: &Value) -> Option<&str> {
    let choice = &body["tool_choice"];
    (choice["type"] == "tool").then(|| choice["name"].as_str().unwrap_or_default())
}

/// An error in Anthropic's shape; rate-limit (429) and overload (529)
/// answers carry `retry-after` in seconds, as Anthropic's do.
fn error(status: u16, kind: &str, message: &str) -> Response {
    let mut response = json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    );
    if matches!(status, 429 | 529) {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("7"),
        );
    }
    response
}

fn stop_reason(reply: &Reply) -> &'static str {
    if reply.truncated {
        "max_tokens"
    } else if reply.tool_call.is_some() {
        "tool_use"
    } else {
        "end_turn"
    }
}

const TOOL_USE_ID: &str = "toolu_mock1";

/// Anthropic's `input_tokens` excludes cache reads and writes; thinking is
/// inside output.
fn usage(reply: &Reply) -> Value {
    let written = reply.cache_write_1h_input_tokens;
    json!({
        "input_tokens": reply.input_tokens
            .saturating_sub(reply.cached_input_tokens)
            .saturating_sub(written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": reply.cached_input_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": written},
        "output_tokens": reply.output_tokens.saturating_add(reply.reasoning_tokens),
    })
}

fn message(reply: &Reply, model: &str) -> Value {
    let mut usage = usage(reply);
    usage["service_tier"] = json!("standard");
    json!({
        "id": format!("msg_mock{}", answer_id()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content(reply),
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
        "usage": usage
    })
}

fn content(reply: &Reply) -> Value {
    let mut blocks = vec![json!({"type": "text", "text": reply.text()})];
    if let Some(call) = &reply.tool_call {
        if reply.text().is_empty() {
            blocks.clear();
        }
        blocks.push(json!({"type": "tool_use", "id": TOOL_USE_ID, "name": call.name, "input": call.arguments}));
    }
    Value::Array(blocks)
}

fn stream_reply(reply: &Reply, model: &str, behavior: &MockBehavior) -> Response {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut start_usage = usage(reply);
    start_usage["output_tokens"] = json!(1);
    let mut writes = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": format!("msg_mock{}", answer_id()), "type": "message", "role": "assistant",
            "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
            "usage": start_usage}}),
    )];
    // A tool call alone (no text) is the first block.
    let text_block = !reply.pieces.is_empty() || reply.tool_call.is_none();
    if text_block {
        // Block start and ping share one write, as on the wire.
        writes.push(
            event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
                + &event("ping", json!({"type": "ping"})),
        );
        writes.extend(reply.pieces.iter().map(|p| {
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
            )
        }));
        writes.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    if let Some(call) = &reply.tool_call {
        let index = u32::from(text_block);
        writes.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block":
                {"type": "tool_use", "id": TOOL_USE_ID, "name": call.name, "input": {}}}),
        ));
        // A tool without parameters gets one empty piece, as from Anthropic.
        let json = if call.has_arguments() {
            call.arguments.to_string()
        } else {
            String::new()
        };
        let (a, b) = halves(&json);
        let pieces: Vec<&str> = if json.is_empty() {
            vec![""]
        } else {
            vec![a, b]
        };
        for piece in pieces {
            writes.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        writes.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    writes.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
               "usage": {"output_tokens": reply.output_tokens.saturating_add(reply.reasoning_tokens)}}),
    ));
    writes.push(event("message_stop", json!({"type": "message_stop"})));
    sse_response(writes, behavior.chunk_delay, behavior.cut_after_writes)
}
