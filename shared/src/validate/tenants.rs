//! The `tenants` section: each tenant's rate limits and budget (ids are checked with the
//! other sections' in [`super::Names`]).

use super::{Collector, check_limits_and_budget};
use crate::snapshot::Tenant;

pub(super) fn check(c: &mut Collector, tenants: &[Tenant]) {
    for (i, t) in tenants.iter().enumerate() {
        check_limits_and_budget(c, &format!("tenants[{i}]"), t.limits, t.budget.as_ref());
    }
}
