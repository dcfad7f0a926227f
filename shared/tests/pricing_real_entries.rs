//! Prices from LiteLLM's real price file (`data/model_prices_and_context_window.json`).
//!
//! Why: the unit tests use made-up entries; these check that every entry of the file LiteLLM
//! actually ships is read, and that costs of well-known models match sums worked out by hand
//! from the file's own numbers.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use switchboard_shared::price::{PriceEntry, parse_price_file};
use switchboard_shared::pricing::{cost, media_cost};
use switchboard_shared::usage::{MediaUsage, Usage};

const PRICE_FILE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/model_prices_and_context_window.json"
));

fn entries() -> &'static BTreeMap<String, PriceEntry> {
    static ENTRIES: OnceLock<BTreeMap<String, PriceEntry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        parse_price_file(PRICE_FILE)
            .unwrap_or_else(|e| panic!("the price file does not parse: {e}"))
    })
}

fn entry(name: &str) -> &'static PriceEntry {
    entries()
        .get(name)
        .unwrap_or_else(|| panic!("no entry `{name}`"))
}

fn usage(prompt: u64, cached_read: u64, cache_creation: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_read_tokens: cached_read,
        cache_creation_tokens: cache_creation,
    }
}

fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() <= 1e-12 * expected.abs(),
        "cost {actual} != expected {expected}"
    );
}

#[test]
fn every_model_entry_parses() {
    let entries = entries();
    assert_eq!(entries.len(), 4_551);
    assert!(!entries.contains_key("sample_spec"));
    assert!(!entries.contains_key("fallback_generalizations"));
}

#[test]
fn every_entry_survives_a_snapshot_round_trip() {
    // What the control plane would do: read the file leniently, write the entry into a
    // snapshot (JSON, or YAML for a standalone file), and have the data plane read it back
    // strictly.
    for (name, entry) in entries() {
        let json = serde_json::to_string(entry).unwrap();
        let back: PriceEntry =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {e}\n{json}"));
        assert_eq!(&back, entry, "{name}");
        let yaml = serde_yaml_ng::to_string(entry).unwrap();
        let back: PriceEntry =
            serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{name}: {e}\n{yaml}"));
        assert_eq!(&back, entry, "{name} (YAML)");
    }
}

#[test]
fn gpt_4o_with_cached_reads() {
    // input 2.5e-06, cache read 1.25e-06, output 1e-05.
    // 10,000 prompt tokens of which 4,000 cached; 1,000 completion tokens.
    let expected = 6_000.0 * 2.5e-06 + 4_000.0 * 1.25e-06 + 1_000.0 * 1e-05; // 0.03
    assert_close(
        cost(&usage(10_000, 4_000, 0, 1_000), entry("gpt-4o")),
        expected,
    );
}

#[test]
fn claude_sonnet_4_5_with_cache_creation_and_reads() {
    // input 3e-06, cache read 3e-07, cache creation 3.75e-06 (the 1h price 6e-06 is unused),
    // output 1.5e-05. 50,000 prompt tokens: 30,000 read, 10,000 written, 10,000 plain.
    let price = entry("claude-sonnet-4-5");
    assert_eq!(price.cache_creation_input_token_cost_above_1hr, Some(6e-06));
    let expected = 10_000.0 * 3e-06 + 30_000.0 * 3e-07 + 10_000.0 * 3.75e-06 + 2_000.0 * 1.5e-05; // 0.1065
    assert_close(cost(&usage(50_000, 30_000, 10_000, 2_000), price), expected);
}

#[test]
fn gemini_2_5_pro_below_and_above_200k() {
    let price = entry("gemini/gemini-2.5-pro");
    assert_eq!(price.context_tiers.len(), 1);
    assert_eq!(price.context_tiers[0].threshold_tokens, 200_000);
    // Exactly 200,000 prompt tokens is not above 200k: base rates, input 1.25e-06,
    // cache read 1.25e-07, output 1e-05. 50,000 of the prompt cached.
    let below = 150_000.0 * 1.25e-06 + 50_000.0 * 1.25e-07 + 1_000.0 * 1e-05; // 0.20375
    assert_close(cost(&usage(200_000, 50_000, 0, 1_000), price), below);
    // 200,001 tokens: every token at the _above_200k_tokens rates, input 2.5e-06,
    // cache read 2.5e-07, output 1.5e-05.
    let above = 150_001.0 * 2.5e-06 + 50_000.0 * 2.5e-07 + 1_000.0 * 1.5e-05; // 0.4025025
    assert_close(cost(&usage(200_001, 50_000, 0, 1_000), price), above);
}

#[test]
fn qwen_flash_tiered_pricing_in_both_ranges() {
    let price = entry("dashscope/qwen-flash");
    assert_eq!(price.input_cost_per_token, None);
    assert_eq!(price.tiered_pricing.len(), 2);
    // range [0, 256000]: input 5e-08, output 4e-07; 256,000 tokens is still in it.
    let first = 256_000.0 * 5e-08 + 1_000.0 * 4e-07; // 0.0132
    assert_close(cost(&usage(256_000, 0, 0, 1_000), price), first);
    // range [256000, 1000000]: input 2.5e-07, output 2e-06. No cache-read rate in the range,
    // so the 6,000 cached tokens cost the range's input rate too.
    let second = 250_001.0 * 2.5e-07 + 6_000.0 * 2.5e-07 + 1_000.0 * 2e-06; // 0.06600025
    assert_close(cost(&usage(256_001, 6_000, 0, 1_000), price), second);
}

#[test]
fn qwen3_coder_plus_tiered_cache_reads() {
    // Range [32000, 128000]: input 1.8e-06, cache read 1.8e-07, output 9e-06.
    let price = entry("dashscope/qwen3-coder-plus");
    let expected = 60_000.0 * 1.8e-06 + 40_000.0 * 1.8e-07 + 500.0 * 9e-06; // 0.1197
    assert_close(cost(&usage(100_000, 40_000, 0, 500), price), expected);
}

#[test]
fn per_query_bands_are_not_token_prices() {
    // The search tools' `tiered_pricing` bands have no token range and are skipped.
    let price = entry("exa_ai/search");
    assert!(price.tiered_pricing.is_empty());
    assert_eq!(cost(&usage(1_000, 0, 0, 1_000), price), 0.0);
}

/// `model`'s entry with its per-size-and-quality entries gathered, as the snapshot build does.
fn with_variants(model: &str) -> PriceEntry {
    let mut entry = entry(model).clone();
    switchboard_shared::price::attach_image_variants(&mut entry, model, entries());
    entry
}

fn images(count: u64, size: Option<&str>, quality: Option<&str>) -> MediaUsage {
    MediaUsage::Images {
        count,
        size: size.map(str::to_owned),
        quality: quality.map(str::to_owned),
    }
}

#[test]
fn gpt_image_1_is_priced_per_image_by_size_and_quality() {
    // The file prices gpt-image-1 images in entries of their own:
    // `high/1024-x-1024/gpt-image-1` has `input_cost_per_image: 0.167`, ...
    let price = with_variants("gpt-image-1");
    assert_eq!(price.media.image_variants.len(), 9);
    assert_close(price.media.image_variants["high/1024-x-1024"], 0.167);
    let at = |n, size, quality| media_cost(&images(n, size, quality), &price).unwrap();
    assert_close(at(1, Some("1024x1024"), Some("high")), 0.167);
    assert_close(at(3, Some("1536x1024"), Some("low")), 3.0 * 0.016);
    assert_close(at(2, Some("1024x1536"), Some("medium")), 2.0 * 0.063);
    // No quality (or `auto`): LiteLLM's order — `<size>/<model>` (none for gpt-image-1), then
    // `medium/<size>/<model>`. No size: OpenAI's default, 1024x1024.
    assert_close(at(1, None, None), 0.042);
    assert_close(at(1, Some("auto"), Some("auto")), 0.042);
}

#[test]
fn gpt_image_1_5_has_size_only_entries_too() {
    let price = with_variants("gpt-image-1.5");
    let at = |quality| media_cost(&images(1, Some("1024x1536"), quality), &price).unwrap();
    assert_close(at(Some("high")), 0.2);
    // `1024-x-1536/gpt-image-1.5` is stated at 0.013: a request without quality gets it.
    assert_close(at(None), 0.013);
}

#[test]
fn dall_e_3_is_priced_as_the_file_states_it() {
    // This file has no `dall-e-3` entry of OpenAI's own any more; Azure's is per pixel
    // (`azure/hd/1024-x-1792/dall-e-3`: `input_cost_per_pixel: 7.19343e-08`).
    assert!(!entries().contains_key("dall-e-3"));
    let azure = entry("azure/hd/1024-x-1792/dall-e-3");
    let cost = media_cost(&images(2, Some("1024x1792"), None), azure).unwrap();
    assert_close(cost, 2.0 * 7.19343e-08 * 1024.0 * 1792.0);
    // AI/ML API's `aiml/dall-e-3` states a flat `output_cost_per_image: 0.052`.
    let cost = media_cost(&images(2, None, None), entry("aiml/dall-e-3")).unwrap();
    assert_close(cost, 0.104);
}

#[test]
fn whisper_is_priced_per_second_and_tts_per_character() {
    // whisper-1 states `input_cost_per_second` and `output_cost_per_second`, both 0.0001:
    // one of them applies (LiteLLM's cost_per_second), not their sum.
    let whisper = entry("whisper-1");
    let cost = media_cost(&MediaUsage::AudioSeconds { seconds: 90.0 }, whisper).unwrap();
    assert_close(cost, 0.009);
    // gpt-4o-transcribe states `input_cost_per_second: 0.0001` beside its token prices.
    let cost = media_cost(
        &MediaUsage::AudioSeconds { seconds: 10.0 },
        entry("gpt-4o-transcribe"),
    )
    .unwrap();
    assert_close(cost, 0.001);
    let tts = MediaUsage::Characters { count: 1000 };
    assert_close(media_cost(&tts, entry("tts-1")).unwrap(), 0.015);
    assert_close(media_cost(&tts, entry("tts-1-hd")).unwrap(), 0.03);
    // gpt-4o-mini-tts has no per-character price: it is priced by tokens instead.
    assert_eq!(media_cost(&tts, entry("gpt-4o-mini-tts")), None);
}

#[test]
fn media_rates_survive_a_snapshot_round_trip() {
    let price = with_variants("gpt-image-1");
    let json = serde_json::to_value(&price).unwrap();
    assert_eq!(json["image_variants"]["low/1024-x-1024"], 0.011);
    let back: PriceEntry = serde_json::from_value(json).unwrap();
    assert_eq!(back, price);
    let whisper = entry("whisper-1");
    let back: PriceEntry = serde_json::from_value(serde_json::to_value(whisper).unwrap()).unwrap();
    assert_eq!(&back, whisper);
    assert_eq!(back.media.input_cost_per_second, Some(0.0001));
}
