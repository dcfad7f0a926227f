//! Switchboard's control plane (being assembled): spend ingestion.

pub mod ingest;
