//! The dashboard's live updates, as Server-Sent Events with the session cookie (an
//! `EventSource` sends no `Authorization` header), and a run's raw output by byte range.
//!
//! - `/ui/agents/stream`: the agents page's rows under its filter, sent when they change
//!   (read every [`AGENTS_EVERY`]).
//! - `/ui/jobs/{id}/stream`: `Jobs::follow`, as `GET /api/jobs/{id}/events`, with the bytes
//!   in base64 (the page decodes them with a streaming `TextDecoder`, so a character split
//!   across chunks and invalid UTF-8 come out as the browser would show a file). On a first
//!   connection each run's output before its last [`TAIL_BYTES`] is read but not sent (a
//!   `skipped` event says how much), so that a run of 100 MB costs the browser its tail;
//!   the page loads earlier output by byte range from `/output` when asked. With `?run=`,
//!   one run only (the job page's open run).
//! - `/ui/jobs/{id}/live`: the job page's summary and groups, again when the job changed (at
//!   most once every [`SUMMARY_EVERY`]).

use std::collections::HashMap;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;
use outpost_protocol::OutputStream;
use serde_json::json;

use super::pages::{AgentsQuery, JobQuery, SummaryLine, agent_page, run_duration, summary_line};
use super::{Ui, UiError};
use crate::api::AppState;
use crate::api::{Path, Query};
use outpost_core::service::jobs::JobEvent;
use outpost_store::domain::DomainError;

/// How often the agents page's rows are read again for its stream.
pub const AGENTS_EVERY: Duration = Duration::from_secs(2);
/// How long one agents stream lasts before the browser reconnects (and is authenticated
/// again).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// Output of a run sent on a first connection: the last this many bytes.
pub const TAIL_BYTES: i64 = 256 * 1024;
/// The job page's summary is read at most this often while the job changes.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// The most bytes one `/output` request with `len` returns.
const MAX_RANGE: u64 = 1024 * 1024;

/// `GET /ui/agents/stream`: `agents` events with `{rows, page, pages, total}`.
pub async fn agents(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Query(query): Query<AgentsQuery>,
) -> Result<Response, UiError> {
    // A bad filter fails the request, not the stream.
    agent_page(&state, &ui, &query).await?;
    // The stream ends after a while; the browser reconnects at once, through the session
    // middleware, so a user disabled or signed out meanwhile stops getting rows.
    let until = tokio::time::Instant::now() + STREAM_LIFETIME;
    let stream = futures_util::stream::unfold(
        (state, ui, query, String::new(), true),
        move |(state, ui, query, mut last, mut first)| async move {
            loop {
                if !first {
                    tokio::time::sleep(AGENTS_EVERY).await;
                }
                if tokio::time::Instant::now() >= until {
                    return None;
                }
                let body = match agent_page(&state, &ui, &query).await {
                    Ok((rows, page, pages, total)) => {
                        json!({"rows": rows, "page": page, "pages": pages, "total": total})
                            .to_string()
                    }
                    // The database fails: the page stops updating (the browser retries).
                    Err(_) => return None,
                };
                if first || body != last {
                    let event = Event::default().event("agents").data(body.clone());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (state, ui, query, body, false),
                    ));
                }
                // Nothing changed: look again later (keep-alives go out meanwhile).
                last = body;
                first = false;
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Per run, how much output a first connection leaves out, and how much it has left out.
struct Tail {
    skip: HashMap<String, (i64, i64, bool)>,
}

impl Tail {
    /// Whether to send a chunk of `len` bytes of `run`, and the `skipped` event to send
    /// before it (the first chunk sent after some were left out).
    fn admit(&mut self, run: &str, len: i64) -> (bool, Option<i64>) {
        let Some((budget, seen, announced)) = self.skip.get_mut(run) else {
            return (true, None);
        };
        if *announced {
            // Once output is sent, all that follows is: a smaller chunk later must not fit
            // the budget again and leave a hole.
            return (true, None);
        }
        if *seen + len <= *budget {
            *seen += len;
            return (false, None);
        }
        *announced = true;
        (true, Some(*seen))
    }
}

/// `/ui/jobs/{id}/stream`'s query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct StreamQuery {
    /// Only this run: its output, state and end (the job page's open run).
    run: Option<String>,
}

/// `GET /ui/jobs/{id}/stream[?run=RUN]`: `output` (`{run, err, b64}`, id = chunk id),
/// `skipped` (`{run, bytes}`), `state` (`{run, state, exit_code, duration, error}`) and `end`
/// (`{status}`: the job's, or with `run` the run's final state) events. With `run`, only
/// that run's output and row are read (`Jobs::follow_run`), whatever the job's size.
pub async fn job(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let mut tail = Tail {
        skip: HashMap::new(),
    };
    let mut leave_out = |run: &outpost_store::command::Model| {
        let total = run.stdout_bytes + run.stderr_bytes;
        if resumed.is_none() && total > TAIL_BYTES {
            tail.skip
                .insert(run.id.clone(), (total - TAIL_BYTES, 0, false));
        }
    };
    let rx = match query.run.as_deref().filter(|r| !r.is_empty()) {
        Some(run_id) => {
            let (run, rx) = state
                .services
                .jobs
                .follow_run(&ui.caller, &id, run_id, resumed.unwrap_or(0))
                .await?;
            leave_out(&run);
            rx
        }
        None => {
            if resumed.is_none() {
                let job = state.services.jobs.get(&ui.caller, &id).await?;
                job.runs.iter().for_each(&mut leave_out);
            }
            state
                .services
                .jobs
                .follow(&ui.caller, &id, resumed.unwrap_or(0))
                .await?
        }
    };
    Ok(Sse::new(job_events(rx, tail))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A job's (or a run's) events as the page reads them.
fn job_events(
    rx: tokio::sync::mpsc::Receiver<JobEvent>,
    tail: Tail,
) -> impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>> {
    futures_util::stream::unfold((rx, tail), |(mut rx, mut tail)| async move {
        let mut events = Vec::with_capacity(2);
        while events.is_empty() {
            match rx.recv().await? {
                JobEvent::Output {
                    id,
                    run_id,
                    stream,
                    data,
                    ..
                } => {
                    let (send, skipped) = tail.admit(&run_id, data.len() as i64);
                    if let Some(bytes) = skipped {
                        events.push(
                            Event::default()
                                .event("skipped")
                                .data(json!({"run": run_id, "bytes": bytes}).to_string()),
                        );
                    }
                    if send {
                        let body = json!({
                            "run": run_id,
                            "err": stream != 0,
                            "b64": base64::engine::general_purpose::STANDARD.encode(&data),
                        });
                        events.push(
                            Event::default()
                                .event("output")
                                .id(id.to_string())
                                .data(body.to_string()),
                        );
                    }
                }
                JobEvent::State(run) => {
                    // Written as the job's page writes it, so that the row reads the same
                    // after a reload.
                    let duration = run_duration(&run);
                    let body = json!({
                        "run": run.id,
                        "state": run.state,
                        "exit_code": run.exit_code,
                        "duration": duration,
                        "error": run.error_message,
                    });
                    events.push(Event::default().event("state").data(body.to_string()));
                }
                JobEvent::End { status, .. } => {
                    events.push(
                        Event::default()
                            .event("end")
                            .data(json!({"status": status}).to_string()),
                    );
                }
            }
        }
        let events =
            futures_util::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>));
        Some((events, (rx, tail)))
    })
    .flatten()
}

/// `GET /ui/jobs/{id}/live?<the page's filters>`: the job page's summary bar and groups
/// (`summary` events, the JSON of `pages::SummaryLine`), sent at once, then again when the job
/// changed, at most once every [`SUMMARY_EVERY`], and only when it reads differently; `end`
/// once the job is over and every run is grouped. Each is a few `GROUP BY`s
/// (`Jobs::summary`): nothing here reads every run. Runs are grouped by the digester a
/// moment after they end, without a notification: while some wait, the summary is read
/// every [`SUMMARY_EVERY`] whether or not the job changed.
pub async fn summary(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
    Query(query): Query<JobQuery>,
) -> Result<Response, UiError> {
    let changes = state.services.jobs.changes(&ui.caller, &id).await?;
    let (first, job) = summary_line(&state, &ui, &id, &query).await?;
    let until = tokio::time::Instant::now() + STREAM_LIFETIME;
    let watch = Watch {
        state,
        ui,
        id,
        query,
        tenant_id: job.tenant_id,
        changes,
        until,
        first: Some(first),
        last: String::new(),
        read_at: tokio::time::Instant::now(),
        waiting: false,
        over: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        if watch.over {
            return None;
        }
        loop {
            let line = match watch.first.take() {
                Some(line) => line,
                None => {
                    if !watch.changed().await {
                        return None;
                    }
                    // At most one read a second, however often the job changes.
                    tokio::time::sleep_until(watch.read_at + SUMMARY_EVERY).await;
                    watch.read_at = tokio::time::Instant::now();
                    match summary_line(&watch.state, &watch.ui, &watch.id, &watch.query).await {
                        Ok((line, _)) => line,
                        // The database fails: the page stops updating (the browser retries).
                        Err(_) => return None,
                    }
                }
            };
            watch.waiting = line.undigested > 0;
            watch.over = line.settled();
            let body = serde_json::to_string(&line).unwrap_or_default();
            let mut events = Vec::new();
            if body != watch.last {
                events.push(Event::default().event("summary").data(body.clone()));
                watch.last = body;
            }
            if watch.over {
                events.push(
                    Event::default()
                        .event("end")
                        .data(json!({"status": line.status}).to_string()),
                );
            }
            if !events.is_empty() {
                let events = futures_util::stream::iter(
                    events.into_iter().map(Ok::<_, std::convert::Infallible>),
                );
                return Some((events, watch));
            }
        }
    })
    .flatten();
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What the summary stream keeps between its events.
struct Watch {
    state: AppState,
    ui: Ui,
    id: String,
    query: JobQuery,
    tenant_id: String,
    changes: tokio::sync::broadcast::Receiver<outpost_core::bus::JobChanged>,
    until: tokio::time::Instant,
    first: Option<SummaryLine>,
    last: String,
    read_at: tokio::time::Instant,
    /// Finished runs wait for their digest: read again without being told.
    waiting: bool,
    /// Sent `end`.
    over: bool,
}

impl Watch {
    /// Waits until the job changed (or, while runs wait to be grouped, for
    /// [`SUMMARY_EVERY`]); `false` when the stream should end (its lifetime is over, or the
    /// server stops).
    async fn changed(&mut self) -> bool {
        use tokio::sync::broadcast::error::RecvError;
        let deadline = if self.waiting {
            Ord::min(tokio::time::Instant::now() + SUMMARY_EVERY, self.until)
        } else {
            self.until
        };
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return tokio::time::Instant::now() < self.until;
                }
                change = self.changes.recv() => match change {
                    Ok(c) if c.concerns(&self.tenant_id, &self.id) => return true,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => return true,
                    Err(RecvError::Closed) => return false,
                },
            }
        }
    }
}

/// `/ui/jobs/{id}/runs/{run_id}/output`'s query.
#[derive(Debug, serde::Deserialize)]
pub struct OutputQuery {
    /// From this byte of the run's output (both streams, in the order they arrived).
    #[serde(default)]
    offset: u64,
    /// At most this many bytes (at most 1 MiB); the whole rest when absent.
    len: Option<u64>,
    /// `1`: as a file to save.
    download: Option<String>,
    /// `1`: as JSON parts that say their stream (`{"parts": [{"err", "b64"}]}`; needs `len`).
    parts: Option<String>,
}

/// `GET /ui/jobs/{id}/runs/{run_id}/output`: the run's output as `GET
/// /api/jobs/{id}/runs/{run_id}/output` gives it, from `offset`, for `len` bytes.
pub async fn output(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((id, run_id)): Path<(String, String)>,
    Query(query): Query<OutputQuery>,
) -> Result<Response, UiError> {
    if query.len.is_some_and(|len| len > MAX_RANGE) {
        return Err(DomainError::BadRequest(format!("len: at most {MAX_RANGE}")).into());
    }
    if query.parts.as_deref() == Some("1") {
        let len = query
            .len
            .ok_or_else(|| DomainError::BadRequest("len: required with parts".into()))?;
        let parts = state
            .services
            .jobs
            .output_parts(&ui.caller, &id, &run_id, query.offset, len)
            .await?;
        let parts: Vec<serde_json::Value> = parts
            .into_iter()
            .map(|(stream, bytes)| {
                json!({
                    "err": stream == OutputStream::Stderr,
                    "b64": base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            })
            .collect();
        return Ok(axum::Json(json!({ "parts": parts })).into_response());
    }
    let output = state
        .services
        .jobs
        .output(
            &ui.caller,
            &id,
            &run_id,
            vec![OutputStream::Stdout, OutputStream::Stderr],
            query.offset,
        )
        .await?;
    let body = match query.len {
        None => Body::from_stream(output.bytes),
        Some(len) => Body::from_stream(output.bytes.scan(len, |left, chunk| {
            let item = match chunk {
                Ok(mut bytes) if *left > 0 => {
                    bytes.truncate(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= bytes.len() as u64;
                    Some(Ok(bytes))
                }
                Ok(_) => None,
                Err(err) => Some(Err(err)),
            };
            std::future::ready(item)
        })),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    if query.download.as_deref() == Some("1") {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(value) = HeaderValue::from_str(&format!(
            "attachment; filename=\"run-{}.log\"",
            sanitize(&run_id)
        )) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    Ok(response)
}

/// A run id fit for a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_connection_gets_each_runs_tail() {
        let mut tail = Tail {
            skip: HashMap::from([("r".to_owned(), (100, 0, false))]),
        };
        assert_eq!(tail.admit("r", 60), (false, None));
        assert_eq!(tail.admit("r", 40), (false, None));
        assert_eq!(tail.admit("r", 10), (true, Some(100)));
        assert_eq!(tail.admit("r", 10), (true, None));
        // A small chunk after the first one sent is sent too (no hole in the tail).
        assert_eq!(tail.admit("r", 1), (true, None));
        assert_eq!(tail.admit("other", 1_000_000), (true, None));
    }
}
