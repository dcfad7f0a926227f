//! Switchboard's data plane: the request path of the gateway.
//!
//! A request walks these phases, each owned by one module:
//!
//! 1. [`auth`] — the virtual key from `Authorization`/`x-api-key`, hashed and looked up in the
//!    [`catalog`] (the compiled [`switchboard_shared::snapshot::Snapshot`] held by [`state`]).
//! 2. [`request`] — the few body fields the gateway needs, parsed without building a tree.
//!    With the model resolved ([`selectors`]), [`context`] holds the request as one value that
//!    every later phase borrows (the ledger shares its facts, not the body, through one `Arc`).
//! 3. [`quota`] — one [`quota::Ticket`] holds every rate limit and budget the request is
//!    subject to: the key's and tenant's, taken at admission in one call (one Redis script call
//!    for both, or this process's atomics without Redis, all or nothing), the deployment's,
//!    charged per attempt, and all settled once when the request ends. [`limits`] owns
//!    requests and tokens per minute for key, tenant and deployment, in process or shared by
//!    all replicas through Redis (with a degraded mode while Redis is down); [`budget`] spend
//!    per key and tenant per period, in Redis or (without it) per replica in process.
//!    Before admission, [`cache`] may answer from the exact response cache (a model or key
//!    that opted in); a hit reaches no upstream and is charged nothing.
//! 4. [`routing`] — the order in which the model's deployments are tried, after [`selectors`]
//!    (content rules from [`rules`], tags, model groups, capabilities, session affinity)
//!    narrow them.
//! 5. [`proxy`] — attempts (each body shaped by the model's and deployment's transforms,
//!    [`request::RequestView::transformed`]), retries, fallbacks, timeouts and circuit
//!    breakers, through a provider adaptor ([`providers`]), which answers in the client's
//!    protocol (translating where the deployment speaks another); each deployment's load,
//!    latency, breaker and quota live in [`fleet`], which owns them: the loop reports each
//!    attempt's outcome there (`record`), and a background task shares them across replicas
//!    through Redis.
//! 6. [`relay`] — streamed answers passed on as they arrive, usage read from the stream;
//!    [`sse`] cuts every upstream event stream into events (CRLF, LF and CR, linear time).
//! 7. [`accounting`] — the request's `Ledger`: usage, cost, the ticket's settlement and the
//!    usage record (a complete answer is validated and its usage found by [`json_scan`],
//!    serde reading only the usage), which [`usage_publisher`] sends to the control plane over NATS JetStream
//!    in cluster mode.
//!
//! Around them: [`handlers`] strings the phases together per route, [`routes`] is the route
//! table and layer stack, [`error`] the one error type (OpenAI's shape; Anthropic's on
//! `/v1/messages`), [`responses`] the Responses API's stored responses and
//! [`responses_http`] its `GET`/`DELETE` routes, [`count_tokens`] Anthropic's token
//! counting, [`passthrough`] metered passthrough routes, [`media`] the image and audio endpoints (OpenAI-compatible deployments, priced per image, second and character), [`metrics`] every metric name, [`config`] the two-stage config,
//! [`shared_redis`] the connection to the state that replicas share, [`webhooks`] signed
//! budget alerts, [`clock`] the wall clock budgets read (movable in tests), and [`server`]
//! start, reload and drain. In cluster mode, [`cluster`] receives
//! snapshots from the control plane (NATS, gRPC, an on-disk cache) and reports this replica's
//! revision in heartbeats.
//!
//! Why it is built this way: nothing on the request path takes a lock, touches a disk or
//! waits on a database (the one mutex, over in-process budget counters, is taken only when a
//! subject's current period is not cached yet: once per subject and period). The snapshot is swapped atomically (`ArcSwap`), counters are atomics
//! that live beside what they count, and the body is forwarded as received except for the
//! model name — the gateway should cost microseconds, not milliseconds.

pub mod accounting;
pub mod auth;
pub mod budget;
pub mod cache;
pub mod caps;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod concurrency;
pub mod config;
pub mod context;
pub mod count_tokens;
pub mod doctor;
pub mod error;
pub mod fleet;
pub mod handlers;
pub mod json_scan;
pub mod limits;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod observed;
pub mod passthrough;
pub mod providers;
pub mod proxy;
pub mod quota;
pub mod relay;
pub mod request;
pub mod responses;
pub mod responses_http;
pub mod routes;
pub mod routing;
pub mod rules;
pub mod selectors;
pub mod server;
pub mod shared_redis;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod usage_publisher;
pub mod webhooks;

pub use routes::router;
pub use server::{Options, build_state, build_state_with_keys, serve, serve_until};

/// Installs rustls's ring provider as the process default, once. Every TLS user in the
/// process (the upstream client today; Postgres and NATS clients share the choice) must agree
/// on one provider, and building a TLS config without one panics.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
