//! `GET /v1/models` and `GET /v1/models/{id}`: the models this project can call and price, in
//! OpenAI's list shape: every price-table entry that routes to the provider
//! it prices (so `azure/…` or Vertex AI's ids, which Tollgate does not call,
//! are left out), the entries of the project's custom providers, and its
//! price overrides; only those the tier allows.

use super::{ProxyError, ProxyState};
use crate::project_config::ProjectConfig;
use crate::providers::{route, BaseUrls, ProviderKind};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub async fn list(
    State(state): State<ProxyState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ProxyError> {
    let data: Vec<Value> = Catalog::of(&state, &headers)
        .await?
        .models
        .into_iter()
        .map(|(id, owner)| model_object(&id, owner))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{id}` (the SDKs' `models.retrieve`): one model of the
/// list, or OpenAI's 404 `model_not_found`. Ids may hold a `/`
/// (`gemini/gemini-2.0-flash`, `groq/llama-3.1-8b-instant`).
pub async fn retrieve(
    State(state): State<ProxyState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ProxyError> {
    let catalog = Catalog::of(&state, &headers).await?;
    Ok(match catalog.owner(&id) {
        Some(owner) => Json(model_object(&id, owner)).into_response(),
        None => super::error::openai_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            &format!("The model `{id}` does not exist or this project cannot call it."),
            Some("model"),
        ),
    })
}

fn model_object(id: &str, owner: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
}

/// The models the calling project and tier can call, and how to route them.
struct Catalog {
    /// id → owner.
    models: BTreeMap<String, &'static str>,
    config: Arc<ProjectConfig>,
    base_urls: BaseUrls,
}

impl Catalog {
    /// The owner of `id` as listed, or of a listed model that `id` calls as
    /// well (same provider, same upstream model): the list has
    /// `gemini/gemini-2.0-flash` and `gpt-4o`, and chat also takes
    /// `gemini-2.0-flash` and `openai/gpt-4o`.
    fn owner(&self, id: &str) -> Option<&'static str> {
        if let Some(owner) = self.models.get(id) {
            return Some(owner);
        }
        let call = |id: &str| {
            route(id, &self.config.custom_providers, &self.base_urls)
                .ok()
                .map(|r| (r.provider, r.upstream_model))
        };
        let wanted = call(id)?;
        self.models
            .iter()
            .find(|(listed, _)| call(listed).as_ref() == Some(&wanted))
            .map(|(_, owner)| *owner)
    }

    async fn of(state: &ProxyState, headers: &HeaderMap) -> Result<Catalog, ProxyError> {
        let inner = &state.0;
        let project = super::chat::project(state, headers).await?;
        let tier_name = headers.get("x-tier").and_then(|v| v.to_str().ok());
        let (_, tier) = project.tier(tier_name).map_err(super::chat::tier_error)?;
        let config = super::chat::project_config(state, project.project_id).await?;
        let base_urls = config.base_urls(&inner.settings.base_urls).into_owned();
        let models = listed(inner, &config, &base_urls, &tier);
        Ok(Catalog {
            models,
            config,
            base_urls,
        })
    }
}

/// Every model `config`'s project can call and price that `tier` allows: id → owner.
fn listed(
    inner: &super::Inner,
    config: &ProjectConfig,
    base_urls: &BaseUrls,
    tier: &schemas::plan::Tier,
) -> BTreeMap<String, &'static str> {
    // id → owner, for the ids that route to the provider they are priced for.
    let mut models: BTreeMap<String, &'static str> = BTreeMap::new();
    let table = inner
        .prices
        .models()
        .map(|(id, p)| (id, Some(p.provider.as_str())));
    let overrides = config
        .price_overrides
        .iter()
        .map(|(id, _)| (id.as_str(), None));
    for (id, priced_for) in table.chain(overrides) {
        let Ok(r) = route(id, &config.custom_providers, base_urls) else {
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
            models.entry(id.to_owned()).or_insert(owner);
        }
    }
    models
}
