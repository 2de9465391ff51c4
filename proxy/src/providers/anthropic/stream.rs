//! Anthropic SSE events → OpenAI chunks.
//!
//! `message_start` (id, model, input usage) → the role chunk;
//! `content_block_start`/`content_block_delta` → content or tool-call chunks
//! (`input_json_delta` pieces become `arguments` pieces, `{}` for a tool
//! call that streamed none by its `content_block_stop`; a call to
//! [`RESPONSE_FORMAT_TOOL`] streams as content instead; thinking is counted
//! for the estimate but not shown); `message_delta` → the finish chunk and
//! the final output count (cumulative; the larger value wins);
//! `message_stop` → usage chunk and `[DONE]`; `error` → an OpenAI error event.
//! The event kind is read from the data's `type` field, which Anthropic
//! always repeats from the `event:` line.

use super::super::openai::ErrorBody;
use super::super::response::json_error_position;
use super::super::sse::SseEvent;
use super::super::stream::StreamCtx;
use super::super::usage::AnthropicUsage;
use super::{finish_reason, AnswerBlock, RESPONSE_FORMAT_TOOL};
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: AnswerBlock,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageStop {},
    Error {
        error: ErrorInfo,
    },
    /// `ping` and anything new.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorInfo {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// Per-stream state: usage so far and which block is which tool call.
#[derive(Debug, Default)]
pub(crate) struct StreamHandler {
    usage: AnthropicUsage,
    /// Anthropic content-block index → OpenAI tool-call index, and
    /// whether any of its arguments were streamed yet.
    tool_calls: HashMap<u32, (u32, bool)>,
    /// The block of the `response_format` tool's call, and whether any of
    /// its JSON was streamed yet.
    format_block: Option<(u32, bool)>,
}

impl StreamHandler {
    pub fn on_event(&mut self, event: &SseEvent, ctx: &mut StreamCtx) {
        let parsed = match serde_json::from_str::<Event>(&event.data) {
            Ok(parsed) => parsed,
            Err(err) => {
                // The event's name comes from the provider: at most a
                // short prefix of it is logged.
                let name = event
                    .event
                    .as_deref()
                    .map(|n| if n.len() <= 32 { n } else { "(long)" });
                tracing::warn!(error = %json_error_position(&err), event = ?name, "skipping unreadable Anthropic stream event");
                return;
            }
        };
        match parsed {
            Event::MessageStart { message } => {
                if let Some(id) = message.id {
                    ctx.meta.id = id;
                }
                if let Some(model) = message.model {
                    ctx.meta.model = model;
                }
                self.update_usage(&message.usage, ctx);
                ctx.emit_role();
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                AnswerBlock::Text { text } => ctx.emit_text(&text),
                // Only the first call answers (its JSON is the content),
                // and not after a client tool's call (it would be an answer
                // given before the tool ran; parallel calls are disabled, so
                // neither should happen); the deltas of any other are only
                // counted.
                AnswerBlock::ToolUse { name, .. } if name == RESPONSE_FORMAT_TOOL => {
                    if self.tool_calls.is_empty() {
                        self.format_block.get_or_insert((index, false));
                    }
                }
                AnswerBlock::ToolUse { id, name, .. } => {
                    let call = u32::try_from(self.tool_calls.len()).unwrap_or(u32::MAX);
                    self.tool_calls.insert(index, (call, false));
                    ctx.emit_tool_call(call, Some((&id, &name)), "");
                }
                AnswerBlock::Thinking { thinking } => ctx.count(&thinking),
                AnswerBlock::Other => {}
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => ctx.emit_text(&text),
                BlockDelta::InputJsonDelta { partial_json } => {
                    if let Some((block, streamed)) = &mut self.format_block {
                        if *block == index {
                            *streamed |= !partial_json.trim().is_empty();
                            ctx.emit_text(&partial_json);
                            return;
                        }
                    }
                    match self.tool_calls.get_mut(&index) {
                        Some((call, streamed)) => {
                            *streamed |= !partial_json.trim().is_empty();
                            ctx.emit_tool_call(*call, None, &partial_json);
                        }
                        None => ctx.count(&partial_json),
                    }
                }
                BlockDelta::ThinkingDelta { thinking } => ctx.count(&thinking),
                BlockDelta::Other => {}
            },
            Event::MessageDelta { delta, usage } => {
                if let Some(usage) = usage {
                    self.update_usage(&usage, ctx);
                    ctx.usage_final = true;
                }
                if let Some(reason) = delta.stop_reason {
                    ctx.emit_finish(finish_reason(&reason, !self.tool_calls.is_empty()));
                }
            }
            // A tool without parameters streams no (or only empty) JSON:
            // its arguments are `{}`, as in a JSON answer, never "".
            Event::ContentBlockStop { index } => {
                if let Some((block, streamed @ false)) = &mut self.format_block {
                    if *block == index {
                        *streamed = true;
                        ctx.emit_text("{}");
                    }
                }
                if let Some((call, streamed @ false)) = self.tool_calls.get_mut(&index) {
                    *streamed = true;
                    ctx.emit_tool_call(*call, None, "{}");
                }
            }
            Event::MessageStop {} => {
                ctx.completed = true;
                ctx.emit_usage_and_done();
            }
            Event::Error { error } => ctx.emit_error(&ErrorBody::new(error.kind, error.message)),
            Event::Other => {}
        }
    }

    fn update_usage(&mut self, report: &AnthropicUsage, ctx: &mut StreamCtx) {
        self.usage.merge(report);
        ctx.usage = self.usage.normalise();
    }
}
