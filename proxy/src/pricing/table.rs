//! The price table: model id → [`ModelPrice`], bundled at compile time and
//! overridable per project.
//!
//! Keys are LiteLLM's model ids, some with a provider prefix (`gemini/…`,
//! `xai/…`). [`PriceTable::lookup`] tries, in order: `provider/model`, then
//! `model`, then the same two without a date suffix (`-20241022`,
//! `-2024-08-06`). The prefixed form comes first because it is the price of
//! the API Tollgate actually calls (e.g. Google AI Studio's `gemini/…` rather
//! than Vertex AI's bare `gemini-…`). Prices in JSON are strings; a JSON
//! number is refused so that no float ever becomes a price.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;

const BUNDLED_JSON: &str = include_str!("../../prices/model_prices.json");

/// Prices of one model, US dollars per token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// LiteLLM's provider name (`openai`, `anthropic`, `gemini`, …).
    #[serde(default)]
    pub provider: String,
    pub input_cost_per_token: Decimal,
    pub output_cost_per_token: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_token_cost: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_token_cost: Option<Decimal>,
    /// Writing to a cache kept for an hour (Anthropic's `ttl: "1h"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_token_cost_above_1hr: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_reasoning_token: Option<Decimal>,
    /// Audio input (OpenAI's `prompt_tokens_details.audio_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_cost_per_audio_token: Option<Decimal>,
    /// Audio output (OpenAI's `completion_tokens_details.audio_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_audio_token: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// The model reasons before it answers, by default (OpenAI's o-series
    /// and GPT-5, Gemini 2.5, Grok's reasoning models: LiteLLM's flag), and
    /// its reasoning counts against the output cap, so a request naming no
    /// cap is given [`crate::server::Settings::default_max_reasoning_output_tokens`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supports_reasoning: bool,
    /// Dearer prices for a request whose input is long (Gemini above 128k
    /// or 200k prompt tokens, Claude's 1M-context models above 200k, Grok 4
    /// above 128k), lowest threshold first; see [`ModelPrice::for_call`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub long_context: Vec<LongContextPrice>,
    /// Prices of calls served at a dearer or cheaper processing tier
    /// (OpenAI's `priority` and `flex`); see [`ModelPrice::for_call`].
    #[serde(default, skip_serializing_if = "ServiceTierPrices::is_empty")]
    pub service_tiers: ServiceTierPrices,
    /// OpenAI's fee for a call that searches the web (a `*-search-preview`
    /// model, or `web_search_options`), by `search_context_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_search_cost_per_call: Option<WebSearchPrices>,
}

/// US dollars per call that searches the web, by how much of what it
/// found the model reads (`web_search_options.search_context_size`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSearchPrices {
    pub low: Decimal,
    pub medium: Decimal,
    pub high: Decimal,
}

/// `web_search_options.search_context_size`; `medium` when not given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchContextSize {
    Low,
    #[default]
    Medium,
    High,
}

impl SearchContextSize {
    /// `low`, `medium` or `high`; anything else is `medium`, the API's default.
    pub fn parse(name: Option<&str>) -> SearchContextSize {
        match name {
            Some("low") => SearchContextSize::Low,
            Some("high") => SearchContextSize::High,
            _ => SearchContextSize::Medium,
        }
    }
}

impl WebSearchPrices {
    pub fn per_call(&self, size: SearchContextSize) -> Decimal {
        match size {
            SearchContextSize::Low => self.low,
            SearchContextSize::Medium => self.medium,
            SearchContextSize::High => self.high,
        }
    }
}

/// The prices of a request with more than `above_input_tokens` input tokens
/// (all of them: fresh, read from cache and written to it), for the whole
/// request: providers bill every token of such a request, output included,
/// at these rates, not only the tokens past the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongContextPrice {
    pub above_input_tokens: u64,
    #[serde(flatten)]
    pub rates: Rates,
}

/// Token prices that replace a model's base prices for some calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    pub input_cost_per_token: Decimal,
    pub output_cost_per_token: Decimal,
    /// Absent: the base cache-read price scaled as input is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_input_token_cost: Option<Decimal>,
    /// Absent: the base cache-write price scaled as input is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_token_cost: Option<Decimal>,
}

/// A processing tier a provider bills apart: OpenAI's `service_tier`
/// `priority` (faster, dearer) and `flex` (slower, cheaper). Other values
/// (`default`, `auto`, `scale`) are billed at the base prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTier {
    Priority,
    Flex,
}

impl ServiceTier {
    /// `priority` or `flex`; anything else is billed at the base prices.
    pub fn parse(name: &str) -> Option<ServiceTier> {
        match name {
            "priority" => Some(ServiceTier::Priority),
            "flex" => Some(ServiceTier::Flex),
            _ => None,
        }
    }
}

/// A model's prices at each service tier it is billed apart at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTierPrices {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Rates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flex: Option<Rates>,
}

impl ServiceTierPrices {
    pub fn is_empty(&self) -> bool {
        self.priority.is_none() && self.flex.is_none()
    }
}

impl ModelPrice {
    /// A price of `input` and `output` USD per token and nothing else (no
    /// cache or reasoning rates, no token limits, no provider).
    pub fn per_token(input: Decimal, output: Decimal) -> ModelPrice {
        ModelPrice {
            provider: String::new(),
            input_cost_per_token: input,
            output_cost_per_token: output,
            cache_read_input_token_cost: None,
            cache_creation_input_token_cost: None,
            cache_creation_input_token_cost_above_1hr: None,
            output_cost_per_reasoning_token: None,
            input_cost_per_audio_token: None,
            output_cost_per_audio_token: None,
            max_input_tokens: None,
            max_output_tokens: None,
            supports_reasoning: false,
            long_context: Vec::new(),
            service_tiers: ServiceTierPrices::default(),
            web_search_cost_per_call: None,
        }
    }

    /// The prices of a call served at `service_tier` (OpenAI's `priority`
    /// or `flex`, as its answer reports it) with `input_tokens` input
    /// tokens: these, the service tier's, or, past a long-context threshold,
    /// the highest such tier's. A price the tier does not name (cache reads
    /// and writes where it has none, one-hour writes, audio, reasoning) is
    /// scaled by the same factor as its side's token price: Google,
    /// Anthropic and OpenAI raise their other prices in the same proportion,
    /// and Anthropic's one-hour writes stay twice the (higher) input price.
    /// A factor that does not divide evenly is rounded to `Decimal`'s 28
    /// digits. Price usage at the result with [`crate::pricing::cost_at`],
    /// which does not pick a tier again.
    pub fn for_call(
        &self,
        service_tier: Option<ServiceTier>,
        input_tokens: u64,
    ) -> Cow<'_, ModelPrice> {
        let served = match service_tier {
            Some(ServiceTier::Priority) => self.service_tiers.priority.as_ref(),
            Some(ServiceTier::Flex) => self.service_tiers.flex.as_ref(),
            None => None,
        };
        if let Some(rates) = served {
            return Cow::Owned(self.with_rates(rates));
        }
        match self
            .long_context
            .iter()
            .filter(|t| input_tokens > t.above_input_tokens)
            .max_by_key(|t| t.above_input_tokens)
        {
            Some(tier) => Cow::Owned(self.with_rates(&tier.rates)),
            None => Cow::Borrowed(self),
        }
    }

    /// These prices with `input` and `output` as the base prices per token
    /// (a project's negotiated rates, say), and every other price scaled in
    /// the same proportion as its side's: cache reads and writes, one-hour
    /// writes, audio, reasoning, long-context and service tiers. The web
    /// search fee, per call, stays. When a base price was zero there is no
    /// proportion: that side's other prices are dropped (cache prices then
    /// fall back to the input price), and so are the tiers.
    #[must_use]
    pub fn rebased(&self, input: Decimal, output: Decimal) -> ModelPrice {
        let (base_in, base_out) = (self.input_cost_per_token, self.output_cost_per_token);
        let proportional = |p: Decimal, from: Decimal, to: Decimal| {
            (!from.is_zero()).then(|| in_proportion(p, from, to))
        };
        let mut priced = self.with_base(input, output, proportional);
        if !base_in.is_zero() && !base_out.is_zero() {
            let rates = |r: &Rates| Rates {
                input_cost_per_token: in_proportion(r.input_cost_per_token, base_in, input),
                output_cost_per_token: in_proportion(r.output_cost_per_token, base_out, output),
                cache_read_input_token_cost: r
                    .cache_read_input_token_cost
                    .map(|p| in_proportion(p, base_in, input)),
                cache_creation_input_token_cost: r
                    .cache_creation_input_token_cost
                    .map(|p| in_proportion(p, base_in, input)),
            };
            priced.long_context = self
                .long_context
                .iter()
                .map(|t| LongContextPrice {
                    above_input_tokens: t.above_input_tokens,
                    rates: rates(&t.rates),
                })
                .collect();
            priced.service_tiers = ServiceTierPrices {
                priority: self.service_tiers.priority.as_ref().map(rates),
                flex: self.service_tiers.flex.as_ref().map(rates),
            };
        }
        priced
    }

    /// These prices with `rates` in place of the base ones (see [`ModelPrice::for_call`]).
    fn with_rates(&self, rates: &Rates) -> ModelPrice {
        let mut priced = self.with_base(
            rates.input_cost_per_token,
            rates.output_cost_per_token,
            |p, from, to| {
                Some(if from.is_zero() {
                    to
                } else {
                    in_proportion(p, from, to)
                })
            },
        );
        if let Some(read) = rates.cache_read_input_token_cost {
            priced.cache_read_input_token_cost = Some(read);
        }
        if let Some(write) = rates.cache_creation_input_token_cost {
            priced.cache_creation_input_token_cost = Some(write);
        }
        priced
    }

    /// These prices with `input` and `output` as the base prices per token,
    /// each other per-token price `p` becoming `scale(p, its side's base
    /// price, the new one)`; the limits and the search fee kept, no tiers.
    fn with_base(
        &self,
        input: Decimal,
        output: Decimal,
        scale: impl Fn(Decimal, Decimal, Decimal) -> Option<Decimal>,
    ) -> ModelPrice {
        let (base_in, base_out) = (self.input_cost_per_token, self.output_cost_per_token);
        let by_input = |p: Option<Decimal>| p.and_then(|p| scale(p, base_in, input));
        let by_output = |p: Option<Decimal>| p.and_then(|p| scale(p, base_out, output));
        ModelPrice {
            provider: self.provider.clone(),
            input_cost_per_token: input,
            output_cost_per_token: output,
            cache_read_input_token_cost: by_input(self.cache_read_input_token_cost),
            cache_creation_input_token_cost: by_input(self.cache_creation_input_token_cost),
            cache_creation_input_token_cost_above_1hr: by_input(
                self.cache_creation_input_token_cost_above_1hr,
            ),
            output_cost_per_reasoning_token: by_output(self.output_cost_per_reasoning_token),
            input_cost_per_audio_token: by_input(self.input_cost_per_audio_token),
            output_cost_per_audio_token: by_output(self.output_cost_per_audio_token),
            max_input_tokens: self.max_input_tokens,
            max_output_tokens: self.max_output_tokens,
            supports_reasoning: self.supports_reasoning,
            long_context: Vec::new(),
            service_tiers: ServiceTierPrices::default(),
            web_search_cost_per_call: self.web_search_cost_per_call.clone(),
        }
    }
}

/// `price` × `to` / `from`: a price moved as its side's price moves from
/// `from` to `to` (`from` not zero). Exact when the quotient is; else
/// rounded to `Decimal`'s 28 digits; `Decimal::MAX` past its range.
fn in_proportion(price: Decimal, from: Decimal, to: Decimal) -> Decimal {
    price
        .checked_mul(to)
        .and_then(|x| x.checked_div(from))
        .unwrap_or(Decimal::MAX)
        .normalize()
}

/// The table file's shape.
#[derive(Debug, Deserialize)]
struct PriceFile {
    models: HashMap<String, ModelPrice>,
}

/// A table that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PriceTableError {
    #[error("the price table is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
}

/// Model id → prices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    models: HashMap<String, ModelPrice>,
}

impl PriceTable {
    /// Every model id the table prices.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelPrice)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The table shipped with this build. Parse it once at start-up.
    pub fn bundled() -> Result<Self, PriceTableError> {
        Self::from_json(BUNDLED_JSON)
    }

    /// A table in the bundled file's format: `{"models": {"id": {…}, …}}`.
    pub fn from_json(json: &str) -> Result<Self, PriceTableError> {
        let file: PriceFile = serde_json::from_str(json)?;
        Ok(PriceTable {
            models: file.models,
        })
    }

    /// This table with `overrides` added, replacing entries with the same key.
    /// Overridden keys take part in [`PriceTable::lookup`] like any other.
    #[must_use]
    pub fn with_overrides(
        mut self,
        overrides: impl IntoIterator<Item = (String, ModelPrice)>,
    ) -> Self {
        self.models.extend(overrides);
        self
    }

    /// The entry under exactly `key`.
    pub fn get(&self, key: &str) -> Option<&ModelPrice> {
        self.models.get(key)
    }

    /// Price of `model` as served by `provider` (a `Route`'s `provider` and
    /// `upstream_model`); see the module doc for the order tried.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&ModelPrice> {
        lookup_keys(provider, model).find_map(|k| self.models.get(&k))
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// A project's price of `model` from `provider` among its `overrides`
/// (price-table keys), tried in [`PriceTable::lookup`]'s order. Any override
/// that matches wins over the bundled table, even an undated one over a
/// dated bundled entry.
pub fn lookup_override<'a>(
    overrides: &'a [(String, ModelPrice)],
    provider: &str,
    model: &str,
) -> Option<&'a ModelPrice> {
    if overrides.is_empty() {
        return None;
    }
    lookup_keys(provider, model)
        .find_map(|k| overrides.iter().find(|(key, _)| *key == k))
        .map(|(_, price)| price)
}

/// The keys tried for `model` from `provider`, in order (see the module doc).
fn lookup_keys<'a>(provider: &'a str, model: &'a str) -> impl Iterator<Item = String> + 'a {
    [Some(model), without_date_suffix(model)]
        .into_iter()
        .flatten()
        .flat_map(move |m| [format!("{provider}/{m}"), m.to_owned()])
}

/// `claude-3-5-sonnet-20241022` → `claude-3-5-sonnet`,
/// `gpt-4o-2024-08-06` → `gpt-4o`; `None` if there is no date suffix.
fn without_date_suffix(model: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (head, last) = model.rsplit_once('-')?;
    if last.len() == 8 && digits(last) {
        return Some(head);
    }
    // -YYYY-MM-DD: the last three dash-separated pieces.
    let (head2, month) = head.rsplit_once('-')?;
    let (head3, year) = head2.rsplit_once('-')?;
    let dated = year.len() == 4 && month.len() == 2 && last.len() == 2;
    (dated && digits(year) && digits(month) && digits(last)).then_some(head3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_suffixes() {
        assert_eq!(
            without_date_suffix("claude-3-5-sonnet-20241022"),
            Some("claude-3-5-sonnet")
        );
        assert_eq!(without_date_suffix("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(without_date_suffix("gpt-4o"), None);
        assert_eq!(without_date_suffix("gemini-2.0-flash-001"), None);
        assert_eq!(without_date_suffix("x-1234-56-789"), None);
    }

    #[test]
    fn overrides_match_under_every_key_lookup_tries() {
        let price = |n: i64| ModelPrice::per_token(Decimal::new(n, 6), Decimal::new(n, 6));
        let overrides = vec![
            ("xai/grok-3".to_owned(), price(1)),
            ("gpt-4o".to_owned(), price(2)),
        ];
        let found = |provider, model| lookup_override(&overrides, provider, model).cloned();
        assert_eq!(found("xai", "grok-3"), Some(price(1)));
        assert_eq!(found("openai", "gpt-4o-2024-08-06"), Some(price(2)));
        assert_eq!(found("openai", "gpt-4o"), Some(price(2)));
        assert_eq!(found("openai", "grok-3"), None);
        assert_eq!(lookup_override(&[], "openai", "gpt-4o"), None);
    }

    #[test]
    fn a_rebased_price_scales_every_other_price_in_proportion() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let rates = |i: &str, o: &str, read: Option<&str>| Rates {
            input_cost_per_token: d(i),
            output_cost_per_token: d(o),
            cache_read_input_token_cost: read.map(d),
            cache_creation_input_token_cost: None,
        };
        let bundled = ModelPrice {
            cache_read_input_token_cost: Some(d("0.0000003")),
            output_cost_per_reasoning_token: Some(d("0.00002")),
            long_context: vec![LongContextPrice {
                above_input_tokens: 200_000,
                rates: rates("0.000006", "0.0000225", Some("0.0000006")),
            }],
            service_tiers: ServiceTierPrices {
                priority: Some(rates("0.0000051", "0.0000255", None)),
                flex: None,
            },
            web_search_cost_per_call: Some(WebSearchPrices {
                low: d("0.01"),
                medium: d("0.01"),
                high: d("0.01"),
            }),
            max_input_tokens: Some(1_000_000),
            ..ModelPrice::per_token(d("0.000003"), d("0.000015"))
        };
        // A third off input, a fifth off output.
        let ours = bundled.rebased(d("0.000002"), d("0.000012"));
        assert_eq!(ours.cache_read_input_token_cost, Some(d("0.0000002")));
        assert_eq!(ours.output_cost_per_reasoning_token, Some(d("0.000016")));
        assert_eq!(
            ours.long_context[0].rates,
            rates("0.000004", "0.000018", Some("0.0000004"))
        );
        assert_eq!(
            ours.service_tiers.priority,
            Some(rates("0.0000034", "0.0000204", None))
        );
        assert_eq!(
            ours.web_search_cost_per_call,
            bundled.web_search_cost_per_call
        );
        assert_eq!(ours.max_input_tokens, Some(1_000_000));
        // From a free model there is no proportion: only the new base prices.
        let free = ModelPrice::per_token(Decimal::ZERO, Decimal::ZERO);
        let free = ModelPrice {
            cache_read_input_token_cost: Some(Decimal::ZERO),
            long_context: bundled.long_context.clone(),
            ..free
        };
        let priced = free.rebased(d("0.000001"), d("0.000002"));
        assert_eq!(priced.cache_read_input_token_cost, None);
        assert!(priced.long_context.is_empty());
    }

    #[test]
    fn float_prices_are_refused() {
        let json =
            r#"{"models":{"m":{"input_cost_per_token":2.5e-06,"output_cost_per_token":"1"}}}"#;
        assert!(PriceTable::from_json(json).is_err());
        let tier = |input: &str| {
            format!(
                r#"{{"models":{{"m":{{"input_cost_per_token":"1","output_cost_per_token":"1","long_context":[{{"above_input_tokens":9,"input_cost_per_token":{input},"output_cost_per_token":"2"}}]}}}}}}"#
            )
        };
        let table = PriceTable::from_json(&tier(r#""2""#)).unwrap();
        assert_eq!(
            table.get("m").unwrap().long_context[0]
                .rates
                .input_cost_per_token,
            Decimal::TWO
        );
        assert!(PriceTable::from_json(&tier("2.5e-06")).is_err());
        let served = r#"{"models":{"m":{"input_cost_per_token":"1","output_cost_per_token":"1","service_tiers":{"priority":{"input_cost_per_token":2,"output_cost_per_token":"2"}}}}}"#;
        assert!(PriceTable::from_json(served).is_err());
    }
}
