//! The `models` section: one policy per public name; a policy names a served model or is a
//! group of served models; fallbacks lead somewhere else that exists; retries, timeouts,
//! scoring, prefix affinity and cooldown are within their bounds and read by the strategy;
//! transforms and content rules pass [`super::shaping`].

use std::collections::HashMap;

use super::{Collector, MAX_RETRIES, Names};
use crate::snapshot::{MAX_WAIT_FOR_COOLDOWN_MS, ModelPolicy, ScoreWeights, Strategy};

pub(super) fn check(c: &mut Collector, models: &[ModelPolicy], names: &Names<'_>) {
    let mut policy_seen: HashMap<&str, usize> = HashMap::new();
    for (i, m) in models.iter().enumerate() {
        let path = format!("models[{i}]");
        if let Some(first) = policy_seen.insert(m.model.as_str(), i) {
            c.push(
                format!("{path}.model"),
                format!("second policy for {:?} (first at models[{first}])", m.model),
            );
        }
        check_name(c, &path, m, names);
        check_fallbacks(c, &path, m, names);
        check_attempts(c, &path, m);
        check_strategy_settings(c, &path, m);
        check_cooldown(c, &path, m);
        super::shaping::check_transforms(c, &format!("{path}.transforms"), &m.transforms);
        super::shaping::check_rules(c, &path, m, models, names);
        if let Some(cache) = &m.cache {
            super::cache::check(c, &format!("{path}.cache"), cache, false);
        }
    }
}

/// A policy names a model that deployments serve, or is a group with a name of its own whose
/// members deployments serve; `tag:` names are taken.
fn check_name(c: &mut Collector, path: &str, m: &ModelPolicy, names: &Names<'_>) {
    if m.members.is_empty() {
        // A content-rule alias need not be served itself (its rules are checked apart).
        if !names.served.contains(m.model.as_str()) && !names.aliases.contains(m.model.as_str()) {
            c.push(
                format!("{path}.model"),
                format!("no deployment serves model {:?}", m.model),
            );
        }
    } else {
        if names.deployed.contains(m.model.as_str()) {
            c.push(
                format!("{path}.model"),
                format!(
                    "{:?} is served by deployments; a group needs a name of its own",
                    m.model
                ),
            );
        }
        for (j, member) in m.members.iter().enumerate() {
            if !names.deployed.contains(member.as_str()) {
                c.push(
                    format!("{path}.members[{j}]"),
                    format!("no deployment serves model {member:?}"),
                );
            }
        }
    }
    if m.model.starts_with("tag:") {
        c.push(
            format!("{path}.model"),
            "names starting with `tag:` select deployments by tag",
        );
    }
}

fn check_fallbacks(c: &mut Collector, path: &str, m: &ModelPolicy, names: &Names<'_>) {
    for (j, f) in m.fallbacks.iter().enumerate() {
        if f == &m.model {
            c.push(
                format!("{path}.fallbacks[{j}]"),
                "a model cannot fall back to itself",
            );
        } else if !names.served.contains(f.as_str()) {
            c.push(
                format!("{path}.fallbacks[{j}]"),
                format!("fallback to unknown model {f:?}"),
            );
        }
    }
}

/// Retries within [`MAX_RETRIES`]; a first-byte timeout, and a total no shorter than it.
fn check_attempts(c: &mut Collector, path: &str, m: &ModelPolicy) {
    let (at, max) = (format!("{path}.retries"), u64::from(MAX_RETRIES));
    let advice = "; use fallbacks to try other models";
    check_at_most(c, at, m.retries.into(), max, advice);
    let t = m.timeouts;
    if t.first_byte_ms == 0 {
        c.push(format!("{path}.timeouts.first_byte_ms"), "must be positive");
    }
    if t.total_ms < t.first_byte_ms {
        c.push(
            format!("{path}.timeouts.total_ms"),
            format!(
                "{} is shorter than first_byte_ms {}",
                t.total_ms, t.first_byte_ms
            ),
        );
    }
}

/// The settings one strategy alone reads, each within its bounds: `scoring`
/// (`weighted_score`: no weight negative, one positive) and `prefix_affinity`.
fn check_strategy_settings(c: &mut Collector, path: &str, m: &ModelPolicy) {
    if let Some(scoring) = m.scoring {
        if m.strategy != Strategy::WeightedScore {
            c.push(
                format!("{path}.scoring"),
                "only the weighted_score strategy reads scoring",
            );
        }
        check_weights(c, path, scoring.weights());
    }
    if let Some(p) = m.prefix_affinity {
        if m.strategy != Strategy::PrefixAffinity {
            c.push(
                format!("{path}.prefix_affinity"),
                "only the prefix_affinity strategy reads it",
            );
        }
        if !(64..=65_536).contains(&p.block_bytes) {
            c.push(
                format!("{path}.prefix_affinity.block_bytes"),
                "must be between 64 and 65536",
            );
        }
    }
}

fn check_weights(c: &mut Collector, path: &str, w: ScoreWeights) {
    let all = [
        ("cost", w.cost),
        ("latency", w.latency),
        ("reliability", w.reliability),
        ("headroom", w.headroom),
    ];
    for (name, value) in all {
        if !(value.is_finite() && value >= 0.0) {
            c.push(
                format!("{path}.scoring.{name}"),
                "must be a non-negative number",
            );
        }
    }
    if all.iter().all(|(_, v)| *v == 0.0) {
        c.push(
            format!("{path}.scoring"),
            "at least one weight must be positive",
        );
    }
}

fn check_cooldown(c: &mut Collector, path: &str, m: &ModelPolicy) {
    let wait = m.wait_for_cooldown_ms;
    let at = format!("{path}.wait_for_cooldown_ms");
    check_at_most(c, at, wait, MAX_WAIT_FOR_COOLDOWN_MS, "");
    let buffer = m.latency_buffer_pct;
    if !(buffer.is_finite() && (0.0..=1000.0).contains(&buffer)) {
        c.push(
            format!("{path}.latency_buffer_pct"),
            "must be between 0 and 1000",
        );
    }
    let at = format!("{path}.concurrency_wait_ms");
    check_at_most(c, at, m.concurrency_wait_ms, MAX_WAIT_FOR_COOLDOWN_MS, "");
    if m.cooldown.allowed_failures == 0 {
        c.push(
            format!("{path}.cooldown.allowed_failures"),
            "must be at least 1",
        );
    }
}

/// `value` no more than `max`; `advice` follows the message.
fn check_at_most(c: &mut Collector, at: String, value: u64, max: u64, advice: &str) {
    if value > max {
        c.push(at, format!("{value} is more than {max}{advice}"));
    }
}
