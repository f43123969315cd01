//! The digester: writes each finished run's digest (CONTRACT.md §16) so that a job's summary
//! and groups never read output.
//!
//! Why a worker and not the writer: a run's exact fingerprint covers all of its stored output
//! (up to 100 MiB a stream), and reading that back inside the writer's transaction would stall
//! every agent's results behind one big run. The digester reads output on the read pool and
//! writes small rows; the writer's batches are untouched.
//!
//! How it finds work: the finish path hands it the runs of jobs as they end, whatever ended
//! them (a result, a cancel, the lost sweep, a refusal), as their rows were committed: those
//! are digested with no scan and no read of the rows (only their output is read).
//! (A previous version read them back by id; what that cost is in docs/BENCHMARKS.md, "The
//! server in crates".) A job is made `digested = FALSE`, and only this worker sets it
//! `TRUE`, once the job is over and every run has a digest: every [`SWEEP`] it takes the few
//! such jobs (a partial index holds only them) and digests their finished runs that lack one
//! (runs finished on another node or before a restart, or dropped from a full queue). So a
//! restart, a node's death or a failed pass only delays digests. Several nodes may digest the
//! same run at once: the result is the same, and the first row written is kept. (A scan per
//! handed batch, as a first version did, read a running 10,000-run job's finished runs again
//! for every batch of results: 15 % of a fan-out's results per second.)
//!
//! What is fingerprinted: a run's stored stdout and stderr; for a command other than `run`,
//! its result's JSON too, after its output, as if it were stdout (so a `ping` job's answers
//! group by what they said; a `run`'s result is its exit record, whose duration would make
//! every run a group of its own). A run that ended
//! without output (lost, expired, refused) digests as empty output, and its group is told apart
//! by its state and error code.

use std::sync::Arc;
use std::time::Duration;

use outpost_protocol::OutputStream;
use outpost_store::{Store, command, run_digest};

use super::Core;
use crate::digest::{Digester, group_key, run_duration_ms};

/// How often the digester sweeps for runs it was not handed, and for jobs fully digested.
pub const SWEEP: Duration = Duration::from_secs(5);
/// How long the digester waits, once handed runs, for more to end.
const GATHER: Duration = Duration::from_millis(100);
/// Most run ids digested in one go after [`GATHER`].
const MAX_HANDED: usize = 8192;
/// Jobs looked at per pass.
const JOBS_PER_PASS: u64 = 64;
/// Runs digested per read.
const RUNS_PER_READ: u64 = 256;
/// Output bytes read in one query for many runs.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Output chunks read per page.
const CHUNKS_PER_READ: u64 = 256;

/// The digester (cheap to clone).
#[derive(Clone)]
pub struct Digests {
    core: Arc<Core>,
}

impl Digests {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Runs until shutdown: digests the runs the finish path hands over as they end, and
    /// sweeps every [`SWEEP`] for what it did not hand over (runs finished on another node,
    /// before a restart, or when the queue was full) and for jobs now fully digested.
    pub async fn run(self) {
        let mut queue = self.core.finish.digest_queue();
        let shutdown = self.core.shutdown.clone();
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let handed = async {
                match queue.as_mut() {
                    Some(queue) => queue.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(mut runs) = handed => {
                    // A fan-out's results end in many small batches: a moment's wait lets
                    // one read of output and one insert take many of them.
                    tokio::time::sleep(GATHER).await;
                    if let Some(queue) = queue.as_mut() {
                        while runs.len() < MAX_HANDED
                            && let Some(more) = queue.try_recv()
                        {
                            runs.extend(more);
                        }
                    }
                    if let Err(err) = self.digest_handed(&runs).await {
                        tracing::warn!(error = %err, "could not digest finished runs; the sweep will");
                    }
                }
                _ = sweep.tick() => {
                    if let Err(err) = self.pass().await {
                        tracing::warn!(error = %err, "could not digest finished runs; trying again shortly");
                    }
                }
            }
        }
    }

    /// Digests finished runs of jobs handed over by the finish path (their committed rows).
    async fn digest_handed(
        &self,
        runs: &[command::Model],
    ) -> Result<(), outpost_store::StoreError> {
        let store = &self.core.store;
        for chunk in runs.chunks(RUNS_PER_READ as usize) {
            let rows = digest_runs(store, chunk).await?;
            store.insert_digests(rows).await?;
        }
        Ok(())
    }

    /// One pass over the jobs with runs to digest; how many runs it digested.
    pub async fn pass(&self) -> Result<usize, outpost_store::StoreError> {
        let store = &self.core.store;
        let mut digested = 0;
        // Runs that finished within the last sweep are being digested by the node that
        // finished them (handed over by its finish path).
        let settled = chrono::Utc::now() - SWEEP;
        for (tenant_id, job_id) in store.undigested_jobs(JOBS_PER_PASS).await? {
            loop {
                let runs = store
                    .undigested_runs(&tenant_id, &job_id, settled, RUNS_PER_READ)
                    .await?;
                if runs.is_empty() {
                    break;
                }
                let rows = digest_runs(store, &runs).await?;
                digested += rows.len();
                store.insert_digests(rows).await?;
                if (runs.len() as u64) < RUNS_PER_READ {
                    break;
                }
            }
            store.mark_digested(&tenant_id, &job_id).await?;
        }
        Ok(digested)
    }
}

/// The digests of finished runs. Small outputs (together at most [`BATCH_BYTES`]) are read
/// in one query; a run without output costs no read (a `ping` fan-out's runs); a large one is
/// read on its own, in pages.
async fn digest_runs(
    store: &Store,
    runs: &[command::Model],
) -> Result<Vec<run_digest::Model>, outpost_store::StoreError> {
    let mut digests = Vec::with_capacity(runs.len());
    let mut batch: Vec<&command::Model> = Vec::new();
    let mut batch_bytes = 0;
    for run in runs {
        let bytes = output_bytes(run);
        if bytes > BATCH_BYTES {
            digests.push(digest_run(store, run).await?);
            continue;
        }
        if batch_bytes + bytes > BATCH_BYTES {
            digests.extend(digest_batch(store, &batch).await?);
            batch.clear();
            batch_bytes = 0;
        }
        batch.push(run);
        batch_bytes += bytes;
    }
    digests.extend(digest_batch(store, &batch).await?);
    Ok(digests)
}

fn output_bytes(run: &command::Model) -> u64 {
    u64::try_from(run.stdout_bytes + run.stderr_bytes).unwrap_or(0)
}

/// Runs whose outputs were read together: one read per tenant among them (output is read
/// under its tenant, and the finish path's batches mix tenants).
async fn digest_batch(
    store: &Store,
    runs: &[&command::Model],
) -> Result<Vec<run_digest::Model>, outpost_store::StoreError> {
    let mut with_output: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for run in runs.iter().filter(|r| output_bytes(r) > 0) {
        with_output
            .entry(run.tenant_id.as_str())
            .or_default()
            .push(run.id.as_str());
    }
    let mut digesters: std::collections::HashMap<&str, Digester> = runs
        .iter()
        .map(|r| (r.id.as_str(), Digester::new()))
        .collect();
    for (tenant, ids) in &with_output {
        for chunk in &store.output_of_runs(tenant, ids).await? {
            if let Some(digester) = digesters.get_mut(chunk.command_id.as_str()) {
                digester.feed(chunk.stream != 0, &chunk.data);
            }
        }
    }
    Ok(runs
        .iter()
        .map(|run| {
            let digester = digesters.remove(run.id.as_str()).unwrap_or_default();
            finish(run, digester)
        })
        .collect())
}

/// A finished run's digest, its (large) output read in pages in the order it was stored.
async fn digest_run(
    store: &Store,
    run: &command::Model,
) -> Result<run_digest::Model, outpost_store::StoreError> {
    let mut digester = Digester::new();
    {
        let mut after = 0;
        loop {
            let page = store
                .output_page(
                    &run.tenant_id,
                    &run.id,
                    &[OutputStream::Stdout, OutputStream::Stderr],
                    after,
                    CHUNKS_PER_READ,
                )
                .await?;
            for chunk in &page {
                digester.feed(chunk.stream != 0, &chunk.data);
            }
            match page.last() {
                Some(last) if page.len() as u64 == CHUNKS_PER_READ => after = last.id,
                _ => break,
            }
        }
    }
    Ok(finish(run, digester))
}

/// The digest of a run whose output `digester` has read.
fn finish(run: &command::Model, mut digester: Digester) -> run_digest::Model {
    if run.command != outpost_protocol::commands::RUN
        && let Some(result) = &run.result
    {
        digester.feed(false, result.to_string().as_bytes());
    }
    let out = digester.finish();
    let error_code = run.error_code.as_deref();
    run_digest::Model {
        command_id: run.id.clone(),
        tenant_id: run.tenant_id.clone(),
        job_id: run.job_id.clone().unwrap_or_default(),
        group_key: group_key(
            &run.state,
            run.exit_code,
            error_code,
            &[&out.stdout_sha, &out.stderr_sha],
        ),
        masked_key: group_key(&run.state, run.exit_code, error_code, &[&out.masked_sha]),
        stdout_sha: out.stdout_sha,
        stderr_sha: out.stderr_sha,
        masked_sha: out.masked_sha,
        first_line: out.first_line,
        last_line: out.last_line,
        duration_ms: run_duration_ms(run),
    }
}

#[cfg(test)]
mod tests {
    use super::digest_batch;
    use outpost_protocol::OutputStream;
    use outpost_store::{DatabaseLocation, NewCommand, OutputChunk, Store, command};
    use serde_json::json;

    async fn run_with_output(store: &Store, tenant: &str, text: &[u8]) -> command::Model {
        let run = store
            .insert_command(NewCommand {
                tenant_id: tenant.to_owned(),
                agent_id: "a1".into(),
                command: "run".into(),
                data: json!({}),
                timeout_s: 60,
                ttl_s: 600,
                job_id: None,
                sealed_params: None,
            })
            .await
            .expect("command");
        let txn = store.begin().await.expect("begin");
        txn.append_output(
            tenant,
            "a1",
            OutputChunk {
                command_id: &run.id,
                stream: OutputStream::Stdout,
                seq: 0,
                bytes: text,
            },
            1 << 20,
            false,
        )
        .await
        .expect("output");
        txn.commit().await.expect("commit");
        store
            .get_command(tenant, &run.id)
            .await
            .expect("read")
            .expect("the run")
    }

    /// The finish path hands over runs of several tenants in one batch: each run's digest is
    /// of its own output, read under its own tenant (a first version read all of a batch's
    /// output under its first run's tenant, and the others digested as empty).
    #[tokio::test]
    async fn a_batch_of_two_tenants_digests_each_run_s_own_output() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("outpost.db")))
            .await
            .expect("store");
        let (one, _) = store.create_tenant("one", None).await.expect("tenant");
        let (two, _) = store.create_tenant("two", None).await.expect("tenant");
        let first = run_with_output(&store, &one, b"first tenant\n").await;
        let second = run_with_output(&store, &two, b"second tenant\n").await;
        assert!(second.stdout_bytes > 0, "the run counts its output");
        let digests = digest_batch(&store, &[&first, &second])
            .await
            .expect("digests");
        let lines: Vec<Option<&str>> = digests.iter().map(|d| d.first_line.as_deref()).collect();
        assert_eq!(lines, [Some("first tenant"), Some("second tenant")]);
        assert_ne!(digests[0].stdout_sha, digests[1].stdout_sha);
    }
}
