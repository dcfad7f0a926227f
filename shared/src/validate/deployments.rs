//! The `deployments` section: a model name, an upstream model, a known provider, a weight.

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
    }
}
