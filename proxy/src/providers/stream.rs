//! Streamed answers: upstream SSE bytes in, OpenAI `chat.completion.chunk`
//! SSE bytes out, usage measured on the way.
//!
//! [`StreamTranslator`] is a pure state machine (no I/O, no clock after
//! construction): feed it whatever the upstream body yields, in any chunking,
//! and send what it returns to the client. The output and the usage do not
//! depend on how the input was split.
//!
//! Usage: [`StreamTranslator::usage_so_far`] is valid at any moment, so a
//! cancelled stream can be charged for what it consumed. Until the provider's
//! final usage has arrived the result is marked `estimated` and its output
//! count is at least the estimate from the streamed text (UTF-8 bytes / 4,
//! rounded up, see [`super::estimate_output_tokens`]). Input tokens are what the
//! provider reported so far (Anthropic and Gemini report them early; OpenAI
//! only at the end, so a cut OpenAI stream reports 0 input and the caller
//! should use its own prompt estimate).
//!
//! Ending: the client always gets `data: [DONE]` last. If the client asked for
//! `stream_options.include_usage`, a final chunk with `choices: []` and the
//! usage comes before it; if not, such a chunk from an OpenAI-compatible
//! provider (which Tollgate always asks for) is hidden. A stream that ends
//! before the provider said it finished gets an OpenAI-style error event.

use super::openai::{
    ChatChunk, ChunkChoice, Delta, ErrorBody, FinishReason, FunctionCallDelta, Role, ToolCallDelta,
};
use super::response::ResponseMeta;
use super::routing::ProviderKind;
use super::sse::{SseEvent, SseParser};
use super::usage::{estimate_output_tokens, Usage};
use super::{anthropic, gemini, passthrough};
use bytes::Bytes;

/// Translates one upstream SSE stream into OpenAI's stream for the client.
#[derive(Debug)]
pub struct StreamTranslator {
    kind: ProviderKind,
    parser: SseParser,
    handler: Handler,
    ctx: StreamCtx,
    finished: bool,
}

#[derive(Debug)]
enum Handler {
    PassThrough(passthrough::StreamHandler),
    Anthropic(anthropic::StreamHandler),
    Gemini(gemini::StreamHandler),
}

impl StreamTranslator {
    /// `model` is reported in chunks when the provider does not name one.
    pub fn new(kind: ProviderKind, client_wants_usage: bool, model: &str) -> Self {
        Self::with_meta(kind, client_wants_usage, ResponseMeta::new(model))
    }

    /// Like [`StreamTranslator::new`] with a fixed id and timestamp (tests,
    /// replays).
    pub fn with_meta(kind: ProviderKind, client_wants_usage: bool, meta: ResponseMeta) -> Self {
        let handler = match kind {
            ProviderKind::OpenAi | ProviderKind::Xai | ProviderKind::Custom => {
                Handler::PassThrough(passthrough::StreamHandler)
            }
            ProviderKind::Anthropic => Handler::Anthropic(anthropic::StreamHandler::default()),
            ProviderKind::Gemini => Handler::Gemini(gemini::StreamHandler::default()),
        };
        StreamTranslator {
            kind,
            parser: SseParser::default(),
            handler,
            ctx: StreamCtx::new(meta, client_wants_usage),
            finished: false,
        }
    }

    /// Feeds upstream bytes; returns the bytes to send to the client (often
    /// empty while an event is incomplete).
    pub fn push(&mut self, upstream: &[u8]) -> Bytes {
        if self.finished {
            return Bytes::new();
        }
        for event in self.parser.push(upstream) {
            self.dispatch(&event);
        }
        if self.parser.oversized() {
            // An event past [`super::sse::MAX_SSE_EVENT_BYTES`]: the stream
            // ends here as a cut one does, charged what it consumed.
            tracing::warn!(
                limit = super::sse::MAX_SSE_EVENT_BYTES,
                "a provider's stream event grew past the limit; the stream ends here"
            );
            let mut out = std::mem::take(&mut self.ctx.out);
            out.extend_from_slice(&self.finish());
            return Bytes::from(out);
        }
        Bytes::from(std::mem::take(&mut self.ctx.out))
    }

    /// The client stream is closed ([`StreamTranslator::finish`]): nothing
    /// more is read.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The upstream body ended (or the caller gives up): flushes a pending
    /// event and closes the client stream. Idempotent; later pushes are ignored.
    pub fn finish(&mut self) -> Bytes {
        if self.finished {
            return Bytes::new();
        }
        if let Some(event) = self.parser.finish() {
            self.dispatch(&event);
        }
        self.finished = true;
        if !self.ctx.done_sent {
            if self.ctx.completed {
                self.ctx.emit_usage_and_done();
            } else {
                if !self.ctx.failed {
                    // Tollgate's own notice, not the provider's error: the
                    // stream was cut (network, shutdown), so what the
                    // provider did is still charged ([`Self::upstream_failed`]
                    // stays false).
                    self.ctx.emit_json(&ErrorBody::new(
                        "server_error",
                        "the provider's stream ended before the answer was complete",
                    ));
                }
                self.ctx.emit_done();
            }
        }
        Bytes::from(std::mem::take(&mut self.ctx.out))
    }

    /// Usage consumed so far; `estimated` until the provider's final count.
    pub fn usage_so_far(&self) -> Usage {
        let mut usage = self.ctx.usage;
        if !self.ctx.usage_final {
            // Audio at the provider's published rate (OpenAI: 10 a second).
            let audio = (u128::from(self.ctx.audio_output_micros)
                * u128::from(crate::estimate::audio_tokens_per_second(self.kind)))
            .div_ceil(1_000_000);
            let audio = u64::try_from(audio).unwrap_or(u64::MAX);
            usage.audio_output_tokens = usage.audio_output_tokens.max(audio);
            let estimate = estimate_output_tokens(self.ctx.completion_bytes).saturating_add(audio);
            usage.output_tokens = usage.output_tokens.max(estimate);
            usage.estimated = true;
        }
        usage
    }

    /// Whether the answer has begun: text, reasoning text, a tool call or
    /// audio has come, or the provider has reported output.
    pub fn output_started(&self) -> bool {
        self.ctx.completion_bytes > 0 || self.ctx.audio_output_micros > 0 || self.output_reported()
    }

    /// Whether the provider has reported output (Gemini does with every
    /// chunk, cumulatively; OpenAI's format once, at the end, or with every
    /// chunk on some servers), which then includes any reasoning it did not
    /// stream. A report of 0 so far (a server reporting usage with its role
    /// chunk) is not one.
    pub fn output_reported(&self) -> bool {
        self.ctx.usage.output_tokens > 0
    }

    /// Whether the provider signalled a normal end of its answer.
    pub fn is_complete(&self) -> bool {
        self.ctx.completed
    }

    /// Whether the provider sent an error event inside the stream.
    pub fn upstream_failed(&self) -> bool {
        self.ctx.failed
    }

    fn dispatch(&mut self, event: &SseEvent) {
        if self.ctx.done_sent {
            return;
        }
        match &mut self.handler {
            Handler::PassThrough(h) => h.on_event(event, &mut self.ctx),
            Handler::Anthropic(h) => h.on_event(event, &mut self.ctx),
            Handler::Gemini(h) => h.on_event(event, &mut self.ctx),
        }
    }
}

/// State shared by the per-provider handlers: what was measured, what was
/// sent, and the output buffer.
#[derive(Debug)]
pub(crate) struct StreamCtx {
    pub meta: ResponseMeta,
    pub client_wants_usage: bool,
    /// Provider-reported usage so far.
    pub usage: Usage,
    /// The provider's final usage has arrived.
    pub usage_final: bool,
    /// Bytes of completion text (content, tool arguments, reasoning).
    pub completion_bytes: u64,
    /// Audio output streamed so far, in microseconds.
    pub audio_output_micros: u64,
    /// The provider signalled a normal end.
    pub completed: bool,
    /// The provider sent an error event.
    pub failed: bool,
    /// A usage-only chunk has been sent to the client.
    pub usage_sent: bool,
    pub done_sent: bool,
    role_sent: bool,
    out: Vec<u8>,
}

impl StreamCtx {
    fn new(meta: ResponseMeta, client_wants_usage: bool) -> Self {
        StreamCtx {
            meta,
            client_wants_usage,
            usage: Usage::default(),
            usage_final: false,
            completion_bytes: 0,
            audio_output_micros: 0,
            completed: false,
            failed: false,
            usage_sent: false,
            done_sent: false,
            role_sent: false,
            out: Vec::new(),
        }
    }

    /// Counts completion text toward the estimate.
    pub fn count(&mut self, text: &str) {
        let bytes = u64::try_from(text.len()).unwrap_or(u64::MAX);
        self.completion_bytes = self.completion_bytes.saturating_add(bytes);
    }

    /// Sends one `data:` event verbatim (pass-through).
    pub fn emit_data(&mut self, data: &str) {
        for line in data.split('\n') {
            self.out.extend_from_slice(b"data: ");
            self.out.extend_from_slice(line.as_bytes());
            self.out.push(b'\n');
        }
        self.out.push(b'\n');
    }

    /// The first chunk, `{"role":"assistant","content":""}`, once.
    pub fn emit_role(&mut self) {
        if !self.role_sent {
            self.role_sent = true;
            let delta = Delta {
                role: Some(Role::Assistant),
                content: Some(String::new()),
                tool_calls: None,
            };
            self.emit_delta(delta, None);
        }
    }

    pub fn emit_text(&mut self, text: &str) {
        self.count(text);
        if text.is_empty() {
            return;
        }
        self.emit_role();
        let delta = Delta {
            content: Some(text.to_owned()),
            ..Delta::default()
        };
        self.emit_delta(delta, None);
    }

    /// A tool call's first piece (id and name), or a later arguments piece.
    pub fn emit_tool_call(&mut self, index: u32, start: Option<(&str, &str)>, arguments: &str) {
        self.count(arguments);
        if let Some((_, name)) = start {
            self.count(name);
        }
        self.emit_role();
        let call = ToolCallDelta {
            index,
            id: start.map(|(id, _)| id.to_owned()),
            kind: start.map(|_| "function".to_owned()),
            function: Some(FunctionCallDelta {
                name: start.map(|(_, name)| name.to_owned()),
                arguments: Some(arguments.to_owned()),
            }),
        };
        let delta = Delta {
            tool_calls: Some(vec![call]),
            ..Delta::default()
        };
        self.emit_delta(delta, None);
    }

    pub fn emit_finish(&mut self, reason: FinishReason) {
        self.emit_role();
        self.emit_delta(Delta::default(), Some(reason));
    }

    /// The usage chunk (if the client wants it) and `[DONE]`.
    pub fn emit_usage_and_done(&mut self) {
        if self.done_sent {
            return;
        }
        if self.client_wants_usage && self.usage_final && !self.usage_sent {
            self.usage_sent = true;
            let chunk = self.chunk(Vec::new(), Some(self.usage));
            self.emit_json(&chunk);
        }
        self.emit_done();
    }

    pub fn emit_done(&mut self) {
        if !self.done_sent {
            self.done_sent = true;
            self.out.extend_from_slice(b"data: [DONE]\n\n");
        }
    }

    pub fn emit_error(&mut self, error: &ErrorBody) {
        self.failed = true;
        self.emit_json(error);
    }

    fn emit_delta(&mut self, delta: Delta, finish_reason: Option<FinishReason>) {
        let choice = ChunkChoice {
            index: 0,
            delta,
            finish_reason,
        };
        let chunk = self.chunk(vec![choice], None);
        self.emit_json(&chunk);
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.meta.created_unix_s,
            model: self.meta.model.clone(),
            choices,
            usage: usage.map(|u| u.to_openai()),
        }
    }

    fn emit_json<T: serde::Serialize>(&mut self, value: &T) {
        match serde_json::to_vec(value) {
            Ok(json) => {
                self.out.extend_from_slice(b"data: ");
                self.out.extend_from_slice(&json);
                self.out.extend_from_slice(b"\n\n");
            }
            Err(err) => tracing::error!(error = %err, "could not encode a stream chunk"),
        }
    }
}
