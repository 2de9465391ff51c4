//! Every proxy failure in OpenAI's error shape
//! `{"error":{"message","type","param","code"}}`, statuses mapped once.

use crate::providers::{ErrorBody, PrepareError, RequestError, RouteError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger::GateError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("missing or unknown project key: send `x-project-key: pk_…`")]
    UnknownProject,
    #[error("missing `x-identity` header: name the end user (a user, session or device id)")]
    MissingIdentity,
    #[error("`x-identity` {0}")]
    BadIdentity(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid request")]
    Request(RequestError),
    /// The model names no provider the proxy can route to.
    #[error("{0}")]
    Route(#[from] RouteError),
    /// The request cannot be sent to its provider as it is.
    #[error("{0}")]
    Prepare(#[from] PrepareError),
    #[error("{0}")]
    UnknownTier(String),
    #[error("{0}")]
    ModelNotAllowed(String),
    #[error("no provider key: send `Authorization: Bearer <provider key>` or store one with `tollgate keys add --provider {0}`")]
    NoProviderKey(String),
    #[error("model `{0}` has no known price and this tier limits US dollars; add a price (tollgate prices set) rather than count $0")]
    UnknownPrice(String),
    #[error("request body is too large")]
    TooLarge,
    #[error("no such endpoint")]
    NotFound,
    #[error("the usage ledger is unavailable, so the request was not forwarded; retry later")]
    Unavailable(String),
    #[error("the provider could not be reached")]
    Upstream(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<GateError> for ProxyError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Unavailable(why) | GateError::Unconfirmed(why) => {
                ProxyError::Unavailable(why)
            }
            GateError::Contention => ProxyError::Unavailable("account contended".into()),
            other => ProxyError::Internal(anyhow::anyhow!(other)),
        }
    }
}

impl From<sqlx::Error> for ProxyError {
    fn from(e: sqlx::Error) -> Self {
        ProxyError::Unavailable(format!("control plane: {e}"))
    }
}

/// An OpenAI-shaped error response.
pub fn openai_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    param: Option<&str>,
) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": param, "code": code}})),
    )
        .into_response()
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, kind, code, param) = match &self {
            ProxyError::UnknownProject => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_project_key",
                None,
            ),
            ProxyError::MissingIdentity | ProxyError::BadIdentity(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_identity",
                None,
            ),
            ProxyError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                None,
            ),
            ProxyError::Request(e) => {
                let body: ErrorBody = e.to_openai();
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
            ProxyError::Route(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_model",
                Some("model"),
            ),
            ProxyError::Prepare(PrepareError::Unsupported { field, .. }) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_parameter",
                Some(field.as_str()),
            ),
            ProxyError::Prepare(PrepareError::InvalidField { field, .. }) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                Some(field.as_str()),
            ),
            ProxyError::Prepare(PrepareError::InvalidKey) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_provider_key",
                None,
            ),
            ProxyError::Prepare(PrepareError::Encode(e)) => {
                tracing::error!(error = %e, "could not encode an upstream request");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "internal_error",
                    None,
                )
            }
            ProxyError::UnknownTier(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unknown_tier",
                None,
            ),
            ProxyError::ModelNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "model_not_allowed",
                Some("model"),
            ),
            ProxyError::NoProviderKey(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing_provider_key",
                None,
            ),
            ProxyError::UnknownPrice(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unknown_model_price",
                Some("model"),
            ),
            ProxyError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
                None,
            ),
            ProxyError::NotFound => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                None,
            ),
            ProxyError::Unavailable(detail) => {
                tracing::warn!(detail = %detail, "request failed closed: ledger unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "ledger_unavailable",
                    None,
                )
            }
            ProxyError::Upstream(detail) => {
                tracing::warn!(detail = %detail, "provider unreachable");
                (
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "upstream_unreachable",
                    None,
                )
            }
            ProxyError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "internal_error",
                    None,
                )
            }
        };
        openai_error(status, kind, code, &message, param)
    }
}
