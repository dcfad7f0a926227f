//! The request context: what one client request is, built once in [`crate::handlers`] when
//! the request has been authenticated, parsed, resolved to a model and admitted.
//!
//! Every later phase reads it instead of copying from it. Admission ([`crate::quota`]) and the
//! forward loop ([`crate::proxy`]) borrow it. The [`crate::accounting::Ledger`] rides inside a
//! streamed answer's body ([`crate::relay`]) and so must own what it reads: it shares the
//! context's [`RequestFacts`] through one `Arc`, made once per request (never per attempt).
//! The body ([`RequestView`]) is not in that part: only the forward loop needs it, so a
//! long stream does not keep the prompt in memory.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use switchboard_shared::budget::{MAX_CHARGE_NANOS, charge_nanos, nanos_to_usd};
use switchboard_shared::usage::Usage;

use crate::catalog::{DeploymentEntry, KeyEntry, ModelEntry};
use crate::error::ApiError;
use crate::providers::Endpoint;
use crate::request::{MAX_TOKENS_CAP, RequestView};
use crate::selectors::Selection;

/// One authenticated, parsed, admitted client request, as the forward loop borrows it.
#[derive(Debug)]
pub struct RequestContext {
    /// What outlives the forward loop, shared with the request's ledger.
    pub facts: Arc<RequestFacts>,
    /// The body, and the few fields of it the gateway reads.
    pub view: RequestView,
    /// Tags, capabilities and session that narrow the deployments.
    pub selection: Selection,
    /// Answer with the routing decision ([`crate::proxy::EXPLAIN_RESPONSE_HEADER`]).
    pub explain: bool,
}

/// What the ledger (and through it the relay) reads about a request until its answer ends.
#[derive(Debug)]
pub struct RequestFacts {
    /// The API it came in on, which is also the protocol of its answer.
    pub endpoint: Endpoint,
    /// The virtual key that made it, with its tenant.
    pub key: Arc<KeyEntry>,
    /// The model asked for (fallbacks are found through the catalog).
    pub model: Arc<ModelEntry>,
    /// From the body: a stream was asked for; the client itself asked for the usage event;
    /// its `max_tokens`.
    pub stream: bool,
    pub client_wants_usage: bool,
    pub max_tokens: Option<u64>,
    /// Its `n`: how many answers it asks for (1 when absent).
    pub choices: u64,
    /// The client's own `x-request-id`, recorded beside the gateway's id.
    pub client_request_id: Option<String>,
    /// When it arrived, for latency and TTFT; and on the budgets' clock, for spend.
    pub started: Instant,
    pub started_at: DateTime<Utc>,
    /// The gateway's estimate of the prompt's tokens, and that plus `max_tokens`: what the
    /// token limits are charged at admission.
    pub prompt_estimate: u64,
    pub estimated_tokens: u64,
    /// The serving snapshot's revision and price-file version, which price the request.
    pub revision: u64,
    pub price_version: Option<u64>,
    /// What an image or audio request is priced by, as the request states it (the answer
    /// may correct it, see `crate::media`); `None` for every other request.
    pub media: Option<switchboard_shared::usage::MediaUsage>,
}

impl RequestFacts {
    /// The most this request can cost on any of `deployments` (those of the model asked for
    /// and of the fallbacks it may use that may serve it), in nano-dollars: its prompt
    /// estimate plus its completion allowance at the dearest price. A 400 naming `max_tokens` when that is more than one
    /// request may reserve ([`MAX_CHARGE_NANOS`]): a budget counter is never handed an amount
    /// outside its range.
    pub fn max_cost_nanos<'d>(
        &self,
        deployments: impl IntoIterator<Item = &'d DeploymentEntry>,
    ) -> Result<i64, ApiError> {
        let most = deployments
            .into_iter()
            .filter_map(|d| d.price.as_ref())
            .map(|price| {
                let media = self.media.as_ref();
                if let Some(cost) =
                    media.and_then(|m| switchboard_shared::pricing::media_cost(m, price))
                {
                    return cost;
                }
                let usage = Usage {
                    prompt_tokens: self.prompt_estimate,
                    completion_tokens: completion_allowance(
                        self.max_tokens,
                        self.choices,
                        Some(price),
                    ),
                    ..Usage::default()
                };
                switchboard_shared::pricing::cost(&usage, price)
            })
            .fold(0.0, f64::max);
        charge_nanos(most).ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "this request could cost ${most:.0}, more than one request may reserve \
                     (${:.0}); lower `max_tokens`",
                    nanos_to_usd(MAX_CHARGE_NANOS)
                ),
                Some("max_tokens"),
            )
        })
    }
}

/// Completion tokens a request may generate on a deployment priced by `price`: its
/// `max_tokens`, else the model's output limit, else 4096 — at most [`MAX_TOKENS_CAP`] — once
/// per answer asked for (`choices`, its `n`). Budget reservations and the charge for an answer
/// of unknown size both use it.
pub fn completion_allowance(
    max_tokens: Option<u64>,
    choices: u64,
    price: Option<&switchboard_shared::price::PriceEntry>,
) -> u64 {
    max_tokens
        .or_else(|| price.and_then(|p| p.max_output_tokens.or(p.max_tokens)))
        .unwrap_or(4096)
        .min(MAX_TOKENS_CAP)
        .saturating_mul(choices.max(1))
}

/// Refuses a `max_tokens` above what `model` can generate: the largest `max_output_tokens` the
/// price catalogue gives its deployments, when every priced deployment has one (a deployment
/// without a known limit may take any). The providers refuse such a request too (OpenAI and
/// Anthropic answer 400), so the gateway does not clamp it.
pub fn check_output_limit(model: &ModelEntry, max_tokens: Option<u64>) -> Result<(), ApiError> {
    let Some(asked) = max_tokens else {
        return Ok(());
    };
    let mut limit: Option<u64> = None;
    for deployment in &model.deployments {
        match deployment.price.as_ref().map(|p| p.max_output_tokens) {
            Some(Some(most)) => limit = Some(limit.map_or(most, |l| l.max(most))),
            _ => return Ok(()),
        }
    }
    match limit {
        Some(most) if asked > most => Err(ApiError::bad_request(
            format!(
                "`max_tokens` is {asked}, above the {most} output tokens model `{}` can \
                 generate",
                model.name
            ),
            Some("max_tokens"),
        )),
        _ => Ok(()),
    }
}
