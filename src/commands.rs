//! One-shot commands: projects, plans, provider keys, custom providers,
//! price overrides, replay, checksums and audit.
//! Output meant for programs goes to stdout as JSON; progress to stderr.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use schemas::plan::Plan;
use schemas::Account;
use sqlx::PgPool;
use std::io::{Read as _, Write};

fn out(line: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")
}

pub async fn project_create(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    if name.trim().is_empty() || name.len() > 200 {
        anyhow::bail!("--name must be 1-200 characters");
    }
    let new = ledger::control::create_project(pool, name).await?;
    out(&serde_json::to_string(&new)?)
}

pub async fn plans_apply(
    pool: &PgPool,
    client: &async_nats::Client,
    public_key: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let plan =
        Plan::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message))?;
    if !ledger::control::apply_plan(pool, public_key, &plan).await? {
        anyhow::bail!("no project has the key {public_key}");
    }
    ledger::control::announce_change(client).await;
    let summary: Vec<_> = plan
        .tiers
        .iter()
        .map(|(name, t)| serde_json::json!({"tier": name, "limits": t.limits.len()}))
        .collect();
    out(
        &serde_json::json!({"applied": true, "default_tier": plan.default_tier, "tiers": summary})
            .to_string(),
    )
}

pub async fn replay(js: &async_nats::jetstream::Context, pool: &PgPool) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = ledger::replay::replay(js, pool, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    let checksum = ledger::checksum::checksum(pool).await?;
    let rate = report.events as f64 / report.elapsed.as_secs_f64().max(1e-9);
    let phases = report.phases;
    eprintln!(
        "replayed {} events in {:.2?} ({:.0} events/s; setup {:.2?}, stream read and folded {:.2?}, final copies {:.2?}, commit {:.2?})",
        report.events, report.elapsed, rate, phases.setup, phases.stream, phases.final_copies, phases.commit
    );
    out(&checksum.to_string())
}

pub async fn balances_checksum(pool: &PgPool) -> anyhow::Result<()> {
    out(&ledger::checksum::checksum(pool).await?.to_string())
}

pub async fn audit(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
    public_key: &str,
    identity: &str,
) -> anyhow::Result<()> {
    let project = ledger::control::project_by_public_key(pool, public_key)
        .await?
        .with_context(|| format!("no project has the key {public_key}"))?;
    let account = Account::Identity {
        identity: identity.to_owned(),
    };
    let mut stdout = std::io::stdout().lock();
    ledger::audit::audit(js, project.project_id, &account, |seq, env| {
        let mut v = serde_json::to_value(env)?;
        v["seq"] = serde_json::json!(seq);
        writeln!(stdout, "{v}").context("writing to stdout")
    })
    .await?;
    Ok(())
}

/// The project with `public_key`, or an error saying there is none.
async fn project_by_key(
    pool: &PgPool,
    public_key: &str,
) -> anyhow::Result<ledger::control::Project> {
    ledger::control::project_by_public_key(pool, public_key)
        .await?
        .with_context(|| format!("no project has the key {public_key}"))
}

/// Reads a provider key from `input` (standard input): trimmed, never echoed.
/// A terminal is refused, since what is typed there shows on screen.
pub fn read_provider_key(
    mut input: impl std::io::Read,
    is_terminal: bool,
) -> anyhow::Result<proxy::providers::ProviderKey> {
    use proxy::keys::MAX_PROVIDER_KEY_BYTES;
    if is_terminal {
        anyhow::bail!("pipe the provider key into standard input, e.g. `printf '%s' \"$ANTHROPIC_API_KEY\" | tollgate keys add …` or `tollgate keys add … < key.txt`; it is not read from a terminal, where it would show");
    }
    let mut bytes = Vec::new();
    input
        .by_ref()
        .take(u64::try_from(MAX_PROVIDER_KEY_BYTES + 2).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)
        .context("reading the provider key from standard input")?;
    let text =
        String::from_utf8(bytes).context("the provider key on standard input is not UTF-8")?;
    let key = text.trim();
    if key.is_empty() {
        anyhow::bail!("standard input held no provider key: pipe the key in");
    }
    if key.len() > MAX_PROVIDER_KEY_BYTES {
        anyhow::bail!(
            "the provider key on standard input is longer than {MAX_PROVIDER_KEY_BYTES} bytes"
        );
    }
    Ok(proxy::providers::ProviderKey::new(key))
}

/// `tollgate keys add`: stores `key` encrypted and prints only its hint.
pub async fn keys_add(
    pool: &PgPool,
    client: &async_nats::Client,
    public_key: &str,
    provider: &str,
    key: &proxy::providers::ProviderKey,
    enc: &proxy::keys::EncryptionKey,
) -> anyhow::Result<()> {
    let project = project_by_key(pool, public_key).await?;
    proxy::keys::store_provider_key(pool, project.project_id, provider, key, enc).await?;
    ledger::control::announce_change(client).await;
    let hint = proxy::keys::key_hint(key);
    let hint = if hint.is_empty() {
        hint
    } else {
        format!("…{hint}")
    };
    out(
        &serde_json::json!({"project_key": public_key, "provider": provider, "key_hint": hint})
            .to_string(),
    )
}

/// `tollgate providers add`: registers a custom OpenAI-compatible provider.
pub async fn providers_add(
    pool: &PgPool,
    client: &async_nats::Client,
    public_key: &str,
    name: &str,
    base_url: &str,
) -> anyhow::Result<()> {
    let project = project_by_key(pool, public_key).await?;
    let provider =
        proxy::project_config::add_custom_provider(pool, project.project_id, name, base_url)
            .await?;
    ledger::control::announce_change(client).await;
    out(&serde_json::json!({"project_key": public_key, "provider": provider.name, "base_url": provider.base_url}).to_string())
}

/// A `--input`/`--output` price: exact decimal (or scientific) notation, not negative.
pub fn parse_usd_per_token(flag: &str, text: &str) -> anyhow::Result<rust_decimal::Decimal> {
    use rust_decimal::Decimal;
    let text = text.trim();
    let value = Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|_| anyhow::anyhow!("{flag} must be US dollars per token as a decimal number, e.g. 0.000003 or 3e-6; got '{text}'"))?;
    if value.is_sign_negative() && !value.is_zero() {
        anyhow::bail!("{flag} must not be negative; got '{text}'");
    }
    Ok(value.normalize())
}

/// A project's price of `model` at `input` and `output` dollars per token.
/// A model the bundled table prices (as the proxy looks it up for the
/// model's route, or under exactly this key) keeps the rest of its prices,
/// scaled in proportion
/// ([`proxy::pricing::ModelPrice::rebased`]): cache, reasoning and audio
/// rates, long-context and service tiers, its context window and its web
/// search fee. Without them an override would, say, bill a Gemini 2.5 Pro
/// prompt above 200k tokens at half what Google charges.
pub fn override_price(
    model: &str,
    input: rust_decimal::Decimal,
    output: rust_decimal::Decimal,
) -> anyhow::Result<proxy::pricing::ModelPrice> {
    use proxy::pricing::{ModelPrice, PriceTable};
    use proxy::providers::{route, BaseUrls};
    let table = PriceTable::bundled()?;
    let (provider, _) = model.split_once('/').unwrap_or(("", model));
    // The entry the proxy would price the model's calls with (`grok-4` is
    // `xai/grok-4`, `gemini-2.5-pro` Google AI Studio's, not Vertex's),
    // else one under exactly this key.
    let routed = route(model, &[], &BaseUrls::default())
        .ok()
        .and_then(|r| table.lookup(&r.provider, &r.upstream_model));
    let bundled = routed.or_else(|| table.get(model));
    Ok(match bundled {
        Some(bundled) => bundled.rebased(input, output),
        None => ModelPrice {
            provider: provider.to_owned(),
            ..ModelPrice::per_token(input, output)
        },
    })
}

/// `tollgate prices set`: overrides the price of `model` for a project.
pub async fn prices_set(
    pool: &PgPool,
    client: &async_nats::Client,
    public_key: &str,
    model: &str,
    input_usd_per_token: rust_decimal::Decimal,
    output_usd_per_token: rust_decimal::Decimal,
) -> anyhow::Result<()> {
    let project = project_by_key(pool, public_key).await?;
    let price = override_price(model, input_usd_per_token, output_usd_per_token)?;
    proxy::project_config::set_price_override(pool, project.project_id, model, &price).await?;
    ledger::control::announce_change(client).await;
    out(&serde_json::json!({"project_key": public_key, "model": model, "price": price}).to_string())
}
