//! Tenants: `/admin/v1/tenants`. Platform admins write; tenant admins see only their own.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::crud;
use crate::service::tenants::{self, CreateTenant, TenantRow, TenantView, UpdateTenant};

handler! { reads for anyone "tenants", "/tenants" [], "/tenants/{id}"("id"), TenantRow => TenantView }

handler! {
    #[utoipa::path(post, path = "/tenants", tag = "tenants", params(Wait), request_body = CreateTenant,
        responses((status = 201, body = TenantView), (status = 409, body = Problem), (status = 422, body = Problem)))]
    create create(state, caller, req: CreateTenant) {
        caller.require_platform_admin()?;
        tenants::create(state.ctx(), &caller, req)
    }
}

handler! {
    #[utoipa::path(put, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path), Wait),
        request_body = UpdateTenant,
        responses((status = 200, body = TenantView), (status = 404, body = Problem), (status = 422, body = Problem)))]
    save update(state, caller, id, req: UpdateTenant) {
        caller.require_tenant_writer(&id)?;
        tenants::update(state.ctx(), &caller, &id, req)
    }
}

handler! {
    #[utoipa::path(delete, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path), Wait),
        responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
    delete delete(state, caller, id) {
        caller.require_tenant_writer(&id)?;
        crud::delete::<TenantRow>(state.ctx(), &caller, &id)
    }
}
