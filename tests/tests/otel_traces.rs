//! OpenTelemetry traces at a real OTLP receiver (`switchboard_tests::otlp`, decoding the
//! published OTLP protobuf): a chat through the gateway, sent with a W3C `traceparent`, is
//! exported as one `server` span named `chat m` continuing the client's trace, with the GenAI
//! semantic-convention attributes and Switchboard's own, and a child per phase (authenticate,
//! admit, route, the upstream attempt as a `client` span, relay, account). The mock upstream
//! receives a `traceparent` of the same trace whose parent is the attempt span. No prompt,
//! answer or key reaches the receiver.
//!
//! One test per file: the trace pipeline is the process's global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use switchboard_shared::telemetry::{self, LogFormat, TelemetryConfig};
use switchboard_tests::otlp::{OtlpReceiver, ReceivedSpan};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const PROMPT: &str = "the secret prompt text";

fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name} in {:#?}", names(spans)))
}

fn names(spans: &[ReceivedSpan]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_is_one_trace_with_phase_spans_and_genai_attributes() {
    let receiver = OtlpReceiver::start().await;
    let file = TelemetryConfig {
        endpoint: Some(receiver.endpoint()),
        service_name: Some("gateway-under-test".into()),
        ..TelemetryConfig::default()
    };
    let mut resolved = file.resolve(&|_| None, "unused").unwrap().unwrap();
    // As the data plane installs it: each request sampled at its head.
    resolved.head_sampled = true;
    let pipeline = telemetry::init(Some(&resolved), LogFormat::Text)
        .unwrap()
        .unwrap();

    let mock = MockUpstream::start().await.unwrap();
    let config = with_deployment_fields(
        &one_deployment(&mock.scenario_url("cached=7"), "", ""),
        "price: { input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }",
    );
    let gw = Gateway::start(&config).await;
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let body = format!(
        r#"{{"model":"m","max_tokens":20,"messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#
    );
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/chat/completions"),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
        ],
        body,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    gw.usage_records(1).await;
    pipeline.flush();

    let phases = [
        "authenticate",
        "admit",
        "route",
        "attempt",
        "relay",
        "account",
    ];
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().any(|s| s.name == "chat m")
                && phases.iter().all(|p| spans.iter().any(|s| s.name == *p))
        })
        .await;
    let spans: Vec<ReceivedSpan> = spans
        .into_iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .collect();

    let root = by_name(&spans, "chat m");
    assert_eq!(
        root.parent_span_id, CLIENT_SPAN,
        "continues the client's span"
    );
    assert_eq!(root.kind, 2, "a server span");
    assert_eq!(root.service, "gateway-under-test");
    let expect = [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "m"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.response.model", "up-model"),
        ("gen_ai.usage.input_tokens", "19"),
        ("gen_ai.usage.output_tokens", "10"),
        ("switchboard.tenant", "t1"),
        ("switchboard.key_id", "k1"),
        ("switchboard.deployment", "d1"),
        ("switchboard.cache_read_tokens", "7"),
        ("http.response.status_code", "200"),
    ];
    for (key, value) in expect {
        assert_eq!(
            root.attr(key),
            Some(value),
            "{key} in {:#?}",
            root.attributes
        );
    }
    let cost: f64 = root.attr("switchboard.cost_usd").unwrap().parse().unwrap();
    assert!(cost > 0.0, "cost {cost}");
    assert!(root.attr("error.type").is_none());

    for phase in phases {
        let span = by_name(&spans, phase);
        assert_eq!(
            span.parent_span_id, root.span_id,
            "{phase} is the request's child"
        );
    }
    let attempt = by_name(&spans, "attempt");
    assert_eq!(attempt.kind, 3, "a client span");
    let upstream_host = mock.base_url();
    let upstream_host = upstream_host
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    assert_eq!(attempt.attr("server.address"), Some(upstream_host));
    assert_eq!(attempt.attr("switchboard.deployment"), Some("d1"));
    assert_eq!(attempt.attr("http.response.status_code"), Some("200"));

    // The upstream got a traceparent of the same trace, the attempt being its parent.
    let received = mock.requests("cached=7");
    let sent = received[0].headers["traceparent"].to_str().unwrap();
    assert_eq!(sent, format!("00-{TRACE_ID}-{}-01", attempt.span_id));

    // Nothing of the prompt, the answer or the key left in any span.
    for span in &spans {
        for value in span.attributes.values() {
            assert!(!value.contains(PROMPT), "{}: prompt exported", span.name);
            assert!(!value.contains(KEY), "{}: key exported", span.name);
            assert!(!value.contains("Hello!"), "{}: answer exported", span.name);
        }
    }

    // A client trace that is not sampled (flags 00) makes no span at all; the sampled one
    // sent after it shows the export is still flowing.
    let chat = |trace: String| {
        let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#;
        request(
            Method::POST,
            &gw.url("/v1/chat/completions"),
            &[
                ("authorization", &format!("Bearer {KEY}")),
                ("content-type", "application/json"),
                ("traceparent", &trace),
            ],
            body.to_owned(),
        )
    };
    let unsampled = "0af7651916cd43dd8448eb211c80319d";
    let sampled = "1bf7651916cd43dd8448eb211c80319e";
    for (trace, flags) in [(unsampled, "00"), (sampled, "01")] {
        let reply = send(chat(format!("00-{trace}-{CLIENT_SPAN}-{flags}"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    gw.usage_records(3).await;
    pipeline.flush();
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == sampled && s.name == "account")
        })
        .await;
    assert!(
        !spans.iter().any(|s| s.trace_id == unsampled),
        "a request its client did not sample exported {:?}",
        names(&spans)
    );
}
