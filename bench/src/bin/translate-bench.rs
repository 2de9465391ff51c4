//! `translate-bench`: what reading a provider's answer costs the proxy,
//! per answer, for each provider's wire format: a streamed answer through
//! [`StreamTranslator`] (SSE in, OpenAI's chunks out, usage measured),
//! whole and in 64-byte pieces (a provider still generating sends it in
//! pieces), and the same answer unstreamed through `translate_response`.
//! The answers are the test mocks' (`testkit::mock_providers`, the
//! providers' real wire formats), asked with the requests the proxy builds
//! (`prepare_upstream`), so they are what `proxy-bench` and the tests see.
//!
//! `cargo run --release -p tollgate-bench --bin translate-bench -- [ROUNDS]`
//! (answers read per figure, 100,000 by default; fewer to run it under a
//! profiler such as `valgrind --tool=callgrind`).
#![allow(clippy::print_stdout)]

use axum::http::StatusCode;
use bytes::Bytes;
use proxy::providers::{
    parse_request, prepare_upstream, route, translate_response, BaseUrls, ProviderKey,
    StreamTranslator,
};
use std::hint::black_box;
use std::time::Instant;
use testkit::mock_providers::{MockBehavior, MockKind, MockProvider};

/// Answers read per figure, unless the command line says otherwise.
const ROUNDS: u32 = 100_000;

/// The mock's answer to `model`'s chat request, streamed or not.
async fn answer(mock: &MockProvider, model: &str, stream: bool) -> anyhow::Result<Bytes> {
    let base = mock.base_url();
    let urls = BaseUrls {
        openai: base.clone(),
        anthropic: base.clone(),
        gemini: base.clone(),
        xai: base,
    };
    let body = serde_json::json!({"model": model, "stream": stream, "max_tokens": 64,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Say hello in five words."}]});
    let request = parse_request(body.to_string().as_bytes())?;
    let route = route(model, &[], &urls)?;
    let upstream = prepare_upstream(&route, &request, &ProviderKey::new("bench-key"), None)?;
    let response = reqwest::Client::new()
        .request(upstream.method, &upstream.url)
        .headers(upstream.headers)
        .body(upstream.body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "the mock said {}",
        response.status()
    );
    Ok(response.bytes().await?)
}

/// Microseconds per call of `f`, over `rounds` calls.
fn per_call(rounds: u32, mut f: impl FnMut() -> usize) -> f64 {
    let started = Instant::now();
    let mut out = 0;
    for _ in 0..rounds {
        out += f();
    }
    black_box(out);
    started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

fn translate(kind: proxy::providers::ProviderKind, model: &str, pieces: &[&[u8]]) -> usize {
    let mut translator = StreamTranslator::new(kind, false, model);
    let mut out = 0;
    for piece in pieces {
        out += translator.push(piece).len();
    }
    out += translator.finish().len();
    black_box(translator.usage_so_far());
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let rounds: u32 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| anyhow::anyhow!("ROUNDS must be a positive whole number"))?,
        None => ROUNDS,
    };
    anyhow::ensure!(rounds > 0, "ROUNDS must be a positive whole number");
    println!(
        "{:<10} {:>6} {:>7} | {:>12} {:>14} | {:>10} {:>10}",
        "provider", "events", "bytes", "stream µs", "64-byte µs", "JSON bytes", "JSON µs"
    );
    for (kind, model) in [
        (MockKind::OpenAi, "gpt-4o-mini"),
        (MockKind::Anthropic, "claude-3-5-haiku-20241022"),
        (MockKind::Gemini, "gemini-2.0-flash"),
        (MockKind::Xai, "grok-3-mini"),
    ] {
        let behavior = MockBehavior {
            input_tokens: Some(12),
            ..MockBehavior::default()
        };
        let mock = MockProvider::start_with(kind, behavior).await?;
        let streamed = answer(&mock, model, true).await?;
        let json = answer(&mock, model, false).await?;
        let provider = route(model, &[], &BaseUrls::default())?.kind;
        let events = streamed.windows(5).filter(|w| w == b"data:").count();
        let whole = per_call(rounds, || translate(provider, model, &[&streamed]));
        let pieces: Vec<&[u8]> = streamed.chunks(64).collect();
        let split = per_call(rounds, || translate(provider, model, &pieces));
        let unstreamed = per_call(rounds, || {
            translate_response(provider, StatusCode::OK, &json, model)
                .map_or(0, |(out, _)| out.len())
        });
        println!(
            "{:<10} {:>6} {:>7} | {:>12.2} {:>14.2} | {:>10} {:>10.2}",
            format!("{kind:?}"),
            events,
            streamed.len(),
            whole,
            split,
            json.len(),
            unstreamed
        );
    }
    Ok(())
}
