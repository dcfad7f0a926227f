//! One model's price entry, in the field names of LiteLLM's price file.
//! (Placeholder shape; the pricing work fills in parsing and tiers.)

use serde::{Deserialize, Serialize};

/// Prices of one model, USD per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_cost_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cost_per_token: Option<f64>,
}
