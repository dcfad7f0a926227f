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
    #[utoipa::path(post, path = "/admins", tag = "admins", params(Wait), request_body = CreateAdmin,
        responses((status = 201, body = AdminView), (status = 409, body = Problem), (status = 422, body = Problem)))]
    create create(state, caller, req: CreateAdmin) {
        caller.require_platform_admin()?;
        admins::create(state.ctx(), &caller, req)
    }
}

handler! {
    #[utoipa::path(delete, path = "/admins/{id}", tag = "admins", params(("id" = String, Path), Wait),
        responses((status = 204), (status = 404, body = Problem)))]
    delete delete(state, caller, id) {
        caller.require_platform_admin()?;
        admins::delete(state.ctx(), &caller, &id)
    }
}
