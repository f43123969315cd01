//! Following a job live over `GET /api/jobs/{id}/events` (Server-Sent Events) and printing its
//! output line by line, each line prefixed by its agent.
//!
//! The server sends `output` events (`{run_id, stream, seq, data | data_b64}`, the chunk id as
//! event id), `state` events (a run view) and one `end` event (`{job_id, status}`) before it
//! closes the stream. If the connection drops before `end`, the CLI reconnects with
//! `Last-Event-ID`, so no output is printed twice or lost; states are re-sent in full by the
//! server and de-duplicated here.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use reqwest::Response;
use serde_json::{Value, json};

use crate::args::Stream;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, Colour};

/// Longest line kept in memory before it is printed anyway (output without newlines).
const MAX_LINE: usize = 64 * 1024;
/// Longest SSE line accepted (an output chunk, base64-encoded, is far smaller).
const MAX_EVENT_LINE: usize = 16 * 1024 * 1024;
/// Reconnections after a dropped event stream before giving up.
const MAX_RECONNECTS: u32 = 5;

/// Run states after which nothing changes.
pub const FINAL: &[&str] = &[
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "expired",
    "lost",
];

/// One server-sent event.
#[derive(Debug, Default)]
pub struct SseEvent {
    /// `event:` (empty means `message`).
    pub event: String,
    /// `data:` lines joined with newlines.
    pub data: String,
    /// `id:`.
    pub id: Option<String>,
}

/// Reads events from a `text/event-stream` response.
pub struct EventReader {
    response: Response,
    buf: Vec<u8>,
    parser: SseParser,
    idle: Option<Duration>,
}

impl EventReader {
    /// Wraps a response.
    pub fn new(response: Response) -> Self {
        Self {
            response,
            buf: Vec::new(),
            parser: SseParser::default(),
            idle: None,
        }
    }

    /// Gives up (an error) when the server sends nothing, not even a keep-alive comment, for
    /// `idle`: a connection that died without a word, which would otherwise be waited on for
    /// good.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, String> {
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(event) = self.parser.line(&String::from_utf8_lossy(&line)) {
                    return Ok(Some(event));
                }
            }
            if self.buf.len() > MAX_EVENT_LINE {
                return Err("the event stream sent a line longer than 16 MiB".into());
            }
            let chunk = match self.idle {
                Some(idle) => tokio::time::timeout(idle, self.response.chunk())
                    .await
                    .map_err(|_| format!("the server sent nothing for {} s", idle.as_secs()))?,
                None => self.response.chunk().await,
            };
            match chunk {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// The line-level SSE grammar (the parts the server uses: event, data, id, comments).
#[derive(Default)]
struct SseParser {
    current: SseEvent,
}

impl SseParser {
    /// Feeds one line; answers an event when the line ends one.
    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.current.data.is_empty() && self.current.event.is_empty() {
                return None;
            }
            let mut event = std::mem::take(&mut self.current);
            if event.data.ends_with('\n') {
                event.data.pop();
            }
            return Some(event);
        }
        if line.starts_with(':') {
            return None; // a keep-alive comment
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                self.current.data.push_str(value);
                self.current.data.push('\n');
            }
            "id" => self.current.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

/// What to print while following.
pub struct Options {
    /// Only this run's output and states.
    pub run: Option<String>,
    /// Which streams.
    pub stream: Stream,
    /// Prefix each line with its agent.
    pub prefix: bool,
    /// Print every event as a JSON line instead of output (`--json`).
    pub json: bool,
    /// Print nothing (just wait for the end).
    pub quiet: bool,
    /// Say on stderr how each run ended.
    pub announce: bool,
}

/// Prints a job's events as they come.
pub struct Printer {
    options: Options,
    labels: HashMap<String, String>,
    colours: HashMap<String, Colour>,
    width: usize,
    partial: HashMap<(String, bool), Vec<u8>>,
    states: HashMap<String, String>,
    total: usize,
    colour_out: bool,
    colour_err: bool,
    progress: bool,
    progress_shown: bool,
}

impl Printer {
    /// A printer for a job whose runs are `runs` (run id to agent label).
    pub fn new(options: Options, runs: Vec<(String, String)>) -> Self {
        let selected: Vec<&(String, String)> = runs
            .iter()
            .filter(|(run, _)| options.run.as_ref().is_none_or(|r| r == run))
            .collect();
        let total = selected.len();
        let width = selected
            .iter()
            .map(|(_, l)| l.chars().count())
            .max()
            .unwrap_or(0);
        let colours = runs
            .iter()
            .enumerate()
            .map(|(i, (run, _))| (run.clone(), Colour::nth(i)))
            .collect();
        let progress = !options.quiet
            && !options.json
            && total > 1
            && std::io::IsTerminal::is_terminal(&std::io::stderr());
        Self {
            labels: runs.into_iter().collect(),
            colours,
            width,
            partial: HashMap::new(),
            states: HashMap::new(),
            total,
            colour_out: output::colour_stdout(),
            colour_err: output::colour_stderr(),
            progress,
            progress_shown: false,
            options,
        }
    }

    fn wanted_run(&self, run: &str) -> bool {
        self.options.run.as_ref().is_none_or(|r| r == run)
    }

    /// Handles one event; answers the job's final status on `end`.
    pub fn handle(&mut self, event: &SseEvent) -> Option<String> {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        if self.options.json && !self.options.quiet {
            let line = json!({"event": event.event, "id": event.id, "data": data});
            output::print_stdout(format!("{line}\n").as_bytes());
        }
        match event.event.as_str() {
            "output" => self.output(&data),
            "state" => self.state(&data),
            "end" => {
                for key in self.partial.keys().cloned().collect::<Vec<_>>() {
                    self.flush(&key);
                }
                self.clear_progress();
                return Some(output::field(&data, "status"));
            }
            _ => {}
        }
        None
    }

    fn output(&mut self, data: &Value) {
        let run = output::field(data, "run_id");
        let stream = output::field(data, "stream");
        if !self.wanted_run(&run) || !self.options.stream.wants(&stream) {
            return;
        }
        let bytes = match outpost_protocol::decode_output_data(
            data.get("data").and_then(Value::as_str),
            data.get("data_b64").and_then(Value::as_str),
        ) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("warning: an output chunk of run {run} could not be decoded: {e}");
                return;
            }
        };
        if self.options.json || self.options.quiet {
            return;
        }
        self.raw(&run, stream == "stderr", &bytes);
    }

    /// Prints a run's output bytes line by line (a partial line waits for the rest).
    pub fn raw(&mut self, run: &str, is_err: bool, bytes: &[u8]) {
        let key = (run.to_owned(), is_err);
        let mut buf = self.partial.remove(&key).unwrap_or_default();
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            self.line(&key, &buf[start..start + pos]);
            start += pos + 1;
        }
        let mut rest = buf.split_off(start);
        if rest.len() > MAX_LINE {
            self.line(&key, &rest);
            rest.clear();
        }
        if !rest.is_empty() {
            self.partial.insert(key, rest);
        }
    }

    /// Prints what is left of a run's last lines.
    pub fn end_run(&mut self, run: &str) {
        self.flush(&(run.to_owned(), false));
        self.flush(&(run.to_owned(), true));
    }

    fn flush(&mut self, key: &(String, bool)) {
        if let Some(rest) = self.partial.remove(key)
            && !rest.is_empty()
        {
            self.line(key, &rest);
        }
    }

    /// Prints one line of a run's output with its prefix.
    fn line(&mut self, (run, is_err): &(String, bool), bytes: &[u8]) {
        self.clear_progress();
        let mut out = Vec::with_capacity(bytes.len() + 32);
        if self.options.prefix {
            let label = self.labels.get(run).cloned().unwrap_or_else(|| run.clone());
            let padded = format!("{label:<width$} | ", width = self.width);
            let colour = self.colours.get(run).copied().unwrap_or(Colour::Cyan);
            let on = if *is_err {
                self.colour_err
            } else {
                self.colour_out
            };
            out.extend_from_slice(output::paint(&padded, colour, on).as_bytes());
        }
        out.extend_from_slice(bytes);
        out.push(b'\n');
        if *is_err {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&out).and_then(|()| err.flush());
        } else {
            output::print_stdout(&out);
        }
        self.draw_progress();
    }

    fn state(&mut self, run: &Value) {
        let id = output::field(run, "run_id");
        if !self.wanted_run(&id) {
            return;
        }
        let status = output::field(run, "status");
        if self.states.get(&id) == Some(&status) {
            return;
        }
        self.states.insert(id.clone(), status.clone());
        if FINAL.contains(&status.as_str()) {
            self.flush(&(id.clone(), false));
            self.flush(&(id.clone(), true));
            if self.options.announce && !self.options.quiet && !self.options.json {
                self.clear_progress();
                let label = self.labels.get(&id).cloned().unwrap_or(id);
                eprintln!("{}", run_outcome(&label, run, self.colour_err));
            }
        }
        self.draw_progress();
    }

    /// (succeeded, failed, pending) among the selected runs.
    pub fn counts(&self) -> (usize, usize, usize) {
        let done = self.states.values().filter(|s| *s == "succeeded").count();
        let failed = self
            .states
            .values()
            .filter(|s| *s != "succeeded" && FINAL.contains(&s.as_str()))
            .count();
        (done, failed, self.total.saturating_sub(done + failed))
    }

    fn draw_progress(&mut self) {
        if !self.progress {
            return;
        }
        let (done, failed, pending) = self.counts();
        let text = format!("{done} done, {failed} failed, {pending} pending");
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{}",
            output::paint(&text, Colour::Dim, self.colour_err)
        )
        .and_then(|()| err.flush());
        self.progress_shown = true;
    }

    fn clear_progress(&mut self) {
        if self.progress_shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K").and_then(|()| err.flush());
            self.progress_shown = false;
        }
    }
}

/// One line saying how a run ended: `web-1: failed, exit 3, 1.2s`.
pub fn run_outcome(label: &str, run: &Value, colour: bool) -> String {
    let status = output::field(run, "status");
    let painted = match output::status_colour(&status) {
        Some(c) => output::paint(&status, c, colour),
        None => status,
    };
    let mut text = format!("{label}: {painted}");
    if let Some(code) = run.get("exit_code").and_then(Value::as_i64) {
        text.push_str(&format!(", exit {code}"));
    }
    if let Some(ms) = run.get("duration_ms").and_then(Value::as_i64) {
        text.push_str(&format!(", {}", output::duration_ms(Some(ms))));
    }
    // A script's non-zero exit is already said by "exit N"; other errors explain themselves.
    if let Some(error) = run
        .get("error")
        .filter(|e| e.is_object())
        .filter(|e| run.get("exit_code").is_none_or(Value::is_null) || e["code"] != "exit_code")
    {
        text.push_str(&format!(
            " ({}: {})",
            output::field(error, "code"),
            output::field(error, "message")
        ));
    }
    text
}

/// Follows the job's events until its `end` event; answers the job's final status.
pub async fn follow(
    client: &Client,
    job_id: &str,
    printer: &mut Printer,
) -> Result<String, CliError> {
    let path = format!("/api/jobs/{job_id}/events");
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    loop {
        let response = match client.events(&path, last_id.as_deref()).await {
            Ok(response) => response,
            Err(err @ CliError::Api { .. }) => return Err(err),
            Err(err) if reconnects >= MAX_RECONNECTS => return Err(err),
            Err(_) => {
                reconnects += 1;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(reconnects))).await;
                continue;
            }
        };
        let mut reader = EventReader::new(response);
        let cause = loop {
            match reader.next().await {
                Ok(Some(event)) => {
                    reconnects = 0;
                    if event.event == "output"
                        && let Some(id) = &event.id
                    {
                        last_id = Some(id.clone());
                    }
                    if let Some(status) = printer.handle(&event) {
                        return Ok(status);
                    }
                }
                Ok(None) => break "the server closed the event stream".to_owned(),
                Err(e) => break e,
            }
        };
        if reconnects >= MAX_RECONNECTS {
            return Err(CliError::Unreachable {
                url: client.base().to_owned(),
                cause: format!("following job {job_id}: {cause}"),
            });
        }
        reconnects += 1;
        tokio::time::sleep(Duration::from_millis(500 * u64::from(reconnects))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parser: &mut SseParser, text: &str) -> Vec<SseEvent> {
        text.split('\n').filter_map(|l| parser.line(l)).collect()
    }

    #[test]
    fn parses_events_ids_comments_and_multiline_data() {
        let mut parser = SseParser::default();
        let events = feed(
            &mut parser,
            ": keep-alive\n\nevent: output\nid: 7\ndata: {\"a\":1}\n\nevent:state\ndata:x\ndata: y\n\n",
        );
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "output");
        assert_eq!(events[0].id.as_deref(), Some("7"));
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[1].event, "state");
        assert_eq!(events[1].data, "x\ny");
    }
}
