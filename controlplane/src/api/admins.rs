//! Admin users: `/admin/v1/admins`, platform admins only.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::admins::{self, AdminView, CreateAdmin};

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
