//! Agent configuration: flags, each mirrored by an `OUTPOST_*` environment variable (CONTRACT.md §3).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};
use tracing_subscriber::filter::Targets;
use url::Url;

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
/// directives need the regex engine: a large share of the agent's binary, for filters nobody
/// sets on an agent (figures: docs/BENCHMARKS.md, "Design notes behind the figures").
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

/// Reads `OUTPOST_SERVER_URL`: one server URL, or the URLs of several nodes of one cluster
/// separated by commas (CONTRACT.md §13), blanks around each ignored. Each must be a `ws://`,
/// `wss://`, `http://` or `https://` URL with a host. An empty entry, or two entries naming the
/// same server, is refused too: both are typing mistakes, and a node listed twice would get
/// twice its share of the fleet. The error names the entry.
///
/// Two entries name the same server when they differ only in the flavour of their scheme
/// (`ws` and `http` are one plain server, `wss` and `https` one TLS server), in credentials,
/// query or a trailing `/`: the agent reaches both at the same endpoints.
pub fn parse_server_urls(text: &str) -> anyhow::Result<Vec<Url>> {
    let entries: Vec<&str> = text.split(',').map(str::trim).collect();
    let several = entries.len() > 1;
    // How a message names an entry: by its position when there are several, and by its text.
    let name = |i: usize, shown: &str| {
        if several {
            format!("OUTPOST_SERVER_URL entry {} ({shown:?})", i + 1)
        } else {
            format!("OUTPOST_SERVER_URL {shown:?}")
        }
    };
    let mut urls: Vec<Url> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        if entry.is_empty() {
            if several {
                bail!(
                    "OUTPOST_SERVER_URL entry {} is empty: separate the servers' URLs with single commas",
                    i + 1
                );
            }
            bail!("OUTPOST_SERVER_URL is empty: give the server's URL");
        }
        let url = Url::parse(entry).with_context(|| format!("{} is not a URL", name(i, entry)))?;
        // A password in the URL is not repeated in messages.
        let name = if url.password().is_some() {
            let mut masked = url.clone();
            let _ = masked.set_password(Some("***"));
            name(i, masked.as_str())
        } else {
            name(i, entry)
        };
        if !matches!(url.scheme(), "ws" | "wss" | "http" | "https") {
            bail!(
                "{name} must be ws://, wss://, http:// or https://, not {}://",
                url.scheme()
            );
        }
        if url.host_str().is_none_or(str::is_empty) {
            bail!("{name} has no host");
        }
        if let Some(j) = urls.iter().position(|u| same_server(u, &url)) {
            bail!(
                "{name} names the same server as entry {}: list each node once",
                j + 1
            );
        }
        urls.push(url);
    }
    Ok(urls)
}

/// Whether the agent would reach `a` and `b` at the same endpoints.
fn same_server(a: &Url, b: &Url) -> bool {
    let key = |u: &Url| {
        (
            matches!(u.scheme(), "wss" | "https"),
            u.host_str().map(str::to_ascii_lowercase),
            u.port_or_known_default(),
            u.path().trim_end_matches('/').to_owned(),
        )
    };
    key(a) == key(b)
}

/// A server URL as logs show it: without a user name, password, query or fragment, which may
/// hold secrets.
pub fn url_for_logs(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

pub use crate::platform::ContainMode;

/// Longest key file read; keys are under 100 bytes.
const MAX_KEY_FILE: u64 = 4096;

/// Reads an agent key from `path` (`-`: standard input): one line of visible ASCII, trailing
/// whitespace ignored. Returns the key and, for a file other users may read, a warning to
/// log: such a file is accepted (mounted secrets are often 0644), since refusing it would stop
/// an agent that works.
pub fn read_key_file(path: &Path) -> anyhow::Result<(String, Option<String>)> {
    use std::io::Read;
    let shown = path.display();
    let mut text = Vec::new();
    let mut warning = None;
    if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_KEY_FILE + 1)
            .read_to_end(&mut text)
            .context("reading the agent key from standard input")?;
    } else {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening the agent key file {shown}"))?;
        let open = file
            .metadata()
            .ok()
            .and_then(|m| crate::platform::open_to_others(&m));
        if let Some(mode) = open {
            warning = Some(format!(
                "the agent key file {shown} (mode {mode:o}) can be read by other users; chmod 600 it"
            ));
        }
        file.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut text)
            .with_context(|| format!("reading the agent key file {shown}"))?;
    }
    if text.len() as u64 > MAX_KEY_FILE {
        bail!(
            "the agent key file {shown} is larger than {MAX_KEY_FILE} bytes: it must hold only the key"
        );
    }
    let key = std::str::from_utf8(&text)
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match key {
        None => bail!("the agent key file {shown} is empty or not text"),
        Some(key) if !key.bytes().all(|b| b.is_ascii_graphic()) => bail!(
            "the agent key file {shown} must hold only the key (one line, no spaces or `KEY=` prefix)"
        ),
        Some(key) if key.contains('=') => {
            bail!("the agent key file {shown} must hold only the key, not a KEY=value line")
        }
        Some(key) => Ok((key.to_owned(), warning)),
    }
}

/// `outpost-agent` configuration.
#[derive(Clone, Parser)]
#[command(
    name = "outpost-agent",
    version,
    about = "Outpost agent: connects out to an Outpost server and runs its commands"
)]
pub struct Config {
    /// Server base URL: ws://, wss://, http:// or https://. Several nodes of one cluster:
    /// comma-separated; the agent starts at a random one and fails over to the next.
    #[arg(long, env = "OUTPOST_SERVER_URL")]
    pub server_url: String,

    /// Which URL of --server-url to try first, counting from 1 (default: a random one). For
    /// tests, which need to know where the agent starts.
    #[arg(long, env = "OUTPOST_FIRST_SERVER", hide = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub first_server: Option<u16>,

    /// Agent key (opa_…). Prefer --api-key-file: a key in the environment is visible to root
    /// in /proc and to `docker inspect`.
    #[arg(
        long,
        env = "OUTPOST_API_KEY",
        hide_env_values = true,
        required_unless_present = "api_key_file",
        conflicts_with = "api_key_file"
    )]
    pub api_key: Option<String>,

    /// File holding the agent key (mode 0600), or `-` for standard input.
    #[arg(long, env = "OUTPOST_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

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

    /// SHA-256 of the server's agent CA certificate (64 hex digits; the install line carries
    /// it): the agent then trusts that CA alone, fetched once from the server and checked
    /// against this (CONTRACT.md §19).
    #[arg(long, env = "OUTPOST_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,

    /// Enroll for a client certificate when the server serves TLS and has a CA, and connect
    /// with it from then on (1/0, true/false…; default on).
    #[arg(long, env = "OUTPOST_ENROLL", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enroll: bool,

    /// Log format.
    #[arg(long, env = "OUTPOST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// How runs are contained: a cgroup per run where one can be created, else process groups
    /// (auto); cgroups or refuse to start (cgroup); never cgroups (process).
    #[arg(long, env = "OUTPOST_CONTAINMENT", value_enum, default_value = "auto")]
    pub containment: ContainMode,

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

    /// The server nodes of `--server-url`, checked (see [`parse_server_urls`]).
    pub fn server_urls(&self) -> anyhow::Result<Vec<Url>> {
        parse_server_urls(&self.server_url)
    }

    /// Reads the key from `--api-key-file` when it was given that way, once: later calls find it
    /// read.
    pub fn load_key(&mut self) -> anyhow::Result<()> {
        if self.api_key.is_none()
            && let Some(path) = &self.api_key_file
        {
            let (key, warning) = read_key_file(path)?;
            if let Some(warning) = warning {
                tracing::warn!("{warning}");
            }
            self.api_key = Some(key);
        }
        if self.key().is_empty() {
            bail!("no agent key: set OUTPOST_API_KEY_FILE (or OUTPOST_API_KEY)");
        }
        Ok(())
    }

    /// The agent key (empty until [`load_key`](Self::load_key) read it from a file).
    pub fn key(&self) -> &str {
        self.api_key.as_deref().unwrap_or_default()
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

/// `--server-url` as it may be logged: each entry without credentials, query or fragment (a
/// URL that does not parse is not shown at all).
fn servers_for_logs(text: &str) -> String {
    text.split(',')
        .map(|entry| match Url::parse(entry.trim()) {
            Ok(url) => url_for_logs(&url),
            Err(_) => "<not a URL>".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl std::fmt::Debug for Config {
    // Written by hand so the agent key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server_url", &servers_for_logs(&self.server_url))
            .field("first_server", &self.first_server)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("api_key_file", &self.api_key_file)
            .field("manifest", &self.manifest)
            .field("state_dir", &self.state_dir)
            .field("tags", &self.tags)
            .field("skip_update", &self.skip_update)
            .field("supervised", &self.supervised)
            .field("http_fallback", &self.http_fallback)
            .field("http_poll_interval", &self.http_poll_interval)
            .field("ca_cert", &self.ca_cert)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("enroll", &self.enroll)
            .field("log_format", &self.log_format)
            .field("release_version", &self.release_version)
            .field("containment", &self.containment)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::{parse_log_filter, read_key_file};

    #[test]
    fn key_files_hold_only_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let file = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        };
        let (key, warning) =
            read_key_file(&file("ok", "opa_abc123\n", 0o600)).expect("a key and a newline");
        assert_eq!((key.as_str(), warning), ("opa_abc123", None));
        let (_, warning) = read_key_file(&file("open", "opa_abc123", 0o644)).expect("accepted");
        assert!(warning.is_some_and(|w| w.contains("chmod 600")));
        for (name, text, why) in [
            ("empty", "\n", "empty"),
            ("line", "OUTPOST_API_KEY=opa_abc123\n", "KEY=value"),
            ("two", "opa_abc\nopa_def\n", "only the key"),
        ] {
            let err = read_key_file(&file(name, text, 0o600)).expect_err(name);
            let err = format!("{err:#}");
            assert!(err.contains(why) && err.contains(name), "{name}: {err}");
        }
        let big = "x".repeat(5000);
        let err = read_key_file(&file("big", &big, 0o600)).expect_err("too large");
        assert!(format!("{err:#}").contains("larger than"));
        let err = read_key_file(&dir.path().join("missing")).expect_err("missing");
        assert!(format!("{err:#}").contains("missing"));
    }

    fn urls(text: &str) -> Vec<String> {
        super::parse_server_urls(text)
            .unwrap_or_else(|err| panic!("{text:?}: {err:#}"))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn server_urls_are_one_or_several_comma_separated() {
        assert_eq!(
            urls("https://outpost.example.com"),
            ["https://outpost.example.com/"]
        );
        assert_eq!(
            urls("ws://a:8080,ws://b:8080,http://c:8080"),
            ["ws://a:8080/", "ws://b:8080/", "http://c:8080/"]
        );
        assert_eq!(
            urls(" wss://a/outpost , https://b "),
            ["wss://a/outpost", "https://b/"]
        );
        // Plain and TLS on one host, or two paths on one host, are different servers.
        assert_eq!(urls("ws://a,wss://a").len(), 2);
        assert_eq!(urls("ws://a/x,ws://a/y").len(), 2);
        assert_eq!(urls("ws://a:8080,ws://a:8081").len(), 2);
    }

    #[test]
    fn bad_server_lists_are_refused_naming_the_entry() {
        for (text, want) in [
            ("", "OUTPOST_SERVER_URL is empty"),
            ("ws://a,,ws://b", "OUTPOST_SERVER_URL entry 2 is empty"),
            ("ws://a,", "OUTPOST_SERVER_URL entry 2 is empty"),
            (",ws://a", "OUTPOST_SERVER_URL entry 1 is empty"),
            (
                "ftp://example",
                r#"OUTPOST_SERVER_URL "ftp://example" must be ws://, wss://, http:// or https://, not ftp://"#,
            ),
            (
                "ws://a,ftp://b",
                r#"OUTPOST_SERVER_URL entry 2 ("ftp://b") must be ws://"#,
            ),
            (
                "ws://a, not a url",
                r#"OUTPOST_SERVER_URL entry 2 ("not a url") is not a URL"#,
            ),
            ("a:8080", r#"OUTPOST_SERVER_URL "a:8080" must be"#),
            (
                "ws://a:8080,ws://b:8080,http://a:8080/",
                r#"OUTPOST_SERVER_URL entry 3 ("http://a:8080/") names the same server as entry 1"#,
            ),
            (
                "wss://a/x/,https://A:443/x",
                r#"entry 2 ("https://A:443/x") names the same server as entry 1"#,
            ),
            (
                "ws://a,ws://b,ws://a",
                "entry 3 (\"ws://a\") names the same server as entry 1",
            ),
        ] {
            let err = super::parse_server_urls(text).expect_err(text);
            let err = format!("{err:#}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn server_passwords_stay_out_of_messages_and_logs() {
        let err =
            super::parse_server_urls("ws://u:hunter2@a,ws://u:hunter2@a").expect_err("duplicate");
        let err = format!("{err:#}");
        assert!(
            err.contains("ws://u:***@a") && !err.contains("hunter2"),
            "{err}"
        );
        let url = url::Url::parse("wss://u:hunter2@a:9/base?token=x#f").expect("url");
        assert_eq!(super::url_for_logs(&url), "wss://a:9/base");
        assert_eq!(
            super::servers_for_logs("wss://u:hunter2@a:9/base?token=x, ws://b:hunter2@c/,hunter2"),
            "wss://a:9/base,ws://c/,<not a URL>"
        );
    }

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

    /// Every on/off flag with an environment twin takes 1/0, true/false, yes/no from the
    /// variable (CONTRACT.md §5), including flags added later (clap's default takes only true/false).
    #[test]
    fn boolean_variables_take_1_0_true_false_yes_no() {
        use clap::{ArgAction, CommandFactory};
        let cmd = super::Config::command();
        let mut checked = 0;
        for arg in cmd.get_arguments() {
            if arg.get_env().is_none() || !matches!(arg.get_action(), ArgAction::SetTrue) {
                continue;
            }
            let values: Vec<_> = arg
                .get_value_parser()
                .possible_values()
                .into_iter()
                .flatten()
                .collect();
            for word in ["1", "0", "true", "false", "yes", "no", "YES"] {
                assert!(
                    values.iter().any(|v| v.matches(word, true)),
                    "--{}: {:?} must accept {word:?} (use BoolishValueParser)",
                    arg.get_id(),
                    arg.get_env()
                );
            }
            checked += 1;
        }
        assert_eq!(checked, 3, "skip-update, supervised, http-fallback");
    }
}
