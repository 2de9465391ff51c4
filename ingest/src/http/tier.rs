//! Resolving the tier a request is judged by, and checking its identity.

use crate::error::ApiError;
use ledger::control::{Project, TierError};
use schemas::plan::Tier;
use schemas::Account;

fn tier_error(e: TierError) -> ApiError {
    match e {
        TierError::ModelNotAllowed { .. } => ApiError::Forbidden(e.to_string()),
        TierError::ModelRequired(_) => {
            ApiError::bad("missing_model", Some("model".into()), e.to_string())
        }
        TierError::NoPlan(_) | TierError::UnknownTier { .. } => {
            ApiError::bad("unknown_tier", Some("tier".into()), e.to_string())
        }
        TierError::PlanUnreadable => ApiError::Unavailable(e.to_string()),
    }
}

/// The tier named by the request, else the project's default.
pub fn resolve(project: &Project, requested: Option<&str>) -> Result<(String, Tier), ApiError> {
    project.tier(requested).map_err(tier_error)
}

/// Refuses a model the tier does not allow (403).
pub fn check_model(tier_name: &str, tier: &Tier, model: Option<&str>) -> Result<(), ApiError> {
    ledger::control::check_model(tier_name, tier, model).map_err(tier_error)
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
