//! `GET /admin/v1/dead-letters`: usage events ingestion could not store, with their reason
//! (platform admins only).

use super::error::Problem;
use super::{ListParams, Page, handler};
use crate::service::dead_letters::{self, DeadLetter};

handler! {
    #[utoipa::path(get, path = "/dead-letters", tag = "status", params(ListParams),
        responses((status = 200, body = Page<DeadLetter>), (status = 403, body = Problem)))]
    page list(state, caller, params) -> DeadLetter {
        dead_letters::list(state.ctx(), &caller, params.paging())
    }
}
