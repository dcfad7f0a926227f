//! The control plane binary. Not built yet: its own issue brings Postgres, the admin REST API,
//! snapshot publishing over NATS JetStream and the gRPC ConfigService. Until then it says so
//! and exits non-zero, rather than pretending to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "switchboard controlplane {}: not implemented yet (snapshot schema v{}). \
         Run the data plane standalone: see README.md.",
        env!("CARGO_PKG_VERSION"),
        switchboard_shared::snapshot::SCHEMA_VERSION
    );
    ExitCode::from(2)
}
