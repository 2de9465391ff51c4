//! Providers are called over HTTPS (every real one is): the proxy speaks TLS,
//! verifies the provider's certificate, and charges nothing when it cannot
//! reach a provider it can trust; behind an egress proxy it tunnels there.
//! The OpenAI mock sits behind a TLS front with a certificate of the test
//! authority (`testkit::tls`) that offers HTTP/2 and HTTP/1.1, as the
//! providers' front ends do, so these tests also cover the HTTP/2 path real
//! calls take: streams, cancellation (a reset stream, not a closed
//! connection) and many calls sharing one connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use futures::StreamExt;
use serde_json::json;
use std::time::Duration;
use support::Proxy;

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    limits:
      - { unit: requests, window: day, cap: 100 }
      - { unit: usd, window: month, cap: "5.00" }
"#;

fn body(stream: bool) -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "stream": stream, "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello over TLS"}]})
}

/// The HTTP version of each request the OpenAI mock received, in order.
fn versions(p: &Proxy) -> Vec<String> {
    p.openai
        .requests_seen()
        .into_iter()
        .map(|r| r.version)
        .collect()
}

#[tokio::test]
async fn a_provider_behind_https_is_called_once_its_authority_is_trusted() {
    let p = Proxy::start_tls(PLAN, true).await;
    assert!(p
        .openai_tls
        .as_ref()
        .unwrap()
        .origin()
        .starts_with("https://"));

    let (status, _, answer) = p.chat("alice", body(false)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    let streamed = p.request("alice", &body(true)).send().await.unwrap();
    assert_eq!(streamed.status(), 200);
    let mut chunks = streamed.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = chunks.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Both calls went through TLS to the provider, over the HTTP/2 it
    // offered, the key included.
    assert_eq!(p.openai.request_count(), 2);
    assert_eq!(versions(&p), ["HTTP/2.0", "HTTP/2.0"]);
    let seen = p.openai.last_request().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-provider-test-key")
    );
    assert!(
        seen.header("user-agent")
            .is_some_and(|ua| ua.starts_with("tollgate/")),
        "{:?}",
        seen.header("user-agent")
    );
    let settled = p.settled("alice", 2).await;
    assert!(settled.iter().all(|(t, _)| t == "committed"), "{settled:?}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_nothing_is_charged() {
    let p = Proxy::start_tls(PLAN, false).await;
    let (status, _, answer) = p.chat("bob", body(false)).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["type"], "api_error", "{answer}");
    assert_eq!(answer["error"]["code"], "upstream_unreachable", "{answer}");
    assert_eq!(
        p.openai.request_count(),
        0,
        "nothing may reach a provider whose certificate is not trusted"
    );
    let settled = p.settled("bob", 1).await;
    assert_eq!(settled[0].0, "released", "{settled:?}");
    assert_eq!(settled[0].1["reason"], "upstream_unreachable");
}

#[tokio::test]
async fn behind_an_egress_proxy_calls_tunnel_through_it() {
    let egress = testkit::tls::ConnectProxy::start().await.unwrap();
    let p = Proxy::start_tls_via(PLAN, &egress.url()).await;
    let (status, _, answer) = p.chat("carol", body(false)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(p.openai.request_count(), 1);
    let front = p.openai_tls.as_ref().unwrap().origin();
    assert_eq!(
        egress.targets(),
        vec![front.trim_start_matches("https://").to_owned()],
        "the call must be tunnelled to the provider through the egress proxy"
    );
    // Plain http:// providers (local servers) are called directly.
    let (status, _, answer) = p
        .chat("carol", {
            let mut b = body(false);
            b["model"] = json!("claude-3-5-sonnet-20240620");
            b
        })
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(egress.targets().len(), 1);
    assert_eq!(p.anthropic.request_count(), 1);
}

#[tokio::test]
async fn a_provider_offering_only_http1_is_called_over_http1() {
    let p = Proxy::start_tls_http1(PLAN).await;
    let (status, _, answer) = p.chat("dave", body(false)).await;
    assert_eq!(status, 200, "{answer}");
    let streamed = p.request("dave", &body(true)).send().await.unwrap();
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(versions(&p), ["HTTP/1.1", "HTTP/1.1"]);
    let settled = p.settled("dave", 2).await;
    assert!(settled.iter().all(|(t, _)| t == "committed"), "{settled:?}");
}

/// Usage committed for `identity`'s one settled hold: (input, output) tokens.
async fn committed_tokens(p: &Proxy, identity: &str) -> (u64, u64) {
    let settled = p.settled(identity, 1).await;
    assert_eq!(settled[0].0, "committed", "{identity}: {settled:?}");
    let tokens = |unit: &str| -> u64 {
        settled[0].1["actual"][unit]
            .as_str()
            .unwrap_or_else(|| panic!("{identity}: no {unit} in {settled:?}"))
            .parse()
            .unwrap()
    };
    (tokens("input_tokens"), tokens("output_tokens"))
}

#[tokio::test]
async fn over_http2_a_cancelled_stream_is_charged_and_the_connection_keeps_serving() {
    let p = Proxy::start_tls(PLAN, true).await;
    let front = p.openai_tls.as_ref().unwrap();
    // The proxy hands connections to its two HTTP threads in turn, and each
    // thread has its own client: two clients, two provider connections.
    for identity in ["warm-a", "warm-b"] {
        let request = p.request(identity, &body(false)).build().unwrap();
        let r = reqwest::Client::new().execute(request).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(front.connections(), 2);

    p.openai.update_behavior(|b| {
        b.reply_text = "word ".repeat(200);
        b.chunk_delay = Duration::from_millis(20);
    });
    let r = p.request("erin", &body(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut chunks = r.bytes_stream();
    for _ in 0..3 {
        chunks.next().await.unwrap().unwrap();
    }
    drop(chunks);
    let (_, output) = committed_tokens(&p, "erin").await;
    assert!(output > 0 && output < 200, "partial output {output}");

    // Eight streams at once, on both threads: each thread's calls share its
    // one HTTP/2 connection, the one the cancelled stream was reset on
    // included, and each call is charged its own usage.
    p.openai.update_behavior(|b| {
        b.reply_text = "one two three four".to_owned();
        b.chunk_delay = Duration::from_millis(5);
    });
    let calls = (0..8).map(|i| {
        let p = &p;
        async move {
            let identity = format!("multi-{i}");
            let r = p.request(&identity, &body(true)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{identity}");
            let text = r.text().await.unwrap();
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            committed_tokens(p, &identity).await
        }
    });
    let charged = futures::future::join_all(calls).await;
    assert!(
        charged
            .iter()
            .all(|&(input, output)| input > 0 && output == 4),
        "{charged:?}"
    );
    assert_eq!(versions(&p), ["HTTP/2.0"; 11]);
    assert_eq!(
        front.connections(),
        2,
        "a reset stream must not cost its connection, nor concurrency open new ones"
    );
}
