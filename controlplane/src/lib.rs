//! Switchboard's control plane: Postgres holds the truth, admins change it through a REST
//! API, and every committed change becomes a snapshot pushed to every data plane.
//!
//! - [`config`]: the YAML file + `SWITCHBOARD__*` overrides, checked into [`config::Settings`].
//! - [`db`]: embedded migrations (`migrations/`), the pool, one-row reads with and without
//!   `FOR UPDATE` ([`db::ById`]) and the advisory lock of one-replica jobs.
//! - [`auth`]: argon2id passwords, HS256 JWTs, roles and the [`auth::Caller`] extractor.
//! - [`error`], [`body`]: problem-JSON errors and the JSON extractor that reports field paths.
//! - [`api`]: one module of handlers per resource, and what they share ([`api::crud`]: reading
//!   one object, a page, the write tail); [`routes`]: the route table + OpenAPI.
//! - [`write`]: the one write path — revision bump, change, audit row, snapshot validation,
//!   commit, then publish.
//! - [`rows`]: how tables map to API views and snapshot types; [`snapshot`]: building one.
//! - [`publish`]: the NATS JetStream publisher (`docs/cluster.md`), reconcile loop and the
//!   `watch` of the latest snapshot; [`grpc`]: the ConfigService served from that watch.
//! - [`fleet`]: data-plane heartbeats, `GET /admin/v1/fleet` and `?wait_ms=`.
//! - [`ingest`]: usage events from JetStream into day-partitioned spend rows, exactly once.
//! - [`prices`]: LiteLLM's price file synced into versioned rows, with admin overrides (written
//!   only through [`write`]); effective prices, versions and the models nothing prices.
//! - [`budgets`]: who has a budget and what it spent this period per Postgres (the admin
//!   budget routes' service), and [`budgets::counters`], which raises the data planes' Redis
//!   budget counters to at least that, one replica at a time.
//! - [`server`]: [`serve`] starts all of it in-process (the binary and the tests use it).
//!
//! Why writes bump the revision first: the `UPDATE config_revision` takes the row lock, which
//! serialises admin writes, so the snapshot a write builds inside its own transaction is
//! exactly the state at its revision. Admin writes are rare; consistency is worth it.

pub mod api;
pub mod auth;
pub mod body;
pub mod budgets;
pub mod config;
pub mod db;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod ingest;
pub mod prices;
pub mod publish;
pub mod routes;
pub mod rows;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod write;

pub use server::{Running, serve};

use auth::{Caller, Role};

/// Bootstrap variables for the first admin.
pub const BOOTSTRAP_EMAIL_ENV: &str = "SWITCHBOARD_BOOTSTRAP_ADMIN_EMAIL";
pub const BOOTSTRAP_PASSWORD_ENV: &str = "SWITCHBOARD_BOOTSTRAP_ADMIN_PASSWORD";

/// Creates a platform admin from the bootstrap variables when both are set and no admin
/// exists yet. Returns whether one was created.
pub async fn bootstrap_admin(
    pool: &sqlx::PgPool,
    env: &[(String, String)],
) -> Result<bool, error::ApiError> {
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Some(email), Some(password)) = (get(BOOTSTRAP_EMAIL_ENV), get(BOOTSTRAP_PASSWORD_ENV))
    else {
        return Ok(false);
    };
    if api::admins::any_admin(pool).await? {
        return Ok(false);
    }
    let req = api::admins::CreateAdmin {
        email,
        password,
        role: Role::PlatformAdmin,
        tenant_id: None,
    };
    api::admins::create_admin(pool, None, &Caller::system(), req).await?;
    Ok(true)
}
