//! The proxy's HTTP front: `POST /v1/chat/completions` and `GET /v1/models`,
//! drop-in for the official OpenAI SDKs. Every call is identified
//! (`x-project-key`, `x-identity`, `x-tier`), held, forwarded, measured and
//! settled; see [`chat`].

mod chat;
mod error;
mod headers;
mod models;
mod stream;
pub use stream::HIDDEN_REASONING_TOKENS_PER_SEC;

use crate::pricing::PriceTable;
use crate::project_config::ProjectConfigCache;
use crate::providers::BaseUrls;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use ledger::control::ControlCache;
use ledger::Gate;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ProxyError;

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Largest chat request accepted by default (prompts can be long):
/// [`Settings::max_body_bytes`].
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// [`Settings::default_max_reasoning_output_tokens`]'s default: OpenAI's
/// advice for reasoning models ("reserve at least 25,000 tokens for
/// reasoning and outputs").
pub const DEFAULT_MAX_REASONING_OUTPUT_TOKENS: u64 = 25_000;

/// Tunables, from `TOLLGATE_*` variables in the binary.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Output reserved (and the cap sent) when a request sets no `max_tokens`.
    pub default_max_output_tokens: u64,
    /// The same for a model that reasons by default
    /// ([`crate::pricing::ModelPrice::supports_reasoning`]) but Claude, which
    /// reasons only when asked to: its reasoning counts against the cap, and
    /// OpenAI advises leaving at least 25,000 tokens for reasoning and
    /// output; with the general default, answers needing more reasoning
    /// would come back empty, cut at the cap.
    pub default_max_reasoning_output_tokens: u64,
    /// How long a hold lives if the proxy never settles it (crash); a call
    /// is cut short before then ([`Settings::call_limit`]).
    pub hold_ttl: Duration,
    pub base_urls: BaseUrls,
    /// Root certificates trusted for provider connections besides Mozilla's
    /// (`TOLLGATE_UPSTREAM_CA_FILE`, `crate::upstream`).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Egress proxy rules for provider calls (`HTTPS_PROXY`, `NO_PROXY`).
    pub egress: crate::upstream::Egress,
    /// Largest request body accepted (`TOLLGATE_MAX_BODY_BYTES`): a PDF or
    /// long recordings sent inline as base64 may need more than the default.
    pub max_body_bytes: usize,
    /// Refuse calls to base URLs a project set when they lead to a
    /// non-public address (`TOLLGATE_PRIVATE_UPSTREAMS=deny`,
    /// [`crate::upstream::is_public`]).
    pub deny_private_upstreams: bool,
    /// What a cut stream of a model that reasons without streaming it is
    /// charged per second it thought (`TOLLGATE_HIDDEN_REASONING_TOKENS_PER_SEC`,
    /// [`stream::HiddenReasoning`]); 0 charges no reasoning the provider
    /// did not report.
    pub hidden_reasoning_tokens_per_sec: u64,
}

impl Settings {
    /// How long one call may run, from before its hold is taken: the
    /// hold's lifetime less a tenth of it (at most 10 s), the margin for
    /// settling before the ledger would expire the hold and free its budget
    /// while the provider still works. A call cut there is charged as one
    /// cut by shutdown is.
    pub fn call_limit(&self) -> Duration {
        self.hold_ttl - (self.hold_ttl / 10).min(Duration::from_secs(10))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_max_output_tokens: 4096,
            default_max_reasoning_output_tokens: DEFAULT_MAX_REASONING_OUTPUT_TOKENS,
            hold_ttl: Duration::from_secs(600),
            base_urls: BaseUrls::default(),
            extra_roots: Vec::new(),
            egress: crate::upstream::Egress::direct(),
            max_body_bytes: MAX_BODY_BYTES,
            deny_private_upstreams: false,
            hidden_reasoning_tokens_per_sec: stream::HIDDEN_REASONING_TOKENS_PER_SEC,
        }
    }
}

pub struct Inner {
    pub gate: Gate,
    pub control: ControlCache,
    pub configs: ProjectConfigCache,
    pub prices: PriceTable,
    pub http: crate::upstream::UpstreamClient,
    pub tracker: TaskTracker,
    /// Cancelled when calls still running at shutdown must end and settle
    /// (`ingest::threads::Worker::cut_off`).
    pub cut_off: CancellationToken,
    /// Ends this thread's streams at their deadline or the cut-off, polled
    /// or not.
    pub watchdog: stream::Watchdog,
    pub settings: Settings,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ProxyState(pub Arc<Inner>);

impl ProxyState {
    /// Must be called on the runtime of the thread that serves with it
    /// (it starts the thread's [`stream::Watchdog`] there).
    pub fn new(
        gate: Gate,
        control: ControlCache,
        configs: ProjectConfigCache,
        tracker: TaskTracker,
        cut_off: CancellationToken,
        settings: Settings,
    ) -> anyhow::Result<ProxyState> {
        let prices = PriceTable::bundled()?;
        let http = crate::upstream::UpstreamClient::new(
            &settings.extra_roots,
            settings.egress.clone(),
            settings.deny_private_upstreams,
        )?;
        crate::estimate::warm_up();
        // Half the margin a call keeps before its hold expires: a stream is
        // cut within it.
        let watch_every = settings.hold_ttl.saturating_sub(settings.call_limit()) / 2;
        let watchdog = stream::Watchdog::start(cut_off.clone(), watch_every);
        Ok(ProxyState(Arc::new(Inner {
            gate,
            control,
            configs,
            prices,
            http,
            tracker,
            cut_off,
            watchdog,
            settings,
        })))
    }

    /// The state for one HTTP thread (`ingest::threads`): a NATS connection
    /// made on this thread, a handle on the process's one gate over it, and
    /// this thread's upstream client, task tracker and cut-off.
    pub async fn on_this_thread(
        nats_url: &str,
        gate: &Gate,
        control: ControlCache,
        configs: ProjectConfigCache,
        worker: ingest::threads::Worker,
        settings: Settings,
    ) -> anyhow::Result<ProxyState> {
        let gate = gate.on_this_thread(nats_url).await?;
        ProxyState::new(
            gate,
            control,
            configs,
            worker.tracker,
            worker.cut_off,
            settings,
        )
    }
}

pub fn router(state: ProxyState) -> Router {
    let max_body = state.0.settings.max_body_bytes;
    let router = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::retrieve))
        // (After the routes: it applies to the routes added before it.)
        .method_not_allowed_fallback(|| async { ProxyError::MethodNotAllowed })
        .fallback(|| async { ProxyError::NotFound })
        .layer(DefaultBodyLimit::max(max_body));
    ingest::http::with_request_ids(router).with_state(state)
}
