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
    /// The project stored a key for this provider, and this server cannot
    /// decrypt it: the operator's mistake, so not a 401 asking the app for a key.
    #[error("the project's stored key for {0} cannot be used by this server (TOLLGATE_ENCRYPTION_KEY is unset or is not the key it was stored with); the operator must fix the server's configuration")]
    StoredKeyUnusable(String),
    #[error("model `{0}` has no known price and this tier limits US dollars; add a price (tollgate prices set) rather than count $0")]
    UnknownPrice(String),
    #[error("request body is larger than this server takes ({0} bytes, TOLLGATE_MAX_BODY_BYTES)")]
    TooLarge(usize),
    #[error("no such endpoint")]
    NotFound,
    #[error("this endpoint does not take that method")]
    MethodNotAllowed,
    /// `Authorization` carried the project's secret key where a provider
    /// key belongs: refused, never forwarded.
    #[error("Authorization carries this project's secret key (sk_…), which is not a provider key and was not sent on; keep it on your server, and send a provider key here or store one (tollgate keys add)")]
    SecretKeySent,
    #[error("the usage ledger is unavailable, so the request was not forwarded; retry later")]
    Unavailable(String),
    #[error("the provider could not be reached")]
    Upstream(String),
    /// The project's base URL for this provider leads to an address this
    /// server does not call (`TOLLGATE_PRIVATE_UPSTREAMS=deny`).
    #[error("the base URL this project set for provider '{0}' leads to a loopback, private or link-local address, which this server does not call (TOLLGATE_PRIVATE_UPSTREAMS=deny); point the provider at a public address")]
    UpstreamRefused(String),
    /// The call was forwarded and charged, then broke off: told so, and
    /// SDKs are asked not to retry it by themselves ([`NO_RETRY`]).
    #[error("the connection to the provider broke after the request was sent; the call was charged what was held, since the provider may have done the work")]
    UpstreamBroken(String),
    /// Like [`ProxyError::UpstreamBroken`], cut because the call would have
    /// outlived its hold (`TOLLGATE_HOLD_TTL_MS`, in seconds here).
    #[error("the call ran longer than its hold may live ({0} s, TOLLGATE_HOLD_TTL_MS); it was cut and charged what was held, since the provider may have done the work")]
    CallTooLong(u64),
    /// Like [`ProxyError::UpstreamBroken`], cut by the proxy's shutdown.
    #[error("the proxy shut down while the provider was answering; the call was charged what was held, since the provider may have done the work")]
    ShuttingDown,
    /// Taking the hold used up the time a call may run: released, retriable.
    #[error("taking the hold took longer than a call may run (TOLLGATE_HOLD_TTL_MS is {0} ms); the call was not sent to the provider and not charged; retry")]
    HoldTooSlow(u128),
    /// The proxy shut down before the call was sent: released, retriable.
    #[error(
        "the proxy is shutting down; the call was not sent to the provider and not charged; retry"
    )]
    ShutDownBeforeSending,
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

/// `x-should-retry: false`: the official OpenAI SDKs retry 5xx answers by
/// themselves unless told not to, and a call that was forwarded and
/// charged would be charged again.
pub const NO_RETRY: (&str, &str) = ("x-should-retry", "false");

/// Adds [`NO_RETRY`] to an answer's headers.
pub fn tell_sdks_not_to_retry(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        axum::http::HeaderName::from_static(NO_RETRY.0),
        axum::http::HeaderValue::from_static(NO_RETRY.1),
    );
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
            ProxyError::SecretKeySent => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "secret_key_sent",
                None,
            ),
            ProxyError::NoProviderKey(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing_provider_key",
                None,
            ),
            ProxyError::StoredKeyUnusable(provider) => {
                tracing::error!(provider = %provider, "a stored provider key cannot be decrypted: check TOLLGATE_ENCRYPTION_KEY");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "provider_key_unavailable",
                    None,
                )
            }
            ProxyError::UnknownPrice(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unknown_model_price",
                Some("model"),
            ),
            ProxyError::TooLarge(_) => (
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
            ProxyError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
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
            ProxyError::UpstreamRefused(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "upstream_address_refused",
                None,
            ),
            ProxyError::UpstreamBroken(detail) => {
                tracing::warn!(detail = %detail, "provider connection broke after the request was sent; charged");
                (
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "upstream_interrupted",
                    None,
                )
            }
            ProxyError::CallTooLong(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "api_error",
                "call_outlived_hold",
                None,
            ),
            ProxyError::HoldTooSlow(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "hold_too_slow",
                None,
            ),
            ProxyError::ShuttingDown | ProxyError::ShutDownBeforeSending => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "shutting_down",
                None,
            ),
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
        let charged = matches!(
            self,
            ProxyError::UpstreamBroken(_) | ProxyError::ShuttingDown | ProxyError::CallTooLong(_)
        );
        let mut response = openai_error(status, kind, code, &message, param);
        if charged {
            tell_sdks_not_to_retry(response.headers_mut());
        }
        response
    }
}
