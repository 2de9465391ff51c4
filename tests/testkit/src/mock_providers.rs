//! Mock AI providers: OpenAI, Anthropic and Gemini look-alikes for tests.
//!
//! Each [`MockProvider`] is an axum app on `127.0.0.1:0` that checks requests
//! the way the real API does (auth headers, required fields, roles) and
//! refuses in that provider's error shape, and answers in its real wire
//! format (JSON, or SSE sent in several writes with the provider's framing),
//! modelled on the recordings in `proxy/tests/fixtures/`.
//!
//! Behaviour is set with [`MockBehavior`]: reply text, token counts (fixed or
//! derived deterministically), a delay between streamed writes (so a test
//! can cancel mid-stream), a forced error status, a stream cut (the
//! connection drops after N writes), and a tool call in each provider's shape
//! (Gemini 3's signed; its mock, like the API, refuses a model turn whose
//! function call comes back unsigned). Every request, refused or not, is
//! recorded with its headers and body.
//!
//! Deterministic counts: input tokens = `input_tokens` or ⌈prompt text
//! characters / 4⌉; the reply is cut into word pieces (one per streamed
//! delta) and output tokens = `output_tokens` or the number of pieces sent;
//! a request's output cap (`max_tokens`, …) truncates the pieces and ends
//! with the provider's "length" reason. `cached_input_tokens` is reported as a
//! part of the input and `reasoning_tokens` on top of the output, each in
//! the provider's own convention, so the normalised usage is the same for all
//! three providers (Anthropic reports no reasoning split).

mod anthropic;
mod gemini;
mod openai;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Which API the mock speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockKind {
    OpenAi,
    Anthropic,
    Gemini,
    /// xAI: OpenAI's wire format, except that `completion_tokens` leaves out
    /// the reasoning tokens, which `total_tokens` counts.
    Xai,
}

/// How the mock answers. Changeable while it runs.
#[derive(Debug, Clone)]
pub struct MockBehavior {
    pub reply_text: String,
    /// `None`: ⌈prompt text characters / 4⌉.
    pub input_tokens: Option<u64>,
    /// `None`: one per reply piece sent.
    pub output_tokens: Option<u64>,
    /// Part of the input reported as read from cache.
    pub cached_input_tokens: u64,
    /// Part of the input reported by the Anthropic mock as written to a
    /// 1-hour cache (`cache_creation.ephemeral_1h_input_tokens`).
    pub cache_write_1h_input_tokens: u64,
    /// Reasoning tokens, reported on top of the output.
    pub reasoning_tokens: u64,
    /// Pause before each streamed write after the first.
    pub chunk_delay: Duration,
    /// Answer every request with this error instead (after auth checks).
    pub error: Option<MockError>,
    /// Streams: drop the connection after this many writes.
    pub cut_after_writes: Option<usize>,
    /// Wait this long before answering (a model still thinking).
    pub answer_delay: Duration,
    /// Non-streamed OpenAI-style and Gemini answers: leave out the usage
    /// block, as some OpenAI-compatible servers do.
    pub omit_usage: bool,
    /// Answer with this tool call after the reply text (set the text empty
    /// for a call alone, as models usually answer), in the provider's shape.
    pub tool_call: Option<MockToolCall>,
    /// Tokens counted per second of a WAV `input_audio` part (its data at
    /// the header's sample rate × channels × bytes per sample, rounded up),
    /// on top of the input and reported as
    /// `prompt_tokens_details.audio_tokens`. OpenAI publishes 10.
    pub audio_tokens_per_second: u64,
}

/// A tool call the mock makes.
#[derive(Debug, Clone, PartialEq)]
pub struct MockToolCall {
    pub name: String,
    /// A JSON object; `{}` for a tool without parameters, which Anthropic
    /// streams as one empty `partial_json` and Gemini sends without `args`.
    pub arguments: Value,
    /// Gemini: the `thoughtSignature` on the call's part (Gemini 3).
    pub thought_signature: Option<String>,
}

/// `text` in two pieces, cut at a character boundary near the middle (a
/// tool call's arguments streamed in two deltas).
fn halves(text: &str) -> (&str, &str) {
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text.split_at(mid)
}

impl MockToolCall {
    fn has_arguments(&self) -> bool {
        self.arguments.as_object().is_some_and(|a| !a.is_empty())
    }
}

impl Default for MockBehavior {
    fn default() -> Self {
        MockBehavior {
            reply_text: "Hello from the mock provider, nice to meet you.".to_owned(),
            input_tokens: None,
            output_tokens: None,
            cached_input_tokens: 0,
            cache_write_1h_input_tokens: 0,
            reasoning_tokens: 0,
            chunk_delay: Duration::ZERO,
            error: None,
            cut_after_writes: None,
            answer_delay: Duration::ZERO,
            omit_usage: false,
            tool_call: None,
            audio_tokens_per_second: 10,
        }
    }
}

/// A forced error: HTTP status and message, sent in the provider's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockError {
    pub status: u16,
    pub message: String,
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub path: String,
    pub query: Option<String>,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct Shared {
    kind: MockKind,
    behavior: Mutex<MockBehavior>,
    requests: Mutex<Vec<RecordedRequest>>,
}

/// A running mock provider; stops when dropped.
pub struct MockProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl MockProvider {
    /// Starts a mock with the default behaviour.
    pub async fn start(kind: MockKind) -> std::io::Result<MockProvider> {
        Self::start_with(kind, MockBehavior::default()).await
    }

    pub async fn start_with(
        kind: MockKind,
        behavior: MockBehavior,
    ) -> std::io::Result<MockProvider> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            kind,
            behavior: Mutex::new(behavior),
            requests: Mutex::new(Vec::new()),
        });
        // Providers take big requests (OpenAI up to 50 MB of images in
        // one, Anthropic 32 MB), not axum's default 2 MB.
        let app = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MockProvider { addr, shared, task })
    }

    /// Where it listens (plain HTTP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn kind(&self) -> MockKind {
        self.shared.kind
    }

    /// What to configure as the provider's base URL: includes `/v1` for
    /// OpenAI and xAI (like `https://api.openai.com/v1`), bare host otherwise.
    pub fn base_url(&self) -> String {
        match self.shared.kind {
            MockKind::OpenAi | MockKind::Xai => format!("http://{}/v1", self.addr),
            MockKind::Anthropic | MockKind::Gemini => format!("http://{}", self.addr),
        }
    }

    pub fn set_behavior(&self, behavior: MockBehavior) {
        *self.shared.behavior.lock() = behavior;
    }

    pub fn update_behavior(&self, change: impl FnOnce(&mut MockBehavior)) {
        change(&mut self.shared.behavior.lock());
    }

    /// Answer every request with `status` in the provider's error shape.
    pub fn fail_with(&self, status: u16, message: &str) {
        self.update_behavior(|b| {
            b.error = Some(MockError {
                status,
                message: message.to_owned(),
            })
        });
    }

    /// Number of requests received, refused ones included.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().len()
    }

    pub fn requests_seen(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.requests.lock().last().cloned()
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    version: axum::http::Version,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = RecordedRequest {
        method: method.to_string(),
        version: format!("{version:?}"),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    shared.requests.lock().push(request.clone());
    let behavior = shared.behavior.lock().clone();
    if !behavior.answer_delay.is_zero() {
        tokio::time::sleep(behavior.answer_delay).await;
    }
    match shared.kind {
        MockKind::OpenAi => openai::handle(&request, &behavior, openai::Convention::OpenAi),
        MockKind::Xai => openai::handle(&request, &behavior, openai::Convention::Xai),
        MockKind::Anthropic => anthropic::handle(&request, &behavior),
        MockKind::Gemini => gemini::handle(&request, &behavior),
    }
}

/// What one answer contains, decided from the behaviour and the request.
struct Reply {
    pieces: Vec<String>,
    truncated: bool,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_write_1h_input_tokens: u64,
    reasoning_tokens: u64,
    /// Part of `input_tokens`.
    audio_input_tokens: u64,
    tool_call: Option<MockToolCall>,
}

impl Reply {
    fn plan(behavior: &MockBehavior, prompt: &Value, max_output_tokens: Option<u64>) -> Reply {
        let mut pieces: Vec<String> = behavior
            .reply_text
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
        let cap = max_output_tokens.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        let truncated = cap.is_some_and(|cap| cap < pieces.len());
        if let (true, Some(cap)) = (truncated, cap) {
            pieces.truncate(cap);
        }
        let sent = u64::try_from(pieces.len()).unwrap_or(u64::MAX);
        let output = match (behavior.output_tokens, max_output_tokens) {
            (Some(n), Some(max)) => n.min(max),
            (Some(n), None) => n,
            (None, _) => sent,
        };
        let audio = (u128::from(wav_micros(prompt)) * u128::from(behavior.audio_tokens_per_second))
            .div_ceil(1_000_000);
        let audio = u64::try_from(audio).unwrap_or(u64::MAX);
        let input = behavior
            .input_tokens
            .unwrap_or_else(|| text_chars(prompt).div_ceil(4))
            .saturating_add(audio);
        Reply {
            pieces,
            truncated,
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: behavior.cached_input_tokens.min(input),
            cache_write_1h_input_tokens: behavior
                .cache_write_1h_input_tokens
                .min(input.saturating_sub(behavior.cached_input_tokens)),
            reasoning_tokens: behavior.reasoning_tokens,
            audio_input_tokens: audio,
            tool_call: behavior.tool_call.clone(),
        }
    }

    fn text(&self) -> String {
        self.pieces.concat()
    }
}

/// A PCM WAV file of `seconds` of silence, as the OpenAI mock reads
/// `input_audio` parts.
pub fn pcm_wav(sample_rate: u32, channels: u16, bits: u16, seconds: u32) -> Vec<u8> {
    let block = channels * bits / 8;
    let data_len = sample_rate * u32::from(block) * seconds;
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&channels.to_le_bytes());
    w.extend_from_slice(&sample_rate.to_le_bytes());
    w.extend_from_slice(&(sample_rate * u32::from(block)).to_le_bytes());
    w.extend_from_slice(&block.to_le_bytes());
    w.extend_from_slice(&bits.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    w.resize(w.len() + data_len as usize, 0);
    w
}

/// Microseconds of the WAV `input_audio` parts (Gemini: `audio/wav`
/// `inlineData`) under `value`, as ffmpeg
/// reads a canonical 44-byte PCM header: the bytes after it at sample rate
/// × channels × bytes per sample.
fn wav_micros(value: &Value) -> u64 {
    use base64::Engine;
    match value {
        Value::Array(items) => items.iter().map(wav_micros).sum(),
        Value::Object(map) => match (map.get("data"), map.get("format").or(map.get("mimeType"))) {
            // OpenAI's `input_audio` (`format`), Gemini's `inlineData` (`mimeType`).
            (Some(Value::String(data)), Some(Value::String(format)))
                if format == "wav" || format == "audio/wav" =>
            {
                let Ok(wav) = base64::engine::general_purpose::STANDARD.decode(data) else {
                    return 0;
                };
                let field = |at: usize, width: usize| {
                    wav.get(at..at + width).map_or(0, |b| {
                        b.iter()
                            .rev()
                            .fold(0u64, |n, byte| n << 8 | u64::from(*byte))
                    })
                };
                let rate = field(24, 4) * field(22, 2) * field(34, 2).div_ceil(8);
                let data_bytes = u64::try_from(wav.len().saturating_sub(44)).unwrap_or(0);
                (data_bytes * 1_000_000).div_ceil(rate.max(1))
            }
            _ => map.values().map(wav_micros).sum(),
        },
        _ => 0,
    }
}

/// Characters of the strings under `content`, `text` and `system` keys.
fn text_chars(value: &Value) -> u64 {
    match value {
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("content" | "text" | "system", Value::String(s)) => {
                    u64::try_from(s.chars().count()).unwrap_or(u64::MAX)
                }
                (_, v) => text_chars(v),
            })
            .sum(),
        _ => 0,
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An SSE answer written in `writes` pieces, `delay` apart; after
/// `cut_after` writes the connection is dropped.
fn sse_response(writes: Vec<String>, delay: Duration, cut_after: Option<usize>) -> Response {
    let cut = cut_after.filter(|&n| n < writes.len());
    let mut items: Vec<Result<Bytes, std::io::Error>> =
        writes.into_iter().map(|w| Ok(Bytes::from(w))).collect();
    if let Some(n) = cut {
        items.truncate(n);
        items.push(Err(std::io::Error::other(
            "mock provider dropped the stream",
        )));
    }
    let stream = futures::stream::unfold(
        (items.into_iter(), true),
        move |(mut items, first)| async move {
            let item = items.next()?;
            if item.is_err() {
                // Let what was written reach the client before the drop.
                tokio::time::sleep(delay.max(Duration::from_millis(50))).await;
            } else if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((item, (items, false)))
        },
    );
    (
        StatusCode::OK,
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Seconds since the Unix epoch (for `created` fields).
fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A short unique-enough id suffix per answer.
fn answer_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
}
