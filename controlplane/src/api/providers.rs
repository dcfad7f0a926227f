//! Providers: `/admin/v1/providers`, platform-wide. The upstream credentials are write-only.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::crud;
use crate::service::providers::{self, CreateProvider, ProviderRow, ProviderView, UpdateProvider};

handler! {
    reads for platform_readers "providers", "/providers" [, (status = 403, body = Problem)],
    "/providers/{id}"("id"), ProviderRow => ProviderView
}

handler! {
    create "providers", "/providers", CreateProvider => ProviderView [409], by require_platform_admin,
    providers::create, with master_keys
}

handler! {
    save put "providers", "/providers/{id}", UpdateProvider => ProviderView, by require_platform_admin,
    providers::update, with master_keys
}

handler! {
    remove "providers", "/providers/{id}"("id") [409], by require_platform_admin,
    crud::delete::<ProviderRow>
}
