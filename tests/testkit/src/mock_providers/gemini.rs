//! Gemini look-alike: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` (`?alt=sse` for SSE, else a JSON array).
//!
//! Checks the key (`x-goog-api-key` header or `?key=`; 403
//! `PERMISSION_DENIED`), a JSON body with non-empty `contents`, roles `user`
//! or `model`, non-empty `parts` (400 `INVALID_ARGUMENT`). SSE uses CRLF
//! framing (`data: …\r\n\r\n`) and no end marker; every event carries the
//! cumulative `usageMetadata`, the output counts only in the last one (with
//! `finishReason`), as in the recorded stream.

use super::{answer_id, json_response, sse_response, MockBehavior, RecordedRequest, Reply};
use axum::response::Response;
use serde_json::{json, Value};

pub(super) fn handle(request: &RecordedRequest, behavior: &MockBehavior) -> Response {
    let target = request
        .path
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.split_once(':'));
    let (model, method) = match target {
        Some((model, method @ ("generateContent" | "streamGenerateContent")))
            if request.method == "POST" && !model.is_empty() =>
        {
            (model.to_owned(), method)
        }
        _ => {
            return error(
                404,
                "NOT_FOUND",
                &format!("The requested URL {} was not found.", request.path),
            )
        }
    };
    let key = request
        .header("x-goog-api-key")
        .or(request.query_param("key"));
    if key.is_none_or(|k| k.trim().is_empty()) {
        return error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        );
    }
    if let Some(forced) = &behavior.error {
        let status = match forced.status {
            400 => "INVALID_ARGUMENT",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            _ => "INTERNAL",
        };
        return error(forced.status, status, &forced.message);
    }
    let Some(body @ Value::Object(_)) = request.json() else {
        return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    if let Err(message) = validate(&body).and_then(|()| check_thinking(&body, &model)) {
        return error(400, "INVALID_ARGUMENT", &message);
    }
    if model.starts_with("gemini-3") {
        if let Some(position) = unsigned_function_call(&body) {
            return error(400, "INVALID_ARGUMENT", &format!(
                "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly. Additional data, position {position}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
            ));
        }
    }
    let cap = body["generationConfig"]["maxOutputTokens"].as_u64();
    let reply = Reply::plan(
        behavior,
        &json!([body["systemInstruction"], body["contents"]]),
        cap,
    );
    match (method, request.query_param("alt")) {
        ("generateContent", _) => {
            let mut answer = answer(&reply, &model, &reply.text(), true);
            if behavior.omit_usage {
                answer.as_object_mut().map(|a| a.remove("usageMetadata"));
            }
            json_response(200, &answer)
        }
        (_, Some("sse")) => stream_reply(&reply, &model, behavior),
        _ => {
            let events: Vec<Value> = events(&reply, &model);
            json_response(200, &Value::Array(events))
        }
    }
}

/// Gemini 3 wants the first `functionCall` part of each model turn back with
/// the `thoughtSignature` it came with: the position of one without.
fn unsigned_function_call(body: &Value) -> Option<usize> {
    let contents = body["contents"].as_array()?;
    contents.iter().enumerate().find_map(|(i, content)| {
        let first_call = content["parts"]
            .as_array()?
            .iter()
            .find(|p| p.get("functionCall").is_some())?;
        (content["role"] == "model" && first_call.get("thoughtSignature").is_none()).then_some(i)
    })
}

/// `generationConfig.thinkingConfig` as Gemini checks it: a budget is an
/// integer, a level one of Gemini 3's, never both, a level only for Gemini
/// 3, and 2.5 Pro cannot stop thinking.
fn check_thinking(body: &Value, model: &str) -> Result<(), String> {
    let Some(config) = body["generationConfig"].get("thinkingConfig") else {
        return Ok(());
    };
    let at = "generation_config.thinking_config";
    let budget = config.get("thinkingBudget");
    let level = config.get("thinkingLevel");
    if budget.is_some() && level.is_some() {
        return Err(
            "You cannot use both thinking_level and the legacy thinking_budget parameter."
                .to_owned(),
        );
    }
    if let Some(budget) = budget {
        let budget = budget.as_i64().ok_or_else(|| {
            format!("Invalid value at '{at}.thinking_budget' (TYPE_INT32), {budget}")
        })?;
        if budget == 0 && model.starts_with("gemini-2.5-pro") {
            return Err("Budget 0 is invalid. This model only works in thinking mode.".to_owned());
        }
    }
    if let Some(level) = level {
        let known = level.as_str().is_some_and(|l| {
            ["minimal", "low", "medium", "high"].contains(&l.to_ascii_lowercase().as_str())
        });
        if !known {
            return Err(format!(
                "Invalid value at '{at}.thinking_level' (type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig.ThinkingLevel), {level}"
            ));
        }
        if !model.starts_with("gemini-3") {
            return Err("Thinking level is not supported for this model.".to_owned());
        }
    }
    Ok(())
}

fn validate(body: &Value) -> Result<(), String> {
    let contents = body["contents"]
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            "* GenerateContentRequest.contents: contents is not specified\n".to_owned()
        })?;
    for (i, content) in contents.iter().enumerate() {
        match content.get("role").and_then(Value::as_str) {
            None | Some("user" | "model") => {}
            Some(_) => return Err("Please use a valid role: user, model.".to_owned()),
        }
        if content["parts"].as_array().is_none_or(|p| p.is_empty()) {
            return Err(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            ));
        }
    }
    let tools = body["tools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, tool) in tools.iter().enumerate() {
        let declarations = tool["functionDeclarations"].as_array();
        for (j, declaration) in declarations.into_iter().flatten().enumerate() {
            let at = format!("tools[{i}].function_declarations[{j}]");
            if let Some(parameters) = declaration.get("parameters") {
                check_schema(parameters, &format!("{at}.parameters"))?;
            }
            // JSON Schema as it is; one of the two ways only.
            if let Some(schema) = declaration.get("parametersJsonSchema") {
                if declaration.get("parameters").is_some() {
                    return Err(format!(
                        "* GenerateContentRequest.{at}: parameters and parameters_json_schema are mutually exclusive\n"
                    ));
                }
                if !schema.is_object() {
                    return Err(format!("Invalid value at '{at}.parameters_json_schema'"));
                }
            }
        }
    }
    Ok(())
}

/// Gemini's `Schema` is an OpenAPI subset: JSON Schema keys it has no field
/// for are refused as unknown names (`$ref`, `$defs`, `additionalProperties`,
/// …), a list of types is not a type, and an object needs properties.
fn check_schema(schema: &Value, at: &str) -> Result<(), String> {
    // (Gemini's `Schema` fields, in the order its reference lists them.)
    const FIELDS: &str = "type format title description nullable enum maxItems minItems \
        properties required minProperties maxProperties minLength maxLength pattern example \
        anyOf propertyOrdering default items minimum maximum";
    let Some(map) = schema.as_object() else {
        return Err(format!("Invalid value at '{at}': not a schema"));
    };
    if let Some(unknown) = map
        .keys()
        .find(|k| !FIELDS.split_whitespace().any(|f| f == k.as_str()))
    {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\" at '{at}': Cannot find field."
        ));
    }
    if map.get("type").is_some_and(|t| !t.is_string()) {
        return Err(format!("Invalid value at '{at}.type': not a type name"));
    }
    if map
        .get("type")
        .is_some_and(|t| t == "OBJECT" || t == "object")
        && map
            .get("properties")
            .is_none_or(|p| p.as_object().is_none_or(|p| p.is_empty()))
    {
        return Err(format!(
            "* GenerateContentRequest.{at}.properties: should be non-empty for OBJECT type\n"
        ));
    }
    for (name, sub) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        check_schema(sub, &format!("{at}.properties[{name}]"))?;
    }
    if let Some(items) = map.get("items") {
        check_schema(items, &format!("{at}.items"))?;
    }
    for (k, sub) in map
        .get("anyOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        check_schema(sub, &format!("{at}.any_of[{k}]"))?;
    }
    Ok(())
}

fn error(code: u16, status: &str, message: &str) -> Response {
    json_response(
        code,
        &json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

fn usage(reply: &Reply, last: bool) -> Value {
    let mut details = vec![json!({"modality": "TEXT",
        "tokenCount": reply.input_tokens - reply.audio_input_tokens})];
    if reply.audio_input_tokens > 0 {
        details.push(json!({"modality": "AUDIO", "tokenCount": reply.audio_input_tokens}));
    }
    let mut usage = json!({
        "promptTokenCount": reply.input_tokens,
        "totalTokenCount": reply.input_tokens,
        "promptTokensDetails": details
    });
    if reply.cached_input_tokens > 0 {
        usage["cachedContentTokenCount"] = json!(reply.cached_input_tokens);
    }
    if last {
        let total = reply
            .input_tokens
            .saturating_add(reply.output_tokens)
            .saturating_add(reply.reasoning_tokens);
        usage["candidatesTokenCount"] = json!(reply.output_tokens);
        usage["totalTokenCount"] = json!(total);
        usage["candidatesTokensDetails"] =
            json!([{"modality": "TEXT", "tokenCount": reply.output_tokens}]);
        if reply.reasoning_tokens > 0 {
            usage["thoughtsTokenCount"] = json!(reply.reasoning_tokens);
        }
    }
    usage
}

/// One `GenerateContentResponse`; `last` adds `finishReason` and output counts.
fn answer(reply: &Reply, model: &str, text: &str, last: bool) -> Value {
    let mut candidate = json!({"content": {"parts": [{"text": text}], "role": "model"}});
    if last {
        candidate["finishReason"] = json!(if reply.truncated {
            "MAX_TOKENS"
        } else {
            "STOP"
        });
        candidate["index"] = json!(0);
        if let Some(call) = &reply.tool_call {
            // Gemini leaves `args` out for a call without arguments.
            let mut function_call = json!({"name": call.name});
            if call.has_arguments() {
                function_call["args"] = call.arguments.clone();
            }
            let mut part = json!({"functionCall": function_call});
            if let Some(signature) = &call.thought_signature {
                part["thoughtSignature"] = json!(signature);
            }
            if let Some(parts) = candidate["content"]["parts"].as_array_mut() {
                parts.retain(|p| p["text"] != "");
                parts.push(part);
            }
        }
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage(reply, last),
        "modelVersion": model,
        "responseId": format!("mock{}", answer_id())
    })
}

fn events(reply: &Reply, model: &str) -> Vec<Value> {
    let count = reply.pieces.len();
    if count == 0 {
        return vec![answer(reply, model, "", true)];
    }
    // Like Gemini, one responseId for every event of a stream.
    let id = json!(format!("mock{}", answer_id()));
    reply
        .pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut event = answer(reply, model, piece, i + 1 == count);
            event["responseId"] = id.clone();
            event
        })
        .collect()
}

fn stream_reply(reply: &Reply, model: &str, behavior: &MockBehavior) -> Response {
    let writes = events(reply, model)
        .into_iter()
        .map(|event| format!("data: {event}\r\n\r\n"))
        .collect();
    sse_response(writes, behavior.chunk_delay, behavior.cut_after_writes)
}
