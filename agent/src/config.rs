//! Agent configuration: flags, each mirrored by an `OUTPOST_*` environment variable (SPEC §3).

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};
use tracing_subscriber::filter::Targets;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The log filter of `OUTPOST_LOG` (for the agent and its supervisor): a level, and levels per
/// target (`info,outpost_agent=debug`); `info` when unset. A value that is not such a list is
/// reported on stderr, naming `program` and the value, and `info` is used.
///
/// Levels per target rather than tracing-subscriber's `EnvFilter`, whose span and field
/// directives need the regex engine: 1.4 MB of the agent's binary, for filters nobody sets on
/// an agent.
pub fn log_filter(program: &str) -> Targets {
    let spec = std::env::var("OUTPOST_LOG").ok();
    parse_log_filter(spec.as_deref()).unwrap_or_else(|err| {
        eprintln!("{program}: {err}; logging at info");
        info_filter()
    })
}

/// [`log_filter`] without the environment and the fallback.
fn parse_log_filter(spec: Option<&str>) -> Result<Targets, String> {
    match spec {
        Some(spec) if !spec.trim().is_empty() => spec
            .parse()
            .map_err(|err| format!("OUTPOST_LOG={spec:?} is not a log filter ({err})")),
        _ => Ok(info_filter()),
    }
}

fn info_filter() -> Targets {
    Targets::new().with_default(tracing::Level::INFO)
}

/// `outpost-agent` configuration.
#[derive(Clone, Parser)]
#[command(
    name = "outpost-agent",
    version,
    about = "Outpost agent: connects out to an Outpost server and runs its commands"
)]
pub struct Config {
    /// Server base URL: ws://, wss://, http:// or https://.
    #[arg(long, env = "OUTPOST_SERVER_URL")]
    pub server_url: String,

    /// Agent key (opa_…).
    #[arg(long, env = "OUTPOST_API_KEY", hide_env_values = true)]
    pub api_key: String,

    /// Script manifest (default: script_manifest.json in the state directory).
    #[arg(long, env = "OUTPOST_MANIFEST")]
    pub manifest: Option<PathBuf>,

    /// Directory for the agent id, the command journal and logs (default: ~/.outpost-agent).
    #[arg(long, env = "OUTPOST_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Comma-separated tags, e.g. `prod,role=db`.
    #[arg(long, env = "OUTPOST_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,

    /// Refuse update requests (the variable takes 1/0, true/false, yes/no, on/off).
    #[arg(long, env = "OUTPOST_SKIP_UPDATE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub skip_update: bool,

    /// Running under outpost-supervisor: control commands exit with 42/43/44 (1/0, true/false…).
    #[arg(long, env = "OUTPOST_SUPERVISED", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub supervised: bool,

    /// Use HTTP long-poll from the start instead of a WebSocket (1/0, true/false…).
    #[arg(long, env = "OUTPOST_HTTP_FALLBACK", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub http_fallback: bool,

    /// Seconds between polls when the network cuts long-poll requests.
    #[arg(long, env = "OUTPOST_HTTP_POLL_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_poll_interval: u64,

    /// Seconds between WebSocket attempts while on the HTTP fallback (tests shorten it).
    #[arg(long, env = "OUTPOST_WS_RETRY_INTERVAL", default_value_t = 300, hide = true, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub ws_retry_interval: u64,

    /// Extra CA certificate (PEM) to trust for wss:// and https://.
    #[arg(long, env = "OUTPOST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "OUTPOST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// The signed release this binary was installed as, set by outpost-supervisor after it
    /// verified the file; reported as the agent's version instead of the build's.
    #[arg(long, env = "OUTPOST_RELEASE_VERSION", hide = true)]
    pub release_version: Option<String>,
}

impl Config {
    /// The state directory, defaulting to `~/.outpost-agent`.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".outpost-agent")
        })
    }

    /// The version to report: the supervisor's verified release version when it gave a
    /// valid one, else this build's.
    pub fn version(&self) -> String {
        self.release_version
            .as_deref()
            .filter(|v| v.parse::<outpost_protocol::release::Version>().is_ok())
            .unwrap_or(env!("CARGO_PKG_VERSION"))
            .to_owned()
    }

    /// Tags with blanks removed, as `register` may carry them: a tag the protocol refuses
    /// (over 128 bytes, control characters) is left out, and only the first 64 are kept
    /// ([`tag_problems`](Self::tag_problems) says what was left out).
    pub fn clean_tags(&self) -> Vec<String> {
        self.checked_tags().0
    }

    /// Why tags given in `OUTPOST_TAGS` are left out of `register`, one line each.
    pub fn tag_problems(&self) -> Vec<String> {
        self.checked_tags().1
    }

    fn checked_tags(&self) -> (Vec<String>, Vec<String>) {
        use outpost_protocol::limits::MAX_TAGS;
        let mut kept = Vec::new();
        let mut problems = Vec::new();
        for tag in self.tags.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            if let Err(why) = outpost_protocol::check::tag("OUTPOST_TAGS", tag) {
                problems.push(format!("{why}; the tag is left out"));
            } else if kept.len() == MAX_TAGS {
                problems.push(format!(
                    "OUTPOST_TAGS: more than {MAX_TAGS} tags (the protocol's limit); {tag:?} is left out"
                ));
            } else if !kept.iter().any(|k| k == tag) {
                kept.push(tag.to_owned());
            }
        }
        (kept, problems)
    }
}

impl std::fmt::Debug for Config {
    // Written by hand so the agent key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server_url", &self.server_url)
            .field("api_key", &"<set>")
            .field("manifest", &self.manifest)
            .field("state_dir", &self.state_dir)
            .field("tags", &self.tags)
            .field("skip_update", &self.skip_update)
            .field("supervised", &self.supervised)
            .field("http_fallback", &self.http_fallback)
            .field("http_poll_interval", &self.http_poll_interval)
            .field("ca_cert", &self.ca_cert)
            .field("log_format", &self.log_format)
            .field("release_version", &self.release_version)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::parse_log_filter;

    #[test]
    fn log_filters_take_a_level_and_levels_per_target() {
        for unset in [None, Some(""), Some("  ")] {
            let filter = parse_log_filter(unset).expect("default");
            assert!(filter.would_enable("outpost_agent", &Level::INFO));
            assert!(!filter.would_enable("outpost_agent", &Level::DEBUG));
        }
        let filter = parse_log_filter(Some("warn,outpost_agent::session=debug")).expect("parsed");
        assert!(filter.would_enable("outpost_agent::session", &Level::DEBUG));
        assert!(!filter.would_enable("outpost_agent::exec", &Level::INFO));
        assert!(filter.would_enable("outpost_agent::exec", &Level::WARN));
    }

    #[test]
    fn tags_the_protocol_refuses_are_left_out_and_said() {
        use clap::Parser;
        let many: Vec<String> = (0..70).map(|i| format!("t{i}")).collect();
        let tags = format!(
            " prod ,,bad\u{1b}[2Jtag,{},prod,{}",
            "x".repeat(129),
            many.join(",")
        );
        let config = super::Config::try_parse_from([
            "outpost-agent",
            "--server-url",
            "ws://127.0.0.1:1",
            "--api-key",
            "opa_x",
            "--tags",
            &tags,
        ])
        .expect("parsed");
        let kept = config.clean_tags();
        assert_eq!(kept.len(), 64);
        assert_eq!(kept[0], "prod");
        assert_eq!(kept[1], "t0");
        assert_eq!(kept[63], "t62");
        outpost_protocol::check::tags("tags", &kept).expect("within the limits");
        let problems = config.tag_problems();
        assert_eq!(problems.len(), 2 + 7, "{problems:?}");
        assert!(
            problems[0].contains("control character U+001B"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("129 bytes; the limit is 128"),
            "{problems:?}"
        );
        assert!(problems[2].contains("more than 64 tags"), "{problems:?}");
    }

    #[test]
    fn a_log_filter_that_is_not_one_is_refused_with_its_value() {
        let err = parse_log_filter(Some("x=y=z")).expect_err("refused");
        assert!(
            err.starts_with(r#"OUTPOST_LOG="x=y=z" is not a log filter ("#),
            "{err}"
        );
    }
}
