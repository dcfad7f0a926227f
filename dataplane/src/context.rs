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
use switchboard_shared::budget::usd_to_nanos;
use switchboard_shared::usage::Usage;

use crate::catalog::{KeyEntry, ModelEntry};
use crate::providers::Endpoint;
use crate::request::RequestView;
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
}

impl RequestFacts {
    /// The most this request can cost on any of the model's deployments, in nano-dollars:
    /// its prompt estimate plus its completion allowance at the dearest price.
    pub fn max_cost_nanos(&self) -> i64 {
        let most = self
            .model
            .deployments
            .iter()
            .filter_map(|d| d.price.as_ref())
            .map(|price| {
                let usage = Usage {
                    prompt_tokens: self.prompt_estimate,
                    completion_tokens: completion_allowance(self.max_tokens, Some(price)),
                    ..Usage::default()
                };
                switchboard_shared::pricing::cost(&usage, price)
            })
            .fold(0.0, f64::max);
        usd_to_nanos(most)
    }
}

/// Completion tokens a request may generate on a deployment priced by `price`: its
/// `max_tokens`, else the model's output limit, else 4096. Budget reservations and the
/// charge for an answer of unknown size both use it.
pub fn completion_allowance(
    max_tokens: Option<u64>,
    price: Option<&switchboard_shared::price::PriceEntry>,
) -> u64 {
    max_tokens
        .or_else(|| price.and_then(|p| p.max_output_tokens.or(p.max_tokens)))
        .unwrap_or(4096)
}
