//! The `providers` section: credentials given once, a base URL where the kind needs one, and
//! the fields only one kind reads (Azure's `api_version`, Bedrock's region and AWS keys,
//! Vertex's project and location) present exactly there.

use super::Collector;
use crate::snapshot::{Provider, ProviderKind};

pub(super) fn check(c: &mut Collector, providers: &[Provider]) {
    for (i, p) in providers.iter().enumerate() {
        let path = format!("providers[{i}]");
        check_api_keys(c, &path, p);
        check_base_url(c, &path, p);
        check_api_version(c, &path, p);
        check_aws(c, &path, p);
        check_vertex(c, &path, p);
    }
}

/// Whether `v` is safe to put in a query string as Azure's `api-version` (letters, digits,
/// dashes, dots).
fn is_api_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 40
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Whether `r` looks like an AWS region or a Google Cloud location (it becomes part of a host
/// name, a path and, for AWS, the signature).
fn is_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 30
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `api_key` or `api_keys`, not both; at most 64 keys, each with a weight.
fn check_api_keys(c: &mut Collector, path: &str, p: &Provider) {
    if p.api_key.is_some() && !p.api_keys.is_empty() {
        c.push(
            format!("{path}.api_keys"),
            "give either api_key or api_keys, not both",
        );
    }
    if p.api_keys.len() > 64 {
        c.push(format!("{path}.api_keys"), "at most 64 keys per provider");
    }
    for (j, k) in p.api_keys.iter().enumerate() {
        if k.weight == 0 {
            c.push(format!("{path}.api_keys[{j}].weight"), "must be at least 1");
        }
    }
}

fn check_base_url(c: &mut Collector, path: &str, p: &Provider) {
    match (p.kind, &p.base_url) {
        (ProviderKind::Mock, _) | (ProviderKind::Bedrock, None) | (ProviderKind::Vertex, None) => {}
        (_, None) => c.push(format!("{path}.base_url"), "is required for this kind"),
        (_, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                c.push(
                    format!("{path}.base_url"),
                    format!("{url:?} must start with http:// or https://"),
                );
            }
        }
    }
}

fn check_api_version(c: &mut Collector, path: &str, p: &Provider) {
    match (p.kind, &p.api_version) {
        (ProviderKind::Azure, None) => {
            c.push(format!("{path}.api_version"), "is required for kind azure");
        }
        (ProviderKind::Azure, Some(v)) if !is_api_version(v) => c.push(
            format!("{path}.api_version"),
            format!("{v:?} must look like 2024-10-21 or 2025-01-01-preview"),
        ),
        (ProviderKind::Azure, Some(_)) | (_, None) => {}
        (_, Some(_)) => c.push(
            format!("{path}.api_version"),
            "is only allowed for kind azure",
        ),
    }
}

/// Bedrock needs AWS credentials and a region (and no `api_key`); no other kind takes them.
fn check_aws(c: &mut Collector, path: &str, p: &Provider) {
    let aws = [
        ("aws_access_key_id", p.aws_access_key_id.is_some()),
        ("aws_secret_access_key", p.aws_secret_access_key.is_some()),
        ("aws_session_token", p.aws_session_token.is_some()),
        ("region", p.region.is_some()),
    ];
    if p.kind == ProviderKind::Vertex {
        // Vertex takes `region` (its location), checked in `check_vertex`, and no AWS keys.
        for (field, present) in &aws[..3] {
            if *present {
                c.push(
                    format!("{path}.{field}"),
                    "is only allowed for kind bedrock",
                );
            }
        }
        return;
    }
    if p.kind != ProviderKind::Bedrock {
        for (field, present) in aws {
            if present {
                c.push(
                    format!("{path}.{field}"),
                    if field == "region" {
                        "is only allowed for kinds bedrock and vertex"
                    } else {
                        "is only allowed for kind bedrock"
                    },
                );
            }
        }
        return;
    }
    for (field, present) in &aws[..2] {
        if !present {
            c.push(format!("{path}.{field}"), "is required for kind bedrock");
        }
    }
    match &p.region {
        None => c.push(format!("{path}.region"), "is required for kind bedrock"),
        Some(r) if !is_region(r) => c.push(
            format!("{path}.region"),
            format!("{r:?} must look like us-east-1"),
        ),
        Some(_) => {}
    }
    if p.api_key.is_some() {
        c.push(
            format!("{path}.api_key"),
            "is not used by kind bedrock: give aws_access_key_id and aws_secret_access_key",
        );
    }
}

/// Whether `p` looks like a Google Cloud project id (it becomes a path segment).
fn is_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 63
        && p.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b':' || b == b'.'
        })
}

/// Vertex needs its location (`region`) and the service account (`api_key` or `api_keys`);
/// `project` is Vertex's alone.
fn check_vertex(c: &mut Collector, path: &str, p: &Provider) {
    if p.kind != ProviderKind::Vertex {
        if p.project.is_some() {
            c.push(format!("{path}.project"), "is only allowed for kind vertex");
        }
        return;
    }
    match &p.region {
        None => c.push(
            format!("{path}.region"),
            "is required for kind vertex (its location, e.g. us-central1 or global)",
        ),
        Some(r) if !is_region(r) => c.push(
            format!("{path}.region"),
            format!("{r:?} must look like us-central1 or global"),
        ),
        Some(_) => {}
    }
    if let Some(project) = p.project.as_deref().filter(|v| !is_project(v)) {
        c.push(
            format!("{path}.project"),
            format!("{project:?} must be a Google Cloud project id like my-project-123"),
        );
    }
    if p.api_key.is_none() && p.api_keys.is_empty() {
        c.push(
            format!("{path}.api_key"),
            "is required for kind vertex: the service account's JSON key",
        );
    }
}
