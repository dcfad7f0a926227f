//! The `deployments` section: a model name, an upstream model, a known provider, a weight,
//! caps and transforms within their bounds.

use super::{Collector, Names, check_limits};
use crate::snapshot::Deployment;

pub(super) fn check(c: &mut Collector, deployments: &[Deployment], names: &Names<'_>) {
    for (i, d) in deployments.iter().enumerate() {
        let path = format!("deployments[{i}]");
        if d.model.trim().is_empty() {
            c.push(format!("{path}.model"), "must not be empty");
        }
        if d.upstream_model.trim().is_empty() {
            c.push(format!("{path}.upstream_model"), "must not be empty");
        }
        if !names.providers.contains(d.provider.as_str()) {
            c.push(
                format!("{path}.provider"),
                format!("unknown provider {:?}", d.provider),
            );
        }
        if d.weight == 0 {
            c.push(
                format!("{path}.weight"),
                "must be at least 1 (remove the deployment to stop using it)",
            );
        }
        check_limits(c, &format!("{path}.limits"), d.limits);
        if let Some(caps) = &d.caps {
            check_caps(c, &format!("{path}.caps"), caps);
        }
        super::shaping::check_transforms(c, &format!("{path}.transforms"), &d.transforms);
    }
}

/// Caps must be positive (and finite): 0 would take the deployment out for good.
fn check_caps(c: &mut Collector, path: &str, caps: &crate::snapshot::DeploymentCaps) {
    for (field, usd) in [
        ("usd_per_day", caps.usd_per_day),
        ("usd_per_month", caps.usd_per_month),
    ] {
        if usd.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            c.push(
                format!("{path}.{field}"),
                "must be a positive number of USD",
            );
        }
    }
    for (field, n) in [
        ("requests_per_day", caps.requests_per_day),
        ("requests_per_month", caps.requests_per_month),
    ] {
        if n == Some(0) {
            c.push(
                format!("{path}.{field}"),
                "0 would take the deployment out for good; omit it for no quota",
            );
        }
    }
}
