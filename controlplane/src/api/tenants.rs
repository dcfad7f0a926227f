//! Tenants: `/admin/v1/tenants`. Platform admins write; tenant admins see only their own.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::crud;
use crate::service::tenants::{self, CreateTenant, TenantRow, TenantView, UpdateTenant};

handler! { reads for anyone "tenants", "/tenants" [], "/tenants/{id}"("id"), TenantRow => TenantView }

handler! { create "tenants", "/tenants", CreateTenant => TenantView [409], by require_platform_admin, tenants::create }

handler! { save put "tenants", "/tenants/{id}", UpdateTenant => TenantView, by_id require_tenant_writer, crud::update::<TenantRow, _> }

handler! { remove "tenants", "/tenants/{id}"("id") [409], by_id require_tenant_writer, crud::delete::<TenantRow> }
