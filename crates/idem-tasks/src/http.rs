//! `http` `{"url","method"="POST","headers"={},"body"?,"timeout_seconds"=30}`: sends one request and
//! returns `{"status","body"}`.
//!
//! Invariants: every request carries `Idempotency-Key`, `Idem-Task-Id` and `Idem-Attempt`,
//! so a receiver can make its own effect exactly once; outcomes map to what happens next — 2xx/3xx
//! succeed, 5xx, 408, 429, timeouts and connection errors retry (honouring a `Retry-After` in
//! seconds on 429/503), other 4xx give up; with the address guard on (the default), no request
//! reaches an internal address (see [`guard`]). Redirects are returned, never followed, so a public
//! host cannot bounce a request inward.

mod guard;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use idem_core::{ErrorInfo, Registry, TaskContext, TaskError};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{redirect, Client, Method, Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{lossy_prefix, OUTPUT_LIMIT};

/// The longest `Retry-After` honoured; a larger one (or a hostile one) is clamped to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How much of a response body an error message quotes.
const ERROR_BODY_CHARS: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpArgs {
    url: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Sent as JSON, except a string, which is sent as text.
    #[serde(default)]
    body: Option<Value>,
    #[serde(default = "default_timeout_seconds")]
    timeout_seconds: f64,
}

fn default_method() -> String {
    "POST".to_owned()
}

fn default_timeout_seconds() -> f64 {
    30.0
}

#[derive(Debug, Serialize)]
struct HttpResult {
    status: u16,
    /// The response as JSON when it parses, else as text; at most 64 KiB either way.
    body: Value,
}

/// The registered handler's state: one client for every call, so connections are pooled.
struct HttpTask {
    /// With the guard on, its resolver refuses forbidden addresses; see [`guard`].
    client: Client,
    allow_private: bool,
}

pub(crate) fn register(registry: &mut Registry, allow_private: bool) {
    let task = Arc::new(HttpTask::new(allow_private));
    registry.register("http", move |ctx: TaskContext, args: HttpArgs| {
        let task = Arc::clone(&task);
        async move { task.run(ctx, args).await }
    });
}

impl HttpTask {
    fn new(allow_private: bool) -> Self {
        // Proxies from the environment are ignored: through a proxy the proxy resolves the name, and
        // the guard could not see the address actually reached.
        let mut builder = Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy();
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(guard::GuardedResolver));
        }
        let client = builder
            .build()
            .expect("an HTTP client with rustls and no proxies always builds");
        Self {
            client,
            allow_private,
        }
    }

    async fn run(&self, ctx: TaskContext, args: HttpArgs) -> Result<HttpResult, TaskError> {
        let url = Url::parse(&args.url).map_err(|e| bad_args(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_args(format!(
                "url must be http or https, got {:?}",
                url.scheme()
            )));
        }
        if !self.allow_private {
            guard::check_url(&url).map_err(|r| refused(&r))?;
        }
        let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad_args(format!("method is not an HTTP method: {:?}", args.method)))?;
        let timeout = timeout(args.timeout_seconds)?;
        let (content_type, body) = match args.body {
            None => (None, None),
            Some(Value::String(text)) => {
                (Some("text/plain; charset=utf-8"), Some(text.into_bytes()))
            }
            Some(json) => (
                Some("application/json"),
                Some(json.to_string().into_bytes()),
            ),
        };
        let headers = headers(&ctx, &args.headers, content_type)?;

        let mut request = self
            .client
            .request(method, url)
            .headers(headers)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(send_error)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = read_body(response).await.map_err(send_error)?;
        outcome(status, retry_after, body)
    }
}

fn bad_args(message: String) -> TaskError {
    TaskError::give_up("bad_args", message)
}

fn refused(refusal: &guard::RefusedAddress) -> TaskError {
    TaskError::give_up("refused_address", refusal.to_string())
}

fn timeout(seconds: f64) -> Result<Duration, TaskError> {
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(bad_args(format!(
            "timeout_seconds must be a positive number, got {seconds}"
        ))),
    }
}

/// The caller's headers, then idem's: the idempotency headers are idem's promise, so they win.
fn headers(
    ctx: &TaskContext,
    given: &BTreeMap<String, String>,
    content_type: Option<&'static str>,
) -> Result<HeaderMap, TaskError> {
    let mut headers = HeaderMap::new();
    for (name, value) in given {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad_args(format!("headers: invalid header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| bad_args(format!("headers: invalid value for {name}")))?;
        headers.insert(name, value);
    }
    if let Some(content_type) = content_type {
        headers
            .entry(CONTENT_TYPE)
            .or_insert(HeaderValue::from_static(content_type));
    }
    let key = match &ctx.idempotency_key {
        Some(key) => key.as_str().to_owned(),
        None => ctx.task_id.to_string(),
    };
    let ours = [
        ("idempotency-key", key),
        ("idem-task-id", ctx.task_id.to_string()),
        ("idem-attempt", ctx.attempt.to_string()),
    ];
    for (name, value) in ours {
        // Keys are printable ASCII, ids are UUIDs and attempts are numbers: always valid values.
        let value = HeaderValue::from_str(&value).expect("idem's header values are ASCII");
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok(headers)
}

/// A `Retry-After` given in seconds; the HTTP-date form falls back to the standard backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Reads at most [`OUTPUT_LIMIT`] bytes, so a huge response cannot exhaust the worker or the store.
async fn read_body(mut response: Response) -> Result<Value, reqwest::Error> {
    let mut bytes = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        let room = OUTPUT_LIMIT - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    if !truncated {
        if let Ok(json) = serde_json::from_slice::<Value>(&bytes) {
            return Ok(json);
        }
    }
    Ok(Value::String(lossy_prefix(&bytes, OUTPUT_LIMIT)))
}

fn outcome(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Value,
) -> Result<HttpResult, TaskError> {
    if status.is_success() || status.is_redirection() || status.is_informational() {
        return Ok(HttpResult {
            status: status.as_u16(),
            body,
        });
    }
    let quoted = match &body {
        Value::String(text) => text.chars().take(ERROR_BODY_CHARS).collect(),
        json => json
            .to_string()
            .chars()
            .take(ERROR_BODY_CHARS)
            .collect::<String>(),
    };
    let error = ErrorInfo::new("http_status", format!("HTTP {status}: {quoted}"));
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    let honours_retry_after =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    Err(match retry_after {
        Some(after) if honours_retry_after => TaskError::RetryAfter { after, error },
        _ if retryable => TaskError::Retry(error),
        _ => TaskError::GiveUp(error),
    })
}

fn send_error(err: reqwest::Error) -> TaskError {
    if let Some(refusal) = guard::refusal_in(&err) {
        return refused(refusal);
    }
    let message = error_chain(&err);
    if err.is_builder() {
        TaskError::give_up("bad_args", message)
    } else if err.is_timeout() {
        TaskError::retry("timeout", message)
    } else {
        // Refused or reset connections, DNS failures, bodies cut short: all may pass on retry.
        TaskError::retry("connection", message)
    }
}

/// `reqwest`'s own message names only the URL; the cause is further down the chain.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        message.push_str(": ");
        message.push_str(&e.to_string());
        cause = e.source();
    }
    message
}

#[cfg(test)]
mod tests;
