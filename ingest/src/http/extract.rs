//! Input extraction: the project from the secret key, JSON bodies parsed with
//! the failing field's path in the error, the reservation id of a path, and
//! the request id. Every rejection is an [`ApiError`], so it is answered in
//! the API's JSON error shape (axum's own rejections are plain text).

use crate::error::ApiError;
use crate::AppState;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use bytes::Bytes;
use ledger::control::Project;
use schemas::ReservationId;
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
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A JSON body that may be left out: an empty (or all-whitespace) body
/// reads as `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

/// The whole body, at most [`MAX_BODY_BYTES`].
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|e: BytesRejection| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(MAX_BODY_BYTES),
            _ => ApiError::bad(
                "invalid_body",
                None,
                format!("the request body could not be read: {}", e.body_text()),
            ),
        })
}

/// The `{id}` of a `/v1/reservations/{id}/…` path.
pub struct ReservationPath(pub ReservationId);

impl<S: Send + Sync> FromRequestParts<S> for ReservationPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let invalid = |shown: &str| {
            ApiError::bad(
                "invalid_reservation_id",
                Some("reservation_id".into()),
                format!("{shown} is not a reservation id (a UUID)"),
            )
        };
        // A path segment that is not UTF-8 (`%FF`) cannot even be shown.
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid("the path's reservation id"))?;
        id.parse()
            .map(ReservationPath)
            .map_err(|_| invalid(&format!("`{}`", id.chars().take(64).collect::<String>())))
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
