//! Cost of a request: token usage times a price entry, long-context tiers included.
//!
//! Why here: the data plane prices every request and the control plane re-prices or audits
//! spend; both must get the same number, so the arithmetic lives once, next to the types.
//!
//! [`cost`] follows LiteLLM's cost calculator (read in `litellm_core_utils/llm_cost_calc/utils.py`
//! and `tiered_pricing.py` of `BerriAI/litellm`), with the deviations marked below:
//!
//! 1. **Rates.** One set of four rates (input, output, cache read, cache creation) applies to the
//!    whole request; it is chosen by `usage.prompt_tokens` (the whole prompt, cached parts
//!    included), as in 2 and 3.
//! 2. **Context tiers** (`*_above_<N>k_tokens`): the tier with the highest threshold that the
//!    prompt *strictly* exceeds applies; a prompt of exactly 200,000 tokens is still billed at
//!    the base rates, 200,001 at the `_above_200k_tokens` rates. LiteLLM compares
//!    `prompt_tokens > threshold` the same way and uses the tier's rate for every token kind,
//!    each rate the tier lacks falling back to the base one. (LiteLLM makes one exception, by
//!    call provider: for `xai` it compares with `>=`. Not followed: the entry alone decides,
//!    and the difference is one token at the boundary. LiteLLM also only notices a threshold
//!    that has an `input_cost_per_token_above_*` field; here any of the four tier fields does.)
//! 3. **`tiered_pricing` ranges**: the first range, by lower bound, whose upper bound is at
//!    least the prompt length applies, so `[0, 32000]` covers a prompt of 32,000 tokens and
//!    `[32000, 128000]` starts at 32,001. This is LiteLLM's `low < prompt <= high` (and
//!    Alibaba's published "0 < tokens ≤ 32K") on the contiguous ranges of the price file. A
//!    prompt longer than every range gets the last range, as in LiteLLM. Deviation: an empty
//!    prompt gets the first range, where LiteLLM falls back to the base rates (which the
//!    Dashscope entries lack, making such a request's output free). Within the chosen range, a
//!    missing input or output rate falls back to the entry's base rate, and a missing cache
//!    rate to the range's input rate (LiteLLM's rule: a request never mixes ranges). When an
//!    entry has both styles, `tiered_pricing` wins, as in LiteLLM; the price file has no entry
//!    with both.
//! 4. **Cost** = uncached prompt tokens × input + cached-read tokens × cache read + cache-creation
//!    tokens × cache creation + completion tokens × output. A missing input or output rate
//!    counts as 0. A missing cache-read or cache-creation rate falls back to the input rate
//!    (deviation: LiteLLM's generic path charges 0 for cached reads without a rate; billing
//!    them as plain input never under-charges). The 1-hour cache-write price is not used:
//!    [`Usage`] does not split cache writes by lifetime.
//! 5. The result is never negative and never NaN: it is clamped at 0, which only matters for
//!    hand-built entries, since the parsers reject negative rates.

use crate::price::{PriceEntry, RangeTier, TierRates, pixels};
use crate::usage::{MediaUsage, Usage};

/// Cost in USD of `usage` under `price` (see the module documentation for the rules).
pub fn cost(usage: &Usage, price: &PriceEntry) -> f64 {
    let rates = Rates::for_prompt(price, usage.prompt_tokens);
    let total = usage.uncached_prompt_tokens() as f64 * rates.input
        + usage.cached_read_tokens as f64 * rates.cache_read
        + usage.cache_creation_tokens as f64 * rates.cache_creation
        + usage.completion_tokens as f64 * rates.output;
    // `max` also turns a NaN into 0.
    total.max(0.0)
}

/// Cost in USD of an image or audio request's `media` under `price`, as LiteLLM's cost
/// calculator prices it from the same fields; `None` when the entry has no per-unit price for
/// it (the request is then priced by its tokens alone).
///
/// - **Images**: `count` × one image's price: the entry's `image_variants` for
///   `<quality>/<size>`, else `<size>`, else `medium/<size>` (LiteLLM's order and its default
///   quality), where the size is written `1024-x-1024` (a client's `1024x1024` is converted;
///   no size means `1024-x-1024`, OpenAI's default); else the entry's own
///   `input_cost_per_image` / `output_cost_per_image`, or per-pixel price × the size's pixels.
/// - **Seconds**: `output_cost_per_second`, else `input_cost_per_second`, × the seconds — one
///   rate, not both (LiteLLM's `cost_per_second`; `whisper-1` states both at the same value).
/// - **Characters**: `input_cost_per_character` × the characters (`output_cost_per_character`
///   when only that is stated).
pub fn media_cost(media: &MediaUsage, price: &PriceEntry) -> Option<f64> {
    let rates = &price.media;
    let total = match media {
        MediaUsage::Images {
            count,
            size,
            quality,
        } => image_price(price, size.as_deref(), quality.as_deref())? * *count as f64,
        MediaUsage::AudioSeconds { seconds } => {
            rates
                .output_cost_per_second
                .or(rates.input_cost_per_second)?
                * seconds
        }
        MediaUsage::Characters { count } => {
            rates
                .input_cost_per_character
                .or(rates.output_cost_per_character)?
                * *count as f64
        }
    };
    Some(total.max(0.0))
}

/// One image's price at `size` and `quality` (see [`media_cost`]).
fn image_price(price: &PriceEntry, size: Option<&str>, quality: Option<&str>) -> Option<f64> {
    let size = match size {
        Some(s) if s.contains("-x-") => s.to_owned(),
        Some(s) if s.contains('x') && s != "auto" => s.replacen('x', "-x-", 1),
        _ => "1024-x-1024".to_owned(),
    };
    let variants = &price.media.image_variants;
    let quality = quality.filter(|q| *q != "auto");
    let keys = [
        quality.map(|q| format!("{q}/{size}")),
        Some(size.clone()),
        Some(format!("medium/{size}")),
    ];
    keys.iter()
        .flatten()
        .find_map(|key| variants.get(key).copied())
        .or_else(|| price.media.per_image(pixels(&size)))
}

/// The per-token rates that apply to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rates {
    input: f64,
    output: f64,
    cache_read: f64,
    cache_creation: f64,
}

impl Rates {
    fn for_prompt(price: &PriceEntry, prompt_tokens: u64) -> Rates {
        if let Some(range) = range_tier(&price.tiered_pricing, prompt_tokens) {
            let r = &range.rates;
            let input = r
                .input_cost_per_token
                .or(price.input_cost_per_token)
                .unwrap_or(0.0);
            return Rates {
                input,
                output: r
                    .output_cost_per_token
                    .or(price.output_cost_per_token)
                    .unwrap_or(0.0),
                cache_read: r.cache_read_input_token_cost.unwrap_or(input),
                cache_creation: r.cache_creation_input_token_cost.unwrap_or(input),
            };
        }
        let tier = price
            .context_tiers
            .iter()
            .filter(|t| prompt_tokens > t.threshold_tokens)
            .max_by_key(|t| t.threshold_tokens)
            .map(|t| t.rates)
            .unwrap_or_default();
        let pick = |over: Option<f64>, base: Option<f64>| over.or(base);
        let TierRates {
            input_cost_per_token: input,
            output_cost_per_token: output,
            cache_read_input_token_cost: cache_read,
            cache_creation_input_token_cost: cache_creation,
        } = tier;
        let input = pick(input, price.input_cost_per_token).unwrap_or(0.0);
        Rates {
            input,
            output: pick(output, price.output_cost_per_token).unwrap_or(0.0),
            cache_read: pick(cache_read, price.cache_read_input_token_cost).unwrap_or(input),
            cache_creation: pick(cache_creation, price.cache_creation_input_token_cost)
                .unwrap_or(input),
        }
    }
}

/// The `tiered_pricing` range that applies to a prompt of `prompt_tokens` (rule 3).
fn range_tier(tiers: &[RangeTier], prompt_tokens: u64) -> Option<&RangeTier> {
    let covering = tiers
        .iter()
        .filter(|t| t.range[1] >= prompt_tokens)
        .min_by_key(|t| t.range[0]);
    covering.or_else(|| tiers.iter().max_by_key(|t| t.range[0]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::price::{ContextTier, arb};

    fn assert_close(actual: f64, expected: f64) {
        let tolerance = 1e-12 * expected.abs().max(f64::MIN_POSITIVE);
        assert!(
            (actual - expected).abs() <= tolerance,
            "cost {actual} != expected {expected}"
        );
    }

    fn usage(prompt: u64, cached_read: u64, cache_creation: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_read_tokens: cached_read,
            cache_creation_tokens: cache_creation,
        }
    }

    fn flat(input: f64, output: f64) -> PriceEntry {
        PriceEntry {
            input_cost_per_token: Some(input),
            output_cost_per_token: Some(output),
            ..PriceEntry::default()
        }
    }

    fn rates(input: f64, output: f64, cache_read: Option<f64>) -> TierRates {
        TierRates {
            input_cost_per_token: Some(input),
            output_cost_per_token: Some(output),
            cache_read_input_token_cost: cache_read,
            cache_creation_input_token_cost: None,
        }
    }

    #[test]
    fn plain_input_and_output() {
        // 1000 × 1e-6 + 500 × 2e-6 = 0.001 + 0.001
        assert_close(cost(&usage(1000, 0, 0, 500), &flat(1e-6, 2e-6)), 0.002);
    }

    #[test]
    fn cached_reads_use_the_cache_read_rate() {
        let price = PriceEntry {
            cache_read_input_token_cost: Some(1.25e-6),
            ..flat(2.5e-6, 1e-5)
        };
        // 600 × 2.5e-6 + 400 × 1.25e-6 + 100 × 1e-5 = 0.0015 + 0.0005 + 0.001
        assert_close(cost(&usage(1000, 400, 0, 100), &price), 0.003);
    }

    #[test]
    fn cache_creation_uses_its_rate_and_the_1h_rate_is_unused() {
        let price = PriceEntry {
            cache_read_input_token_cost: Some(3e-7),
            cache_creation_input_token_cost: Some(3.75e-6),
            cache_creation_input_token_cost_above_1hr: Some(6e-6),
            ..flat(3e-6, 1.5e-5)
        };
        // 500 × 3e-6 + 200 × 3e-7 + 300 × 3.75e-6 + 10 × 1.5e-5
        //   = 0.0015 + 0.00006 + 0.001125 + 0.00015
        assert_close(cost(&usage(1000, 200, 300, 10), &price), 0.002835);
    }

    #[test]
    fn missing_rates_fall_back() {
        // No cache rates: cached parts at the input rate, 1000 × 2e-6 + 10 × 4e-6.
        assert_close(cost(&usage(1000, 300, 200, 10), &flat(2e-6, 4e-6)), 0.00204);
        // No output rate: completion is free, 1000 × 2e-6.
        let input_only = PriceEntry {
            input_cost_per_token: Some(2e-6),
            ..PriceEntry::default()
        };
        assert_close(cost(&usage(1000, 0, 0, 10), &input_only), 0.002);
        // No input rate: the cache rates have nothing to fall back to but 0; 50 × 1e-5.
        let output_only = PriceEntry {
            output_cost_per_token: Some(1e-5),
            ..PriceEntry::default()
        };
        assert_close(cost(&usage(1000, 300, 200, 50), &output_only), 0.0005);
        assert_eq!(cost(&usage(1000, 0, 0, 10), &PriceEntry::default()), 0.0);
    }

    fn long_context() -> PriceEntry {
        PriceEntry {
            cache_read_input_token_cost: Some(1e-7),
            context_tiers: vec![ContextTier {
                threshold_tokens: 200_000,
                // No cache-read rate of its own.
                rates: rates(2e-6, 4e-6, None),
            }],
            ..flat(1e-6, 2e-6)
        }
    }

    #[test]
    fn a_prompt_exactly_at_the_threshold_stays_at_base_rates() {
        // 200000 × 1e-6 + 1000 × 2e-6 = 0.2 + 0.002
        assert_close(cost(&usage(200_000, 0, 0, 1000), &long_context()), 0.202);
    }

    #[test]
    fn a_prompt_just_above_the_threshold_moves_the_whole_request() {
        // 200001 × 2e-6 + 1000 × 4e-6 = 0.400002 + 0.004
        assert_close(cost(&usage(200_001, 0, 0, 1000), &long_context()), 0.404002);
        // The tier has no cache-read rate: the base one stands.
        // 100000 × 2e-6 + 100001 × 1e-7 + 1000 × 4e-6 = 0.2 + 0.0100001 + 0.004
        assert_close(
            cost(&usage(200_001, 100_001, 0, 1000), &long_context()),
            0.2140001,
        );
    }

    #[test]
    fn the_highest_exceeded_threshold_wins_and_cache_rates_fall_back_to_its_input() {
        let price = PriceEntry {
            context_tiers: vec![
                // Out of order on purpose: selection does not rely on sorting.
                ContextTier {
                    threshold_tokens: 256_000,
                    rates: rates(4e-6, 8e-6, None),
                },
                ContextTier {
                    threshold_tokens: 128_000,
                    rates: TierRates {
                        output_cost_per_token: Some(3e-6),
                        ..TierRates::default()
                    },
                },
            ],
            ..flat(1e-6, 2e-6)
        };
        // 128k < 200000 ≤ 256k: base input, the 128k tier's output.
        // 200000 × 1e-6 + 100 × 3e-6 = 0.2 + 0.0003
        assert_close(cost(&usage(200_000, 0, 0, 100), &price), 0.2003);
        // Above 256k, no cache rates anywhere: cached reads at that tier's input rate.
        // (300000 − 100000) × 4e-6 + 100000 × 4e-6 + 100 × 8e-6 = 0.8 + 0.4 + 0.0008
        assert_close(cost(&usage(300_000, 100_000, 0, 100), &price), 1.2008);
    }

    fn ranged() -> PriceEntry {
        let tier = |low, high, rates| RangeTier {
            range: [low, high],
            rates,
        };
        PriceEntry {
            // Base rates and a context tier, both overridden by `tiered_pricing`.
            context_tiers: vec![ContextTier {
                threshold_tokens: 1_000,
                rates: rates(9e-6, 9e-6, None),
            }],
            tiered_pricing: vec![
                tier(32_000, 128_000, rates(2e-6, 6e-6, None)),
                tier(0, 32_000, rates(1e-6, 5e-6, Some(1e-7))),
            ],
            ..flat(7e-6, 7e-6)
        }
    }

    #[test]
    fn tiered_pricing_ranges_include_their_upper_bound() {
        // 32000 × 1e-6 + 100 × 5e-6 = 0.032 + 0.0005
        assert_close(cost(&usage(32_000, 0, 0, 100), &ranged()), 0.0325);
        // 32001 × 2e-6 + 100 × 6e-6 = 0.064002 + 0.0006
        assert_close(cost(&usage(32_001, 0, 0, 100), &ranged()), 0.064602);
    }

    #[test]
    fn tiered_pricing_edges_and_fallbacks() {
        // Empty prompt: the first range, 100 × 5e-6.
        assert_close(cost(&usage(0, 0, 0, 100), &ranged()), 0.0005);
        // Beyond every range: the last one, 200000 × 2e-6 + 100 × 6e-6 = 0.4 + 0.0006.
        assert_close(cost(&usage(200_000, 0, 0, 100), &ranged()), 0.4006);
        // The first range has a cache-read rate: 30000 × 1e-6 + 2000 × 1e-7 = 0.03 + 0.0002.
        assert_close(cost(&usage(32_000, 2_000, 0, 0), &ranged()), 0.0302);
        // The second has none: cache reads and writes at its input rate, 64000 × 2e-6.
        assert_close(cost(&usage(64_000, 2_000, 1_000, 0), &ranged()), 0.128);
        // A range without an output rate takes the entry's base one: 100 × 1e-6 + 10 × 7e-6.
        let mut price = ranged();
        price.tiered_pricing[1].rates.output_cost_per_token = None;
        assert_close(cost(&usage(100, 0, 0, 10), &price), 0.00017);
    }

    #[test]
    fn never_negative_nor_nan() {
        assert_eq!(cost(&usage(1000, 0, 0, 10), &flat(-1e-6, -1e-6)), 0.0);
        assert_eq!(cost(&usage(1000, 0, 0, 10), &flat(f64::NAN, 1e-6)), 0.0);
    }

    /// A well-formed usage: the cache parts are parts of the prompt.
    fn arb_usage(max: u64) -> impl Strategy<Value = Usage> {
        (0..=max, 0..=max, 0..=max, 0..=max).prop_map(|(uncached, read, write, completion)| {
            usage(uncached + read + write, read, write, completion)
        })
    }

    fn same_tier(price: &PriceEntry, prompts: &[u64]) -> bool {
        prompts
            .iter()
            .all(|&p| Rates::for_prompt(price, p) == Rates::for_prompt(price, prompts[0]))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()) + 1e-300
    }

    proptest! {
        #[test]
        fn finite_and_non_negative(price in arb::entry(), u in arb_usage(2_000_000)) {
            let c = cost(&u, &price);
            prop_assert!(c.is_finite() && c >= 0.0, "{c}");
        }

        #[test]
        fn monotone_in_completion_tokens(
            price in arb::entry(), u in arb_usage(1_000_000), more in 0u64..=1_000_000,
        ) {
            let bigger = Usage { completion_tokens: u.completion_tokens + more, ..u };
            prop_assert!(cost(&bigger, &price) >= cost(&u, &price));
        }

        #[test]
        fn monotone_in_prompt_tokens_within_a_tier(
            price in arb::entry(), u in arb_usage(300_000), more in 0u64..=50_000,
        ) {
            let bigger = Usage { prompt_tokens: u.prompt_tokens + more, ..u };
            prop_assume!(same_tier(&price, &[u.prompt_tokens, bigger.prompt_tokens]));
            prop_assert!(cost(&bigger, &price) >= cost(&u, &price));
        }

        #[test]
        fn reading_from_cache_never_costs_more_when_cache_reads_are_cheaper(
            price in arb::entry(), u in arb_usage(1_000_000), share in 0.0f64..=1.0,
        ) {
            let rates = Rates::for_prompt(&price, u.prompt_tokens);
            prop_assume!(rates.cache_read <= rates.input);
            let moved = (u.uncached_prompt_tokens() as f64 * share) as u64;
            let cached = Usage { cached_read_tokens: u.cached_read_tokens + moved, ..u };
            let (before, after) = (cost(&u, &price), cost(&cached, &price));
            prop_assert!(after <= before || close(after, before), "{after} > {before}");
        }

        #[test]
        fn additive_within_a_tier(
            price in arb::entry(), a in arb_usage(40_000), b in arb_usage(40_000),
        ) {
            let sum = usage(
                a.prompt_tokens + b.prompt_tokens,
                a.cached_read_tokens + b.cached_read_tokens,
                a.cache_creation_tokens + b.cache_creation_tokens,
                a.completion_tokens + b.completion_tokens,
            );
            prop_assume!(same_tier(&price, &[a.prompt_tokens, b.prompt_tokens, sum.prompt_tokens]));
            let (whole, parts) = (cost(&sum, &price), cost(&a, &price) + cost(&b, &price));
            prop_assert!(close(whole, parts), "{whole} != {parts}");
        }
    }
}
