//! Switchboard's data plane (being built).
