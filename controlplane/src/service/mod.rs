//! The service layer: the control plane's rules, one module per resource, between the admin
//! API ([`crate::api`]) above and the repository ([`crate::repo`]) below. It knows nothing of
//! HTTP: it is given an [`Actor`] (who, role, tenant scope) and a [`Ctx`], and answers views
//! or an [`Error`] that the API maps to a status. The CLI and the bootstrap call it directly.
//!
//! - [`auth`]: roles, the [`Actor`], passwords, tokens, login; [`error`]: the domain error.
//! - [`write`](mod@write): the one write path — revision bump, rows, audit row, snapshot build and
//!   validation, commit, publish; [`crud`]: what every resource's reads and writes share.
//! - [`snapshot`]: building a snapshot from Postgres; [`reconcile`]: the loop that keeps the
//!   published head up with Postgres (publishing itself is [`crate::publish`], a transport).
//! - Resources: [`tenants`], [`keys`], [`providers`], [`deployments`], [`models`],
//!   [`admins`], [`budgets`], [`prices`] (sync and override commands; the read model that
//!   snapshots use is [`price_book`]), [`spend`], [`fleet`] (with the audit log and the
//!   revision), [`requests`] (the request log), [`health`] (deployment health from the data
//!   planes' shared state and the request log) and [`test_call`] (a deployment's test call).
//! - [`litellm`]: `controlplane import litellm`, a LiteLLM proxy config written as providers,
//!   deployments and model policies through the resources above.
//!
//! Views and request bodies carry their OpenAPI schema (`utoipa::ToSchema`) where they are
//! defined, here: the audit log records exactly what the API shows.

pub mod admins;
pub mod auth;
pub mod budgets;
pub mod crud;
pub mod dead_letters;
pub mod deployments;
pub mod error;
pub mod fleet;
pub mod health;
pub mod keys;
pub mod litellm;
pub mod login_guard;
pub mod models;
pub mod price_book;
pub mod prices;
pub mod providers;
pub mod reconcile;
pub mod requests;
pub mod snapshot;
pub mod spend;
pub mod tenants;
pub mod test_call;
pub mod write;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

pub use auth::{Actor, Role};
pub use error::{Error, FieldError, Result};

use crate::publish::Publisher;
use crate::repo::ListFilter;

/// Where a service call reads and writes: the pool, and the publisher that a committed write
/// hands its snapshot to (`None` outside a server — the CLI — where a running server's
/// reconcile loop publishes the new revision).
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub pool: &'a PgPool,
    pub publisher: Option<&'a Arc<Publisher>>,
}

/// A list's paging, as asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paging {
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

impl Paging {
    pub fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100))
    }

    pub fn offset(&self) -> i64 {
        i64::try_from(self.offset.unwrap_or(0)).unwrap_or(i64::MAX)
    }

    /// The rows to read: one more than the page (to know whether another follows), confined
    /// to a tenant and filtered by one.
    pub fn rows<'a>(
        &self,
        confined_to: Option<&'a str>,
        tenant_id: Option<&'a str>,
    ) -> ListFilter<'a> {
        ListFilter {
            confined_to,
            tenant_id,
            limit: self.limit() + 1,
            offset: self.offset(),
        }
    }

    /// The page from `limit + 1` fetched rows.
    pub fn page<R, T>(&self, mut rows: Vec<R>, view: impl Fn(&R) -> T) -> Page<T> {
        let limit = usize::try_from(self.limit()).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        Page {
            next_offset: more.then(|| self.offset.unwrap_or(0) + limit as u64),
            items: rows.iter().map(view).collect(),
        }
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Offset of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
}

/// Runs `job` every `interval`, the first time at once, until `shutdown` (a late tick waits
/// rather than bursts): the periodic jobs' timer (budget counters, scheduled price sync).
pub async fn every<F: std::future::Future<Output = ()>>(
    interval: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
    mut job: impl FnMut() -> F,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        job().await;
    }
}

/// For `PATCH` bodies: distinguishes an absent field (`None`) from `null` (`Some(None)`).
pub fn double_option<'de, T, D>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as Deserialize>::deserialize(d).map(Some)
}

// Limits are parsed straight into `shared::snapshot::RateLimits`; this type only documents
// them in the OpenAPI document (the api tests keep the two alike).
/// Requests and tokens per minute and requests in flight of a tenant, key or deployment;
/// absent or `null` means unlimited. Unknown fields are refused.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RateLimits)]
#[allow(dead_code)]
pub struct RateLimitsBody {
    /// Requests per minute.
    #[schema(example = 600)]
    rpm: Option<u32>,
    /// Tokens (prompt and completion) per minute.
    #[schema(example = 100000)]
    tpm: Option<u32>,
    /// Requests in flight at once, across every replica (at least 1).
    #[schema(example = 8, minimum = 1)]
    concurrency: Option<u32>,
}

/// Operator-chosen ids (tenants, providers, deployments): 1–64 of `[A-Za-z0-9._-]`.
pub fn check_id(path: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            path,
            "must be 1-64 characters of letters, digits, '.', '_' or '-'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use switchboard_shared::snapshot::RateLimits;
    use utoipa::PartialSchema;

    use super::price_book::tests::{documented, written};

    #[test]
    fn the_documented_limits_are_the_stored_ones() {
        let stored = RateLimits {
            rpm: Some(1),
            tpm: Some(1),
            concurrency: Some(1),
        };
        assert_eq!(written(stored), documented(super::RateLimitsBody::schema()));
    }
}
