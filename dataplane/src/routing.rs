//! Routing: the order in which a model's deployments are tried.
//!
//! The strategy names the first choice; the rest of the order is where retries go. The
//! breaker and deployment limits are checked by the proxy at the moment of each attempt (a
//! deployment may cool down *during* a request), so this module only orders.
//!
//! The static strategies (`weighted_random`, `round_robin`, `priority`) read only the
//! snapshot. The dynamic ones read each deployment's [`Signals`] — load, latency, usage, cost,
//! failures — from its [`crate::fleet::DeploymentState`], which holds the cluster's view in
//! local atomics, so a decision costs a few loads and a sort of a handful of items, never a
//! Redis round trip. [`rank`] is a pure function of the signals, tested without a clock.

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::Ordering;

use switchboard_shared::snapshot::{Preference, ScoreWeights, ScoringPreset, Strategy};

use crate::catalog::{DeploymentEntry, ModelEntry};

/// What routing needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub stream: bool,
    pub prompt_tokens: u64,
    /// `max_tokens`, if the client set it.
    pub max_tokens: Option<u64>,
    pub now_ms: u64,
    /// The prompt's block keys, for `prefix_affinity` ([`crate::fleet::prefix`]).
    pub prefix_keys: &'a [u64],
}

/// Output tokens assumed for the cost of a request that does not cap them.
const ASSUMED_OUTPUT_TOKENS: u64 = 256;

/// One deployment's numbers as the dynamic strategies see them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    pub weight: u32,
    /// Requests in flight across the cluster.
    pub inflight: u64,
    /// Recent latency in ms (time to first token for streams); `None`: not measured lately.
    pub latency_ms: Option<f64>,
    /// The largest used share of its RPM/TPM limits and of the upstream's reported quota.
    pub used_share: f64,
    /// Tokens used this minute across the cluster.
    pub tokens_used: u64,
    /// Price of this request in USD; `None`: no price entry.
    pub cost: Option<f64>,
    /// Failed attempts per request this minute.
    pub failure_rate: f64,
}

/// Reads a deployment's signals.
pub fn signals(d: &DeploymentEntry, input: &RouteInput<'_>) -> Signals {
    let load = &d.state.load;
    let minute = load.this_minute(input.now_ms);
    let share = |used: u64, limit: Option<u32>| limit.map(|l| used as f64 / f64::from(l.max(1)));
    let used_share = [
        share(minute.requests, d.limits.rpm),
        share(minute.tokens, d.limits.tpm),
        d.state.quota.used_share(input.now_ms),
    ]
    .into_iter()
    .flatten()
    .fold(0.0, f64::max);
    let cost = d.price.as_ref().and_then(|p| {
        let input_rate = p.input_cost_per_token?;
        let output_rate = p.output_cost_per_token.unwrap_or(input_rate);
        let output = input.max_tokens.unwrap_or(ASSUMED_OUTPUT_TOKENS);
        Some(input_rate * input.prompt_tokens as f64 + output_rate * output as f64)
    });
    Signals {
        weight: d.weight,
        inflight: load.inflight(),
        latency_ms: if input.stream {
            load.ttft_ms(input.now_ms)
                .or_else(|| load.latency_ms(input.now_ms))
        } else {
            load.latency_ms(input.now_ms)
        },
        used_share,
        tokens_used: minute.tokens,
        cost,
        failure_rate: minute.failures as f64 / minute.requests.max(1) as f64,
    }
}

/// A deployment's signals in a few characters, for the explain header and debug log:
/// `{if=2,lat=140ms,use=35%,fail=0%,cost=3.1e-4}` (latency `-` when unmeasured; cost only
/// when priced).
pub fn describe(s: &Signals) -> String {
    let latency = s
        .latency_ms
        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}ms"));
    let cost = s.cost.map(|c| format!(",cost={c:.1e}")).unwrap_or_default();
    format!(
        "{{if={},lat={latency},use={:.0}%,fail={:.0}%{cost}}}",
        s.inflight,
        s.used_share * 100.0,
        s.failure_rate * 100.0
    )
}

/// Indexes into `model.deployments`, in the order to try them: the strategy's order, with the
/// policy's `prefer` preset's deployments moved ahead of the rest.
pub fn attempt_order(model: &ModelEntry, input: &RouteInput<'_>) -> Vec<usize> {
    let order = strategy_order(model, input);
    match model.policy.prefer {
        None => order,
        Some(preference) => prefer_first(order, |i| preferred(preference, &model.deployments[i])),
    }
}

/// Whether `d` is one `preference` puts first.
pub fn preferred(preference: Preference, d: &DeploymentEntry) -> bool {
    let tagged = |tag: &str| d.tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
    match preference {
        Preference::LocalFirst => tagged("local"),
        Preference::FreeFirst => {
            tagged("free")
                || d.price.as_ref().is_some_and(|p| {
                    p.input_cost_per_token == Some(0.0) && p.output_cost_per_token == Some(0.0)
                })
        }
    }
}

/// `order` with the items `first` holds for moved ahead, each part keeping its order.
pub fn prefer_first(order: Vec<usize>, first: impl Fn(usize) -> bool) -> Vec<usize> {
    let (mut ahead, behind): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|&i| first(i));
    ahead.extend(behind);
    ahead
}

/// The strategy's order.
fn strategy_order(model: &ModelEntry, input: &RouteInput<'_>) -> Vec<usize> {
    let n = model.deployments.len();
    if n <= 1 {
        return (0..n).collect();
    }
    match model.policy.strategy {
        Strategy::WeightedRandom => weighted_shuffle(model, (0..n).collect(), fastrand::f64),
        Strategy::RoundRobin => {
            let turn = model.rotation.fetch_add(1, Ordering::Relaxed);
            let total = if model.policy.weights_from_limits {
                model.deployments.iter().map(|d| weight_of(model, d)).sum()
            } else {
                model.total_weight
            };
            let first = weighted_pick(model, turn % total.max(1));
            (0..n).map(|i| (first + i) % n).collect()
        }
        Strategy::Priority => {
            let mut order = weighted_shuffle(model, (0..n).collect(), fastrand::f64);
            // A stable sort keeps the weighted-random order among equal priorities.
            order.sort_by_key(|&i| model.deployments[i].priority);
            order
        }
        dynamic => {
            let signals: Vec<Signals> = model
                .deployments
                .iter()
                .map(|d| signals(d, input))
                .collect();
            let weights = model
                .policy
                .scoring
                .map_or(ScoringPreset::Balanced.weights(), |s| s.weights());
            let mut order = rank(dynamic, &signals, weights, fastrand::f64);
            let buffer = model.policy.latency_buffer_pct;
            if dynamic == Strategy::LowestLatency && buffer > 0.0 {
                order = within_buffer(order, &signals, buffer, fastrand::f64);
            }
            match (dynamic, &model.prefix) {
                (Strategy::PrefixAffinity, Some(index)) => {
                    let cached = index.longest(input.prefix_keys).map(|(d, _)| d);
                    let margin = model.policy.prefix_affinity.unwrap_or_default().load_margin;
                    prefer_cached(order, &signals, cached, margin)
                }
                _ => order,
            }
        }
    }
}

/// `lowest_latency`'s buffer: the measured deployments within `pct` percent of the fastest
/// latency (the head of `order`) share the first places in a random order; the rest keep
/// theirs. An unmeasured head (measured first on purpose) is left alone.
pub fn within_buffer(
    mut order: Vec<usize>,
    signals: &[Signals],
    pct: f64,
    mut uniform: impl FnMut() -> f64,
) -> Vec<usize> {
    let latency = |i: usize| signals.get(i).and_then(|s| s.latency_ms);
    let Some(best) = order.first().and_then(|&i| latency(i)) else {
        return order;
    };
    let limit = best * (1.0 + pct / 100.0);
    let close = order
        .iter()
        .take_while(|&&i| latency(i).is_some_and(|l| l <= limit))
        .count();
    let mut keyed: Vec<(f64, usize)> = order[..close].iter().map(|&i| (uniform(), i)).collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (slot, (_, i)) in order.iter_mut().zip(keyed) {
        *slot = i;
    }
    order
}

/// Puts the deployment holding the prompt's prefix first, unless it has more than `margin`
/// requests in flight beyond the least busy one (then the least-busy order stands).
pub fn prefer_cached(
    mut order: Vec<usize>,
    signals: &[Signals],
    cached: Option<usize>,
    margin: u32,
) -> Vec<usize> {
    let Some(cached) = cached else {
        return order;
    };
    let least = signals.iter().map(|s| s.inflight).min().unwrap_or(0);
    let within_margin = signals
        .get(cached)
        .is_some_and(|s| s.inflight <= least + u64::from(margin));
    if within_margin && let Some(pos) = order.iter().position(|&i| i == cached) {
        order[..=pos].rotate_right(1);
    }
    order
}

/// Orders candidates by a dynamic strategy: best first. Ties are broken by weight (higher
/// first), then at random, so that replicas that see the same numbers do not all pick the same
/// deployment. Static strategies are not ranked here and keep their index order.
pub fn rank(
    strategy: Strategy,
    signals: &[Signals],
    weights: ScoreWeights,
    mut uniform: impl FnMut() -> f64,
) -> Vec<usize> {
    let scores: Vec<f64> = match strategy {
        Strategy::WeightedRandom | Strategy::RoundRobin | Strategy::Priority => {
            return (0..signals.len()).collect();
        }
        Strategy::LeastBusy | Strategy::PrefixAffinity => {
            signals.iter().map(|s| s.inflight as f64).collect()
        }
        // Unmeasured first, so that every deployment gets measured.
        Strategy::LowestLatency => signals
            .iter()
            .map(|s| s.latency_ms.unwrap_or(-1.0))
            .collect(),
        Strategy::LowestUsage => signals.iter().map(|s| s.used_share).collect(),
        Strategy::LowestCost => signals
            .iter()
            .map(|s| s.cost.unwrap_or(f64::INFINITY))
            .collect(),
        Strategy::WeightedScore => weighted_scores(signals, weights),
    };
    // Second key: fewer tokens this minute for lowest_usage, nothing otherwise.
    let second: Vec<f64> = match strategy {
        Strategy::LowestUsage => signals.iter().map(|s| s.tokens_used as f64).collect(),
        _ => vec![0.0; signals.len()],
    };
    let mut keyed: Vec<(f64, f64, u32, f64, usize)> = signals
        .iter()
        .enumerate()
        .map(|(i, s)| (scores[i], second[i], s.weight, uniform(), i))
        .collect();
    keyed.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.partial_cmp(&b.3).unwrap_or(CmpOrdering::Equal))
    });
    keyed.into_iter().map(|k| k.4).collect()
}

/// Each signal normalised to 0..1 across the candidates (0 the best seen, 1 the worst), then
/// summed with the weights. An unmeasured latency counts as the best (to get it measured); a
/// missing price as the worst.
fn weighted_scores(signals: &[Signals], w: ScoreWeights) -> Vec<f64> {
    /// One signal of every candidate, normalised; `missing` for a candidate without it.
    fn normalise(
        signals: &[Signals],
        signal: fn(&Signals) -> Option<f64>,
        missing: f64,
    ) -> Vec<f64> {
        let known = signals.iter().filter_map(signal);
        let (lo, hi) = known.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        signals
            .iter()
            .map(|s| match signal(s) {
                None => missing,
                Some(_) if hi <= lo => 0.0,
                Some(v) => (v - lo) / (hi - lo),
            })
            .collect()
    }
    let cost = normalise(signals, |s| s.cost, 1.0);
    let latency = normalise(signals, |s| s.latency_ms, 0.0);
    let failures = normalise(signals, |s| Some(s.failure_rate), 0.0);
    let usage = normalise(signals, |s| Some(s.used_share), 0.0);
    (0..signals.len())
        .map(|i| {
            w.cost * cost[i]
                + w.latency * latency[i]
                + w.reliability * failures[i]
                + w.headroom * usage[i]
        })
        .collect()
}

/// A deployment's weight under its model's policy: its own, or with `weights_from_limits` and
/// the default weight 1, its `rpm` (else `tpm / 1000`, at least 1).
pub fn weight_of(model: &ModelEntry, d: &DeploymentEntry) -> u64 {
    if !model.policy.weights_from_limits || d.weight != 1 {
        return u64::from(d.weight);
    }
    match (d.limits.rpm, d.limits.tpm) {
        (Some(rpm), _) => u64::from(rpm),
        (None, Some(tpm)) => (u64::from(tpm) / 1000).max(1),
        (None, None) => 1,
    }
}

/// The deployment whose cumulative-weight interval contains `point` (in `0..total_weight`).
fn weighted_pick(model: &ModelEntry, point: u64) -> usize {
    let mut cumulative = 0u64;
    for (i, d) in model.deployments.iter().enumerate() {
        cumulative += weight_of(model, d);
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
            let w = weight_of(model, &model.deployments[i]).max(1) as f64;
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
    use crate::catalog::Catalog;
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
        crate::catalog::build_for_test(&Snapshot::from_yaml(&yaml).unwrap(), &|_| None).unwrap()
    }

    fn input() -> RouteInput<'static> {
        RouteInput {
            stream: false,
            prompt_tokens: 100,
            max_tokens: Some(100),
            now_ms: crate::fleet::unix_ms(),
            prefix_keys: &[],
        }
    }

    fn sig() -> Signals {
        Signals {
            weight: 1,
            inflight: 0,
            latency_ms: Some(100.0),
            used_share: 0.0,
            tokens_used: 0,
            cost: Some(0.01),
            failure_rate: 0.0,
        }
    }

    /// The order `strategy` gives `signals`, with the balanced preset.
    fn order(strategy: Strategy, signals: &[Signals]) -> Vec<usize> {
        let weights = ScoringPreset::Balanced.weights();
        rank(strategy, signals, weights, fastrand::f64)
    }

    fn first(strategy: Strategy, signals: &[Signals]) -> usize {
        order(strategy, signals)[0]
    }

    /// One candidate per value, each [`sig`] with `set` applied.
    fn each<T: Copy>(values: &[T], set: impl Fn(&mut Signals, T)) -> Vec<Signals> {
        let one = |v| {
            let mut s = sig();
            set(&mut s, v);
            s
        };
        values.iter().copied().map(one).collect()
    }

    #[test]
    fn least_busy_picks_the_fewest_in_flight_and_breaks_ties_by_weight() {
        let s = each(&[3, 1, 2], |s, v| s.inflight = v);
        assert_eq!(order(Strategy::LeastBusy, &s), vec![1, 2, 0]);
        let tie = each(&[1, 5, 2], |s, v| s.weight = v);
        assert_eq!(first(Strategy::LeastBusy, &tie), 1);
    }

    #[test]
    fn equal_candidates_share_the_first_place() {
        let s = [sig(), sig()];
        let firsts: usize = (0..400).map(|_| first(Strategy::LeastBusy, &s)).sum();
        assert!(
            (100..300).contains(&firsts),
            "{firsts} of 400 went to the second"
        );
    }

    #[test]
    fn lowest_latency_picks_the_fastest_but_measures_the_unmeasured_first() {
        let s = each(&[Some(300.0), Some(20.0)], |s, v| s.latency_ms = v);
        assert_eq!(first(Strategy::LowestLatency, &s), 1);
        let s = each(&[Some(20.0), None], |s, v| s.latency_ms = v);
        assert_eq!(first(Strategy::LowestLatency, &s), 1);
    }

    #[test]
    fn a_latency_buffer_spreads_the_first_place_over_the_nearly_fastest() {
        let s = each(&[Some(100.0), Some(108.0), Some(150.0), None], |s, v| {
            s.latency_ms = v
        });
        // Unmeasured first without a buffer; with one, the buffer only applies to a measured
        // head.
        let ranked = order(Strategy::LowestLatency, &s);
        assert_eq!(ranked[0], 3);
        assert_eq!(within_buffer(ranked, &s, 10.0, fastrand::f64)[0], 3);
        let s = &s[..3];
        let mut firsts = [0usize; 3];
        for _ in 0..400 {
            let ranked = order(Strategy::LowestLatency, s);
            let buffered = within_buffer(ranked, s, 10.0, fastrand::f64);
            assert_eq!(buffered[2], 2, "150 ms is outside 10% of 100 ms");
            firsts[buffered[0]] += 1;
        }
        assert!(firsts[0] > 120 && firsts[1] > 120, "{firsts:?}");
        // Without a buffer the fastest always wins.
        for _ in 0..50 {
            assert_eq!(first(Strategy::LowestLatency, s), 0);
        }
        // A buffer of 60% takes in the third too.
        let wide = (0..300)
            .filter(|_| {
                within_buffer(order(Strategy::LowestLatency, s), s, 60.0, fastrand::f64)[0] == 2
            })
            .count();
        assert!(wide > 50, "{wide}");
    }

    #[test]
    fn free_first_and_local_first_put_their_deployments_ahead() {
        crate::install_crypto_provider();
        let yaml = "providers: [{ id: p, kind: mock }]\ndeployments:\n\
            - { id: paid, model: m, provider: p, upstream_model: u, priority: 0, price: { input_cost_per_token: 0.001, output_cost_per_token: 0.002 } }\n\
            - { id: zero, model: m, provider: p, upstream_model: u, priority: 1, price: { input_cost_per_token: 0.0, output_cost_per_token: 0.0 } }\n\
            - { id: tagged, model: m, provider: p, upstream_model: u, priority: 2, tags: [Free, local] }\n\
            models: [{ model: m, strategy: priority, prefer: PREFER }]\n";
        let ids = |prefer: &str| {
            let yaml = yaml.replace("PREFER", prefer);
            let c = crate::catalog::build_for_test(&Snapshot::from_yaml(&yaml).unwrap(), &|_| None)
                .unwrap();
            let m = c.model("m").unwrap();
            attempt_order(m, &input())
                .into_iter()
                .map(|i| m.deployments[i].id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("free_first"), ["zero", "tagged", "paid"]);
        assert_eq!(ids("local_first"), ["tagged", "paid", "zero"]);
        assert_eq!(
            prefer_first(vec![3, 1, 2, 0], |i| i % 2 == 0),
            vec![2, 0, 3, 1]
        );
    }

    #[test]
    fn lowest_usage_picks_the_most_headroom_then_fewest_tokens() {
        let s = each(&[(0.9, 10), (0.2, 900)], |s, (share, tokens)| {
            s.used_share = share;
            s.tokens_used = tokens;
        });
        assert_eq!(first(Strategy::LowestUsage, &s), 1);
        let s = each(&[900, 10], |s, v| s.tokens_used = v);
        assert_eq!(first(Strategy::LowestUsage, &s), 1);
    }

    #[test]
    fn lowest_cost_picks_the_cheapest_and_puts_unpriced_last() {
        let s = each(&[None, Some(0.5), Some(0.1)], |s, v| s.cost = v);
        assert_eq!(order(Strategy::LowestCost, &s), vec![2, 1, 0]);
    }

    #[test]
    fn weighted_score_follows_its_preset() {
        // Cheap but slow against fast but dear.
        let s = [
            Signals {
                cost: Some(0.001),
                latency_ms: Some(2000.0),
                ..sig()
            },
            Signals {
                cost: Some(0.010),
                latency_ms: Some(200.0),
                ..sig()
            },
        ];
        let by = |preset: ScoringPreset| {
            rank(Strategy::WeightedScore, &s, preset.weights(), fastrand::f64)[0]
        };
        assert_eq!(by(ScoringPreset::CostFirst), 0);
        assert_eq!(by(ScoringPreset::SpeedFirst), 1);
        // Reliability: an otherwise equal deployment that fails loses.
        let s = [
            Signals {
                failure_rate: 0.5,
                ..sig()
            },
            Signals {
                failure_rate: 0.0,
                ..sig()
            },
        ];
        assert_eq!(first(Strategy::WeightedScore, &s), 1);
        // Explicit weights: headroom only.
        let w = ScoreWeights {
            cost: 0.0,
            latency: 0.0,
            reliability: 0.0,
            headroom: 1.0,
        };
        let s = [
            Signals {
                used_share: 0.8,
                cost: Some(0.0),
                ..sig()
            },
            Signals {
                used_share: 0.1,
                cost: Some(9.0),
                ..sig()
            },
        ];
        assert_eq!(rank(Strategy::WeightedScore, &s, w, fastrand::f64)[0], 1);
    }

    #[test]
    fn signals_are_described_compactly() {
        assert_eq!(
            describe(&Signals {
                inflight: 2,
                latency_ms: Some(140.4),
                used_share: 0.35,
                cost: Some(0.00031),
                ..sig()
            }),
            "{if=2,lat=140ms,use=35%,fail=0%,cost=3.1e-4}"
        );
        assert_eq!(
            describe(&Signals {
                latency_ms: None,
                cost: None,
                ..sig()
            }),
            "{if=0,lat=-,use=0%,fail=0%}"
        );
    }

    #[test]
    fn prefix_affinity_keeps_the_cache_unless_it_is_too_busy() {
        let s = each(&[0, 3, 9], |s, v| s.inflight = v);
        let least_busy = vec![0, 1, 2];
        assert_eq!(
            prefer_cached(least_busy.clone(), &s, Some(1), 4),
            vec![1, 0, 2]
        );
        assert_eq!(
            prefer_cached(least_busy.clone(), &s, Some(2), 4),
            least_busy,
            "9 in flight is more than 4 beyond the least busy"
        );
        assert_eq!(prefer_cached(least_busy.clone(), &s, None, 4), least_busy);
    }

    #[test]
    fn prefix_affinity_follows_the_index() {
        crate::install_crypto_provider();
        let c = model("prefix_affinity", &[(1, 0), (1, 0), (1, 0)]);
        let m = c.model("m").unwrap();
        let keys = crate::fleet::prefix::block_keys("t", &[7u8; 2048], 512);
        let index = m.prefix.as_ref().unwrap();
        index.record(&keys, 2);
        let input = RouteInput {
            prefix_keys: &keys,
            ..input()
        };
        for _ in 0..20 {
            assert_eq!(attempt_order(m, &input)[0], 2);
        }
    }

    /// The cost of one decision, printed: `cargo test --release -p switchboard-dataplane --lib
    /// routing::tests::decision_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn decision_cost() {
        crate::install_crypto_provider();
        for strategy in [
            "weighted_random",
            "least_busy",
            "lowest_latency",
            "weighted_score",
            "prefix_affinity",
        ] {
            let c = model(strategy, &[(1, 0), (2, 0), (3, 0), (1, 1), (1, 2)]);
            let m = c.model("m").unwrap();
            let keys = crate::fleet::prefix::block_keys("t", &[1u8; 4096], 512);
            let input = RouteInput {
                prefix_keys: &keys,
                ..input()
            };
            let rounds = 200_000u32;
            let started = std::time::Instant::now();
            let mut sink = 0usize;
            for _ in 0..rounds {
                sink += attempt_order(m, &input)[0];
            }
            let per = started.elapsed() / rounds;
            eprintln!("{strategy}: {per:?} per decision (5 deployments) [{sink}]");
        }
    }

    #[test]
    fn lowest_latency_uses_time_to_first_token_for_streams() {
        crate::install_crypto_provider();
        let c = model("lowest_latency", &[(1, 0), (1, 0)]);
        let m = c.model("m").unwrap();
        let now = input().now_ms;
        let (d0, d1) = (&m.deployments[0].state.load, &m.deployments[1].state.load);
        d0.record_latency(50.0, now);
        d0.record_ttft(500.0, now);
        d1.record_latency(300.0, now);
        d1.record_ttft(20.0, now);
        let stream = RouteInput {
            stream: true,
            ..input()
        };
        for _ in 0..10 {
            assert_eq!(attempt_order(m, &input())[0], 0, "whole answers: d0");
            assert_eq!(attempt_order(m, &stream)[0], 1, "first tokens: d1");
        }
    }

    #[test]
    fn signals_read_the_deployment_state() {
        crate::install_crypto_provider();
        let c = model("least_busy", &[(1, 0), (1, 0)]);
        let m = c.model("m").unwrap();
        let _busy = crate::fleet::InFlight::new(std::sync::Arc::clone(&m.deployments[0].state));
        for _ in 0..20 {
            assert_eq!(attempt_order(m, &input())[0], 1, "the idle one");
        }
        let now = input().now_ms;
        m.deployments[1].state.load.record_latency(50.0, now);
        assert_eq!(signals(&m.deployments[1], &input()).latency_ms, Some(50.0));
        assert_eq!(signals(&m.deployments[0], &input()).inflight, 1);
    }

    fn first_choice_counts(catalog: &Catalog, rounds: usize) -> Vec<usize> {
        let m = catalog.model("m").unwrap();
        let mut counts = vec![0; m.deployments.len()];
        for _ in 0..rounds {
            let order = attempt_order(m, &input());
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
    fn weights_come_from_rpm_and_tpm_when_none_is_set() {
        crate::install_crypto_provider();
        let yaml = "providers: [{ id: p, kind: mock }]\ndeployments:\n\
            - { id: small, model: m, provider: p, upstream_model: u, limits: { rpm: 100 } }\n\
            - { id: big, model: m, provider: p, upstream_model: u, limits: { tpm: 300000 } }\n\
            models: [{ model: m, strategy: STRATEGY, weights_from_limits: true }]\n";
        let build = |strategy: &str| {
            let yaml = yaml.replace("STRATEGY", strategy);
            crate::catalog::build_for_test(&Snapshot::from_yaml(&yaml).unwrap(), &|_| None).unwrap()
        };
        let c = build("weighted_random");
        let m = c.model("m").unwrap();
        assert_eq!(weight_of(m, &m.deployments[0]), 100);
        assert_eq!(weight_of(m, &m.deployments[1]), 300, "300000 tpm / 1000");
        let counts = first_choice_counts(&c, 20_000);
        let share = counts[1] as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.03, "share of `big`: {share}");
        let c = build("round_robin");
        let m = c.model("m").unwrap();
        let bigs = (0..400)
            .filter(|_| attempt_order(m, &input())[0] == 1)
            .count();
        assert_eq!(bigs, 300, "round robin by derived weights");
    }

    #[test]
    fn round_robin_rotates_by_weight() {
        crate::install_crypto_provider();
        let c = model("round_robin", &[(1, 0), (2, 0)]);
        let m = c.model("m").unwrap();
        let firsts: Vec<usize> = (0..6).map(|_| attempt_order(m, &input())[0]).collect();
        assert_eq!(firsts, vec![0, 1, 1, 0, 1, 1]);
        assert_eq!(
            attempt_order(m, &input()),
            vec![0, 1],
            "the others follow as retries"
        );
    }

    #[test]
    fn priority_tries_lower_numbers_first() {
        crate::install_crypto_provider();
        let c = model("priority", &[(1, 2), (1, 0), (5, 1), (1, 0)]);
        let m = c.model("m").unwrap();
        for _ in 0..100 {
            let order = attempt_order(m, &input());
            let priorities: Vec<u32> = order.iter().map(|&i| m.deployments[i].priority).collect();
            assert_eq!(priorities, vec![0, 0, 1, 2]);
        }
    }
}
