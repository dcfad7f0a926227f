//! What every admin handler shares: the pool, the settings, the publisher and the fleet view.

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::Settings;
use crate::fleet::Fleet;
use crate::publish::Publisher;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub publisher: Arc<Publisher>,
    pub fleet: Arc<Fleet>,
}
