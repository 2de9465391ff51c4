//! `POST /v1/usage` (usage that had no hold) and `GET /v1/usage` (the limits view).

use super::extract::{Authed, JsonBody, RequestId};
use super::tier;
use crate::error::{ApiError, Pending};
use crate::AppState;
use axum::extract::{Query, State};
use axum::Json;
use schemas::events::UsageRecorded;
use schemas::Amounts;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    identity: String,
    tier: Option<String>,
    model: Option<String>,
    amounts: Amounts,
    /// Idempotency key: repeating a usage id records nothing new.
    usage_id: Option<uuid::Uuid>,
}

pub async fn record(
    State(state): State<AppState>,
    Authed(project): Authed,
    RequestId(rid): RequestId,
    JsonBody(body): JsonBody<UsageBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = tier::account(&body.identity)?;
    let model = tier::model(body.model)?;
    let (_, tier) = tier::resolve(&project, body.tier.as_deref())?;
    let amounts = super::reservations::amounts(body.amounts, "amounts")?;
    if amounts.is_empty() {
        return Err(ApiError::bad(
            "invalid_amount",
            Some("amounts".into()),
            "`amounts` must name at least one unit",
        ));
    }
    let usage_id = body.usage_id.unwrap_or_else(uuid::Uuid::now_v7);
    let (recorded, limits) = state
        .gate
        .record_usage(
            project.project_id,
            &account,
            &tier,
            UsageRecorded {
                usage_id,
                model,
                amounts,
                reserved_at: None,
            },
            rid,
        )
        .await
        .map_err(|e| ApiError::from(e).pending(Pending::Usage(usage_id)))?;
    Ok(Json(
        json!({"usage_id": usage_id, "recorded": recorded, "replayed": !recorded, "limits": limits}),
    ))
}

#[derive(Deserialize)]
pub struct ViewQuery {
    identity: Option<String>,
    tier: Option<String>,
}

pub async fn view(
    State(state): State<AppState>,
    Authed(project): Authed,
    query: Result<Query<ViewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad("invalid_query", None, e.body_text()))?;
    let identity = q.identity.ok_or_else(|| {
        ApiError::bad(
            "missing_identity",
            Some("identity".into()),
            "query parameter `identity` is required",
        )
    })?;
    let account = tier::account(&identity)?;
    let (tier_name, tier) = tier::resolve(&project, q.tier.as_deref())?;
    let limits = state.gate.view(project.project_id, &account, &tier).await?;
    Ok(Json(
        json!({"identity": identity, "tier": tier_name, "limits": limits}),
    ))
}
