//! What 100,000 virtual keys cost in memory, by part: the parsed snapshot, the compiled
//! catalog, the remembered key HMACs ([`dataplane::auth::KeyDigests`]), and the transient peaks
//! of reading a standalone config (YAML) and a cluster snapshot (JSON). Live bytes are counted
//! by a counting system allocator (bytes asked for, not the size classes mimalloc rounds them
//! up to), so that it can attribute what a heap profiler under mimalloc cannot; peaks are the
//! kernel's resident high-water mark, reset before each step.
//!
//! The assertions are bounds on bytes, not on time. Run alone to see the table:
//! `cargo test -p switchboard-tests --test key_memory -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // Test harness.

use std::alloc::System;
use std::sync::Arc;

use dataplane::accounting::LogSink;
use dataplane::auth::KeyDigests;
use dataplane::config::{Config, ServerConfig};
use dataplane::state::AppState;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use switchboard_shared::keys::KeyHasher;
use switchboard_shared::snapshot::Snapshot;

/// The system allocator, counting.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const KEYS: usize = 100_000;
const PEPPER: &str = "memory-pepper";

/// Bytes allocated and not freed, now.
fn live() -> usize {
    // Reallocations are counted in both totals already (growth in one, shrinking in the other).
    let s = GLOBAL.stats();
    s.bytes_allocated - s.bytes_deallocated
}

/// Starts a new peak: the kernel's high-water mark of resident memory (`VmHWM`) is reset to
/// what is resident now (`/proc/self/clear_refs`, Linux). Returns the live bytes.
fn reset_peak() -> usize {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    live()
}

/// Resident memory now and its high-water mark since [`reset_peak`], in bytes (`VmRSS`,
/// `VmHWM`; zero where `/proc` has no such lines).
fn resident() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> usize {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How far the resident peak rose over `rss_before`, per key.
fn peak_over(rss_before: usize) -> f64 {
    per_key(rss_before, resident().1)
}

/// Bytes per key of a difference.
fn per_key(from: usize, to: usize) -> f64 {
    (to as f64 - from as f64) / KEYS as f64
}

fn server() -> ServerConfig {
    serde_yaml_ng::from_str(&format!("key_pepper: {{ value: \"{PEPPER}\" }}")).unwrap()
}

fn state() -> Arc<AppState> {
    dataplane::server::build_state(&server(), None, Arc::new(LogSink)).unwrap()
}

/// The hex HMACs of `KEYS` secrets `sk-mem-<i>`, as a control plane stores them.
fn hashes() -> Vec<String> {
    let hasher = KeyHasher::new(PEPPER.as_bytes());
    (0..KEYS)
        .map(|i| {
            let digest = hasher.hash(&format!("sk-mem-{i}"));
            digest.iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect()
}

const REST: &str = "providers: [{ id: up, kind: openai, base_url: \"http://127.0.0.1:1/v1\" }]
deployments: [{ id: d1, model: m, provider: up, upstream_model: up-model }]
";

/// The benchmark's standalone config: keys with an id, a tenant (of 100) and a hash.
fn standalone_yaml(hashes: &[String]) -> String {
    let mut text = format!(
        "server:\n  key_pepper: {{ value: \"{PEPPER}\" }}\nsnapshot:\n  revision: 1\n  tenants: ["
    );
    let tenants: Vec<String> = (0..100).map(|t| format!("{{ id: t{t} }}")).collect();
    text.push_str(&tenants.join(", "));
    text.push_str("]\n  virtual_keys:\n");
    for (i, hash) in hashes.iter().enumerate() {
        text.push_str(&format!(
            "    - {{ id: extra-{i}, tenant_id: t{}, key_hash: \"{hash}\" }}\n",
            i % 100
        ));
    }
    for line in REST.lines() {
        text.push_str(&format!("  {line}\n"));
    }
    text
}

/// A control plane's snapshot body: keys as `controlplane` writes its rows (name, display
/// prefix, creation time, an rpm limit, one metadata entry), as the propagation benchmark
/// seeds them.
fn cluster_json(hashes: &[String]) -> Vec<u8> {
    let mut snapshot = Snapshot::from_yaml(&format!("revision: 7\n{REST}")).unwrap();
    snapshot.tenants = (0..100)
        .map(|t| serde_json::from_value(serde_json::json!({ "id": format!("t{t}") })).unwrap())
        .collect();
    snapshot.virtual_keys = hashes
        .iter()
        .enumerate()
        .map(|(i, hash)| {
            serde_json::from_value(serde_json::json!({
                "id": format!("k{i}"),
                "tenant_id": format!("t{}", i % 100),
                "name": format!("key {i}"),
                "key_hash": hash,
                "display_prefix": "sk-sb-abcd",
                "created_at": "2026-12-05T20:00:00.123456Z",
                "limits": { "rpm": 600 },
                "metadata": { "team": "ml" },
            }))
            .unwrap()
        })
        .collect();
    snapshot.to_canonical_json()
}

/// Live bytes per key at each step of one install, and the peaks on the way.
#[derive(Debug, Default)]
struct Steps {
    /// The document held after parsing (a `Config` for standalone, a `Snapshot` for cluster).
    parsed: f64,
    /// How far resident memory rose while parsing (the system allocator's, so a guide to
    /// the transient peak, not mimalloc's figure).
    parse_peak: f64,
    /// The catalog, counted while the document is still held.
    catalog: f64,
    /// How far resident memory rose while installing.
    install_peak: f64,
    /// What stays after the document is dropped (the catalog, and anything else kept).
    kept: f64,
}

fn install_standalone(text: &str) -> Steps {
    let state = state();
    let base = reset_peak();
    let rss = resident().0;
    let config = Config::parse(text, &[]).unwrap();
    let parsed = live();
    let parse_peak = peak_over(rss);
    reset_peak();
    let rss = resident().0;
    state.install(config.snapshot.as_ref().unwrap()).unwrap();
    let installed = live();
    let install_peak = peak_over(rss);
    drop(config);
    let kept = live();
    assert_eq!(state.catalog().unwrap().key_count(), KEYS);
    Steps {
        parsed: per_key(base, parsed),
        parse_peak,
        catalog: per_key(parsed, installed),
        install_peak,
        kept: per_key(base, kept),
    }
}

fn install_cluster(body: &[u8]) -> Steps {
    let state = state();
    let base = reset_peak();
    let rss = resident().0;
    let snapshot = Snapshot::from_json(body).unwrap();
    let parsed = live();
    let parse_peak = peak_over(rss);
    reset_peak();
    let rss = resident().0;
    state.install(&snapshot).unwrap();
    let installed = live();
    let install_peak = peak_over(rss);
    drop(snapshot);
    let kept = live();
    assert_eq!(state.catalog().unwrap().key_count(), KEYS);
    Steps {
        parsed: per_key(base, parsed),
        parse_peak,
        catalog: per_key(parsed, installed),
        install_peak,
        kept: per_key(base, kept),
    }
}

/// Bytes per secret the HMAC memo holds once every key has been used.
fn digests_per_key(hashes: &[String]) -> f64 {
    let digests = KeyDigests::new(PEPPER.as_bytes());
    let base = live();
    for i in 0..hashes.len().min(KeyDigests::CAPACITY) {
        digests.digest(&format!("sk-mem-{i}"), |_| true);
    }
    assert_eq!(digests.remembered(), KEYS);
    per_key(base, live())
}

fn print(label: &str, text_bytes: usize, s: &Steps) {
    println!(
        "{label}: document {:.1} MB; bytes per key: parsed {:.0} (RSS peak +{:.0}), catalog \
         {:.0} (RSS peak +{:.0}), kept after the document is dropped {:.0}",
        text_bytes as f64 / 1e6,
        s.parsed,
        s.parse_peak,
        s.catalog,
        s.install_peak,
        s.kept,
    );
}

#[test]
fn a_hundred_thousand_keys_fit_in_memory_bounds() {
    let hashes = hashes();

    let yaml = standalone_yaml(&hashes);
    let standalone = install_standalone(&yaml);
    print("standalone YAML", yaml.len(), &standalone);
    drop(yaml);

    let json = cluster_json(&hashes);
    let cluster = install_cluster(&json);
    print("cluster JSON", json.len(), &cluster);
    drop(json);

    let digests = digests_per_key(&hashes);
    println!("remembered HMACs: {digests:.0} bytes per key once every key was used");
    println!(
        "sizes: VirtualKey {} bytes, catalog Key {}, KeyEntry {} (+16 for its Arc counts), \
         map slot {} (+1 control byte)",
        size_of::<switchboard_shared::snapshot::VirtualKey>(),
        size_of::<dataplane::catalog::Key>(),
        size_of::<dataplane::catalog::KeyEntry>(),
        size_of::<([u8; 32], Arc<dataplane::catalog::KeyEntry>)>(),
    );
    println!("{standalone:?}\n{cluster:?}");

    // What a catalog keeps per key (entry, its text, its map slot): 549 and 1,113 bytes
    // before keys were compacted, 186 and 232 after.
    assert!(standalone.kept < 256.0, "{standalone:?}");
    assert!(cluster.kept < 320.0, "{cluster:?}");
    assert!(digests < 128.0, "{digests}");
}
