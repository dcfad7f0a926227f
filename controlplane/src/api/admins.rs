//! Admin users: `/admin/v1/admins`, platform admins only — except
//! `POST /admins/{id}/revoke-sessions`, which any admin may call for itself.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::admins::{self, AdminView, CreateAdmin, UpdateAdmin};

handler! {
    #[utoipa::path(get, path = "/admins", tag = "admins", params(ListParams),
        responses((status = 200, body = Page<AdminView>), (status = 403, body = Problem)))]
    page list(state, caller, params) -> AdminView {
        caller.require_platform_reader()?;
        admins::list(state.ctx(), params.paging(), params.tenant_id.as_deref())
    }
}

handler! {
    create "admins", "/admins", CreateAdmin => AdminView [409], by require_platform_admin, admins::create
}

handler! { remove "admins", "/admins/{id}"("id") [], by require_platform_admin, admins::delete }

handler! {
    save patch "admins", "/admins/{id}", UpdateAdmin => AdminView, by require_platform_admin, admins::update
}

handler! {
    #[utoipa::path(post, path = "/admins/{id}/revoke-sessions", tag = "admins",
        params(("id" = String, Path), Wait),
        responses((status = 200, body = AdminView), (status = 404, body = Problem)))]
    act revoke_sessions(state, caller, id) {
        admins::revoke_sessions(state.ctx(), &caller, &id)
    }
}
