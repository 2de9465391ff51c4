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

/// A delta (or a message): every field that is output the provider bills.
/// `reasoning` is what some OpenAI-compatible servers (OpenRouter, vLLM)
/// call `reasoning_content`; `refusal` is OpenAI's text of a refusal.
#[derive(Debug, Default, Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Text<'a>>,
    #[serde(default, borrow)]
    reasoning: Option<Text<'a>>,
    #[serde(default, borrow)]
    refusal: Option<Text<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
    #[serde(default, borrow)]
    audio: Option<AudioView<'a>>,
}

/// Audio output (`modalities: ["audio"]`): its transcript, and the audio
/// itself as base64. Streamed audio is 16-bit PCM at 24 kHz, mono (the only
/// format OpenAI streams).
#[derive(Debug, Default, Deserialize)]
struct AudioView<'a> {
    #[serde(default, borrow)]
    transcript: Option<Text<'a>>,
    #[serde(default, borrow)]
    data: Option<Text<'a>>,
}

/// Bytes per second of streamed audio output: 24,000 samples of 2 bytes.
const STREAMED_AUDIO_BYTES_PER_SECOND: u64 = 48_000;

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
            // One reasoning text under either name: servers that send both
            // send the same text twice.
            .chain(self.reasoning_content.as_ref().or(self.reasoning.as_ref()))
            .chain(&self.refusal)
            .chain(self.audio.iter().flat_map(|a| &a.transcript))
            .chain(calls.flat_map(|f| f.name.iter().chain(&f.arguments)))
            .map(Text::as_str)
    }

    /// Microseconds of streamed audio in this delta.
    fn audio_micros(&self) -> u64 {
        let Some(data) = self.audio.as_ref().and_then(|a| a.data.as_ref()) else {
            return 0;
        };
        let base64 = data.as_str().trim_end_matches('=').len() as u64;
        let bytes = base64 * 3 / 4;
        (u128::from(bytes) * 1_000_000 / u128::from(STREAMED_AUDIO_BYTES_PER_SECOND))
            .try_into()
            .unwrap_or(u64::MAX)
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
    let bytes: usize = view
        .choices
        .iter()
        .flatten()
        .filter_map(|c| c.message.as_ref())
        .flat_map(DeltaView::texts)
        .map(str::len)
        .sum();
    Ok(Usage {
        output_tokens: estimate_output_tokens(u64::try_from(bytes).unwrap_or(u64::MAX)),
        estimated: true,
        service_tier: view.service_tier(),
        ..Usage::default()
    })
}

/// What a plain text chunk changes: the bytes (UTF-8) of its one delta's
/// `content`, and its `service_tier` if it names one (`Some(None)`: a tier
/// billed at base prices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plain {
    bytes: u64,
    service_tier: Option<Option<ServiceTier>>,
}

/// Reads a chunk in one pass over its bytes, without building anything,
/// if it is the common kind: one choice whose delta has at most a string
/// `content` (no escaped `\u`), `finish_reason` and `usage` null, no
/// `error`, tool calls, reasoning or `message`. Any other chunk, or one
/// this cannot be sure of, is `None` and goes through [`ChunkView`]; for
/// valid JSON both give the same result for what this accepts (a property
/// test below; malformed JSON only changes how a cut stream is estimated). At
/// a dozen chunks per answer, the full parse was 6 % of the proxy threads'
/// CPU for streamed answers (bench/README.md, eighteenth pass).
fn plain_chunk(data: &str) -> Option<Plain> {
    let b = data.as_bytes();
    let mut plain = Plain {
        bytes: 0,
        service_tier: None,
    };
    let (mut depth, mut i) = (0usize, 0usize);
    let (mut deltas, mut contents) = (0u32, 0u32);
    // Depth of the objects the delta's keys are at, once it was seen.
    let mut delta_keys_at = None;
    // Whether the value at `i` is exactly `null`.
    let null_at = |i: usize| b.get(i..i + 4) == Some(b"null".as_slice());
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if delta_keys_at == Some(depth) {
                    // The delta ends: a `content` after it is someone else's.
                    delta_keys_at = None;
                }
                depth = depth.checked_sub(1)?;
            }
            b'"' => {
                let end = string_end(b, i + 1)?;
                let name = &b[i + 1..end];
                let mut j = skip_ws(b, end + 1);
                if b.get(j) != Some(&b':') {
                    // A string value.
                    i = end + 1;
                    continue;
                }
                if name.contains(&b'\\') {
                    // A key spelled with escapes: the full parse reads it.
                    return None;
                }
                j = skip_ws(b, j + 1);
                match name {
                    b"delta" => {
                        deltas += 1;
                        if b.get(j) != Some(&b'{') {
                            return None;
                        }
                        delta_keys_at = Some(depth + 1);
                    }
                    b"content" => {
                        contents += 1;
                        if delta_keys_at != Some(depth) {
                            return None;
                        }
                        if b.get(j) == Some(&b'"') {
                            let (end, bytes) = counted_string(b, j + 1)?;
                            plain.bytes = bytes;
                            i = end + 1;
                            continue;
                        }
                        if !null_at(j) {
                            return None;
                        }
                    }
                    // Output the full parse counts (OpenAI sends
                    // `"refusal":null` in every first chunk).
                    b"usage" | b"finish_reason" | b"refusal" | b"reasoning" | b"audio"
                        if !null_at(j) =>
                    {
                        return None
                    }
                    b"service_tier" if !null_at(j) => {
                        // Only the chunk's own tier is read, as the full
                        // parse does; one elsewhere is left to it.
                        if depth != 1 || b.get(j) != Some(&b'"') {
                            return None;
                        }
                        let end = string_end(b, j + 1)?;
                        let tier = std::str::from_utf8(&b[j + 1..end]).ok()?;
                        if tier.contains('\\') {
                            return None;
                        }
                        plain.service_tier = Some(ServiceTier::parse(tier));
                        i = end + 1;
                        continue;
                    }
                    b"error" | b"tool_calls" | b"reasoning_content" | b"message" => return None,
                    _ => {}
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    (depth == 0 && deltas == 1 && contents <= 1).then_some(plain)
}

/// Index of the quote closing the string whose text starts at `from`.
fn string_end(b: &[u8], mut from: usize) -> Option<usize> {
    loop {
        from += memchr::memchr2(b'"', b'\\', b.get(from..)?)?;
        if b[from] == b'"' {
            return Some(from);
        }
        from += 2;
    }
}

/// [`string_end`], and how many bytes the string holds once unescaped;
/// `None` for a `\u` escape (left to the full parse).
fn counted_string(b: &[u8], mut from: usize) -> Option<(usize, u64)> {
    let mut bytes = 0u64;
    loop {
        let plain = memchr::memchr2(b'"', b'\\', b.get(from..)?)?;
        bytes += plain as u64;
        from += plain;
        if b[from] == b'"' {
            return Some((from, bytes));
        }
        if matches!(b.get(from + 1), Some(b'u') | None) {
            return None;
        }
        // The other escapes each stand for one ASCII byte.
        bytes += 1;
        from += 2;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
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
        if let Some(plain) = plain_chunk(data) {
            ctx.completion_bytes = ctx.completion_bytes.saturating_add(plain.bytes);
            if let Some(tier) = plain.service_tier {
                ctx.usage.service_tier = tier;
            }
            ctx.emit_data(&event.data);
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
                ctx.audio_output_micros =
                    ctx.audio_output_micros.saturating_add(delta.audio_micros());
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
    fn a_usage_of_no_output_yet_is_not_a_report_of_the_output() {
        // Servers that report usage with every chunk (vLLM's continuous
        // usage stats) say 0 completion tokens while the model thinks.
        let mut t = StreamTranslator::new(ProviderKind::Custom, false, "m");
        t.push(br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":{"prompt_tokens":9,"completion_tokens":0,"total_tokens":9}}

"#);
        assert!(!t.output_reported() && !t.output_started());
        t.push(br#"data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":{"prompt_tokens":9,"completion_tokens":40,"total_tokens":49}}

"#);
        assert!(t.output_reported() && t.output_started());
        assert!(!t.is_complete());
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
    fn a_cut_stream_counts_refusals_reasoning_and_audio() {
        // Each chunk: 40 bytes of text in the field, so 10 tokens.
        let words = "abcd".repeat(10);
        for field in ["refusal", "reasoning", "reasoning_content", "content"] {
            let mut t = StreamTranslator::new(ProviderKind::OpenAi, false, "m");
            let chunk = format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"{field}\":\"{words}\"}},\"finish_reason\":null}}]}}\n\n"
            );
            let out = t.push(chunk.as_bytes());
            assert_eq!(out, chunk.as_bytes(), "{field}: passed on unchanged");
            let usage = t.usage_so_far();
            assert_eq!(usage.output_tokens, 10, "{field}");
            assert!(usage.estimated, "{field}");
        }
        // The same reasoning under both names counts once.
        let mut t = StreamTranslator::new(ProviderKind::Custom, false, "m");
        t.push(format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"reasoning\":\"{words}\",\"reasoning_content\":\"{words}\"}},\"finish_reason\":null}}]}}\n\n"
        ).as_bytes());
        assert_eq!(t.usage_so_far().output_tokens, 10);
        // Audio output: two chunks of 0.5 s of 24 kHz 16-bit PCM each
        // (24,000 bytes, 32,000 in base64), with a transcript.
        let mut t = StreamTranslator::new(ProviderKind::OpenAi, false, "gpt-4o-audio-preview");
        let half_second = "A".repeat(32_000);
        for _ in 0..2 {
            t.push(format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"audio\":{{\"id\":\"a\",\"data\":\"{half_second}\",\"transcript\":\"{words}\"}}}},\"finish_reason\":null}}]}}\n\n"
            ).as_bytes());
        }
        let usage = t.usage_so_far();
        // 1 s at OpenAI's 10 audio tokens a second, and 80 bytes of transcript.
        assert_eq!(usage.audio_output_tokens, 10);
        assert_eq!(usage.output_tokens, 10 + 20);
        // The provider's own count, when it comes, is what is charged.
        t.push(br#"data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":50,"total_tokens":55,"completion_tokens_details":{"audio_tokens":40}}}

data: [DONE]

"#);
        let usage = t.usage_so_far();
        assert_eq!((usage.output_tokens, usage.audio_output_tokens), (50, 40));
        assert!(!usage.estimated);
    }

    /// What the full parse makes of a chunk, in [`Plain`]'s terms, if it
    /// is one [`plain_chunk`] may accept (no error, usage or finish).
    fn parsed(data: &str) -> Option<Plain> {
        let view: ChunkView = serde_json::from_str(data).ok()?;
        if view.error.is_some() || view.usage.is_some() {
            return None;
        }
        let mut bytes = 0;
        for choice in view.choices.iter().flatten() {
            if choice.finish_reason.is_some() {
                return None;
            }
            for text in choice.delta.iter().flat_map(DeltaView::texts) {
                bytes += text.len() as u64;
            }
        }
        Some(Plain {
            bytes,
            service_tier: view.service_tier.is_some().then(|| view.service_tier()),
        })
    }

    #[test]
    fn a_recorded_openai_stream_is_read_the_fast_way_but_its_end() {
        let recorded = include_str!("../../tests/fixtures/openai_chat_stream.sse");
        let mut fast = 0;
        for line in recorded.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            match plain_chunk(data) {
                Some(plain) => {
                    fast += 1;
                    assert_eq!(Some(plain), parsed(data), "{data}");
                }
                // Only the finish and the usage chunk need the full parse.
                None => assert!(
                    data.contains(r#""finish_reason":"stop""#) || data.contains(r#""usage":{"#),
                    "{data}"
                ),
            }
        }
        assert!(fast > 10, "{fast} chunks read the fast way");
    }

    #[test]
    fn chunks_the_fast_way_cannot_be_sure_of_are_parsed() {
        for data in [
            // Two choices, a tool call, reasoning, an error, a finish, usage.
            r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
            // A key spelled with an escape.
            r#"{"choices":[{"delta":{"con\u0074ent":"abc"}}]}"#,
            // Content as parts, escaped unicode, a content outside the delta.
            r#"{"choices":[{"delta":{"content":[{"type":"text","text":"x"}]}}]}"#,
            r#"{"choices":[{"delta":{"content":"\u00e9"}}]}"#,
            r#"{"choices":[{"delta":{},"logprobs":{"content":"x"}}]}"#,
            r#"{"choices":[{"logprobs":{"content":"x"},"delta":{}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"},"logprobs":{"content":[{"token":"a"}]}}]}"#,
            // A tier named with an escape, a tier inside a choice.
            r#"{"service_tier":"fl\u0065x","choices":[{"delta":{"content":"a"}}]}"#,
            r#"{"choices":[{"delta":{"content":"a"},"service_tier":"flex"}]}"#,
        ] {
            assert_eq!(plain_chunk(data), None, "{data}");
        }
        // Keys' names in text are text: read the fast way, counted right.
        let data = r#"{"choices":[{"delta":{"content":"\"usage\":{\"error\" \\ é😀"}, "finish_reason" : null}],"usage" :null,"service_tier":"flex"}"#;
        let plain = plain_chunk(data).unwrap();
        assert_eq!(Some(plain), parsed(data));
        assert_eq!(plain.bytes, 25);
        assert_eq!(plain.service_tier, Some(Some(ServiceTier::Flex)));
    }

    mod fast_and_full_agree {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                1 => any::<String>(),
                3 => r#"[a-z "\\{}:,\[\]é😀]{0,12}"#,
                1 => prop::sample::select(vec![
                    "usage",
                    "content",
                    "delta",
                    "error",
                    "finish_reason",
                    "\"",
                    "\\",
                    "null",
                ])
                .prop_map(str::to_owned),
            ]
        }

        /// `v` one time in `n`, else nothing.
        fn rarely(
            n: u32,
            v: impl Strategy<Value = String>,
        ) -> impl Strategy<Value = Option<String>> {
            prop::option::weighted(1.0 / f64::from(n), v)
        }

        fn string(t: String) -> String {
            serde_json::to_string(&t).unwrap()
        }

        /// An object with these fields, in the given order, with the given
        /// separator between a key and its value.
        fn object(fields: Vec<(&'static str, String)>, colon: &str) -> String {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("\"{k}\"{colon}{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        }

        /// [`object`] with its fields turned by `seed`, so any comes first.
        fn turned(mut fields: Vec<(&'static str, String)>, seed: u64, colon: &str) -> String {
            let turn = (seed % fields.len() as u64) as usize;
            fields.rotate_left(turn);
            object(fields, colon)
        }

        fn maybe(v: impl Strategy<Value = String>) -> impl Strategy<Value = Option<String>> {
            prop::option::of(v)
        }

        fn content() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => text().prop_map(string),
                1 => Just("null".to_owned()),
                1 => text().prop_map(|t| format!(r#"[{{"type":"text","text":{}}}]"#, string(t))),
            ]
        }

        fn choice(colon: &'static str) -> impl Strategy<Value = String> {
            (
                maybe(content()),
                rarely(5, text().prop_map(string)),
                rarely(
                    5,
                    Just(r#"[{"index":0,"function":{"name":"f","arguments":"{}"}}]"#.to_owned()),
                ),
                maybe(prop_oneof![
                    4 => Just("null".to_owned()),
                    1 => Just(r#""stop""#.to_owned())
                ]),
                maybe(prop_oneof![
                    Just("null".to_owned()),
                    Just(r#"{"content":null}"#.to_owned()),
                    text().prop_map(|t| format!(r#"{{"content":[{{"token":{}}}]}}"#, string(t))),
                ]),
                any::<bool>(),
                any::<u64>(),
                // OpenAI sends `"refusal":null` in a stream's first chunk.
                prop::option::weighted(
                    0.3,
                    (
                        prop::sample::select(vec!["refusal", "reasoning"]),
                        prop_oneof![
                            3 => Just("null".to_owned()),
                            1 => text().prop_map(string),
                        ],
                    ),
                ),
            )
                .prop_map(
                    move |(content, reasoning, calls, finish, logprobs, role, seed, other)| {
                        let mut delta = Vec::new();
                        if role {
                            delta.push(("role", r#""assistant""#.to_owned()));
                        }
                        if let Some(c) = content {
                            delta.push(("content", c));
                        }
                        if let Some(r) = reasoning {
                            delta.push(("reasoning_content", r));
                        }
                        if let Some(c) = calls {
                            delta.push(("tool_calls", c));
                        }
                        if let Some((name, text)) = other {
                            delta.push((name, text));
                        }
                        let mut fields =
                            vec![("index", "0".to_owned()), ("delta", object(delta, colon))];
                        fields.extend(finish.map(|f| ("finish_reason", f)));
                        fields.extend(logprobs.map(|l| ("logprobs", l)));
                        turned(fields, seed, colon)
                    },
                )
        }

        fn chunk() -> impl Strategy<Value = String> {
            prop::sample::select(vec![":", ": ", " : "]).prop_flat_map(|colon| {
                (
                    prop_oneof![
                        4 => prop::collection::vec(choice(colon), 1..=1),
                        1 => prop::collection::vec(choice(colon), 0..3),
                    ],
                    maybe(prop_oneof![
                        Just("null".to_owned()),
                        prop::sample::select(vec!["default", "flex", "priority", "scale"])
                            .prop_map(|t| format!("\"{t}\"")),
                        text().prop_map(string),
                    ]),
                    maybe(prop_oneof![
                        4 => Just("null".to_owned()),
                        1 => Just(
                            r#"{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}"#
                                .to_owned()
                        ),
                    ]),
                    prop::option::weighted(0.1, Just(r#"{"message":"x"}"#.to_owned())),
                    any::<u64>(),
                )
                    .prop_map(move |(choices, tier, usage, error, seed)| {
                        let mut fields = vec![
                            ("id", r#""chatcmpl-1""#.to_owned()),
                            ("object", r#""chat.completion.chunk""#.to_owned()),
                            ("choices", format!("[{}]", choices.join(","))),
                        ];
                        fields.extend(tier.map(|t| ("service_tier", t)));
                        fields.extend(usage.map(|u| ("usage", u)));
                        fields.extend(error.map(|e| ("error", e)));
                        turned(fields, seed, colon)
                    })
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn on_what_the_fast_way_accepts(data in chunk()) {
                if let Some(plain) = plain_chunk(&data) {
                    prop_assert_eq!(Some(plain), parsed(&data), "{}", data);
                }
            }
        }

        /// The property above is only worth something if the chunks it is
        /// tried on are often accepted, and often not.
        #[test]
        fn the_chunks_tried_are_often_read_the_fast_way() {
            use proptest::strategy::ValueTree as _;
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let strategy = chunk();
            let tried = 2_000;
            let accepted = (0..tried)
                .filter(|_| {
                    let data = strategy.new_tree(&mut runner).unwrap().current();
                    plain_chunk(&data).is_some()
                })
                .count();
            assert!(
                (tried / 5..tried * 4 / 5).contains(&accepted),
                "{accepted} of {tried} accepted"
            );
        }
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
