//! Input extraction: the project from the secret key, JSON bodies parsed with
//! the failing field's path in the error, and the request id.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use ledger::control::Project;
use serde::de::DeserializeOwned;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The project that the `Authorization: Bearer sk_…` header belongs to.
pub struct Authed(pub Project);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let secret = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .unwrap_or_default();
        if !secret.starts_with("sk_") {
            return Err(ApiError::Unauthorized);
        }
        match state.control.by_secret(secret).await? {
            Some(project) => Ok(Authed(project)),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// The caller's `x-request-id`, if any (the request-id layer sets one).
pub struct RequestId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(128).collect());
        Ok(RequestId(id))
    }
}

/// A JSON body whose errors name the offending field.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "invalid_json",
            None,
            "request body is empty: send a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => Ok(value),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::bad(
                    "invalid_json",
                    None,
                    format!("request body is not valid JSON: {inner}"),
                ))
            } else if path == "." {
                Err(ApiError::bad(
                    "invalid_field",
                    None,
                    format!("request body: {inner}"),
                ))
            } else {
                Err(ApiError::bad(
                    "invalid_field",
                    Some(path.clone()),
                    format!("`{path}`: {inner}"),
                ))
            }
        }
    }
}
