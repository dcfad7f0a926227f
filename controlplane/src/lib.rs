//! Switchboard's control plane: Postgres holds the truth, admins change it through a REST
//! API, and every committed change becomes a snapshot pushed to every data plane.
//!
//! Three layers, each importing only downward (`api` → `service` → `repo`):
//! - [`api`]: the admin REST API — axum extractors ([`api::caller::Caller`],
//!   [`api::body::Body`]), one module of handlers per resource with their OpenAPI
//!   annotations, and [`api::error::ApiError`] with its status table. A handler parses, checks
//!   the caller's role, calls one service function and shapes the answer; no SQL.
//!   [`routes`]: the route table + OpenAPI document; [`state`]: what handlers share.
//! - [`service`]: the rules, one module per resource (ids, secrets, validation), the one write
//!   path ([`service::write`]: revision bump, rows, audit row, snapshot build and validation,
//!   commit, publish), snapshot building and the reconcile loop, prices (sync, read model,
//!   override commands) and budgets. It is given a plain [`service::Actor`] (who, role,
//!   tenant scope), which the CLI and the bootstrap make without axum, and answers a domain
//!   [`service::Error`].
//! - [`repo`]: every SQL statement, one module per table group, checked at compile time with
//!   sqlx's macros against the metadata in `controlplane/.sqlx/` (a build needs no database).
//!
//! Beside them, low-level modules any layer may use: [`config`] (the YAML file +
//! `SWITCHBOARD__*` overrides, checked into [`config::Settings`]), [`db`] (migrations, the
//! pool, the advisory lock of one-replica jobs), [`fleet`] (data-plane heartbeats and
//! `?wait_ms=`), [`metrics`] (the Prometheus exposition at `/metrics`), [`doctor`] (`controlplane doctor`: every dependency checked, a fix per
//! failure); and transports: [`publish`] (the NATS JetStream publisher of
//! `docs/cluster.md` and the `watch` of the latest snapshot), [`grpc`] (the ConfigService
//! served from that watch), [`ingest`] (usage events from JetStream into day-partitioned spend
//! rows, exactly once). [`server`]: [`serve`] starts all of it in-process (the binary and the
//! tests use it).
//!
//! Why writes bump the revision first: the `UPDATE config_revision` takes the row lock, which
//! serialises admin writes, so the snapshot a write builds inside its own transaction is
//! exactly the state at its revision. Admin writes are rare; consistency is worth it.

pub mod api;
pub mod config;
pub mod db;
pub mod doctor;
pub mod fleet;
pub mod grpc;
pub mod ingest;
pub mod metrics;
pub mod publish;
pub mod repo;
pub mod routes;
pub mod server;
pub mod service;
pub mod state;
pub mod ui;

pub use server::{Running, serve};

/// Bootstrap variables for the first admin.
pub const BOOTSTRAP_EMAIL_ENV: &str = "SWITCHBOARD_BOOTSTRAP_ADMIN_EMAIL";
pub const BOOTSTRAP_PASSWORD_ENV: &str = "SWITCHBOARD_BOOTSTRAP_ADMIN_PASSWORD";

/// Creates a platform admin from the bootstrap variables when both are set and no admin
/// exists yet. Returns whether one was created.
pub async fn bootstrap_admin(
    pool: &sqlx::PgPool,
    env: &[(String, String)],
) -> Result<bool, service::Error> {
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Some(email), Some(password)) = (get(BOOTSTRAP_EMAIL_ENV), get(BOOTSTRAP_PASSWORD_ENV))
    else {
        return Ok(false);
    };
    service::admins::bootstrap(pool, email, password).await
}
