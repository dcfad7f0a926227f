//! Reading what the control plane published the way a data plane reads it
//! (`dataplane/src/cluster/nats.rs`): an ordered consumer on one subject of a stream, and an
//! object of the snapshot bucket. For the tests that check what was published and who may
//! read it; each step's failure names the step, so a refused permission reads as one.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::{self};
use futures_util::StreamExt;

/// The first message an ordered consumer on `subject` of `stream` delivers under `deliver`
/// (`LastPerSubject`: the head; `All`: the oldest kept), within `within`.
pub async fn first_message(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    deliver: DeliverPolicy,
    within: Duration,
) -> Result<Vec<u8>, String> {
    let step = |what: &'static str| move |e: &dyn std::fmt::Display| format!("{what}: {e}");
    let mut messages = js
        .get_stream(stream)
        .await
        .map_err(|e| step("stream info")(&e))?
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .map_err(|e| step("ordered consumer")(&e))?
        .messages()
        .await
        .map_err(|e| step("consumer messages")(&e))?;
    let message = tokio::time::timeout(within, messages.next())
        .await
        .map_err(|e| step("a message in time")(&e))?
        .ok_or("the consumer ended")?
        .map_err(|e| step("a message")(&e))?;
    Ok(message.payload.to_vec())
}

/// The whole object `name` of the object store `bucket`, within `within`.
pub async fn object(
    js: &jetstream::Context,
    bucket: &str,
    name: &str,
    within: Duration,
) -> Result<Vec<u8>, String> {
    let store = js
        .get_object_store(bucket)
        .await
        .map_err(|e| format!("object store info: {e}"))?;
    let mut body = Vec::new();
    tokio::time::timeout(within, async {
        let mut object = store
            .get(name)
            .await
            .map_err(|e| format!("object info: {e}"))?;
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut body)
            .await
            .map_err(|e| format!("object body: {e}"))
    })
    .await
    .map_err(|e| format!("the object in time: {e}"))??;
    Ok(body)
}
