//! Facts about the host (for `register` and `info`) and the metrics a heartbeat carries.
//!
//! sysinfo is asked to refresh only what is reported (CPU, memory, one disk), which keeps the
//! agent's own footprint small. CPU use is measured between two heartbeats, so the first
//! heartbeat after start reports what sysinfo saw since the agent started.

use std::path::{Path, PathBuf};

use chrono::Utc;
use outpost_protocol::HeartbeatStatus;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// Host facts and a sysinfo handle for sampling metrics.
pub struct Host {
    // Either may be missing where the OS does not expose it (no /proc in a sandbox, say);
    // the agent then reports zeros rather than failing.
    system: Option<System>,
    disks: Option<Disks>,
    state_dir: PathBuf,
    started: std::time::Instant,
}

impl Host {
    /// Takes a first sample; `state_dir` selects the disk whose use is reported.
    pub fn new(state_dir: &Path) -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )
        .map_err(|e| tracing::warn!(error = %e, "host metrics unavailable"))
        .ok();
        Self {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
            state_dir: state_dir.to_path_buf(),
            started: std::time::Instant::now(),
        }
    }

    /// Seconds since the agent started.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Samples the metrics a heartbeat carries.
    pub fn sample(&mut self) -> HeartbeatStatus {
        let (mut cpu, mut memory) = (0.0, 0.0);
        if let Some(system) = &mut self.system {
            system.refresh_cpu_usage();
            system.refresh_memory();
            cpu = f64::from(system.global_cpu_usage());
            memory = percent_used(system.total_memory(), system.available_memory());
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(true);
        }
        HeartbeatStatus {
            uptime_s: self.uptime_s(),
            cpu_percent: finite(cpu),
            memory_percent: finite(memory),
            disk_percent: finite(self.disk_percent()),
            load1: finite(System::load_average().map(|l| l.one).unwrap_or(0.0)),
            timestamp: Utc::now(),
        }
    }

    /// Use of the filesystem holding the state directory: the disk with the longest mount
    /// point that is a prefix of it.
    fn disk_percent(&self) -> f64 {
        let Some(disks) = &self.disks else {
            return 0.0;
        };
        let dir = self
            .state_dir
            .canonicalize()
            .unwrap_or_else(|_| self.state_dir.clone());
        disks
            .iter()
            .filter(|d| dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| percent_used(d.total_space(), d.available_space()))
            .unwrap_or(0.0)
    }
}

fn percent_used(total: u64, available: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * (total - available.min(total)) as f64 / total as f64
    }
}

/// NaN and infinities do not survive JSON; report them as 0.
fn finite(x: f64) -> f64 {
    if x.is_finite() {
        (x * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Host name, or `unknown`.
pub fn hostname() -> String {
    System::host_name().unwrap_or_else(|_| "unknown".into())
}

/// Operating system and kernel, e.g. `Linux 6.1.0`.
pub fn os() -> String {
    let name = System::name().unwrap_or_else(|_| std::env::consts::OS.into());
    match System::kernel_version() {
        Ok(kernel) => format!("{name} {kernel}"),
        Err(_) => name,
    }
}
