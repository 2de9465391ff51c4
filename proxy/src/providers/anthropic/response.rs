//! Anthropic non-streamed answer → `chat.completion`.
//!
//! Text blocks are concatenated into `message.content`; `tool_use` blocks
//! become `tool_calls` (their `input` serialized as the arguments text),
//! except a call to [`RESPONSE_FORMAT_TOOL`], whose input is the text;
//! thinking blocks are not shown. `stop_reason` maps through
//! [`super::finish_reason`] (`stop` when the only call was the format's).

use super::super::openai::{ChatResponse, Choice, FinishReason, ResponseMessage, ToolCall};
use super::super::response::ResponseMeta;
use super::super::usage::{AnthropicUsage, Usage};
use super::{finish_reason, AnswerBlock, RESPONSE_FORMAT_TOOL};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct MessagesResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Vec<AnswerBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    usage: AnthropicUsage,
}

pub(crate) fn translate(
    body: &[u8],
    meta: &ResponseMeta,
) -> Result<(ChatResponse, Usage), serde_json::Error> {
    let answer: MessagesResponse = serde_json::from_slice(body)?;
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut formatted = None;
    for block in answer.content {
        match block {
            AnswerBlock::Text { text: t } => text.push_str(&t),
            // (One answer: a second call, which the request's
            // `disable_parallel_tool_use` should prevent, is dropped.)
            AnswerBlock::ToolUse { name, input, .. } if name == RESPONSE_FORMAT_TOOL => {
                formatted.get_or_insert(input);
            }
            AnswerBlock::ToolUse { id, name, input } => {
                calls.push(ToolCall::function(id, name, input.to_string()))
            }
            AnswerBlock::Thinking { .. } | AnswerBlock::Other => {}
        }
    }
    // The answer, unless client tools were called too (it would come before
    // their results; the request's `disable_parallel_tool_use` prevents it).
    if let Some(input) = formatted.filter(|_| calls.is_empty()) {
        text.push_str(&json_text(&input));
    }
    let usage = answer.usage.normalise();
    let finish = answer
        .stop_reason
        .as_deref()
        .map_or(FinishReason::Stop, |r| finish_reason(r, !calls.is_empty()));
    let response = ChatResponse {
        id: answer.id.unwrap_or_else(|| meta.id.clone()),
        object: "chat.completion".to_owned(),
        created: meta.created_unix_s,
        model: answer.model.unwrap_or_else(|| meta.model.clone()),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage::assistant(text, calls),
            finish_reason: Some(finish),
        }],
        usage: Some(usage.to_openai()),
    };
    Ok((response, usage))
}

/// The JSON text of the format tool's input (`{}` when it sent none).
fn json_text(input: &serde_json::Value) -> String {
    match input {
        serde_json::Value::Null => "{}".to_owned(),
        input => input.to_string(),
    }
}
