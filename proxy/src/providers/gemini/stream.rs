//! Gemini SSE events → OpenAI chunks.
//!
//! Every event is a whole `GenerateContentResponse` with CRLF framing and no
//! end marker. Text parts become content chunks (thought parts are counted
//! for the estimate, not shown), each `functionCall` part one complete
//! tool-call chunk. `usageMetadata` is cumulative in every event, so the
//! latest one replaces the previous; it is final once an event carries a
//! `finishReason`. The usage chunk and `[DONE]` are sent when the upstream
//! body ends (`StreamTranslator::finish`), since Gemini sends no end event.

use super::super::openai::{ErrorBody, FinishReason};
use super::super::response::json_error_position;
use super::super::sse::SseEvent;
use super::super::stream::StreamCtx;
use super::{finish_reason, tool_call_id, GenerateContentResponse};

#[derive(Debug, Default)]
pub(crate) struct StreamHandler {
    tool_calls: u32,
    /// The event being read carries `usageMetadata`. Gemini's counts are
    /// cumulative and early events carry only the prompt's: the usage is
    /// final only from the event that finishes the answer, or a later one.
    usage_in_event: bool,
    finished: bool,
    /// The answer's id is the first event's `responseId`: one id per answer, as OpenAI's.
    id_fixed: bool,
}

impl StreamHandler {
    pub fn on_event(&mut self, event: &SseEvent, ctx: &mut StreamCtx) {
        let answer = match serde_json::from_str::<GenerateContentResponse>(&event.data) {
            Ok(answer) => answer,
            Err(err) => {
                tracing::warn!(error = %json_error_position(&err), "skipping unreadable Gemini stream event");
                return;
            }
        };
        if let Some(error) = answer.error {
            let mut body = ErrorBody::new("server_error", error.message);
            body.error.code = error.status;
            ctx.emit_error(&body);
            return;
        }
        if let Some(id) = answer.response_id.filter(|_| !self.id_fixed) {
            ctx.meta.id = id;
            self.id_fixed = true;
        }
        if let Some(model) = answer.model_version {
            ctx.meta.model = model;
        }
        self.usage_in_event = answer.usage_metadata.is_some();
        if let Some(usage) = answer.usage_metadata {
            ctx.usage = usage.normalise();
            ctx.usage_final |= self.finished;
        }
        ctx.emit_role();
        let Some(candidate) = answer.candidates.first() else {
            if answer
                .prompt_feedback
                .is_some_and(|f| f.block_reason.is_some())
            {
                self.finish(ctx, FinishReason::ContentFilter);
            }
            return;
        };
        for part in candidate.content.iter().flat_map(|c| c.parts.iter()) {
            if let Some(call) = &part.function_call {
                let id = tool_call_id(part, call, &ctx.meta.id, self.tool_calls);
                ctx.emit_tool_call(self.tool_calls, Some((&id, &call.name)), &call.arguments());
                self.tool_calls = self.tool_calls.saturating_add(1);
            } else if let Some(text) = &part.text {
                if part.thought == Some(true) {
                    ctx.count(text);
                } else {
                    ctx.emit_text(text);
                }
            }
        }
        if let Some(reason) = &candidate.finish_reason {
            let reason = finish_reason(reason, self.tool_calls > 0);
            self.finish(ctx, reason);
        }
    }

    fn finish(&mut self, ctx: &mut StreamCtx, reason: FinishReason) {
        if !self.finished {
            self.finished = true;
            ctx.emit_finish(reason);
        }
        ctx.completed = true;
        ctx.usage_final = self.usage_in_event;
    }
}
