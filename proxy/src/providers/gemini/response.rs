//! Gemini non-streamed answer → `chat.completion`.
//!
//! Only the first candidate is read (Tollgate never asks for more). Text
//! parts are concatenated, thought parts skipped, `functionCall` parts become
//! `tool_calls`. A prompt blocked before any candidate gives an empty answer
//! with `finish_reason: content_filter`.

use super::super::openai::{ChatResponse, Choice, FinishReason, ResponseMessage, ToolCall};
use super::super::response::ResponseMeta;
use super::super::usage::{estimate_output_tokens, Usage};
use super::{finish_reason, tool_call_id, GenerateContentResponse};

pub(crate) fn translate(
    body: &[u8],
    meta: &ResponseMeta,
) -> Result<(ChatResponse, Usage), serde_json::Error> {
    let answer: GenerateContentResponse = serde_json::from_slice(body)?;
    let id = answer
        .response_id
        .clone()
        .unwrap_or_else(|| meta.id.clone());
    let candidate = answer.candidates.first();
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in candidate
        .and_then(|c| c.content.as_ref())
        .map(|c| c.parts.as_slice())
        .unwrap_or_default()
    {
        if let Some(call) = &part.function_call {
            let index = u32::try_from(calls.len()).unwrap_or(u32::MAX);
            calls.push(ToolCall::function(
                tool_call_id(part, call, &id, index),
                call.name.clone(),
                call.arguments(),
            ));
        } else if let (Some(t), None | Some(false)) = (&part.text, part.thought) {
            text.push_str(t);
        }
    }
    let blocked = candidate.is_none()
        && answer
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some());
    let finish = match candidate.and_then(|c| c.finish_reason.as_deref()) {
        Some(reason) => finish_reason(reason, !calls.is_empty()),
        None if blocked => FinishReason::ContentFilter,
        None if !calls.is_empty() => FinishReason::ToolCalls,
        None => FinishReason::Stop,
    };
    let usage = match answer.usage_metadata {
        Some(u) => u.normalise(),
        // No usage reported: estimate the output from what was written
        // (the proxy fills in its own count of the input).
        None => {
            let written: usize = text.len()
                + calls
                    .iter()
                    .filter_map(|c| c.function.as_ref())
                    .map(|f| f.name.len() + f.arguments.len())
                    .sum::<usize>();
            Usage {
                output_tokens: estimate_output_tokens(u64::try_from(written).unwrap_or(u64::MAX)),
                estimated: true,
                ..Usage::default()
            }
        }
    };
    let response = ChatResponse {
        id,
        object: "chat.completion".to_owned(),
        created: meta.created_unix_s,
        model: answer.model_version.unwrap_or_else(|| meta.model.clone()),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage::assistant(text, calls),
            finish_reason: Some(finish),
        }],
        usage: Some(usage.to_openai()),
    };
    Ok((response, usage))
}
