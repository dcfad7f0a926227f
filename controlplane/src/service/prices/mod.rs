//! Model prices: LiteLLM's `model_prices_and_context_window.json`, synced into Postgres as
//! versions, with admin overrides on top.
//!
//! A sync reads the file (from a URL or a path), parses every entry with
//! `shared::price::parse_price_file` — an entry with a supported field of the wrong type fails
//! the whole sync, naming the model and field, and nothing is stored — and stores it as a new
//! version only when its content changed (by SHA-256); a file equal to a stored version only
//! refreshes that version's `checked_at`. The current version is the one synced last (latest
//! `checked_at`), so a source that rolls back to an earlier file rolls prices back too. The
//! [`VERSIONS_KEPT`] most recently synced versions are kept.
//!
//! The effective price of a model is its override if one exists, else its entry in the current
//! version. Snapshots carry each deployment's effective price (for its `upstream_model`,
//! unless the deployment sets its own), so the data planes price requests without ever seeing
//! this table; a new version or an override change bumps the config revision for that reason.
//!
//! This module syncs the file (and runs the scheduled sync); [`overrides`] holds the override
//! commands, admin changes like any other: they run inside a [`super::write::Write`] (revision
//! bump, audit row, snapshot validation, publish) and are the only code that writes
//! `price_overrides`. The read model — effective prices (which the snapshot build uses), one
//! model's two layers, the versions, the models nothing prices — is [`super::price_book`].
//!
//! Scheduled syncs run on every control-plane replica's timer but only one replica does the
//! work: each run takes a Postgres advisory lock ([`SYNC_LOCK`], [`crate::db::with_try_lock`])
//! and skips when another replica holds it.
//!
//! The source is untrusted input: the body is read in chunks and refused past
//! [`MAX_FILE_BYTES`] whatever its `content-length` says; redirects are followed only to the
//! same host ([`http_client`]); `prices.allowed_hosts`, when set, names the only hosts a sync
//! may read from ([`check_source`]), scheduled or on demand. Every sync, done or failed, is
//! audited (`action` `sync` or `sync_failed`, object `price_version`, actor `system` for the
//! schedule and the CLI) without the file's content or the URL's credentials.

pub mod overrides;

use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use switchboard_shared::price::parse_price_file;
use utoipa::ToSchema;

use super::reconcile::reconcile;
use super::{Actor, Ctx, Error, Result};
use crate::repo;

pub use super::price_book::{effective_prices, missing_models};
pub use overrides::{delete_override, set_override};

/// Price versions kept in Postgres.
pub const VERSIONS_KEPT: i64 = 5;
/// The advisory lock key of the scheduled price sync ("SBPRICES" in ASCII).
pub const SYNC_LOCK: i64 = 0x5342_5052_4943_4553;
/// Largest price file accepted (the real one is about 1.5 MB).
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;
/// Why a sync failed. Never holds the file's content.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot read {source_name}: {message}")]
    Fetch {
        source_name: String,
        message: String,
    },
    #[error("{source_name} is not a valid price file: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SyncOutcome {
    pub version_id: i64,
    /// False when the file was unchanged since the version it matched.
    pub new_version: bool,
    pub entries: usize,
}

/// Syncs from a file on disk.
pub async fn sync_from_file(
    pool: &PgPool,
    path: &std::path::Path,
) -> Result<SyncOutcome, SyncError> {
    let source_name = path.display().to_string();
    let bytes = tokio::fs::read(path).await.map_err(|e| SyncError::Fetch {
        source_name: source_name.clone(),
        message: e.to_string(),
    })?;
    store(pool, &source_name, &bytes).await
}

/// Syncs from an HTTP(S) URL. The version's `source` (and any error) names the URL without
/// its user, password, query or fragment, where credentials of a private mirror would be.
pub async fn sync_from_url(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
) -> Result<SyncOutcome, SyncError> {
    let source_name = redact_url(url);
    let fetch_error = |message: String| SyncError::Fetch {
        source_name: source_name.clone(),
        message,
    };
    let mut response = client
        .get(url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| fetch_error(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(fetch_error(format!("HTTP {}", response.status())));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_FILE_BYTES as u64)
    {
        return Err(fetch_error(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fetch_error(e.without_url().to_string()))?
    {
        if bytes.len() + chunk.len() > MAX_FILE_BYTES {
            return Err(fetch_error(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    store(pool, &source_name, &bytes).await
}

/// Most redirects a sync follows.
const MAX_REDIRECTS: usize = 5;

/// The HTTP client of price syncs: follows at most [`MAX_REDIRECTS`] redirects, and only to
/// the host it started from (never from `https` to `http`), so a source cannot send the
/// control plane to another host.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let to = attempt.url();
        let same_host = attempt.previous().first().is_some_and(|from| {
            from.host_str() == to.host_str() && !(from.scheme() == "https" && to.scheme() == "http")
        });
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if same_host {
            attempt.follow()
        } else {
            attempt.error("a redirect to another host was refused")
        }
    });
    reqwest::Client::builder().redirect(policy).build()
}

pub use crate::config::check_price_source as check_source;

/// Appends the audit row of one sync (`actor`: who asked; the schedule and the CLI are
/// `system`). Never holds the file's content nor the URL's credentials. A failure to audit
/// is logged, not raised: the sync itself is done.
pub async fn audit_sync(
    pool: &PgPool,
    actor: &Actor,
    source: &str,
    result: Result<&SyncOutcome, &SyncError>,
) {
    let revision = repo::revision::current(pool).await.unwrap_or(0);
    let source = if source.contains("://") {
        redact_url(source)
    } else {
        source.to_owned()
    };
    let (action, object_id, after) = match result {
        Ok(o) => (
            "sync",
            o.version_id.to_string(),
            serde_json::json!({"source": source, "version_id": o.version_id,
                "new_version": o.new_version, "entries": o.entries}),
        ),
        Err(e) => {
            let error = match e {
                SyncError::Fetch { .. } => "the source could not be read",
                SyncError::Invalid { .. } => "not a valid price file",
                SyncError::Db(_) => "database error",
            };
            let after = serde_json::json!({"source": source, "error": error});
            ("sync_failed", String::new(), after)
        }
    };
    let entry = repo::audit::NewEntry {
        actor_id: actor.id,
        actor: &actor.email,
        action,
        object_type: "price_version",
        object_id: &object_id,
        tenant_id: None,
        revision: i64::try_from(revision).unwrap_or(i64::MAX),
        before: None,
        after: Some(after),
    };
    if let Err(e) = repo::audit::insert(pool, entry).await {
        tracing::warn!(error = %e, "price sync not audited");
    }
}

/// `url` without user, password, query and fragment.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "(an invalid URL)".to_owned(),
    }
}

/// Parses, validates and stores a price file's bytes.
pub async fn store(
    pool: &PgPool,
    source_name: &str,
    bytes: &[u8],
) -> Result<SyncOutcome, SyncError> {
    let invalid = |message: String| SyncError::Invalid {
        source_name: source_name.to_owned(),
        message,
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(invalid(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
    let entries = parse_price_file(text).map_err(invalid)?;
    if entries.is_empty() {
        return Err(invalid("no model entries".into()));
    }
    let sha256 = hex::encode(Sha256::digest(bytes));

    let mut tx = pool.begin().await?;
    if let Some(version_id) = repo::prices::touch_version(&mut *tx, &sha256, source_name).await? {
        tx.commit().await?;
        return Ok(SyncOutcome {
            version_id,
            new_version: false,
            entries: entries.len(),
        });
    }
    let mut models = Vec::with_capacity(entries.len());
    let mut values = Vec::with_capacity(entries.len());
    for (model, entry) in &entries {
        models.push(model.as_str());
        values.push(serde_json::to_value(entry).unwrap_or_default());
    }
    let version_id = repo::prices::insert_version(
        &mut tx,
        source_name,
        &sha256,
        &models,
        &values,
        VERSIONS_KEPT,
    )
    .await?;
    // Deployments without a price of their own carry the effective price in snapshots, so a
    // price change is a config change (the reconcile loop publishes the new snapshot).
    repo::revision::bump(&mut *tx).await?;
    tx.commit().await?;
    Ok(SyncOutcome {
        version_id,
        new_version: true,
        entries: entries.len(),
    })
}

/// One scheduled sync, done only if this replica gets the advisory lock. `Ok(None)`: another
/// replica is syncing.
pub async fn sync_once_locked(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
) -> Result<Option<SyncOutcome>, SyncError> {
    crate::db::with_try_lock(pool, SYNC_LOCK, sync_from_url(pool, client, url)).await
}

/// Syncs from `url` every `every` until `shutdown`, one replica at a time. Failures are
/// logged; the last good version keeps pricing.
pub async fn run_scheduled(
    pool: PgPool,
    client: reqwest::Client,
    url: String,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (pool, client, url) = (&pool, &client, &url);
    super::every(every, shutdown, move || async move {
        let result = sync_once_locked(pool, client, url).await;
        match &result {
            Ok(Some(o)) => audit_sync(pool, &Actor::system(), url, Ok(o)).await,
            Err(e) => audit_sync(pool, &Actor::system(), url, Err(e)).await,
            Ok(None) => {}
        }
        match result {
            Ok(Some(o)) => tracing::info!(
                version = o.version_id,
                new = o.new_version,
                entries = o.entries,
                "price sync done"
            ),
            Ok(None) => tracing::debug!("price sync skipped: another replica holds the lock"),
            Err(e) => tracing::warn!(error = %e, "price sync failed; keeping the current prices"),
        }
    })
    .await;
}

/// How long a sync on demand waits for the new snapshot's publication at most.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// A sync on demand from `url` (else `configured`, the `prices.url` setting), one replica at a
/// time (a conflict while another syncs). A new version is published at once rather than at
/// the next reconcile.
pub async fn sync_now(
    cx: Ctx<'_>,
    actor: &Actor,
    url: Option<String>,
    configured: &crate::config::PricesConfig,
) -> Result<SyncOutcome> {
    let url = url
        .or_else(|| configured.url.clone())
        .ok_or_else(|| Error::invalid("url", "is required: no prices.url is configured"))?;
    if let Some(problem) = check_source(&url, &configured.allowed_hosts) {
        return Err(Error::invalid("url", problem));
    }
    let client = http_client().map_err(|e| Error::Internal(format!("price client: {e}")))?;
    let result = match sync_once_locked(cx.pool, &client, &url).await {
        Ok(None) => return Err(Error::Conflict("another price sync is running".into())),
        Ok(Some(outcome)) => Ok(outcome),
        Err(e) => Err(e),
    };
    audit_sync(cx.pool, actor, &url, result.as_ref()).await;
    let outcome = result.map_err(sync_error)?;
    tracing::info!(
        actor = %actor.email,
        version = outcome.version_id,
        new = outcome.new_version,
        entries = outcome.entries,
        "price sync on demand done"
    );
    if outcome.new_version
        && let Some(publisher) = cx.publisher
    {
        // A new version bumped the revision: publish it now rather than at the next reconcile.
        let _ = tokio::time::timeout(PUBLISH_WAIT, reconcile(cx.pool, publisher)).await;
    }
    Ok(outcome)
}

/// What the client may learn of a failed sync: never the file's content (an invalid file's
/// problem names its models and values), nor the URL (it may hold credentials).
fn sync_error(e: SyncError) -> Error {
    match e {
        SyncError::Fetch { message, .. } => {
            Error::Upstream(format!("the price source could not be read: {message}"))
        }
        SyncError::Invalid { .. } => {
            tracing::warn!(error = %e, "price sync on demand refused the file");
            Error::invalid(
                "url",
                "the file there is not a valid price file (the control plane's log says why)",
            )
        }
        SyncError::Db(e) => Error::from(e),
    }
}
