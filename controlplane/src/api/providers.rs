//! Providers: `/admin/v1/providers`, platform-wide. The upstream credentials are write-only.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::crud;
use crate::service::providers::{
    self, CreateProvider, ProviderRow, ProviderRules, ProviderView, UpdateProvider,
};

handler! {
    reads for platform_readers "providers", "/providers" [, (status = 403, body = Problem)],
    "/providers/{id}"("id"), ProviderRow => ProviderView
}

handler! {
    #[utoipa::path(post, path = "/providers", tag = "providers", params(Wait),
        request_body = CreateProvider,
        responses((status = 201, body = ProviderView), (status = 409, body = Problem),
            (status = 422, body = Problem)))]
    create create(state, caller, req: CreateProvider) {
        caller.require_platform_admin()?;
        providers::create(state.ctx(), &caller, rules(&state), req)
    }
}

handler! {
    #[utoipa::path(put, path = "/providers/{id}", tag = "providers",
        params(("id" = String, Path), Wait), request_body = UpdateProvider,
        responses((status = 200, body = ProviderView), (status = 404, body = Problem),
            (status = 422, body = Problem)))]
    save update(state, caller, id, req: UpdateProvider) {
        caller.require_platform_admin()?;
        providers::update(state.ctx(), &caller, rules(&state), &id, req)
    }
}

/// The settings provider writes follow.
fn rules(state: &crate::state::AppState) -> ProviderRules<'_> {
    ProviderRules {
        keys: &state.settings.master_keys,
        urls: &state.settings.providers,
    }
}

handler! {
    remove "providers", "/providers/{id}"("id") [409], by require_platform_admin,
    crud::delete::<ProviderRow>
}
