//! The request log: a filtered, newest-first listing with an opaque cursor, and one request
//! with its attempt timeline and (for tenants that opted in) its captured content. A tenant
//! admin sees only its own tenant's requests; another tenant's request is "not found".

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Actor, Ctx, Error, Result};
use crate::repo;
pub use crate::repo::requests::{ContentRow, RequestRow};

/// The largest page.
pub const MAX_LIMIT: i64 = 500;

/// What to list (all optional).
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub tenant_id: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub deployment_id: Option<String>,
    pub status: Option<i16>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub client_request_id: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// One page of requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestPage {
    pub data: Vec<RequestRow>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One request with its captured content, if any.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestDetail {
    #[serde(flatten)]
    pub request: RequestRow,
    /// Present only for a tenant that opted in to content capture, within its retention.
    pub content: Option<ContentRow>,
}

/// The cursor is the last row's position: its start in microseconds and its id.
fn encode_cursor(row: &RequestRow) -> String {
    format!("{}.{}", row.started_at.timestamp_micros(), row.request_id)
}

fn decode_cursor(text: &str) -> Result<(DateTime<Utc>, &str)> {
    let bad = || Error::invalid("cursor", "not a cursor this API gave");
    let (micros, id) = text.split_once('.').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((at, id))
}

/// One page of the request log, newest first.
pub async fn list(cx: Ctx<'_>, actor: &Actor, q: &Query) -> Result<RequestPage> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::invalid("limit", "must be 1 to 500"));
    }
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let filter = repo::requests::Filter {
        confined_to: actor.confined_to(),
        tenant_id: q.tenant_id.as_deref(),
        key_id: q.key_id.as_deref(),
        model: q.model.as_deref(),
        deployment_id: q.deployment_id.as_deref(),
        status: q.status,
        from: q.from,
        to: q.to,
        client_request_id: q.client_request_id.as_deref(),
        after,
        // One more than asked, to know whether a next page exists.
        limit: limit + 1,
    };
    let mut data = repo::requests::list(cx.pool, &filter).await?;
    let more = data.len() as i64 > limit;
    data.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more.then(|| data.last().map(encode_cursor)).flatten();
    Ok(RequestPage { data, next_cursor })
}

/// One request, with its content when it was captured.
pub async fn get(cx: Ctx<'_>, actor: &Actor, id: &str) -> Result<RequestDetail> {
    let request = repo::requests::get(cx.pool, id, actor.confined_to())
        .await?
        .ok_or_else(|| Error::NotFound(format!("request {id}")))?;
    let content = repo::requests::content(cx.pool, id, &request.tenant_id).await?;
    Ok(RequestDetail { request, content })
}
