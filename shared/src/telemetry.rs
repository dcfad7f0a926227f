//! OpenTelemetry traces for both planes: the OTLP exporter (gRPC or HTTP/protobuf) configured
//! the way every OpenTelemetry SDK is — the standard `OTEL_*` environment variables, over a
//! config-file `telemetry:` section — installed as a `tracing` layer, and W3C `traceparent`
//! read from clients and written for upstreams.
//!
//! Why here: both planes install the same pipeline from the same variables; the `otel` feature
//! keeps the network client out of `shared` unless a plane asks for it.
//!
//! **Off costs nothing.** With no endpoint configured (or `OTEL_SDK_DISABLED=true`) the
//! subscriber is exactly the plain log formatter, the spans of [`TARGET`] are at `DEBUG` and
//! disabled at their call sites, and [`continue_trace`] / [`current_traceparent`] return after
//! one relaxed atomic load.
//!
//! Only spans of target [`TARGET`] are exported (a per-layer filter), so a log line's fields
//! never reach the collector, and the request path chooses exactly what does: ids, names,
//! counts and timings — never a secret, a prompt or an answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The target of every span meant for export.
pub const TARGET: &str = "switchboard::otel";

/// Whether a trace pipeline is installed in this process.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (a pipeline is installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The head sampler of a [`Resolved::head_sampled`] pipeline: its name's index in
/// [`SAMPLERS`] and its ratio's bits.
static HEAD_SAMPLER: AtomicU64 = AtomicU64::new(0);
static HEAD_RATIO: AtomicU64 = AtomicU64::new(0);

/// Whether a request is to be exported, decided at its head by the configured sampler (W3C
/// `traceparent` of the client, if any, for the parent-based ones): `false` when export is off.
/// A request left out makes no span at all.
pub fn sampled(traceparent: Option<&str>) -> bool {
    if !enabled() {
        return false;
    }
    let sampler = SAMPLERS[HEAD_SAMPLER.load(Ordering::Relaxed) as usize % SAMPLERS.len()];
    let ratio = f64::from_bits(HEAD_RATIO.load(Ordering::Relaxed));
    let coin = || {
        // Any uniform 53 bits will do: a fresh SipHash key pair per call.
        let draw = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8);
        ((draw >> 11) as f64) / ((1u64 << 53) as f64) < ratio
    };
    let root = |sampler: &str| match sampler {
        "always_off" | "parentbased_always_off" => false,
        "traceidratio" | "parentbased_traceidratio" => coin(),
        _ => true,
    };
    if sampler.starts_with("parentbased_")
        && let Some(flag) = traceparent.and_then(parent_sampled)
    {
        return flag;
    }
    root(sampler)
}

/// The sampled flag of a W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`), if it is one.
fn parent_sampled(traceparent: &str) -> Option<bool> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let [version, trace, parent, flags] = parts[..] else {
        return None;
    };
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex(version, 2) && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)) {
        return None;
    }
    if version == "ff" || trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    u8::from_str_radix(flags, 16).ok().map(|f| f & 1 == 1)
}

/// The config file's `telemetry:` section; each key is overridden by its environment variable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `false` turns tracing off whatever else is set (`OTEL_SDK_DISABLED=true` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The collector's base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`), e.g. `http://otel:4318`
    /// (HTTP: `/v1/traces` is appended) or `http://otel:4317` (gRPC). Absent: tracing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL`); default `http/protobuf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Headers sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`, `k=v,k2=v2`), e.g. a
    /// collector's API key. Never logged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `service.name` (`OTEL_SERVICE_NAME`); default `switchboard-dataplane` or
    /// `switchboard-controlplane`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on` (the default),
    /// `parentbased_always_off` or `parentbased_traceidratio` (`OTEL_TRACES_SAMPLER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// The ratio of the `*traceidratio` samplers, 0–1 (`OTEL_TRACES_SAMPLER_ARG`); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_arg: Option<f64>,
}

/// The export protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// A resolved, valid trace pipeline configuration.
#[derive(Clone, PartialEq)]
pub struct Resolved {
    /// The full URL spans are sent to (HTTP: ending in `/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: BTreeMap<String, String>,
    pub service_name: String,
    pub sampler: String,
    pub ratio: f64,
    /// The caller decides each trace's sampling at its head, before it makes any span
    /// ([`sampled`]), and the SDK keeps what it is given: the data plane's request path, so
    /// that a request left out costs what it costs with tracing off. `false` (the control
    /// plane): the SDK samples.
    pub head_sampled: bool,
}

impl std::fmt::Debug for Resolved {
    /// Without the headers' values, which may be credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("service_name", &self.service_name)
            .field("sampler", &self.sampler)
            .field("ratio", &self.ratio)
            .field("head_sampled", &self.head_sampled)
            .finish()
    }
}

const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// `OTEL_EXPORTER_OTLP_HEADERS`' `k=v,k2=v2` (values percent-decoded).
fn parse_headers(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or("OTEL_EXPORTER_OTLP_HEADERS: each entry must be key=value")?;
        out.insert(
            k.trim().to_owned(),
            crate::cluster::percent_decode(v.trim()),
        );
    }
    Ok(out)
}

impl TelemetryConfig {
    /// The pipeline this section and `env` (the environment, looked up by name) ask for:
    /// `None` when tracing is off, an error naming the bad setting.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Resolved>, String> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true")
            || self.enabled == Some(false);
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .or_else(|| self.protocol.clone());
        let protocol = match protocol.as_deref().map(str::trim) {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(format!(
                    "OTLP protocol {other:?}: use grpc or http/protobuf"
                ));
            }
        };
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| self.endpoint.clone()),
        ) {
            (Some(signal), _) => signal,
            (None, Some(base)) if protocol == Protocol::HttpProtobuf => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, Some(base)) => base,
            (None, None) => return Ok(None),
        };
        if disabled {
            return Ok(None);
        }
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "OTLP endpoint {endpoint:?}: must be an http(s) URL"
            ));
        }
        let mut headers = self.headers.clone();
        if let Some(text) = var("OTEL_EXPORTER_OTLP_HEADERS") {
            headers.extend(parse_headers(&text)?);
        }
        let sampler = var("OTEL_TRACES_SAMPLER")
            .or_else(|| self.sampler.clone())
            .unwrap_or_else(|| "parentbased_always_on".into());
        if !SAMPLERS.contains(&sampler.as_str()) {
            return Err(format!(
                "sampler {sampler:?}: one of {}",
                SAMPLERS.join(", ")
            ));
        }
        let ratio = match var("OTEL_TRACES_SAMPLER_ARG") {
            Some(text) => text
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG {text:?}: not a number"))?,
            None => self.sampler_arg.unwrap_or(1.0),
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!("sampler ratio {ratio}: must be between 0 and 1"));
        }
        Ok(Some(Resolved {
            endpoint,
            protocol,
            headers,
            service_name: var("OTEL_SERVICE_NAME")
                .or_else(|| self.service_name.clone())
                .unwrap_or_else(|| default_service.to_owned()),
            sampler,
            ratio,
            head_sampled: false,
        }))
    }
}

impl Resolved {
    fn sampler(&self) -> Sampler {
        if self.head_sampled {
            // Roots were sampled by the caller; a continued trace follows its parent's flag.
            return Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        }
        let ratio = Sampler::TraceIdRatioBased(self.ratio);
        match self.sampler.as_str() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => ratio,
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => Sampler::ParentBased(Box::new(ratio)),
            _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        }
    }

    /// The exporter, batched. gRPC needs to be built inside a Tokio runtime.
    fn provider(&self) -> Result<SdkTracerProvider, String> {
        // The HTTP client (reqwest, rustls without a built-in provider) needs the process's
        // crypto provider; the planes use ring. Already installed: nothing changes.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match self.protocol {
            Protocol::HttpProtobuf => builder
                .with_http()
                .with_endpoint(self.endpoint.clone())
                .with_headers(self.headers.clone().into_iter().collect())
                .build(),
            Protocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &self.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|_| format!("OTLP header name {k:?} is not valid"))?;
                    let value = v
                        .parse()
                        .map_err(|_| format!("OTLP header {k:?}: value not allowed"))?;
                    metadata.insert(key, value);
                }
                builder
                    .with_tonic()
                    .with_endpoint(self.endpoint.clone())
                    .with_metadata(metadata)
                    .build()
            }
        }
        .map_err(|e| format!("OTLP exporter: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(self.service_name.clone())
            .build();
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(self.sampler())
            .with_resource(resource)
            .build())
    }
}

/// The installed pipeline: flushes and shuts the exporter down when dropped.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "trace export flush failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the process's global subscriber: log lines to stderr filtered by `RUST_LOG`
/// (default `info`), and, with `traces`, the OTLP pipeline for spans of [`TARGET`]. Without
/// `traces` it is exactly the plain formatter. gRPC export needs a Tokio runtime entered.
pub fn init(traces: Option<&Resolved>, format: LogFormat) -> Result<Option<Telemetry>, String> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let Some(traces) = traces else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr);
        let installed = match format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        installed.map_err(|e| e.to_string())?;
        return Ok(None);
    };
    let provider = traces.provider()?;
    let tracer = provider.tracer("switchboard");
    let exported =
        tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(exported);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.with_filter(filter()).boxed(),
        LogFormat::Json => logs.json().with_filter(filter()).boxed(),
    };
    tracing_subscriber::registry()
        .with(otel)
        .with(logs)
        .try_init()
        .map_err(|e| e.to_string())?;
    if traces.head_sampled {
        let index = SAMPLERS.iter().position(|s| *s == traces.sampler);
        HEAD_SAMPLER.store(index.unwrap_or(0) as u64, Ordering::Relaxed);
        HEAD_RATIO.store(traces.ratio.to_bits(), Ordering::Relaxed);
    }
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(Telemetry { provider }))
}

/// The `traceparent` and `tracestate` of an incoming request.
struct Incoming<'a>(Option<&'a str>, Option<&'a str>);

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.0,
            "tracestate" => self.1,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Makes `span` continue the client's trace (its W3C `traceparent`, `tracestate`), if tracing
/// is on and the header is valid; otherwise `span` starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if !enabled() || traceparent.is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Incoming(traceparent, tracestate));
    let _ = span.set_parent(cx);
}

/// Renames `span` in its export (a span's name is fixed once its trace context exists, which
/// a continued trace or a child creates; `otel.name` recorded later would be ignored).
pub fn rename(span: &tracing::Span, name: String) {
    if enabled() && !span.is_disabled() {
        span.context().span().update_name(name);
    }
}

/// One header to send.
struct Outgoing(Option<String>);

impl Injector for Outgoing {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The W3C `traceparent` of the current span, for an outgoing request; `None` when tracing
/// is off or the span is not sampled into a trace.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut out = Outgoing(None);
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_says_whether_its_trace_is_sampled() {
        let tp =
            |flags: &str| format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        assert_eq!(parent_sampled(&tp("01")), Some(true));
        assert_eq!(parent_sampled(&tp("03")), Some(true));
        assert_eq!(parent_sampled(&tp("00")), Some(false));
        assert_eq!(
            parent_sampled(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 "),
            Some(true)
        );
        for broken in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(parent_sampled(broken), None, "{broken:?}");
        }
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        let none = TelemetryConfig::default();
        assert_eq!(none.resolve(&env(&[]), "svc").unwrap(), None);
        let on = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert_eq!(none.resolve(&on, "svc").unwrap(), None);
    }

    #[test]
    fn env_overrides_the_file_and_http_gets_its_path() {
        let file = TelemetryConfig {
            endpoint: Some("http://file:4318/".into()),
            service_name: Some("from-file".into()),
            sampler: Some("traceidratio".into()),
            sampler_arg: Some(0.5),
            headers: [("a".to_owned(), "1".to_owned())].into(),
            ..TelemetryConfig::default()
        };
        let r = file.resolve(&env(&[]), "svc").unwrap().unwrap();
        assert_eq!(r.endpoint, "http://file:4318/v1/traces");
        assert_eq!((r.service_name.as_str(), r.ratio), ("from-file", 0.5));
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret, b=2"),
            ("OTEL_SERVICE_NAME", "gw"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ]);
        let r = file.resolve(&e, "svc").unwrap().unwrap();
        assert_eq!(r.endpoint, "http://env:4317");
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(r.headers["api-key"], "s=cret");
        assert_eq!(r.headers["a"], "1");
        assert_eq!(r.service_name, "gw");
        assert_eq!(
            (r.sampler.as_str(), r.ratio),
            ("parentbased_traceidratio", 0.01)
        );
        assert!(
            !format!("{r:?}").contains("s=cret"),
            "headers are not printed"
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let base = TelemetryConfig {
            endpoint: Some("http://c:4318".into()),
            ..TelemetryConfig::default()
        };
        let bad = |pairs: &'static [(&'static str, &'static str)]| {
            base.resolve(&env(pairs), "svc").unwrap_err()
        };
        assert!(bad(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).contains("http/json"));
        assert!(bad(&[("OTEL_TRACES_SAMPLER", "sometimes")]).contains("sometimes"));
        assert!(bad(&[("OTEL_TRACES_SAMPLER_ARG", "2")]).contains("between 0 and 1"));
        assert!(bad(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).contains("http"));
    }
}
