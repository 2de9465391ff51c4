//! The stream translator's output and usage do not depend on how the
//! upstream bytes were chunked: whole, byte by byte, or split at random.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{fixture, run_stream};
use proptest::prelude::*;
use tollgate_proxy::providers::ProviderKind;

const CASES: [(ProviderKind, &str); 3] = [
    (ProviderKind::OpenAi, "openai_chat_stream.sse"),
    (
        ProviderKind::Anthropic,
        "anthropic_messages_stream_basic.sse",
    ),
    (ProviderKind::Gemini, "gemini_stream.sse"),
];

/// Splits `body` at the given cut points (any values; reduced modulo length).
fn split_at<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(&body[start..p]);
        start = p;
    }
    pieces.push(&body[start..]);
    pieces
}

#[test]
fn byte_by_byte_equals_whole() {
    for (kind, name) in CASES {
        let body = fixture(name);
        for wants_usage in [false, true] {
            let whole = run_stream(kind, wants_usage, &[&body]);
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(
                run_stream(kind, wants_usage, &bytes),
                whole,
                "{name} usage={wants_usage}"
            );
        }
    }
}

#[test]
fn lf_fixtures_reframed_with_crlf_translate_the_same() {
    for (kind, name) in CASES {
        let body = fixture(name);
        let text = String::from_utf8(body.clone())
            .unwrap()
            .replace("\r\n", "\n");
        let crlf = text.replace('\n', "\r\n");
        assert_eq!(
            run_stream(kind, true, &[crlf.as_bytes()]),
            run_stream(kind, true, &[&body]),
            "{name}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_splits_equal_whole(case in 0usize..3, wants_usage: bool, cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        let (kind, name) = CASES[case];
        let body = fixture(name);
        let whole = run_stream(kind, wants_usage, &[&body]);
        let pieces = split_at(&body, &cuts);
        prop_assert_eq!(run_stream(kind, wants_usage, &pieces), whole);
    }
}
