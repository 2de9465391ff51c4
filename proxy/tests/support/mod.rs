//! A real proxy for tests: its own nats-server, a throw-away database, the
//! ledger and projector consumers, and one mock provider per API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use ledger::Gate;
use serde_json::Value;
use std::time::Duration;
use testkit::mock_providers::{MockKind, MockProvider};
use testkit::nats::NatsServer;
use testkit::pg::TestDb;
use testkit::tls::TlsFront;
use tokio_util::sync::CancellationToken;
use tollgate_proxy::providers::BaseUrls;
use tollgate_proxy::server::{ProxyState, Settings};

/// How the OpenAI mock is put behind HTTPS.
#[derive(Clone, Copy)]
struct Tls {
    /// The proxy trusts the test authority.
    trust: bool,
    /// The front offers HTTP/2 (and HTTP/1.1).
    h2: bool,
}

pub struct Proxy {
    pub nats: NatsServer,
    pub db: TestDb,
    pub gate: Gate,
    pub base: String,
    pub http: reqwest::Client,
    pub project_key: String,
    pub project_id: schemas::ProjectId,
    pub openai: MockProvider,
    pub anthropic: MockProvider,
    pub gemini: MockProvider,
    pub xai: MockProvider,
    /// HTTPS in front of `openai`, when started with [`Proxy::start_tls`].
    pub openai_tls: Option<TlsFront>,
    pub shutdown: CancellationToken,
    /// Ends when the proxy's threads have stopped (after `shutdown`).
    pub served: tokio::task::JoinHandle<()>,
}

/// How long calls still running at shutdown go on before they are cut short.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

impl Proxy {
    pub async fn start(plan_yaml: &str) -> Proxy {
        Self::start_with(plan_yaml, None).await
    }

    /// With `enc`, stored provider keys are decrypted and used.
    pub async fn start_with(
        plan_yaml: &str,
        enc: Option<tollgate_proxy::keys::EncryptionKey>,
    ) -> Proxy {
        Self::start_inner(plan_yaml, enc, None, None, &|_, _| {}).await
    }

    /// With holds that live `hold_ttl` (`TOLLGATE_HOLD_TTL_MS`).
    pub async fn start_with_hold_ttl(plan_yaml: &str, hold_ttl: Duration) -> Proxy {
        Self::start_inner(plan_yaml, None, None, None, &|s, _| s.hold_ttl = hold_ttl).await
    }

    /// Closing a connection whose writes stay blocked for `send`
    /// (`ingest::threads::SEND_TIMEOUT`).
    pub async fn start_with_send_timeout(plan_yaml: &str, send: Duration) -> Proxy {
        Self::start_inner(plan_yaml, None, None, None, &|_, t| t.send = send).await
    }

    /// Taking request bodies of up to `bytes` (`TOLLGATE_MAX_BODY_BYTES`).
    pub async fn start_with_max_body(plan_yaml: &str, bytes: usize) -> Proxy {
        Self::start_inner(plan_yaml, None, None, None, &|s, _| {
            s.max_body_bytes = bytes
        })
        .await
    }

    /// Refusing base URLs a project sets that lead to a non-public
    /// address (`TOLLGATE_PRIVATE_UPSTREAMS=deny`).
    pub async fn start_denying_private_upstreams(plan_yaml: &str) -> Proxy {
        Self::start_inner(plan_yaml, None, None, None, &|s, _| {
            s.deny_private_upstreams = true;
        })
        .await
    }

    /// With the OpenAI mock behind HTTPS (a certificate of the test
    /// authority, `testkit::tls`) offering HTTP/2 and HTTP/1.1 as the
    /// providers' front ends do; the proxy trusts it if `trust`.
    pub async fn start_tls(plan_yaml: &str, trust: bool) -> Proxy {
        let tls = Tls { trust, h2: true };
        Self::start_inner(plan_yaml, None, Some(tls), None, &|_, _| {}).await
    }

    /// Like [`Proxy::start_tls`] (trusted), the front offering HTTP/1.1 only.
    pub async fn start_tls_http1(plan_yaml: &str) -> Proxy {
        let tls = Tls {
            trust: true,
            h2: false,
        };
        Self::start_inner(plan_yaml, None, Some(tls), None, &|_, _| {}).await
    }

    /// Like [`Proxy::start_tls`] with the authority trusted, and every
    /// `https://` call made through the egress proxy at `egress_url`.
    pub async fn start_tls_via(plan_yaml: &str, egress_url: &str) -> Proxy {
        let tls = Tls {
            trust: true,
            h2: true,
        };
        Self::start_inner(plan_yaml, None, Some(tls), Some(egress_url), &|_, _| {}).await
    }

    async fn start_inner(
        plan_yaml: &str,
        enc: Option<tollgate_proxy::keys::EncryptionKey>,
        tls: Option<Tls>,
        egress_url: Option<&str>,
        tweak: &dyn Fn(&mut Settings, &mut ingest::threads::Timeouts),
    ) -> Proxy {
        let nats = NatsServer::start().await.unwrap();
        let db = testkit::pg::fresh_database().await.unwrap();
        let client = ledger::stream::connect(&nats.url()).await.unwrap();
        let gate = Gate::new(
            client,
            std::sync::Arc::new(ledger::SystemClock),
            Some(db.pool().clone()),
        )
        .await
        .unwrap();
        let project = ledger::control::create_project(db.pool(), "test")
            .await
            .unwrap();
        let plan = schemas::plan::Plan::from_yaml(plan_yaml).unwrap();
        assert!(
            ledger::control::apply_plan(db.pool(), &project.project_key, &plan)
                .await
                .unwrap()
        );
        let (openai, anthropic, gemini, xai) = (
            MockProvider::start(MockKind::OpenAi).await.unwrap(),
            MockProvider::start(MockKind::Anthropic).await.unwrap(),
            MockProvider::start(MockKind::Gemini).await.unwrap(),
            MockProvider::start(MockKind::Xai).await.unwrap(),
        );
        let openai_tls = match tls {
            Some(Tls { h2: true, .. }) => Some(TlsFront::start_h2(openai.addr()).await.unwrap()),
            Some(Tls { h2: false, .. }) => Some(TlsFront::start(openai.addr()).await.unwrap()),
            None => None,
        };
        let extra_roots = match tls {
            Some(Tls { trust: true, .. }) => {
                tollgate_proxy::upstream::read_roots(&testkit::tls::ca_file()).unwrap()
            }
            _ => Vec::new(),
        };
        let settings = Settings {
            base_urls: BaseUrls {
                openai: match &openai_tls {
                    Some(front) => format!("{}/v1", front.origin()),
                    None => openai.base_url(),
                },
                anthropic: anthropic.base_url(),
                gemini: gemini.base_url(),
                xai: xai.base_url(),
            },
            extra_roots,
            egress: match egress_url {
                Some(url) => tollgate_proxy::upstream::Egress::via(url),
                None => tollgate_proxy::upstream::Egress::direct(),
            },
            ..Settings::default()
        };
        let mut settings = settings;
        let mut timeouts = ingest::threads::Timeouts {
            grace: SHUTDOWN_GRACE,
            ..Default::default()
        };
        tweak(&mut settings, &mut timeouts);
        let control = ledger::control::ControlCache::new(db.pool().clone());
        let configs =
            tollgate_proxy::project_config::ProjectConfigCache::new(db.pool().clone(), enc);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        // Served as `tollgate up` serves it: two threads, each with its own
        // runtime, NATS connection and handle on the one gate.
        let (url, main_gate) = (nats.url(), gate.clone());
        let setup = move |worker: ingest::threads::Worker| {
            let (url, gate, control, configs, settings) = (
                url.clone(),
                main_gate.clone(),
                control.clone(),
                configs.clone(),
                settings.clone(),
            );
            async move {
                let state =
                    ProxyState::on_this_thread(&url, &gate, control, configs, worker, settings)
                        .await?;
                Ok(vec![tollgate_proxy::server::router(state)])
            }
        };
        let served = ingest::threads::serve_with(
            vec![listener],
            2,
            ingest::threads::BusyPoll::DEFAULT,
            setup,
            shutdown.clone(),
            timeouts,
        )
        .await
        .unwrap();
        let served = tokio::spawn(served);
        ledger::consumers::spawn(
            ledger::consumers::Consumers::all(nats.url(), db.url()),
            shutdown.clone(),
        )
        .unwrap();
        Proxy {
            nats,
            db,
            gate,
            base,
            http: reqwest::Client::new(),
            project_key: project.project_key,
            project_id: project.project_id,
            openai,
            anthropic,
            gemini,
            xai,
            openai_tls,
            shutdown,
            served,
        }
    }

    pub fn request(&self, identity: &str, body: &Value) -> reqwest::RequestBuilder {
        self.request_with(&self.http, identity, body)
    }

    /// [`Proxy::request`] sent with `http` (a client configured otherwise).
    pub fn request_with(
        &self,
        http: &reqwest::Client,
        identity: &str,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        http.post(format!("{}/v1/chat/completions", self.base))
            .header("x-project-key", &self.project_key)
            .header("x-identity", identity)
            .bearer_auth("sk-provider-test-key")
            .json(body)
    }

    pub async fn chat(
        &self,
        identity: &str,
        body: Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self.request(identity, &body).send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    /// The account's events on the stream: (type, event JSON).
    pub async fn events(&self, identity: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        let account = schemas::Account::Identity {
            identity: identity.into(),
        };
        ledger::audit::audit(
            self.gate.jetstream(),
            self.project_id,
            &account,
            |_, env| {
                out.push((
                    env.event.type_name().to_owned(),
                    serde_json::to_value(&env.event)?,
                ));
                Ok(())
            },
        )
        .await
        .unwrap();
        out
    }

    /// Registers the custom provider `name` at `base_url`, with a price
    /// for its model `m`.
    pub async fn add_priced_provider(&self, name: &str, base_url: &str) {
        tollgate_proxy::project_config::add_custom_provider(
            self.db.pool(),
            self.project_id,
            name,
            base_url,
        )
        .await
        .unwrap();
        tollgate_proxy::project_config::set_price_override(
            &self.db.pool,
            self.project_id,
            &format!("{name}/m"),
            &tollgate_proxy::pricing::ModelPrice::per_token(
                rust_decimal::Decimal::new(1, 6),
                rust_decimal::Decimal::new(2, 6),
            ),
        )
        .await
        .unwrap();
    }

    /// Waits until `identity` has `n` settled holds; returns the settling events.
    pub async fn settled(&self, identity: &str, n: usize) -> Vec<(String, Value)> {
        self.settled_within(identity, n, Duration::from_secs(5))
            .await
    }

    /// [`Proxy::settled`], waiting up to `within`.
    pub async fn settled_within(
        &self,
        identity: &str,
        n: usize,
        within: Duration,
    ) -> Vec<(String, Value)> {
        let mut last = Vec::new();
        let looks = within.as_millis() / 10;
        for _ in 0..looks {
            last = self
                .events(identity)
                .await
                .into_iter()
                .filter(|(t, _)| t != "reserved")
                .collect();
            if last.len() >= n {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "only {} of {n} holds settled for {identity}: {last:?}",
            last.len()
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
