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
use hdrhistogram::Histogram;
use proxy::server::{ProxyState, Settings};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::mock_providers::{MockBehavior, MockKind, MockProvider};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The allocator `tollgate` uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PLAN: &str = r#"
default_tier: bench
tiers:
  bench:
    limits:
      - { unit: requests, window: day, cap: 1000000000 }
      - { unit: tokens, window: day, cap: 1000000000000 }
      - { unit: usd, window: month, cap: "1000000000" }
"#;

struct Target {
    url: String,
    headers: Vec<(&'static str, String)>,
}

struct Row {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

fn body(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "stream": stream, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello in five words."}]})
}

/// `clients` workers, each with its own keep-alive connection and identity, for `secs`.
async fn drive(target: &Target, clients: usize, secs: f64, stream: bool) -> anyhow::Result<Row> {
    let payload = bytes::Bytes::from(serde_json::to_vec(&body(stream))?);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()?;
        let mut req = http
            .post(&target.url)
            .header("content-type", "application/json")
            .header("x-identity", format!("bench-{c}"));
        for (k, v) in &target.headers {
            req = req.header(*k, v);
        }
        let (req, payload) = (req.body(payload.clone()), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let Some(r) = req.try_clone() else {
                    anyhow::bail!("request not clonable")
                };
                let started = Instant::now();
                let resp = r.body(payload.clone()).send().await?;
                let ok = resp.status().is_success();
                let _ = resp.bytes().await?;
                if ok {
                    hist.record(started.elapsed().as_micros().max(1) as u64)?;
                } else {
                    errors += 1;
                }
            }
            anyhow::ensure!(errors == 0, "{errors} requests failed");
            Ok(hist)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok(Row {
        rps: all.len() as f64 / secs,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let clients: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').map(str::parse).collect::<Result<_, _>>())
        .transpose()?
        .unwrap_or(vec![1, 16, 64]);

    let mock = MockProvider::start_with(
        MockKind::OpenAi,
        MockBehavior {
            input_tokens: Some(12),
            ..MockBehavior::default()
        },
    )
    .await?;
    let nats = testkit::nats::NatsServer::start().await?;
    let db = testkit::pg::fresh_database().await?;
    let client = ledger::stream::connect(&nats.url()).await?;
    let gate = ledger::Gate::new(
        client,
        Arc::new(ledger::SystemClock),
        Some(db.pool().clone()),
    )
    .await?;
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
            openai: mock.base_url(),
            ..Default::default()
        },
        ..Settings::default()
    };
    let control = ledger::control::ControlCache::new(db.pool().clone());
    let configs = proxy::project_config::ProjectConfigCache::new(db.pool().clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_url = format!("http://{}/v1/chat/completions", listener.local_addr()?);
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
                ProxyState::on_this_thread(&url, &gate, control, configs, worker.tracker, settings)
                    .await?;
            Ok(vec![proxy::server::router(state)])
        }
    };
    let threads = std::env::var("TOLLGATE_HTTP_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(ingest::threads::default_threads);
    let served = ingest::threads::serve(vec![listener], threads, setup, shutdown.clone()).await?;
    tracker.spawn(served);

    let direct = Target {
        url: format!("{}/chat/completions", mock.base_url()),
        headers: vec![("authorization", "Bearer sk-bench".into())],
    };
    let proxied = Target {
        url: proxy_url,
        headers: vec![
            ("authorization", "Bearer sk-bench".into()),
            ("x-project-key", project.project_key.clone()),
        ],
    };
    // Warm-up: connections, the tokenizer, cold accounts.
    drive(&proxied, 4, 1.0, false)
        .await
        .context("warm-up through the proxy")?;

    println!("proxy-bench: {secs} s per row, mock OpenAI answering instantly, {} cores; load generator in this process", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
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
    for stream in [false, true] {
        for &n in &clients {
            let d = drive(&direct, n, secs, stream).await?;
            let p = drive(&proxied, n, secs, stream).await?;
            let ms = |us: u64| us as f64 / 1000.0;
            println!(
                "{:<9} {:>7} | {:>10.0} {:>9.3} {:>9.3} | {:>10.0} {:>9.3} {:>9.3} | {:>9.3}ms {:>9.3}ms",
                if stream { "streamed" } else { "json" },
                n,
                d.rps,
                ms(d.p50_us),
                ms(d.p99_us),
                p.rps,
                ms(p.p50_us),
                ms(p.p99_us),
                ms(p.p50_us) - ms(d.p50_us),
                ms(p.p99_us) - ms(d.p99_us)
            );
        }
    }
    println!("targets: added p50 <= 0.2 ms and p99 <= 1 ms at 1 client; >= 8000 proxied requests/s at 16 and 64 clients");
    shutdown.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    Ok(())
}
