//! Privacy canary (invariant 6): a unique string sent in prompts, returned
//! in answers and quoted in provider errors reaches the provider and the
//! client, and appears nowhere else — not in NATS's store, not in any
//! PostgreSQL table, not in any log line (captured at DEBUG for every
//! crate). The same for the provider key the client passes through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use parking_lot::Mutex;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use support::Proxy;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

const PLAN: &str = r#"
default_tier: free
tiers:
  free:
    limits:
      - { unit: usd, window: month, cap: "10" }
  tiny:
    message: "limit {{limit}} reached"
    limits:
      - { unit: requests, window: day, cap: 1 }
"#;

#[tokio::test]
async fn a_canary_in_prompts_never_reaches_nats_postgres_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let p = Proxy::start(PLAN).await;
    let canary = format!("CANARY-{}", uuid::Uuid::now_v7().simple());
    // A provider key passed through: a secret, kept out of the same places.
    let provider_key = format!("sk-KEYCANARY{}", uuid::Uuid::now_v7().simple());
    // Answers carry it too: completions are as private as prompts.
    for mock in [&p.openai, &p.anthropic, &p.gemini, &p.xai] {
        let reply = format!("my answer {canary} ");
        mock.update_behavior(|b| b.reply_text = reply.repeat(3));
    }
    let send = |identity: &str, body: &serde_json::Value| {
        p.http
            .post(format!("{}/v1/chat/completions", p.base))
            .header("x-project-key", &p.project_key)
            .header("x-identity", identity)
            .bearer_auth(&provider_key)
            .json(body)
            .send()
    };
    let body = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream, "max_tokens": 50,
            "tools": [{"type": "function", "function": {"name": "lookup", "description": canary, "parameters": {"type": "object"}}}],
            "messages": [{"role": "system", "content": format!("secret system {canary}")},
                         {"role": "user", "content": [{"type": "text", "text": format!("my prompt {canary}")}]}]})
    };
    for model in [
        "gpt-4o",
        "claude-3-5-sonnet-20240620",
        "gemini-2.0-flash",
        "grok-2-1212",
    ] {
        for stream in [false, true] {
            let r = send("privacy-user", &body(model, stream)).await.unwrap();
            assert_eq!(r.status(), 200, "{model}");
            let answer = r.bytes().await.unwrap();
            assert!(contains(&answer, &canary), "{model}: the answer came back");
        }
    }
    // A stream the client leaves after its first chunk (settled with what
    // was counted), and provider errors that quote the prompt.
    p.anthropic
        .update_behavior(|b| b.chunk_delay = std::time::Duration::from_millis(50));
    let r = send("privacy-user", &body("claude-3-5-sonnet-20240620", true))
        .await
        .unwrap();
    let mut chunks = r.bytes_stream();
    futures::StreamExt::next(&mut chunks)
        .await
        .unwrap()
        .unwrap();
    drop(chunks);
    p.anthropic
        .update_behavior(|b| b.chunk_delay = std::time::Duration::ZERO);
    for stream in [false, true] {
        p.openai.fail_with(
            400,
            &format!("your prompt 'my prompt {canary}' was refused"),
        );
        let r = send("privacy-user", &body("gpt-4o", stream)).await.unwrap();
        assert!(
            contains(&r.bytes().await.unwrap(), &canary),
            "the error came back"
        );
    }
    p.openai.update_behavior(|b| b.error = None);
    // Refused and failing calls carry the canary too.
    let tiny = |b: serde_json::Value| p.request("tiny-user", &b).header("x-tier", "tiny").send();
    assert_eq!(tiny(body("gpt-4o", false)).await.unwrap().status(), 200);
    assert_eq!(tiny(body("gpt-4o", false)).await.unwrap().status(), 429);
    let bad = json!({"model": "gpt-4o", "messages": [{"role": canary, "content": canary}]});
    assert_eq!(p.request("u", &bad).send().await.unwrap().status(), 400);
    p.anthropic
        .fail_with(400, &format!("bad request: my prompt {canary}"));
    let _ = p
        .request("u", &body("claude-3-5-sonnet-20240620", false))
        .send()
        .await
        .unwrap()
        .bytes()
        .await;
    p.settled("tiny-user", 1).await;
    // Every call of the user above is settled (the left stream too).
    p.settled("privacy-user", 11).await;

    // It really was sent to the providers...
    assert!(p
        .openai
        .requests_seen()
        .iter()
        .any(|r| contains(&r.body, &canary)));
    assert!(p
        .gemini
        .requests_seen()
        .iter()
        .any(|r| contains(&r.body, &canary)));
    // ...and is nowhere else.
    let logs = logs.0.lock().clone();
    assert!(logs.len() > 1000, "logs were captured");
    assert!(!contains(&logs, &canary[..20]), "canary found in logs");
    assert!(
        !contains(&logs, &provider_key[..20]),
        "provider key found in logs"
    );
    let mut files = Vec::new();
    files_under(&p.nats.store_dir(), &mut files);
    assert!(!files.is_empty());
    for f in files {
        assert!(
            !contains(&std::fs::read(&f).unwrap_or_default(), "my prompt"),
            "prompt text in NATS store file {}",
            f.display()
        );
        let stored = std::fs::read(&f).unwrap_or_default();
        assert!(
            !contains(&stored, &canary) && !contains(&stored, &provider_key),
            "canary or provider key in NATS store file {}",
            f.display()
        );
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(p.db.pool())
    .await
    .unwrap();
    assert!(tables.len() >= 5);
    for t in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM \"{t}\" t"))
            .fetch_all(p.db.pool())
            .await
            .unwrap();
        for row in rows {
            assert!(
                !row.contains("my prompt") && !row.contains("secret system"),
                "prompt text in table {t}: {row}"
            );
            assert!(!row.contains(&canary), "canary in table {t}: {row}");
            assert!(
                !row.contains(&provider_key),
                "provider key in table {t}: {row}"
            );
        }
    }
}
