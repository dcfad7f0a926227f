//! Cost of a request: usage times a price entry.

use crate::price::PriceEntry;
use crate::usage::Usage;

/// Cost in USD of `usage` under `price`.
pub fn cost(usage: &Usage, price: &PriceEntry) -> f64 {
    usage.prompt_tokens as f64 * price.input_cost_per_token.unwrap_or(0.0)
        + usage.completion_tokens as f64 * price.output_cost_per_token.unwrap_or(0.0)
}
