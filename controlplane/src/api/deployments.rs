//! Deployments: `/admin/v1/deployments`, each a provider plus the model name it knows.

use super::error::Problem;
use super::{ListParams, Page, Wait, handler};
use crate::service::crud;
use crate::service::deployments::{self, DeploymentBody, DeploymentRow, DeploymentView};

handler! {
    reads for platform_readers "deployments", "/deployments" [], "/deployments/{id}"("id"),
    DeploymentRow => DeploymentView
}

handler! {
    create "deployments", "/deployments", DeploymentBody => DeploymentView [409],
    by require_platform_admin, deployments::create
}

handler! {
    save put "deployments", "/deployments/{id}", DeploymentBody => DeploymentView,
    by require_platform_admin, deployments::update
}

handler! {
    remove "deployments", "/deployments/{id}"("id") [422], by require_platform_admin,
    crud::delete::<DeploymentRow>
}
