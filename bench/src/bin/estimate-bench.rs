//! `estimate-bench`: what counting a request's input tokens costs the proxy
//! before it can take the hold (`proxy::estimate::input_tokens`,
//! `o200k_base`), for a new conversation of each size and for the same one
//! sent again, and over a 40-turn chat that resends its history every turn,
//! as chat clients do: with each message counted once (what the proxy does)
//! against every turn counted from scratch; then a megabyte of unbroken
//! letters or spaces, which the tokenizer would take as one piece. Then what bounding an audio
//! part's length costs (`proxy::media::audio_micros_at_most`: base64
//! decoding and the WAV or MP3 reading), and how far above the true length
//! the bound of an MP3 with random payloads (where fake frame headers
//! appear, as in real compressed audio) lands.
//!
//! `cargo run --release -p tollgate-bench --bin estimate-bench`
#![allow(clippy::print_stdout)]

use proxy::estimate::{input_tokens, Encoding, ImageTokens};
use proxy::providers::openai::ChatRequest;
use proxy::providers::parse_request;
use proxy::providers::ProviderKind;
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

/// `len` letters in a fixed pseudo-random order.
fn ascii_letters(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 7 & 0x1F) as u8 % 26))
        .collect()
}

/// Milliseconds `f` takes.
fn ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let images = ImageTokens::for_model(ProviderKind::OpenAi, "gpt-4o");
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
            black_box(input_tokens(&req, Encoding::O200k, images));
        });
        let again = ms(|| {
            black_box(input_tokens(&req, Encoding::O200k, images));
        });
        println!("{label:<34} {new:>14.3} {again:>14.3}");
    }
    // Unbroken runs: one tokenizer piece each, counted in bounded pieces
    // (whole, 100 KB of letters took 3.7 s, and time grew with the square).
    for (label, text) in [
        ("1 MB of one letter, no spaces", "a".repeat(1 << 20)),
        ("1 MB of letters, no spaces", ascii_letters(1 << 20)),
        ("1 MB of spaces", " ".repeat(1 << 20)),
        (
            "1 MB of ordinary text",
            PARAGRAPH.repeat((1 << 20) / PARAGRAPH.len()),
        ),
    ] {
        let req = request(&[text])?;
        let new = ms(|| {
            black_box(input_tokens(&req, Encoding::O200k, images));
        });
        let again = ms(|| {
            black_box(input_tokens(&req, Encoding::O200k, images));
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
            black_box(input_tokens(&req, Encoding::O200k, images));
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
            black_box(input_tokens(&req, Encoding::O200k, images));
        });
    }
    println!(
        "{turns}-turn chat, ~1 KB per message: {total:.1} ms counting in all (each message once), \
         {scratch:.1} ms counting every turn from scratch ({:.0}x); last turn's history {} KB",
        scratch / total.max(1e-9),
        history.iter().map(String::len).sum::<usize>() / 1024
    );
    audio()
}

/// `seconds` of MPEG-1 layer III at 128 kbit/s and 44.1 kHz, payloads random.
fn mp3(seconds: u64) -> (Vec<u8>, u64) {
    let header = [0xFF, 0xFB, 0x90, 0x00];
    let (frame_bytes, micros_per_frame) = (417, 1152.0 / 44_100.0 * 1e6);
    let frames = (seconds as f64 * 1e6 / micros_per_frame).ceil() as usize;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(frames * frame_bytes);
    for _ in 0..frames {
        out.extend_from_slice(&header);
        for _ in 4..frame_bytes {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push(state as u8);
        }
    }
    (out, (frames as f64 * micros_per_frame) as u64)
}

fn audio() -> anyhow::Result<()> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    println!();
    println!(
        "{:<34} {:>10} {:>14} {:>14}",
        "audio part", "base64 KB", "bound ms", "bound / true"
    );
    for seconds in [10, 60, 380] {
        let (bytes, true_micros) = mp3(seconds);
        let data = b64(&bytes);
        let mut bound = None;
        let took = ms(|| bound = proxy::media::audio_micros_at_most(black_box(&data), "mp3"));
        let bound = bound.ok_or_else(|| anyhow::anyhow!("no bound for the MP3"))?;
        println!(
            "{:<34} {:>10} {took:>14.3} {:>14.3}",
            format!("MP3 128 kbit/s, {seconds} s"),
            data.len() / 1024,
            bound as f64 / true_micros as f64
        );
    }
    // 16-bit mono at 24 kHz: 131 s is 6 MB, about what an 8 MB body holds.
    let wav = testkit::mock_providers::pcm_wav(24_000, 1, 16, 131);
    let data_len = wav.len() as u64 - 44;
    let data = b64(&wav);
    let mut bound = None;
    let took = ms(|| bound = proxy::media::audio_micros_at_most(black_box(&data), "wav"));
    let true_micros = data_len * 1_000_000 / 48_000;
    println!(
        "{:<34} {:>10} {took:>14.3} {:>14.3}",
        "WAV 24 kHz 16-bit, 6 MB",
        data.len() / 1024,
        bound.unwrap_or(0) as f64 / true_micros as f64
    );
    Ok(())
}
