//! `GET /v1/models`: the models this project can price, in OpenAI's list shape.

use super::{ProxyError, ProxyState};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

pub async fn list(
    State(state): State<ProxyState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ProxyError> {
    let project = super::chat::project(&state, &headers).await?;
    let tier_name = headers.get("x-tier").and_then(|v| v.to_str().ok());
    let (_, tier) = project
        .tier(tier_name)
        .map_err(|e| ProxyError::UnknownTier(e.to_string()))?;
    let mut data: Vec<Value> = state
        .0
        .prices
        .models()
        .filter(|(id, _)| {
            tier.models
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|g| g.matches(id)))
        })
        .map(|(id, p)| json!({"id": id, "object": "model", "created": 0, "owned_by": p.provider}))
        .collect();
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(Json(json!({"object": "list", "data": data})))
}
