//! The bundled price table and exact costs for known models.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use std::str::FromStr;
use tollgate_proxy::pricing::{cost, ModelPrice, PriceTable};
use tollgate_proxy::providers::Usage;

fn table() -> PriceTable {
    PriceTable::bundled().unwrap()
}

#[test]
fn bundled_table_loads_chat_models() {
    let t = table();
    assert!(t.len() > 1000, "{} models", t.len());
    let gpt4o = t.get("gpt-4o").unwrap();
    assert_eq!(gpt4o.input_cost_per_token, dec!(0.0000025));
    assert_eq!(gpt4o.output_cost_per_token, dec!(0.00001));
    assert_eq!(gpt4o.cache_read_input_token_cost, Some(dec!(0.00000125)));
    assert_eq!(gpt4o.max_input_tokens, Some(128_000));
    assert_eq!(gpt4o.provider, "openai");
}

#[test]
fn gpt_4o_cost() {
    let price = table().lookup("openai", "gpt-4o").unwrap().clone();
    let usage = Usage {
        input_tokens: 1000,
        cached_input_tokens: 200,
        output_tokens: 500,
        reasoning_tokens: 100,
        ..Usage::default()
    };
    // 800 × 0.0000025 + 200 × 0.00000125 + 500 × 0.00001 (reasoning inside output)
    assert_eq!(
        cost(&price, &usage),
        dec!(0.002) + dec!(0.00025) + dec!(0.005)
    );
    assert_eq!(cost(&price, &usage), dec!(0.00725));
}

/// xAI caches prompts by itself and bills the cached part at a quarter of
/// the input price; LiteLLM's table has no cached price for grok-3 and
/// grok-4, which `scripts/gen_prices.py` fills in, so the cached part is
/// not charged at the full input price.
#[test]
fn grok_cached_input_is_a_quarter_of_the_input_price() {
    let t = table();
    // xAI's answer in OpenAI's shape: 10,120 in (128 cached), 1,499 out.
    let usage = Usage {
        input_tokens: 10_120,
        cached_input_tokens: 128,
        output_tokens: 1_499,
        ..Usage::default()
    };
    for model in ["grok-4", "grok-4-0709", "grok-3"] {
        let price = t.lookup("xai", model).unwrap();
        assert_eq!(
            price.cache_read_input_token_cost,
            Some(dec!(0.00000075)),
            "{model}"
        );
        // 9,992 × $3/M + 128 × $0.75/M + 1,499 × $15/M
        assert_eq!(
            cost(price, &usage),
            dec!(0.029976) + dec!(0.000096) + dec!(0.022485),
            "{model}"
        );
    }
    let mini = t.lookup("xai", "grok-3-mini").unwrap();
    assert_eq!(mini.cache_read_input_token_cost, Some(dec!(0.000000075)));
}

#[test]
fn claude_3_5_sonnet_cost_with_cache() {
    let t = table();
    let price = t.lookup("anthropic", "claude-3-5-sonnet-20240620").unwrap();
    // The recorded answer: 16 in, 24 out.
    assert_eq!(
        cost(
            price,
            &Usage {
                input_tokens: 16,
                output_tokens: 24,
                ..Usage::default()
            }
        ),
        dec!(0.000408)
    );
    // 20 fresh + 1000 read + 50 written, 42 out:
    // 20×0.000003 + 1000×0.0000003 + 50×0.00000375 + 42×0.000015
    let usage = Usage {
        input_tokens: 1070,
        cached_input_tokens: 1000,
        cache_creation_input_tokens: 50,
        output_tokens: 42,
        ..Usage::default()
    };
    assert_eq!(
        cost(price, &usage),
        dec!(0.00006) + dec!(0.0003) + dec!(0.0001875) + dec!(0.00063)
    );
}

#[test]
fn gemini_2_0_flash_cost_uses_the_ai_studio_entry() {
    let t = table();
    let price = t.lookup("gemini", "gemini-2.0-flash").unwrap();
    assert_eq!(
        price.provider, "gemini",
        "gemini/… is tried before the bare (Vertex AI) id"
    );
    // The recorded answer: 7 in, 22 out → 7×0.0000001 + 22×0.0000004
    assert_eq!(
        cost(
            price,
            &Usage {
                input_tokens: 7,
                output_tokens: 22,
                ..Usage::default()
            }
        ),
        dec!(0.0000095)
    );
}

#[test]
fn gemini_reasoning_price_applies_when_given() {
    let t = table();
    let price = t.lookup("gemini", "gemini-2.5-flash").unwrap();
    let reasoning = price.output_cost_per_reasoning_token.unwrap();
    let usage = Usage {
        input_tokens: 10,
        output_tokens: 40,
        reasoning_tokens: 30,
        ..Usage::default()
    };
    let expected = Decimal::from(10) * price.input_cost_per_token
        + Decimal::from(10) * price.output_cost_per_token
        + Decimal::from(30) * reasoning;
    assert_eq!(cost(price, &usage), expected);
}

/// Models that always reason are flagged so, whatever LiteLLM's table
/// says of each name (`scripts/gen_prices.py`): their reasoning counts
/// against the output cap and is charged when a stream is cut before its
/// usage. GPT-5's chat models do not reason.
#[test]
fn models_that_reason_by_default_are_flagged() {
    let t = table();
    for (provider, model) in [
        ("xai", "grok-4"),
        ("xai", "grok-4-0709"),
        ("xai", "grok-4-fast-reasoning"),
        ("openai", "o1-mini"),
        ("openai", "o3"),
        ("openai", "gpt-5"),
        ("gemini", "gemini-2.5-flash"),
        ("gemini", "gemini-2.5-pro-preview-06-05"),
    ] {
        assert!(
            t.lookup(provider, model).unwrap().supports_reasoning,
            "{provider} {model}"
        );
    }
    for (provider, model) in [
        ("openai", "gpt-4o"),
        ("openai", "gpt-5-chat-latest"),
        ("xai", "grok-4-fast-non-reasoning"),
        ("anthropic", "claude-3-5-sonnet-20240620"),
    ] {
        assert!(
            !t.lookup(provider, model).unwrap().supports_reasoning,
            "{provider} {model}"
        );
    }
}

#[test]
fn lookups_fall_back_sensibly() {
    let t = table();
    assert_eq!(
        t.lookup("xai", "grok-3").map(|p| p.provider.as_str()),
        Some("xai")
    );
    // An unknown dated snapshot falls back to the undated model.
    assert_eq!(t.lookup("openai", "gpt-4o-2099-01-01"), t.get("gpt-4o"));
    let sonnet = t.lookup("anthropic", "claude-sonnet-4-5-20991231");
    assert!(sonnet.is_some());
    assert_eq!(sonnet, t.get("claude-sonnet-4-5"));
    assert!(t.lookup("openai", "gpt-unknown").is_none());
    assert!(t.lookup("mycorp", "secret-model").is_none());
}

#[test]
fn overrides_replace_and_add() {
    let mine = ModelPrice {
        provider: "custom".to_owned(),
        ..ModelPrice::per_token(dec!(0.000001), dec!(0.000002))
    };
    let t = table().with_overrides([
        ("gpt-4o".to_owned(), mine.clone()),
        ("together/meta-llama/Llama-3-70b".to_owned(), mine.clone()),
    ]);
    assert_eq!(t.lookup("openai", "gpt-4o"), Some(&mine));
    assert_eq!(t.lookup("together", "meta-llama/Llama-3-70b"), Some(&mine));
    let from_json = PriceTable::from_json(
        r#"{"models":{"m":{"input_cost_per_token":"0.0000025","output_cost_per_token":"0.00001"}}}"#,
    )
    .unwrap();
    assert_eq!(
        from_json.get("m").unwrap().input_cost_per_token,
        dec!(0.0000025)
    );
}

/// Every price in the shipped file is a plain decimal string with no binary
/// float artefacts (`0.0000025`, never `2.5e-06` or `0.0000024999999999999998`).
#[test]
fn shipped_file_has_no_float_artefacts() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prices/model_prices.json"
    ))
    .unwrap();
    assert!(text.contains(r#""gpt-4o": {"provider":"openai","input_cost_per_token":"0.0000025","output_cost_per_token":"0.00001""#));
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for (model, entry) in file["models"].as_object().unwrap() {
        // Nested prices: long-context and service tiers, search fees by size.
        let long = entry["long_context"].as_array().into_iter().flatten();
        let served = entry["service_tiers"]
            .as_object()
            .into_iter()
            .flat_map(|t| t.values());
        let nested = long
            .chain(served)
            .chain(entry.get("web_search_cost_per_call"));
        let fields = entry
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, value)| !value.is_object())
            .chain(nested.flat_map(|t| t.as_object().unwrap()));
        for (field, value) in fields {
            let search_fee = ["low", "medium", "high"].contains(&field.as_str());
            if !field.contains("cost") && !search_fee {
                continue;
            }
            let s = value
                .as_str()
                .unwrap_or_else(|| panic!("{model}.{field} is not a string: {value}"));
            assert!(
                s.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
                "{model}.{field} = {s}"
            );
            let d = Decimal::from_str(s).unwrap();
            assert_eq!(
                d.normalize().to_string(),
                s,
                "{model}.{field} is not in canonical form"
            );
            // A price read through f64 and printed in full shows 16-17
            // significant digits (2.4999999999999998e-06); published prices
            // have a handful.
            let significant = s.trim_start_matches(['0', '.']).replace('.', "");
            assert!(
                significant.len() <= 8,
                "{model}.{field} = {s} looks like a float artefact"
            );
            checked += 1;
        }
    }
    assert!(checked > 2000, "checked {checked} prices");
}

/// LiteLLM's long-context prices (`…_above_200k_tokens`) reach the table
/// as tiers, dearer than the base prices, for the models whose providers
/// bill long prompts more: Gemini 2.5 Pro and 1.5, Claude Sonnet 4 and 4.5,
/// Grok 4.
#[test]
fn long_context_prices_are_shipped_as_dearer_tiers() {
    let t = table();
    for (provider, model, above) in [
        ("gemini", "gemini-2.5-pro", 200_000),
        ("gemini", "gemini-1.5-pro", 128_000),
        ("anthropic", "claude-sonnet-4-5-20250929", 200_000),
        ("anthropic", "claude-sonnet-4-20250514", 200_000),
        ("xai", "grok-4-0709", 128_000),
    ] {
        let price = t.lookup(provider, model).unwrap();
        let tiers: Vec<_> = price
            .long_context
            .iter()
            .map(|t| t.above_input_tokens)
            .collect();
        assert_eq!(tiers, [above], "{model}");
    }
    let mut tiered = 0;
    for (name, price) in t.models() {
        for tier in &price.long_context {
            assert!(
                tier.rates.input_cost_per_token >= price.input_cost_per_token
                    && tier.rates.output_cost_per_token >= price.output_cost_per_token,
                "{name}: {tier:?}"
            );
            tiered += 1;
        }
    }
    assert!(tiered > 30, "{tiered} tiers");
}

/// LiteLLM gives these prices to some names of a model only; the table
/// shares them within a family (same name but for a date or `-latest`,
/// same base prices), so the name a client happens to use, which is the
/// first the lookup finds, prices the call the same.
#[test]
fn dated_and_undated_names_of_a_model_carry_the_same_extra_prices() {
    let t = table();
    let price = |provider, model| t.lookup(provider, model).unwrap();
    assert_eq!(
        price("xai", "grok-4").long_context,
        price("xai", "grok-4-0709").long_context
    );
    assert!(!price("xai", "grok-4").long_context.is_empty());
    assert_eq!(
        price("openai", "gpt-4o-search-preview-2025-03-11").web_search_cost_per_call,
        price("openai", "gpt-4o-search-preview").web_search_cost_per_call
    );
    assert!(price("openai", "gpt-4o-search-preview-2025-03-11")
        .web_search_cost_per_call
        .is_some());
    for dated in ["gpt-4o-2024-08-06", "o3-2025-04-16", "gpt-4.1-2025-04-14"] {
        let undated = dated.split("-20").next().unwrap();
        assert_eq!(
            price("openai", dated).service_tiers,
            price("openai", undated).service_tiers,
            "{dated}"
        );
        assert!(
            price("openai", dated).service_tiers.priority.is_some(),
            "{dated}"
        );
    }
    // A dated model at other prices keeps its own (GPT-4o's first release).
    assert_ne!(
        price("openai", "gpt-4o-2024-05-13").service_tiers,
        price("openai", "gpt-4o").service_tiers
    );
}

/// OpenAI's `priority` tier costs more than the base prices and `flex`
/// less; both reach the table for the models LiteLLM prices them for.
#[test]
fn openai_service_tiers_are_shipped() {
    let t = table();
    let gpt_5 = t.lookup("openai", "gpt-5").unwrap();
    assert!(gpt_5.service_tiers.priority.is_some() && gpt_5.service_tiers.flex.is_some());
    assert!(t
        .lookup("openai", "gpt-4o")
        .unwrap()
        .service_tiers
        .priority
        .is_some());
    let (mut priority, mut flex) = (0, 0);
    for (name, price) in t.models() {
        if let Some(p) = &price.service_tiers.priority {
            assert!(
                p.input_cost_per_token > price.input_cost_per_token
                    && p.output_cost_per_token > price.output_cost_per_token,
                "{name}: {p:?}"
            );
            priority += 1;
        }
        if let Some(f) = &price.service_tiers.flex {
            assert!(
                f.input_cost_per_token < price.input_cost_per_token
                    && f.output_cost_per_token < price.output_cost_per_token,
                "{name}: {f:?}"
            );
            flex += 1;
        }
    }
    assert!(
        priority >= 10 && flex >= 5,
        "{priority} priority, {flex} flex"
    );
}

/// Anthropic bills a 1-hour cache write at twice the base input price, for
/// every model. LiteLLM's table gave some Haiku and Opus models Sonnet's
/// figure (0.000006, 12x too much for Claude 3 Haiku, 5x too little for
/// Opus); `scripts/gen_prices.py` drops such values so the rule applies.
#[test]
fn anthropic_one_hour_cache_writes_cost_twice_the_input_price() {
    let t = table();
    let usage = Usage {
        input_tokens: 1000,
        cache_creation_input_tokens: 1000,
        cache_creation_1h_input_tokens: 1000,
        ..Usage::default()
    };
    let mut checked = 0;
    for (name, price) in t.models().filter(|(_, p)| p.provider == "anthropic") {
        assert_eq!(
            cost(price, &usage),
            Decimal::from(2000) * price.input_cost_per_token,
            "{name}"
        );
        checked += 1;
    }
    assert!(checked > 10, "{checked} Anthropic models");
    // Claude 3 Haiku, whose table entry was wrong: 1000 × 2 × 0.00000025.
    let haiku = t.lookup("anthropic", "claude-3-haiku-20240307").unwrap();
    assert_eq!(cost(haiku, &usage), dec!(0.0005));
}
