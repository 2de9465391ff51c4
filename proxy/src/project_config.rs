//! A project's proxy configuration from PostgreSQL: custom OpenAI-compatible
//! providers, price overrides and provider keys.
//!
//! [`ProjectConfig::load`] reads the three tables and decrypts the keys with
//! the operator's [`EncryptionKey`]; decrypted keys live only in memory, inside
//! a [`ProjectConfig`] whose `Debug` prints them as `***`. Without an
//! encryption key, stored keys are skipped (warned about once per process).
//! [`ProjectConfigCache`] keeps recently used configurations for a few seconds
//! and forgets them all as soon as a change is announced on
//! [`schemas::subjects::CONTROL_CHANGED`], as `ledger::control::ControlCache`
//! does for projects. Writers ([`add_custom_provider`], [`set_price_override`],
//! `keys::store_provider_key`) validate their input before touching the table;
//! announcing the change is the caller's job.

use crate::keys::{EncryptionKey, Sealed, ENCRYPTION_KEY_ENV};
use crate::pricing::ModelPrice;
use crate::providers::{BaseUrls, CustomProvider, ProviderKey};
use anyhow::Context as _;
use ledger::control::Cached;
use rust_decimal::Decimal;
use schemas::ProjectId;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Once};

/// Past this many cached projects the cache starts over.
const MAX_CACHED_PROJECTS: usize = 100_000;
/// Longest custom provider name, in bytes.
pub const MAX_PROVIDER_NAME_BYTES: usize = 40;
/// Longest custom provider base URL, in bytes.
pub const MAX_BASE_URL_BYTES: usize = 2048;
/// Longest model id of a price override, in bytes.
pub const MAX_MODEL_BYTES: usize = 200;
/// Names a custom provider may not take: the built-ins, the `google/` alias
/// and the kind name routing uses for custom providers.
const RESERVED_PROVIDER_NAMES: [&str; 2] = ["google", "custom"];

static WARNED_NO_ENCRYPTION_KEY: Once = Once::new();

/// Why a custom provider or price override was refused. Says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigInputError {
    #[error("provider name '{0}' must be 1-{MAX_PROVIDER_NAME_BYTES} characters of a-z, 0-9, '_' and '-'")]
    ProviderName(String),
    #[error("provider name '{0}' is reserved for routing; choose another")]
    ReservedProviderName(String),
    #[error("base URL '{0}' must be an http:// or https:// URL with a host, no user:password@ and no query, e.g. https://api.together.xyz/v1")]
    BaseUrl(String),
    #[error("model must be 1-{MAX_MODEL_BYTES} bytes without spaces or control characters")]
    Model,
    #[error("price '{field}' must not be negative")]
    NegativePrice { field: &'static str },
}

/// One project's proxy configuration. `Debug` shows keys as `***`.
#[derive(Debug, Clone, Default)]
pub struct ProjectConfig {
    pub custom_providers: Vec<CustomProvider>,
    /// Model id (as in the price table) → price; apply with
    /// `PriceTable::with_overrides`.
    pub price_overrides: Vec<(String, ModelPrice)>,
    /// Provider name → decrypted key. Held in memory only.
    keys: HashMap<String, ProviderKey>,
    /// Providers with a stored key this process cannot use: no
    /// `TOLLGATE_ENCRYPTION_KEY`, or one that does not open it.
    unusable_keys: Vec<String>,
}

impl ProjectConfig {
    /// The built-in providers' base URLs for this project: `defaults`, with any
    /// the project overrode (a custom provider named `openai`, `anthropic`, …).
    pub fn base_urls<'a>(&self, defaults: &'a BaseUrls) -> std::borrow::Cow<'a, BaseUrls> {
        let mut urls = std::borrow::Cow::Borrowed(defaults);
        for p in &self.custom_providers {
            let slot = match p.name.as_str() {
                "openai" => &mut urls.to_mut().openai,
                "anthropic" => &mut urls.to_mut().anthropic,
                "gemini" => &mut urls.to_mut().gemini,
                "xai" => &mut urls.to_mut().xai,
                _ => continue,
            };
            slot.clone_from(&p.base_url);
        }
        urls
    }

    /// Whether `route` calls a base URL this project set (a custom
    /// provider, or its own URL for a built-in one) rather than the
    /// operator's: such calls are checked by `TOLLGATE_PRIVATE_UPSTREAMS`.
    /// A route's provider is the name [`ProjectConfig::base_urls`] and
    /// custom providers are registered under (tested below).
    pub fn sets_base_url_of(&self, route: &crate::providers::Route) -> bool {
        self.custom_providers
            .iter()
            .any(|p| p.name == route.provider)
    }

    /// A configuration from parts (for tests and callers that build one by hand).
    pub fn new(
        custom_providers: Vec<CustomProvider>,
        price_overrides: Vec<(String, ModelPrice)>,
        keys: impl IntoIterator<Item = (String, ProviderKey)>,
    ) -> Self {
        ProjectConfig {
            custom_providers,
            price_overrides,
            keys: keys.into_iter().collect(),
            unusable_keys: Vec::new(),
        }
    }

    /// The project's key for `provider` (a `Route`'s `provider`), if stored
    /// and decrypted.
    pub fn key(&self, provider: &str) -> Option<&ProviderKey> {
        self.keys.get(provider)
    }

    /// Whether the project stored a key for `provider` that this process
    /// cannot decrypt (a server misconfiguration, not the app's mistake).
    pub fn stored_key_unusable(&self, provider: &str) -> bool {
        self.unusable_keys.iter().any(|p| p == provider)
    }

    /// Loads `project`'s configuration. Keys are decrypted with `enc`; with
    /// `None` they are skipped. A key or price that cannot be read is logged
    /// and skipped, so the rest of the project keeps working.
    pub async fn load(
        pool: &PgPool,
        project: ProjectId,
        enc: Option<&EncryptionKey>,
    ) -> anyhow::Result<ProjectConfig> {
        let (keys, unusable_keys) = load_keys(pool, project, enc).await?;
        Ok(ProjectConfig {
            custom_providers: load_custom_providers(pool, project).await?,
            price_overrides: load_price_overrides(pool, project).await?,
            keys,
            unusable_keys,
        })
    }
}

async fn load_custom_providers(
    pool: &PgPool,
    project: ProjectId,
) -> anyhow::Result<Vec<CustomProvider>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, base_url FROM custom_providers WHERE project_id = $1 ORDER BY name",
    )
    .bind(project.0)
    .fetch_all(pool)
    .await
    .with_context(|| format!("loading the custom providers of project {project}"))?;
    Ok(rows
        .into_iter()
        .map(|(name, base_url)| CustomProvider { name, base_url })
        .collect())
}

async fn load_price_overrides(
    pool: &PgPool,
    project: ProjectId,
) -> anyhow::Result<Vec<(String, ModelPrice)>> {
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT model, price FROM price_overrides WHERE project_id = $1 ORDER BY model",
    )
    .bind(project.0)
    .fetch_all(pool)
    .await
    .with_context(|| format!("loading the price overrides of project {project}"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(model, price)| match serde_json::from_value(price) {
            Ok(price) => Some((model, price)),
            Err(e) => {
                tracing::error!(project_id = %project, model = %model, error = %e, "stored price override cannot be read; the bundled price applies until it is set again");
                None
            }
        })
        .collect())
}

async fn load_keys(
    pool: &PgPool,
    project: ProjectId,
    enc: Option<&EncryptionKey>,
) -> anyhow::Result<(HashMap<String, ProviderKey>, Vec<String>)> {
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT provider, ciphertext, nonce FROM provider_keys WHERE project_id = $1",
    )
    .bind(project.0)
    .fetch_all(pool)
    .await
    .with_context(|| format!("loading the provider keys of project {project}"))?;
    let Some(enc) = enc else {
        if !rows.is_empty() {
            WARNED_NO_ENCRYPTION_KEY.call_once(|| {
                tracing::warn!(project_id = %project, "stored provider keys are ignored: {ENCRYPTION_KEY_ENV} is not set");
            });
        }
        return Ok((HashMap::new(), rows.into_iter().map(|r| r.0).collect()));
    };
    let mut keys = HashMap::with_capacity(rows.len());
    let mut unusable = Vec::new();
    for (provider, ciphertext, nonce) in rows {
        match enc.open(project, &provider, &Sealed { ciphertext, nonce }) {
            Ok(key) => {
                keys.insert(provider, key);
            }
            Err(e) => {
                tracing::error!(project_id = %project, provider = %provider, error = %e, "provider key skipped");
                unusable.push(provider);
            }
        }
    }
    Ok((keys, unusable))
}

/// Checks a custom provider and returns it normalized (trimmed, without a
/// trailing slash on the base URL).
pub fn validate_custom_provider(
    name: &str,
    base_url: &str,
) -> Result<CustomProvider, ConfigInputError> {
    let name = name.trim();
    let name_ok = !name.is_empty()
        && name.len() <= MAX_PROVIDER_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(ConfigInputError::ProviderName(name.to_owned()));
    }
    // A built-in name (openai, anthropic, gemini, xai) overrides that provider's base URL for the project.
    if RESERVED_PROVIDER_NAMES.contains(&name) {
        return Err(ConfigInputError::ReservedProviderName(name.to_owned()));
    }
    let base_url = base_url.trim().trim_end_matches('/');
    if !is_http_url(base_url) {
        return Err(ConfigInputError::BaseUrl(base_url.to_owned()));
    }
    Ok(CustomProvider {
        name: name.to_owned(),
        base_url: base_url.to_owned(),
    })
}

fn is_http_url(url: &str) -> bool {
    if url.len() > MAX_BASE_URL_BYTES || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    // No `user:password@`: it would be stored in the clear, and never sent.
    let no_credentials = uri.authority().is_none_or(|a| !a.as_str().contains('@'));
    scheme_ok && host_ok && no_credentials && uri.query().is_none() && !url.contains('#')
}

/// Registers (or re-points) `project`'s OpenAI-compatible provider `name`.
pub async fn add_custom_provider(
    pool: &PgPool,
    project: ProjectId,
    name: &str,
    base_url: &str,
) -> anyhow::Result<CustomProvider> {
    let provider = validate_custom_provider(name, base_url)?;
    sqlx::query(
        "INSERT INTO custom_providers (project_id, name, base_url) VALUES ($1, $2, $3) \
         ON CONFLICT (project_id, name) DO UPDATE SET base_url = EXCLUDED.base_url",
    )
    .bind(project.0)
    .bind(&provider.name)
    .bind(&provider.base_url)
    .execute(pool)
    .await
    .with_context(|| {
        format!(
            "storing custom provider {} of project {project}",
            provider.name
        )
    })?;
    Ok(provider)
}

/// The names of a [`crate::pricing::Rates`]'s amounts in each place one is
/// kept, for [`ConfigInputError::NegativePrice`].
const LONG_CONTEXT_FIELDS: [&str; 4] = [
    "long_context.input_cost_per_token",
    "long_context.output_cost_per_token",
    "long_context.cache_read_input_token_cost",
    "long_context.cache_creation_input_token_cost",
];
const PRIORITY_FIELDS: [&str; 4] = [
    "service_tiers.priority.input_cost_per_token",
    "service_tiers.priority.output_cost_per_token",
    "service_tiers.priority.cache_read_input_token_cost",
    "service_tiers.priority.cache_creation_input_token_cost",
];
const FLEX_FIELDS: [&str; 4] = [
    "service_tiers.flex.input_cost_per_token",
    "service_tiers.flex.output_cost_per_token",
    "service_tiers.flex.cache_read_input_token_cost",
    "service_tiers.flex.cache_creation_input_token_cost",
];

/// Checks a price override: the model id is a plausible table key and no
/// amount is negative.
pub fn validate_price_override(model: &str, price: &ModelPrice) -> Result<(), ConfigInputError> {
    let model_ok = !model.is_empty()
        && model.len() <= MAX_MODEL_BYTES
        && !model.chars().any(|c| c.is_whitespace() || c.is_control());
    if !model_ok {
        return Err(ConfigInputError::Model);
    }
    let amounts: [(&'static str, Option<Decimal>); 8] = [
        ("input_cost_per_token", Some(price.input_cost_per_token)),
        ("output_cost_per_token", Some(price.output_cost_per_token)),
        (
            "cache_read_input_token_cost",
            price.cache_read_input_token_cost,
        ),
        (
            "cache_creation_input_token_cost",
            price.cache_creation_input_token_cost,
        ),
        (
            "cache_creation_input_token_cost_above_1hr",
            price.cache_creation_input_token_cost_above_1hr,
        ),
        (
            "output_cost_per_reasoning_token",
            price.output_cost_per_reasoning_token,
        ),
        (
            "input_cost_per_audio_token",
            price.input_cost_per_audio_token,
        ),
        (
            "output_cost_per_audio_token",
            price.output_cost_per_audio_token,
        ),
    ];
    let tiers = price
        .long_context
        .iter()
        .map(|t| (LONG_CONTEXT_FIELDS, &t.rates))
        .chain(
            price
                .service_tiers
                .priority
                .iter()
                .map(|r| (PRIORITY_FIELDS, r)),
        )
        .chain(price.service_tiers.flex.iter().map(|r| (FLEX_FIELDS, r)))
        .flat_map(|([input, output, read, write], r)| {
            [
                (input, Some(r.input_cost_per_token)),
                (output, Some(r.output_cost_per_token)),
                (read, r.cache_read_input_token_cost),
                (write, r.cache_creation_input_token_cost),
            ]
        });
    let search = price.web_search_cost_per_call.iter().flat_map(|w| {
        [
            ("web_search_cost_per_call.low", Some(w.low)),
            ("web_search_cost_per_call.medium", Some(w.medium)),
            ("web_search_cost_per_call.high", Some(w.high)),
        ]
    });
    match amounts
        .into_iter()
        .chain(tiers)
        .chain(search)
        .find(|(_, amount)| amount.is_some_and(|a| a.is_sign_negative() && !a.is_zero()))
    {
        Some((field, _)) => Err(ConfigInputError::NegativePrice { field }),
        None => Ok(()),
    }
}

/// Sets (or replaces) `project`'s price for `model`.
pub async fn set_price_override(
    pool: &PgPool,
    project: ProjectId,
    model: &str,
    price: &ModelPrice,
) -> anyhow::Result<()> {
    validate_price_override(model, price)?;
    let json = serde_json::to_value(price)?;
    sqlx::query(
        "INSERT INTO price_overrides (project_id, model, price) VALUES ($1, $2, $3) \
         ON CONFLICT (project_id, model) DO UPDATE SET price = EXCLUDED.price, updated_at = now()",
    )
    .bind(project.0)
    .bind(model)
    .bind(json)
    .execute(pool)
    .await
    .with_context(|| format!("storing the price of {model} for project {project}"))?;
    Ok(())
}

/// Project configurations, cached briefly. Cheap to clone.
#[derive(Clone)]
pub struct ProjectConfigCache {
    pool: PgPool,
    enc: Option<Arc<EncryptionKey>>,
    entries: Cached<ProjectId, Arc<ProjectConfig>>,
}

impl ProjectConfigCache {
    /// Without `enc`, stored provider keys are skipped.
    pub fn new(pool: PgPool, enc: Option<EncryptionKey>) -> Self {
        Self {
            pool,
            enc: enc.map(Arc::new),
            entries: Cached::new(MAX_CACHED_PROJECTS),
        }
    }

    /// Forgets everything when a change is announced, until the client closes.
    pub fn follow_changes(&self, client: async_nats::Client) {
        self.entries.follow_changes(client);
    }

    pub fn invalidate(&self) {
        self.entries.clear();
    }

    /// `project`'s configuration, from the cache when fresh.
    pub async fn get(&self, project: ProjectId) -> anyhow::Result<Arc<ProjectConfig>> {
        if let Some(hit) = self.entries.fresh(&project) {
            return Ok(hit);
        }
        let version = self.entries.version();
        let config = Arc::new(ProjectConfig::load(&self.pool, project, self.enc.as_deref()).await?);
        self.entries.store(project, config.clone(), version);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_plain_http_urls_without_credentials_or_queries() {
        for good in [
            "https://api.together.xyz/v1",
            "http://127.0.0.1:8000/v1",
            "https://[::1]:8443",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "https://user:secret@api.example.com/v1",
            "https://token@api.example.com/v1",
            "https://api.example.com/v1?key=abc",
            "https://api.example.com/v1#frag",
            "ftp://api.example.com",
            "https:///v1",
            "https://api.example.com/v 1",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[test]
    fn a_route_to_a_url_the_project_set_is_known_as_one() {
        let own = "http://10.0.0.9/v1";
        let models = [
            ("openai", "gpt-4o"),
            ("openai", "openai/gpt-4o"),
            ("anthropic", "claude-sonnet-4-5"),
            ("gemini", "gemini-2.5-flash"),
            ("gemini", "google/gemini-2.5-flash"),
            ("xai", "grok-4"),
            ("vllm", "vllm/llama"),
        ];
        for (name, model) in models {
            let config = ProjectConfig::new(
                vec![CustomProvider {
                    name: name.to_owned(),
                    base_url: own.to_owned(),
                }],
                Vec::new(),
                [],
            );
            let defaults = BaseUrls::default();
            let urls = config.base_urls(&defaults);
            let route = crate::providers::route(model, &config.custom_providers, &urls).unwrap();
            assert_eq!(route.base_url, own, "{model}");
            assert!(config.sets_base_url_of(&route), "{model}");
            // Every other model keeps the operator's URL, and is known so.
            for (_, other) in models.iter().filter(|(n, _)| *n != name) {
                let route = crate::providers::route(other, &config.custom_providers, &urls);
                let Ok(route) = route else { continue };
                assert_ne!(route.base_url, own, "{other} with {name}'s own URL");
                assert!(
                    !config.sets_base_url_of(&route),
                    "{other} with {name}'s own URL"
                );
            }
        }
    }

    #[test]
    fn custom_provider_names_and_urls() {
        let ok = validate_custom_provider(" together ", "https://api.together.xyz/v1/");
        assert_eq!(
            ok,
            Ok(CustomProvider {
                name: "together".to_owned(),
                base_url: "https://api.together.xyz/v1".to_owned()
            })
        );
        assert!(validate_custom_provider("local_vllm-2", "http://127.0.0.1:8000/v1").is_ok());
        for bad in ["", "Together", "to gether", "a/b", &"x".repeat(41)] {
            assert!(
                matches!(
                    validate_custom_provider(bad, "https://x.y/v1"),
                    Err(ConfigInputError::ProviderName(_))
                ),
                "{bad:?}"
            );
        }
        for reserved in ["google", "custom"] {
            assert!(matches!(
                validate_custom_provider(reserved, "https://x.y/v1"),
                Err(ConfigInputError::ReservedProviderName(_))
            ));
        }
        // A built-in name points that provider at the project's own base URL.
        for builtin in ["openai", "anthropic", "gemini", "xai"] {
            assert_eq!(
                validate_custom_provider(builtin, "https://x.y/v1")
                    .unwrap()
                    .name,
                builtin
            );
        }
        for bad in [
            "",
            "api.together.xyz/v1",
            "ftp://x.y/v1",
            "https://",
            "https://x.y/v1?k=1",
            "https://x.y/v1#f",
            "https://x y/v1",
        ] {
            assert!(
                matches!(
                    validate_custom_provider("p", bad),
                    Err(ConfigInputError::BaseUrl(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn price_overrides_refuse_negative_amounts_and_bad_models() {
        let price = |input: i64, output: i64| {
            ModelPrice::per_token(Decimal::new(input, 6), Decimal::new(output, 6))
        };
        assert_eq!(validate_price_override("m", &price(0, 3)), Ok(()));
        assert_eq!(
            validate_price_override("m", &price(1, -3)),
            Err(ConfigInputError::NegativePrice {
                field: "output_cost_per_token"
            })
        );
        // One negative amount in each place a price keeps amounts.
        let rates = |read: i64| crate::pricing::Rates {
            input_cost_per_token: Decimal::new(2, 6),
            output_cost_per_token: Decimal::new(2, 6),
            cache_read_input_token_cost: Some(Decimal::new(read, 7)),
            cache_creation_input_token_cost: None,
        };
        let mut long = price(1, 1);
        long.long_context.push(crate::pricing::LongContextPrice {
            above_input_tokens: 200_000,
            rates: rates(-1),
        });
        let mut flex = price(1, 1);
        flex.service_tiers.flex = Some(rates(-1));
        let mut search = price(1, 1);
        search.web_search_cost_per_call = Some(crate::pricing::WebSearchPrices {
            low: Decimal::ONE,
            medium: Decimal::NEGATIVE_ONE,
            high: Decimal::ONE,
        });
        for (bad, field) in [
            (long, "long_context.cache_read_input_token_cost"),
            (flex, "service_tiers.flex.cache_read_input_token_cost"),
            (search, "web_search_cost_per_call.medium"),
        ] {
            assert_eq!(
                validate_price_override("m", &bad),
                Err(ConfigInputError::NegativePrice { field })
            );
        }
        assert_eq!(
            validate_price_override("a model", &price(1, 1)),
            Err(ConfigInputError::Model)
        );
        assert_eq!(
            validate_price_override("", &price(1, 1)),
            Err(ConfigInputError::Model)
        );
    }
}
