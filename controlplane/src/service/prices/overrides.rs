//! Price overrides: the admin commands that set and remove them, each inside a [`Write`]
//! (revision bump, audit row, snapshot validation, publish) — the only code that writes
//! `price_overrides`. [`put`] and [`remove`] are the admin API's; [`set_override`] and
//! [`delete_override`] are writes of their own for callers without a request (the CLI, tests).

use sqlx::{PgConnection, PgPool};
use switchboard_shared::price::PriceEntry;

use crate::repo;
use crate::service::price_book::{ModelPrice, OverrideView, model_price_in};
use crate::service::write::{Change, Committed, Write};
use crate::service::{Actor, Ctx, Error, Result, Role};

/// The audit log's `object_type` of overrides.
const OVERRIDE_OBJECT_TYPE: &str = "price_override";
/// Longest model name an override may have (LiteLLM's longest is about 100 characters).
pub const MAX_MODEL_CHARS: usize = 256;

/// The override of `model`, locked (inside a write).
async fn load_override(conn: &mut PgConnection, model: &str) -> Result<Option<OverrideView>> {
    Ok(repo::prices::get_override(conn, model, true)
        .await?
        .map(OverrideView::from))
}

/// A model name an override may be set for: 1–256 characters, no control characters, no
/// surrounding spaces. Anything else LiteLLM uses (`/`, `:`, `@`, `.`) is fine.
pub fn check_model_name(model: &str) -> Result<()> {
    let ok = !model.is_empty()
        && model.chars().count() <= MAX_MODEL_CHARS
        && model.trim() == model
        && !model.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "model",
            format!(
                "must be 1-{MAX_MODEL_CHARS} characters without control characters or \
                 surrounding spaces"
            ),
        ))
    }
}

/// Sets (or replaces) the override of `model` inside an admin write, with its audit row:
/// the one way an override is written. Returns the override it replaced, and the new one.
///
/// An override replaces the file's entry as a whole, so it must carry at least one of
/// `input_cost_per_token` and `output_cost_per_token` (422 otherwise): an entry of limits
/// alone would make the model free.
pub async fn set_override_in(
    w: &mut Write,
    model: &str,
    entry: &PriceEntry,
) -> Result<(Option<OverrideView>, OverrideView)> {
    check_model_name(model)?;
    if entry.input_cost_per_token.is_none() && entry.output_cost_per_token.is_none() {
        return Err(Error::invalid(
            "",
            "an override replaces the whole entry: set input_cost_per_token or \
             output_cost_per_token (0 for free)",
        ));
    }
    let before = load_override(w.conn(), model).await?;
    let actor = w.actor().to_owned();
    let (updated_by, updated_at) =
        repo::prices::put_override(w.conn(), model, entry, &actor).await?;
    let after = OverrideView {
        entry: entry.clone(),
        updated_by,
        updated_at,
    };
    let action = if before.is_some() { "update" } else { "create" };
    w.audit(Change::of(
        action,
        OVERRIDE_OBJECT_TYPE,
        model,
        None,
        before.as_ref(),
        Some(&after),
    ))
    .await?;
    Ok((before, after))
}

/// Removes the override of `model` inside an admin write, with its audit row; 404 when there
/// is none. Returns the removed override.
pub async fn delete_override_in(w: &mut Write, model: &str) -> Result<OverrideView> {
    let before = load_override(w.conn(), model)
        .await?
        .ok_or_else(|| Error::not_found("price override", model))?;
    repo::prices::delete(w.conn(), model).await?;
    w.audit(Change::of(
        "delete",
        OVERRIDE_OBJECT_TYPE,
        model,
        None,
        Some(&before),
        None,
    ))
    .await?;
    Ok(before)
}

/// The actor a write outside a request is made as: a platform admin named `updated_by`.
fn offline_actor(updated_by: &str) -> Actor {
    Actor {
        id: None,
        email: updated_by.to_owned(),
        role: Role::PlatformAdmin,
        tenant_id: None,
    }
}

/// [`set_override_in`] as a write of its own, without a request (the CLI, tests): a running
/// server's reconcile loop publishes the new revision.
pub async fn set_override(
    pool: &PgPool,
    model: &str,
    entry: &PriceEntry,
    updated_by: &str,
) -> Result<Committed> {
    let mut w = Write::begin(pool, &offline_actor(updated_by)).await?;
    set_override_in(&mut w, model, entry).await?;
    w.commit(None, None).await
}

/// [`delete_override_in`] as a write of its own; false (and nothing written) when there was
/// no override.
pub async fn delete_override(pool: &PgPool, model: &str) -> Result<bool> {
    let mut w = Write::begin(pool, &Actor::system()).await?;
    match delete_override_in(&mut w, model).await {
        Ok(_) => {
            w.commit(None, None).await?;
            Ok(true)
        }
        // Dropping the write rolls its revision bump back.
        Err(Error::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets (or replaces) the override of `model` and publishes; the model's price as written,
/// and whether the override is new.
pub async fn put(
    cx: Ctx<'_>,
    actor: &Actor,
    model: &str,
    entry: &PriceEntry,
) -> Result<(ModelPrice, Committed, bool)> {
    let mut w = Write::begin(cx.pool, actor).await?;
    let (before, _) = set_override_in(&mut w, model, entry).await?;
    let view = model_price_in(w.conn(), model)
        .await?
        .ok_or_else(|| Error::Internal(format!("the override of {model:?} is not there")))?;
    let committed = w.commit(cx.publisher, None).await?;
    Ok((view, committed, before.is_none()))
}

/// Removes the override of `model` and publishes; not found when there is none.
pub async fn remove(cx: Ctx<'_>, actor: &Actor, model: &str) -> Result<Committed> {
    let mut w = Write::begin(cx.pool, actor).await?;
    delete_override_in(&mut w, model).await?;
    w.commit(cx.publisher, None).await
}
