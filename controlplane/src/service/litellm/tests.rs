//! The mapping itself, on the fixtures the cluster test imports for real
//! (`tests/tests/litellm_import.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use switchboard_shared::snapshot::{ProviderKind, Strategy};

use super::plan::{Source, plan};

const PEERS: &str = include_str!("../../../../tests/fixtures/litellm/peers-config.yaml");
const MULTI: &str = include_str!("../../../../tests/fixtures/litellm/multi-provider.yaml");
const SECRET: &str = "sk-env-secret-value-123";

fn env() -> Vec<(String, String)> {
    [
        "OPENAI_API_KEY",
        "AZURE_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    .iter()
    .map(|k| ((*k).to_owned(), SECRET.to_owned()))
    .collect()
}

#[test]
fn the_peers_config_becomes_one_provider_and_two_deployments() {
    let p = plan(PEERS, &[]).unwrap();
    // Two api_bases (/v1 and /paced/v1) are two providers; the same base and key are one.
    assert_eq!(p.providers.len(), 2, "{:?}", p.providers);
    assert_eq!(
        plan(&PEERS.replace("/paced", ""), &[])
            .unwrap()
            .providers
            .len(),
        1
    );
    let d: Vec<_> = p
        .deployments
        .iter()
        .map(|d| (d.id.as_str(), d.model.as_str(), d.upstream_model.as_str()))
        .collect();
    assert_eq!(
        d,
        [
            ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini"),
            ("gpt-4o-mini-paced", "gpt-4o-mini-paced", "gpt-4o-mini")
        ]
    );
    assert_eq!(p.providers[0].kind, ProviderKind::Openai);
    assert_eq!(
        p.providers[0].api_key.as_ref().unwrap().source,
        Source::Inline
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n.starts_with("general_settings.master_key")),
        "{:?}",
        p.notes
    );
    assert_eq!(
        (p.policies[0].retries, p.policies[0].timeout_ms),
        (Some(0), Some(30_000))
    );
    assert!(
        !p.describe().contains("sk-bench-1234"),
        "master key printed"
    );
    assert!(
        !p.describe().contains("sk-mock-upstream"),
        "api key printed"
    );
}

#[test]
fn every_provider_prefix_maps_with_limits_strategy_and_fallbacks() {
    let p = plan(MULTI, &env()).unwrap();
    let kinds: Vec<_> = p.providers.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            ProviderKind::Openai,
            ProviderKind::Azure,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
            ProviderKind::Bedrock,
            ProviderKind::Openai
        ]
    );
    let gpt: Vec<_> = p
        .deployments
        .iter()
        .filter(|d| d.model == "gpt-4o")
        .collect();
    assert_eq!(gpt.len(), 2);
    assert_eq!(
        (gpt[0].id.as_str(), gpt[0].rpm, gpt[0].tpm),
        ("gpt-4o", Some(600), Some(100_000))
    );
    assert_eq!(
        (
            gpt[1].id.as_str(),
            gpt[1].upstream_model.as_str(),
            gpt[1].weight
        ),
        ("gpt-4o-2", "gpt-4o-eu", 2)
    );
    let bedrock = p
        .deployments
        .iter()
        .find(|d| d.model == "claude-bedrock")
        .unwrap();
    assert_eq!(
        bedrock.upstream_model,
        "anthropic.claude-3-haiku-20240307-v1:0"
    );
    assert!(
        p.deployments
            .iter()
            .any(|d| d.id == "llama-vllm-1"
                && d.upstream_model == "meta-llama/Llama-3.1-8B-Instruct")
    );
    assert!(!p.deployments.iter().any(|d| d.model == "vertex-model"));
    let policy = p.policies.iter().find(|x| x.model == "gpt-4o").unwrap();
    assert_eq!(policy.strategy, Strategy::LowestUsage);
    assert_eq!(policy.fallbacks, ["claude-sonnet"]);
    assert_eq!(
        (
            policy.retries,
            policy.timeout_ms,
            policy.allowed_failures,
            policy.cooldown_seconds
        ),
        (Some(3), Some(30_000), Some(2), Some(60))
    );
    for expected in [
        "vertex_ai",
        "context_window_fallbacks",
        "redis_host",
        "max_tokens",
        "model_info.mode",
        "\"vertex-model\": \"vertex-model\" is not a model",
    ] {
        assert!(
            p.notes.iter().any(|n| n.contains(expected)),
            "no note on {expected}: {:#?}",
            p.notes
        );
    }
    let text = p.describe();
    assert!(text.contains("os.environ/OPENAI_API_KEY"), "{text}");
    assert!(
        !text.contains(SECRET) && !text.contains("sk-litellm-master"),
        "secret in {text}"
    );
    assert!(!format!("{p:?}").contains(SECRET), "secret in Debug");
}

#[test]
fn a_missing_environment_variable_skips_its_entries_and_says_which() {
    let p = plan(MULTI, &[]).unwrap();
    assert!(!p.deployments.iter().any(|d| d.model == "gpt-4o"));
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("OPENAI_API_KEY is not set")),
        "{:#?}",
        p.notes
    );
    // The vLLM entry needs no key and is still imported.
    assert!(p.deployments.iter().any(|d| d.id == "llama-vllm-1"));
}

#[test]
fn unknown_strategies_and_bad_files_are_reported() {
    let p = plan(
        "model_list: []\nrouter_settings:\n  routing_strategy: magic\n",
        &[],
    )
    .unwrap();
    assert!(
        p.notes.iter().any(|n| n.contains("routing_strategy")),
        "{:?}",
        p.notes
    );
    assert!(plan("- just\n- a list\n", &[]).is_err());
    assert!(plan("model_list: [", &[]).is_err());
}
