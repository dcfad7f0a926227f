//! One model's price entry, in the field names of LiteLLM's `model_prices_and_context_window.json`.
//!
//! Why LiteLLM's names: that file is the price catalogue everyone already maintains, so an entry
//! in a snapshot reads like the file (`input_cost_per_token: 2.5e-06`, ...) and entries can be
//! copied from it. All costs are USD per token.
//!
//! Two ways in:
//! - **Strict** (`Deserialize`, the snapshot path): every field must be one this type supports,
//!   so a typo such as `input_cost_per_tokens` is an error naming the field rather than a price
//!   silently left out.
//! - **Lenient** ([`PriceEntry::from_litellm`], [`parse_price_file`], the price-file path): picks
//!   the supported fields and ignores the rest of the file's many fields (`_priority`, `_batches`
//!   and `_flex` variants, per-token audio and image prices, `source`, ...). The per-image,
//!   per-pixel, per-second and per-character prices of image and audio models are read into
//!   [`MediaRates`]; the file prices an image's size and quality as entries of their own
//!   (`high/1024-x-1024/gpt-image-1`), which [`attach_image_variants`] gathers.
//!
//! Both ways fail on a supported field of the wrong type (naming it), treat `null` as absent, and
//! accept integers where a rate is expected (the file writes some zero rates as `0`). Rates must
//! be non-negative. Serialisation emits only present fields, in LiteLLM's names, and a strict
//! parse of the output gives back an equal entry.
//!
//! Context tiers (`input_cost_per_token_above_200k_tokens`, ...) have variable names, so they are
//! gathered into [`ContextTier`]s; LiteLLM's rarer unit-less spelling `..._above_<N>_tokens` is
//! read too and used on output for thresholds that are not whole thousands. The explicit
//! `tiered_pricing` list becomes [`RangeTier`]s. How a request picks a tier is [`crate::pricing`]'s
//! business.
//!
//! Deliberate handling of the price file's odd spots:
//! - `tiered_pricing` items without a token `range` (the per-query price bands of the search
//!   tools `exa_ai/search` and `firecrawl/search`, keyed by `max_results_range`) are skipped by
//!   the lenient path: they price queries, not tokens. The strict path requires `range`.
//! - `range` bounds are written as floats (`256000.0`); any whole, non-negative number is read as
//!   a token count.
//! - Keys inside `tiered_pricing` items other than the four token rates and `range` (such as
//!   `output_cost_per_reasoning_token`) are ignored by the lenient path.
//! - `cache_creation_input_token_cost_above_1hr_above_<N>k_tokens` is not supported (ignored by
//!   the lenient path), like every other 1-hour cache-write price beyond the base one.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Prices and limits of one model, USD per token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceEntry {
    pub input_cost_per_token: Option<f64>,
    pub output_cost_per_token: Option<f64>,
    /// Price of a prompt token read from the provider's prompt cache.
    pub cache_read_input_token_cost: Option<f64>,
    /// Price of a prompt token written to the provider's prompt cache (the default lifetime,
    /// 5 minutes at Anthropic).
    pub cache_creation_input_token_cost: Option<f64>,
    /// Price of a prompt token written to a 1-hour cache. Carried so that entries keep it, but
    /// not used by [`crate::pricing::cost`]: [`crate::usage::Usage`] does not split cache
    /// writes by lifetime, so every cache write is billed at `cache_creation_input_token_cost`.
    pub cache_creation_input_token_cost_above_1hr: Option<f64>,
    /// Long-context rates (`*_above_<N>k_tokens`), ascending by threshold, one per threshold,
    /// each with at least one rate. The parsers guarantee this order.
    pub context_tiers: Vec<ContextTier>,
    /// LiteLLM's explicit `tiered_pricing` list, in the order given.
    pub tiered_pricing: Vec<RangeTier>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
    pub litellm_provider: Option<String>,
    /// `chat`, `embedding`, `completion`, ... as in the file.
    pub mode: Option<String>,
    pub supports_vision: Option<bool>,
    pub supports_function_calling: Option<bool>,
    pub supports_tool_choice: Option<bool>,
    pub supports_prompt_caching: Option<bool>,
    pub supports_response_schema: Option<bool>,
    pub supports_reasoning: Option<bool>,
    pub supports_system_messages: Option<bool>,
    pub supports_parallel_function_calling: Option<bool>,
    /// Per-unit prices of image and audio models (per image, pixel, second, character).
    pub media: MediaRates,
}

/// The price file's per-unit prices of image and audio models, in its field names: what
/// [`crate::pricing::media_cost`] charges images, transcriptions and speech by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaRates {
    pub input_cost_per_image: Option<f64>,
    pub output_cost_per_image: Option<f64>,
    pub input_cost_per_pixel: Option<f64>,
    pub output_cost_per_pixel: Option<f64>,
    pub input_cost_per_second: Option<f64>,
    pub output_cost_per_second: Option<f64>,
    pub input_cost_per_character: Option<f64>,
    pub output_cost_per_character: Option<f64>,
    /// USD per image by `<quality>/<size>` or `<size>` (`high/1024-x-1024`, `1024-x-1024`),
    /// gathered from the price file's entries named `<quality>/<size>/<model>` and
    /// `<size>/<model>` ([`image_variant_names`], [`attach_image_variants`]). Written as the
    /// field `image_variants` (a Switchboard extension; the file has no such field).
    pub image_variants: BTreeMap<String, f64>,
}

/// The qualities and sizes the price file names image prices by.
const IMAGE_QUALITIES: [&str; 5] = ["low", "medium", "high", "standard", "hd"];
const IMAGE_SIZES: [&str; 7] = [
    "256-x-256",
    "512-x-512",
    "1024-x-1024",
    "1024-x-1536",
    "1536-x-1024",
    "1024-x-1792",
    "1792-x-1024",
];

/// The price-file entry names that may price `model`'s images by size and quality:
/// `<quality>/<size>/<model>` and `<size>/<model>`.
pub fn image_variant_names(model: &str) -> Vec<String> {
    let mut names = Vec::with_capacity(IMAGE_SIZES.len() * (IMAGE_QUALITIES.len() + 1));
    for size in IMAGE_SIZES {
        names.push(format!("{size}/{model}"));
        for quality in IMAGE_QUALITIES {
            names.push(format!("{quality}/{size}/{model}"));
        }
    }
    names
}

/// Writes the per-image prices that `entries` (name → entry, as [`image_variant_names`] of
/// `model` looked up) state into `entry.media.image_variants`: an entry's `input_cost_per_image`
/// or `output_cost_per_image`, else its per-pixel price times the size's pixels. Variants the
/// entry already has (an admin's own) are kept.
pub fn attach_image_variants(
    entry: &mut PriceEntry,
    model: &str,
    entries: &BTreeMap<String, PriceEntry>,
) {
    for name in image_variant_names(model) {
        let Some(variant) = entries.get(&name) else {
            continue;
        };
        let key = name
            .strip_suffix(model)
            .and_then(|k| k.strip_suffix('/'))
            .unwrap_or_default();
        let Some(price) = variant.media.per_image(pixels(key)) else {
            continue;
        };
        entry
            .media
            .image_variants
            .entry(key.to_owned())
            .or_insert(price);
    }
}

/// The pixels of the size in a variant key (`high/1024-x-1536` → 1024 × 1536).
pub fn pixels(key: &str) -> Option<u64> {
    let size = key.rsplit('/').next()?;
    let (w, h) = size.split_once("-x-")?;
    w.parse::<u64>().ok()?.checked_mul(h.parse().ok()?)
}

impl MediaRates {
    /// One image's price from these rates: per image (input or output, as the file names it),
    /// else per pixel times `pixels`.
    pub fn per_image(&self, pixels: Option<u64>) -> Option<f64> {
        let per_image = self.input_cost_per_image.or(self.output_cost_per_image);
        let per_pixel = match (self.input_cost_per_pixel, self.output_cost_per_pixel) {
            (None, None) => None,
            (i, o) => Some(i.unwrap_or(0.0) + o.unwrap_or(0.0)),
        };
        per_image.or_else(|| Some(per_pixel? * pixels? as f64))
    }
}

/// The four per-token rates a tier can override.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TierRates {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_cost_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_cost_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_input_token_cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_token_cost: Option<f64>,
}

/// Rates that apply once a prompt is longer than `threshold_tokens`, read from the fields
/// `input_cost_per_token_above_<N>k_tokens` and its three siblings (threshold = N × 1000).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextTier {
    pub threshold_tokens: u64,
    pub rates: TierRates,
}

/// One item of `tiered_pricing`: rates for prompts whose length falls in `range`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RangeTier {
    /// `[low, high]` in prompt tokens, as written in the file.
    pub range: [u64; 2],
    #[serde(flatten)]
    pub rates: TierRates,
}

/// Top-level keys of the price file that are not models.
const NON_MODEL_KEYS: [&str; 2] = ["sample_spec", "fallback_generalizations"];

/// Reads LiteLLM's price file: model name → entry. Skips `sample_spec`,
/// `fallback_generalizations` and any value that is not an object. Fails on invalid JSON or on
/// an entry with a supported field of the wrong type, naming the model and the field.
pub fn parse_price_file(json: &str) -> Result<BTreeMap<String, PriceEntry>, String> {
    let all: Map<String, Value> =
        serde_json::from_str(json).map_err(|e| format!("invalid price file: {e}"))?;
    all.iter()
        .filter(|(name, _)| !NON_MODEL_KEYS.contains(&name.as_str()))
        .filter_map(|(name, value)| value.as_object().map(|fields| (name, fields)))
        .map(|(name, fields)| {
            parse_fields(fields, Mode::Lenient)
                .map(|entry| (name.clone(), entry))
                .map_err(|e| format!("model `{name}`: {e}"))
        })
        .collect()
}

/// What is wrong with a price entry, and where: `path` is the field's path inside the entry
/// (`input_cost_per_token`, `tiered_pricing[0].range`; empty for the entry as a whole), so
/// that an API can point at the field. `Display` is the message alone, which names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    pub path: String,
    pub message: String,
}

impl EntryError {
    fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EntryError {}

impl PriceEntry {
    /// Reads one entry of LiteLLM's price file, keeping the supported fields and ignoring every
    /// other one. Fails only if the value is not an object or a supported field has the wrong
    /// type (the message names the field).
    pub fn from_litellm(entry: &Value) -> Result<PriceEntry, String> {
        let fields = entry
            .as_object()
            .ok_or_else(|| "a price entry must be an object".to_owned())?;
        parse_fields(fields, Mode::Lenient).map_err(|e| e.message)
    }

    /// The strict parse (the same as `Deserialize`) of one entry, saying which field is wrong.
    pub fn from_json_strict(entry: &Value) -> Result<PriceEntry, EntryError> {
        let fields = entry
            .as_object()
            .ok_or_else(|| EntryError::at("", "a price entry must be an object"))?;
        parse_fields(fields, Mode::Strict)
    }
}

impl<'de> Deserialize<'de> for PriceEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a JSON map first: the field names are not a fixed set, and this works the same
        // for every self-describing format (JSON, YAML).
        let fields = Map::<String, Value>::deserialize(deserializer)?;
        parse_fields(&fields, Mode::Strict).map_err(serde::de::Error::custom)
    }
}

impl Serialize for PriceEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let base = [
            ("input_cost_per_token", self.input_cost_per_token),
            ("output_cost_per_token", self.output_cost_per_token),
            (
                "cache_read_input_token_cost",
                self.cache_read_input_token_cost,
            ),
            (
                "cache_creation_input_token_cost",
                self.cache_creation_input_token_cost,
            ),
            (
                "cache_creation_input_token_cost_above_1hr",
                self.cache_creation_input_token_cost_above_1hr,
            ),
        ];
        present(&mut map, &base)?;
        present(&mut map, &self.media.named())?;
        if !self.media.image_variants.is_empty() {
            map.serialize_entry("image_variants", &self.media.image_variants)?;
        }
        for tier in &self.context_tiers {
            let suffix = threshold_suffix(tier.threshold_tokens);
            for (name, value) in tier.rates.named() {
                if let Some(value) = value {
                    map.serialize_entry(&format!("{name}_above_{suffix}_tokens"), &value)?;
                }
            }
        }
        if !self.tiered_pricing.is_empty() {
            map.serialize_entry("tiered_pricing", &self.tiered_pricing)?;
        }
        let whole = [
            ("max_input_tokens", self.max_input_tokens),
            ("max_output_tokens", self.max_output_tokens),
            ("max_tokens", self.max_tokens),
        ];
        present(&mut map, &whole)?;
        let text = [
            ("litellm_provider", self.litellm_provider.as_deref()),
            ("mode", self.mode.as_deref()),
        ];
        present(&mut map, &text)?;
        let flags = [
            ("supports_vision", self.supports_vision),
            ("supports_function_calling", self.supports_function_calling),
            ("supports_tool_choice", self.supports_tool_choice),
            ("supports_prompt_caching", self.supports_prompt_caching),
            ("supports_response_schema", self.supports_response_schema),
            ("supports_reasoning", self.supports_reasoning),
            ("supports_system_messages", self.supports_system_messages),
            (
                "supports_parallel_function_calling",
                self.supports_parallel_function_calling,
            ),
        ];
        present(&mut map, &flags)?;
        map.end()
    }
}

/// Writes each named value that is present, in order.
fn present<M: SerializeMap, T: Serialize>(
    map: &mut M,
    fields: &[(&str, Option<T>)],
) -> Result<(), M::Error> {
    for (name, value) in fields {
        if let Some(value) = value {
            map.serialize_entry(name, value)?;
        }
    }
    Ok(())
}

impl MediaRates {
    fn named(&self) -> [(&'static str, Option<f64>); 8] {
        [
            ("input_cost_per_image", self.input_cost_per_image),
            ("output_cost_per_image", self.output_cost_per_image),
            ("input_cost_per_pixel", self.input_cost_per_pixel),
            ("output_cost_per_pixel", self.output_cost_per_pixel),
            ("input_cost_per_second", self.input_cost_per_second),
            ("output_cost_per_second", self.output_cost_per_second),
            ("input_cost_per_character", self.input_cost_per_character),
            ("output_cost_per_character", self.output_cost_per_character),
        ]
    }
}

impl TierRates {
    const NAMES: [&'static str; 4] = [
        "input_cost_per_token",
        "output_cost_per_token",
        "cache_read_input_token_cost",
        "cache_creation_input_token_cost",
    ];

    fn named(&self) -> [(&'static str, Option<f64>); 4] {
        [
            (Self::NAMES[0], self.input_cost_per_token),
            (Self::NAMES[1], self.output_cost_per_token),
            (Self::NAMES[2], self.cache_read_input_token_cost),
            (Self::NAMES[3], self.cache_creation_input_token_cost),
        ]
    }

    fn slot(&mut self, name: &str) -> Option<&mut Option<f64>> {
        match name {
            "input_cost_per_token" => Some(&mut self.input_cost_per_token),
            "output_cost_per_token" => Some(&mut self.output_cost_per_token),
            "cache_read_input_token_cost" => Some(&mut self.cache_read_input_token_cost),
            "cache_creation_input_token_cost" => Some(&mut self.cache_creation_input_token_cost),
            _ => None,
        }
    }
}

/// Whether fields this type does not support are an error or ignored.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Strict,
    Lenient,
}

/// A typed place in a [`PriceEntry`] for one fixed-name field.
enum Slot<'a> {
    Rate(&'a mut Option<f64>),
    Whole(&'a mut Option<u64>),
    Text(&'a mut Option<String>),
    Flag(&'a mut Option<bool>),
}

fn slot<'a>(entry: &'a mut PriceEntry, name: &str) -> Option<Slot<'a>> {
    use Slot::{Flag, Rate, Text, Whole};
    let e = entry;
    Some(match name {
        "input_cost_per_token" => Rate(&mut e.input_cost_per_token),
        "output_cost_per_token" => Rate(&mut e.output_cost_per_token),
        "cache_read_input_token_cost" => Rate(&mut e.cache_read_input_token_cost),
        "cache_creation_input_token_cost" => Rate(&mut e.cache_creation_input_token_cost),
        "cache_creation_input_token_cost_above_1hr" => {
            Rate(&mut e.cache_creation_input_token_cost_above_1hr)
        }
        "input_cost_per_image" => Rate(&mut e.media.input_cost_per_image),
        "output_cost_per_image" => Rate(&mut e.media.output_cost_per_image),
        "input_cost_per_pixel" => Rate(&mut e.media.input_cost_per_pixel),
        "output_cost_per_pixel" => Rate(&mut e.media.output_cost_per_pixel),
        "input_cost_per_second" => Rate(&mut e.media.input_cost_per_second),
        "output_cost_per_second" => Rate(&mut e.media.output_cost_per_second),
        "input_cost_per_character" => Rate(&mut e.media.input_cost_per_character),
        "output_cost_per_character" => Rate(&mut e.media.output_cost_per_character),
        "max_input_tokens" => Whole(&mut e.max_input_tokens),
        "max_output_tokens" => Whole(&mut e.max_output_tokens),
        "max_tokens" => Whole(&mut e.max_tokens),
        "litellm_provider" => Text(&mut e.litellm_provider),
        "mode" => Text(&mut e.mode),
        "supports_vision" => Flag(&mut e.supports_vision),
        "supports_function_calling" => Flag(&mut e.supports_function_calling),
        "supports_tool_choice" => Flag(&mut e.supports_tool_choice),
        "supports_prompt_caching" => Flag(&mut e.supports_prompt_caching),
        "supports_response_schema" => Flag(&mut e.supports_response_schema),
        "supports_reasoning" => Flag(&mut e.supports_reasoning),
        "supports_system_messages" => Flag(&mut e.supports_system_messages),
        "supports_parallel_function_calling" => Flag(&mut e.supports_parallel_function_calling),
        _ => return None,
    })
}

fn parse_fields(fields: &Map<String, Value>, mode: Mode) -> Result<PriceEntry, EntryError> {
    let mut entry = PriceEntry::default();
    let mut tiers: BTreeMap<u64, TierRates> = BTreeMap::new();
    for (name, value) in fields {
        if name == "tiered_pricing" {
            entry.tiered_pricing = parse_range_tiers(value, mode)?;
        } else if name == "image_variants" {
            entry.media.image_variants = parse_image_variants(value)?;
        } else if let Some(slot) = slot(&mut entry, name) {
            match slot {
                Slot::Rate(place) => *place = rate(name, value)?,
                Slot::Whole(place) => *place = whole(name, value)?,
                Slot::Text(place) => *place = text(name, value)?,
                Slot::Flag(place) => *place = flag(name, value)?,
            }
        } else if let Some((rate_name, threshold)) = context_tier_field(name) {
            if let Some(value) = rate(name, value)? {
                let place = tiers
                    .entry(threshold)
                    .or_default()
                    .slot(rate_name)
                    .ok_or_else(|| {
                        EntryError::at(name, format!("unsupported tier rate `{name}`"))
                    })?;
                if place.replace(value).is_some() {
                    return Err(EntryError::at(
                        name,
                        format!("`{name}` repeats a rate already given for the same threshold"),
                    ));
                }
            }
        } else if mode == Mode::Strict {
            return Err(EntryError::at(
                name,
                format!("unknown field `{name}` in price entry"),
            ));
        }
    }
    entry.context_tiers = tiers
        .into_iter()
        .map(|(threshold_tokens, rates)| ContextTier {
            threshold_tokens,
            rates,
        })
        .collect();
    Ok(entry)
}

/// `image_variants`: an object of variant key → USD per image.
fn parse_image_variants(value: &Value) -> Result<BTreeMap<String, f64>, EntryError> {
    let fields = match value {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(fields) => fields,
        _ => {
            return Err(EntryError::at(
                "image_variants",
                "`image_variants` must be an object of USD per image",
            ));
        }
    };
    let mut variants = BTreeMap::new();
    for (key, value) in fields {
        if let Some(price) = rate(&format!("image_variants.{key}"), value)? {
            variants.insert(key.clone(), price);
        }
    }
    Ok(variants)
}

fn parse_range_tiers(value: &Value, mode: Mode) -> Result<Vec<RangeTier>, EntryError> {
    let Some(items) = value.as_array() else {
        return match value {
            Value::Null => Ok(Vec::new()),
            _ => Err(EntryError::at(
                "tiered_pricing",
                "`tiered_pricing` must be a list",
            )),
        };
    };
    let mut tiers = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("tiered_pricing[{i}]");
        let fields = item
            .as_object()
            .ok_or_else(|| EntryError::at(&at, format!("`{at}` must be an object")))?;
        let mut rates = TierRates::default();
        let mut range = None;
        for (name, value) in fields {
            let field = format!("{at}.{name}");
            if name == "range" {
                range = parse_range(&field, value)?;
            } else if let Some(place) = rates.slot(name) {
                *place = rate(&field, value)?;
            } else if mode == Mode::Strict {
                return Err(EntryError::at(
                    &field,
                    format!("unknown field `{field}` in price entry"),
                ));
            }
        }
        match (range, mode) {
            (Some(range), _) => tiers.push(RangeTier { range, rates }),
            // A band without a token range (the search tools' per-query bands) cannot be
            // chosen by prompt length: not a token price.
            (None, Mode::Lenient) => {}
            (None, Mode::Strict) => {
                return Err(EntryError::at(&at, format!("`{at}` has no `range`")));
            }
        }
    }
    Ok(tiers)
}

fn parse_range(field: &str, value: &Value) -> Result<Option<[u64; 2]>, EntryError> {
    let bad = || {
        EntryError::at(
            field,
            format!("`{field}` must be two whole token counts, low ≤ high"),
        )
    };
    match value {
        Value::Null => Ok(None),
        Value::Array(bounds) => match bounds.as_slice() {
            [low, high] => {
                let low = whole(field, low)?.ok_or_else(bad)?;
                let high = whole(field, high)?.ok_or_else(bad)?;
                if low <= high {
                    Ok(Some([low, high]))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Splits `<rate>_above_<N>k_tokens` (threshold N × 1000) or `<rate>_above_<N>_tokens`
/// (threshold N) into the rate's base name and the threshold in tokens.
fn context_tier_field(name: &str) -> Option<(&'static str, u64)> {
    TierRates::NAMES.into_iter().find_map(|rate_name| {
        let n = name
            .strip_prefix(rate_name)?
            .strip_prefix("_above_")?
            .strip_suffix("_tokens")?;
        let (digits, scale) = match n.strip_suffix('k') {
            Some(digits) => (digits, 1000),
            None => (n, 1),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let threshold = digits.parse::<u64>().ok()?.checked_mul(scale)?;
        Some((rate_name, threshold))
    })
}

/// The `<N>k` or `<N>` between `_above_` and `_tokens` for a threshold in tokens.
fn threshold_suffix(threshold_tokens: u64) -> String {
    if threshold_tokens.is_multiple_of(1000) {
        format!("{}k", threshold_tokens / 1000)
    } else {
        threshold_tokens.to_string()
    }
}

/// The error of a field whose value is not `what` it must be.
fn must_be(field: &str, what: &str, found: &dyn std::fmt::Display) -> EntryError {
    EntryError::at(field, format!("`{field}` must be {what}, found {found}"))
}

fn rate(field: &str, value: &Value) -> Result<Option<f64>, EntryError> {
    const WHAT: &str = "a non-negative number";
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
            _ => Err(must_be(field, WHAT, n)),
        },
        other => Err(must_be(field, WHAT, other)),
    }
}

/// A non-negative whole number, written as an integer or as a float with no fraction
/// (`256000.0`).
fn whole(field: &str, value: &Value) -> Result<Option<u64>, EntryError> {
    /// 2^53: above it not every whole float is exact.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    const WHAT: &str = "a non-negative whole number";
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(x), _) => Ok(Some(x)),
            (None, Some(x)) if (0.0..=EXACT).contains(&x) && x.fract() == 0.0 => Ok(Some(x as u64)),
            _ => Err(must_be(field, WHAT, n)),
        },
        other => Err(must_be(field, WHAT, other)),
    }
}

fn text(field: &str, value: &Value) -> Result<Option<String>, EntryError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(must_be(field, "a string", other)),
    }
}

fn flag(field: &str, value: &Value) -> Result<Option<bool>, EntryError> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(must_be(field, "true or false", other)),
    }
}

/// Proptest strategies for price entries, shared with [`crate::pricing`]'s tests.
#[cfg(test)]
pub(crate) mod arb {
    use proptest::prelude::*;

    use super::*;

    /// A price-like rate: up to six significant digits times a power of ten.
    pub(crate) fn rate() -> impl Strategy<Value = f64> {
        (0u32..=999_999, 4u32..=12).prop_map(|(m, k)| format!("{m}e-{k}").parse().unwrap())
    }

    pub(crate) fn tier_rates() -> impl Strategy<Value = TierRates> {
        let r = || proptest::option::of(rate());
        (r(), r(), r(), r())
            .prop_map(|(i, o, cr, cc)| TierRates {
                input_cost_per_token: i,
                output_cost_per_token: o,
                cache_read_input_token_cost: cr,
                cache_creation_input_token_cost: cc,
            })
            .prop_filter("a tier has at least one rate", |t| {
                t != &TierRates::default()
            })
    }

    fn context_tiers() -> impl Strategy<Value = Vec<ContextTier>> {
        let threshold = prop_oneof![3 => (0u64..=600).prop_map(|n| n * 1000), 1 => 0u64..=600_000];
        proptest::collection::btree_map(threshold, tier_rates(), 0..=3).prop_map(|tiers| {
            tiers
                .into_iter()
                .map(|(threshold_tokens, rates)| ContextTier {
                    threshold_tokens,
                    rates,
                })
                .collect()
        })
    }

    /// Contiguous ranges from 0, as in the price file.
    fn range_tiers() -> impl Strategy<Value = Vec<RangeTier>> {
        proptest::collection::btree_set(1u64..=1_000_000, 0..=4).prop_flat_map(|ends| {
            let n = ends.len();
            proptest::collection::vec(tier_rates(), n).prop_map(move |rates| {
                let mut low = 0;
                ends.iter()
                    .zip(rates)
                    .map(|(&high, rates)| {
                        let tier = RangeTier {
                            range: [low, high],
                            rates,
                        };
                        low = high;
                        tier
                    })
                    .collect()
            })
        })
    }

    pub(crate) fn entry() -> impl Strategy<Value = PriceEntry> {
        let r = || proptest::option::of(rate());
        let n = || proptest::option::of(0u64..=2_000_000);
        let s = || proptest::option::of("[a-z_]{1,12}");
        let rates = (r(), r(), r(), r(), r());
        let tiers = (context_tiers(), range_tiers());
        let limits = (n(), n(), n(), s(), s());
        let flags = proptest::collection::vec(proptest::option::of(any::<bool>()), 8);
        let base =
            (rates, tiers, limits, flags).prop_map(|(rates, tiers, limits, flags)| PriceEntry {
                input_cost_per_token: rates.0,
                output_cost_per_token: rates.1,
                cache_read_input_token_cost: rates.2,
                cache_creation_input_token_cost: rates.3,
                cache_creation_input_token_cost_above_1hr: rates.4,
                context_tiers: tiers.0,
                tiered_pricing: tiers.1,
                max_input_tokens: limits.0,
                max_output_tokens: limits.1,
                max_tokens: limits.2,
                litellm_provider: limits.3,
                mode: limits.4,
                supports_vision: flags[0],
                supports_function_calling: flags[1],
                supports_tool_choice: flags[2],
                supports_prompt_caching: flags[3],
                supports_response_schema: flags[4],
                supports_reasoning: flags[5],
                supports_system_messages: flags[6],
                supports_parallel_function_calling: flags[7],
                media: MediaRates::default(),
            });
        let per_unit = proptest::collection::vec(r(), 8);
        let variants = proptest::collection::btree_map("[a-z0-9/-]{1,20}", rate(), 0..=3);
        (base, per_unit, variants).prop_map(|(mut entry, r, image_variants)| {
            entry.media = MediaRates {
                input_cost_per_image: r[0],
                output_cost_per_image: r[1],
                input_cost_per_pixel: r[2],
                output_cost_per_pixel: r[3],
                input_cost_per_second: r[4],
                output_cost_per_second: r[5],
                input_cost_per_character: r[6],
                output_cost_per_character: r[7],
                image_variants,
            };
            entry
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::snapshot::Deployment;

    fn strict(value: Value) -> Result<PriceEntry, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn strict_reads_litellm_names_and_gathers_context_tiers() {
        let entry = strict(json!({
            "input_cost_per_token": 1.25e-06,
            "output_cost_per_token": 1e-05,
            "cache_read_input_token_cost": 1.25e-07,
            "input_cost_per_token_above_200k_tokens": 2.5e-06,
            "output_cost_per_token_above_200k_tokens": 1.5e-05,
            "input_cost_per_token_above_32k_tokens": 2e-06,
            "cache_read_input_token_cost_above_1500_tokens": 0,
            "max_input_tokens": 1048576,
            "litellm_provider": "gemini",
            "supports_vision": true,
        }))
        .unwrap();
        assert_eq!(entry.input_cost_per_token, Some(1.25e-06));
        assert_eq!(entry.max_input_tokens, Some(1_048_576));
        assert_eq!(entry.supports_vision, Some(true));
        let thresholds: Vec<u64> = entry
            .context_tiers
            .iter()
            .map(|t| t.threshold_tokens)
            .collect();
        assert_eq!(thresholds, [1_500, 32_000, 200_000]);
        assert_eq!(
            entry.context_tiers[2].rates,
            TierRates {
                input_cost_per_token: Some(2.5e-06),
                output_cost_per_token: Some(1.5e-05),
                ..TierRates::default()
            }
        );
        assert_eq!(
            entry.context_tiers[0].rates.cache_read_input_token_cost,
            Some(0.0)
        );
    }

    #[test]
    fn strict_rejects_unknown_fields_by_name() {
        let err = strict(json!({ "input_cost_per_tokens": 1e-6 })).unwrap_err();
        assert!(err.contains("input_cost_per_tokens"), "{err}");
        // A suffix family LiteLLM has but this type does not support.
        let err =
            strict(json!({ "input_cost_per_token_above_200k_tokens_priority": 1e-6 })).unwrap_err();
        assert!(err.contains("_priority"), "{err}");
        let err = strict(json!({ "tiered_pricing": [
            { "range": [0, 10], "input_cost_per_tokn": 1e-6 }
        ]}))
        .unwrap_err();
        assert!(
            err.contains("tiered_pricing[0].input_cost_per_tokn"),
            "{err}"
        );
        let err =
            strict(json!({ "tiered_pricing": [{ "input_cost_per_token": 1e-6 }] })).unwrap_err();
        assert!(err.contains("range"), "{err}");
    }

    #[test]
    fn strict_rejects_typos_inside_a_yaml_snapshot_deployment() {
        let yaml = "{ id: d1, model: m, provider: p, upstream_model: u, \
                    price: { input_cost_per_token: 2.5e-06, output_cost_per_tokens: 1e-05 } }";
        let err = serde_yaml_ng::from_str::<Deployment>(yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("output_cost_per_tokens"), "{err}");
        let ok = yaml.replace("output_cost_per_tokens", "output_cost_per_token");
        let deployment: Deployment = serde_yaml_ng::from_str(&ok).unwrap();
        let price = deployment.price.unwrap();
        assert_eq!(price.input_cost_per_token, Some(2.5e-06));
        assert_eq!(price.output_cost_per_token, Some(1e-05));
    }

    #[test]
    fn wrong_types_are_errors_naming_the_field_in_both_modes() {
        let cases = [
            (
                json!({ "input_cost_per_token": "2.5e-06" }),
                "input_cost_per_token",
            ),
            (
                json!({ "output_cost_per_token": -1.0 }),
                "output_cost_per_token",
            ),
            (json!({ "max_input_tokens": 1.5 }), "max_input_tokens"),
            (json!({ "supports_vision": "yes" }), "supports_vision"),
            (json!({ "mode": 1 }), "mode"),
            (
                json!({ "input_cost_per_token_above_200k_tokens": [] }),
                "input_cost_per_token_above_200k_tokens",
            ),
            (json!({ "tiered_pricing": {} }), "tiered_pricing"),
            (
                json!({ "tiered_pricing": [{ "range": [10, 0] }] }),
                "tiered_pricing[0].range",
            ),
        ];
        for (value, field) in cases {
            let err = PriceEntry::from_litellm(&value).unwrap_err();
            assert!(err.contains(field), "{value}: {err}");
            let err = strict(value.clone()).unwrap_err();
            assert!(err.contains(field), "{value}: {err}");
        }
    }

    #[test]
    fn the_strict_parse_says_which_field_is_wrong() {
        let cases = [
            (
                json!({ "input_cost_per_token": -1e-6 }),
                "input_cost_per_token",
            ),
            (
                json!({ "output_cost_per_tokens": 1e-6 }),
                "output_cost_per_tokens",
            ),
            (json!({ "supports_vision": "yes" }), "supports_vision"),
            (json!({ "tiered_pricing": 1 }), "tiered_pricing"),
            (
                json!({ "tiered_pricing": [{ "range": [10, 0] }] }),
                "tiered_pricing[0].range",
            ),
            (
                json!({ "tiered_pricing": [{ "range": [0, 1], "x": 1 }] }),
                "tiered_pricing[0].x",
            ),
            (json!([1]), ""),
        ];
        for (value, path) in cases {
            let err = PriceEntry::from_json_strict(&value).unwrap_err();
            assert_eq!(err.path, path, "{value}: {err}");
            // The message is the one `Deserialize` gives.
            assert_eq!(
                strict(value.clone()).map_err(|e| e.contains(&err.message)),
                Err(value.is_object()),
                "{value}"
            );
        }
        let entry =
            json!({ "input_cost_per_token": 1e-6, "tiered_pricing": [{ "range": [0, 9] }] });
        assert_eq!(
            PriceEntry::from_json_strict(&entry).unwrap(),
            strict(entry).unwrap()
        );
    }

    #[test]
    fn the_same_tier_rate_twice_is_an_error() {
        let err = PriceEntry::from_litellm(&json!({
            "input_cost_per_token_above_2k_tokens": 1e-6,
            "input_cost_per_token_above_2000_tokens": 2e-6,
        }))
        .unwrap_err();
        assert!(err.contains("input_cost_per_token_above_2"), "{err}");
    }

    #[test]
    fn lenient_ignores_other_fields_and_query_bands() {
        let entry = PriceEntry::from_litellm(&json!({
            "input_cost_per_token": 2.5e-06,
            "input_cost_per_token_priority": 4.25e-06,
            "input_cost_per_token_above_200k_tokens_batches": 1e-6,
            "cache_creation_input_token_cost_above_1hr_above_200k_tokens": 1e-6,
            "input_cost_per_image": 0.01,
            "source": "https://example.com",
            "search_context_cost_per_query": { "search_context_size_low": 0.01 },
            "max_tokens": null,
            "tiered_pricing": [
                { "input_cost_per_query": 0.005, "max_results_range": [0, 25] },
                { "range": [0, 256000.0], "input_cost_per_token": 5e-08,
                  "output_cost_per_reasoning_token": 1e-6 },
            ],
        }))
        .unwrap();
        assert_eq!(
            entry,
            PriceEntry {
                input_cost_per_token: Some(2.5e-06),
                tiered_pricing: vec![RangeTier {
                    range: [0, 256_000],
                    rates: TierRates {
                        input_cost_per_token: Some(5e-08),
                        ..TierRates::default()
                    },
                }],
                // Per-image prices are read (into `media`), not ignored.
                media: MediaRates {
                    input_cost_per_image: Some(0.01),
                    ..MediaRates::default()
                },
                ..PriceEntry::default()
            }
        );
        assert!(PriceEntry::from_litellm(&json!([1, 2])).is_err());
    }

    #[test]
    fn price_file_skips_non_models() {
        let file = r#"{
            "sample_spec": { "max_input_tokens": "max input tokens, if the provider specifies it" },
            "fallback_generalizations": { "rules": [] },
            "odd": 3,
            "m1": { "input_cost_per_token": 1e-06, "foo": "bar" },
            "m2": {}
        }"#;
        let entries = parse_price_file(file).unwrap();
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["m1", "m2"]);
        let err = parse_price_file(r#"{ "m": { "mode": 3 } }"#).unwrap_err();
        assert!(err.contains("`m`") && err.contains("mode"), "{err}");
    }

    #[test]
    fn serialisation_emits_only_present_fields_in_litellm_names() {
        let entry = PriceEntry {
            input_cost_per_token: Some(2.5e-06),
            context_tiers: vec![
                ContextTier {
                    threshold_tokens: 1_500,
                    rates: TierRates {
                        output_cost_per_token: Some(1e-05),
                        ..TierRates::default()
                    },
                },
                ContextTier {
                    threshold_tokens: 200_000,
                    rates: TierRates {
                        input_cost_per_token: Some(5e-06),
                        ..TierRates::default()
                    },
                },
            ],
            tiered_pricing: vec![RangeTier {
                range: [0, 32_000],
                rates: TierRates {
                    input_cost_per_token: Some(1e-06),
                    ..TierRates::default()
                },
            }],
            supports_vision: Some(false),
            ..PriceEntry::default()
        };
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            json!({
                "input_cost_per_token": 2.5e-06,
                "output_cost_per_token_above_1500_tokens": 1e-05,
                "input_cost_per_token_above_200k_tokens": 5e-06,
                "tiered_pricing": [{ "range": [0, 32000], "input_cost_per_token": 1e-06 }],
                "supports_vision": false,
            })
        );
        assert_eq!(serde_json::to_string(&PriceEntry::default()).unwrap(), "{}");
    }

    proptest! {
        #[test]
        fn strict_parse_of_serialisation_is_identity(entry in arb::entry()) {
            let json = serde_json::to_string(&entry).unwrap();
            prop_assert_eq!(&serde_json::from_str::<PriceEntry>(&json).unwrap(), &entry);
            let yaml = serde_yaml_ng::to_string(&entry).unwrap();
            prop_assert_eq!(&serde_yaml_ng::from_str::<PriceEntry>(&yaml).unwrap(), &entry);
            // The price-file path reads the same document the same way.
            let value: Value = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&PriceEntry::from_litellm(&value).unwrap(), &entry);
        }
    }
}
