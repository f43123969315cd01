//! The live event stream (`GET /api/events/stream`, CONTRACT.md §11) over the real server and CLI.
//!
//! Events are made as `schedules.rs` makes them: the server's hidden `OUTPOST_TEST_CLOCK_FILE`
//! moves the schedules' "now", and each jump of an hour makes a `schedule.missed` event for
//! every `*/10` schedule with the `skip` policy, without waiting an hour. A stream must hand
//! over each event once, in order, as `GET /api/events` shows it, to its own tenant only;
//! resume after `Last-Event-ID`; refuse a tenant's 33rd stream; and, with two nodes on one
//! PostgreSQL, carry an event one node recorded to a stream on the other.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use outpost_e2e::postgres::{self, Database};
use outpost_e2e::{Api, CliHome, Server, ServerOptions, wait_for};
use outpost_store::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Longest wait for an event the test made: a poll a second, plus a busy machine.
const EVENT_WAIT: Duration = Duration::from_secs(20);
/// How long a stream is watched to see that nothing more comes: several polls.
const QUIET: Duration = Duration::from_secs(3);

/// A server whose schedules read the time from a file, and that file.
async fn server_with_clock(
    at: &str,
    options: ServerOptions,
) -> (Server, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = dir.path().join("clock");
    std::fs::write(&clock, at).expect("clock");
    let mut options = options;
    options.envs.push((
        "OUTPOST_TEST_CLOCK_FILE".into(),
        clock.display().to_string(),
    ));
    let server = Server::start_with(options).await;
    (server, clock, dir)
}

fn set_clock(clock: &Path, at: &str) {
    // Written whole and renamed, so the server never reads half a timestamp.
    let next = clock.with_extension("next");
    std::fs::write(&next, at).expect("clock");
    std::fs::rename(&next, clock).expect("clock");
}

/// A schedule every 10 minutes that skips missed fires: each jump of the clock by an hour
/// records one `schedule.missed` event for it.
async fn ticking(api: &Api, name: &str) -> String {
    let (status, made) = api
        .post(
            "/api/schedules",
            // Minutes 7, 17, … 57: a clock moved to hh:00:05 finds the last fire missed
            // (more than the 60 s grace ago) and none late, so a jump records one
            // `schedule.missed` and makes no job (nor a job's event).
            json!({"name": name, "cron": "7-59/10 * * * *", "command": "ping",
                   "target": {"all": true}, "missed": "skip"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    made["id"].as_str().expect("id").to_owned()
}

/// The tenant's events as `GET /api/events` lists them, oldest first.
async fn listed(api: &Api) -> Vec<Value> {
    let (status, page) = api.get("/api/events?limit=200").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut events = page["events"].as_array().expect("events").clone();
    events.reverse();
    events
}

async fn wait_listed(api: &Api, count: usize) -> Vec<Value> {
    wait_for(&format!("{count} events listed"), EVENT_WAIT, || async {
        let events = listed(api).await;
        (events.len() >= count).then_some(events)
    })
    .await
}

/// One message of an event stream.
#[derive(Debug)]
struct Message {
    event: String,
    id: Option<String>,
    data: Value,
}

/// An open event stream, read message by message (keep-alive comments skipped).
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    /// Opens `/api/events/stream{query}` as `api`'s caller, resuming after `last_id`; panics
    /// unless it is answered 200 with an event stream.
    async fn open(api: &Api, base: &str, query: &str, last_id: Option<&str>) -> Self {
        let response = Self::request(api, base, query, last_id).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .expect("content type")
                .starts_with("text/event-stream")
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    async fn request(
        api: &Api,
        base: &str,
        query: &str,
        last_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(format!("{base}/api/events/stream{query}"))
            .bearer_auth(api.token());
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("stream")
    }

    /// The next message, or `None` when none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message {
                    event: String::new(),
                    id: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        message.event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        message.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if message.event.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                message.data = serde_json::from_str(&data).expect("data is JSON");
                return Some(message);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("stream");
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => panic!("the server ended the stream"),
            }
        }
    }

    /// The next `count` messages, each within [`EVENT_WAIT`].
    async fn take(&mut self, count: usize) -> Vec<Message> {
        let mut got = Vec::new();
        while got.len() < count {
            match self.next(EVENT_WAIT).await {
                Some(message) => got.push(message),
                None => panic!("{} of {count} events came: {got:?}", got.len()),
            }
        }
        got
    }

    /// Panics if anything but keep-alives comes for a while.
    async fn assert_quiet(&mut self) {
        if let Some(message) = self.next(QUIET).await {
            panic!("nothing more was to come, but: {message:?}");
        }
    }
}

/// Each message is the listed event: the same id, type and JSON.
fn assert_same(messages: &[Message], events: &[Value]) {
    let ids: Vec<_> = messages.iter().map(|m| m.id.clone()).collect();
    let want: Vec<_> = events
        .iter()
        .map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, want, "the stream's ids, in order, are the list's");
    for (message, event) in messages.iter().zip(events) {
        assert_eq!(message.event, event["type"].as_str().expect("type"));
        assert_eq!(&message.data, event);
    }
}

/// A second tenant's owner key.
async fn second_tenant(server: &Server) -> Api {
    let store = Store::open(&server.database()).await.expect("open store");
    let (_, owner) = store.create_tenant("b", None).await.expect("tenant");
    server.api().with_token(&owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sends_its_tenant_s_events_once_in_order_and_resumes_after_an_id() {
    let (server, clock, _dir) =
        server_with_clock("2026-06-01T00:00:00Z", ServerOptions::default()).await;
    let a = server.api();
    let b = second_tenant(&server).await;
    let tick = ticking(&a, "tick").await;
    let tock = ticking(&a, "tock").await;
    ticking(&b, "b-tick").await;
    // Stored before any stream opens: never sent by one that does not resume.
    set_clock(&clock, "2026-06-01T01:00:05Z");
    let before = wait_listed(&a, 2).await;
    wait_listed(&b, 1).await;

    let mut all = Stream::open(&a, &server.url, "", None).await;
    let mut of_tick = Stream::open(&a, &server.url, &format!("?subject_id={tick}"), None).await;
    let mut skipped = Stream::open(&a, &server.url, "?type=schedule.skipped", None).await;
    let mut missed = Stream::open(&a, &server.url, "?type=schedule", None).await;
    let mut of_b = Stream::open(&b, &server.url, "", None).await;

    // Three more jumps, one at a time: each records one event per schedule and tenant.
    for (n, at) in ["02:00:05", "03:00:05", "04:00:05"].iter().enumerate() {
        set_clock(&clock, &format!("2026-06-01T{at}Z"));
        wait_listed(&a, 2 + 2 * (n + 1)).await;
    }
    let events = listed(&a).await;
    assert_eq!(events.len(), 8, "{events:?}");
    let new = &events[2..];
    assert!(new.iter().all(|e| e["type"] == "schedule.missed"));

    let got = all.take(6).await;
    assert_same(&got, new);
    all.assert_quiet().await;
    let got = missed.take(6).await;
    assert_same(&got, new);
    let ticks: Vec<Value> = new
        .iter()
        .filter(|e| e["subject"]["id"] == tick.as_str())
        .cloned()
        .collect();
    assert_eq!(ticks.len(), 3);
    assert_same(&of_tick.take(3).await, &ticks);
    of_tick.assert_quiet().await;
    skipped.assert_quiet().await;
    assert!(new.iter().any(|e| e["subject"]["id"] == tock.as_str()));

    // Tenant B's stream has B's three, and none of A's (nor A's any of B's, above).
    let b_events = wait_listed(&b, 4).await;
    let got = of_b.take(3).await;
    assert_same(&got, &b_events[1..]);
    of_b.assert_quiet().await;
    let a_tenant = new[0]["tenant_id"].clone();
    assert!(got.iter().all(|m| m.data["tenant_id"] != a_tenant));

    // Resuming after the fourth event (the header, or `after`) sends only what followed it.
    let fourth = new[3]["id"].as_str().expect("id");
    let mut resumed = Stream::open(&a, &server.url, "", Some(fourth)).await;
    assert_same(&resumed.take(2).await, &new[4..]);
    resumed.assert_quiet().await;
    let mut after = Stream::open(
        &a,
        &server.url,
        &format!("?after={}", new[4]["id"].as_str().expect("id")),
        None,
    )
    .await;
    assert_same(&after.take(1).await, &new[5..]);
    // From the first event ever: everything, the ones before the streams opened too.
    let first = before[0]["id"].as_str().expect("id");
    let mut replay = Stream::open(&a, &server.url, "", Some(first)).await;
    assert_same(&replay.take(7).await, &events[1..]);

    // An id that is no event id is refused, naming where it came from.
    let bad = Stream::request(&a, &server.url, "", Some("yesterday")).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Last-Event-ID")),
        "{body}"
    );
    // An event recorded while the streams are open still reaches all of them.
    set_clock(&clock, "2026-06-01T05:00:05Z");
    let latest = wait_listed(&a, 10).await;
    assert_same(&all.take(2).await, &latest[8..]);
    assert_same(&resumed.take(2).await, &latest[8..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_33rd_stream_is_refused_until_one_closes() {
    let server = Server::start().await;
    let a = server.api();
    let b = second_tenant(&server).await;
    let mut open = Vec::new();
    for _ in 0..32 {
        open.push(Stream::open(&a, &server.url, "", None).await);
    }
    let refused = Stream::request(&a, &server.url, "", None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("32")),
        "{body}"
    );
    // Another tenant's streams are not counted with A's.
    let _b_stream = Stream::open(&b, &server.url, "", None).await;
    // A closed stream gives its place back.
    drop(open.pop());
    wait_for(
        "a place freed by a closed stream",
        Duration::from_secs(30),
        || async {
            let response = Stream::request(&a, &server.url, "", None).await;
            (response.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
}

/// The next line the CLI printed, if one comes within `wait`.
async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    wait: Duration,
) -> Option<String> {
    tokio::time::timeout(wait, lines.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpost_events_follow_json_prints_each_event_once_as_listed() {
    let (server, clock, _dir) =
        server_with_clock("2026-06-01T00:00:00Z", ServerOptions::default()).await;
    let api = server.api();
    ticking(&api, "tick").await;
    let cli = CliHome::new(&server);
    let mut child = cli
        .command()
        .env("OUTPOST_TOKEN", &server.admin_key)
        .args(["events", "follow", "--json", "--type", "schedule.missed"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outpost events follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The CLI prints only what is recorded after it connects, which the test cannot see:
    // jump the clock until a line comes, then every later event is printed once.
    let mut hour = 1;
    let first = loop {
        assert!(hour < 10, "the CLI printed nothing");
        set_clock(&clock, &format!("2026-06-01T{hour:02}:00:05Z"));
        wait_listed(&api, hour).await;
        hour += 1;
        if let Some(line) = next_line(&mut lines, Duration::from_secs(3)).await {
            break line;
        }
    };
    // Two more; then every event from the first printed on has its line, in order, once.
    for _ in 0..2 {
        set_clock(&clock, &format!("2026-06-01T{hour:02}:00:05Z"));
        wait_listed(&api, hour).await;
        hour += 1;
    }
    let mut printed = vec![first];
    while let Some(line) = next_line(&mut lines, QUIET).await {
        printed.push(line);
    }
    let parse = |lines: &[String]| -> Vec<Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let events = listed(&api).await;
    let from = events
        .iter()
        .position(|e| *e == parse(&printed)[0])
        .expect("the first line is a listed event");
    assert!(events.len() - from >= 3, "{printed:?}");
    assert_eq!(parse(&printed).as_slice(), &events[from..]);

    // The server goes away and comes back: the CLI reconnects after the last event it printed
    // and prints what was recorded since, nothing twice.
    let mut server = server;
    server.restart().await;
    for _ in 0..2 {
        set_clock(&clock, &format!("2026-06-01T{hour:02}:00:05Z"));
        wait_listed(&api, hour).await;
        hour += 1;
    }
    for _ in 0..2 {
        printed.push(
            next_line(&mut lines, EVENT_WAIT)
                .await
                .expect("a line after the restart"),
        );
    }
    while let Some(line) = next_line(&mut lines, QUIET).await {
        printed.push(line);
    }
    let events = listed(&api).await;
    assert_eq!(parse(&printed).as_slice(), &events[from..]);

    // Ctrl-C ends it, as a success.
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_recorded_on_one_node_reaches_a_stream_on_another() {
    let Some(cluster) =
        postgres::required("events::an_event_recorded_on_one_node_reaches_a_stream_on_another")
    else {
        return;
    };
    let database = Database::create(&cluster);
    let node = |name: &str| ServerOptions {
        database_url: Some(database.url.clone()),
        args: vec!["--node-name".into(), name.into()],
        // One owner key and one master key for both: they share the database.
        envs: vec![
            (
                "OUTPOST_ADMIN_KEY".into(),
                "opk_events0000000000000000000000000000000000".into(),
            ),
            (
                "OUTPOST_MASTER_KEY".into(),
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
            ),
        ],
        ..ServerOptions::default()
    };
    // Node A's schedules run on the real clock; node B's on a file the test moves.
    let a = Server::start_with(node("a")).await;
    let now = chrono::Utc::now().to_rfc3339();
    let (b, clock, _dir) = server_with_clock(&now, node("b")).await;
    let api_a = a.api();
    // Once a year, at the next new year: node A, on the real clock, will not see it due.
    let (status, yearly) = api_a
        .post(
            "/api/schedules",
            json!({"name": "yearly", "cron": "0 0 1 1 *", "command": "ping",
                   "target": {"all": true}, "missed": "skip"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{yearly}");
    let next: chrono::DateTime<chrono::Utc> = yearly["next_fire_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("next_fire_at");
    let mut stream = Stream::open(&api_a, &a.url, "", None).await;

    // Node B's clock passes the fire by an hour: B finds it missed and records the event.
    set_clock(&clock, &(next + chrono::Duration::hours(1)).to_rfc3339());
    let message = stream.take(1).await.remove(0);
    let listed_on_b = wait_listed(&b.api(), 1).await;
    assert_same(std::slice::from_ref(&message), &listed_on_b);
    assert_eq!(message.event, "schedule.missed");
    assert_eq!(message.data["subject"]["name"], "yearly");
    // B found the fire missed, and A did not: the event crossed from one node to the other.
    assert!(b.logs().contains("schedule fires missed"), "{}", b.logs());
    assert!(!a.logs().contains("schedule fires missed"), "{}", a.logs());
    stream.assert_quiet().await;
}
