//! Server configuration: flags, each with an `OUTPOST_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};

/// How long an API key may live unless `--max-key-days` says otherwise (CONTRACT.md §9; the
/// services' own default, `service::api_keys::DEFAULT_MAX_KEY_DAYS`, is the same).
pub const DEFAULT_MAX_KEY_DAYS: u32 = 365;

/// What one tenant's script library may hold unless `--library-max-bytes` says otherwise:
/// 1 GiB, 64 bundles of the largest size (the services' own default,
/// `service::scripts::DEFAULT_LIBRARY_MAX_BYTES`, is the same). Bundles live in the database every tenant shares,
/// so one tenant's admins must not be able to fill it.
pub const DEFAULT_LIBRARY_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `outpost-server` configuration.
#[derive(Clone, Parser)]
#[command(
    name = "outpost-server",
    version,
    about = "Outpost server: REST API, agent hub and storage",
    after_help = "Releases: `outpost-server release keygen --help` and `outpost-server release publish --help`.\nThe owner API key: `outpost-server admin-key rotate --help`.\nUsers: `outpost-server user create --help`.\nTenants: `outpost-server tenant --help`.\nBackups: `outpost-server backup --help` and `outpost-server restore --help`."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "OUTPOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the SQLite database and admin.key.
    #[arg(long, env = "OUTPOST_DATA_DIR", default_value = "./outpost-data")]
    pub data_dir: PathBuf,

    /// Database URL (postgres://… or sqlite://…); default: SQLite in --data-dir.
    #[arg(long, env = "OUTPOST_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Seconds to keep trying to reach --database-url at start (it may start after the server,
    /// as in a compose file) before giving up with an error naming it.
    #[arg(long, env = "OUTPOST_DATABASE_WAIT", default_value_t = 60)]
    pub database_wait: u64,

    /// This node's name in `GET /api/nodes` and its logs, when several servers share one
    /// PostgreSQL; default: the host name and the listening port.
    #[arg(long, env = "OUTPOST_NODE_NAME")]
    pub node_name: Option<String>,

    /// URL agents and browsers reach this server at (used in deploy.sh and links).
    #[arg(long, env = "OUTPOST_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// PEM certificate chain; serves HTTPS/WSS when given with --tls-key.
    #[arg(long, env = "OUTPOST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "OUTPOST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve HTTPS/WSS with a certificate the server issues itself from its agent CA
    /// (CONTRACT.md §19); the install line pins its key and the CA. Excludes --tls-cert.
    #[arg(long, env = "OUTPOST_TLS_AUTO", conflicts_with = "tls_cert", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub tls_auto: bool,

    /// Host names and IP addresses the --tls-auto certificate names, comma-separated. Default:
    /// the host of --public-url, this machine's host name, localhost, 127.0.0.1 and ::1.
    #[arg(
        long,
        env = "OUTPOST_TLS_AUTO_NAMES",
        value_delimiter = ',',
        requires = "tls_auto"
    )]
    pub tls_auto_names: Vec<String>,

    /// How agents prove who they are: `key` (the agent key on every connection), `cert` (a
    /// client certificate from the server's CA; the key only enrolls) or `either` (a
    /// certificate where presented, else the key; an agent that enrolled must use its
    /// certificate). Certificates need the server to serve TLS itself.
    #[arg(long, env = "OUTPOST_AGENT_AUTH", value_enum, default_value = "either")]
    pub agent_auth: outpost_core::access::AgentAuthMode,

    /// Life of an agent certificate (`30d`, `12h`, `90s`; 60 s to 365 days); agents renew at
    /// two thirds of it.
    #[arg(long, env = "OUTPOST_AGENT_CERT_VALIDITY", default_value = "30d", value_parser = parse_validity)]
    pub agent_cert_validity: Duration,

    /// The operator's own CA certificate (PEM) to issue agent certificates from, instead of the
    /// CA the server makes and keeps in its database. Every node needs the same one.
    #[arg(long, env = "OUTPOST_AGENT_CA_CERT", requires = "agent_ca_key")]
    pub agent_ca_cert: Option<PathBuf>,

    /// The private key (PKCS#8 PEM) of --agent-ca-cert.
    #[arg(long, env = "OUTPOST_AGENT_CA_KEY", requires = "agent_ca_cert")]
    pub agent_ca_key: Option<PathBuf>,

    /// Also serve `GET /metrics` WITHOUT authentication on this address (for a Prometheus on an
    /// internal network). On the main listener `/metrics` needs an owner API key.
    #[arg(long, env = "OUTPOST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "OUTPOST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Seconds a new connection has to finish its TLS handshake and send its first request's
    /// headers; past it the connection is closed.
    #[arg(long, env = "OUTPOST_HEADER_TIMEOUT", default_value_t = 10, value_parser = seconds())]
    pub header_timeout: u64,

    /// Seconds a request's body has to arrive in whole, counted from its headers; past it the
    /// request fails (400) and its connection is closed.
    #[arg(long, env = "OUTPOST_BODY_TIMEOUT", default_value_t = 60, value_parser = seconds())]
    pub body_timeout: u64,

    /// Seconds a connection that has not authenticated may wait for its next request (its
    /// headers included) before it is closed.
    #[arg(long, env = "OUTPOST_IDLE_TIMEOUT", default_value_t = 30, value_parser = seconds())]
    pub idle_timeout: u64,

    /// Seconds an authenticated connection may wait for its next request (keep-alive) before
    /// it is closed. Agent WebSockets are not affected: heartbeats watch them.
    #[arg(long, env = "OUTPOST_KEEPALIVE_TIMEOUT", default_value_t = 120, value_parser = seconds())]
    pub keepalive_timeout: u64,

    /// Connections that have not authenticated yet, in all; past it the oldest from the client
    /// address holding the most is closed. Default: 2,048, or a quarter of the open-file limit
    /// if that is less.
    #[arg(long, env = "OUTPOST_MAX_UNAUTHENTICATED", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unauthenticated: Option<u64>,

    /// Connections that have not authenticated yet from one client address (one /64 for
    /// IPv6); past it that address's oldest is closed.
    #[arg(long, env = "OUTPOST_MAX_UNAUTHENTICATED_PER_ADDRESS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unauthenticated_per_address: u64,

    /// Requests a minute each caller (API key) may make on /api, and requests that fail
    /// authentication each client address may make; past it: 429 with Retry-After. 0 turns
    /// both off (the sign-in routes' 10 a minute stay). Counted per server node.
    #[arg(long, env = "OUTPOST_RATE_LIMIT", default_value_t = 1_200)]
    pub rate_limit: u32,

    /// Milliseconds (at most 1,000) an API key's or a user's row, once read to authenticate a
    /// request, serves the next ones, unless a change to API keys or users made on this node
    /// (or announced by another node) comes first. A change made in the database by
    /// hand counts after at most this long (`outpost-server admin-key rotate` waits it out).
    /// The same for a connected agent's row with its key, read to send it a command (dropped
    /// by any change to agents or agent keys). 0 reads the rows on every request.
    #[arg(long, env = "OUTPOST_CREDENTIAL_CACHE_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    pub credential_cache_ms: u64,

    /// A proxy or load balancer in front of the server (an address or CIDR block; repeat the
    /// flag or separate with commas): requests from it are counted by the client address it
    /// appends to X-Forwarded-For. Without it X-Forwarded-For is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "OUTPOST_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub trusted_proxies: Vec<outpost_core::forwarded::Cidr>,

    /// Seconds between agent heartbeats; an agent silent for 3 intervals is offline.
    #[arg(long, env = "OUTPOST_HEARTBEAT_INTERVAL", default_value_t = outpost_protocol::limits::DEFAULT_HEARTBEAT_INTERVAL_S as u64)]
    pub heartbeat_interval: u64,

    /// Seconds after which a run whose agent went away (and stayed away) is marked lost. At
    /// least 3 heartbeat intervals.
    #[arg(long, env = "OUTPOST_LOST_AFTER", default_value_t = 3600)]
    pub lost_after: u64,

    /// Directory holding the outpost-agent and outpost-supervisor builds served (signed with
    /// <data-dir>/release.key) until a release is published; default: the directory of this
    /// executable.
    #[arg(long, env = "OUTPOST_BUILDS_DIR")]
    pub builds_dir: Option<PathBuf>,

    /// The longest an API key made through /api/keys may live, in days (also its default
    /// expiry).
    #[arg(long, env = "OUTPOST_MAX_KEY_DAYS", default_value_t = DEFAULT_MAX_KEY_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub max_key_days: u32,

    /// How long after its instant a schedule's fire still runs (late); older fires are
    /// "missed" and follow the schedule's `missed` policy. CONTRACT.md §10 says 60 s; tests shorten it.
    #[arg(long, env = "OUTPOST_SCHEDULE_GRACE_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub schedule_grace_s: u64,

    /// Tests only: schedules read the time from this file (an RFC 3339 instant) instead of
    /// the system's clock.
    #[arg(long, env = "OUTPOST_TEST_CLOCK_FILE", hide = true)]
    pub test_clock_file: Option<PathBuf>,

    /// Days of finished history kept (jobs, their runs and output, commands, events); older
    /// is deleted in the background. 0 keeps everything. A tenant may have its own
    /// (`outpost-server tenant set-retention`, PATCH /api/tenants/{id}).
    #[arg(long, env = "OUTPOST_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pub retention_days: u32,

    /// Tests and benchmarks only: the server's retention window in seconds instead of
    /// --retention-days (a pass then runs every quarter of it, at most every minute).
    #[arg(long, env = "OUTPOST_TEST_RETENTION_SECONDS", hide = true)]
    pub retention_seconds: Option<u64>,

    /// Output bytes kept per run and stream; past it the run says output_truncated.
    #[arg(long, env = "OUTPOST_MAX_OUTPUT_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_output_bytes: u64,

    /// Bundle bytes each tenant's script library may hold, every version of every script
    /// together; an upload past it is refused (409 library_full) until versions are deleted.
    #[arg(long, env = "OUTPOST_LIBRARY_MAX_BYTES", default_value_t = DEFAULT_LIBRARY_MAX_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub library_max_bytes: u64,

    /// Let job webhooks go to loopback, private and link-local addresses (off: such URLs are
    /// refused, so API callers cannot reach internal services through the server). The
    /// variable takes 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "OUTPOST_WEBHOOK_ALLOW_PRIVATE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub webhook_allow_private: bool,

    /// SMTP relay for email integrations and mail to people (verification codes, password
    /// reset links, invites): `smtps://user:password@host:465`, or
    /// `smtp://user:password@host:587?tls=required` for STARTTLS (a plain `smtp://` sends in
    /// the clear: a relay on this machine only). Needs --public-url (mailed links are built
    /// from it). Without it, email deliveries fail saying so and nothing is mailed to people.
    #[arg(long, env = "OUTPOST_SMTP_URL")]
    pub smtp_url: Option<String>,

    /// The sender of email notifications (`Outpost <outpost@example.com>`; default
    /// outpost@<this host's name>).
    #[arg(long, env = "OUTPOST_SMTP_FROM")]
    pub smtp_from: Option<String>,

    /// Users must verify their email (a 6-digit code mailed to them) before they can do
    /// anything but verify it. Needs --smtp-url. The variable takes 1/0, true/false, yes/no,
    /// on/off.
    #[arg(long, env = "OUTPOST_REQUIRE_VERIFIED_EMAIL", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub require_verified_email: bool,

    /// Let anyone create a tenant and its owner with POST /api/auth/register (off: that
    /// route answers 403 signup_disabled; a self-hosted server is usually one tenant). The
    /// variable takes 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "OUTPOST_ALLOW_SIGNUP", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub allow_signup: bool,

    /// OpenID Connect provider to sign in with (CONTRACT.md §18): its issuer URL, https (http
    /// only on loopback), e.g. `https://login.microsoftonline.com/<tenant-id>/v2.0`. Needs
    /// --oidc-client-id, --oidc-client-secret (or its file) and --public-url (the redirect URI
    /// is `<public-url>/api/auth/oidc/callback`).
    #[arg(long, env = "OUTPOST_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,

    /// The client id this server has at the provider.
    #[arg(long, env = "OUTPOST_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,

    /// The client secret this server has at the provider (prefer --oidc-client-secret-file).
    #[arg(
        long,
        env = "OUTPOST_OIDC_CLIENT_SECRET",
        hide_env_values = true,
        conflicts_with = "oidc_client_secret_file"
    )]
    pub oidc_client_secret: Option<String>,

    /// A file holding the client secret (its first line).
    #[arg(long, env = "OUTPOST_OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,

    /// The provider's name on the dashboard's "Sign in with …" button.
    #[arg(long, env = "OUTPOST_OIDC_NAME", default_value = "single sign-on")]
    pub oidc_name: String,

    /// `DOMAIN=TENANT` (repeatable; the variable takes a comma-separated list): a first SSO
    /// sign-in with an email at DOMAIN joins TENANT (a name or id) as a member.
    #[arg(
        long = "oidc-domain",
        env = "OUTPOST_OIDC_DOMAIN",
        value_delimiter = ','
    )]
    pub oidc_domains: Vec<String>,

    /// Key sealing secrets at rest (32 bytes, hex or base64); default: <data-dir>/master.key,
    /// created on first start. Set it when several servers share a database.
    #[arg(
        long = "master-key",
        env = "OUTPOST_MASTER_KEY",
        hide_env_values = true,
        hide = true
    )]
    pub master_key: Option<String>,

    /// Owner API key to use instead of generating one (opk_…, 32+ characters).
    #[arg(
        long = "admin-key",
        env = "OUTPOST_ADMIN_KEY",
        hide_env_values = true,
        hide = true
    )]
    pub admin_key: Option<String>,
}

impl Config {
    /// The connection timeouts these flags give (`--header-timeout`, `--body-timeout`,
    /// `--idle-timeout`, `--keepalive-timeout`).
    pub fn connection_limits(&self) -> outpost_web::listen::Limits {
        outpost_web::listen::Limits {
            header: Duration::from_secs(self.header_timeout),
            body: Duration::from_secs(self.body_timeout),
            idle: Duration::from_secs(self.idle_timeout),
            keepalive: Duration::from_secs(self.keepalive_timeout),
        }
    }
}

impl std::fmt::Debug for Config {
    // Written by hand so that the admin key and database password never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("node_name", &self.node_name)
            .field("database_wait", &self.database_wait)
            .field("public_url", &self.public_url)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_auto", &self.tls_auto)
            .field("tls_auto_names", &self.tls_auto_names)
            .field("agent_auth", &self.agent_auth)
            .field("agent_cert_validity", &self.agent_cert_validity)
            .field("agent_ca_cert", &self.agent_ca_cert)
            .field("agent_ca_key", &self.agent_ca_key)
            .field("metrics_listen", &self.metrics_listen)
            .field("log_format", &self.log_format)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("max_unauthenticated", &self.max_unauthenticated)
            .field(
                "max_unauthenticated_per_address",
                &self.max_unauthenticated_per_address,
            )
            .field("rate_limit", &self.rate_limit)
            .field("credential_cache_ms", &self.credential_cache_ms)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("builds_dir", &self.builds_dir)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("library_max_bytes", &self.library_max_bytes)
            .field("retention_days", &self.retention_days)
            .field("retention_seconds", &self.retention_seconds)
            .field("schedule_grace_s", &self.schedule_grace_s)
            .field("test_clock_file", &self.test_clock_file)
            .field("max_key_days", &self.max_key_days)
            .field("lost_after", &self.lost_after)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<set>"))
            .field("master_key", &self.master_key.as_ref().map(|_| "<set>"))
            .field("webhook_allow_private", &self.webhook_allow_private)
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "<set>"))
            .field("smtp_from", &self.smtp_from)
            .field("require_verified_email", &self.require_verified_email)
            .field("allow_signup", &self.allow_signup)
            .field("oidc_issuer", &self.oidc_issuer)
            .field("oidc_client_id", &self.oidc_client_id)
            .field(
                "oidc_client_secret",
                &self.oidc_client_secret.as_ref().map(|_| "<set>"),
            )
            .field("oidc_client_secret_file", &self.oidc_client_secret_file)
            .field("oidc_name", &self.oidc_name)
            .field("oidc_domains", &self.oidc_domains)
            .finish()
    }
}

impl Config {
    /// The OpenID Connect provider these flags configure (`None` without `--oidc-issuer`), or
    /// what is missing or wrong.
    pub fn sso(&self) -> Result<Option<outpost_core::service::sso::SsoConfig>, String> {
        use outpost_core::service::sso::SsoConfig;
        let Some(issuer) = &self.oidc_issuer else {
            if self.oidc_client_id.is_some()
                || self.oidc_client_secret.is_some()
                || self.oidc_client_secret_file.is_some()
                || !self.oidc_domains.is_empty()
            {
                return Err(
                    "--oidc-client-id, --oidc-client-secret and --oidc-domain need --oidc-issuer"
                        .into(),
                );
            }
            return Ok(None);
        };
        let issuer = SsoConfig::check_issuer(issuer)?;
        let client_id = self
            .oidc_client_id
            .clone()
            .filter(|c| !c.trim().is_empty())
            .ok_or("--oidc-issuer needs --oidc-client-id")?;
        let client_secret = match (&self.oidc_client_secret, &self.oidc_client_secret_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    format!(
                        "--oidc-client-secret-file: cannot read {}: {e}",
                        path.display()
                    )
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(
                    "--oidc-issuer needs --oidc-client-secret or --oidc-client-secret-file".into(),
                );
            }
        };
        if client_secret.is_empty() {
            return Err("--oidc-client-secret: the client secret is empty".into());
        }
        let public_url = self.public_url.as_deref().ok_or(
            "--oidc-issuer needs --public-url: the provider sends browsers back to <public-url>/api/auth/oidc/callback",
        )?;
        let domains = self
            .oidc_domains
            .iter()
            .filter(|d| !d.trim().is_empty())
            .map(|d| SsoConfig::parse_domain(d))
            .collect::<Result<Vec<_>, _>>()?;
        let name = self.oidc_name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err("--oidc-name: give the provider's name, 1 to 64 characters".into());
        }
        Ok(Some(SsoConfig {
            issuer,
            client_id,
            client_secret,
            name: name.to_owned(),
            domains,
            redirect_uri: format!(
                "{}/api/auth/oidc/callback",
                public_url.trim_end_matches('/')
            ),
        }))
    }
}

/// A whole number of seconds, at least 1 (a timeout of 0 would close every connection).
fn seconds() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=86_400)
}

/// `--agent-cert-validity`: a whole number and a unit (`s`, `m`, `h`, `d`), 60 s to 365 days.
fn parse_validity(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: give a unit (s, m, h or d), as in 30d"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a whole number and a unit, as in 30d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    if !(60..=365 * 86_400).contains(&secs) {
        return Err(format!("{text:?}: between 60 s and 365 days"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use clap::{ArgAction, CommandFactory};

    /// Every on/off flag with an environment twin takes 1/0, true/false, yes/no from the
    /// variable (CONTRACT.md §5), including flags added later: clap's default for a `bool` flag
    /// takes only `true`/`false`, and `OUTPOST_WEBHOOK_ALLOW_PRIVATE=1` stopped the server.
    #[test]
    fn boolean_variables_take_1_0_true_false_yes_no() {
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
        assert!(checked >= 1, "no boolean variable found");
    }

    /// `--trusted-proxy` repeats and takes comma-separated lists; a bad block names itself.
    #[test]
    fn trusted_proxies_repeat_and_split_on_commas() {
        use clap::Parser;
        let config = super::Config::try_parse_from([
            "outpost-server",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "127.0.0.1, fd00::/8",
        ])
        .expect("valid blocks");
        let blocks: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(blocks, ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]);
        assert_eq!(config.rate_limit, 1_200);
        assert_eq!(config.credential_cache_ms, 1_000);
        assert_eq!(config.max_key_days, 365);
        assert_eq!(
            config.max_key_days,
            outpost_core::service::api_keys::DEFAULT_MAX_KEY_DAYS
        );
        assert_eq!(config.library_max_bytes, 1 << 30);
        assert_eq!(
            config.library_max_bytes,
            outpost_core::service::scripts::DEFAULT_LIBRARY_MAX_BYTES
        );
        let err =
            super::Config::try_parse_from(["outpost-server", "--trusted-proxy", "10.0.0.0/40"])
                .expect_err("a bad prefix");
        assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
        let err = super::Config::try_parse_from(["outpost-server", "--rate-limit", "many"])
            .expect_err("not a number");
        assert!(err.to_string().contains("--rate-limit"), "{err}");
    }
}

/// A database URL fit for logs and errors: its password, if any, replaced by `***`.
pub fn masked_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or_default();
    let masked = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        user.to_owned()
    };
    format!("{}{masked}{}", &url[..start], &url[start + at..])
}

#[cfg(test)]
mod masking {
    use super::masked_url;

    #[test]
    fn a_database_urls_password_is_masked() {
        assert_eq!(
            masked_url("postgres://u:p%40ss@db:5432/outpost?sslmode=require"),
            "postgres://u:***@db:5432/outpost?sslmode=require"
        );
        assert_eq!(masked_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(masked_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(masked_url("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
        assert_eq!(masked_url("postgres://u:a@b@db/x"), "postgres://u:***@db/x");
    }
}
