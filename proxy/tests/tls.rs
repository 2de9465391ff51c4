//! Providers are called over HTTPS (every real one is): the proxy speaks TLS,
//! verifies the provider's certificate, and charges nothing when it cannot
//! reach a provider it can trust; behind an egress proxy it tunnels there.
//! The OpenAI mock sits behind a TLS front with a certificate of the test
//! authority (`testkit::tls`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use futures::StreamExt;
use serde_json::json;
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

    // Both calls went through TLS to the provider, the key included.
    assert_eq!(p.openai.request_count(), 2);
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
