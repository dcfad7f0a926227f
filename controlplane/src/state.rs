//! What every admin handler shares: the pool, the settings, the publisher, the fleet view and
//! the budget counters in Redis.

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::Settings;
use crate::fleet::Fleet;
use crate::publish::Publisher;
use crate::service::Ctx;
use crate::service::budgets::counters::Counters;
use crate::service::login_guard::LoginGuard;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub publisher: Arc<Publisher>,
    pub fleet: Arc<Fleet>,
    /// The data planes' budget counters, when a `redis` section is configured.
    pub counters: Option<Counters>,
    /// Login rate limits and the password-check cap of this replica.
    pub login_guard: Arc<LoginGuard>,
    /// How a deployment's test call asks a data plane over NATS.
    pub test_calls: Option<crate::service::test_call::Asker>,
}

impl AppState {
    /// What a service call of a request needs: writes publish at once.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            pool: &self.pool,
            publisher: Some(&self.publisher),
        }
    }
}
