//! Trace context across processes: the W3C `traceparent` of a span, stored with a task and carried
//! in its broker message, so that the attempt's span in a worker joins the trace that submitted or
//! fired the task (API or scheduler → dispatcher → worker).
//!
//! The context exists only while an OpenTelemetry layer records spans (the binary installs one when
//! `IDEM_OTLP_ENDPOINT` is set); otherwise [`current_traceparent`] is `None`, nothing is stored and
//! nothing costs more than the lookup.
//!
//! The `traceparent` text form is formatted and parsed here rather than with the SDK's
//! `TraceContextPropagator`: it is one fixed-width line (`00-<trace id>-<span id>-<flags>`), and
//! this crate then needs only the OpenTelemetry API, not the SDK.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` of `span`, when it belongs to a recorded trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format_traceparent(&sc))
}

/// The `traceparent` of the current span, when it belongs to a recorded trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes the span `traceparent` names the parent of `span`; a malformed value is ignored (the span
/// starts its own trace), as the W3C recommendation says.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(sc) = traceparent.and_then(parse_traceparent) {
        // An error means no OpenTelemetry layer records this span: nothing to join.
        let _ = span.set_parent(Context::new().with_remote_span_context(sc));
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The remote span context of a version-00 `traceparent`, or `None` when it is not one (wrong
/// length or version, not lower-case hex, all-zero ids).
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let parts: Vec<&str> = s.trim().split('-').collect();
    let [version, trace, span, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if *version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_round_trip() {
        let sc = parse_traceparent(TP).unwrap();
        assert!(sc.is_remote());
        assert!(sc.is_sampled());
        assert_eq!(format_traceparent(&sc), TP);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_an_opentelemetry_layer_there_is_no_context() {
        let span = tracing::info_span!("x");
        assert_eq!(traceparent_of(&span), None);
        set_parent(&span, Some(TP));
    }
}
