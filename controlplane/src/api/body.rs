//! Our JSON body extractors (required, or optional with a default), so that a bad body gets
//! problem JSON with the path of the bad field: 400 when the body is not JSON, 422 when it is JSON of the wrong shape (wrong types,
//! unknown fields, missing fields), 413 over the body limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read(req, state).await?;
        parse(&bytes).map(Body)
    }
}

/// The body's bytes: 413 over the body limit, 400 when it cannot be read.
async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::MalformedJson(rejection.body_text())
        }
    })
}

/// An optional JSON request body: none at all, or `null`, reads as `T::default()`; anything
/// else as [`Body`] reads it.
#[derive(Debug)]
pub struct OrDefault<T>(pub T);

impl<T, S> FromRequest<S> for OrDefault<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read(req, state).await?;
        if bytes.is_empty() {
            return Ok(OrDefault(T::default()));
        }
        parse::<Option<T>>(&bytes).map(|v| OrDefault(v.unwrap_or_default()))
    }
}

/// Parses a body: syntax errors are 400, shape errors 422 with the field path. A number too
/// large for a 64-bit float (`1e400`) is valid JSON with no finite value: 422 at its path.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json files this under syntax errors, and says so only in its message.
        if e.to_string().starts_with("number out of range") {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let path = serde_path_to_error::deserialize::<_, serde_json::Value>(&mut de)
                .err()
                .map(|e| e.path().to_string())
                .filter(|p| p != ".")
                .unwrap_or_default();
            return ApiError::invalid(path, "must be a finite number");
        }
        ApiError::MalformedJson(format!("line {} column {}", e.line(), e.column()))
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ApiError::invalid(path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::FieldError;
    use crate::service::Error as ServiceError;

    #[derive(Debug, serde::Deserialize)]
    struct Shape {
        #[allow(dead_code)]
        limits: std::collections::BTreeMap<String, f64>,
    }

    fn problem(bytes: &[u8]) -> (u16, Vec<FieldError>) {
        match parse::<Shape>(bytes) {
            Err(ApiError::Service(ServiceError::Invalid(errors))) => (422, errors),
            Err(e) => (e.status().as_u16(), Vec::new()),
            Ok(v) => panic!("parsed: {v:?}"),
        }
    }

    #[test]
    fn syntax_is_400_shape_is_422_and_infinite_numbers_are_422_at_their_path() {
        assert_eq!(problem(b"{\"limits\": ").0, 400);
        assert_eq!(problem(b"{\"limits\": NaN}").0, 400);
        let (status, errors) = problem(br#"{"limits": {"rpm": "x"}}"#);
        assert_eq!((status, errors[0].path.as_str()), (422, "limits.rpm"));
        let (status, errors) = problem(br#"{"limits": {"rpm": 1e400}}"#);
        assert_eq!((status, errors[0].path.as_str()), (422, "limits.rpm"));
        assert_eq!(errors[0].message, "must be a finite number");
    }
}
