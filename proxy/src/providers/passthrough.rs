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
use crate::pricing::ServiceTier;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
    /// OpenAI's processing tier for the call (`default`, `priority`, `flex`),
    /// on the answer and on every streamed chunk; priced apart when the
    /// model has prices for it.
    #[serde(default, borrow)]
    service_tier: Option<Text<'a>>,
}

impl ChunkView<'_> {
    fn service_tier(&self) -> Option<ServiceTier> {
        self.service_tier
            .as_ref()
            .and_then(|t| ServiceTier::parse(t.as_str()))
    }
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

/// Text to count: a string, borrowed from the chunk unless it has escapes
/// (the usual case, read fast). Anything else is accepted too, since this
/// view only estimates and must never make a good answer unreadable:
/// some OpenAI-compatible servers send `content` as an array of parts
/// (Mistral's `[{"type":"thinking",…},{"type":"text","text":…}]`) or tool
/// `arguments` as an object. Their strings are counted, joined (`type`
/// tags left out); numbers, booleans and `null` count as nothing.
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed("")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut joined = String::new();
                while let Some(part) = seq.next_element::<Text<'a>>()? {
                    joined.push_str(part.as_str());
                }
                Ok(Text(Cow::Owned(joined)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut joined = String::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "type" {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        joined.push_str(map.next_value::<Text<'a>>()?.as_str());
                    }
                }
                Ok(Text(Cow::Owned(joined)))
            }
        }
        d.deserialize_any(TextVisitor(std::marker::PhantomData))
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
        return Ok(Usage {
            service_tier: view.service_tier(),
            ..Usage::from_openai(usage)
        });
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
        service_tier: view.service_tier(),
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
            ctx.usage = Usage {
                service_tier: ctx.usage.service_tier,
                ..Usage::from_openai(usage)
            };
            ctx.usage_final = true;
        }
        if view.service_tier.is_some() {
            ctx.usage.service_tier = view.service_tier();
        }
        if usage_only && !ctx.client_wants_usage {
            return;
        }
        // Some servers (vLLM, Together) put the usage on the last chunk
        // with choices: the client has it then, and a stream that ends
        // without `[DONE]` must not get a second one.
        if view.usage.is_some() {
            ctx.usage_sent = true;
        }
        ctx.emit_data(&event.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::routing::ProviderKind;
    use crate::providers::stream::StreamTranslator;

    #[test]
    fn content_parts_and_object_arguments_are_counted_not_refused() {
        // Mistral's Magistral answers with content parts; some servers send
        // tool arguments as an object. The usage is read, the text counted.
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":[
            {"type":"thinking","thinking":[{"type":"text","text":"abcd"}]},
            {"type":"text","text":"efgh"}],
            "tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":{"q":"ijkl","n":3}}}]},
            "finish_reason":"stop"}],
            "usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
        let usage = response_usage(body).unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (11, 7));
        assert!(!usage.estimated);
        // Without usage, the estimate counts every string: "abcd", "efgh",
        // "f", "ijkl" = 13 characters, so 4 tokens.
        let no_usage = String::from_utf8(body.to_vec()).unwrap();
        let no_usage = no_usage.replace(
            r#""usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}"#,
            r#""usage":null"#,
        );
        assert!(!no_usage.contains("prompt_tokens"));
        let usage = response_usage(no_usage.as_bytes()).unwrap();
        assert_eq!(usage.output_tokens, 4);
        assert!(usage.estimated);
        // The same in a stream: the chunk is read, so its finish counts.
        let mut t = StreamTranslator::new(ProviderKind::Custom, false, "m");
        t.push(br#"data: {"choices":[{"index":0,"delta":{"content":[{"type":"text","text":"hello"}]},"finish_reason":"stop"}]}

"#);
        assert!(t.is_complete());
        assert_eq!(t.usage_so_far().output_tokens, 2);
    }

    #[test]
    fn usage_on_the_last_chunk_with_choices_is_not_sent_twice() {
        let mut t = StreamTranslator::new(ProviderKind::Custom, true, "m");
        let mut out = t
            .push(br#"data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}

"#)
            .to_vec();
        // The server closes without `[DONE]`.
        out.extend_from_slice(&t.finish());
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("\"usage\"").count(), 1, "{out}");
        assert!(out.trim_end().ends_with("data: [DONE]"), "{out}");
        assert_eq!(t.usage_so_far().input_tokens, 3);
    }

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
