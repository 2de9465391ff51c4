//! The one error type of the ingest API: every failure becomes a JSON body
//! `{"error":{"type","code","message"[,"field"]}}` with the right status.
//! 4xx messages say what to fix; 5xx messages are generic and the detail is
//! logged once, here.
//!
//! A 503 from the ledger is honest about what is unknown: an append whose
//! acknowledgement did not arrive may still have been stored. So it never
//! says nothing was recorded, and when the request made something the
//! client could not name otherwise (a hold or a usage record with an id
//! Tollgate chose), the body carries that id, so the client can retry with
//! it (repeats change nothing) or release the hold.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger::GateError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("missing or invalid secret key: send `Authorization: Bearer sk_…`")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("this endpoint does not accept this method; the `Allow` header lists those it does")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is too large (at most {0} bytes)")]
    TooLarge(usize),
    /// The control plane (PostgreSQL) failed before anything was appended.
    #[error("the service is unavailable; nothing was recorded, retry later")]
    Unavailable(String),
    /// The ledger (NATS) failed: what was asked may or may not be stored.
    #[error("{}", ledger_unavailable_message(.pending.as_ref()))]
    LedgerUnavailable {
        detail: String,
        pending: Option<Pending>,
    },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// What a request whose outcome is unknown may have made, by its id.
#[derive(Debug, Clone, Copy)]
pub enum Pending {
    Reservation(schemas::ReservationId),
    Usage(uuid::Uuid),
}

fn ledger_unavailable_message(pending: Option<&Pending>) -> &'static str {
    match pending {
        Some(Pending::Reservation(_)) => "the ledger is unavailable, and the hold may or may not have been taken: retry with this `reservation_id` (a repeat returns the first outcome), release it, or let it expire",
        Some(Pending::Usage(_)) => "the ledger is unavailable, and the usage may or may not have been recorded: retry with this `usage_id` (a repeat records nothing new)",
        None => "the ledger is unavailable, and the request may or may not have been recorded: retry later (a repeat with the same ids changes nothing)",
    }
}

impl ApiError {
    /// A ledger outage's answer names `pending`, what the request may have made.
    pub fn pending(self, pending: Pending) -> Self {
        match self {
            ApiError::LedgerUnavailable { detail, .. } => ApiError::LedgerUnavailable {
                detail,
                pending: Some(pending),
            },
            other => other,
        }
    }

    pub fn bad(
        code: &'static str,
        field: impl Into<Option<String>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            field: field.into(),
        }
    }
}

impl From<GateError> for ApiError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Unavailable(detail) | GateError::Unconfirmed(detail) => ApiError::LedgerUnavailable {
                detail,
                pending: None,
            },
            GateError::Contention => ApiError::LedgerUnavailable {
                detail: "too many concurrent writers on one account".into(),
                pending: None,
            },
            GateError::NotFound => ApiError::NotFound("no such reservation in this project".into()),
            GateError::Conflict { status } => ApiError::Conflict {
                code: "reservation_already_settled",
                message: format!(
                    "the reservation is already {status}; a different settlement is refused"
                ),
            },
            GateError::ReservationIdInUse => ApiError::Conflict {
                code: "reservation_id_in_use",
                message: "`reservation_id` already names a reservation of another identity in this project: choose a new id".into(),
            },
            GateError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Unavailable(format!("control plane: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code, field) = match &self {
            ApiError::BadRequest { code, field, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                *code,
                field.clone(),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_secret_key",
                None,
            ),
            ApiError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "model_not_allowed",
                None,
            ),
            ApiError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "not_found_error",
                "reservation_not_found",
                None,
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                None,
            ),
            ApiError::Conflict { code, .. } => {
                (StatusCode::CONFLICT, "conflict_error", *code, None)
            }
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
                None,
            ),
            ApiError::Unavailable(detail) | ApiError::LedgerUnavailable { detail, .. } => {
                tracing::warn!(detail = %detail, "request failed closed: ledger unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable_error",
                    "ledger_unavailable",
                    None,
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal_error",
                    None,
                )
            }
        };
        let mut error = json!({"type": kind, "code": code, "message": self.to_string()});
        if let Some(field) = field {
            error["field"] = json!(field);
        }
        let mut body = json!({ "error": error });
        match &self {
            ApiError::LedgerUnavailable {
                pending: Some(Pending::Reservation(id)),
                ..
            } => body["reservation_id"] = json!(id),
            ApiError::LedgerUnavailable {
                pending: Some(Pending::Usage(id)),
                ..
            } => body["usage_id"] = json!(id),
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}
