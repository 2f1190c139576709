//! Logs and traces: the log format (`IDEM_LOG_FORMAT`), and the export of spans over OTLP/HTTP
//! (`IDEM_OTLP_ENDPOINT`).
//!
//! JSON logs are one flat object a line: `timestamp`, `level`, `target`, `message`, the event's
//! fields, and the fields of every span the event is inside — so each line of a task's attempt
//! carries `task_id`, `job_id`, `attempt`, `queue` and `task` from its `task.attempt` span. tracing's
//! own JSON format nests span fields under `span`/`spans`, which log pipelines cannot filter on
//! without a per-format parse; the flattening is written here because no crate does it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, Settings};

/// Flushes and stops the span exporter when dropped (at the end of `main`).
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// Installs the log subscriber and, with `IDEM_OTLP_ENDPOINT`, the span exporter. `role` names the
/// process in the traces (`service.name` is `idem`, `idem.role` the subcommand). Needs a Tokio
/// runtime when exporting (the batch exporter runs on it).
pub fn init(s: &Settings, role: &str) -> Result<Guard, String> {
    let filter = EnvFilter::try_new(&s.log).map_err(|e| format!("IDEM_LOG: {e}"))?;
    let provider = match &s.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, role)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("idem"))
            .with_tracked_inactivity(false)
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let fmt = match s.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(FlatJson)
            .fmt_fields(tracing_subscriber::fmt::format::DefaultFields::new())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let spans = (s.log_format == LogFormat::Json).then_some(SpanFields);
    tracing_subscriber::registry()
        .with(otel)
        .with(spans)
        .with(fmt)
        .with(filter)
        .try_init()
        .map_err(|e| format!("installing the log subscriber: {e}"))?;
    Ok(Guard(provider))
}

/// The OTLP/HTTP (protobuf) endpoint for traces: `/v1/traces` added to a URL without a path.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("IDEM_OTLP_ENDPOINT: {e} (expected e.g. http://collector:4318)"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "IDEM_OTLP_ENDPOINT: scheme {:?} is not http or https",
            url.scheme()
        ));
    }
    Ok(if url.path() == "/" || url.path().is_empty() {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_owned()
    })
}

fn provider(endpoint: &str, role: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("IDEM_OTLP_ENDPOINT: {e}"))?,
            rt: tokio::runtime::Handle::try_current()
                .map_err(|e| format!("IDEM_OTLP_ENDPOINT: {e}"))?,
        })
        .with_endpoint(traces_url(endpoint)?)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("IDEM_OTLP_ENDPOINT: {e}"))?;
    let resource = Resource::builder()
        .with_service_name("idem")
        .with_attribute(opentelemetry::KeyValue::new("idem.role", role.to_owned()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: the workspace's reqwest (rustls), so the binary carries one HTTP
/// client stack rather than a second reqwest major version for the exporter alone. The SDK's batch
/// processor exports from a thread of its own, outside the runtime reqwest needs, so each request
/// runs on the process's runtime (`rt`) and the processor awaits its answer.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self
            .http
            .request(parts.method, parts.uri.to_string())
            .body(body);
        for (name, value) in &parts.headers {
            req = req.header(name, value);
        }
        let sent = self.rt.spawn(async move {
            let res = req.send().await?;
            let mut out = http::Response::builder().status(res.status());
            for (name, value) in res.headers() {
                out = out.header(name, value);
            }
            let body = res.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        });
        sent.await?
    }
}

/// The fields of a span, as JSON values, kept in the span's extensions for [`FlatJson`].
struct Fields(Map<String, Value>);

struct SpanFields;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut v = JsonVisitor(Map::new());
        attrs.record(&mut v);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Fields(v.0));
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(Fields(map)) = ext.get_mut::<Fields>() {
                let mut v = JsonVisitor(std::mem::take(map));
                values.record(&mut v);
                *map = v.0;
            }
        }
    }
}

struct JsonVisitor(Map<String, Value>);

impl JsonVisitor {
    fn put(&mut self, field: &Field, v: Value) {
        // `otel.*` fields steer the exporter (span kind); they are not log data.
        if !field.name().starts_with("otel.") {
            self.0.insert(field.name().to_owned(), v);
        }
    }
}

impl Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

/// One flat JSON object a line (see the module's doc). An event's own field wins over a span's of
/// the same name, an inner span's over an outer one's.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line: BTreeMap<String, Value> = BTreeMap::new();
        let mut span_name = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(Fields(map)) = span.extensions().get::<Fields>() {
                    line.extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                span_name = Some(span.name());
            }
        }
        let mut v = JsonVisitor(Map::new());
        event.record(&mut v);
        line.extend(v.0);
        let mut out = Map::new();
        out.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        out.insert("level".into(), meta.level().as_str().into());
        out.insert("target".into(), meta.target().into());
        if let Some(name) = span_name {
            out.insert("span".into(), name.into());
        }
        if let Some(msg) = line.remove("message") {
            out.insert("message".into(), msg);
        }
        out.extend(line);
        let text = serde_json::to_string(&Value::Object(out)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_bare_endpoint() {
        assert_eq!(
            traces_url("http://c:4318").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/otlp/v1/traces").unwrap(),
            "https://c/otlp/v1/traces"
        );
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("not a url").is_err());
    }
}
