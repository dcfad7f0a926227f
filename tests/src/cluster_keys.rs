//! The keys of the test clusters: the snapshot signing seed (and its public key), the gRPC
//! token and the ingest key, so that the cluster tests run with authentication on, as a
//! deployment does (`docs/security.md`). Fixed values: test-only, never used anywhere else.

use switchboard_shared::cluster_trust::SnapshotSigner;

/// Base64 Ed25519 seed the test control planes sign snapshots with.
pub const SIGNING_SEED: &str = "c3dpdGNoYm9hcmQtdGVzdC1zaWduaW5nLXNlZWQtMDE=";
/// A seed nobody trusts: snapshots signed with it must be refused.
pub const FOREIGN_SEED: &str = "Zm9yZWlnbi1rZXktbm90LXRydXN0ZWQtYnktYW55b24=";
/// Bearer token of the test control planes' gRPC ConfigService.
pub const GRPC_TOKEN: &str = "test-grpc-token-0123456789abcdef";
/// Ingest key usage events and heartbeats are tagged with.
pub const INGEST_KEY: &str = "test-ingest-key-0123456789abcdef";

/// The public key of [`SIGNING_SEED`], as data planes are configured with it.
pub fn signing_public() -> String {
    signer().public_key_base64()
}

/// The signer of [`SIGNING_SEED`].
pub fn signer() -> SnapshotSigner {
    SnapshotSigner::from_base64(SIGNING_SEED).unwrap_or_else(|e| panic!("test seed: {e}"))
}
