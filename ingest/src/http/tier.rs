//! Resolving the tier a request is judged by, and checking its identity.

use crate::error::ApiError;
use ledger::control::Project;
use schemas::plan::Tier;
use schemas::Account;

/// The tier named by the request, else the project's default; a project
/// without a plan has one unnamed tier with no limits.
pub fn resolve(project: &Project, requested: Option<&str>) -> Result<(String, Tier), ApiError> {
    let Some(plan) = &project.plan else {
        return match requested {
            None => Ok(("default".to_owned(), Tier { concurrency: None, models: None, message: None, deep_link: None, limits: Vec::new() })),
            Some(t) => Err(ApiError::bad("unknown_tier", Some("tier".into()), format!("tier `{t}` does not exist: this project has no plan yet (tollgate plans apply)"))),
        };
    };
    match plan.tier(requested) {
        Some((name, tier)) => Ok((name.to_owned(), tier.clone())),
        None => Err(ApiError::bad(
            "unknown_tier",
            Some("tier".into()),
            format!(
                "tier `{}` does not exist; tiers: {}",
                requested.unwrap_or_default(),
                plan.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Refuses a model the tier does not allow (403).
pub fn check_model(tier_name: &str, tier: &Tier, model: Option<&str>) -> Result<(), ApiError> {
    let Some(allowed) = &tier.models else {
        return Ok(());
    };
    match model {
        Some(m) if allowed.iter().any(|g| g.matches(m)) => Ok(()),
        Some(m) => Err(ApiError::Forbidden(format!(
            "model `{m}` is not available on tier `{tier_name}`"
        ))),
        None => Err(ApiError::bad(
            "missing_model",
            Some("model".into()),
            format!("tier `{tier_name}` allows only some models: name the `model`"),
        )),
    }
}

pub fn account(identity: &str) -> Result<Account, ApiError> {
    schemas::ids::validate_identity(identity).map_err(|e| {
        ApiError::bad(
            "invalid_identity",
            Some("identity".into()),
            format!("`identity` {e}"),
        )
    })?;
    Ok(Account::Identity {
        identity: identity.to_owned(),
    })
}

pub fn model(model: Option<String>) -> Result<Option<String>, ApiError> {
    match model {
        Some(m) if m.is_empty() || m.len() > 200 || m.chars().any(char::is_control) => {
            Err(ApiError::bad(
                "invalid_model",
                Some("model".into()),
                "`model` must be 1-200 printable characters",
            ))
        }
        other => Ok(other),
    }
}
