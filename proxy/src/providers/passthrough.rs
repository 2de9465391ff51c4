//! OpenAI, xAI and custom OpenAI-compatible providers: their answers already
//! have OpenAI's shape, so they go to the client as they came; only usage is
//! read from them.
//!
//! Streams: every event is forwarded verbatim except the usage-only chunk
//! (`choices: []` + `usage`) when the client did not ask for it (Tollgate always
//! asks upstream so it can measure). A provider that never reports usage
//! leaves the usage estimated from the streamed text.

use super::openai::OpenAiUsage;
use super::sse::SseEvent;
use super::stream::StreamCtx;
use super::usage::{estimate_output_tokens, Usage};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;

/// Only what Tollgate reads from a chunk; everything else is skipped. Text
/// is borrowed from the chunk where it has no escapes: every chunk of every
/// stream is read, only to count its text.
#[derive(Debug, Default, Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct ChoiceView<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
    #[serde(default, borrow)]
    message: Option<DeltaView<'a>>,
    /// Only whether there is one (`null` is none).
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

/// A string borrowed from the chunk unless it has escapes. (serde borrows
/// only a bare `Cow<str>` field: inside an `Option` it would copy.)
#[derive(Debug, Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Text<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
struct ToolCallView<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct FunctionView<'a> {
    #[serde(default, borrow)]
    name: Option<Text<'a>>,
    #[serde(default, borrow)]
    arguments: Option<Text<'a>>,
}

impl DeltaView<'_> {
    fn texts(&self) -> impl Iterator<Item = &str> {
        let calls = self
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|c| c.function.as_ref());
        self.content
            .iter()
            .chain(&self.reasoning_content)
            .chain(calls.flat_map(|f| f.name.iter().chain(&f.arguments)))
            .map(Text::as_str)
    }
}

/// Usage of a non-streamed answer; estimated from its text if absent.
pub(crate) fn response_usage(body: &[u8]) -> Result<Usage, serde_json::Error> {
    let view: ChunkView = serde_json::from_slice(body)?;
    if let Some(usage) = &view.usage {
        return Ok(Usage::from_openai(usage));
    }
    let chars: usize = view
        .choices
        .iter()
        .flatten()
        .filter_map(|c| c.message.as_ref())
        .flat_map(DeltaView::texts)
        .map(|t| t.chars().count())
        .sum();
    Ok(Usage {
        output_tokens: estimate_output_tokens(u64::try_from(chars).unwrap_or(u64::MAX)),
        estimated: true,
        ..Usage::default()
    })
}

/// Stream side: forwards events, measures usage, hides the unasked usage chunk.
#[derive(Debug, Default)]
pub(crate) struct StreamHandler;

impl StreamHandler {
    pub fn on_event(&mut self, event: &SseEvent, ctx: &mut StreamCtx) {
        let data = event.data.trim();
        if data == "[DONE]" {
            ctx.completed = true;
            ctx.emit_done();
            return;
        }
        let Ok(view) = serde_json::from_str::<ChunkView>(data) else {
            ctx.emit_data(&event.data);
            return;
        };
        if view.error.is_some() {
            ctx.failed = true;
            ctx.emit_data(&event.data);
            return;
        }
        for choice in view.choices.iter().flatten() {
            if let Some(delta) = &choice.delta {
                for text in delta.texts() {
                    ctx.count(text);
                }
            }
            if choice.finish_reason.is_some() {
                ctx.completed = true;
            }
        }
        let no_choices = view.choices.as_ref().map_or(0, Vec::len) == 0;
        let usage_only = no_choices && view.usage.is_some();
        if let Some(usage) = &view.usage {
            ctx.usage = Usage::from_openai(usage);
            ctx.usage_final = true;
        }
        if usage_only {
            if !ctx.client_wants_usage {
                return;
            }
            ctx.usage_sent = true;
        }
        ctx.emit_data(&event.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunks_text_is_borrowed_unless_escaped() {
        let data = r#"{"choices":[{"delta":{"content":"plain","reasoning_content":"a\nb","tool_calls":[{"function":{"name":"f","arguments":"{\"x\":1}"}}]},"finish_reason":null}]}"#;
        let view: ChunkView = serde_json::from_str(data).unwrap();
        let choice = &view.choices.as_deref().unwrap()[0];
        assert!(choice.finish_reason.is_none(), "null is no finish reason");
        let delta = choice.delta.as_ref().unwrap();
        assert!(matches!(
            delta.content.as_ref().unwrap().0,
            Cow::Borrowed("plain")
        ));
        assert!(
            matches!(&delta.reasoning_content.as_ref().unwrap().0, Cow::Owned(s) if s == "a\nb")
        );
        let texts: Vec<&str> = delta.texts().collect();
        assert_eq!(texts, ["plain", "a\nb", "f", "{\"x\":1}"]);
    }
}
