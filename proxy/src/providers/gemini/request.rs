//! OpenAI request → Gemini `generateContent` request body.
//!
//! - `system`/`developer` messages → `systemInstruction` (one text part
//!   each; empty ones, which Gemini refuses, left out, and the field with
//!   them when none is left).
//! - `assistant` → role `model`, its `tool_calls` → `functionCall` parts.
//! - `tool` → a user turn with a `functionResponse` part, named after the
//!   nearest earlier assistant call with that id; a tool answer that is a
//!   JSON object is sent as is, anything else as `{"result": text}`.
//! - Consecutive turns of the same role are merged.
//! - `max_tokens` → `generationConfig.maxOutputTokens`, `stop` →
//!   `stopSequences`, `temperature`, `top_p` → `topP`; `tools` →
//!   `functionDeclarations` (in Gemini's schema subset: [`super::schema`]);
//!   `tool_choice` → `toolConfig.functionCallingConfig`.
//! - `response_format` → `responseMimeType` (+ `responseJsonSchema` for
//!   `json_schema`).
//! - `reasoning_effort` → `thinkingConfig`, as Google's own OpenAI-compatible
//!   endpoint reads it ([`thinking_config`]).
//! - `image_url` data: URLs and `input_audio` (WAV, MP3) → `inlineData`.
//! - Remote image URLs, `n > 1` and a conversation of system messages only
//!   (no `contents`, which Gemini needs) are refused; other OpenAI fields
//!   dropped.

use super::super::openai::{
    ChatMessage, ChatRequest, MessageContent, Role, ToolChoice, ToolChoiceMode,
};
use super::super::upstream::{
    self, function_call, function_tool, parse_data_url, tool_arguments, unsupported_tool_choice,
    PrepareError, ResponseFormat,
};
use super::schema::{self, Parameters};
use super::{split_tool_call_id, Blob, Content, FunctionCallPart, FunctionResponsePart, Part};
use serde::Serialize;
use serde_json::{json, Value};

const PROVIDER: &str = "Gemini";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest {
    contents: Vec<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<ToolDeclarations>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolDeclarations {
    function_declarations: Vec<FunctionDeclaration>,
}

#[derive(Serialize)]
struct FunctionDeclaration {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(
        rename = "parametersJsonSchema",
        skip_serializing_if = "Option::is_none"
    )]
    parameters_json_schema: Option<Value>,
}

/// The JSON body for `generateContent`/`streamGenerateContent`.
pub(crate) fn build_body(
    request: &ChatRequest,
    model: &str,
    max_tokens: Option<u64>,
) -> Result<Vec<u8>, PrepareError> {
    if request.n.unwrap_or(1) > 1 {
        return Err(PrepareError::Unsupported {
            provider: PROVIDER,
            field: "n".to_owned(),
            reason: "only one choice can be generated".to_owned(),
        });
    }
    let mut system = Vec::new();
    let mut contents: Vec<Content> = Vec::new();
    for (i, message) in request.messages.iter().enumerate() {
        let (role, parts) = match message.role {
            Role::System | Role::Developer => {
                // Gemini refuses a part with empty text (400); one of only
                // whitespace instructs nothing either.
                let text = message.text_content();
                if !text.trim().is_empty() {
                    system.push(text_part(text));
                }
                continue;
            }
            Role::User => ("user", content_parts(message, i)?),
            Role::Assistant => ("model", assistant_parts(message, i)?),
            Role::Tool => ("user", vec![tool_response(request, message, i)?]),
        };
        push_content(&mut contents, role, parts);
    }
    if contents.is_empty() {
        return Err(upstream::only_system(PROVIDER));
    }
    let (response_mime_type, response_json_schema) = response_format(request)?;
    let config = GenerationConfig {
        max_output_tokens: max_tokens,
        stop_sequences: request.stop.as_ref().map(|s| s.sequences()),
        temperature: request.temperature,
        top_p: request.top_p,
        response_mime_type,
        response_json_schema,
        thinking_config: thinking_config(request, model)?,
    };
    let has_config = config.max_output_tokens.is_some()
        || config.stop_sequences.is_some()
        || config.temperature.is_some()
        || config.top_p.is_some()
        || config.response_mime_type.is_some()
        || config.thinking_config.is_some();
    let body = GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(Content {
            role: None,
            parts: system,
        }),
        generation_config: has_config.then_some(config),
        tools: request
            .tools
            .as_ref()
            .map(|tools| {
                let function_declarations = tools
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let f = function_tool(t, i, PROVIDER)?;
                        let parameters = match &f.parameters {
                            Some(p) => schema::parameters(p).map_err(|reason| {
                                PrepareError::Unsupported {
                                    provider: PROVIDER,
                                    field: format!("tools[{i}].function.parameters"),
                                    reason,
                                }
                            })?,
                            None => None,
                        };
                        let (parameters, parameters_json_schema) = match parameters {
                            Some(Parameters::Subset(p)) => (Some(p), None),
                            Some(Parameters::JsonSchema(p)) => (None, Some(p)),
                            None => (None, None),
                        };
                        Ok(FunctionDeclaration {
                            name: f.name.clone(),
                            description: f.description.clone(),
                            parameters,
                            parameters_json_schema,
                        })
                    })
                    .collect::<Result<_, PrepareError>>()?;
                Ok::<_, PrepareError>(vec![ToolDeclarations {
                    function_declarations,
                }])
            })
            .transpose()?,
        tool_config: request.tool_choice.as_ref().map(tool_config).transpose()?,
    };
    Ok(serde_json::to_vec(&body)?)
}

/// `reasoning_effort`'s values, as OpenAI and Google's OpenAI-compatible
/// endpoint take them.
const EFFORTS: &str = "none, minimal, low, medium or high";

/// OpenAI's `reasoning_effort` as Gemini's `thinkingConfig`, the way
/// Google's OpenAI-compatible endpoint reads it. Gemini 3 and later think
/// in levels: `minimal`, `low`, `medium` and `high` as they are, and
/// `none`, which they cannot do, as `minimal`, their least; Gemini 3 Pro,
/// which has only `low` and `high`, `low` up to `low` and `high` above. Gemini 2.5 in a budget of tokens: `none` 0 (no
/// thinking; 2.5 Pro refuses it), `minimal` and `low` 1,024, `medium`
/// 8,192, `high` 24,576. Earlier models do not think: nothing to set.
fn thinking_config(request: &ChatRequest, model: &str) -> Result<Option<Value>, PrepareError> {
    let effort = match request.extra.get("reasoning_effort") {
        None | Some(Value::Null) => return Ok(None),
        Some(effort) => effort,
    };
    let invalid = || PrepareError::InvalidField {
        field: "reasoning_effort".to_owned(),
        reason: format!("expected one of {EFFORTS}, got {effort}"),
    };
    let effort = effort.as_str().ok_or_else(invalid)?;
    let budget = match effort {
        "none" => 0,
        "minimal" | "low" => 1024,
        "medium" => 8192,
        "high" => 24_576,
        _ => return Err(invalid()),
    };
    Ok(match version(model) {
        // Gemini 3 Pro thinks at two levels only, as Google's endpoint
        // maps them.
        Some(v) if v >= (3, 0) && model.contains("-pro") => {
            let level = match effort {
                "none" | "minimal" | "low" => "low",
                _ => "high",
            };
            Some(json!({ "thinkingLevel": level }))
        }
        Some(v) if v >= (3, 0) => {
            let level = if effort == "none" { "minimal" } else { effort };
            Some(json!({ "thinkingLevel": level }))
        }
        Some(v) if v < (2, 5) => None,
        // 2.5, and names without a version (`gemini-flash-latest`), which
        // take a budget whatever they point at (Gemini 3 accepts one too).
        _ => Some(json!({ "thinkingBudget": budget })),
    })
}

/// Whether a call to Gemini `model` with `reasoning_effort` `effort` is
/// answered without thinking ([`thinking_config`]): `none` to a model
/// known to be before 3 (an alias may point at Gemini 3, which cannot stop
/// thinking), or no effort to 2.5 Flash-Lite, which thinks only when asked.
pub(crate) fn thinking_off(model: &str, effort: Option<&str>) -> bool {
    let before_3 = version(model).is_some_and(|v| v < (3, 0));
    match effort {
        Some(effort) => effort == "none" && before_3,
        None => before_3 && model.contains("flash-lite"),
    }
}

/// A Gemini model's version (`gemini-2.5-flash`: 2.5, `gemini-3-pro-preview`:
/// 3.0), if its name starts with one.
fn version(model: &str) -> Option<(u32, u32)> {
    let rest = model.strip_prefix("gemini-")?;
    let number = rest.split('-').next()?;
    let (major, minor) = number.split_once('.').unwrap_or((number, "0"));
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// OpenAI's `response_format` as Gemini's `responseMimeType` and
/// `responseJsonSchema`: `json_object` asks for JSON, `json_schema` for JSON
/// following the schema (sent as JSON Schema, unchanged), `text` for nothing.
fn response_format(
    request: &ChatRequest,
) -> Result<(Option<&'static str>, Option<Value>), PrepareError> {
    Ok(match upstream::response_format(request, PROVIDER)? {
        ResponseFormat::Text => (None, None),
        ResponseFormat::JsonObject => (Some("application/json"), None),
        ResponseFormat::JsonSchema { schema, .. } => {
            (Some("application/json"), Some(schema.clone()))
        }
    })
}

fn push_content(contents: &mut Vec<Content>, role: &str, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
        _ => contents.push(Content {
            role: Some(role.to_owned()),
            parts,
        }),
    }
}

fn text_part(text: String) -> Part {
    Part {
        text: Some(text),
        ..Part::default()
    }
}

fn content_parts(message: &ChatMessage, i: usize) -> Result<Vec<Part>, PrepareError> {
    let parts = match &message.content {
        None => return Ok(Vec::new()),
        Some(MessageContent::Text(text)) if text.is_empty() => return Ok(Vec::new()),
        Some(MessageContent::Text(text)) => return Ok(vec![text_part(text.clone())]),
        Some(MessageContent::Parts(parts)) => parts,
    };
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let unsupported = |reason: &str| PrepareError::Unsupported {
            provider: PROVIDER,
            field: format!("messages[{i}].content[{j}]"),
            reason: reason.to_owned(),
        };
        match (part.kind.as_str(), &part.text, &part.image_url) {
            ("text", Some(text), _) if text.is_empty() => {}
            ("text", Some(text), _) => out.push(text_part(text.clone())),
            ("image_url", _, Some(image)) => {
                let data = parse_data_url(&image.url)
                    .ok_or_else(|| unsupported("images must be sent as base64 data: URLs"))?;
                out.push(Part {
                    inline_data: Some(Blob {
                        mime_type: data.media_type.to_owned(),
                        data: data.data.to_owned(),
                    }),
                    ..Part::default()
                });
            }
            ("input_audio", _, _) => {
                let audio = part.extra.get("input_audio");
                let field = |name| {
                    audio
                        .and_then(|a| a.get(name))
                        .and_then(serde_json::Value::as_str)
                };
                let mime_type = match field("format").map(str::to_ascii_lowercase).as_deref() {
                    Some("wav") => "audio/wav",
                    Some("mp3") => "audio/mp3",
                    _ => return Err(unsupported("input_audio.format must be 'wav' or 'mp3'")),
                };
                let data = field("data")
                    .filter(|d| !d.trim().is_empty())
                    .ok_or_else(|| unsupported("input_audio.data must be base64 audio"))?;
                out.push(Part {
                    inline_data: Some(Blob {
                        mime_type: mime_type.to_owned(),
                        // Base64 wrapped in lines, which OpenAI reads, is one line for Gemini.
                        data: data.split_ascii_whitespace().collect(),
                    }),
                    ..Part::default()
                });
            }
            (kind, _, _) => {
                return Err(unsupported(&format!(
                    "content parts of type '{kind}' cannot be translated"
                )))
            }
        }
    }
    Ok(out)
}

fn assistant_parts(message: &ChatMessage, i: usize) -> Result<Vec<Part>, PrepareError> {
    let mut parts = content_parts(message, i)?;
    for (j, call) in message.tool_calls.iter().flatten().enumerate() {
        let function = function_call(call, (i, j), PROVIDER)?;
        let args = tool_arguments(&function.arguments, || {
            format!("messages[{i}].tool_calls[{j}].function.arguments")
        })?;
        let (_, signature) = split_tool_call_id(&call.id);
        parts.push(Part {
            function_call: Some(FunctionCallPart {
                id: None,
                name: function.name.clone(),
                args,
            }),
            thought_signature: signature.map(str::to_owned),
            ..Part::default()
        });
    }
    Ok(parts)
}

fn tool_response(
    request: &ChatRequest,
    message: &ChatMessage,
    i: usize,
) -> Result<Part, PrepareError> {
    let id = message.tool_call_id.as_deref().unwrap_or_default();
    let name = request.messages[..i]
        .iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter().flatten())
        .find(|call| call.id == id)
        .and_then(|call| call.function.as_ref())
        .map(|function| function.name.clone())
        .ok_or_else(|| PrepareError::InvalidField {
            field: format!("messages[{i}].tool_call_id"),
            reason: "no earlier assistant tool call has this id".to_owned(),
        })?;
    let text = message.text_content();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => json!({ "result": text }),
    };
    Ok(Part {
        function_response: Some(FunctionResponsePart { name, response }),
        ..Part::default()
    })
}

fn tool_config(choice: &ToolChoice) -> Result<Value, PrepareError> {
    let config = match choice {
        ToolChoice::Mode(ToolChoiceMode::Auto) => json!({"mode": "AUTO"}),
        ToolChoice::Mode(ToolChoiceMode::None) => json!({"mode": "NONE"}),
        ToolChoice::Mode(ToolChoiceMode::Required) => json!({"mode": "ANY"}),
        ToolChoice::Named(named) => {
            json!({"mode": "ANY", "allowedFunctionNames": [named.function.name]})
        }
        ToolChoice::Other(_) => return Err(unsupported_tool_choice(PROVIDER)),
    };
    Ok(json!({ "functionCallingConfig": config }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(request: Value) -> Value {
        let request: ChatRequest = serde_json::from_value(request).unwrap();
        serde_json::from_slice(&build_body(&request, "gemini-test", None).unwrap()).unwrap()
    }

    fn with_system(system: Vec<Value>) -> Value {
        let mut messages = system;
        messages.push(json!({"role": "user", "content": "hi"}));
        json!({"model": "gemini-test", "messages": messages})
    }

    #[test]
    fn empty_system_messages_are_left_out() {
        let empty = json!({"role": "system", "content": ""});
        let no_text = json!({"role": "developer", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]});
        let empty_parts = json!({"role": "system", "content": []});
        let empty_texts = json!({"role": "system", "content": [
            {"type": "text", "text": ""}, {"type": "text", "text": ""}]});
        let sent = body(with_system(vec![
            empty.clone(),
            no_text,
            empty_parts,
            empty_texts,
        ]));
        assert!(sent.get("systemInstruction").is_none(), "{sent}");
        let sent = body(with_system(vec![
            empty,
            json!({"role": "system", "content": "Be brief."}),
        ]));
        assert_eq!(
            sent["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
    }

    #[test]
    fn a_conversation_of_system_messages_only_is_refused_naming_messages() {
        let request: ChatRequest = serde_json::from_value(json!({"model": "gemini-test",
            "messages": [{"role": "system", "content": "Say hi."}]}))
        .unwrap();
        let err = build_body(&request, "gemini-test", None).unwrap_err();
        assert!(
            matches!(&err, PrepareError::Unsupported { field, .. } if field == "messages"),
            "{err:?}"
        );
    }

    #[test]
    fn reasoning_effort_becomes_a_thinking_budget_or_level() {
        let thinking = |model: &str, effort: Value| {
            let request: ChatRequest = serde_json::from_value(json!({"model": model,
                "reasoning_effort": effort, "messages": [{"role": "user", "content": "hi"}]}))
            .unwrap();
            build_body(&request, model, None).map(|body| {
                let sent: Value = serde_json::from_slice(&body).unwrap();
                sent["generationConfig"]["thinkingConfig"].clone()
            })
        };
        for (effort, budget) in [
            ("none", 0),
            ("minimal", 1024),
            ("low", 1024),
            ("medium", 8192),
            ("high", 24_576),
        ] {
            for model in ["gemini-2.5-flash", "gemini-flash-latest"] {
                assert_eq!(
                    thinking(model, json!(effort)).unwrap(),
                    json!({"thinkingBudget": budget}),
                    "{model} {effort}"
                );
            }
            let level = if effort == "none" { "minimal" } else { effort };
            assert_eq!(
                thinking("gemini-3.5-flash", json!(effort)).unwrap(),
                json!({"thinkingLevel": level}),
                "{effort}"
            );
            let pro = if matches!(effort, "medium" | "high") {
                "high"
            } else {
                "low"
            };
            assert_eq!(
                thinking("gemini-3-pro-preview", json!(effort)).unwrap(),
                json!({"thinkingLevel": pro}),
                "{effort}"
            );
            assert_eq!(
                thinking("gemini-2.0-flash", json!(effort)).unwrap(),
                Value::Null
            );
        }
        assert_eq!(
            thinking("gemini-2.5-flash", Value::Null).unwrap(),
            Value::Null
        );
        for bad in [json!("extreme"), json!(3), json!({"effort": "low"})] {
            let err = thinking("gemini-2.5-flash", bad.clone()).unwrap_err();
            assert!(
                matches!(&err, PrepareError::InvalidField { field, .. } if field == "reasoning_effort"),
                "{bad}: {err:?}"
            );
        }
        assert!(thinking_off("gemini-2.5-flash", Some("none")));
        assert!(!thinking_off("gemini-3-pro-preview", Some("none")));
        assert!(!thinking_off("gemini-2.5-flash", Some("low")));
        assert!(!thinking_off("gemini-2.5-flash", None));
    }
}
