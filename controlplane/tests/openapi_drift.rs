//! The checked-in OpenAPI document must equal what the code generates. Regenerate with
//! `cargo run -p switchboard-controlplane -- openapi > openapi/controlplane.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/controlplane.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = controlplane::routes::openapi_json();
    assert!(
        checked_in == generated,
        "openapi/controlplane.json is stale; regenerate it with \
         `cargo run -p switchboard-controlplane -- openapi > openapi/controlplane.json`"
    );
    // It documents the routes and never carries an example secret.
    for route in [
        "/admin/v1/auth/login",
        "/admin/v1/keys/{id}/rotate",
        "/admin/v1/fleet",
    ] {
        assert!(generated.contains(route), "{route} missing");
    }
    assert!(!generated.contains("sk-sb-"));
}
