//! Switchboard's shared vocabulary: everything the data plane and the control plane must agree
//! on, and nothing that talks to a network.
//!
//! - [`snapshot`]: the versioned, hashed config document a data plane runs on (schema v1):
//!   tenants, virtual keys, providers, deployments, per-model routing policies, prices.
//! - [`validate`]: checks a snapshot as a whole and reports *every* problem with its path,
//!   one module per snapshot section (tenants, keys, providers, deployments, models).
//! - [`shaping`]: transforms (body edits per model or deployment) and content rules (which
//!   model an alias's request goes to), declared in the snapshot.
//! - [`secret`]: references to secrets (an environment variable or an inline value), so that a
//!   standalone file need not hold an upstream credential.
//! - [`layered_config`]: config files with `SWITCHBOARD__*` environment overrides.
//! - [`keys`]: virtual-key hashing (HMAC-SHA-256 with a server pepper) and display prefixes.
//! - [`price`]: one model's price entry, spelled with the field names of LiteLLM's
//!   `model_prices_and_context_window.json`.
//! - [`pricing`]: `cost(usage, price)` — token counts times a price entry, tiers included.
//! - [`usage`]: token usage and the per-request record that the data plane emits.
//! - [`budget`]: calendar-aligned budget periods in a time zone, and nano-dollar money.
//! - [`sealed`]: AES-256-GCM sealing of upstream credentials under rotatable master keys.
//! - [`cluster`]: NATS subjects, JetStream names and messages between the planes.
//! - [`cluster_trust`]: snapshot signatures (Ed25519) and the ingest tags of usage events and
//!   heartbeats (HMAC), so that neither plane trusts a message for arriving on NATS or gRPC.
//! - [`doctor`]: the report of the `doctor` commands of both planes (checks, fixes, exit).
//! - [`fleet_keys`]: Redis keys of the deployment state that data-plane replicas share.
//! - `redis_conn` (feature `redis`): one Redis connection for a single server, a Redis Cluster
//!   or a Sentinel-managed master, used by both planes.
//! - [`proto`]: the generated gRPC `ConfigService` (from `proto/`).
//!
//! Offline by default: the generated gRPC client and server need only tonic's codegen, so
//! `cargo build -p switchboard-shared` compiles no hyper, h2 or socket code (`.ci/run` checks
//! this with `cargo tree`). The `transport` feature adds the generated client's `connect(url)`,
//! and with it tonic's network transport, for the code that dials a control plane by URL.
//!
//! Why one crate: a snapshot written by the control plane must be read bit-for-bit the same way
//! by every data plane, and a cost computed in one place must equal the cost computed in the
//! other. Keeping the types and the arithmetic here makes that true by construction.

pub mod budget;
pub mod cluster;
pub mod cluster_trust;
pub mod config_delta;
pub mod doctor;
pub mod fleet_keys;
pub mod keys;
pub mod layered_config;
pub mod price;
pub mod pricing;
#[cfg(feature = "redis")]
pub mod redis_conn;
pub mod sealed;
pub mod secret;
pub mod shaping;
pub mod snapshot;
#[cfg(feature = "otel")]
pub mod telemetry;
pub mod usage;
pub mod validate;

/// Generated from `proto/switchboard/config/v1/config.proto`; `ConfigServiceClient::connect`
/// exists only with the `transport` feature (see the crate header).
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod proto {
    tonic::include_proto!("switchboard.config.v1");
}
