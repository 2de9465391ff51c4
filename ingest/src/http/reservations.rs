//! `POST /v1/reservations`, `…/{id}/commit`, `…/{id}/release`.

use super::extract::{Authed, JsonBody, OptionalJsonBody, RequestId, ReservationPath};
use super::tier;
use crate::error::{ApiError, Pending};
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use ledger::gate::decide::{ReserveRequest, Violation};
use ledger::gate::message::{denial_message, retry_after_secs};
use ledger::gate::{Denied, ReserveOutcome, SettleOutcome};
use projector::Settlement;
use rust_decimal::Decimal;
use schemas::units::AmountError;
use schemas::{Amounts, ReservationId, Unit};
use serde::Deserialize;
use serde_json::json;

/// Default time a hold lives before the ledger expires it.
pub const DEFAULT_TTL_MS: u64 = 60_000;
/// Longest hold accepted.
pub const MAX_TTL_MS: u64 = 24 * 3_600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    identity: String,
    tier: Option<String>,
    model: Option<String>,
    #[serde(default)]
    amounts: Amounts,
    ttl_ms: Option<u64>,
    reservation_id: Option<ReservationId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitBody {
    #[serde(default)]
    amounts: Amounts,
    /// Optional: the identity that holds the reservation (saves a lookup).
    identity: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    reason: Option<String>,
    identity: Option<String>,
}

pub(super) fn amounts(amounts: Amounts, field: &str) -> Result<Amounts, ApiError> {
    // Checked as sent (so the error names a unit the caller gave), then
    // with the derived `tokens`.
    amounts
        .validated_charge()
        .and_then(|a| a.with_derived_tokens().validated_charge())
        .map_err(|e| {
            let unit = match &e {
                AmountError::Negative(u) | AmountError::TooLarge(u) | AmountError::NotWhole(u) => {
                    u.clone()
                }
            };
            ApiError::bad(
                "invalid_amount",
                Some(format!("{field}.{unit}")),
                e.to_string(),
            )
        })
}

/// Longest release reason accepted, in bytes.
pub const MAX_REASON_BYTES: usize = 200;

/// A release reason is stored and shown as text: no control characters
/// (PostgreSQL cannot even store NUL), and short.
fn reason_text(reason: &str) -> Result<(), ApiError> {
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_reason",
            Some("reason".into()),
            format!("`reason` must be at most {MAX_REASON_BYTES} bytes of printable text (no control characters)"),
        ));
    }
    Ok(())
}

pub async fn reserve(
    State(state): State<AppState>,
    Authed(project): Authed,
    RequestId(rid): RequestId,
    JsonBody(body): JsonBody<ReserveBody>,
) -> Result<Response, ApiError> {
    let account = tier::account(&body.identity)?;
    let model = tier::model(body.model)?;
    let mut amounts = amounts(body.amounts, "amounts")?;
    if !amounts.contains(&Unit::Requests) {
        amounts.set(Unit::Requests, Decimal::ONE);
    }
    let ttl_ms = body.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
        return Err(ApiError::bad(
            "invalid_ttl",
            Some("ttl_ms".into()),
            format!("`ttl_ms` must be between 1 and {MAX_TTL_MS}"),
        ));
    }
    let (tier_name, tier) = tier::resolve(&project, body.tier.as_deref())?;
    tier::check_model(&tier_name, &tier, model.as_deref())?;
    let now = state.gate.now();
    let ttl = Duration::milliseconds(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
    let reservation_id = body.reservation_id.unwrap_or_default();
    let req = ReserveRequest {
        reservation_id,
        model,
        amounts,
        expires_at: now + ttl,
        tier: tier_name,
        flex: None,
    };
    let outcome = if body.reservation_id.is_some() {
        // The client's id may already name another identity's hold.
        state
            .gate
            .reserve_client_id(project.project_id, &account, &tier, req, rid)
            .await
    } else {
        state
            .gate
            .reserve(project.project_id, &account, &tier, req, rid)
            .await
    }
    .map_err(|e| ApiError::from(e).pending(Pending::Reservation(reservation_id)))?;
    match outcome {
        ReserveOutcome::Admitted(a) => Ok(Json(AdmittedBody {
            reservation_id: a.reservation_id,
            allowed: true,
            status: a.status,
            replayed: a.replayed,
            expires_at: a.expires_at,
            limits: &a.limits,
        })
        .into_response()),
        ReserveOutcome::Denied(d) => Ok(denied(&tier, d, now)),
    }
}

/// The body of an admitted reservation, serialized straight from the
/// outcome (no intermediate JSON tree on the hot path).
#[derive(serde::Serialize)]
struct AdmittedBody<'a> {
    reservation_id: ReservationId,
    allowed: bool,
    status: &'static str,
    replayed: bool,
    #[serde(serialize_with = "schemas::timestamp::serialize")]
    expires_at: DateTime<Utc>,
    limits: &'a [projector::LimitView],
}

fn denied(tier: &schemas::plan::Tier, d: Denied, now: DateTime<Utc>) -> Response {
    let message = denial_message(tier, &d);
    let mut error =
        json!({"type": "rate_limit_exceeded", "code": "limit_exceeded", "message": message});
    if let Some(link) = &tier.deep_link {
        error["deep_link"] = json!(link);
    }
    let body = json!({"allowed": false, "error": error, "limits": d.limits});
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    let retry = match d.violation {
        Violation::Concurrency { .. } => Some(1),
        Violation::Limit { .. } => d.retry_after.map(|at| retry_after_secs(at, now)),
    };
    if let Some(secs) = retry {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert("retry-after", v);
        }
    }
    response
}

fn settled(o: SettleOutcome) -> Json<serde_json::Value> {
    let mut body = json!({"reservation_id": o.reservation_id, "status": o.settlement.status(), "replayed": o.replayed});
    match &o.settlement {
        Settlement::Committed { actual, overage } => {
            body["actual"] = json!(actual);
            if !overage.is_empty() {
                body["overage"] = json!(overage);
            }
        }
        Settlement::Released { reason } => body["reason"] = json!(reason),
        Settlement::Expired => {}
    }
    if o.late {
        body["status"] = json!("committed_late");
        body["late"] = json!(true);
    }
    Json(body)
}

pub async fn commit(
    State(state): State<AppState>,
    Authed(project): Authed,
    RequestId(rid): RequestId,
    ReservationPath(id): ReservationPath,
    JsonBody(body): JsonBody<CommitBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let actual = amounts(body.amounts, "amounts")?;
    let account = body.identity.as_deref().map(tier::account).transpose()?;
    let outcome = state
        .gate
        .commit(project.project_id, id, account.as_ref(), actual, rid)
        .await?;
    Ok(settled(outcome))
}

pub async fn release(
    State(state): State<AppState>,
    Authed(project): Authed,
    RequestId(rid): RequestId,
    ReservationPath(id): ReservationPath,
    OptionalJsonBody(body): OptionalJsonBody<ReleaseBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(reason) = &body.reason {
        reason_text(reason)?;
    }
    let account = body.identity.as_deref().map(tier::account).transpose()?;
    let outcome = state
        .gate
        .release(project.project_id, id, account.as_ref(), body.reason, rid)
        .await?;
    Ok(settled(outcome))
}
