//! Routing: the order in which a model's deployments are tried.
//!
//! The strategy names the first choice; the rest of the order is where retries go. Cooldowns
//! and deployment limits are checked by the proxy at the moment of each attempt (a deployment
//! may cool down *during* a request), so this module only orders — it is pure, cheap and
//! testable without a clock.

use std::sync::atomic::Ordering;

use switchboard_shared::snapshot::Strategy;

use crate::catalog::ModelEntry;

/// Indexes into `model.deployments`, in the order to try them.
pub fn attempt_order(model: &ModelEntry) -> Vec<usize> {
    let n = model.deployments.len();
    if n <= 1 {
        return (0..n).collect();
    }
    match model.policy.strategy {
        Strategy::WeightedRandom => weighted_shuffle(model, (0..n).collect(), fastrand::f64),
        Strategy::RoundRobin => {
            let turn = model.rotation.fetch_add(1, Ordering::Relaxed);
            let first = weighted_pick(model, turn % model.total_weight.max(1));
            (0..n).map(|i| (first + i) % n).collect()
        }
        Strategy::Priority => {
            let mut order = weighted_shuffle(model, (0..n).collect(), fastrand::f64);
            // A stable sort keeps the weighted-random order among equal priorities.
            order.sort_by_key(|&i| model.deployments[i].priority);
            order
        }
    }
}

/// The deployment whose cumulative-weight interval contains `point` (in `0..total_weight`).
fn weighted_pick(model: &ModelEntry, point: u64) -> usize {
    let mut cumulative = 0u64;
    for (i, d) in model.deployments.iter().enumerate() {
        cumulative += u64::from(d.weight);
        if point < cumulative {
            return i;
        }
    }
    model.deployments.len().saturating_sub(1)
}

/// A weighted random permutation (Efraimidis–Spirakis): each item draws `u^(1/w)` and the
/// largest draws go first, so the first place falls to each item in proportion to its weight.
fn weighted_shuffle(
    model: &ModelEntry,
    mut items: Vec<usize>,
    mut uniform: impl FnMut() -> f64,
) -> Vec<usize> {
    let mut keys: Vec<(f64, usize)> = items
        .iter()
        .map(|&i| {
            let w = f64::from(model.deployments[i].weight.max(1));
            (uniform().powf(1.0 / w), i)
        })
        .collect();
    keys.sort_by(|a, b| b.0.total_cmp(&a.0));
    items.clear();
    items.extend(keys.into_iter().map(|(_, i)| i));
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{BuildContext, Catalog};
    use switchboard_shared::snapshot::Snapshot;

    fn model(strategy: &str, weights_priorities: &[(u32, u32)]) -> Catalog {
        let deployments: String = weights_priorities
            .iter()
            .enumerate()
            .map(|(i, (w, p))| {
                format!("  - {{ id: d{i}, model: m, provider: p, upstream_model: u, weight: {w}, priority: {p} }}\n")
            })
            .collect();
        let yaml = format!(
            "providers: [{{ id: p, kind: mock }}]\ndeployments:\n{deployments}models: [{{ model: m, strategy: {strategy} }}]\n"
        );
        let snapshot = Snapshot::from_yaml(&yaml).unwrap();
        let client = crate::providers::client::build(
            crate::providers::client::ClientSettings {
                connect_timeout: std::time::Duration::from_secs(1),
                pool_idle_timeout: std::time::Duration::from_secs(1),
                pool_max_idle_per_host: 1,
            },
            Vec::new(),
        )
        .unwrap();
        Catalog::build(
            &snapshot,
            &BuildContext {
                pepper: b"p",
                client: &client,
                env: &|_| None,
                master_keys: None,
                previous: None,
            },
        )
        .unwrap()
    }

    fn first_choice_counts(catalog: &Catalog, rounds: usize) -> Vec<usize> {
        let m = catalog.model("m").unwrap();
        let mut counts = vec![0; m.deployments.len()];
        for _ in 0..rounds {
            let order = attempt_order(m);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..m.deployments.len()).collect::<Vec<_>>(),
                "a permutation"
            );
            counts[order[0]] += 1;
        }
        counts
    }

    #[test]
    fn weighted_random_follows_the_weights() {
        crate::install_crypto_provider();
        let c = model("weighted_random", &[(1, 0), (3, 0)]);
        let counts = first_choice_counts(&c, 20_000);
        let share = counts[1] as f64 / 20_000.0;
        assert!(
            (share - 0.75).abs() < 0.03,
            "share of the weight-3 deployment: {share}"
        );
    }

    #[test]
    fn round_robin_rotates_by_weight() {
        crate::install_crypto_provider();
        let c = model("round_robin", &[(1, 0), (2, 0)]);
        let m = c.model("m").unwrap();
        let firsts: Vec<usize> = (0..6).map(|_| attempt_order(m)[0]).collect();
        assert_eq!(firsts, vec![0, 1, 1, 0, 1, 1]);
        assert_eq!(attempt_order(m), vec![0, 1], "the others follow as retries");
    }

    #[test]
    fn priority_tries_lower_numbers_first() {
        crate::install_crypto_provider();
        let c = model("priority", &[(1, 2), (1, 0), (5, 1), (1, 0)]);
        let m = c.model("m").unwrap();
        for _ in 0..100 {
            let order = attempt_order(m);
            let priorities: Vec<u32> = order.iter().map(|&i| m.deployments[i].priority).collect();
            assert_eq!(priorities, vec![0, 0, 1, 2]);
        }
    }
}
