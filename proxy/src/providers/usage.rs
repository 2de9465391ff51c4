//! Provider-neutral token usage, and how each provider's counts map onto it.
//!
//! Normalised meaning (the same for every provider, OpenAI's convention):
//! - `input_tokens` is *all* input: fresh + read from cache + written to cache;
//!   `cached_input_tokens` and `cache_creation_input_tokens` are parts of it.
//! - `output_tokens` is *all* output, reasoning included; `reasoning_tokens`
//!   is a part of it.
//!
//! Per provider:
//! - OpenAI: `prompt_tokens` already includes `cached_tokens`, and
//!   `completion_tokens` already includes `reasoning_tokens`.
//! - xAI (and any OpenAI-compatible server that does the same): the same
//!   fields, but `completion_tokens` leaves out `reasoning_tokens`, which
//!   `total_tokens` counts. Detected from the totals: when `total_tokens` is
//!   prompt + completion + reasoning, reasoning is added to the output
//!   (with OpenAI's convention that sum exceeds its total whenever there is
//!   reasoning, so the two cannot be confused).
//! - Anthropic: `input_tokens` *excludes* `cache_read_input_tokens` and
//!   `cache_creation_input_tokens`, so the three are added. Thinking is inside
//!   `output_tokens` and not reported apart (`reasoning_tokens` stays 0).
//! - Gemini: `promptTokenCount` includes `cachedContentTokenCount`;
//!   `toolUsePromptTokenCount` is extra input; `candidatesTokenCount` excludes
//!   `thoughtsTokenCount`, so output = candidates + thoughts. Audio is the
//!   `AUDIO` entry of `promptTokensDetails` less that of `cacheTokensDetails`
//!   (audio read from the cache is a cache read), and of
//!   `candidatesTokensDetails` for output.
//!
//! Estimation rule (used when a stream ends before the provider reports its
//! output count): output tokens = bytes of streamed completion text (UTF-8)
//! / 4, rounded up ([`estimate_output_tokens`]); the result carries
//! `estimated: true`.

use super::openai::{CompletionTokensDetails, OpenAiUsage, PromptTokensDetails};
use serde::{Deserialize, Serialize};

/// Token usage of one call, normalised (see the module doc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Part of `input_tokens` read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Part of `input_tokens` written to the provider's prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Part of `cache_creation_input_tokens` written to a cache kept for an
    /// hour (Anthropic's `ttl: "1h"`, billed higher than 5-minute writes).
    #[serde(default)]
    pub cache_creation_1h_input_tokens: u64,
    /// Part of `output_tokens` spent on reasoning.
    pub reasoning_tokens: u64,
    /// Part of `input_tokens` that was audio (priced apart when the model has an audio rate).
    #[serde(default)]
    pub audio_input_tokens: u64,
    /// Part of `output_tokens` that was audio.
    #[serde(default)]
    pub audio_output_tokens: u64,
    /// The provider said how much of the input was audio (Gemini: 0
    /// included; OpenAI's format: only a count above 0), so the proxy's
    /// own count of it is not used
    /// ([`crate::estimate::CountedInput::fill_missing`]).
    #[serde(default)]
    pub audio_input_reported: bool,
    /// True when some count is an estimate, not the provider's report.
    pub estimated: bool,
    /// The processing tier the provider says it served the call at, when
    /// that tier is billed apart (OpenAI's `service_tier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<crate::pricing::ServiceTier>,
    /// The call searched the web, reading this much of what it found
    /// (OpenAI's search models; from the request, see
    /// [`crate::estimate::CountedInput`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_search: Option<crate::pricing::SearchContextSize>,
}

impl Usage {
    /// Input plus output.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// From OpenAI's `usage` block.
    pub fn from_openai(usage: &OpenAiUsage) -> Usage {
        let reasoning = usage
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        let reasoning_outside = reasoning > 0
            && Some(usage.total_tokens)
                == usage
                    .prompt_tokens
                    .checked_add(usage.completion_tokens)
                    .and_then(|s| s.checked_add(reasoning));
        Usage {
            input_tokens: usage.prompt_tokens,
            output_tokens: if reasoning_outside {
                usage.completion_tokens.saturating_add(reasoning)
            } else {
                usage.completion_tokens
            },
            cached_input_tokens: usage
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_creation_input_tokens: 0,
            cache_creation_1h_input_tokens: 0,
            reasoning_tokens: reasoning,
            audio_input_tokens: usage
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.audio_tokens)
                .unwrap_or(0),
            audio_output_tokens: usage
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.audio_tokens)
                .unwrap_or(0),
            // A 0 is not taken as said: OpenAI-compatible gateways fill in
            // zeros whatever the input was.
            audio_input_reported: usage
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.audio_tokens)
                .is_some_and(|n| n > 0),
            estimated: false,
            service_tier: None,
            web_search: None,
        }
    }

    /// As OpenAI's `usage` block (what translated answers carry).
    pub fn to_openai(&self) -> OpenAiUsage {
        OpenAiUsage {
            prompt_tokens: self.input_tokens,
            completion_tokens: self.output_tokens,
            total_tokens: self.total_tokens(),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: Some(self.cached_input_tokens),
                audio_tokens: None,
            }),
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: Some(self.reasoning_tokens),
                audio_tokens: None,
            }),
        }
    }
}

/// Anthropic's `usage` object (messages, `message_start`, `message_delta`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    /// The split of `cache_creation_input_tokens` by cache lifetime.
    #[serde(default)]
    pub cache_creation: Option<AnthropicCacheCreation>,
}

/// `usage.cache_creation`: cache writes by lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct AnthropicCacheCreation {
    #[serde(default)]
    pub ephemeral_1h_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Folds a later report into this one. Streams send `message_start` then
    /// `message_delta`; counts there are cumulative, so the larger one wins.
    pub fn merge(&mut self, later: &AnthropicUsage) {
        fn max(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        }
        self.input_tokens = max(self.input_tokens, later.input_tokens);
        self.output_tokens = max(self.output_tokens, later.output_tokens);
        self.cache_creation_input_tokens = max(
            self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        self.cache_read_input_tokens =
            max(self.cache_read_input_tokens, later.cache_read_input_tokens);
        let hour = |u: &AnthropicUsage| u.cache_creation.and_then(|c| c.ephemeral_1h_input_tokens);
        if let Some(tokens) = max(hour(self), hour(later)) {
            self.cache_creation = Some(AnthropicCacheCreation {
                ephemeral_1h_input_tokens: Some(tokens),
            });
        }
    }

    pub fn normalise(&self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(created),
            output_tokens: self.output_tokens.unwrap_or(0),
            cached_input_tokens: read,
            cache_creation_input_tokens: created,
            cache_creation_1h_input_tokens: self
                .cache_creation
                .and_then(|c| c.ephemeral_1h_input_tokens)
                .unwrap_or(0)
                .min(created),
            reasoning_tokens: 0,
            audio_input_tokens: 0,
            audio_output_tokens: 0,
            audio_input_reported: false,
            estimated: false,
            service_tier: None,
            web_search: None,
        }
    }
}

/// Gemini's `usageMetadata`. Cumulative in every streamed chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GeminiUsage {
    #[serde(default)]
    pub prompt_token_count: Option<u64>,
    #[serde(default)]
    pub candidates_token_count: Option<u64>,
    #[serde(default)]
    pub thoughts_token_count: Option<u64>,
    #[serde(default)]
    pub cached_content_token_count: Option<u64>,
    #[serde(default)]
    pub tool_use_prompt_token_count: Option<u64>,
    /// The audio part of `promptTokenCount` (its `promptTokensDetails`).
    #[serde(
        default,
        rename = "promptTokensDetails",
        deserialize_with = "audio_part"
    )]
    pub prompt_audio_tokens: Option<u64>,
    /// The audio part of `cachedContentTokenCount` (`cacheTokensDetails`).
    #[serde(
        default,
        rename = "cacheTokensDetails",
        deserialize_with = "audio_part"
    )]
    pub cached_audio_tokens: Option<u64>,
    /// The audio part of `candidatesTokenCount` (`candidatesTokensDetails`).
    #[serde(
        default,
        rename = "candidatesTokensDetails",
        deserialize_with = "audio_part"
    )]
    pub candidates_audio_tokens: Option<u64>,
}

/// One entry of Gemini's `…TokensDetails`: a modality and its count.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModalityTokenCount {
    #[serde(default)]
    modality: Option<Modality>,
    #[serde(default)]
    token_count: Option<u64>,
}

#[derive(Deserialize, PartialEq)]
enum Modality {
    #[serde(rename = "AUDIO")]
    Audio,
    #[serde(other)]
    Other,
}

/// A `…TokensDetails` value: the documented list, or anything else, which
/// is ignored rather than making the whole answer unreadable.
#[derive(Deserialize)]
#[serde(untagged)]
enum Details {
    List(Vec<ModalityTokenCount>),
    Other(serde::de::IgnoredAny),
}

/// The `AUDIO` tokens of a `…TokensDetails` list: `Some(0)` for a list
/// without audio, `None` when there is no readable list.
fn audio_part<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<Details>::deserialize(d)? {
        Some(Details::List(list)) => Some(
            list.iter()
                .filter(|m| m.modality == Some(Modality::Audio))
                .filter_map(|m| m.token_count)
                .fold(0, u64::saturating_add),
        ),
        Some(Details::Other(_)) | None => None,
    })
}

impl GeminiUsage {
    pub fn normalise(&self) -> Usage {
        let thoughts = self.thoughts_token_count.unwrap_or(0);
        Usage {
            input_tokens: self
                .prompt_token_count
                .unwrap_or(0)
                .saturating_add(self.tool_use_prompt_token_count.unwrap_or(0)),
            output_tokens: self
                .candidates_token_count
                .unwrap_or(0)
                .saturating_add(thoughts),
            cached_input_tokens: self.cached_content_token_count.unwrap_or(0),
            cache_creation_input_tokens: 0,
            cache_creation_1h_input_tokens: 0,
            reasoning_tokens: thoughts,
            // Audio read from the cache is priced as a cache read.
            audio_input_tokens: self
                .prompt_audio_tokens
                .unwrap_or(0)
                .saturating_sub(self.cached_audio_tokens.unwrap_or(0)),
            audio_output_tokens: self.candidates_audio_tokens.unwrap_or(0),
            audio_input_reported: self.prompt_audio_tokens.is_some(),
            estimated: false,
            service_tier: None,
            web_search: None,
        }
    }
}

/// The estimation rule: UTF-8 bytes of completion text / 4, rounded up.
/// Bytes rather than characters: `o200k_base` counts English at about 4
/// characters (bytes) a token, but Chinese and Japanese at 1.1–1.4
/// characters, which characters / 4 undercounted 2.4–2.7 times (a cut
/// stream of CJK text charged a third of its output); by bytes they come
/// out 1.1–1.2 times over, Cyrillic, Arabic, Thai and Devanagari 1.3–2.1
/// times over, emoji 0.7 times. A cut stream was generated (and billed by
/// the provider) at least as far as it was streamed, so erring over is the
/// side to err on. One place, so a tokenizer can replace it later.
pub fn estimate_output_tokens(completion_bytes: u64) -> u64 {
    completion_bytes.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai_usage(prompt: u64, completion: u64, total: u64, reasoning: u64) -> OpenAiUsage {
        OpenAiUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
            prompt_tokens_details: None,
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: Some(reasoning),
                audio_tokens: None,
            }),
        }
    }

    #[test]
    fn openai_audio_tokens_are_parts_of_input_and_output() {
        // As gpt-4o-audio-preview reports them.
        let usage: OpenAiUsage = serde_json::from_str(
            r#"{"prompt_tokens":120,"completion_tokens":80,"total_tokens":200,
                "prompt_tokens_details":{"cached_tokens":0,"audio_tokens":100},
                "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":64,"accepted_prediction_tokens":0}}"#,
        )
        .unwrap();
        let u = Usage::from_openai(&usage);
        assert_eq!(
            (
                u.input_tokens,
                u.audio_input_tokens,
                u.output_tokens,
                u.audio_output_tokens
            ),
            (120, 100, 80, 64)
        );
    }

    #[test]
    fn reasoning_counts_once_in_openais_convention_and_in_xais() {
        // OpenAI: reasoning is inside completion_tokens.
        let u = Usage::from_openai(&openai_usage(32, 103, 135, 94));
        assert_eq!((u.output_tokens, u.reasoning_tokens), (103, 94));
        // xAI's documented example: 32 + 9 + 94 = 135, reasoning outside completion_tokens.
        let u = Usage::from_openai(&openai_usage(32, 9, 135, 94));
        assert_eq!((u.output_tokens, u.reasoning_tokens), (103, 94));
        assert_eq!(u.total_tokens(), 135);
        // No total reported: OpenAI's convention.
        let u = Usage::from_openai(&openai_usage(32, 9, 0, 94));
        assert_eq!(u.output_tokens, 9);
    }

    #[test]
    fn anthropic_input_excludes_cache() {
        let u = AnthropicUsage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            cache_creation_input_tokens: Some(100),
            cache_read_input_tokens: Some(1000),
            cache_creation: None,
        }
        .normalise();
        assert_eq!(
            (
                u.input_tokens,
                u.cached_input_tokens,
                u.cache_creation_input_tokens
            ),
            (1110, 1000, 100)
        );
    }

    #[test]
    fn anthropic_merge_takes_max() {
        let mut start = AnthropicUsage {
            input_tokens: Some(11),
            output_tokens: Some(1),
            ..Default::default()
        };
        start.merge(&AnthropicUsage {
            output_tokens: Some(6),
            input_tokens: Some(3),
            ..Default::default()
        });
        assert_eq!(
            (start.input_tokens, start.output_tokens),
            (Some(11), Some(6))
        );
    }

    #[test]
    fn gemini_thoughts_are_output() {
        let u = GeminiUsage {
            prompt_token_count: Some(7),
            candidates_token_count: Some(10),
            thoughts_token_count: Some(30),
            cached_content_token_count: Some(4),
            ..GeminiUsage::default()
        }
        .normalise();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.reasoning_tokens,
                u.cached_input_tokens
            ),
            (7, 40, 30, 4)
        );
    }

    #[test]
    fn gemini_audio_is_read_from_the_modality_details() {
        let u: GeminiUsage = serde_json::from_str(
            r#"{"promptTokenCount": 1000, "cachedContentTokenCount": 300,
                "candidatesTokenCount": 50, "totalTokenCount": 1050,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 200},
                    {"modality": "AUDIO", "tokenCount": 700}, {"modality": "IMAGE", "tokenCount": 100}],
                "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 300}],
                "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 45},
                    {"modality": "TEXT", "tokenCount": 5}, {"modality": "NEW_KIND"}]}"#,
        )
        .unwrap();
        let u = u.normalise();
        // 700 audio in, 300 of it read from the cache.
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.audio_input_tokens),
            (1000, 300, 400)
        );
        assert_eq!((u.output_tokens, u.audio_output_tokens), (50, 45));
        assert!(u.audio_input_reported);
        // All the audio read from the cache: none fresh, and said so.
        let cached: GeminiUsage = serde_json::from_str(
            r#"{"promptTokenCount": 300, "cachedContentTokenCount": 300,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 300}],
                "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 300}]}"#,
        )
        .unwrap();
        let cached = cached.normalise();
        assert_eq!(
            (cached.audio_input_tokens, cached.audio_input_reported),
            (0, true)
        );
        // Without details, or with details of another shape: not reported,
        // and the rest of the usage still read.
        for other in [
            r#""#,
            r#", "promptTokensDetails": {"AUDIO": 5}"#,
            r#", "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": "5"}]"#,
        ] {
            let u: GeminiUsage =
                serde_json::from_str(&format!(r#"{{"promptTokenCount": 9{other}}}"#)).unwrap();
            let u = u.normalise();
            assert_eq!(
                (u.input_tokens, u.audio_input_tokens, u.audio_input_reported),
                (9, 0, false),
                "{other}"
            );
        }
    }

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(estimate_output_tokens(0), 0);
        assert_eq!(estimate_output_tokens(1), 1);
        assert_eq!(estimate_output_tokens(8), 2);
        assert_eq!(estimate_output_tokens(9), 3);
    }
}
