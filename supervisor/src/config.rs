//! Supervisor configuration: a few flags, an optional `KEY=value` env file, and the agent's
//! own `OUTPOST_*` variables (the supervisor reads the ones it needs for updates).
//!
//! The env file is the install's single config (deploy.sh writes it, systemd can read it as an
//! `EnvironmentFile`): its values win over the inherited environment, flags win over both, and
//! the file's variables are passed on to the agent. Values are literal: no quotes, no `$`
//! expansion, so what the file says is exactly what runs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

/// `outpost-supervisor` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "outpost-supervisor",
    version,
    long_version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("OUTPOST_TARGET"), ")"),
    about = "Runs outpost-agent, restarts it on failure and updates it from signed releases"
)]
pub struct Cli {
    /// `KEY=value` lines (`#` comments and blank lines allowed, values literal) applied to the
    /// supervisor's configuration and passed to the agent.
    #[arg(long)]
    pub env_file: Option<PathBuf>,

    /// The agent binary (default: `outpost-agent` next to this executable).
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,

    /// State directory shared with the agent (default: OUTPOST_STATE_DIR, else
    /// ~/.outpost-agent). Logs go to <state-dir>/logs.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,

    /// First restart delay after a crash, in milliseconds (tests shorten it).
    #[arg(
        long,
        env = "OUTPOST_SUPERVISOR_BACKOFF_BASE_MS",
        default_value_t = 1_000,
        hide = true
    )]
    pub backoff_base_ms: u64,

    /// Longest restart delay, in milliseconds.
    #[arg(
        long,
        env = "OUTPOST_SUPERVISOR_BACKOFF_CAP_MS",
        default_value_t = 300_000,
        hide = true
    )]
    pub backoff_cap_ms: u64,

    /// Uptime after which the restart delay starts again from the base, in milliseconds.
    #[arg(
        long,
        env = "OUTPOST_SUPERVISOR_BACKOFF_RESET_MS",
        default_value_t = 300_000,
        hide = true
    )]
    pub backoff_reset_ms: u64,

    /// Grace between SIGTERM and SIGKILL when stopping the agent, in milliseconds.
    #[arg(
        long,
        env = "OUTPOST_SUPERVISOR_KILL_AFTER_MS",
        default_value_t = 10_000,
        hide = true
    )]
    pub kill_after_ms: u64,

    /// A new version that exits non-zero within this many milliseconds of starting, three
    /// times in a row, is rolled back.
    #[arg(
        long,
        env = "OUTPOST_SUPERVISOR_PROBATION_MS",
        default_value_t = 30_000,
        hide = true
    )]
    pub probation_ms: u64,

    /// Extra arguments for the agent.
    #[arg(last = true)]
    pub agent_args: Vec<OsString>,
}

/// Timings of the restart policy.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// First crash delay.
    pub backoff_base: Duration,
    /// Longest crash delay.
    pub backoff_cap: Duration,
    /// Uptime that resets the delay.
    pub backoff_reset: Duration,
    /// SIGTERM-to-SIGKILL grace.
    pub kill_after: Duration,
    /// Window in which a new version's non-zero exits count towards a rollback.
    pub probation: Duration,
}

/// Everything the supervisor runs with.
#[derive(Clone)]
pub struct Settings {
    /// The agent executable.
    pub agent_bin: PathBuf,
    /// Extra agent arguments.
    pub agent_args: Vec<OsString>,
    /// Variables set for the agent on top of the inherited environment.
    pub agent_env: Vec<(String, String)>,
    /// State directory (shared with the agent).
    pub state_dir: PathBuf,
    /// `OUTPOST_SERVER_URL`.
    pub server_url: Option<String>,
    /// The agent key, from `OUTPOST_API_KEY` or the file `OUTPOST_API_KEY_FILE` names: used to
    /// read release metadata, and handed to the agent on its standard input.
    pub api_key: Option<String>,
    /// A warning about the key file (readable by other users), logged once logging is set up.
    pub key_warning: Option<String>,
    /// `OUTPOST_CA_CERT`.
    pub ca_cert: Option<PathBuf>,
    /// `OUTPOST_RELEASE_PUBKEY`: the pinned release key, base64. Without it updates are refused.
    pub release_pubkey: Option<String>,
    /// `OUTPOST_LOG_FORMAT=json` for JSON log lines.
    pub json_logs: bool,
    /// `OUTPOST_SKIP_UPDATE`: refuse updates and redeploys here too (the agent refuses
    /// `update` itself; this also covers `redeploy` and a stray exit 43).
    pub skip_update: bool,
    /// Restart policy timings.
    pub timings: Timings,
}

impl std::fmt::Debug for Settings {
    // Written by hand so the agent key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("agent_bin", &self.agent_bin)
            .field("agent_args", &self.agent_args)
            .field(
                "agent_env",
                &self.agent_env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("state_dir", &self.state_dir)
            .field("server_url", &self.server_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("ca_cert", &self.ca_cert)
            .field("release_pubkey", &self.release_pubkey)
            .field("skip_update", &self.skip_update)
            .field("timings", &self.timings)
            .finish()
    }
}

impl Settings {
    /// Resolves flags, the env file and the environment.
    pub fn resolve(cli: Cli) -> anyhow::Result<Self> {
        let file = match &cli.env_file {
            Some(path) => parse_env_file(path)?,
            None => BTreeMap::new(),
        };
        let get = |key: &str| -> Option<String> {
            file.get(key)
                .cloned()
                .or_else(|| std::env::var(key).ok())
                .filter(|v| !v.is_empty())
        };
        let state_dir = cli
            .state_dir
            .clone()
            .or_else(|| get("OUTPOST_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(".outpost-agent")
            });
        let agent_bin = match cli.agent_bin.clone() {
            Some(path) => path,
            None => std::env::current_exe()
                .context("finding this executable to locate outpost-agent next to it")?
                .with_file_name("outpost-agent"),
        };
        // An absolute path, so a changed working directory never changes what runs.
        let agent_bin = std::path::absolute(&agent_bin)
            .with_context(|| format!("resolving {}", agent_bin.display()))?;
        // The key reaches the agent on a pipe, never in its environment (see child.rs).
        let (api_key, key_warning) = match (get("OUTPOST_API_KEY"), get("OUTPOST_API_KEY_FILE")) {
            (Some(_), Some(_)) => {
                bail!("OUTPOST_API_KEY and OUTPOST_API_KEY_FILE are both set: keep one")
            }
            (Some(key), None) => (Some(key), None),
            (None, Some(path)) => {
                let (key, warning) = outpost_agent::config::read_key_file(Path::new(&path))?;
                (Some(key), warning)
            }
            (None, None) => (None, None),
        };
        let mut agent_env: Vec<(String, String)> =
            file.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        agent_env.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                "OUTPOST_STATE_DIR" | "OUTPOST_API_KEY" | "OUTPOST_API_KEY_FILE"
            )
        });
        agent_env.push(("OUTPOST_STATE_DIR".into(), state_dir.display().to_string()));
        let ms = Duration::from_millis;
        Ok(Self {
            agent_bin,
            agent_args: cli.agent_args,
            state_dir,
            server_url: get("OUTPOST_SERVER_URL"),
            api_key,
            key_warning,
            ca_cert: get("OUTPOST_CA_CERT").map(PathBuf::from),
            release_pubkey: get("OUTPOST_RELEASE_PUBKEY"),
            json_logs: get("OUTPOST_LOG_FORMAT").is_some_and(|f| f == "json"),
            skip_update: match get("OUTPOST_SKIP_UPDATE") {
                Some(value) => env_bool("OUTPOST_SKIP_UPDATE", &value)?,
                None => false,
            },
            agent_env,
            timings: Timings {
                backoff_base: ms(cli.backoff_base_ms.max(1)),
                backoff_cap: ms(cli.backoff_cap_ms.max(cli.backoff_base_ms.max(1))),
                backoff_reset: ms(cli.backoff_reset_ms),
                kill_after: ms(cli.kill_after_ms),
                probation: ms(cli.probation_ms),
            },
        })
    }

    /// `<state_dir>/logs`.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

/// A boolean variable: 1/0, true/false, yes/no, on/off (and y/n, t/f), any case, as the
/// agent's and the server's flags take them (clap's `BoolishValueParser`, so that the three
/// binaries agree on every spelling). Anything else is an error naming the variable: a typo
/// must not quietly mean "off".
pub fn env_bool(name: &str, value: &str) -> anyhow::Result<bool> {
    use clap::builder::{BoolishValueParser, TypedValueParser};
    BoolishValueParser::new()
        .parse_ref(
            &clap::Command::new("outpost-supervisor"),
            None,
            std::ffi::OsStr::new(value.trim()),
        )
        .map_err(|_| {
            anyhow::anyhow!(
                "{name}={value:?} is not a boolean: use 1/0, true/false, yes/no or on/off"
            )
        })
}

/// Largest env file read (it holds a handful of lines).
const MAX_ENV_FILE: u64 = 1024 * 1024;

/// Parses `KEY=value` lines. Keys are `[A-Za-z_][A-Za-z0-9_]*`; everything after the first `=`
/// is the value, verbatim.
pub fn parse_env_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > MAX_ENV_FILE {
        bail!("{} is larger than 1 MiB", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_env(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Parses the text of an env file.
pub fn parse_env(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(format!("line {}: expected KEY=value", n + 1));
        };
        let valid = key
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if key.is_empty() || !valid {
            return Err(format!(
                "line {}: {key:.40?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                n + 1
            ));
        }
        vars.insert(key.to_owned(), value.trim_end_matches('\r').to_owned());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_are_literal() {
        let vars = parse_env(
            "# comment\n\nOUTPOST_SERVER_URL=https://h:1/x?a=b\nOUTPOST_TAGS=\"a b\"\n  K_2=$HOME\n",
        )
        .expect("parses");
        assert_eq!(vars["OUTPOST_SERVER_URL"], "https://h:1/x?a=b");
        assert_eq!(vars["OUTPOST_TAGS"], "\"a b\"");
        assert_eq!(vars["K_2"], "$HOME");
    }

    fn resolve_with(env_file: &str) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agent.env");
        std::fs::write(&path, env_file).expect("write");
        let cli = Cli::parse_from([
            "outpost-supervisor",
            "--env-file",
            path.to_str().expect("utf-8"),
            "--state-dir",
            dir.path().to_str().expect("utf-8"),
            "--agent-bin",
            "/bin/true",
        ]);
        Settings::resolve(cli)
    }

    #[test]
    fn the_key_is_kept_for_the_agent_s_stdin_not_its_environment() {
        let settings = resolve_with("OUTPOST_API_KEY=opa_from-file\nOUTPOST_TAGS=a\n").expect("ok");
        assert_eq!(settings.api_key.as_deref(), Some("opa_from-file"));
        let names: Vec<&str> = settings.agent_env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"OUTPOST_TAGS"), "{names:?}");
        assert!(!names.contains(&"OUTPOST_API_KEY"), "{names:?}");

        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("key");
        std::fs::write(&key, "opa_in-a-key-file\n").expect("write");
        let settings =
            resolve_with(&format!("OUTPOST_API_KEY_FILE={}\n", key.display())).expect("ok");
        assert_eq!(settings.api_key.as_deref(), Some("opa_in-a-key-file"));
        assert!(
            settings
                .agent_env
                .iter()
                .all(|(k, _)| k != "OUTPOST_API_KEY_FILE")
        );

        let both = format!(
            "OUTPOST_API_KEY=opa_x\nOUTPOST_API_KEY_FILE={}\n",
            key.display()
        );
        let err = resolve_with(&both).expect_err("both refused").to_string();
        assert!(err.contains("keep one"), "{err}");
    }

    #[test]
    fn bad_env_lines_name_the_line() {
        assert!(
            parse_env("A=1\nnope\n")
                .expect_err("bad")
                .contains("line 2")
        );
        assert!(parse_env("1A=x\n").expect_err("bad").contains("line 1"));
        assert!(parse_env("A B=x\n").is_err());
    }

    /// `OUTPOST_SKIP_UPDATE` takes what the agent's and the server's booleans take; a word
    /// that is none of them is refused by name instead of meaning "off".
    #[test]
    fn boolean_variables_take_1_0_true_false_yes_no() {
        for (value, want) in [
            ("1", true),
            ("yes", true),
            ("TRUE", true),
            ("on", true),
            ("0", false),
            ("no", false),
            ("false", false),
            ("off", false),
        ] {
            let settings = resolve_with(&format!("OUTPOST_SKIP_UPDATE={value}\n")).expect(value);
            assert_eq!(settings.skip_update, want, "{value}");
        }
        let err = resolve_with("OUTPOST_SKIP_UPDATE=maybe\n")
            .expect_err("not a boolean")
            .to_string();
        assert!(
            err.contains("OUTPOST_SKIP_UPDATE") && err.contains("1/0, true/false, yes/no"),
            "{err}"
        );
    }
}
