//! Runs one attempt of an HTTP probe: renders each step's request, sends it (following redirects),
//! applies captures and every assertion, and skips the remaining steps after one that did not pass.

use std::time::Instant;

use bytes::Bytes;

use super::cookies::CookieJar;
use super::transport::{FailureKind, IncomingResponse, Limits, OutgoingRequest, Transport};
use crate::artifacts::RunArtifacts;
use crate::query::Observation;
use crate::result::{Exchange, Outcome, Phases, StepResult};
use crate::spec::{BodySpec, HttpProbe, HttpStep, JsonTemplate};
use crate::template::{Masker, RenderError, Scope};

/// How much of a body `-v` output and artifacts keep.
const SHOWN_BODY_BYTES: usize = 4096;

/// Headers whose values never appear in output.
const SENSITIVE_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

/// Runs the steps of `probe` once, within `deadline`.
pub async fn run_steps(
    probe: &HttpProbe,
    transport: &Transport,
    scope: &mut Scope,
    masker: &Masker,
    deadline: tokio::time::Instant,
    artifacts: Option<&RunArtifacts>,
) -> Vec<StepResult> {
    let mut jar = CookieJar::default();
    let mut results = Vec::with_capacity(probe.steps.len());
    let mut blocked = false;
    for step in &probe.steps {
        if blocked {
            results.push(StepResult::skipped(&step.name));
            continue;
        }
        let step_deadline = match step.timeout {
            Some(t) => deadline.min(tokio::time::Instant::now() + t),
            None => deadline,
        };
        let result = run_step(
            probe,
            step,
            transport,
            scope,
            &mut jar,
            masker,
            step_deadline,
            artifacts,
        )
        .await;
        blocked = !result.result.is_pass();
        results.push(result);
    }
    results
}

// Everything one step touches, passed as is: a struct would only rename the list.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    probe: &HttpProbe,
    step: &HttpStep,
    transport: &Transport,
    scope: &mut Scope,
    jar: &mut CookieJar,
    masker: &Masker,
    deadline: tokio::time::Instant,
    artifacts: Option<&RunArtifacts>,
) -> StepResult {
    let started = Instant::now();
    let mut result = StepResult::skipped(&step.name);
    let request = match render_request(step, scope) {
        Ok(r) => r,
        Err(e) => {
            result.result = Outcome::Error;
            result.error = Some(format!("could not build the request: {e}"));
            return result;
        }
    };
    let masker = masker.with(scope.secret_values());
    let limits = Limits {
        deadline,
        max_body_bytes: probe.max_body_bytes,
        insecure: probe.insecure,
    };
    let exchange = send_following_redirects(probe, transport, request, jar, &limits).await;
    result.duration = started.elapsed();
    result.phases = Some(exchange.phases);
    result.exchange = Some(exchange.shown(&masker));
    let response = match exchange.outcome {
        Ok(response) => response,
        Err((kind, message)) => {
            result.result = if kind == FailureKind::Timeout {
                Outcome::Timeout
            } else {
                Outcome::Error
            };
            result.error = Some(masker.mask(&message));
            return result;
        }
    };
    result.status = Some(response.status);
    result.cert_not_after = exchange.cert_not_after;
    result.tls_version.clone_from(&response.tls_version);
    let obs = Observation::new(
        Some(response.status),
        &response.headers,
        &response.body,
        result.duration,
        exchange.cert_not_after,
    );
    let mut problems = Vec::new();
    for capture in &step.captures {
        match capture.extract(&obs) {
            Ok(value) => scope.set(&capture.name, value),
            Err(e) => problems.push(e),
        }
    }
    result.asserts = step
        .asserts
        .iter()
        .map(|a| a.evaluate(&obs, scope, &masker))
        .collect();
    let failed = result.asserts.iter().any(|a| !a.result.is_pass());
    result.result = if failed || !problems.is_empty() {
        Outcome::Fail
    } else {
        Outcome::Pass
    };
    if !problems.is_empty() {
        result.error = Some(masker.mask(&problems.join("; ")));
    }
    if result.result == Outcome::Fail
        && let Some(store) = artifacts
    {
        // The whole body (up to the cap), scrubbed of secrets, for whoever investigates.
        let body = masker.mask(&String::from_utf8_lossy(&response.body));
        match store.save(&format!("{}-response.txt", step.name), body.as_bytes()) {
            Ok(path) => result.artifacts.push(path),
            Err(e) => {
                tracing::warn!(error = %e, "Could not save the response body of a failed step.")
            }
        }
    }
    result
}

/// What one step's exchange produced, redirects included.
struct StepExchange {
    outcome: Result<IncomingResponse, (FailureKind, String)>,
    phases: Phases,
    cert_not_after: Option<i64>,
    last_request: OutgoingRequest,
}

impl StepExchange {
    fn shown(&self, masker: &Masker) -> Exchange {
        let req = &self.last_request;
        let mut exchange = Exchange {
            request_line: masker.mask(&format!("{} {}", req.method, req.url)),
            request_headers: show_headers(&req.headers, masker),
            request_body: show_body(&req.body, masker),
            ..Exchange::default()
        };
        if let Ok(resp) = &self.outcome {
            exchange.response_headers = show_headers(&resp.headers, masker);
            exchange.response_body = show_body(&resp.body, masker);
        }
        exchange
    }
}

async fn send_following_redirects(
    probe: &HttpProbe,
    transport: &Transport,
    mut request: OutgoingRequest,
    jar: &mut CookieJar,
    limits: &Limits,
) -> StepExchange {
    let mut phases = Phases::default();
    let mut cert_not_after: Option<i64> = None;
    let mut redirects = 0;
    loop {
        let mut sent = request.clone();
        if let Some(cookies) = jar.header_for(&sent.url) {
            sent.headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("cookie"));
            sent.headers.push(("Cookie".into(), cookies));
        }
        let outcome = transport.send(&sent, limits).await;
        let response = match outcome {
            Ok(r) => r,
            Err(failure) => {
                phases.add(&failure.phases);
                return StepExchange {
                    outcome: Err((failure.kind, failure.message)),
                    phases,
                    cert_not_after,
                    last_request: sent,
                };
            }
        };
        phases.add(&response.phases);
        cert_not_after = match (cert_not_after, response.cert_not_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        jar.store(
            &sent.url,
            response
                .headers
                .iter()
                .filter(|(n, _)| n == "set-cookie")
                .map(|(_, v)| v.as_str()),
        );
        let location = response
            .headers
            .iter()
            .find(|(n, _)| n == "location")
            .map(|(_, v)| v.clone());
        let redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
        let (Some(location), true, true) = (location, redirect, probe.follow_redirects) else {
            return StepExchange {
                outcome: Ok(response),
                phases,
                cert_not_after,
                last_request: sent,
            };
        };
        if redirects >= probe.max_redirects {
            return StepExchange {
                outcome: Err((
                    FailureKind::Protocol,
                    format!(
                        "too many redirects: stopped after {} (last Location: {location}); raise max_redirects or fix the loop",
                        probe.max_redirects
                    ),
                )),
                phases,
                cert_not_after,
                last_request: sent,
            };
        }
        redirects += 1;
        let next = match sent.url.join(&location) {
            Ok(u) => u,
            Err(e) => {
                return StepExchange {
                    outcome: Err((
                        FailureKind::Protocol,
                        format!("invalid redirect Location `{location}`: {e}"),
                    )),
                    phases,
                    cert_not_after,
                    last_request: sent,
                };
            }
        };
        // 303, and 301/302 after a POST, turn into a GET without a body, as browsers do.
        let to_get = response.status == 303
            || (matches!(response.status, 301 | 302) && request.method == http::Method::POST);
        if to_get {
            request.method = http::Method::GET;
            request.body = Bytes::new();
            request.headers.retain(|(n, _)| {
                !n.eq_ignore_ascii_case("content-type") && !n.eq_ignore_ascii_case("content-length")
            });
        }
        if next.host_str() != request.url.host_str() {
            request
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
        }
        request.url = next;
    }
}

fn render_request(step: &HttpStep, scope: &mut Scope) -> Result<OutgoingRequest, RenderError> {
    let spec = &step.request;
    let raw_url = spec.url.render(scope)?;
    let mut url = url::Url::parse(&raw_url)
        .map_err(|e| RenderError(format!("invalid URL `{raw_url}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(RenderError(format!(
            "unsupported scheme `{}` in `{raw_url}`; use http or https",
            url.scheme()
        )));
    }
    if !spec.query.is_empty() {
        let mut rendered = Vec::with_capacity(spec.query.len());
        for (k, v) in &spec.query {
            rendered.push((k.clone(), v.render(scope)?));
        }
        url.query_pairs_mut().extend_pairs(rendered);
    }
    let mut headers = Vec::with_capacity(spec.headers.len() + 1);
    for (name, value) in &spec.headers {
        headers.push((name.clone(), value.render(scope)?));
    }
    let has = |headers: &[(String, String)], n: &str| {
        headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n))
    };
    let body = match &spec.body {
        None => Bytes::new(),
        Some(BodySpec::Text(t)) => Bytes::from(t.render(scope)?),
        Some(BodySpec::Json(doc)) => {
            if !has(&headers, "content-type") {
                headers.push(("Content-Type".into(), "application/json".into()));
            }
            Bytes::from(render_json(doc, scope)?.to_string())
        }
        Some(BodySpec::Form(fields)) => {
            if !has(&headers, "content-type") {
                headers.push((
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded".into(),
                ));
            }
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in fields {
                form.append_pair(k, &v.render(scope)?);
            }
            Bytes::from(form.finish())
        }
    };
    let method = http::Method::from_bytes(spec.method.as_bytes())
        .map_err(|_| RenderError(format!("invalid method `{}`", spec.method)))?;
    Ok(OutgoingRequest {
        method,
        url,
        headers,
        body,
    })
}

fn render_json(doc: &JsonTemplate, scope: &mut Scope) -> Result<serde_json::Value, RenderError> {
    Ok(match doc {
        JsonTemplate::Null => serde_json::Value::Null,
        JsonTemplate::Bool(b) => serde_json::Value::Bool(*b),
        JsonTemplate::Number(n) => serde_json::Value::Number(n.clone()),
        JsonTemplate::String(t) => serde_json::Value::String(t.render(scope)?),
        JsonTemplate::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|i| render_json(i, scope))
                .collect::<Result<_, _>>()?,
        ),
        JsonTemplate::Object(fields) => {
            let mut map = serde_json::Map::new();
            for (k, v) in fields {
                map.insert(k.clone(), render_json(v, scope)?);
            }
            serde_json::Value::Object(map)
        }
    })
}

fn show_headers(headers: &[(String, String)], masker: &Masker) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            let value = if SENSITIVE_HEADERS.iter().any(|s| n.eq_ignore_ascii_case(s)) {
                Masker::MASK.to_string()
            } else {
                masker.mask(v)
            };
            (n.clone(), value)
        })
        .collect()
}

fn show_body(body: &[u8], masker: &Masker) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    // Read a little past the cut, so a secret that straddles it is recognised and masked whole.
    let reach = SHOWN_BODY_BYTES + masker.longest() + 4;
    let text = String::from_utf8_lossy(&body[..body.len().min(reach)]);
    let mut text = masker.mask_prefix(&text, SHOWN_BODY_BYTES);
    if body.len() > SHOWN_BODY_BYTES {
        text.push_str(&format!("… ({} bytes in all)", body.len()));
    }
    Some(text)
}

/// Masks every string of a step result that could carry a secret.
pub fn mask_step(step: &mut StepResult, masker: &Masker) {
    if masker.is_empty() {
        return;
    }
    if let Some(e) = step.error.as_mut() {
        masker.mask_in_place(e);
    }
    for a in &mut step.asserts {
        masker.mask_in_place(&mut a.expected);
        if let Some(actual) = a.actual.as_mut() {
            masker.mask_in_place(actual);
        }
        if let Some(m) = a.message.as_mut() {
            masker.mask_in_place(m);
        }
    }
    if let Some(x) = step.exchange.as_mut() {
        masker.mask_in_place(&mut x.request_line);
        for (_, v) in x
            .request_headers
            .iter_mut()
            .chain(x.response_headers.iter_mut())
        {
            masker.mask_in_place(v);
        }
        for b in [x.request_body.as_mut(), x.response_body.as_mut()]
            .into_iter()
            .flatten()
        {
            masker.mask_in_place(b);
        }
    }
}
