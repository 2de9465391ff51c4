//! `proxy-bench`: what the proxy adds to an AI call. Against a mock OpenAI
//! provider that answers instantly, the same chat request is sent directly to
//! the mock and through the proxy (with the durable hold and commit on the
//! path, ledger and projector consumers running), at 1, 16 and 64 concurrent
//! clients, non-streamed and streamed. Prints requests/s and latency p50/p99
//! of both, and the added latency (via proxy minus direct).
//!
//! `cargo run --release -p tollgate-bench --bin proxy-bench -- [SECONDS] [CLIENTS,…]`
#![allow(clippy::print_stdout)]

use anyhow::Context as _;
use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;
use proxy::server::{ProxyState, Settings};
use std::sync::Arc;
use std::time::Duration;
use testkit::mock_providers::{MockBehavior, MockKind, MockProvider};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_bench::client::Client;
use tollgate_bench::cpu;
use tollgate_bench::drive::{self, Pair};

/// The allocator `tollgate` uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Threads of the load generator (the proxy gets one per core, as in `tollgate up`).
const LOADGEN_THREADS: usize = 2;

const PLAN: &str = r#"
default_tier: bench
tiers:
  bench:
    limits:
      - { unit: requests, window: day, cap: 1000000000 }
      - { unit: tokens, window: day, cap: 1000000000000 }
      - { unit: usd, window: month, cap: "1000000000" }
"#;

/// Where a load-generator worker sends its chat requests.
#[derive(Clone)]
struct Target {
    base: String,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn body(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "stream": stream, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello in five words."}]})
}

/// One client: a chat request per loop on its own keep-alive connection and
/// identity, reading the whole answer (every chunk of a stream). The
/// driver's second call is empty.
struct Chat {
    client: Client,
    path: String,
    body: Bytes,
}

impl Pair for Chat {
    async fn first(&mut self) -> anyhow::Result<()> {
        self.client.post(&self.path, self.body.clone()).await?;
        Ok(())
    }

    async fn second(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// `clients` closed-loop clients on the load generator's threads (one
/// current-thread runtime each, as `tollgate-bench ingest` drives).
async fn measure(
    target: &Target,
    clients: usize,
    stream: bool,
    secs: f64,
    probe: &cpu::Probe,
) -> anyhow::Result<drive::Outcome> {
    let payload = Bytes::from(serde_json::to_vec(&body(stream))?);
    let target = target.clone();
    let outcome = drive::drive_on_loadgen(
        LOADGEN_THREADS,
        clients,
        move |i| {
            let mut headers = target.headers.clone();
            headers.push((
                HeaderName::from_static("x-identity"),
                HeaderValue::from_str(&format!("bench-{clients}-{i}"))?,
            ));
            Ok(Chat {
                client: Client::new(&target.base, headers)?,
                path: target.path.clone(),
                body: payload.clone(),
            })
        },
        Duration::from_millis(500),
        Duration::from_secs_f64(secs),
        probe,
    )
    .await?;
    anyhow::ensure!(
        outcome.errors == 0,
        "{} requests failed, the first: {}",
        outcome.errors,
        outcome.first_error.as_deref().unwrap_or("?")
    );
    Ok(outcome)
}

/// Starts a mock OpenAI provider on its own thread and runtime, as a
/// separate server would run; it stops when the returned sender is dropped.
///
/// By default it is a replay of testkit's full mock: the full mock answers
/// the bench's request once in each shape (JSON, a stream, a stream with
/// `stream_options.include_usage`, as the proxy asks), and the replay
/// serves those bytes, a stream event by event, choosing by the request.
/// The full mock builds every answer as a JSON tree (≈ 60 µs of CPU per
/// answer here, a fifth of the machine at 6,500 requests/s) on the cores
/// the proxy is measured on; a provider does not. `TOLLGATE_BENCH_MOCK=full`
/// measures against the full mock instead.
fn start_mock() -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let full = std::env::var("TOLLGATE_BENCH_MOCK").is_ok_and(|v| v == "full");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started, base) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(cpu::MOCK_THREAD.into())
        .spawn(move || {
            runtime.block_on(async move {
                let behavior = MockBehavior {
                    input_tokens: Some(12),
                    ..MockBehavior::default()
                };
                let served = async {
                    let mock = MockProvider::start_with(MockKind::OpenAi, behavior).await?;
                    if full {
                        return Ok((mock.base_url(), (mock, None)));
                    }
                    let answers = Answers::capture(&mock.base_url()).await?;
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    let base = format!("http://{}/v1", listener.local_addr()?);
                    let app = axum::Router::new().route(
                        "/v1/chat/completions",
                        axum::routing::post(move |body: Bytes| {
                            let answers = answers.clone();
                            async move { answers.answer(&body) }
                        }),
                    );
                    let server = tokio::spawn(async move { axum::serve(listener, app).await });
                    anyhow::Ok((base, (mock, Some(server))))
                };
                match served.await {
                    Ok((base, _serving)) => {
                        let _ = started.send(Ok(base));
                        let _ = stopped.await;
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                }
            })
        })?;
    let base = base.recv().context("the mock's thread died")??;
    Ok((base, stop))
}

/// The full mock's answers to the bench's request, to replay.
#[derive(Clone)]
struct Answers {
    json: Bytes,
    stream: Arc<Vec<Bytes>>,
    stream_with_usage: Arc<Vec<Bytes>>,
}

impl Answers {
    async fn capture(base: &str) -> anyhow::Result<Answers> {
        let client = reqwest::Client::new();
        let ask = |body: serde_json::Value| {
            let request = client
                .post(format!("{base}/chat/completions"))
                .bearer_auth("sk-bench")
                .json(&body);
            async move {
                let response = request.send().await?.error_for_status()?;
                anyhow::Ok(response.bytes().await?)
            }
        };
        // A stream's events, each sent as its own write.
        let events = |all: Bytes| {
            let text = String::from_utf8_lossy(&all).into_owned();
            let events: Vec<Bytes> = text
                .split_inclusive("\n\n")
                .map(|e| Bytes::from(e.to_owned()))
                .collect();
            Arc::new(events)
        };
        let mut with_usage = body(true);
        with_usage["stream_options"] = serde_json::json!({"include_usage": true});
        Ok(Answers {
            json: ask(body(false)).await?,
            stream: events(ask(body(true)).await?),
            stream_with_usage: events(ask(with_usage).await?),
        })
    }

    fn answer(&self, request: &[u8]) -> axum::response::Response {
        use axum::response::IntoResponse;
        let has = |needle: &[u8]| request.windows(needle.len()).any(|w| w == needle);
        if !has(b"\"stream\":true") {
            return ([("content-type", "application/json")], self.json.clone()).into_response();
        }
        let events = if has(b"\"include_usage\":true") {
            self.stream_with_usage.clone()
        } else {
            self.stream.clone()
        };
        let frames = (0..events.len()).map(move |i| Ok::<_, std::io::Error>(events[i].clone()));
        (
            [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
            axum::body::Body::from_stream(futures::stream::iter(frames)),
        )
            .into_response()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As `tollgate` runs (src/main.rs).
    ingest::alloc::no_huge_pages();
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let clients: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').map(str::parse).collect::<Result<_, _>>())
        .transpose()?
        .unwrap_or(vec![1, 16, 64]);

    let (mock_base, _stop_mock) = start_mock()?;
    let nats = testkit::nats::NatsServer::start().await?;
    let db = testkit::pg::fresh_database().await?;
    let client = ledger::stream::connect(&nats.url()).await?;
    let gate = ledger::Gate::new(
        client,
        Arc::new(ledger::SystemClock),
        Some(db.pool().clone()),
    )
    .await?;
    // As `tollgate` reads it (src/main.rs): 0 turns snapshots off.
    if let Ok(every) = std::env::var("TOLLGATE_SNAPSHOT_EVERY") {
        gate.set_snapshot_every(every.parse()?);
    }
    let project = ledger::control::create_project(db.pool(), "bench").await?;
    ledger::control::apply_plan(
        db.pool(),
        &project.project_key,
        &schemas::plan::Plan::from_yaml(PLAN)?,
    )
    .await?;
    let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
    // The consumers on their own thread, as `tollgate up` runs them.
    tracker.spawn(ledger::consumers::spawn(
        ledger::consumers::Consumers::all(nats.url(), db.url()),
        shutdown.clone(),
    )?);
    let settings = Settings {
        base_urls: proxy::providers::BaseUrls {
            openai: mock_base.clone(),
            ..Default::default()
        },
        ..Settings::default()
    };
    let control = ledger::control::ControlCache::new(db.pool().clone());
    let configs = proxy::project_config::ProjectConfigCache::new(db.pool().clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = listener.local_addr()?;
    // One runtime, NATS connection and gate handle per HTTP thread, as
    // `tollgate up` serves the proxy (`ingest::threads`).
    let nats_url = nats.url();
    let setup = move |worker: ingest::threads::Worker| {
        let (url, gate, control, configs, settings) = (
            nats_url.clone(),
            gate.clone(),
            control.clone(),
            configs.clone(),
            settings.clone(),
        );
        async move {
            let state =
                ProxyState::on_this_thread(&url, &gate, control, configs, worker, settings).await?;
            Ok(vec![proxy::server::router(state)])
        }
    };
    let served = ingest::threads::serve(
        vec![listener],
        tollgate_bench::http_threads(),
        tollgate_bench::busy_poll(),
        setup,
        shutdown.clone(),
    )
    .await?;
    tracker.spawn(served);

    let probe = cpu::Probe {
        nats_port: Some(nats.port()),
        db_name: Some(db.name().to_owned()),
    };
    let auth = (
        HeaderName::from_static("authorization"),
        HeaderValue::from_static("Bearer sk-bench"),
    );
    let (mock_host, mock_path) = split_url(&format!("{mock_base}/chat/completions"))?;
    let direct = Target {
        base: mock_host,
        path: mock_path,
        headers: vec![auth.clone()],
    };
    let proxied = Target {
        base: format!("http://{proxy_addr}"),
        path: "/v1/chat/completions".into(),
        headers: vec![
            auth,
            (
                HeaderName::from_static("x-project-key"),
                HeaderValue::from_str(&project.project_key)?,
            ),
        ],
    };
    // Warm-up: connections, the tokenizer, cold accounts.
    measure(&proxied, 4, false, 1.0, &probe)
        .await
        .context("warm-up through the proxy")?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mock_kind = if std::env::var("TOLLGATE_BENCH_MOCK").is_ok_and(|v| v == "full") {
        "testkit's full mock"
    } else {
        "replaying testkit's mock's answers"
    };
    println!("proxy-bench: {secs} s per row after 0.5 s of warm-up, mock OpenAI answering instantly on its own thread ({mock_kind}), {cores} cores; load generator in this process ({LOADGEN_THREADS} threads, one runtime each)");
    println!(
        "{:<9} {:>7} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9} | {:>11} {:>11}",
        "mode",
        "clients",
        "direct/s",
        "p50 ms",
        "p99 ms",
        "proxy/s",
        "p50 ms",
        "p99 ms",
        "added p50",
        "added p99"
    );
    let mut cpu_rows = Vec::new();
    for stream in [false, true] {
        let mode = if stream { "streamed" } else { "json" };
        for &n in &clients {
            let d = measure(&direct, n, stream, secs, &probe).await?;
            let p = measure(&proxied, n, stream, secs, &probe).await?;
            let ms = |us: u64| us as f64 / 1000.0;
            let (d50, d99) = (
                d.first.value_at_quantile(0.5),
                d.first.value_at_quantile(0.99),
            );
            let (p50, p99) = (
                p.first.value_at_quantile(0.5),
                p.first.value_at_quantile(0.99),
            );
            println!(
                "{mode:<9} {n:>7} | {:>10.0} {:>9.3} {:>9.3} | {:>10.0} {:>9.3} {:>9.3} | {:>9.3}ms {:>9.3}ms",
                d.pairs_per_sec(),
                ms(d50),
                ms(d99),
                p.pairs_per_sec(),
                ms(p50),
                ms(p99),
                ms(p50) - ms(d50),
                ms(p99) - ms(d99),
            );
            cpu_rows.push((mode, n, p.cpu));
        }
    }
    println!();
    println!("where the CPU went while proxying (% of one core; 100 x nproc = all cores busy; proxy = this process minus load generator and mock)");
    println!(
        "{:<9} {:>7} | {:>6} {:>8} {:>6} {:>6} {:>9} {:>6} {:>6}",
        "mode", "clients", "proxy", "loadgen", "mock", "nats", "postgres", "other", "idle"
    );
    for (mode, n, c) in cpu_rows {
        println!(
            "{mode:<9} {n:>7} | {:>6.0} {:>8.0} {:>6.0} {:>6.0} {:>9.0} {:>6.0} {:>6.0}",
            c.service, c.loadgen, c.mock, c.nats, c.postgres, c.other, c.idle
        );
    }
    println!("targets: added p50 <= 0.2 ms and p99 <= 1 ms at 1 client; >= 8000 proxied requests/s at 16 and 64 clients");
    shutdown.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    Ok(())
}

/// `http://host:port/path` → (`http://host:port`, `/path`).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("the bench talks plain http")?;
    let slash = rest.find('/').unwrap_or(rest.len());
    Ok((
        format!("http://{}", &rest[..slash]),
        rest[slash..].to_owned(),
    ))
}
