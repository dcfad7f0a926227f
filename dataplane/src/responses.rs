//! Stored responses of the Responses API: `store`, `previous_response_id`, and
//! `GET`/`DELETE /v1/responses/{id}`.
//!
//! Why the gateway keeps them itself: a conversation continued with `previous_response_id`
//! may be routed to another deployment or provider than the one that answered it, and most
//! providers keep no responses at all. So every stored response is kept here, per tenant:
//! the response object as the client got it and the input that led to it. A request naming a
//! `previous_response_id` has that conversation (earlier input, then the earlier output)
//! put in front of its own `input` before routing, and the field removed — every deployment,
//! native or translated, then sees one self-contained request.
//!
//! Where they live: in Redis when the data plane has a `redis:` section (shared by every
//! replica, `<prefix>:resp:{<tenant>}:<id>` with the TTL as its expiry), else in this process
//! (at most [`LOCAL_CAPACITY`] responses, the oldest dropped first). Either way they expire
//! after [`TTL`]. A key reaches only its own tenant's responses: the tenant is part of the
//! lookup, so another tenant's id is a 404 like an unknown one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::Response;
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::observed::{Observer, observed};
use crate::shared_redis::SharedRedis;
use crate::sse::{self, EventScanner};

/// How long a stored response is kept (OpenAI keeps them 30 days).
pub const TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The most responses one process keeps without Redis.
pub const LOCAL_CAPACITY: usize = 10_000;

/// Where stored responses are kept.
#[derive(Debug)]
pub struct ResponseStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Local(Mutex<Local>),
    Redis(SharedRedis),
}

#[derive(Debug, Default)]
struct Local {
    entries: HashMap<(String, String), (Instant, Arc<str>)>,
    order: VecDeque<(String, String)>,
}

impl Default for ResponseStore {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ResponseStore {
    /// In Redis when there is one, else in this process.
    pub fn new(redis: Option<SharedRedis>) -> Self {
        Self {
            backend: match redis {
                Some(redis) => Backend::Redis(redis),
                None => Backend::Local(Mutex::new(Local::default())),
            },
        }
    }

    fn redis_key(redis: &SharedRedis, tenant: &str, id: &str) -> String {
        format!("{}:resp:{{{tenant}}}:{id}", redis.prefix())
    }

    /// The stored record (`{"response": …, "input": […]}`) of `id` for `tenant`.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<Value>, ApiError> {
        let text: Option<String> = match &self.backend {
            Backend::Local(local) => {
                let local = local.lock().map_err(|_| ApiError::Internal)?;
                local
                    .entries
                    .get(&(tenant.to_owned(), id.to_owned()))
                    .filter(|(expires, _)| *expires > Instant::now())
                    .map(|(_, text)| text.to_string())
            }
            Backend::Redis(redis) => {
                let mut conn = redis.conn();
                redis::cmd("GET")
                    .arg(Self::redis_key(redis, tenant, id))
                    .query_async(&mut conn)
                    .await
                    .map_err(|_| ApiError::Internal)?
            }
        };
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Keeps `record` as `id` for `tenant`.
    pub async fn put(&self, tenant: &str, id: &str, record: &Value) -> Result<(), ApiError> {
        let text = record.to_string();
        match &self.backend {
            Backend::Local(local) => {
                let mut local = local.lock().map_err(|_| ApiError::Internal)?;
                let key = (tenant.to_owned(), id.to_owned());
                let now = Instant::now();
                while local.order.len() >= LOCAL_CAPACITY
                    || local.order.front().is_some_and(|k| {
                        local
                            .entries
                            .get(k)
                            .is_none_or(|(expires, _)| *expires <= now)
                    })
                {
                    let Some(old) = local.order.pop_front() else {
                        break;
                    };
                    local.entries.remove(&old);
                }
                if local
                    .entries
                    .insert(key.clone(), (now + TTL, Arc::from(text)))
                    .is_none()
                {
                    local.order.push_back(key);
                }
                Ok(())
            }
            Backend::Redis(redis) => {
                let mut conn = redis.conn();
                redis::cmd("SET")
                    .arg(Self::redis_key(redis, tenant, id))
                    .arg(text)
                    .arg("PX")
                    .arg(u64::try_from(TTL.as_millis()).unwrap_or(u64::MAX))
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|_| ApiError::Internal)
            }
        }
    }

    /// Deletes `id` of `tenant`; whether it existed.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, ApiError> {
        match &self.backend {
            Backend::Local(local) => {
                let mut local = local.lock().map_err(|_| ApiError::Internal)?;
                let key = (tenant.to_owned(), id.to_owned());
                let found = local.entries.remove(&key);
                local.order.retain(|k| *k != key);
                Ok(found.is_some_and(|(expires, _)| expires > Instant::now()))
            }
            Backend::Redis(redis) => {
                let mut conn = redis.conn();
                let n: u64 = redis::cmd("DEL")
                    .arg(Self::redis_key(redis, tenant, id))
                    .query_async(&mut conn)
                    .await
                    .map_err(|_| ApiError::Internal)?;
                Ok(n > 0)
            }
        }
    }

    /// Prepares a `/v1/responses` body: puts the conversation of its `previous_response_id`
    /// (404 if the tenant has no such response) in front of its input and removes the field.
    /// Returns the body to serve and, unless the request says `store: false`, what must be
    /// kept once the answer is complete.
    pub async fn prepare(
        self: &Arc<Self>,
        tenant: &str,
        body: Bytes,
    ) -> Result<(Bytes, Option<Pending>), ApiError> {
        let Ok(mut req) = serde_json::from_slice::<Map<String, Value>>(&body) else {
            // Not an object: the parser that follows answers with the precise 400.
            return Ok((body, None));
        };
        let mut input = match req.get("input") {
            Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let body = match req.remove("previous_response_id") {
            Some(Value::String(previous)) => {
                let record = self.previous(tenant, &previous).await?;
                let mut all: Vec<Value> = record["input"].as_array().cloned().unwrap_or_default();
                all.extend(
                    record["response"]["output"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
                all.append(&mut input);
                input = all;
                req.insert("input".into(), Value::Array(input.clone()));
                Bytes::from(serde_json::to_vec(&req).map_err(|_| ApiError::Internal)?)
            }
            Some(Value::Null) | None => body,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "previous_response_id must be a string",
                    Some("previous_response_id"),
                ));
            }
        };
        let pending = (req.get("store") != Some(&Value::Bool(false))).then(|| Pending {
            store: Arc::clone(self),
            tenant: tenant.to_owned(),
            input,
        });
        Ok((body, pending))
    }

    /// The record of a `previous_response_id`; one retry after a short pause, since a
    /// stream's record is written as its last event leaves and the client may be quicker.
    async fn previous(&self, tenant: &str, id: &str) -> Result<Value, ApiError> {
        for pause in [0, 50] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if let Some(record) = self.get(tenant, id).await? {
                return Ok(record);
            }
        }
        Err(ApiError::ResponseNotFound {
            id: id.chars().take(100).collect(),
            previous: true,
        })
    }
}

/// A response to keep once it is complete.
#[derive(Debug)]
pub struct Pending {
    store: Arc<ResponseStore>,
    tenant: String,
    input: Vec<Value>,
}

impl Pending {
    /// Wraps a successful answer's body so that the finished response object is stored as it
    /// passes (the whole JSON answer, or the stream's `response.completed` event); other
    /// answers are returned as they are.
    pub fn keep(self, response: Response) -> Response {
        if !response.status().is_success() {
            return response;
        }
        let sse = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        response.map(|body| {
            observed(
                body,
                Keep {
                    buf: BytesMut::new(),
                    scanner: EventScanner::default(),
                    sse,
                    pending: Some(self),
                },
            )
        })
    }

    /// Stores the finished response object (in the background: the answer is not delayed).
    fn finish(self, response: Value) {
        let Some(id) = response
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        let record = json!({"response": response, "input": self.input});
        tokio::spawn(async move {
            if self.store.put(&self.tenant, &id, &record).await.is_err() {
                tracing::warn!(response_id = %id, "could not store a response");
            }
        });
    }
}

/// Stores the response an answer carries, as it passes.
struct Keep {
    /// A JSON answer so far, or a stream's events not yet complete.
    buf: BytesMut,
    scanner: EventScanner,
    sse: bool,
    pending: Option<Pending>,
}

impl Observer for Keep {
    fn data(&mut self, data: &Bytes) {
        if self.pending.is_none() {
            return;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        if !self.sse {
            return;
        }
        let mut last = None;
        self.scanner
            .feed(&self.buf[start..], |end| last = Some(start + end));
        let Some(end) = last else {
            return;
        };
        let events = self.buf.split_to(end);
        for line in sse::lines(&events) {
            let Some(data) = sse::field(line, b"data") else {
                continue;
            };
            let Ok(event) = serde_json::from_slice::<Value>(data) else {
                continue;
            };
            let done = matches!(
                event.get("type").and_then(Value::as_str),
                Some("response.completed" | "response.incomplete")
            );
            if let (true, Some(pending)) = (done, self.pending.take()) {
                pending.finish(event["response"].clone());
                self.buf.clear();
            }
        }
    }

    fn end(&mut self) {
        if let (false, Some(pending)) = (self.sse, self.pending.take())
            && let Ok(response) = serde_json::from_slice::<Value>(&self.buf)
            && response.get("object").and_then(Value::as_str) == Some("response")
        {
            pending.finish(response);
        }
    }

    fn failed(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_are_kept_per_tenant_and_conversations_chain() {
        let store = Arc::new(ResponseStore::default());
        let record = json!({"response": {"id": "resp_1", "output": [{"type": "message", "role": "assistant", "content": "A"}]},
            "input": [{"role": "user", "content": "Q1"}]});
        store.put("t1", "resp_1", &record).await.unwrap();
        assert!(store.get("t2", "resp_1").await.unwrap().is_none());
        let body = Bytes::from(r#"{"model":"m","previous_response_id":"resp_1","input":"Q2"}"#);
        let (body, pending) = store.prepare("t1", body).await.unwrap();
        let req: Value = serde_json::from_slice(&body).unwrap();
        assert!(req.get("previous_response_id").is_none());
        assert_eq!(req["input"][0]["content"], "Q1");
        assert_eq!(req["input"][1]["content"], "A");
        assert_eq!(req["input"][2]["content"], "Q2");
        assert_eq!(pending.unwrap().input.len(), 3);
        let other = Bytes::from(r#"{"model":"m","previous_response_id":"resp_1","input":"x"}"#);
        let err = store.prepare("t2", other).await.unwrap_err();
        assert_eq!(err.status(), http::StatusCode::NOT_FOUND);
        let unstored = Bytes::from(r#"{"model":"m","store":false,"input":"x"}"#);
        assert!(store.prepare("t1", unstored).await.unwrap().1.is_none());
        assert!(!store.delete("t2", "resp_1").await.unwrap());
        assert!(store.delete("t1", "resp_1").await.unwrap());
        assert!(store.get("t1", "resp_1").await.unwrap().is_none());
    }
}
