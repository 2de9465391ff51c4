//! Parsing and validating a client's Chat Completions request body.
//!
//! Every rejection names the field to fix (`messages[1].content`,
//! `temperature`, …) so the proxy can answer with OpenAI's error shape and a
//! useful `param`. The message may quote the offending value back to the
//! client (serde's "invalid type: string \"…\""), so log `field()`, never
//! the message.

use super::openai::{ChatRequest, ErrorBody, ErrorDetail, MessageContent, Role, ToolChoice};

/// Most choices (`n`) one request may ask for, as OpenAI allows.
pub const MAX_CHOICES: u32 = 128;

/// Why a request body was refused. Maps to HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON (or has trailing garbage).
    #[error("request body is not valid JSON: {message}")]
    InvalidJson { message: String },
    /// A required field is absent (or an empty `model`/`messages`).
    #[error("missing required parameter: '{field}'")]
    MissingField { field: String },
    /// A field has the wrong type or an invalid value.
    #[error("invalid '{field}': {message}")]
    InvalidField { field: String, message: String },
}

impl RequestError {
    /// The offending field, as a path (`messages[0].role`), when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            RequestError::InvalidJson { .. } => None,
            RequestError::MissingField { field } | RequestError::InvalidField { field, .. } => {
                Some(field)
            }
        }
    }

    /// The error in OpenAI's shape (`type: invalid_request_error`, `param`).
    pub fn to_openai(&self) -> ErrorBody {
        let code = match self {
            RequestError::InvalidJson { .. } => None,
            RequestError::MissingField { .. } => Some("missing_required_parameter".to_owned()),
            RequestError::InvalidField { .. } => Some("invalid_value".to_owned()),
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: "invalid_request_error".to_owned(),
                param: self.field().map(str::to_owned),
                code,
            },
        }
    }
}

/// Parses and validates a request body (see [`validate_request`]).
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, RequestError> {
    // Most requests are valid: parse them without tracking the path, and
    // parse again with it only to say where a bad one went wrong.
    let request = match serde_json::from_slice::<ChatRequest>(body) {
        Ok(request) => request,
        Err(_) => parse_tracking_path(body)?,
    };
    validate_request(&request)?;
    Ok(request)
}

/// [`parse_request`]'s parse, naming the field of an error.
fn parse_tracking_path(body: &[u8]) -> Result<ChatRequest, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let request: ChatRequest = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        from_serde(&path, err.into_inner())
    })?;
    de.end().map_err(|err| RequestError::InvalidJson {
        message: without_position(&err),
    })?;
    Ok(request)
}

/// Longest `model` accepted, in bytes (as ingest's).
pub const MAX_MODEL_BYTES: usize = 200;

/// Checks what serde cannot: a non-empty `model` and `messages`, a
/// `tool_call_id` on every tool message, a `function` on every function
/// tool and call, and `n` from 1 to [`MAX_CHOICES`].
pub fn validate_request(request: &ChatRequest) -> Result<(), RequestError> {
    if request.model.trim().is_empty() {
        return Err(RequestError::MissingField {
            field: "model".to_owned(),
        });
    }
    // The model is written into every event of the call and the counters
    // (as ingest bounds it, `ingest::http::tier::model`): free text there
    // would be stored, and each distinct name is a counter of its own.
    if request.model.len() > MAX_MODEL_BYTES || request.model.chars().any(char::is_control) {
        return Err(RequestError::InvalidField {
            field: "model".to_owned(),
            message: format!("a model name is at most {MAX_MODEL_BYTES} printable characters"),
        });
    }
    if request.messages.is_empty() {
        return Err(RequestError::MissingField {
            field: "messages".to_owned(),
        });
    }
    for (i, message) in request.messages.iter().enumerate() {
        if message.role == Role::Tool && message.tool_call_id.is_none() {
            return Err(RequestError::MissingField {
                field: format!("messages[{i}].tool_call_id"),
            });
        }
        if let Some(MessageContent::Parts(parts)) = &message.content {
            for (j, part) in parts.iter().enumerate() {
                let Some(url) = part.image_url.as_ref().map(|i| i.url.as_str()) else {
                    continue;
                };
                if let Some(kind) = data_url_media_type(url).filter(|t| !is_image(t)) {
                    return Err(RequestError::InvalidField {
                        field: format!("messages[{i}].content[{j}].image_url.url"),
                        message: format!(
                            "an image_url part carries an image; this data: URL is `{kind}`"
                        ),
                    });
                }
            }
        }
        for (j, call) in message.tool_calls.iter().flatten().enumerate() {
            if call.kind == "function" && call.function.is_none() {
                return Err(RequestError::MissingField {
                    field: format!("messages[{i}].tool_calls[{j}].function"),
                });
            }
        }
    }
    // A named function choice that does not parse as one (no or a non-string
    // name) would otherwise pass as another kind of choice.
    if let Some(ToolChoice::Other(choice)) = &request.tool_choice {
        if choice.get("type").and_then(|t| t.as_str()) == Some("function") {
            return Err(RequestError::MissingField {
                field: "tool_choice.function.name".to_owned(),
            });
        }
    }
    for (i, tool) in request.tools.iter().flatten().enumerate() {
        if tool.kind == "function" && tool.function.is_none() {
            return Err(RequestError::MissingField {
                field: format!("tools[{i}].function"),
            });
        }
    }
    if let Some(n) = request.n.filter(|n| !(1..=MAX_CHOICES).contains(n)) {
        return Err(RequestError::InvalidField {
            field: "n".to_owned(),
            message: format!("must be between 1 and {MAX_CHOICES}, got {n}"),
        });
    }
    Ok(())
}

/// The media type a `data:` URL names (`text/plain` when it names none, as
/// RFC 2397 says), or `None` for any other URL.
fn data_url_media_type(url: &str) -> Option<&str> {
    let rest = url.get(..5).filter(|s| s.eq_ignore_ascii_case("data:"))?;
    let rest = &url[rest.len()..];
    let end = rest.find([';', ',']).unwrap_or(rest.len());
    let kind = rest[..end].trim();
    Some(if kind.is_empty() { "text/plain" } else { kind })
}

/// Only images may ride in an `image_url` part: the hold counts such a
/// part as one image, and a provider that takes any inline data (Gemini's
/// `inlineData` reads video, PDFs and audio) would bill a long video or
/// document as its thousands of tokens.
fn is_image(media_type: &str) -> bool {
    media_type
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("image/"))
}

fn from_serde(path: &str, err: serde_json::Error) -> RequestError {
    use serde_json::error::Category;
    let message = without_position(&err);
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => RequestError::InvalidJson { message },
        Category::Data => {
            if let Some(name) = missing_field_name(&message) {
                return RequestError::MissingField {
                    field: join_path(path, name),
                };
            }
            let field = if path == "." { "body" } else { path };
            RequestError::InvalidField {
                field: field.to_owned(),
                message,
            }
        }
    }
}

/// serde's "missing field `x`" message, as `x`.
fn missing_field_name(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

fn join_path(path: &str, field: &str) -> String {
    if path.is_empty() || path == "." {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// serde_json's message without its " at line L column C" suffix.
fn without_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        parse_request(body.as_bytes())
            .err()
            .and_then(|e| e.field().map(str::to_owned))
    }

    #[test]
    fn accepts_minimal_request() {
        let req =
            parse_request(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#);
        assert!(req.is_ok());
    }

    #[test]
    fn a_model_name_is_bounded_and_printable() {
        let body = |model: &str| {
            format!(
                r#"{{"model":{},"messages":[{{"role":"user","content":"x"}}]}}"#,
                serde_json::to_string(model).unwrap()
            )
        };
        let longest = format!("gpt-{}", "4".repeat(MAX_MODEL_BYTES - 4));
        assert!(parse_request(body(&longest).as_bytes()).is_ok());
        for bad in [format!("{longest}o"), "gpt-4o\nthe prompt".to_owned()] {
            assert_eq!(field_of(&body(&bad)).as_deref(), Some("model"), "{bad:?}");
        }
    }

    #[test]
    fn names_missing_and_empty_fields() {
        assert_eq!(
            field_of(r#"{"messages":[{"role":"user","content":"x"}]}"#).as_deref(),
            Some("model")
        );
        assert_eq!(
            field_of(r#"{"model":"gpt-4o"}"#).as_deref(),
            Some("messages")
        );
        assert_eq!(
            field_of(r#"{"model":"gpt-4o","messages":[]}"#).as_deref(),
            Some("messages")
        );
        assert_eq!(
            field_of(r#"{"model":"gpt-4o","messages":[{"content":"x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
    }

    #[test]
    fn names_fields_of_the_wrong_type() {
        assert_eq!(
            field_of(
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#
            )
            .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            field_of(r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":7}]}"#).as_deref(),
            Some("messages[1].content")
        );
        assert_eq!(
            field_of(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            field_of(r#"{"model":7,"messages":[]}"#).as_deref(),
            Some("model")
        );
        assert_eq!(
            field_of(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#)
                .as_deref(),
            Some("max_tokens")
        );
    }

    #[test]
    fn image_url_data_must_be_an_image() {
        let body = |url: &str| {
            format!(
                r#"{{"model":"gemini-2.5-pro","messages":[{{"role":"user","content":[
                {{"type":"text","text":"what is this"}},
                {{"type":"image_url","image_url":{{"url":"{url}"}}}}]}}]}}"#
            )
        };
        for url in [
            "data:video/mp4;base64,AAAA",
            "data:application/pdf;base64,AAAA",
            "DATA:audio/wav;base64,AAAA",
            "data:,hello",
        ] {
            let err = parse_request(body(url).as_bytes()).unwrap_err();
            assert_eq!(
                err.field(),
                Some("messages[0].content[1].image_url.url"),
                "{url}"
            );
        }
        for url in [
            "data:image/png;base64,AAAA",
            "data:IMAGE/JPEG;base64,AAAA",
            "https://example.com/cat.mp4",
        ] {
            assert!(parse_request(body(url).as_bytes()).is_ok(), "{url}");
        }
    }

    #[test]
    fn invalid_json_has_no_field() {
        let err = parse_request(b"{\"model\": ").err();
        assert!(matches!(err, Some(RequestError::InvalidJson { .. })));
        let err =
            parse_request(br#"{"model":"m","messages":[{"role":"user","content":"x"}]} trailing"#)
                .err();
        assert!(matches!(err, Some(RequestError::InvalidJson { .. })));
    }

    #[test]
    fn openai_error_shape_has_param() {
        let err = RequestError::MissingField {
            field: "model".to_owned(),
        };
        let body = serde_json::to_value(err.to_openai()).ok();
        assert_eq!(
            body,
            Some(serde_json::json!({"error":{
                "message":"missing required parameter: 'model'",
                "type":"invalid_request_error","param":"model","code":"missing_required_parameter"}}))
        );
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}],"x_msg":1}],"seed":42,"response_format":{"type":"json_object"},"stream_options":{"include_usage":true,"extra_opt":true}}"#;
        let req = parse_request(body.as_bytes()).ok();
        let back = req.and_then(|r| serde_json::to_value(r).ok());
        let original: Option<serde_json::Value> = serde_json::from_str(body).ok();
        assert_eq!(back, original);
    }
}
