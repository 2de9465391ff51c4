//! What a request may cost at most, before it is sent: input tokens counted
//! with a real tokenizer (the model's encoding for OpenAI, [`Encoding`];
//! `o200k_base` for other providers, widened for tokenizers that count more,
//! [`input_margin_percent`]),
//! the output cap, and the exact USD of both. The hold covers this maximum
//! (invariant 1); the gate may lower the output to what the budget affords
//! ([`ledger::gate::decide::OutputFlex`]).

use crate::pricing::{cost, cost_at, ModelPrice, SearchContextSize, ServiceTier};
use crate::providers::openai::{ChatRequest, ContentPart, MessageContent};
use crate::providers::{anthropic_sends_tools, ProviderKind, Usage};
use ledger::gate::decide::OutputFlex;
use rust_decimal::Decimal;
use schemas::{round_usd, Amounts, Rounding, Unit};
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

/// Tokens OpenAI adds per message (role and separators) and to prime the reply.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_REPLY: u64 = 3;
/// An image part at `detail: "low"` on GPT-4o's tiling: a fixed 85 tokens.
const LOW_DETAIL_IMAGE_TOKENS: u64 = 85;
/// Any other image part, whose size is not known before the call: the most
/// GPT-4o's tiling can charge (85 + 170 per 512-px tile, 8 tiles for an
/// image scaled to 768 × 2048); GPT-4.1, GPT-5 and the o-series tile with
/// smaller figures. Anthropic's largest image (≈ 1,600 tokens) and xAI's
/// (≈ 1,800) are within it once the provider margin is added
/// ([`input_margin_percent`]). The commit records what the provider reports.
const IMAGE_TOKENS: u64 = 85 + 170 * 8;

/// The most one image part may cost on a provider and model, in input
/// tokens before the provider margin, at `detail: "low"` and otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageTokens {
    pub low: u64,
    pub high: u64,
}

impl ImageTokens {
    /// Only OpenAI's tiling honours `detail: "low"`; Anthropic, Gemini,
    /// xAI and unknown models ignore it, so it lowers nothing there.
    pub fn for_model(kind: ProviderKind, model: &str) -> ImageTokens {
        let any_detail = |tokens| ImageTokens {
            low: tokens,
            high: tokens,
        };
        match kind {
            ProviderKind::OpenAi => {
                let model = model.strip_prefix("ft:").unwrap_or(model);
                let is = |prefixes: &[&str]| prefixes.iter().any(|p| model.starts_with(p));
                // Patch-based models: at most 1,536 32-px patches, times the
                // model's multiplier; no low detail.
                let patches = |multiplier_percent: u64| {
                    any_detail((1_536 * multiplier_percent).div_ceil(100))
                };
                if is(&["gpt-4o-mini"]) {
                    // GPT-4o's tiling at 2,833 + 5,667 per tile.
                    ImageTokens {
                        low: 2_833,
                        high: 2_833 + 5_667 * 8,
                    }
                } else if is(&["gpt-4.1-nano", "gpt-5-nano"]) {
                    patches(246)
                } else if is(&["o4-mini"]) {
                    patches(172)
                } else if is(&["gpt-4.1-mini", "gpt-5-mini"]) {
                    patches(162)
                } else {
                    ImageTokens {
                        low: LOW_DETAIL_IMAGE_TOKENS,
                        high: IMAGE_TOKENS,
                    }
                }
            }
            // 258 per 768-px tile of an image scaled to at most 3,072 px a side.
            ProviderKind::Gemini => any_detail(258 * 16),
            ProviderKind::Anthropic | ProviderKind::Xai => any_detail(IMAGE_TOKENS),
            // An unknown vision model: open ones count up to 16,384 tokens
            // an image (Qwen2-VL at its default largest size).
            ProviderKind::Custom => any_detail(16_384),
        }
    }
}
/// Smallest answer worth sending when the budget is nearly spent.
pub const MIN_OUTPUT_TOKENS: u64 = 16;
/// The system prompt Anthropic adds to a request with tools: the largest
/// count of its table (Claude 3 Opus with `tool_choice: auto`, 530 tokens;
/// current models 346 or fewer). Billed as input, so held as input.
const ANTHROPIC_TOOL_PROMPT_TOKENS: u64 = 530;

/// How many tokens `kind`'s own tokenizer may count, per 100 that
/// `o200k_base` counts for the same request: the hold is a maximum, and a
/// provider that counts more than the estimate would spend past it (and
/// past a dollar cap) on every call. OpenAI's current models count with
/// `o200k_base` itself. Claude's tokenizer is not published; compared with
/// Anthropic's `count_tokens`, tiktoken estimates are reported to fall
/// short by up to 20–50 %, most on code. Gemini's SentencePiece and Grok's
/// tokenizers count English 5–15 % above `o200k_base`. A custom provider's
/// model is unknown (one with a 32k vocabulary, such as Mistral 7B, counts
/// far more). A hold only reserves: the commit records what the provider
/// reports.
pub fn input_margin_percent(kind: ProviderKind) -> u64 {
    match kind {
        ProviderKind::OpenAi => 100,
        ProviderKind::Gemini | ProviderKind::Xai => 125,
        ProviderKind::Anthropic | ProviderKind::Custom => 150,
    }
}

/// The encodings requests are counted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `o200k_base`: GPT-4o, GPT-4.1, GPT-4.5, GPT-5 and the o-series; the
    /// estimate for every other provider ([`input_margin_percent`]).
    O200k,
    /// `cl100k_base`: GPT-4 (`gpt-4`, `gpt-4-turbo`, …) and GPT-3.5, which
    /// count most text, and non-English text by far, in more tokens.
    Cl100k,
}

impl Encoding {
    /// The encoding OpenAI counts `model` with (a fine-tuned `ft:gpt-4-…`
    /// as its base model; `gpt-35-turbo` is Azure's name for GPT-3.5);
    /// `o200k_base` for other providers.
    pub fn for_model(kind: ProviderKind, model: &str) -> Encoding {
        let model = model.strip_prefix("ft:").unwrap_or(model);
        let newer_gpt4 = ["gpt-4o", "gpt-4.1", "gpt-4.5"]
            .iter()
            .any(|p| model.starts_with(p));
        let legacy = model.starts_with("gpt-3.5")
            || model.starts_with("gpt-35")
            || (model.starts_with("gpt-4") && !newer_gpt4);
        match kind {
            ProviderKind::OpenAi if legacy => Encoding::Cl100k,
            _ => Encoding::O200k,
        }
    }
}

fn tokenizer(encoding: Encoding) -> Option<&'static CoreBPE> {
    fn load(
        cell: &'static OnceLock<Option<CoreBPE>>,
        load: fn() -> anyhow::Result<CoreBPE>,
    ) -> Option<&'static CoreBPE> {
        cell.get_or_init(|| match load() {
            Ok(bpe) => Some(bpe),
            Err(e) => {
                tracing::error!(error = %e, "tokenizer unavailable; counting input as characters / 2");
                None
            }
        })
        .as_ref()
    }
    static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    match encoding {
        Encoding::O200k => load(&O200K, tiktoken_rs::o200k_base),
        Encoding::Cl100k => load(&CL100K, tiktoken_rs::cl100k_base),
    }
}

/// Loads the tokenizers now rather than on a first request, which would
/// wait for it.
pub fn warm_up() {
    let _ = tokenizer(Encoding::O200k);
    let _ = tokenizer(Encoding::Cl100k);
}

fn count(text: &str, encoding: Encoding) -> u64 {
    let key = Counted::key(text, encoding);
    if let Some(tokens) = counted().get(&key) {
        return tokens;
    }
    // Counted without the lock: another thread may count the same text
    // meanwhile, to the same result.
    let tokens = count_uncached(text, encoding);
    counted().insert(key, tokens);
    tokens
}

/// The longest run of whitespace or of anything else, in bytes, given to
/// the tokenizer whole. Its merge step takes time quadratic in a piece's
/// length, and a run of letters (or of spaces) is one piece: 100 KB of
/// `a` took 3.7 s here, so one request of a few megabytes would hold a
/// thread for minutes. Longer runs are counted in pieces of at most this
/// many bytes, which only stops merges across the cuts (a token or so more
/// per cut, `long_runs_are_counted_in_bounded_pieces`), and counting takes
/// time linear in the length (`estimate-bench`: a megabyte of unbroken letters
/// ≈ 0.15 s, as for ordinary text). Tokens are far shorter.
const LONGEST_RUN: usize = 128;

fn count_uncached(text: &str, encoding: Encoding) -> u64 {
    let Some(bpe) = tokenizer(encoding) else {
        return (text.len() as u64).div_ceil(2);
    };
    let mut tokens = 0;
    for piece in bounded_runs(text) {
        tokens += bpe.encode_ordinary(piece).len() as u64;
    }
    tokens
}

/// `text` in consecutive pieces, cut only inside runs of whitespace or of
/// non-whitespace longer than [`LONGEST_RUN`] bytes (at a character
/// boundary), so no run in a piece is longer. Ordinary text is one piece.
fn bounded_runs(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut run_start = 0;
        let mut run_blank = None;
        for (i, c) in rest.char_indices() {
            let blank = c.is_whitespace();
            if run_blank != Some(blank) {
                run_blank = Some(blank);
                run_start = i;
            } else if i - run_start >= LONGEST_RUN {
                let (piece, after) = rest.split_at(i);
                rest = after;
                return Some(piece);
            }
        }
        Some(std::mem::take(&mut rest))
    })
}

/// Texts whose counts are remembered before the older half is forgotten.
const COUNTED_TEXTS: usize = 8_192;

/// The process's remembered counts, shared by the HTTP threads and the
/// blocking pool (where long prompts are counted): locked only to look a
/// count up or put one in.
fn counted() -> std::sync::MutexGuard<'static, Counted> {
    static COUNTED: OnceLock<std::sync::Mutex<Counted>> = OnceLock::new();
    COUNTED
        .get_or_init(Default::default)
        .lock()
        // Nothing panics while it is held; a poisoned one holds whole counts.
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type CountKey = (Encoding, usize, u64);

/// Token counts of the texts counted lately. A conversation resends its
/// whole history every turn, and counting is slow (≈ 2–3 ms for 11 KB of
/// new text here; `tollgate-bench`'s `estimate-bench` measures it), so each
/// message is counted once rather than once per turn. Two generations
/// approximate least-recently-used: when the current one is full it becomes
/// the previous and the one before is dropped; a hit in the previous moves
/// back. Keyed by the encoding, the text's length and a 64-bit hash keyed
/// per process. A collision (about one in 2^64 per pair of texts of the
/// same length) would misjudge a hold's size, and the charge only of an
/// answer without usage, which is charged the count.
#[derive(Default)]
struct Counted {
    current: std::collections::HashMap<CountKey, u64>,
    previous: std::collections::HashMap<CountKey, u64>,
}

impl Counted {
    fn key(text: &str, encoding: Encoding) -> CountKey {
        use std::hash::BuildHasher;
        static KEYS: OnceLock<std::hash::RandomState> = OnceLock::new();
        (
            encoding,
            text.len(),
            KEYS.get_or_init(std::hash::RandomState::new).hash_one(text),
        )
    }

    fn get(&mut self, key: &CountKey) -> Option<u64> {
        if let Some(&tokens) = self.current.get(key) {
            return Some(tokens);
        }
        let tokens = self.previous.remove(key)?;
        self.insert(*key, tokens);
        Some(tokens)
    }

    fn insert(&mut self, key: CountKey, tokens: u64) {
        if self.current.len() >= COUNTED_TEXTS {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, tokens);
    }

    /// `text`'s count, remembered or counted now.
    #[cfg(test)]
    fn count(&mut self, text: &str, encoding: Encoding) -> u64 {
        let key = Counted::key(text, encoding);
        self.get(&key).unwrap_or_else(|| {
            let tokens = count_uncached(text, encoding);
            self.insert(key, tokens);
            tokens
        })
    }
}

/// Tokens an image part may cost at most.
fn image_tokens(part: &ContentPart, images: ImageTokens) -> u64 {
    match part.image_url.as_ref().and_then(|i| i.detail.as_deref()) {
        Some("low") => images.low,
        _ => images.high,
    }
}

/// Input tokens of a request's text: every message's text, refusals and
/// images, the tool declarations and a `response_format` schema (each
/// provider reads it as input: OpenAI's structured outputs, Gemini's
/// response schema, the tool it becomes for Anthropic). Audio and other
/// parts are bounded apart ([`Media`]).
pub fn input_tokens(req: &ChatRequest, encoding: Encoding, images: ImageTokens) -> u64 {
    let count = |text: &str| count(text, encoding);
    let mut total = TOKENS_PER_REPLY;
    for m in &req.messages {
        total += TOKENS_PER_MESSAGE + count(&m.text_content());
        if let Some(MessageContent::Parts(parts)) = &m.content {
            for p in parts {
                total += match p.kind.as_str() {
                    "image_url" => image_tokens(p, images),
                    "refusal" => p
                        .extra
                        .get("refusal")
                        .and_then(serde_json::Value::as_str)
                        .map_or(0, count),
                    _ => 0,
                };
            }
        }
        if let Some(calls) = &m.tool_calls {
            total += count(&serde_json::to_string(calls).unwrap_or_default());
        }
        // The author's name (OpenAI bills its tokens and one more), the id
        // a tool result answers, and whatever else the message carries and
        // is sent on as it came (a legacy `function_call`). An earlier
        // audio answer sent back is held apart ([`Media::audio_replies`]).
        if let Some(name) = &m.name {
            total += 1 + count(name);
        }
        if let Some(id) = &m.tool_call_id {
            total += count(id);
        }
        for (key, value) in &m.extra {
            if key != "audio" && !value.is_null() {
                total += count(&value.to_string());
            }
        }
    }
    if let Some(tools) = &req.tools {
        total += count(&serde_json::to_string(tools).unwrap_or_default());
    }
    // Legacy function declarations (`functions`), sent on as they came.
    if let Some(functions) = req.extra.get("functions").filter(|f| !f.is_null()) {
        total += count(&functions.to_string());
    }
    if let Some(format) = req.extra.get("response_format").filter(|f| !f.is_null()) {
        total += count(&format.to_string());
    }
    total
}

/// Tokens a provider counts per second of audio: OpenAI's published 10
/// (600 a minute); for others Gemini's 32, the most any publishes (a
/// custom provider may be Gemini's OpenAI-compatible endpoint, which takes
/// `input_audio` parts).
pub fn audio_tokens_per_second(kind: ProviderKind) -> u64 {
    match kind {
        ProviderKind::OpenAi => 10,
        _ => 32,
    }
}

/// The hold covers audio at twice the published rate: providers publish a
/// rate per minute, not how a clip is cut into tokens, and short clips are
/// reported to count more per second.
pub const AUDIO_MARGIN_PERCENT: u64 = 200;

/// The input a part of unknown size may cost when the model's context
/// window is not known (no `max_input_tokens` in its price): Gemini 1.5
/// Pro's, the largest of the built-in providers' models. A project that
/// sets the model's price with `max_input_tokens` bounds it there.
pub const UNKNOWN_CONTEXT_TOKENS: u64 = 2_000_000;

/// The most input Anthropic's API reads for any model without the
/// `context-1m` beta header: Claude Sonnet 4 and 4.5 read up to 1M tokens
/// only when the client sends that beta (passed on, see
/// [`ChatRequest::anthropic_beta`]); otherwise a longer request is refused
/// (and costs nothing) and their long-context prices, above 200k, never
/// apply. The table's `max_input_tokens` says 1M for some of them.
pub const ANTHROPIC_CONTEXT_TOKENS: u64 = 200_000;

/// The most input `req` may have read by `kind`, for a model whose table
/// entry says `listed`.
fn context_window(req: &ChatRequest, kind: ProviderKind, listed: Option<u64>) -> Option<u64> {
    match kind {
        ProviderKind::Anthropic if !req.anthropic_long_context() => {
            Some(listed.map_or(ANTHROPIC_CONTEXT_TOKENS, |l| {
                l.min(ANTHROPIC_CONTEXT_TOKENS)
            }))
        }
        _ => listed,
    }
}

/// The input a request held at `held` input tokens is read at most, which
/// picks its long-context price: the hold itself, or for Anthropic without
/// the 1M beta no more than it reads ([`ANTHROPIC_CONTEXT_TOKENS`]).
fn read_at_most(req: &ChatRequest, kind: ProviderKind, held: u64) -> u64 {
    context_window(req, kind, None).map_or(held, |context| held.min(context))
}

/// What a request carries besides text, images and tools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Media {
    /// The longest its `input_audio` parts may play, in microseconds
    /// ([`crate::media::audio_micros_at_most`]).
    pub audio_micros: u64,
    /// Earlier audio answers the conversation sends back by id (an
    /// assistant message's `audio: {"id": …}`), which OpenAI bills again as
    /// input audio. Each is at most one answer's output.
    pub audio_replies: u64,
    /// A part whose cost cannot be bounded from the request: a `file`
    /// (a PDF's text and page images, or an uploaded file by id) or a part
    /// type this proxy does not know. It may fill the model's context window.
    pub unbounded: bool,
    /// Audio whose length nothing here can read (a format or encoding the
    /// parsers do not know, data that is not base64): it may fill the
    /// context window, at the audio price.
    pub unbounded_audio: bool,
}

impl Media {
    pub fn of(req: &ChatRequest) -> Media {
        let mut media = Media::default();
        for m in &req.messages {
            if m.extra.get("audio").is_some_and(|a| !a.is_null()) {
                media.audio_replies += 1;
            }
            let Some(MessageContent::Parts(parts)) = &m.content else {
                continue;
            };
            for p in parts {
                match p.kind.as_str() {
                    "text" | "image_url" | "refusal" => {}
                    "input_audio" => {
                        let (data, format) = (audio_field(p, "data"), audio_field(p, "format"));
                        match crate::media::audio_micros_at_most(data, format) {
                            Some(micros) => {
                                media.audio_micros = media.audio_micros.saturating_add(micros);
                            }
                            None => media.unbounded_audio = true,
                        }
                    }
                    _ => media.unbounded = true,
                }
            }
        }
        media
    }

    /// Audio tokens at `per_second`, rounded up.
    pub fn audio_tokens(&self, per_second: u64) -> u64 {
        let tokens = (u128::from(self.audio_micros) * u128::from(per_second)).div_ceil(1_000_000);
        u64::try_from(tokens).unwrap_or(u64::MAX)
    }
}

/// Bytes of `input_audio` data in `req` (base64, as sent): what bounding
/// its length ([`Media::of`]) has to read.
pub fn audio_to_read(req: &ChatRequest) -> usize {
    req.messages
        .iter()
        .filter_map(|m| match &m.content {
            Some(MessageContent::Parts(parts)) => Some(parts),
            _ => None,
        })
        .flatten()
        .filter(|p| p.kind == "input_audio")
        .map(|p| audio_field(p, "data").len())
        .sum()
}

/// A field of an `input_audio` part's payload (`data`, `format`), or "".
fn audio_field<'a>(part: &'a ContentPart, name: &str) -> &'a str {
    part.extra
        .get("input_audio")
        .and_then(|a| a.get(name))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

/// Input counted before the call: what is charged when a provider reports none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountedInput {
    /// Every input token: text, images, tools and audio at the published rate.
    pub tokens: u64,
    /// The audio part of `tokens`.
    pub audio_tokens: u64,
    /// The call searches the web at a fee ([`web_search`]).
    pub web_search: Option<SearchContextSize>,
}

impl CountedInput {
    /// Puts the count into `usage` where the provider reported none: all
    /// of it when no input was reported (the prompt was still read; returns
    /// true), and the audio part when input came without an audio split
    /// (some OpenAI-compatible servers), so audio is priced as audio.
    pub fn fill_missing(&self, usage: &mut Usage) -> bool {
        let missing = usage.input_tokens == 0;
        if missing {
            usage.input_tokens = self.tokens;
        }
        if !usage.audio_input_reported && usage.audio_input_tokens == 0 {
            usage.audio_input_tokens = self.audio_tokens.min(usage.input_tokens);
        }
        // The answer does not say whether it searched: the request does.
        usage.web_search = usage.web_search.or(self.web_search);
        missing
    }
}

/// Whether the call searches the web at a fee, and with what context
/// size: on OpenAI, a model priced per search call
/// (`web_search_cost_per_call`) that is a search model
/// (`gpt-4o-search-preview`, which always searches) or is asked to
/// (`web_search_options`). Other providers are not sent a search tool.
pub fn web_search(
    req: &ChatRequest,
    kind: ProviderKind,
    model: &str,
    price: Option<&ModelPrice>,
) -> Option<SearchContextSize> {
    let options = req.extra.get("web_search_options");
    let searches = options.is_some_and(|o| !o.is_null()) || model.contains("-search");
    let priced = price.is_some_and(|p| p.web_search_cost_per_call.is_some());
    (kind == ProviderKind::OpenAi && searches && priced).then(|| {
        SearchContextSize::parse(
            options
                .and_then(|o| o.get("search_context_size"))
                .and_then(serde_json::Value::as_str),
        )
    })
}

/// Input tokens the hold covers for `req` going to `kind`: the count,
/// widened by the provider's margin, plus what the provider adds itself.
pub fn held_input_tokens(req: &ChatRequest, kind: ProviderKind, counted: u64) -> u64 {
    let widened = counted
        .saturating_mul(input_margin_percent(kind))
        .div_ceil(100);
    let tool_prompt = match kind {
        ProviderKind::Anthropic if anthropic_sends_tools(req) => ANTHROPIC_TOOL_PROMPT_TOKENS,
        _ => 0,
    };
    widened.saturating_add(tool_prompt)
}

/// The hold for a request: amounts for its maximum cost, and how the output may shrink.
#[derive(Clone, Debug)]
pub struct Estimate {
    /// Input counted with the model's encoding ([`Encoding::for_model`])
    /// and audio at its published rate: what is charged when a provider
    /// reports no usage.
    pub input: CountedInput,
    pub max_output_tokens: u64,
    pub amounts: Amounts,
    pub flex: OutputFlex,
}

pub fn estimate(
    req: &ChatRequest,
    kind: ProviderKind,
    model: &str,
    price: Option<&ModelPrice>,
    default_max_output_tokens: u64,
) -> Estimate {
    let media = Media::of(req);
    estimate_with(req, media, kind, model, price, default_max_output_tokens)
}

/// [`estimate`] with `req`'s [`Media`] already read (the proxy reads long
/// audio, and counts long prompts, on the blocking pool).
pub fn estimate_with(
    req: &ChatRequest,
    mut media: Media,
    kind: ProviderKind,
    model: &str,
    price: Option<&ModelPrice>,
    default_max_output_tokens: u64,
) -> Estimate {
    let counted = input_tokens(
        req,
        Encoding::for_model(kind, model),
        ImageTokens::for_model(kind, model),
    );
    let model_max = price.and_then(|p| p.max_output_tokens);
    let per_second = audio_tokens_per_second(kind);
    let audio = media.audio_tokens(per_second);
    // An earlier answer sent back is at most one answer: the model's
    // maximum output, or, when that is not known, nothing readable.
    let replies = match (media.audio_replies, model_max) {
        (0, _) => 0,
        (n, Some(max)) => n.saturating_mul(max),
        (_, None) => {
            media.unbounded_audio = true;
            0
        }
    };
    let mut held_audio = media
        .audio_tokens(per_second * AUDIO_MARGIN_PERCENT / 100)
        .saturating_add(replies);
    let mut input = held_input_tokens(req, kind, counted).saturating_add(held_audio);
    // Only a dearer tier changes the hold: a `flex` call is held at the
    // base prices (a maximum) and committed at the tier it was served at.
    let tier = req
        .extra
        .get("service_tier")
        .and_then(serde_json::Value::as_str)
        .and_then(ServiceTier::parse)
        .filter(|t| *t == ServiceTier::Priority);
    let unbounded = media.unbounded || media.unbounded_audio;
    if unbounded {
        // The provider refuses a request past the context window, so that
        // is the most it reads.
        let context = context_window(req, kind, price.and_then(|p| p.max_input_tokens));
        input = input.max(context.unwrap_or(UNKNOWN_CONTEXT_TOKENS));
    }
    // Past a long-context threshold every token costs more, output too:
    // the held input is at least the input, so its tier is at least the
    // call's. So does every token of a call sent at OpenAI's priority tier.
    let searched = web_search(req, kind, model, price);
    let price = price.map(|p| p.for_call(tier, read_at_most(req, kind, input)));
    if unbounded {
        // What fills the window may be audio (a custom provider's
        // `audio_url`, a file that is a recording), so it is priced at the
        // dearer of the text and audio rates.
        let audio_dearer = price.as_deref().is_some_and(|p| {
            p.input_cost_per_audio_token
                .is_some_and(|audio| audio > p.input_cost_per_token)
        });
        held_audio = if audio_dearer { input } else { 0 };
    }
    let max_output = req
        .requested_max_tokens()
        .or(model_max.map(|m| m.min(default_max_output_tokens)))
        .unwrap_or(default_max_output_tokens)
        .max(1);
    // With `n` choices the provider writes up to `max_output` tokens for each.
    let choices = u64::from(req.n.unwrap_or(1).max(1));
    let all_output = max_output.saturating_mul(choices);
    let mut amounts = Amounts::new()
        .with(Unit::Requests, Decimal::ONE)
        .with(Unit::InputTokens, Decimal::from(input))
        .with(Unit::OutputTokens, Decimal::from(all_output))
        .with(
            Unit::Tokens,
            Decimal::from(input.saturating_add(all_output)),
        );
    let (input_usd, usd_per_output_token) = match price.as_deref() {
        Some(p) => {
            let input_usd = cost_at(
                p,
                &Usage {
                    input_tokens: input,
                    audio_input_tokens: held_audio,
                    web_search: searched,
                    ..Usage::default()
                },
            );
            // The dearest output token the model may write: reasoning, and
            // audio when the request asks for it (`modalities: ["text", "audio"]`).
            let audio_out = req
                .extra
                .get("modalities")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|m| m.iter().any(|v| v == "audio"));
            let per_output = p
                .output_cost_per_token
                .max(p.output_cost_per_reasoning_token.unwrap_or_default())
                .max(if audio_out {
                    p.output_cost_per_audio_token.unwrap_or_default()
                } else {
                    Decimal::ZERO
                });
            amounts.set(
                Unit::Usd,
                round_usd(
                    input_usd + Decimal::from(all_output) * per_output,
                    Rounding::Charge,
                ),
            );
            (input_usd, per_output)
        }
        None => (Decimal::ZERO, Decimal::ZERO),
    };
    let flex = OutputFlex {
        input_tokens: input,
        max_output_tokens: max_output,
        min_output_tokens: max_output.min(MIN_OUTPUT_TOKENS),
        choices,
        input_usd,
        usd_per_output_token,
    };
    Estimate {
        input: CountedInput {
            tokens: counted.saturating_add(audio),
            audio_tokens: audio,
            web_search: searched,
        },
        max_output_tokens: max_output,
        amounts,
        flex,
    }
}

/// What a finished (or cut) call actually used, as ledger amounts.
pub fn actual(usage: &Usage, price: Option<&ModelPrice>) -> Amounts {
    let mut amounts = Amounts::new()
        .with(Unit::Requests, Decimal::ONE)
        .with(Unit::InputTokens, Decimal::from(usage.input_tokens))
        .with(Unit::OutputTokens, Decimal::from(usage.output_tokens))
        .with(Unit::Tokens, Decimal::from(usage.total_tokens()));
    if let Some(p) = price {
        amounts.set(Unit::Usd, round_usd(cost(p, usage), Rounding::Charge));
    }
    amounts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::parse_request;

    fn gpt_4o_images() -> ImageTokens {
        ImageTokens::for_model(ProviderKind::OpenAi, "gpt-4o")
    }

    #[test]
    fn counts_tokens_like_openai_and_prices_the_maximum() {
        let req = parse_request(br#"{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"Hello, world!"}]}"#).unwrap();
        // "Hello, world!" is 4 tokens in o200k_base; + 3 per message + 3 for the reply.
        assert_eq!(input_tokens(&req, Encoding::O200k, gpt_4o_images()), 10);
        let price = ModelPrice {
            max_output_tokens: Some(16384),
            ..ModelPrice::per_token(Decimal::new(25, 7), Decimal::new(1, 5))
        };
        let e = estimate(&req, ProviderKind::OpenAi, "gpt-4o", Some(&price), 4096);
        assert_eq!(e.max_output_tokens, 100);
        // 10 × 0.0000025 + 100 × 0.00001 = 0.001025
        assert_eq!(e.amounts.get(&Unit::Usd), Decimal::new(1025, 6));
        assert_eq!(e.amounts.get(&Unit::Tokens), Decimal::from(110));
        let e = estimate(
            &parse_request(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#)
                .unwrap(),
            ProviderKind::OpenAi,
            "gpt-4o",
            Some(&price),
            4096,
        );
        assert_eq!(
            e.max_output_tokens, 4096,
            "no max_tokens: the configured default, capped by the model's own maximum"
        );
    }

    #[test]
    fn a_long_input_is_held_at_the_long_context_prices() {
        let req = parse_request(br#"{"model":"gpt-4o","max_tokens":100,"messages":[{"role":"user","content":"Hello, world!"}]}"#).unwrap();
        // 10 input tokens (see above); a tier for more than `above` of them.
        let priced_above = |above: u64| ModelPrice {
            long_context: vec![crate::pricing::LongContextPrice {
                above_input_tokens: above,
                rates: crate::pricing::Rates {
                    input_cost_per_token: Decimal::new(5, 6),
                    output_cost_per_token: Decimal::new(3, 5),
                    cache_read_input_token_cost: None,
                    cache_creation_input_token_cost: None,
                },
            }],
            ..ModelPrice::per_token(Decimal::new(25, 7), Decimal::new(1, 5))
        };
        let held = |above: u64| {
            let e = estimate(
                &req,
                ProviderKind::OpenAi,
                "gpt-4o",
                Some(&priced_above(above)),
                4096,
            );
            (e.amounts.get(&Unit::Usd), e.flex.usd_per_output_token)
        };
        // 10 × 0.000005 + 100 × 0.00003
        assert_eq!(held(9), (Decimal::new(305, 5), Decimal::new(3, 5)));
        // 10 is not past 10: 10 × 0.0000025 + 100 × 0.00001
        assert_eq!(held(10), (Decimal::new(1025, 6), Decimal::new(1, 5)));
    }

    #[test]
    fn claude_is_held_for_at_most_the_200k_tokens_anthropic_reads() {
        // Sonnet 4's table entry: 1M tokens of context (with a beta header
        // the proxy does not send), dearer above 200k.
        let price = ModelPrice {
            max_input_tokens: Some(1_000_000),
            long_context: vec![crate::pricing::LongContextPrice {
                above_input_tokens: 200_000,
                rates: crate::pricing::Rates {
                    input_cost_per_token: Decimal::new(6, 6),
                    output_cost_per_token: Decimal::new(225, 7),
                    cache_read_input_token_cost: None,
                    cache_creation_input_token_cost: None,
                },
            }],
            ..ModelPrice::per_token(Decimal::new(3, 6), Decimal::new(15, 6))
        };
        let file = serde_json::json!({"type": "file", "file": {"file_id": "file-abc123"}});
        let req = with_part("claude-sonnet-4-20250514", file);
        let held = |kind| {
            let e = estimate(&req, kind, "claude-sonnet-4-20250514", Some(&price), 4096);
            (e.flex.input_tokens, e.amounts.get(&Unit::Usd))
        };
        // 200,000 × $0.000003 + 100 × $0.000015, not 1M at the long-context price.
        assert_eq!(
            held(ProviderKind::Anthropic),
            (200_000, Decimal::new(60150, 5))
        );
        // Elsewhere (a router serving the 1M window) the window and its price.
        let whole_window = (1_000_000, Decimal::new(6_002_250, 6));
        assert_eq!(held(ProviderKind::Custom), whole_window);
        // And on Anthropic when the client sends the 1M beta, which is passed on.
        let mut beta = req.clone();
        beta.anthropic_beta = Some("context-1m-2025-08-07".to_owned());
        let e = estimate(
            &beta,
            ProviderKind::Anthropic,
            "claude-sonnet-4-20250514",
            Some(&price),
            4096,
        );
        assert_eq!(
            (e.flex.input_tokens, e.amounts.get(&Unit::Usd)),
            whole_window
        );
    }

    #[test]
    fn a_call_that_searches_the_web_is_held_its_fee() {
        let price = ModelPrice {
            web_search_cost_per_call: Some(crate::pricing::WebSearchPrices {
                low: Decimal::new(3, 2),
                medium: Decimal::new(35, 3),
                high: Decimal::new(5, 2),
            }),
            ..ModelPrice::per_token(Decimal::new(25, 7), Decimal::new(1, 5))
        };
        let held = |model: &str, options: &str, kind| {
            let body = format!(
                r#"{{"model":"{model}","max_tokens":100,{options}"messages":[{{"role":"user","content":"Hello, world!"}}]}}"#
            );
            let e = estimate(
                &parse_request(body.as_bytes()).unwrap(),
                kind,
                model,
                Some(&price),
                4096,
            );
            (e.input.web_search, e.amounts.get(&Unit::Usd))
        };
        let tokens = Decimal::new(1025, 6); // 10 × 0.0000025 + 100 × 0.00001
        let openai = ProviderKind::OpenAi;
        // A search model always searches: medium unless told.
        assert_eq!(
            held("gpt-4o-search-preview", "", openai),
            (
                Some(SearchContextSize::Medium),
                tokens + Decimal::new(35, 3)
            )
        );
        assert_eq!(
            held(
                "gpt-4o-search-preview",
                r#""web_search_options":{"search_context_size":"high"},"#,
                openai
            ),
            (Some(SearchContextSize::High), tokens + Decimal::new(5, 2))
        );
        assert_eq!(
            held("gpt-4o-mini", r#""web_search_options":{},"#, openai),
            (
                Some(SearchContextSize::Medium),
                tokens + Decimal::new(35, 3)
            )
        );
        // No search asked for, or a provider Tollgate sends no search tool.
        assert_eq!(held("gpt-4o-mini", "", openai), (None, tokens));
        let claude = held(
            "claude-x",
            r#""web_search_options":{},"#,
            ProviderKind::Anthropic,
        );
        assert_eq!(claude.0, None);
    }

    fn with_part(model: &str, part: serde_json::Value) -> ChatRequest {
        let body = serde_json::json!({"model": model, "max_tokens": 100, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello, world!"}, part]}]});
        parse_request(body.to_string().as_bytes()).unwrap()
    }

    fn audio_part(bytes: &[u8], format: &str) -> serde_json::Value {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
        serde_json::json!({"type": "input_audio", "input_audio": {"data": data, "format": format}})
    }

    #[test]
    fn audio_input_is_held_for_its_duration_at_the_audio_price() {
        let three_seconds = testkit::mock_providers::pcm_wav(24_000, 1, 16, 3);
        let req = with_part("gpt-4o-audio-preview", audio_part(&three_seconds, "wav"));
        let price = ModelPrice {
            input_cost_per_audio_token: Some(Decimal::new(1, 4)),
            ..ModelPrice::per_token(Decimal::new(25, 7), Decimal::new(1, 5))
        };
        let e = estimate(
            &req,
            ProviderKind::OpenAi,
            "gpt-4o-audio-preview",
            Some(&price),
            4096,
        );
        // "Hello, world!" is 10 tokens with the message overhead; 3 s of
        // audio is 30 at OpenAI's 10 a second, held at twice that.
        assert_eq!(
            e.input,
            CountedInput {
                tokens: 40,
                audio_tokens: 30,
                web_search: None,
            }
        );
        assert_eq!(e.flex.input_tokens, 70);
        assert_eq!(e.amounts.get(&Unit::InputTokens), Decimal::from(70));
        // 10 × $0.0000025 + 60 × $0.0001 + 100 × $0.00001.
        assert_eq!(e.amounts.get(&Unit::Usd), Decimal::new(7025, 6));
        assert_eq!(e.flex.input_usd, Decimal::new(6025, 6));
        // A custom provider may count like Gemini, 32 a second; its text is widened too.
        let custom = estimate(&req, ProviderKind::Custom, "m", None, 4096);
        assert_eq!(
            custom.input,
            CountedInput {
                tokens: 106,
                audio_tokens: 96,
                web_search: None,
            }
        );
        assert_eq!(custom.flex.input_tokens, 15 + 192);
        // What a provider reporting no usage is charged: the audio at its own price.
        let mut usage = Usage::default();
        assert!(e.input.fill_missing(&mut usage));
        assert_eq!((usage.input_tokens, usage.audio_input_tokens), (40, 30));
        assert!(!e.input.fill_missing(&mut usage), "a reported count stays");
        // Input reported without its audio split: the counted audio is priced as audio.
        let mut usage = Usage {
            input_tokens: 45,
            ..Usage::default()
        };
        assert!(!e.input.fill_missing(&mut usage));
        assert_eq!((usage.input_tokens, usage.audio_input_tokens), (45, 30));
    }

    #[test]
    fn audio_nothing_can_measure_holds_the_context_window_at_the_audio_price() {
        let price = ModelPrice {
            input_cost_per_audio_token: Some(Decimal::new(1, 4)),
            max_input_tokens: Some(128_000),
            ..ModelPrice::per_token(Decimal::new(25, 7), Decimal::new(1, 5))
        };
        let flac = with_part(
            "gpt-4o-audio-preview",
            audio_part(&testkit::mock_providers::pcm_wav(8_000, 1, 8, 1), "flac"),
        );
        let e = estimate(&flac, ProviderKind::OpenAi, "m", Some(&price), 4096);
        assert_eq!(e.flex.input_tokens, 128_000);
        // 128,000 × $0.0001 + 100 × $0.00001.
        assert_eq!(e.amounts.get(&Unit::Usd), Decimal::new(12801, 3));
    }

    #[test]
    fn an_earlier_audio_answer_sent_back_is_held_as_a_whole_answer() {
        let body = br#"{"model":"gpt-4o-audio-preview","max_tokens":100,"messages":[
            {"role":"user","content":"Hello, world!"},
            {"role":"assistant","audio":{"id":"audio_abc123"}},
            {"role":"user","content":"Again?"}]}"#;
        let req = parse_request(body).unwrap();
        let price = ModelPrice {
            input_cost_per_audio_token: Some(Decimal::new(1, 4)),
            max_output_tokens: Some(16_384),
            ..ModelPrice::per_token(Decimal::new(25, 7), Decimal::new(1, 5))
        };
        let counted = input_tokens(&req, Encoding::O200k, gpt_4o_images());
        let e = estimate(&req, ProviderKind::OpenAi, "m", Some(&price), 4096);
        assert_eq!(e.flex.input_tokens, counted + 16_384);
        assert_eq!(
            e.flex.input_usd,
            Decimal::from(counted) * Decimal::new(25, 7) + Decimal::new(16384, 4)
        );
        // Without a known maximum output, the reply has no readable bound.
        let unknown = ModelPrice {
            max_output_tokens: None,
            max_input_tokens: Some(128_000),
            ..price
        };
        let e = estimate(&req, ProviderKind::OpenAi, "m", Some(&unknown), 4096);
        assert_eq!(e.flex.input_tokens, 128_000);
        assert_eq!(e.flex.input_usd, Decimal::new(128, 1));
    }

    #[test]
    fn the_audio_to_read_is_the_base64_sent() {
        let wav = testkit::mock_providers::pcm_wav(8_000, 1, 8, 1);
        let req = with_part("m", audio_part(&wav, "wav"));
        assert_eq!(audio_to_read(&req), wav.len().div_ceil(3) * 4);
        let text = with_part("m", serde_json::json!({"type": "text", "text": "hi"}));
        assert_eq!(audio_to_read(&text), 0);
    }

    #[test]
    fn a_part_of_unknown_size_holds_the_context_window() {
        let file = serde_json::json!({"type": "file", "file": {"file_id": "file-abc123"}});
        let pdf = serde_json::json!({"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}});
        let video = serde_json::json!({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}});
        let price = ModelPrice {
            max_input_tokens: Some(128_000),
            ..ModelPrice::per_token(Decimal::new(25, 7), Decimal::new(1, 5))
        };
        for part in [file, pdf, video] {
            let req = with_part("gpt-4o", part.clone());
            let e = estimate(&req, ProviderKind::OpenAi, "gpt-4o", Some(&price), 4096);
            assert_eq!(e.flex.input_tokens, 128_000, "{part}");
            // 128,000 × $0.0000025 + 100 × $0.00001.
            assert_eq!(e.amounts.get(&Unit::Usd), Decimal::new(321, 3), "{part}");
            assert_eq!(
                e.input.tokens, 10,
                "charged without usage: the text counted"
            );
            let unknown = estimate(&req, ProviderKind::Custom, "m", None, 4096);
            assert_eq!(unknown.flex.input_tokens, UNKNOWN_CONTEXT_TOKENS, "{part}");
        }
        // A model whose audio costs more than text: the window at the audio rate.
        let audio_model = ModelPrice {
            input_cost_per_audio_token: Some(Decimal::new(1, 4)),
            ..price.clone()
        };
        let audio_url = with_part(
            "m",
            serde_json::json!({"type": "audio_url", "audio_url": {"url": "https://example.com/a.ogg"}}),
        );
        let e = estimate(
            &audio_url,
            ProviderKind::Custom,
            "m",
            Some(&audio_model),
            4096,
        );
        assert_eq!(e.flex.input_usd, Decimal::new(128, 1));
        let text = with_part(
            "gpt-4o",
            serde_json::json!({"type": "text", "text": "again"}),
        );
        let e = estimate(&text, ProviderKind::OpenAi, "gpt-4o", Some(&price), 4096);
        assert!(e.flex.input_tokens < 20, "{}", e.flex.input_tokens);
    }

    #[test]
    fn an_assistant_refusal_is_counted_as_text() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"},{"role":"assistant","content":[{"type":"refusal","refusal":"I cannot help with that request, sorry."}]}]}"#;
        let req = parse_request(body).unwrap();
        let without = input_tokens(
            &with_part("gpt-4o", serde_json::json!({"type": "text", "text": ""})),
            Encoding::O200k,
            gpt_4o_images(),
        );
        assert!(input_tokens(&req, Encoding::O200k, gpt_4o_images()) > without + 5);
    }

    #[test]
    fn audio_output_is_held_at_its_price_when_asked_for() {
        let price = ModelPrice {
            output_cost_per_audio_token: Some(Decimal::new(2, 4)),
            ..ModelPrice::per_token(Decimal::new(25, 7), Decimal::new(1, 5))
        };
        let text = parse_request(br#"{"model":"gpt-4o-audio-preview","max_tokens":100,"messages":[{"role":"user","content":"Hello, world!"}]}"#).unwrap();
        let audio = parse_request(br#"{"model":"gpt-4o-audio-preview","max_tokens":100,"modalities":["text","audio"],"audio":{"voice":"alloy","format":"wav"},"messages":[{"role":"user","content":"Hello, world!"}]}"#).unwrap();
        // 10 input tokens × 0.0000025, plus 100 output at the text or the audio rate.
        let usd = |req| {
            estimate(req, ProviderKind::OpenAi, "gpt-4o", Some(&price), 4096)
                .amounts
                .get(&Unit::Usd)
        };
        assert_eq!(usd(&text), Decimal::new(1025, 6));
        assert_eq!(usd(&audio), Decimal::new(20025, 6));
    }

    #[test]
    fn names_ids_legacy_functions_and_function_calls_are_input() {
        let plain = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
        let base = input_tokens(
            &parse_request(plain).unwrap(),
            Encoding::O200k,
            gpt_4o_images(),
        );
        let long = "lorem ipsum dolor sit amet ".repeat(100);
        let tokens = |body: String| {
            input_tokens(
                &parse_request(body.as_bytes()).unwrap(),
                Encoding::O200k,
                gpt_4o_images(),
            ) - base
        };
        let text = count(&long, Encoding::O200k);
        assert!(text >= 400, "{text}");
        // Each of these carries the long text: each must count it.
        let cases = [
            format!(
                r#"{{"model":"gpt-4o","functions":[{{"name":"f","description":"{long}","parameters":{{}}}}],
                "messages":[{{"role":"user","content":"hi"}}]}}"#
            ),
            format!(
                r#"{{"model":"gpt-4o","messages":[{{"role":"user","name":"{long}","content":"hi"}}]}}"#
            ),
            format!(
                r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi"}},
                {{"role":"assistant","content":null,"function_call":{{"name":"f","arguments":"{long}"}}}}]}}"#
            ),
        ];
        for body in cases {
            let extra = tokens(body.clone());
            let start: String = body.chars().take(90).collect();
            assert!(extra >= text, "{extra} of {text} tokens for {start}");
        }
    }

    #[test]
    fn images_are_held_at_what_they_may_cost() {
        let req = parse_request(br#"{"model":"gpt-4o","messages":[{"role":"user","content":[
            {"type":"text","text":"Hello, world!"},
            {"type":"image_url","image_url":{"url":"https://example.com/a.png"}},
            {"type":"image_url","image_url":{"url":"https://example.com/b.png","detail":"low"}},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo=","detail":"high"}}]}]}"#).unwrap();
        // 10 for the text as above, 1,445 for each image of unknown size, 85 at low detail.
        assert_eq!(
            input_tokens(&req, Encoding::O200k, gpt_4o_images()),
            10 + 1_445 + 85 + 1_445
        );
        let images = |kind, model| {
            input_tokens(&req, Encoding::O200k, ImageTokens::for_model(kind, model)) - 10
        };
        // GPT-4o mini counts 33⅓ times GPT-4o's tokens (at a price that
        // much lower than 16⅔ times): 2,833 + 5,667 per tile, 2,833 at low.
        assert_eq!(
            images(ProviderKind::OpenAi, "gpt-4o-mini"),
            48_169 + 2_833 + 48_169
        );
        // Patch-based models: 1,536 patches times 1.62, 2.46, 1.72; no low detail.
        assert_eq!(images(ProviderKind::OpenAi, "gpt-4.1-mini"), 3 * 2_489);
        assert_eq!(
            images(ProviderKind::OpenAi, "gpt-5-nano-2025-08-07"),
            3 * 3_779
        );
        assert_eq!(images(ProviderKind::OpenAi, "o4-mini"), 3 * 2_642);
        assert_eq!(
            images(ProviderKind::OpenAi, "ft:gpt-4o-2024-08-06:acme::x"),
            1_445 + 85 + 1_445
        );
        // Other providers ignore `detail`: the low-detail image is held in full.
        assert_eq!(images(ProviderKind::Anthropic, "claude-opus-4"), 3 * 1_445);
        assert_eq!(images(ProviderKind::Xai, "grok-2-vision"), 3 * 1_445);
        assert_eq!(images(ProviderKind::Gemini, "gemini-2.5-pro"), 3 * 4_128);
        assert_eq!(images(ProviderKind::Custom, "qwen2-vl"), 3 * 16_384);
    }

    #[test]
    fn long_runs_are_counted_in_bounded_pieces() {
        // Cut only inside long runs, into pieces that join back to the text.
        let text = format!(
            "Hello, {} world{}é{}!\n{}",
            "a".repeat(300),
            " ".repeat(200),
            "ü".repeat(100),
            "tail"
        );
        let pieces: Vec<&str> = bounded_runs(&text).collect();
        assert_eq!(pieces.concat(), text);
        assert!(pieces.len() > 3, "{pieces:?}");
        for piece in &pieces {
            let mut run = 0;
            let mut blank = None;
            for c in piece.chars() {
                if blank == Some(c.is_whitespace()) {
                    run += c.len_utf8();
                } else {
                    blank = Some(c.is_whitespace());
                    run = c.len_utf8();
                }
                assert!(run <= LONGEST_RUN + 4, "a run of {run} bytes in {piece:?}");
            }
        }
        let ordinary = "The quick brown fox jumps over the lazy dog. ".repeat(200);
        assert_eq!(bounded_runs(&ordinary).count(), 1);
        assert_eq!(bounded_runs("").count(), 0);
        // Ordinary text counts exactly as the tokenizer does; a long run
        // about as many tokens as whole (`a` × 8 is one token), not fewer.
        let bpe = tokenizer(Encoding::O200k).expect("o200k_base loads");
        assert_eq!(
            count_uncached(&ordinary, Encoding::O200k),
            bpe.encode_ordinary(&ordinary).len() as u64
        );
        let run = "a".repeat(4_096);
        let whole = bpe.encode_ordinary(&run).len() as u64;
        let pieces = count_uncached(&run, Encoding::O200k);
        assert!(
            pieces >= whole && pieces <= whole + 4_096 / LONGEST_RUN as u64,
            "{pieces} against {whole}"
        );
    }

    #[test]
    fn output_estimated_from_streamed_text_is_not_below_its_count() {
        // A cut stream is charged its text's bytes / 4: not fewer tokens
        // than the tokenizer counts, in scripts that take more than one
        // token per four characters too.
        let bpe = tokenizer(Encoding::O200k).expect("o200k_base loads");
        for text in [
            "Artificial intelligence is changing the way we live. The weather is nice today.",
            "人工智能正在改变我们的生活方式。今天的天气很好，我们一起去公园散步吧。",
            "人工知能は私たちの生活を変えています。今日はいい天気なので、一緒に公園を散歩しましょう。",
            "인공지능은 우리의 삶의 방식을 바꾸고 있습니다. 오늘 날씨가 좋으니 함께 공원을 산책합시다.",
        ] {
            let tokens = bpe.encode_ordinary(text).len() as u64;
            let estimate = crate::providers::estimate_output_tokens(text.len() as u64);
            assert!(estimate >= tokens, "{estimate} < {tokens}: {text}");
        }
    }

    #[test]
    fn remembered_counts_are_the_counts() {
        // More texts than one generation holds, each counted twice, some
        // after being pushed into the previous generation: always the
        // tokenizer's count.
        let texts: Vec<String> = (0..COUNTED_TEXTS + 500)
            .map(|i| format!("message {i}: {}", "word ".repeat(i % 7)))
            .collect();
        let mut counted = Counted::default();
        for round in 0..2 {
            for text in &texts {
                assert_eq!(
                    counted.count(text, Encoding::O200k),
                    count_uncached(text, Encoding::O200k),
                    "round {round}: {text}"
                );
            }
        }
        assert!(counted.current.len() <= COUNTED_TEXTS);
        assert!(counted.previous.len() <= COUNTED_TEXTS);
        assert_ne!(
            count("Hello, world!", Encoding::O200k),
            count("Hello, world! Hello!", Encoding::O200k)
        );
    }

    #[test]
    fn older_gpt_models_are_counted_with_their_own_encoding() {
        for model in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-4-0613",
            "gpt-3.5-turbo",
            "gpt-3.5-turbo-0125",
            "gpt-35-turbo",
            "ft:gpt-3.5-turbo-0125:acme::8abc",
            "ft:gpt-4-0613:acme::9xyz",
        ] {
            assert_eq!(
                Encoding::for_model(ProviderKind::OpenAi, model),
                Encoding::Cl100k,
                "{model}"
            );
        }
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1-nano",
            "gpt-4.5-preview",
            "gpt-5",
            "o3-mini",
            "chatgpt-4o-latest",
            "ft:gpt-4o-mini-2024-07-18:acme::1def",
        ] {
            assert_eq!(
                Encoding::for_model(ProviderKind::OpenAi, model),
                Encoding::O200k,
                "{model}"
            );
        }
        assert_eq!(
            Encoding::for_model(ProviderKind::Custom, "gpt-4"),
            Encoding::O200k,
            "a custom provider's model is not OpenAI's"
        );
        // cl100k_base needs far more tokens than o200k_base for many scripts.
        let body = r#"{"model":"gpt-4","max_tokens":10,"messages":[{"role":"user","content":"मेरा नाम क्या है? यह एक परीक्षण वाक्य है जो हिंदी में लिखा गया है।"}]}"#;
        let req = parse_request(body.as_bytes()).unwrap();
        let (cl100k, o200k) = (
            input_tokens(&req, Encoding::Cl100k, gpt_4o_images()),
            input_tokens(&req, Encoding::O200k, gpt_4o_images()),
        );
        assert!(cl100k > o200k * 3 / 2, "cl100k {cl100k}, o200k {o200k}");
        let e = |model| {
            estimate(&req, ProviderKind::OpenAi, model, None, 4096)
                .flex
                .input_tokens
        };
        assert_eq!((e("gpt-4"), e("gpt-4o")), (cl100k, o200k));
    }

    #[test]
    fn holds_cover_tokenizers_that_count_more_than_o200k() {
        let body = br#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"Hello, world!"}]}"#;
        let req = parse_request(body).unwrap();
        let counted = input_tokens(&req, Encoding::O200k, gpt_4o_images());
        assert_eq!(counted, 10);
        let held = |kind| estimate(&req, kind, "m", None, 4096);
        let openai = held(ProviderKind::OpenAi);
        assert_eq!(
            (openai.input.tokens, openai.flex.input_tokens),
            (10, 10),
            "OpenAI counts with o200k_base itself"
        );
        let claude = held(ProviderKind::Anthropic);
        assert_eq!((claude.input.tokens, claude.flex.input_tokens), (10, 15));
        assert_eq!(claude.amounts.get(&Unit::InputTokens), Decimal::from(15));
        assert_eq!(claude.amounts.get(&Unit::Tokens), Decimal::from(25));
        assert_eq!(
            claude.flex.input_tokens, 15,
            "the clamp sees the held input"
        );
        assert_eq!(
            held(ProviderKind::Gemini).flex.input_tokens,
            13,
            "⌈10 × 1.25⌉"
        );
        assert_eq!(held(ProviderKind::Xai).flex.input_tokens, 13);
        assert_eq!(held(ProviderKind::Custom).flex.input_tokens, 15);
        // The held input is priced: 15 × $0.000003 + 10 × $0.000015.
        let price = ModelPrice::per_token(Decimal::new(3, 6), Decimal::new(15, 6));
        let e = estimate(
            &req,
            ProviderKind::Anthropic,
            "claude-sonnet-4-5",
            Some(&price),
            4096,
        );
        assert_eq!(e.amounts.get(&Unit::Usd), Decimal::new(195, 6));
        assert_eq!(e.flex.input_usd, Decimal::new(45, 6));
    }

    #[test]
    fn claude_holds_the_system_prompt_anthropic_adds_for_tools() {
        let with = |extra: &str| {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"Hello, world!"}}]{extra}}}"#
            );
            let req = parse_request(body.as_bytes()).unwrap();
            let counted = input_tokens(&req, Encoding::O200k, gpt_4o_images());
            (
                counted,
                held_input_tokens(&req, ProviderKind::Anthropic, counted),
                held_input_tokens(&req, ProviderKind::OpenAi, counted),
            )
        };
        let (counted, claude, openai) = with("");
        assert_eq!((claude, openai), ((counted * 3).div_ceil(2), counted));
        let tools = r#","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]"#;
        let (counted, claude, openai) = with(tools);
        assert_eq!(claude, (counted * 3).div_ceil(2) + 530);
        assert_eq!(openai, counted, "OpenAI adds no such prompt");
        let schema = r#","response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object"}}}"#;
        let (counted, claude, _) = with(schema);
        assert_eq!(
            claude,
            (counted * 3).div_ceil(2) + 530,
            "the format becomes a tool"
        );
        let (counted, claude, _) = with(r#","response_format":{"type":"json_object"}"#);
        assert_eq!(claude, (counted * 3).div_ceil(2) + 530, "json_object too");
        let (counted, claude, _) = with(&format!(r#"{tools},"tool_choice":"none""#));
        assert_eq!(
            claude,
            (counted * 3).div_ceil(2) + 530,
            "tools sent with tool_choice none still bring the prompt"
        );
        let (counted, claude, _) = with(r#","response_format":{"type":"text"}"#);
        assert_eq!(claude, (counted * 3).div_ceil(2));
        let (counted, claude, _) = with(r#","tools":[]"#);
        assert_eq!(
            claude,
            (counted * 3).div_ceil(2),
            "no tools, no tool prompt"
        );
    }

    #[test]
    fn a_response_format_schema_is_input() {
        let plain = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}]}"#;
        let with_format = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object","properties":{"answer":{"type":"string"}}}}}}"#;
        let null_format = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}],"response_format":null}"#;
        let tokens = |body: &[u8]| {
            input_tokens(
                &parse_request(body).unwrap(),
                Encoding::O200k,
                gpt_4o_images(),
            )
        };
        let format = r#"{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object","properties":{"answer":{"type":"string"}}}}}"#;
        assert_eq!(
            tokens(with_format),
            tokens(plain) + count(format, Encoding::O200k)
        );
        assert_eq!(tokens(null_format), tokens(plain));
    }
}
