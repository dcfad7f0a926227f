//! The service layer's one error type: what went wrong in domain terms, with no HTTP in it.
//! The admin API maps each variant to a status in one exhaustive match
//! ([`crate::api::error::ApiError`]); the CLI prints it. No variant carries a secret.

use serde::Serialize;
use utoipa::ToSchema;

/// One bad field, by its path in the request body (`limits.rpm`, `allowed_models[2]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Values that break a rule, by their field paths.
    #[error("the request has invalid fields")]
    Invalid(Vec<FieldError>),
    /// No valid identity.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The actor's role may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The object does not exist, or belongs to a tenant the actor may not see.
    #[error("{0} not found")]
    NotFound(String),
    /// The change collides with the stored state.
    #[error("{0}")]
    Conflict(String),
    /// A source the control plane fetches from failed (the message says how, never what it
    /// sent).
    #[error("{0}")]
    Upstream(String),
    /// Too many attempts (login rate limits, the password-check cap): retry after the given
    /// seconds.
    #[error("{detail}")]
    TooManyRequests {
        detail: &'static str,
        retry_after_secs: u64,
    },
    /// A fault of ours or of a dependency; the cause is for the log only.
    #[error("internal error")]
    Internal(String),
}

/// The service layer's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid(vec![FieldError::new(path, message)])
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Error::NotFound(format!("{what} {id:?}"))
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            match db.code().as_deref() {
                // unique_violation
                Some("23505") => {
                    return Error::Conflict(format!(
                        "already exists ({})",
                        db.constraint().unwrap_or("unique")
                    ));
                }
                // foreign_key_violation: a reference to nothing, or a delete of something used
                Some("23503") => {
                    return Error::Conflict(format!(
                        "conflicts with a reference ({})",
                        db.constraint().unwrap_or("foreign key")
                    ));
                }
                // character_not_in_repertoire, untranslatable_character: a NUL character,
                // which Postgres stores in neither text nor jsonb.
                Some("22021" | "22P05") => {
                    return Error::invalid("", "contains a NUL character (\\u0000)");
                }
                // check_violation
                Some("23514") => {
                    return Error::invalid(
                        "",
                        format!("violates {}", db.constraint().unwrap_or("a check")),
                    );
                }
                _ => {}
            }
        }
        Error::Internal(format!("database: {e}"))
    }
}
