//! Routes of the ingest API.

mod extract;
mod reservations;
mod tier;
mod usage;

use crate::AppState;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

pub use extract::{parse_json, MAX_BODY_BYTES};

/// Request ids are UUID v7 unless the caller sent one.
#[derive(Clone, Copy, Default)]
struct MakeV7;

impl MakeRequestId for MakeV7 {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/reservations", post(reservations::reserve))
        .route("/v1/reservations/{id}/commit", post(reservations::commit))
        .route("/v1/reservations/{id}/release", post(reservations::release))
        .route("/v1/usage", post(usage::record).get(usage::view))
        // (After the routes: it applies to the routes added before it.)
        .method_not_allowed_fallback(|| async { crate::error::ApiError::MethodNotAllowed })
        .fallback(|| async { crate::error::ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    with_request_ids(router).with_state(state)
}

/// Longest caller's `x-request-id` kept. The id is written into every
/// event of the request (twice: a message header and the payload), so a
/// long one would cost the stream and every later read of the account;
/// UUIDs are 36 bytes, trace ids shorter than this.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Gives every request an `x-request-id` (the caller's, or a new UUID v7) and
/// echoes it on the response. A caller's id that is empty, longer than
/// [`MAX_REQUEST_ID_BYTES`] or not visible ASCII is replaced with a new one.
/// Shared by the ingest API and the proxy.
pub fn with_request_ids<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    let x_request_id = HeaderName::from_static("x-request-id");
    router
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeV7))
        .layer(tower::util::MapRequestLayer::new(drop_unusable_request_id))
}

fn drop_unusable_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let unusable = request.headers().get("x-request-id").is_some_and(|id| {
        id.is_empty()
            || id.len() > MAX_REQUEST_ID_BYTES
            || !id.as_bytes().iter().all(u8::is_ascii_graphic)
    });
    if unusable {
        request.headers_mut().remove("x-request-id");
    }
    request
}
