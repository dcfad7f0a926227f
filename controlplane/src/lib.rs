//! Switchboard's control plane (being assembled): spend ingestion and price sync.

pub mod ingest;
pub mod prices;
