//! `estimate-bench`: what counting a request's input tokens costs the proxy
//! before it can take the hold (`proxy::estimate::input_tokens`,
//! `o200k_base`), for a new conversation of each size and for the same one
//! sent again, and over a 40-turn chat that resends its history every turn,
//! as chat clients do: with each message counted once (what the proxy does)
//! against every turn counted from scratch.
//!
//! `cargo run --release -p tollgate-bench --bin estimate-bench`
#![allow(clippy::print_stdout)]

use proxy::estimate::{input_tokens, Encoding};
use proxy::providers::openai::ChatRequest;
use proxy::providers::parse_request;
use std::hint::black_box;
use std::time::Instant;

const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog, then explains budgets, \
    tokens and prices to a user who asked about them at some length. ";

/// A request whose messages are `texts`, user and assistant in turn.
fn request(texts: &[String]) -> anyhow::Result<ChatRequest> {
    let messages: Vec<serde_json::Value> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            serde_json::json!({"role": role, "content": text})
        })
        .collect();
    let body = serde_json::json!({"model": "gpt-4o", "messages": messages});
    Ok(parse_request(body.to_string().as_bytes())?)
}

/// Milliseconds `f` takes.
fn ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    // (The tokenizer's tables load once per process, as the proxy does at start.)
    proxy::estimate::warm_up();
    println!("{:<34} {:>14} {:>14}", "conversation", "new ms", "again ms");
    for (label, paragraphs) in [("1 KB", 8), ("11 KB", 88), ("50 KB", 400)] {
        let texts = vec![format!(
            "{label} conversation. {}",
            PARAGRAPH.repeat(paragraphs)
        )];
        let req = request(&texts)?;
        let new = ms(|| {
            black_box(input_tokens(&req, Encoding::O200k));
        });
        let again = ms(|| {
            black_box(input_tokens(&req, Encoding::O200k));
        });
        println!("{label:<34} {new:>14.3} {again:>14.3}");
    }

    // 40 turns of ~1 KB each, every turn resending the whole history.
    let turns = 40;
    let message = |turn: usize, tag: &str| format!("{tag} turn {turn}: {}", PARAGRAPH.repeat(8));
    let mut history = Vec::new();
    let mut total = 0.0;
    for turn in 0..turns {
        history.push(message(turn, "chat"));
        let req = request(&history)?;
        total += ms(|| {
            black_box(input_tokens(&req, Encoding::O200k));
        });
    }
    // The same chat with every turn's texts new, as without remembering.
    let mut scratch = 0.0;
    for turn in 0..turns {
        let texts: Vec<String> = (0..=turn)
            .map(|i| message(i, &format!("scratch-{turn}")))
            .collect();
        let req = request(&texts)?;
        scratch += ms(|| {
            black_box(input_tokens(&req, Encoding::O200k));
        });
    }
    println!(
        "{turns}-turn chat, ~1 KB per message: {total:.1} ms counting in all (each message once), \
         {scratch:.1} ms counting every turn from scratch ({:.0}x); last turn's history {} KB",
        scratch / total.max(1e-9),
        history.iter().map(String::len).sum::<usize>() / 1024
    );
    Ok(())
}
