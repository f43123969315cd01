//! The figures: a table for people, one JSON object for scripts.

use std::path::Path;

use serde_json::{Value, json};

/// One SPEC §8 row as measured.
pub struct Row {
    what: String,
    floor: String,
    goal: String,
    measured: String,
    data: Value,
}

/// Every row of a run, and the machine it ran on.
pub struct Report {
    rows: Vec<Row>,
    machine: Value,
}

impl Report {
    /// A report for a run with `agents` simulated agents.
    pub fn new(agents: u64, bin_dir: &Path, fd_limit: u64) -> Self {
        let cpus = std::thread::available_parallelism().map_or(0, usize::from);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        Self {
            rows: Vec::new(),
            machine: json!({
                "cpus": cpus,
                "cpu_model": model,
                "mem_gib": mem_kib / (1024 * 1024),
                "loadavg_at_start": load.trim(),
                "fd_limit": fd_limit,
                "agents": agents,
                "bin_dir": bin_dir.display().to_string(),
                "started_at": chrono::Utc::now().to_rfc3339(),
            }),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, what: &str, floor: &str, goal: &str, measured: String, data: Value) {
        self.rows.push(Row {
            what: what.to_owned(),
            floor: floor.to_owned(),
            goal: goal.to_owned(),
            measured,
            data,
        });
    }

    /// Prints the report on stdout.
    pub fn print(&self, as_json: bool) {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        if as_json {
            let rows: Vec<Value> = self
                .rows
                .iter()
                .map(|r| {
                    json!({"what": r.what, "floor": r.floor, "goal": r.goal,
                           "measured": r.measured, "data": r.data})
                })
                .collect();
            let mut machine = self.machine.clone();
            machine["loadavg_at_end"] = json!(load.trim());
            println!("{}", json!({"machine": machine, "rows": rows}));
            return;
        }
        let m = &self.machine;
        println!(
            "machine: {} x {}, {} GiB RAM; load average at start {}, at end {}; file limit {}",
            m["cpus"],
            m["cpu_model"].as_str().unwrap_or("?"),
            m["mem_gib"],
            m["loadavg_at_start"].as_str().unwrap_or("?"),
            load.trim(),
            m["fd_limit"],
        );
        println!();
        println!("| SPEC §8 row | floor | goal | measured |");
        println!("|---|---|---|---|");
        for r in &self.rows {
            println!("| {} | {} | {} | {} |", r.what, r.floor, r.goal, r.measured);
        }
    }
}

/// The `p`th percentile of sorted values (nearest rank); 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
