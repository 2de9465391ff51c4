//! `GET /v1/models`: the models this project can call and price, in
//! OpenAI's list shape: every price-table entry that routes to the provider
//! it prices (so `azure/…` or Vertex AI's ids, which Tollgate does not call,
//! are left out), the entries of the project's custom providers, and its
//! price overrides; only those the tier allows.

use super::{ProxyError, ProxyState};
use crate::providers::{route, ProviderKind};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub async fn list(
    State(state): State<ProxyState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ProxyError> {
    let inner = &state.0;
    let project = super::chat::project(&state, &headers).await?;
    let tier_name = headers.get("x-tier").and_then(|v| v.to_str().ok());
    let (_, tier) = project
        .tier(tier_name)
        .map_err(|e| ProxyError::UnknownTier(e.to_string()))?;
    let config = super::chat::project_config(&state, project.project_id).await?;
    let base_urls = config.base_urls(&inner.settings.base_urls);
    // id → owner, for the ids that route to the provider they are priced for.
    let mut models: BTreeMap<&str, &str> = BTreeMap::new();
    let table = inner
        .prices
        .models()
        .map(|(id, p)| (id, Some(p.provider.as_str())));
    let overrides = config
        .price_overrides
        .iter()
        .map(|(id, _)| (id.as_str(), None));
    for (id, priced_for) in table.chain(overrides) {
        let Ok(r) = route(id, &config.custom_providers, &base_urls) else {
            continue;
        };
        if priced_for.is_some_and(|p| p != r.provider) {
            continue;
        }
        // Named as plans name it (see `chat.rs`), or as listed.
        let plan_name = match r.kind {
            ProviderKind::Custom => format!("{}/{}", r.provider, r.upstream_model),
            _ => r.upstream_model.clone(),
        };
        let allowed = tier
            .models
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| g.matches(&plan_name) || g.matches(id)));
        if allowed {
            let owner = match r.kind {
                ProviderKind::Custom => "custom",
                ProviderKind::OpenAi => "openai",
                ProviderKind::Anthropic => "anthropic",
                ProviderKind::Gemini => "google",
                ProviderKind::Xai => "xai",
            };
            models.entry(id).or_insert(owner);
        }
    }
    let data: Vec<Value> = models
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
