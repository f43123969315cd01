//! Prometheus metrics: what the server counts, and their rendering for `GET /metrics`.
//!
//! Code records through the `metrics` facade at the point where a thing happens (a frame read, a
//! batch committed, a webhook answered); the recorder is `metrics-exporter-prometheus`, installed
//! once per process, and rendered by our own route (its HTTP listener and push gateway are not
//! compiled in). Labels only ever take values from small fixed sets (transport, direction,
//! state, outcome, command name): never an agent, tenant or job id, so the number of series is
//! bounded whatever agents and callers send.
//!
//! Who may read them (see `docs/OPERATIONS.md`): on the main listener `/metrics` needs an owner
//! API key, because the figures are process-wide (all tenants) and the main port usually faces
//! the internet. `--metrics-listen` adds a second listener serving only `/metrics` without
//! authentication, for a scraper on an internal network. Requests from loopback get no
//! exemption: behind a reverse proxy on the same host every request comes from loopback.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{Counter, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::Transport;

/// Agents connected now, by transport (set when scraped, from the hub itself).
pub const AGENTS_CONNECTED: &str = "outpost_agents_connected";
/// WebSocket/long-poll frames, by `direction` (`in` from agents, `out` to them) and transport.
pub const FRAMES: &str = "outpost_frames_total";
/// Payload bytes of those frames.
pub const FRAME_BYTES: &str = "outpost_frame_bytes_total";
/// Commands stored, by command name.
pub const COMMANDS_CREATED: &str = "outpost_commands_created_total";
/// Commands acknowledged by their agent (`delivered` or `running`).
pub const COMMANDS_DELIVERED: &str = "outpost_commands_delivered_total";
/// Commands that reached a final state, by state.
pub const COMMANDS_FINISHED: &str = "outpost_commands_finished_total";
/// Seconds from a command being stored to its result being stored.
pub const COMMAND_ROUND_TRIP: &str = "outpost_command_round_trip_seconds";
/// Writes committed per transaction by the store's writer.
pub const STORE_BATCH_SIZE: &str = "outpost_store_batch_size";
/// Seconds one writer transaction took, from begin to commit.
pub const STORE_COMMIT: &str = "outpost_store_commit_seconds";
/// Writer batches that failed and were retried write by write.
pub const STORE_BATCH_FAILURES: &str = "outpost_store_batch_failures_total";
/// 1 while the writer's last transaction committed, 0 while its writes fail (disk full, I/O
/// errors): what `/readyz` reports too.
pub const STORE_WRITABLE: &str = "outpost_store_writable";
/// Gauge: live server nodes on the database, this one included (PostgreSQL only).
pub const CLUSTER_NODES: &str = "outpost_cluster_nodes";
/// Gauge: 1 while this node's listener for the other nodes is connected and hears its pings.
pub const CLUSTER_LISTENING: &str = "outpost_cluster_listening";
/// Counter: hints exchanged with other nodes, by direction.
pub const CLUSTER_HINTS: &str = "outpost_cluster_hints_total";
/// Counter: hints for other nodes dropped because too many were waiting.
pub const CLUSTER_HINTS_DROPPED: &str = "outpost_cluster_hints_dropped_total";
/// Rows authentication looked at, by where they came from.
pub const CREDENTIAL_READS: &str = "outpost_credential_reads_total";
/// Times the kept credentials were forgotten, by why.
pub const CREDENTIALS_FORGOTTEN: &str = "outpost_credentials_forgotten_total";
/// Agent rows (with their keys) a command to a connected agent looked at, by where they came
/// from.
pub const AGENT_ROW_READS: &str = "outpost_agent_row_reads_total";
/// Times the kept agent rows were forgotten, by why.
pub const AGENT_ROWS_FORGOTTEN: &str = "outpost_agent_rows_forgotten_total";
/// Gauge, always 1: this node's id and name, to tell nodes apart in a shared Prometheus.
pub const NODE_INFO: &str = "outpost_node_info";
/// Acks not written because their command's response arrived with them.
pub const ACKS_FOLDED: &str = "outpost_acks_folded_total";
/// Job webhooks finished, by `outcome` (`delivered`, `failed`).
pub const WEBHOOK_DELIVERIES: &str = "outpost_webhook_deliveries_total";
/// Webhook attempts, by `outcome` (`success`, `http_error`, `network_error`, `refused`).
pub const WEBHOOK_ATTEMPTS: &str = "outpost_webhook_attempts_total";
/// Requests refused by a rate limit, by `limit` (`api`, `api_address`, `auth_address`,
/// `auth_email`; see `service::limits`).
pub const RATE_LIMITED: &str = "outpost_rate_limited_total";
/// Rows deleted by retention, by `table` (a fixed set: see `service::retention`).
pub const RETENTION_DELETED: &str = "outpost_retention_deleted_rows_total";
/// Seconds the last retention pass took (this node, while it holds the `retention` claim).
pub const RETENTION_PASS: &str = "outpost_retention_pass_seconds";
/// SQLite pages given back to the file system after retention.
pub const RETENTION_RECLAIMED: &str = "outpost_retention_reclaimed_pages_total";
/// Library bundles served to agents, and their bytes (CONTRACT.md §15).
pub const LIBRARY_DOWNLOADS: &str = "outpost_library_downloads_total";
/// Bytes of library bundles served to agents.
pub const LIBRARY_DOWNLOAD_BYTES: &str = "outpost_library_download_bytes_total";
/// Resident memory of the server process (Linux).
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// Open file descriptors of the server process (Linux).
pub const PROCESS_FDS: &str = "process_open_fds";
/// The per-process limit on open file descriptors (Linux).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";

/// How often histograms are folded and idle state trimmed, scraped or not. Without it the
/// recorder would keep every histogram sample until the next scrape.
const UPKEEP: Duration = Duration::from_secs(5);

const SECONDS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
];
const COMMIT_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process's Prometheus handle, installing the recorder on first use. A process holds one
/// global recorder; servers started in one test process share it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(COMMAND_ROUND_TRIP.into()), SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(STORE_COMMIT.into()), COMMIT_SECONDS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(STORE_BATCH_SIZE.into()), BATCH_SIZES)
            });
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            // The bucket lists above are constants and not empty.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows only what reaches ours"
            );
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        CLUSTER_NODES,
        "Live server nodes sharing the database, this one included (PostgreSQL)."
    );
    describe_gauge!(
        CLUSTER_LISTENING,
        "1 while this node hears the other nodes' notifications (and its own pings)."
    );
    describe_counter!(
        CLUSTER_HINTS,
        "Notifications exchanged with other nodes, by direction (sent, received), in hints."
    );
    describe_counter!(
        CLUSTER_HINTS_DROPPED,
        "Hints for other nodes dropped because too many were waiting to be sent."
    );
    describe_counter!(
        CREDENTIAL_READS,
        "API key and user rows authentication looked at: from a kept copy or from the store."
    );
    describe_counter!(
        CREDENTIALS_FORGOTTEN,
        "Times the kept API keys and users were forgotten: a change here, another node's word, or a resync."
    );
    describe_counter!(
        AGENT_ROW_READS,
        "Agent rows (with their keys) commands to connected agents looked at: from a kept copy or from the store."
    );
    describe_counter!(
        AGENT_ROWS_FORGOTTEN,
        "Times the kept agent rows were forgotten: a change here, another node's word, or a resync."
    );
    describe_gauge!(NODE_INFO, "1, labelled with this node's id and name.");
    describe_gauge!(
        AGENTS_CONNECTED,
        "Agents connected to this server process, by transport."
    );
    describe_counter!(
        FRAMES,
        "Protocol frames, by direction (in: from agents) and transport."
    );
    describe_counter!(
        FRAME_BYTES,
        "Bytes of protocol frames, by direction and transport."
    );
    describe_counter!(COMMANDS_CREATED, "Commands stored, by command.");
    describe_counter!(
        COMMANDS_DELIVERED,
        "Commands their agent received: acknowledged, or answered without a stored ack."
    );
    describe_counter!(
        COMMANDS_FINISHED,
        "Commands that reached a final state, by state."
    );
    describe_histogram!(
        COMMAND_ROUND_TRIP,
        metrics::Unit::Seconds,
        "From a command stored to its agent's result stored."
    );
    describe_histogram!(
        STORE_BATCH_SIZE,
        "Agent writes committed per writer transaction."
    );
    describe_histogram!(
        STORE_COMMIT,
        metrics::Unit::Seconds,
        "Duration of one writer transaction, begin to commit."
    );
    describe_counter!(
        STORE_BATCH_FAILURES,
        "Writer transactions that failed (each is retried; see outpost_store_writable)."
    );
    describe_gauge!(
        STORE_WRITABLE,
        "1 while the writer's last transaction committed, 0 while writes fail."
    );
    describe_counter!(
        ACKS_FOLDED,
        "Agent acks not written on their own: the command's response arrived with them."
    );
    describe_counter!(WEBHOOK_DELIVERIES, "Job webhooks finished, by outcome.");
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by a rate limit (429), by limit: api (per caller), api_address \
         (failed authentications per client address), auth_address and auth_email (sign-in \
         attempts)."
    );
    // Shown at 0 before the first refusal, so an alert on its rate sees the series.
    for limit in ["api", "api_address", "auth_address", "auth_email"] {
        counter!(RATE_LIMITED, "limit" => limit).increment(0);
    }
    describe_counter!(WEBHOOK_ATTEMPTS, "Job webhook attempts, by outcome.");
    describe_counter!(
        RETENTION_DELETED,
        "Rows deleted by history retention, by table."
    );
    describe_gauge!(
        RETENTION_PASS,
        metrics::Unit::Seconds,
        "How long this node's last retention pass took."
    );
    describe_counter!(
        RETENTION_RECLAIMED,
        "SQLite pages given back to the file system after retention (incremental vacuum)."
    );
    describe_counter!(LIBRARY_DOWNLOADS, "Library bundles served to agents.");
    describe_counter!(
        LIBRARY_DOWNLOAD_BYTES,
        "Bytes of library bundles served to agents."
    );
    describe_gauge!(
        PROCESS_RSS,
        metrics::Unit::Bytes,
        "Resident memory of the process."
    );
    describe_gauge!(PROCESS_FDS, "Open file descriptors of the process.");
    describe_gauge!(
        PROCESS_MAX_FDS,
        "Limit on open file descriptors of the process."
    );
}

/// Keeps histograms folded until shutdown.
pub async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let handle = handle();
    let mut tick = tokio::time::interval(UPKEEP);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// One frame received from or sent to an agent.
pub fn frame(direction: Direction, transport: Transport, bytes: usize) {
    // Every frame of every agent passes here: the handles are looked up in the recorder's
    // registry once (hashing the name and labels each time cost a measurable share of a
    // fan-out's CPU; figures: docs/BENCHMARKS.md, "Design notes behind the figures").
    // `handle()` installs the recorder before the server serves, so before the first frame.
    static COUNTERS: OnceLock<Vec<(Counter, Counter)>> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        let mut counters = Vec::new();
        for direction in [Direction::In, Direction::Out] {
            for transport in Transport::ALL {
                let labels = [
                    ("direction", direction.label()),
                    ("transport", transport.as_str()),
                ];
                counters.push((counter!(FRAMES, &labels), counter!(FRAME_BYTES, &labels)));
            }
        }
        counters
    });
    let slot = direction as usize * Transport::ALL.len() + transport as usize;
    if let Some((frames, frame_bytes)) = counters.get(slot) {
        frames.increment(1);
        frame_bytes.increment(bytes as u64);
    }
}

/// Which way a frame went.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// From an agent.
    In,
    /// To an agent.
    Out,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// `count` commands of `command` were stored.
pub fn commands_created(command: &str, count: usize) {
    // Command names are validated against the protocol's list before anything is stored.
    let command = outpost_protocol::commands::ALL
        .iter()
        .find(|c| **c == command)
        .copied()
        .unwrap_or("other");
    counter!(COMMANDS_CREATED, "command" => command).increment(count as u64);
}

/// A command was acknowledged by its agent.
pub fn command_delivered() {
    counter!(COMMANDS_DELIVERED).increment(1);
}

/// The label a command's final `state` is counted under: the state itself, or `other`.
pub fn final_state(state: &str) -> &'static str {
    state
        .parse::<crate::domain::CommandState>()
        .ok()
        .filter(|s| s.is_final())
        .map_or("other", crate::domain::CommandState::as_str)
}

/// `count` commands reached the final `state`. Counted where results are handed to their
/// waiters (`outpost_core::finish::Finish`), once per batch and state.
pub fn commands_finished(state: &str, count: u64) {
    counter!(COMMANDS_FINISHED, "state" => final_state(state)).increment(count);
}

/// An agent's result for `model` was stored (the first time). Its final state is counted by
/// the hub when it hands the result on.
///
/// A result whose command had no stored `ack` delivers it too: the ack was folded into it (at
/// the connection or in the writer's batch) or lost with a connection. The result's statement
/// then sets `delivered_at` to the same instant as `finished_at` (an earlier ack's time is
/// always an earlier instant), and the command counts as delivered here, so that the counter
/// does not depend on how the ack travelled.
pub fn command_answered(
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
) {
    if delivered_at.is_some() && delivered_at == finished_at {
        command_delivered();
    }
    if let Some(done) = finished_at {
        let seconds = (done - created_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        histogram!(COMMAND_ROUND_TRIP).record(seconds.max(0.0));
    }
}

/// The writer committed a batch of `size` writes in `took`.
pub fn store_batch(size: usize, took: Duration) {
    histogram!(STORE_BATCH_SIZE).record(size as f64);
    histogram!(STORE_COMMIT).record(took.as_secs_f64());
}

/// Retention deleted `rows` rows of `table` (one of a fixed set of table names).
pub fn retention_deleted(table: &'static str, rows: u64) {
    if rows > 0 {
        counter!(RETENTION_DELETED, "table" => table).increment(rows);
    }
}

/// A retention pass took `took`, and gave `pages` SQLite pages back.
pub fn retention_pass(took: Duration, pages: u64) {
    gauge!(RETENTION_PASS).set(took.as_secs_f64());
    counter!(RETENTION_RECLAIMED).increment(pages);
}

/// A library bundle of `bytes` bytes was served to an agent.
pub fn library_download(bytes: usize) {
    counter!(LIBRARY_DOWNLOADS).increment(1);
    counter!(LIBRARY_DOWNLOAD_BYTES).increment(bytes as u64);
}

/// A request was refused by the rate limit called `limit`.
pub fn rate_limited(limit: &'static str) {
    counter!(RATE_LIMITED, "limit" => limit).increment(1);
}

/// A writer transaction failed (it is retried).
pub fn store_batch_failed() {
    counter!(STORE_BATCH_FAILURES).increment(1);
}

/// Whether the writer's writes commit now.
pub fn store_writable(writable: bool) {
    gauge!(STORE_WRITABLE).set(if writable { 1.0 } else { 0.0 });
}

/// This node joined the others on the database as `id`, named `name`.
pub fn node_info(id: &str, name: &str) {
    gauge!(NODE_INFO, "node_id" => id.to_owned(), "name" => name.to_owned()).set(1.0);
}

/// Live nodes at this node's last renewal, itself included.
pub fn cluster_nodes(live: usize) {
    gauge!(CLUSTER_NODES).set(live as f64);
}

/// Whether this node's listener is up.
pub fn cluster_listening(up: bool) {
    gauge!(CLUSTER_LISTENING).set(if up { 1.0 } else { 0.0 });
}

/// Hints sent to (`sent`) or received from (`received`) other nodes.
pub fn cluster_hints(direction: &'static str, count: usize) {
    counter!(CLUSTER_HINTS, "direction" => direction).increment(count as u64);
}

/// Authentication looked at a row: `kept` (a copy) or `store`.
pub fn credential_read(from: &'static str) {
    counter!(CREDENTIAL_READS, "from" => from).increment(1);
}

/// The kept credentials were forgotten: `here`, `other_node` or `resync`.
pub fn credentials_forgotten(why: &'static str) {
    counter!(CREDENTIALS_FORGOTTEN, "why" => why).increment(1);
}

/// A command looked at an agent's row: `kept` (a copy) or `store`.
pub fn agent_row_read(from: &'static str) {
    counter!(AGENT_ROW_READS, "from" => from).increment(1);
}

/// The kept agent rows were forgotten: `here`, `other_node` or `resync`.
pub fn agent_rows_forgotten(why: &'static str) {
    counter!(AGENT_ROWS_FORGOTTEN, "why" => why).increment(1);
}

/// A hint for other nodes was dropped.
pub fn cluster_hint_dropped() {
    counter!(CLUSTER_HINTS_DROPPED).increment(1);
}

/// An agent's `ack` was dropped because its command's `response` came in the same read.
pub fn ack_folded() {
    counter!(ACKS_FOLDED).increment(1);
}

/// A webhook attempt ended: `success`, `http_error`, `network_error` or `refused`.
pub fn webhook_attempt(outcome: &'static str) {
    counter!(WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(1);
}

/// A webhook is done: delivered, or failed after its last attempt.
pub fn webhook_delivery(delivered: bool) {
    let outcome = if delivered { "delivered" } else { "failed" };
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

/// The metrics in Prometheus' text format, with the connected agents per transport (which
/// the hub counts when asked, not at every connect).
pub fn render(connected: &[(Transport, usize)]) -> String {
    for (transport, count) in connected {
        gauge!(AGENTS_CONNECTED, "transport" => transport.as_str()).set(*count as f64);
    }
    process_gauges();
    handle().render()
}

/// Resident memory and descriptors, read from `/proc/self` (nothing on other systems).
fn process_gauges() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    {
        gauge!(PROCESS_RSS).set(kib * 1024.0);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge!(PROCESS_FDS).set(dir.count() as f64);
    }
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        gauge!(PROCESS_MAX_FDS).set(soft as f64);
    }
}

/// Raises this process's open-file limit to its hard limit: each agent connection is one
/// descriptor, and the usual soft limit (1,024) would cap the server far below what it can
/// hold. Returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                tracing::warn!(error = %err, soft, hard, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}
