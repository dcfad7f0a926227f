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
    #[utoipa::path(post, path = "/deployments", tag = "deployments", params(Wait), request_body = DeploymentBody,
        responses((status = 201, body = DeploymentView), (status = 409, body = Problem), (status = 422, body = Problem)))]
    create create(state, caller, req: DeploymentBody) {
        caller.require_platform_admin()?;
        deployments::create(state.ctx(), &caller, req)
    }
}

handler! {
    #[utoipa::path(put, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path), Wait),
        request_body = DeploymentBody,
        responses((status = 200, body = DeploymentView), (status = 404, body = Problem), (status = 422, body = Problem)))]
    save update(state, caller, id, req: DeploymentBody) {
        caller.require_platform_admin()?;
        deployments::update(state.ctx(), &caller, &id, req)
    }
}

handler! {
    #[utoipa::path(delete, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path), Wait),
        responses((status = 204), (status = 404, body = Problem), (status = 422, body = Problem)))]
    delete delete(state, caller, id) {
        caller.require_platform_admin()?;
        crud::delete::<DeploymentRow>(state.ctx(), &caller, &id)
    }
}
