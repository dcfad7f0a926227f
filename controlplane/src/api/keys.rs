//! Virtual keys: `/admin/v1/keys`. The secret is returned once, by create and rotate. Tenant
//! admins see and change only their tenant's keys; another tenant's key is 404.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::crud;
use crate::service::keys::{self, CreateKey, KeyRow, KeyView, KeyWithSecret, UpdateKey};

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
    #[utoipa::path(post, path = "/keys/{id}/rotate", tag = "keys", params(("id" = String, Path), Wait),
        responses((status = 200, body = KeyWithSecret), (status = 404, body = Problem), (status = 409, body = Problem)))]
    act rotate(state, caller, id) {
        caller.require_writer()?;
        keys::rotate(state.ctx(), &caller, &state.settings.pepper, &id)
    }
}
