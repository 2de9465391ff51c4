//! A real ingest server for tests: its own nats-server, a throw-away
//! PostgreSQL database, a project with a plan, and an HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use ledger::{Clock, Gate};
use serde_json::Value;
use std::sync::Arc;
use testkit::nats::NatsServer;
use testkit::pg::TestDb;
use tokio_util::sync::CancellationToken;

/// Threads serving HTTP: two, so consecutive connections land on different threads.
pub const HTTP_THREADS: usize = 2;

pub struct Harness {
    pub nats: NatsServer,
    pub db: TestDb,
    pub gate: Gate,
    pub base: String,
    pub http: reqwest::Client,
    pub secret: String,
    pub project_key: String,
    pub project_id: schemas::ProjectId,
    pub shutdown: CancellationToken,
}

impl Harness {
    pub async fn start(plan_yaml: &str) -> Harness {
        Self::start_with_clock(plan_yaml, Arc::new(ledger::SystemClock)).await
    }

    pub async fn start_with_clock(plan_yaml: &str, clock: Arc<dyn Clock>) -> Harness {
        Self::start_with(plan_yaml, clock, true).await
    }

    /// The ingest API alone: nothing fills the projections, so every answer
    /// comes from the gate and the stream.
    pub async fn start_without_consumers(plan_yaml: &str) -> Harness {
        Self::start_with(plan_yaml, Arc::new(ledger::SystemClock), false).await
    }

    async fn start_with(plan_yaml: &str, clock: Arc<dyn Clock>, consumers: bool) -> Harness {
        let nats = NatsServer::start().await.unwrap();
        let db = testkit::pg::fresh_database().await.unwrap();
        let client = ledger::stream::connect(&nats.url()).await.unwrap();
        let gate = Gate::new(client, clock, Some(db.pool().clone()))
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
        let control = ledger::control::ControlCache::new(db.pool().clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        // Served as `tollgate up` serves it: HTTP_THREADS threads, each with
        // its own runtime, NATS connection and handle on the one gate.
        let (url, main_gate) = (nats.url(), gate.clone());
        let setup = move |_: tollgate_ingest::threads::Worker| {
            let (url, gate, control) = (url.clone(), main_gate.clone(), control.clone());
            async move {
                let gate = gate.on_this_thread(&url).await?;
                Ok(vec![tollgate_ingest::router(tollgate_ingest::AppState {
                    gate,
                    control,
                })])
            }
        };
        let served = tollgate_ingest::threads::serve(
            vec![listener],
            HTTP_THREADS,
            tollgate_ingest::threads::BusyPoll::DEFAULT,
            setup,
            shutdown.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(served);
        if consumers {
            // The ledger and projector consumers run too, as in `tollgate up`.
            ledger::consumers::spawn(
                ledger::consumers::Consumers::all(nats.url(), db.url()),
                shutdown.clone(),
            )
            .unwrap();
        }
        Harness {
            nats,
            db,
            gate,
            base,
            http: reqwest::Client::new(),
            secret: project.secret_key,
            project_key: project.project_key,
            project_id: project.project_id,
            shutdown,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn reserve(&self, body: Value) -> (u16, Value) {
        self.post("/v1/reservations", body).await
    }

    /// The account's events on the stream, in order: (type, event JSON).
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

    /// The limit view entry for `unit` (and `window`) from a response body.
    pub fn limit<'a>(body: &'a Value, unit: &str, window: &str) -> &'a Value {
        body["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["unit"] == unit && l["window"] == window)
            .unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
