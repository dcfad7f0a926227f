//! `GET` and `DELETE /v1/responses/{id}`: a key's tenant's stored responses.
//!
//! Why a module of its own: these routes do not forward anything (no routing, no quota), they
//! read the store that [`crate::responses`] fills; `POST /v1/responses` itself goes through
//! [`crate::handlers`] like chat. A key reaches only its own tenant's responses: any other id
//! is a 404 in OpenAI's shape, the same as an unknown one.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;
use crate::handlers::caller;
use crate::state::AppState;

/// Ids are short; a longer one cannot be stored and is not looked up.
const MAX_ID_CHARS: usize = 200;

fn not_found(id: &str) -> ApiError {
    ApiError::ResponseNotFound {
        id: id.chars().take(100).collect(),
        previous: false,
    }
}

/// The calling key's tenant, for an id that may exist (401 without a valid key, 404 for an
/// id too long to be one).
fn tenant_of(state: &AppState, headers: &HeaderMap, id: &str) -> Result<String, ApiError> {
    let (_, key) = caller(state, headers)?;
    if id.len() > MAX_ID_CHARS {
        return Err(not_found(id));
    }
    Ok(key.tenant.tenant.id.clone())
}

/// `GET /v1/responses/{id}`: the stored response object.
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&state, &headers, &id)?;
    match state.responses.get(&tenant, &id).await? {
        Some(record) => Ok(Json(record["response"].clone()).into_response()),
        None => Err(not_found(&id)),
    }
}

/// `DELETE /v1/responses/{id}`: forgets a stored response.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&state, &headers, &id)?;
    if state.responses.delete(&tenant, &id).await? {
        Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
    } else {
        Err(not_found(&id))
    }
}
