//! Virtual keys: `/admin/v1/keys`. The secret is returned once, by create and rotate (whose
//! optional grace window keeps the old secret working a while). Tenant
//! admins see and change only their tenant's keys; another tenant's key is 404.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::crud;
use crate::service::keys::{self, CreateKey, KeyRow, KeyView, KeyWithSecret, RotateKey, UpdateKey};

handler! { reads for anyone "keys", "/keys" [], "/keys/{id}"("id"), KeyRow => KeyView }

handler! {
    create "keys", "/keys", CreateKey => KeyWithSecret [], by require_writer, keys::create, with pepper
}

handler! { save patch "keys", "/keys/{id}", UpdateKey => KeyView, by require_writer, crud::update::<KeyRow, _> }

handler! { remove "keys", "/keys/{id}"("id") [], by require_writer, crud::delete::<KeyRow> }

handler! {
    #[utoipa::path(post, path = "/keys/{id}/revoke", tag = "keys", params(("id" = String, Path), Wait),
        responses((status = 200, body = KeyView), (status = 404, body = Problem)))]
    act revoke(state, caller, id) {
        caller.require_writer()?;
        keys::revoke(state.ctx(), &caller, &id)
    }
}

handler! {
    @fn #[utoipa::path(post, path = "/keys/{id}/rotate", tag = "keys", params(("id" = String, Path), Wait),
        request_body(content = Option<RotateKey>, description = "Optional: no body rotates without a grace window"),
        responses((status = 200, body = KeyWithSecret), (status = 404, body = Problem), (status = 409, body = Problem),
            (status = 422, body = Problem)))]
    rotate(state, caller, ::axum::extract::Path(id) => ::axum::extract::Path<String>,
        wait => super::Wait, super::body::OrDefault(req) => super::body::OrDefault<RotateKey>)
        -> ::axum::response::Response {
        caller.require_writer()?;
        let done = keys::rotate(state.ctx(), &caller, &state.settings.pepper, &id, req).await?;
        Ok(super::answer(&state, wait, ::axum::http::StatusCode::OK, done).await)
    }
}
