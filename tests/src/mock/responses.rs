//! The mock's OpenAI Responses API: `POST /v1/responses` (and Azure's deployment path), for
//! deployments tagged `responses_api` that the gateway passes Responses requests to as they are.
//!
//! It refuses what the real API refuses and what a gateway must not forward: `model` and
//! `input` are required, and `previous_response_id` is refused (this mock stores nothing, so
//! a gateway must send the whole conversation). The answer's text says how many input items
//! arrived ([`text_for`]), so a test can see a conversation grow. A request with `tools` gets a
//! `get_weather` function call. Streams send the Responses event sequence, one event per frame,
//! ending with `response.completed` and its usage ([`RESPONSES_USAGE`]).

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// Usage of every answer: input, cached input, output tokens.
pub const RESPONSES_USAGE: (u64, u64, u64) = (21, 5, 9);

/// The answer's text for a request of `items` input items.
pub fn text_for(items: usize) -> String {
    format!("Responses mock saw {items} input items.")
}

/// A complete answer or a stream's events; `Err` a 400's message.
pub fn render(body: &[u8], id: u64, created: u64) -> Result<(bool, Vec<Bytes>), String> {
    let request: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| "could not parse the JSON body".to_owned())?;
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return Err("Missing required parameter: 'model'.".into());
    };
    if request.contains_key("previous_response_id") {
        return Err("Previous response with id not found (this mock stores nothing).".into());
    }
    let items = match request.get("input") {
        Some(Value::String(_)) => 1,
        Some(Value::Array(items)) => items.len(),
        _ => return Err("Missing required parameter: 'input'.".into()),
    };
    let tools = request
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let (input, cached, output) = RESPONSES_USAGE;
    let item = if tools {
        json!({"type": "function_call", "id": format!("fc_mock{id}"), "call_id": format!("call_mock{id}"),
            "name": "get_weather", "arguments": "{\"location\":\"Paris\"}", "status": "completed"})
    } else {
        json!({"type": "message", "id": format!("msg_mock{id}"), "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text_for(items), "annotations": []}]})
    };
    let mut response = json!({
        "id": format!("resp_mock{id}"), "object": "response", "created_at": created,
        "status": "completed", "error": null, "incomplete_details": null, "model": model,
        "output": [item], "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": input, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output},
    });
    if request.get("stream") != Some(&Value::Bool(true)) {
        return Ok((false, vec![Bytes::from(response.to_string())]));
    }
    let done = response.clone();
    response["status"] = "in_progress".into();
    response["output"] = json!([]);
    response["usage"] = Value::Null;
    Ok((true, events(&response, &done)))
}

/// The stream of a finished response `done`, starting from `start`.
fn events(start: &Value, done: &Value) -> Vec<Bytes> {
    let item = &done["output"][0];
    let id = item["id"].clone();
    let mut list = vec![
        json!({"type": "response.created", "response": start}),
        json!({"type": "response.in_progress", "response": start}),
    ];
    if item["type"] == "function_call" {
        let mut added = item.clone();
        added["arguments"] = "".into();
        added["status"] = "in_progress".into();
        list.push(json!({"type": "response.output_item.added", "output_index": 0, "item": added}));
        list.push(json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": 0, "delta": item["arguments"]}));
        list.push(json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": 0, "arguments": item["arguments"]}));
    } else {
        let text = item["content"][0]["text"].as_str().unwrap_or_default();
        let mut added = item.clone();
        added["content"] = json!([]);
        added["status"] = "in_progress".into();
        list.push(json!({"type": "response.output_item.added", "output_index": 0, "item": added}));
        list.push(json!({"type": "response.content_part.added", "item_id": id, "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}}));
        for word in text.split_inclusive(' ') {
            list.push(json!({"type": "response.output_text.delta", "item_id": id, "output_index": 0, "content_index": 0, "delta": word}));
        }
        list.push(json!({"type": "response.output_text.done", "item_id": id, "output_index": 0, "content_index": 0, "text": text}));
        list.push(json!({"type": "response.content_part.done", "item_id": id, "output_index": 0, "content_index": 0,
            "part": item["content"][0]}));
    }
    list.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
    list.push(json!({"type": "response.completed", "response": done}));
    list.into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            event["sequence_number"] = i.into();
            let kind = event["type"].as_str().unwrap_or_default().to_owned();
            Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
        })
        .collect()
}
