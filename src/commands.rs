//! One-shot commands: projects, plans, replay, checksums and audit.
//! Output meant for programs goes to stdout as JSON; progress to stderr.

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use schemas::plan::Plan;
use schemas::Account;
use sqlx::PgPool;
use std::io::Write;

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
    eprintln!(
        "replayed {} events in {:.2?} ({:.0} events/s)",
        report.events, report.elapsed, rate
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
