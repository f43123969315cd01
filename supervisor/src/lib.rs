//! Outpost supervisor: runs `outpost-agent` as its child and acts on how it exits (CONTRACT.md §4).
//!
//! | agent exit | supervisor |
//! |---|---|
//! | 0 | stops (exits 0) |
//! | 42 | restarts it at once |
//! | 43 | updates it (the version in `target_version`, else the latest), then restarts it |
//! | 44 | downloads the running version afresh, verifies and swaps it, restarts it |
//! | 99 | stops (exits 99): the agent's configuration is broken, restarting cannot help |
//! | other, or a signal | restarts it after a jittered, doubling delay (1 s to 5 min), reset once it stayed up 5 min |
//!
//! A freshly installed version is on probation for 30 s after each start: if it exits
//! non-zero within that window three times in a row, the previous binary is put back and the
//! rollback reported. SIGTERM or SIGINT to the supervisor is passed on as SIGTERM, followed by
//! SIGKILL after 10 s; SIGHUP is passed on as is (the agent reloads its manifest). Whenever the
//! agent exits, whatever it left running (the scripts of a killed agent, their cgroups) is
//! killed at once ([`outpost_agent::contain::clean_up_after`]).
//!
//! The supervisor holds the agent key (to read release metadata) and gives it to each agent
//! on a pipe, never in the agent's environment; like the agent, it makes itself non-dumpable
//! first thing, so scripts (the same user) cannot read the key out of either process.
//!
//! Reading order: [`config`], [`child`] (spawning and reaping), [`update`] (download, verify,
//! swap), [`logs`].

pub mod child;
pub mod config;
pub mod logs;
pub mod update;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use outpost_protocol::release::{UpdateStatus, Version, update_status};
use tokio_util::sync::CancellationToken;

use child::{Exit, Reaper, Running};
pub use config::{Cli, Settings};
use update::{Installed, Updater};

/// Agent exit codes (CONTRACT.md §4).
pub mod codes {
    /// Restart requested.
    pub const RESTART: i32 = 42;
    /// Update and restart.
    pub const UPDATE: i32 = 43;
    /// Redeploy.
    pub const REDEPLOY: i32 = 44;
    /// Fatal error.
    pub const FATAL: i32 = 99;
}

/// Failed starts of a new version, within probation, that trigger a rollback.
const ROLLBACK_AFTER: u32 = 3;

/// Doubling restart delay with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never exceeds `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: `base × 2^n` plus up to 20 % jitter, capped. The jitter spreads the
    /// restarts of a fleet that crashed together; it is added, never subtracted, so each
    /// delay is at least the one before it.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        let jitter = exp.mul_f64(rand::random::<f64>() * 0.2);
        (exp + jitter).min(self.cap)
    }

    /// Back to `base` (after a healthy run).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A new version being watched after an update.
#[derive(Debug, Clone)]
struct Probation {
    from: Option<String>,
    to: String,
    sha256: String,
    failures: u32,
    started: bool,
}

/// The supervisor's state across agent runs.
pub struct Supervisor {
    settings: Settings,
    reaper: Reaper,
    agent_log: logs::Log,
    backoff: Backoff,
    probation: Option<Probation>,
}

impl Supervisor {
    /// Sets up reaping and the agent's log.
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let reaper = Reaper::start()?;
        let agent_log = logs::Log::open(&settings.log_dir(), "agent.log");
        let backoff = Backoff::new(settings.timings.backoff_base, settings.timings.backoff_cap);
        Ok(Self {
            settings,
            reaper,
            agent_log,
            backoff,
            probation: None,
        })
    }

    /// Runs the agent until it stops for good or `shutdown` fires; returns the supervisor's
    /// exit code (0, or 99 when the agent reported a fatal error).
    pub async fn run(mut self, shutdown: CancellationToken) -> i32 {
        use tokio::signal::unix::{SignalKind, signal};
        if std::process::id() == 1 {
            tracing::info!("running as PID 1: orphaned processes are reaped");
        }
        let mut hangup = signal(SignalKind::hangup()).ok();
        loop {
            let Some(mut running) = self.start().await else {
                // Could not start at all (missing or broken binary): like a crash.
                if self.delay(&shutdown, None).await {
                    return 0;
                }
                continue;
            };
            let started = Instant::now();
            let exit = loop {
                let hup = async {
                    match hangup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    exit = running.wait() => break exit,
                    () = shutdown.cancelled() => {
                        tracing::info!(pid = running.pid, "stopping: sending SIGTERM to the agent");
                        let exit = running.stop(self.settings.timings.kill_after).await;
                        self.clean_up_after_agent().await;
                        tracing::info!(%exit, "agent stopped; supervisor exiting");
                        return 0;
                    }
                    () = hup => running.signal(nix::sys::signal::Signal::SIGHUP),
                }
            };
            let uptime = started.elapsed();
            tracing::info!(%exit, uptime_ms = uptime.as_millis() as u64, "agent exited");
            self.clean_up_after_agent().await;
            if uptime >= self.settings.timings.backoff_reset {
                self.backoff.reset();
            }
            if uptime >= self.settings.timings.probation
                && let Some(p) = self.probation.take()
            {
                tracing::info!(version = %p.to, "the new version stayed up: update confirmed");
            }
            match exit {
                Exit::Code(0) => {
                    tracing::info!("the agent exited normally: stopping");
                    return 0;
                }
                Exit::Code(codes::FATAL) if self.probation.is_none() => {
                    tracing::error!(
                        "the agent reported a fatal error (exit 99): stopping; fix its configuration and start the supervisor again"
                    );
                    return codes::FATAL;
                }
                Exit::Code(codes::RESTART) => {
                    tracing::info!("restart requested");
                    self.backoff.reset();
                }
                Exit::Code(codes::UPDATE) => {
                    self.backoff.reset();
                    self.update(false, &shutdown).await;
                }
                Exit::Code(codes::REDEPLOY) => {
                    self.backoff.reset();
                    self.update(true, &shutdown).await;
                }
                crash => {
                    if self.count_failed_start(crash) {
                        continue;
                    }
                    if self.delay(&shutdown, Some(crash)).await {
                        return 0;
                    }
                }
            }
            if shutdown.is_cancelled() {
                return 0;
            }
        }
    }

    /// Kills what the agent left running (scripts of a killed or crashed agent, and their
    /// cgroups) at once, rather than when the next agent starts: a crash loop's restart delay
    /// grows to 5 min, and the scripts must not run on through it.
    async fn clean_up_after_agent(&self) {
        let state_dir = self.settings.state_dir.clone();
        let cleaned =
            tokio::task::spawn_blocking(move || outpost_agent::contain::clean_up_after(&state_dir))
                .await;
        if let Ok(left) = cleaned
            && left != outpost_agent::contain::Leftovers::default()
        {
            tracing::warn!(
                cgroups = left.cgroups,
                processes = left.processes,
                "killed the scripts the agent left running"
            );
        }
    }

    /// Waits the next backoff delay; `true` when shutdown came first.
    async fn delay(&mut self, shutdown: &CancellationToken, exit: Option<Exit>) -> bool {
        let delay = self.backoff.next_delay();
        match exit {
            Some(exit) => {
                tracing::warn!(%exit, delay_ms = delay.as_millis() as u64, "the agent crashed; restarting after a delay")
            }
            None => tracing::warn!(
                delay_ms = delay.as_millis() as u64,
                "retrying the start after a delay"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(delay) => false,
        }
    }

    /// Counts a non-zero exit of a version on probation; rolls back after the third. Returns
    /// whether it rolled back (then the old version starts at once).
    fn count_failed_start(&mut self, exit: Exit) -> bool {
        let Some(p) = self.probation.as_mut() else {
            return false;
        };
        p.failures += 1;
        tracing::warn!(version = %p.to, failures = p.failures, %exit, "the new version failed to stay up");
        if p.failures < ROLLBACK_AFTER {
            return false;
        }
        let p = p.clone();
        let reason = format!(
            "version {} exited non-zero within {} s of starting {ROLLBACK_AFTER} times (last: {exit})",
            p.to,
            self.settings.timings.probation.as_secs()
        );
        self.rollback(&p, reason);
        true
    }

    fn rollback(&mut self, p: &Probation, reason: String) {
        self.probation = None;
        let bin = &self.settings.agent_bin;
        match update::restore_previous(bin) {
            Ok(()) => {
                let installed = Installed::load(&self.settings.state_dir);
                let restored = Installed {
                    version: installed.previous_version.clone(),
                    sha256: installed.previous_sha256.clone(),
                    previous_version: None,
                    previous_sha256: None,
                };
                if let Err(err) = restored.save(&self.settings.state_dir) {
                    tracing::warn!(error = %err, "cannot record the restored version");
                }
                tracing::error!(from = ?p.from, to = %p.to, %reason, "rolled back to the previous agent");
                self.report(
                    update_status::ROLLED_BACK,
                    p.from.clone(),
                    Some(p.to.clone()),
                    Some(reason),
                );
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "rollback failed; keeping the new version");
            }
        }
        self.backoff.reset();
    }

    /// Starts the agent; `None` when it cannot be started.
    async fn start(&mut self) -> Option<Running> {
        let bin = self.settings.agent_bin.clone();
        let hash = hash_file(&bin).await;
        if let Some(p) = self.probation.as_mut()
            && !p.started
        {
            // The last check before the new binary runs: it must still be the file verified.
            if hash.as_deref() != Some(p.sha256.as_str()) {
                let p = p.clone();
                let reason = format!(
                    "{} changed between verification and start; refusing to run it",
                    bin.display()
                );
                tracing::error!(%reason);
                self.rollback(&p, reason);
                return None;
            }
            p.started = true;
        }
        let installed = Installed::load(&self.settings.state_dir);
        let version = installed.version_of(hash.as_deref()).map(str::to_owned);
        let mut command = child::agent_command(
            &bin,
            &self.settings.agent_args,
            &self.settings.agent_env,
            version.as_deref(),
            self.settings.api_key.is_some(),
        );
        match self.reaper.spawn(&mut command) {
            Ok(mut running) => {
                if let Some(key) = &self.settings.api_key {
                    running.send_key(key);
                }
                running.pipe_output(&self.agent_log);
                tracing::info!(pid = running.pid, bin = %bin.display(), version = ?version, "agent started");
                Some(running)
            }
            Err(err) => {
                tracing::error!(bin = %bin.display(), error = %err, "cannot start the agent");
                None
            }
        }
    }

    /// The running agent's version: the recorded release if the binary is still it, else
    /// what the binary says (`--version`).
    async fn current_version(&self) -> Option<Version> {
        let bin = &self.settings.agent_bin;
        let installed = Installed::load(&self.settings.state_dir);
        let hash = hash_file(bin).await;
        if let Some(v) = installed.version_of(hash.as_deref()) {
            return v.parse().ok();
        }
        child::probe_version(&self.reaper, bin).await?.parse().ok()
    }

    /// Handles exit 43 (update) or 44 (redeploy). Never fails: a failure is logged and
    /// reported, and the old binary stays.
    async fn update(&mut self, redeploy: bool, shutdown: &CancellationToken) {
        let what = if redeploy { "redeploy" } else { "update" };
        let work = self.try_update(redeploy);
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = shutdown.cancelled() => return,
        };
        match outcome {
            Ok(Some((from, to))) => {
                tracing::info!(from = ?from, to = %to, "{what}: installed; starting it");
                self.report(
                    update_status::UPDATED,
                    from,
                    Some(to),
                    redeploy.then(|| "redeploy".to_owned()),
                );
            }
            Ok(None) => {}
            Err((from, to, reason)) => {
                tracing::error!(%reason, "{what} refused; the current agent keeps running");
                self.report(update_status::FAILED, from, to, Some(reason));
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn try_update(
        &mut self,
        redeploy: bool,
    ) -> Result<Option<(Option<String>, String)>, (Option<String>, Option<String>, String)> {
        let state_dir = self.settings.state_dir.clone();
        let current = self.current_version().await;
        let from = current.map(|v| v.to_string());
        let request = if redeploy {
            update::Request {
                version: current,
                force: true,
            }
        } else {
            update::take_request(&state_dir).map_err(|e| (from.clone(), None, e))?
        };
        let asked = request.version.map(|v| v.to_string());
        let fail = |reason: String| (from.clone(), asked.clone(), reason);
        if self.settings.skip_update {
            return Err(fail(
                "updates are disabled here (OUTPOST_SKIP_UPDATE)".into(),
            ));
        }
        let updater = Updater::new(
            self.settings.server_url.as_deref(),
            self.settings.api_key.as_deref(),
            self.settings.ca_cert.as_deref(),
            self.settings.release_pubkey.as_deref(),
        )
        .map_err(fail)?;
        let bin = self.settings.agent_bin.clone();
        let dir = bin
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ".".into());
        let force = request.force;
        // Decided on the metadata, before anything is downloaded; asked again with the
        // metadata if a download breaks off and the release is asked for anew.
        let check = |info: &outpost_protocol::release::ReleaseInfo| -> Result<Option<()>, String> {
            let to = &info.version;
            if !redeploy {
                match current {
                    None if !force => {
                        return Err(
                            "cannot tell the running agent's version; ask again with force to update anyway"
                                .into(),
                        );
                    }
                    Some(current) if *to < current && !force => {
                        return Err(format!(
                            "version {to} is older than the running {current}; ask with force to downgrade"
                        ));
                    }
                    Some(current) if *to == current && !force => {
                        tracing::info!(version = %to, "already running this version; nothing to do");
                        return Ok(None);
                    }
                    _ => {}
                }
            }
            tracing::info!(from = ?from, to = %to, "downloading the agent");
            Ok(Some(()))
        };
        let (info, download, sha) = match updater
            .fetch_and_download(request.version.as_ref(), &dir, check)
            .await
        {
            Ok(Some((info, (), download, sha))) => (info, download, sha),
            Ok(None) => return Ok(None),
            Err((info, reason)) => {
                let to = info.map(|i| i.version.to_string()).or(asked.clone());
                return Err((from.clone(), to, reason));
            }
        };
        let to = info.version.to_string();
        let fail = |reason: String| (from.clone(), Some(to.clone()), reason);
        let old_sha = hash_file(&bin).await;
        if let Err(err) = update::install(&bin, &download) {
            let _ = std::fs::remove_file(&download);
            return Err(fail(format!("cannot install: {err:#}")));
        }
        let record = Installed {
            version: Some(to.clone()),
            sha256: Some(sha.clone()),
            previous_version: from.clone(),
            previous_sha256: old_sha,
        };
        if let Err(err) = record.save(&state_dir) {
            tracing::warn!(error = %err, "cannot record the installed version");
        }
        self.probation = Some(Probation {
            from: from.clone(),
            to: to.clone(),
            sha256: sha,
            failures: 0,
            started: false,
        });
        Ok(Some((from, to)))
    }

    fn report(
        &self,
        status: &str,
        from: Option<String>,
        to: Option<String>,
        reason: Option<String>,
    ) {
        update::write_status(
            &self.settings.state_dir,
            &UpdateStatus {
                status: status.to_owned(),
                from,
                to,
                reason,
                at: Utc::now(),
            },
        );
    }
}

async fn hash_file(path: &Path) -> Option<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || update::sha256_file(&path).ok())
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        let mut backoff = Backoff::new(base, cap);
        let mut last = Duration::ZERO;
        for n in 0..12u32 {
            let delay = backoff.next_delay();
            let floor = (base * 2u32.pow(n)).min(cap);
            assert!(delay >= floor && delay <= cap, "{n}: {delay:?}");
            assert!(
                delay <= floor.mul_f64(1.2) + Duration::from_millis(1),
                "{n}: {delay:?}"
            );
            assert!(delay >= last, "{n}: {delay:?} < {last:?}");
            last = delay;
        }
        assert_eq!(last, cap);
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(1201));
    }
}
