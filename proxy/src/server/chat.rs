//! `POST /v1/chat/completions`: identify → price → hold → forward → measure
//! → settle. The hold is taken before anything is sent upstream (invariant
//! 1; nothing is forwarded if it cannot be recorded, invariant 7) and settled
//! on every path by the [`Hold`] handle. No prompt or completion text is
//! logged or recorded anywhere (invariant 6): only ids, model and counts.

use super::error::{openai_error, tell_sdks_not_to_retry};
use super::headers::rate_limit_headers;
use super::stream::{Charging, HiddenReasoning, MeteredStream};
use super::{ProxyError, ProxyState};
use crate::estimate::{actual, audio_to_read, estimate_with, Estimate, Media};
use crate::hold::Hold;
use crate::pricing::{lookup_override, ModelPrice};
use crate::providers::openai::{passed_anthropic_betas, ChatRequest};
use crate::providers::{
    parse_request, prepare_upstream, route, translate_error, translate_response, ProviderError,
    ProviderKey, ProviderKind, Route, StreamTranslator, UpstreamRequest,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use ledger::control::{Project, TierError};
use ledger::gate::decide::ReserveRequest;
use ledger::gate::message::{denial_message, retry_after_secs};
use ledger::gate::{Denied, GateError, ReserveOutcome};
use schemas::plan::{scope_matches, Tier};
use schemas::{Account, ProjectId, ReservationId, Unit};
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Least time a call must have left once its hold is taken to be sent.
const MIN_TIME_TO_CALL: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a call was cut short with the provider still working.
enum Cut {
    /// The proxy's shutdown grace ran out.
    ShuttingDown,
    /// The call reached [`Settings::call_limit`](super::Settings::call_limit):
    /// its hold would expire under it.
    HoldLifetime,
}

impl Cut {
    fn error(self, inner: &super::Inner) -> ProxyError {
        match self {
            Cut::ShuttingDown => ProxyError::ShuttingDown,
            Cut::HoldLifetime => ProxyError::CallTooLong(inner.settings.hold_ttl.as_secs()),
        }
    }
}

/// `work`'s output, or why it was cut first: the proxy's shutdown grace
/// ran out, or the call's `deadline` passed.
async fn unless_cut_off<T>(
    inner: &super::Inner,
    deadline: tokio::time::Instant,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Cut> {
    tokio::select! {
        out = work => Ok(out),
        () = inner.cut_off.cancelled() => Err(Cut::ShuttingDown),
        () = tokio::time::sleep_until(deadline) => Err(Cut::HoldLifetime),
    }
}

/// The project's providers, keys and price overrides.
pub async fn project_config(
    state: &ProxyState,
    project: ProjectId,
) -> Result<std::sync::Arc<crate::project_config::ProjectConfig>, ProxyError> {
    state
        .0
        .configs
        .get(project)
        .await
        .map_err(|e| ProxyError::Unavailable(format!("project config: {e:#}")))
}

/// Headers of a provider's error answer passed on to the client: when to
/// retry (OpenAI's SDKs read both).
const RETRY_HEADERS: [&str; 2] = ["retry-after", "retry-after-ms"];

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    header_str(headers, "authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The project of `x-project-key` (or of a `pk_…` sent as the API key).
pub async fn project(state: &ProxyState, headers: &HeaderMap) -> Result<Project, ProxyError> {
    let key = header_str(headers, "x-project-key")
        .or_else(|| bearer(headers).filter(|b| b.starts_with("pk_")))
        .ok_or(ProxyError::UnknownProject)?;
    state
        .0
        .control
        .by_public_key(key)
        .await?
        .ok_or(ProxyError::UnknownProject)
}

fn identity(headers: &HeaderMap) -> Result<Account, ProxyError> {
    let raw = headers
        .get("x-identity")
        .ok_or(ProxyError::MissingIdentity)?;
    let identity = raw
        .to_str()
        .map_err(|_| ProxyError::BadIdentity("must be visible ASCII".into()))?;
    schemas::ids::validate_identity(identity)
        .map_err(|e| ProxyError::BadIdentity(e.to_string()))?;
    Ok(Account::Identity {
        identity: identity.to_owned(),
    })
}

pub(super) fn tier_error(e: TierError) -> ProxyError {
    match e {
        TierError::ModelNotAllowed { .. } | TierError::ModelRequired(_) => {
            ProxyError::ModelNotAllowed(e.to_string())
        }
        TierError::NoPlan(_) | TierError::UnknownTier { .. } => {
            ProxyError::UnknownTier(e.to_string())
        }
        TierError::PlanUnreadable => ProxyError::Unavailable(e.to_string()),
    }
}

fn limits_usd(tier: &Tier, model: &str) -> bool {
    tier.limits
        .iter()
        .any(|l| l.unit == Unit::Usd && scope_matches(l.model.as_ref(), Some(model)))
}

fn denied_response(tier: &Tier, d: &Denied, model: &str) -> Response {
    let now = Utc::now();
    let message = denial_message(tier, d);
    let mut error = json!({"message": message, "type": "rate_limit_exceeded", "param": null, "code": "limit_exceeded"});
    if let Some(link) = &tier.deep_link {
        error["deep_link"] = json!(link);
    }
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({"error": error, "limits": d.limits})),
    )
        .into_response();
    let retry = match d.violation {
        ledger::gate::decide::Violation::Concurrency { .. } => Some(1),
        ledger::gate::decide::Violation::Limit { .. } => {
            d.retry_after.map(|at| retry_after_secs(at, now))
        }
    };
    if let Some(v) = retry.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    // The OpenAI SDKs retry a 429 by themselves, waiting as `Retry-After`
    // says only up to a minute (their own short backoff otherwise): a
    // limit that resets later, or never, would refuse those retries too.
    if retry.is_none_or(|secs| secs > SDKS_WAIT_AT_MOST_SECS) {
        tell_sdks_not_to_retry(response.headers_mut());
    }
    rate_limit_headers(response.headers_mut(), &d.limits, model, now);
    response
}

/// The longest `Retry-After` the official OpenAI SDKs wait for.
const SDKS_WAIT_AT_MOST_SECS: i64 = 60;

/// Bytes of audio (base64) above which a request's audio is read on the
/// blocking pool: ≈ 0.2 ms of reading, several times a thread hop.
const READ_ON_THE_BLOCKING_POOL: usize = 64 * 1024;

/// Bytes of request body above which its tokens are counted on the
/// blocking pool: 64 KB of new text takes ≈ 8 ms to count
/// (`estimate-bench`), against a thread hop of some microseconds.
const COUNT_ON_THE_BLOCKING_POOL: usize = 64 * 1024;

/// The model reasons before it answers unless told not to, its reasoning
/// counted against the output cap and not streamed (OpenAI's o-series and
/// GPT-5, Gemini 2.5, Grok's reasoning models). Not Claude, which reasons
/// only when asked to and streams its thinking.
fn reasons_by_default(price: Option<&ModelPrice>, kind: ProviderKind) -> bool {
    price.is_some_and(|p| p.supports_reasoning) && kind != ProviderKind::Anthropic
}

/// Permits for estimating on the blocking pool: one per core, shared by
/// every HTTP thread (each runtime has its own pool of up to 512 threads,
/// and each audio read holds a decoded copy of up to 6 MB).
fn blocking_reads() -> Arc<tokio::sync::Semaphore> {
    static PERMITS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    PERMITS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            Arc::new(tokio::sync::Semaphore::new(cores))
        })
        .clone()
}

pub async fn completions(
    State(state): State<ProxyState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ProxyError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ProxyError::TooLarge(state.0.settings.max_body_bytes)
        } else {
            // A client that hung up or sent a broken chunked body.
            ProxyError::BadRequest(format!("the request body could not be read: {rejection}"))
        }
    })?;
    let inner = &state.0;
    let project = project(&state, &headers).await?;
    let account = identity(&headers)?;
    let mut req = parse_request(&body).map_err(ProxyError::Request)?;
    req.anthropic_beta = passed_anthropic_betas(header_str(&headers, "anthropic-beta"));
    let (tier_name, tier) = project
        .tier(header_str(&headers, "x-tier"))
        .map_err(tier_error)?;
    let config = project_config(&state, project.project_id).await?;
    let base_urls = config.base_urls(&inner.settings.base_urls);
    let route = route(&req.model, &config.custom_providers, &base_urls)?;
    let url_by_project = config.sets_base_url_of(&route);
    let model = route.upstream_model.clone();
    // The model as limits, plans and the ledger name it: a custom provider's
    // keeps its prefix (`groq/llama-3.1-8b-instant`, matched by `groq/*`); a
    // built-in provider's is the bare id (`gpt-4o`, however it was asked for).
    let ledger_model = match route.kind {
        ProviderKind::Custom => format!("{}/{}", route.provider, model),
        _ => model.clone(),
    };
    if ledger::control::check_model(&tier_name, &tier, Some(&ledger_model)).is_err() {
        ledger::control::check_model(&tier_name, &tier, Some(&req.model)).map_err(tier_error)?;
    }
    // The project's own price first, under any key the table would match
    // (or the model exactly as the client named it), then the bundled table.
    let price: Option<ModelPrice> =
        lookup_override(&config.price_overrides, &route.provider, &model)
            .or_else(|| {
                let named = config.price_overrides.iter().find(|(m, _)| *m == req.model);
                named.map(|(_, p)| p)
            })
            .or_else(|| inner.prices.lookup(&route.provider, &model))
            .cloned();
    if price.is_none() && limits_usd(&tier, &ledger_model) {
        return Err(ProxyError::UnknownPrice(req.model.clone()));
    }
    let key = match config.key(&route.provider) {
        Some(stored) => stored.clone(),
        // This server's own secret key is never a provider's: never sent on.
        None if bearer(&headers).is_some_and(ledger::control::looks_like_secret_key) => {
            return Err(ProxyError::SecretKeySent)
        }
        None => ProviderKey::new(
            bearer(&headers)
                .filter(|b| !b.starts_with("pk_"))
                .ok_or_else(|| {
                    if config.stored_key_unusable(&route.provider) {
                        ProxyError::StoredKeyUnusable(route.provider.clone())
                    } else {
                        ProxyError::NoProviderKey(route.provider.clone())
                    }
                })?,
        ),
    };
    let default_output = if reasons_by_default(price.as_ref(), route.kind) {
        inner.settings.default_max_reasoning_output_tokens
    } else {
        inner.settings.default_max_output_tokens
    };
    let kind = route.kind;
    let est = if audio_to_read(&req) > READ_ON_THE_BLOCKING_POOL
        || body.len() > COUNT_ON_THE_BLOCKING_POOL
    {
        // Reading a long clip's length takes milliseconds (≈ 3.5 per
        // minute of MP3), and so does counting a long prompt's new text
        // (≈ 0.12 ms per KB): off this thread, whose other requests would
        // wait, and at most one such request per core at a time.
        let permit = blocking_reads()
            .acquire_owned()
            .await
            .map_err(|e| ProxyError::Internal(anyhow::anyhow!("estimating: {e}")))?;
        let (model, price) = (model.clone(), price.clone());
        let (req_back, est) = tokio::task::spawn_blocking(move || {
            let media = Media::of(&req);
            let est = estimate_with(&req, media, kind, &model, price.as_ref(), default_output);
            drop(permit);
            (req, est)
        })
        .await
        .map_err(|e| ProxyError::Internal(anyhow::anyhow!("estimating failed: {e}")))?;
        req = req_back;
        est
    } else {
        let media = Media::of(&req);
        estimate_with(&req, media, kind, &model, price.as_ref(), default_output)
    };
    // Translated before the hold, so a request its provider cannot take is
    // refused without recording anything; translated again only if the
    // budget lowers the output cap.
    let upstream = prepare_upstream(&route, &req, &key, Some(est.max_output_tokens))?;
    let request_id = header_str(&headers, "x-request-id").map(str::to_owned);
    let ttl = chrono::Duration::from_std(inner.settings.hold_ttl)
        .unwrap_or(chrono::Duration::minutes(10));
    let reserve = ReserveRequest {
        reservation_id: ReservationId::new(),
        model: Some(ledger_model),
        amounts: est.amounts.clone(),
        expires_at: inner.gate.now() + ttl,
        tier: tier_name,
        flex: Some(est.flex.clone()),
    };
    let call = Call {
        state: state.clone(),
        project_id: project.project_id,
        account,
        tier,
        reserve,
        request_id,
        route,
        req,
        key,
        upstream,
        url_by_project,
        price,
        est,
        model,
    };
    // From the hold on, the call runs on its own task to its end even if the
    // client goes away: a hold that lands after the client left is settled,
    // and an answer the provider is already writing is read to learn what it
    // cost, never billed $0.
    let client = CancellationToken::new();
    let _client_gone = client.clone().drop_guard();
    // Boxed: the call's future is kilobytes, and spawning moves it through
    // several frames (memmove was 7–9 % of the proxy threads' CPU in a profile).
    inner
        .tracker
        .spawn(Box::pin(call.run(client)))
        .await
        .map_err(|e| ProxyError::Internal(anyhow::anyhow!("the call's task failed: {e}")))?
}

/// A request that passed every check before its hold, and what it needs
/// until it is settled.
struct Call {
    state: ProxyState,
    project_id: ProjectId,
    account: Account,
    tier: Tier,
    reserve: ReserveRequest,
    request_id: Option<String>,
    route: Route,
    req: ChatRequest,
    key: ProviderKey,
    /// The request for the provider, with the output cap of the estimate.
    upstream: UpstreamRequest,
    /// The base URL is the project's, not the operator's.
    url_by_project: bool,
    price: Option<ModelPrice>,
    est: Estimate,
    model: String,
}

impl Call {
    /// Hold → forward → measure → settle. `client` is cancelled when the
    /// client has gone away: nothing is forwarded after that.
    async fn run(self, client: CancellationToken) -> Result<Response, ProxyError> {
        let Call {
            state,
            project_id,
            account,
            tier,
            reserve,
            request_id,
            route,
            req,
            key,
            upstream,
            url_by_project,
            price,
            est,
            model,
        } = self;
        let inner = &state.0;
        // Counted from before the hold is taken, so it ends before the hold
        // could expire under the call (invariant 4 would then free its
        // budget while the provider still works).
        let deadline = tokio::time::Instant::now() + inner.settings.call_limit();
        let reservation_id = reserve.reservation_id;
        // The model as limits name it, for the rate-limit headers.
        let limits_model = reserve.model.clone().unwrap_or_default();
        let admitted = match inner
            .gate
            .reserve(project_id, &account, &tier, reserve, request_id.clone())
            .await
        {
            Ok(ReserveOutcome::Denied(d)) => return Ok(denied_response(&tier, &d, &limits_model)),
            Ok(ReserveOutcome::Admitted(a)) => a,
            Err(e @ GateError::Unconfirmed(_)) => {
                // The hold may exist although nobody was told: release it once
                // the ledger answers again, rather than leave it holding the
                // budget and a concurrency slot until its TTL (a hold that never
                // landed is found missing, and that ends it).
                let hold = Hold::new(
                    inner.gate.clone(),
                    inner.tracker.clone(),
                    project_id,
                    account,
                    reservation_id,
                    request_id,
                );
                hold.release(crate::hold::UNCONFIRMED);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // Every answer from here on knows the account's limits: an error
        // after the hold (the provider unreachable, the call cut) carries
        // the rate-limit headers too, as a provider's own error does.
        let forwarded = async {
            let hold = Hold::new(
                inner.gate.clone(),
                inner.tracker.clone(),
                project_id,
                account,
                admitted.reservation_id,
                request_id,
            );
            if client.is_cancelled() {
                hold.release("client_gone");
                return Err(ProxyError::BadRequest("the client went away".into()));
            }
            // The hold took (nearly) the call's whole time (a slow ledger, a
            // short TOLLGATE_HOLD_TTL_MS): nothing was sent, so nothing is
            // charged, rather than the cut below charging the hold for a call
            // the provider would hardly have started.
            if tokio::time::Instant::now() + MIN_TIME_TO_CALL >= deadline {
                hold.release("hold_outlasted_call");
                return Err(ProxyError::HoldTooSlow(inner.settings.hold_ttl.as_millis()));
            }
            let max_tokens = admitted.output_tokens.unwrap_or(est.max_output_tokens);
            let upstream = if max_tokens == est.max_output_tokens {
                upstream
            } else {
                match prepare_upstream(&route, &req, &key, Some(max_tokens)) {
                    Ok(u) => u,
                    Err(e) => {
                        hold.release("invalid_request");
                        return Err(e.into());
                    }
                }
            };
            // Shut down before it was sent (its reserve came back after the
            // grace ended): nothing reached the provider, nothing is charged.
            if inner.cut_off.is_cancelled() {
                hold.release("shutting_down");
                return Err(ProxyError::ShutDownBeforeSending);
            }
            let sent_at = tokio::time::Instant::now();
            // Cut (shutdown, or the call's deadline) with the provider still
            // working: what it did is unknown, so the hold is charged rather
            // than $0.
            let sent = match unless_cut_off(inner, deadline, inner.http.send(&upstream, url_by_project))
                .await
            {
                Ok(sent) => sent,
                Err(cut) => {
                    hold.commit(admitted.held.clone());
                    return Err(cut.error(inner));
                }
            };
            let response = match sent {
                Ok(r) => r,
                Err(e) if e.address_refused() => {
                    hold.release("upstream_refused");
                    return Err(ProxyError::UpstreamRefused(route.provider.clone()));
                }
                // Connected, then the answer's head never came (the connection
                // broke, a middlebox timed out): the provider may be billing
                // for it, so charge what was held rather than $0.
                Err(e) if e.may_have_reached() => {
                    hold.commit(admitted.held.clone());
                    return Err(ProxyError::UpstreamBroken(format!(
                        "{}: {e}",
                        route.provider
                    )));
                }
                Err(e) => {
                    hold.release("upstream_unreachable");
                    return Err(ProxyError::Upstream(format!("{}: {e}", route.provider)));
                }
            };
            let status = response.status();
            // A provider's advice on when to retry, kept for its error answers.
            let retry_headers: Vec<(header::HeaderName, HeaderValue)> = if status.is_success() {
                Vec::new()
            } else {
                RETRY_HEADERS
                    .iter()
                    .filter_map(|name| {
                        let name = header::HeaderName::from_static(name);
                        response.headers().get(&name).map(|v| (name, v.clone()))
                    })
                    .collect()
            };
            let now = Utc::now();
            if upstream.stream && status.is_success() {
                let translator = StreamTranslator::new(route.kind, req.wants_stream_usage(), &model);
                let per_sec = inner.settings.hidden_reasoning_tokens_per_sec;
                let hidden_reasoning = (per_sec > 0
                    && reasons_by_default(price.as_ref(), route.kind)
                    && !crate::providers::reasoning_turned_off(&route, &req))
                .then(|| {
                    let choices = u64::from(req.n.unwrap_or(1));
                    let cap = upstream.max_output_tokens.unwrap_or(max_tokens);
                    HiddenReasoning::new(sent_at, per_sec, cap, choices)
                });
                let charging = Charging {
                    price,
                    input_estimate: est.input,
                    hidden_reasoning,
                };
                // Half the margin the call's limit leaves before its hold
                // would expire, for what ends it to settle it.
                let margin = inner
                    .settings
                    .hold_ttl
                    .saturating_sub(inner.settings.call_limit());
                let mut stream = MeteredStream::new(
                    crate::upstream::body_stream(response),
                    translator,
                    hold,
                    charging,
                    &inner.watchdog,
                    deadline,
                    deadline + margin / 2,
                );
                stream.prefetch().await;
                let mut out = Response::new(Body::from_stream(stream));
                let h = out.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                rate_limit_headers(h, &admitted.limits, &limits_model, now);
                return Ok(out);
            }
            let read = match unless_cut_off(inner, deadline, crate::upstream::read_all(response)).await
            {
                Ok(read) => read,
                Err(cut) => {
                    hold.commit(admitted.held.clone());
                    return Err(cut.error(inner));
                }
            };
            let bytes = match read {
                Ok(b) => b,
                Err(e) => {
                    // The provider may have done the work: charge what was held rather than $0.
                    hold.commit(admitted.held.clone());
                    return Err(ProxyError::UpstreamBroken(format!(
                        "{}: {e}",
                        route.provider
                    )));
                }
            };
            let translated = if upstream.stream {
                Err(translate_error(route.kind, status, &bytes))
            } else {
                translate_response(route.kind, status, &bytes, &model)
            };
            match translated {
                Ok((json_bytes, mut usage)) => {
                    if est.input.fill_missing(&mut usage) {
                        usage.estimated = true;
                    }
                    hold.commit(actual(&usage, price.as_ref()));
                    let mut out = Response::new(Body::from(json_bytes));
                    out.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    rate_limit_headers(out.headers_mut(), &admitted.limits, &limits_model, now);
                    Ok(out)
                }
                Err(ProviderError::Malformed { reason }) if status.is_success() => {
                    hold.commit(admitted.held.clone());
                    tracing::warn!(provider = %route.provider, reason = %reason, "provider answered 2xx with an unreadable body; charged the hold");
                    // Charged: the SDKs' own retries would be charged again.
                    let mut out = openai_error(
                        StatusCode::BAD_GATEWAY,
                        "api_error",
                        "upstream_malformed",
                        "the provider's answer could not be read; the call was charged what was held, since the provider did the work",
                        None,
                    );
                    let h = out.headers_mut();
                    tell_sdks_not_to_retry(h);
                    rate_limit_headers(h, &admitted.limits, &limits_model, now);
                    Ok(out)
                }
                Err(e) => {
                    hold.release("upstream_error");
                    let status = e.status();
                    let mut out = Response::new(Body::from(e.body_bytes()));
                    *out.status_mut() = status;
                    let h = out.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    rate_limit_headers(h, &admitted.limits, &limits_model, now);
                    h.extend(retry_headers);
                    Ok(out)
                }
            }
        }
        .await;
        forwarded.or_else(|e| {
            let mut out = e.into_response();
            rate_limit_headers(
                out.headers_mut(),
                &admitted.limits,
                &limits_model,
                Utc::now(),
            );
            Ok(out)
        })
    }
}
