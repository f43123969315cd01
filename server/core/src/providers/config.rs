//! Integration configs: validated once, with errors that name the field, and masked in answers.
//!
//! A config is API input, so every field is checked before anything is stored or sent: URLs
//! are http or https without `user:pass@` or a fragment (the SSRF guard, applied where the
//! request is sent, decides which hosts); credentials that go into a header are printable ASCII
//! without spaces, so they can never split one; unknown fields are refused rather than ignored,
//! so that a misspelt `routing_key` is an error and not a silent default.
//!
//! Which fields are secrets (sealed at rest and shown as `…`), by kind:
//! - `webhook`: `secret` (the Standard Webhooks signing key);
//! - `slack`, `discord`, `teams`: `url` — the webhook URL is the credential (anyone with it
//!   can post to the channel);
//! - `pagerduty`: `routing_key`;
//! - `datadog`: `api_key`;
//! - `splunk`: `token`;
//! - `email`: none.
//!
//! A generic webhook's `secret` may be left out: [`Config::webhook_secret`] is then `None`,
//! and the caller generates one with [`super::new_webhook_secret`] and stores it with the
//! integration (a pure function cannot). Datadog takes `site` (one of Datadog's sites; the
//! UI's `app.` host is accepted too) or `url` (a base URL, for proxies and tests), and defaults
//! to `datadoghq.com`, Datadog's US1 site, when given neither.

use std::fmt;

use base64::Engine;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use super::Kind;
use super::text::clip;

/// What a secret looks like in answers and logs.
pub const MASK: &str = "…";

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Datadog's sites (the part after `app.` in the UI's address), from the site table of
/// <https://docs.datadoghq.com/api/latest/metrics/submit-metrics/>. The API is on `api.<site>`.
pub const DATADOG_SITES: [&str; 9] = [
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
];

/// The HEC path appended to a Splunk URL given without one.
pub const SPLUNK_PATH: &str = "/services/collector/event";

/// Longest URL accepted.
const MAX_URL: usize = 2048;
/// Longest credential (routing key, API key, token) accepted.
const MAX_CREDENTIAL: usize = 512;
/// Most email recipients.
pub const MAX_RECIPIENTS: usize = 20;

/// Standard base64, padded or not (secrets are pasted from elsewhere).
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A validated integration config.
#[derive(Clone)]
pub struct Config {
    target: Target,
}

/// What each kind needs to send; URLs normalised by the URL parser.
#[derive(Clone)]
pub(super) enum Target {
    Webhook {
        url: String,
        secret: Option<String>,
    },
    Slack {
        url: String,
    },
    Discord {
        url: String,
    },
    Teams {
        url: String,
    },
    Pagerduty {
        url: String,
        routing_key: String,
    },
    /// `base` without a trailing slash: `https://api.datadoghq.com`.
    Datadog {
        base: String,
        api_key: String,
    },
    Splunk {
        url: String,
        token: String,
    },
    Email {
        to: Vec<String>,
    },
}

impl Config {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match &self.target {
            Target::Webhook { .. } => Kind::Webhook,
            Target::Slack { .. } => Kind::Slack,
            Target::Discord { .. } => Kind::Discord,
            Target::Teams { .. } => Kind::Teams,
            Target::Pagerduty { .. } => Kind::Pagerduty,
            Target::Datadog { .. } => Kind::Datadog,
            Target::Splunk { .. } => Kind::Splunk,
            Target::Email { .. } => Kind::Email,
        }
    }

    /// Every URL the integration may call (the caller applies the SSRF guard to each). A chat
    /// webhook's URL is its credential: do not log these.
    pub fn urls(&self) -> Vec<String> {
        match &self.target {
            Target::Webhook { url, .. }
            | Target::Slack { url }
            | Target::Discord { url }
            | Target::Teams { url }
            | Target::Pagerduty { url, .. }
            | Target::Splunk { url, .. } => vec![url.clone()],
            Target::Datadog { base, .. } => vec![
                super::datadog::series_url(base),
                super::datadog::events_url(base),
            ],
            Target::Email { .. } => Vec::new(),
        }
    }

    /// A generic webhook's signing secret (`whsec_…`), when it has one.
    pub fn webhook_secret(&self) -> Option<&str> {
        match &self.target {
            Target::Webhook { secret, .. } => secret.as_deref(),
            _ => None,
        }
    }

    /// An email integration's recipients (empty for other kinds).
    pub fn recipients(&self) -> &[String] {
        match &self.target {
            Target::Email { to } => to,
            _ => &[],
        }
    }

    pub(super) fn target(&self) -> &Target {
        &self.target
    }
}

/// Secrets masked, URLs only by their origin (a chat webhook's path is its credential).
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origins: Vec<String> = self
            .urls()
            .iter()
            .map(|url| {
                reqwest::Url::parse(url)
                    .map(|url| format!("{}/…", url.origin().ascii_serialization()))
                    .unwrap_or_else(|_| MASK.to_owned())
            })
            .collect();
        f.debug_struct("Config")
            .field("kind", &self.kind())
            .field("urls", &origins)
            .field("recipients", &self.recipients())
            .finish_non_exhaustive()
    }
}

/// The fields each kind takes, required ones first.
fn fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Webhook => &["url", "secret"],
        Kind::Slack | Kind::Discord | Kind::Teams => &["url"],
        Kind::Pagerduty => &["routing_key", "url"],
        Kind::Datadog => &["api_key", "site", "url"],
        Kind::Splunk => &["url", "token"],
        Kind::Email => &["to"],
    }
}

/// The config fields that are secrets: sealed at rest, shown as `…` (see the module doc).
pub fn secret_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Webhook => &["secret"],
        Kind::Slack | Kind::Discord | Kind::Teams => &["url"],
        Kind::Pagerduty => &["routing_key"],
        Kind::Datadog => &["api_key"],
        Kind::Splunk => &["token"],
        Kind::Email => &[],
    }
}

/// The config with every secret field replaced by `…` (for answers and logs). A config that is
/// not an object (never a valid one) is masked whole.
pub fn masked(kind: Kind, config: &Value) -> Value {
    match config {
        Value::Object(map) => {
            let mut out = map.clone();
            for field in secret_fields(kind) {
                if let Some(value) = out.get_mut(*field)
                    && !value.is_null()
                {
                    *value = Value::String(MASK.to_owned());
                }
            }
            Value::Object(out)
        }
        Value::Null => Value::Null,
        _ => Value::String(MASK.to_owned()),
    }
}

/// A validated config for `kind`; the error names the field (`config.url: …`).
pub fn parse_config(kind: Kind, config: &Value) -> Result<Config, String> {
    let Value::Object(object) = config else {
        return Err(format!(
            "config: must be an object with {}",
            fields(kind).join(", ")
        ));
    };
    for key in object.keys() {
        if !fields(kind).contains(&key.as_str()) {
            return Err(format!(
                "config.{}: unknown field; a {kind} integration takes {}",
                clip(key, 64),
                fields(kind).join(", ")
            ));
        }
    }
    let target = match kind {
        Kind::Webhook => Target::Webhook {
            url: url(required(object, "url")?, "url")?,
            secret: match string(object, "secret")? {
                Some(secret) => {
                    webhook_key(secret).map_err(|why| format!("config.secret: {why}"))?;
                    Some(secret.to_owned())
                }
                None => None,
            },
        },
        Kind::Slack => Target::Slack {
            url: url(required(object, "url")?, "url")?,
        },
        Kind::Discord => Target::Discord {
            url: url(required(object, "url")?, "url")?,
        },
        Kind::Teams => Target::Teams {
            url: url(required(object, "url")?, "url")?,
        },
        Kind::Pagerduty => Target::Pagerduty {
            routing_key: credential(object, "routing_key")?,
            url: match string(object, "url")? {
                Some(given) => url(given, "url")?,
                None => PAGERDUTY_URL.to_owned(),
            },
        },
        Kind::Datadog => Target::Datadog {
            api_key: credential(object, "api_key")?,
            base: datadog_base(object)?,
        },
        Kind::Splunk => Target::Splunk {
            url: splunk_url(required(object, "url")?)?,
            token: credential(object, "token")?,
        },
        Kind::Email => Target::Email {
            to: recipients(object.get("to"))?,
        },
    };
    Ok(Config { target })
}

/// The field's text, `None` when absent, `null` or empty.
fn string<'a>(object: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("config.{field}: must be a string")),
    }
}

fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    string(object, field)?.ok_or_else(|| format!("config.{field}: required"))
}

/// A URL to call: http or https, no user info, no fragment; normalised.
fn url(given: &str, field: &str) -> Result<String, String> {
    parse_url(given, field).map(|url| url.to_string())
}

fn parse_url(given: &str, field: &str) -> Result<reqwest::Url, String> {
    if given.chars().count() > MAX_URL {
        return Err(format!("config.{field}: longer than {MAX_URL} characters"));
    }
    let url = reqwest::Url::parse(given).map_err(|e| format!("config.{field}: not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "config.{field}: must be an http or https URL, not `{}:`",
            clip(url.scheme(), 32)
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "config.{field}: must not carry a user name or password (`user:pass@`)"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("config.{field}: must not have a fragment (`#…`)"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("config.{field}: has no host"));
    }
    Ok(url)
}

/// A credential that goes into a header or a JSON field: printable ASCII, no spaces.
fn credential(object: &Map<String, Value>, field: &str) -> Result<String, String> {
    let value = required(object, field)?;
    if value.len() > MAX_CREDENTIAL {
        return Err(format!(
            "config.{field}: longer than {MAX_CREDENTIAL} characters"
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "config.{field}: must be printable ASCII without spaces"
        ));
    }
    Ok(value.to_owned())
}

/// The HMAC key of a Standard Webhooks secret: `whsec_` then base64 of 24 to 64 bytes (the
/// specification's range).
pub(super) fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    const HELP: &str = "must be `whsec_` followed by the base64 of 24 to 64 random bytes \
                        (leave it out and one is generated)";
    let encoded = secret.strip_prefix("whsec_").ok_or(HELP)?;
    let key = BASE64_LENIENT
        .decode(encoded)
        .map_err(|_| HELP.to_owned())?;
    if !(24..=64).contains(&key.len()) {
        return Err(HELP.to_owned());
    }
    Ok(key)
}

/// The Datadog API's base URL, from `site` or `url`.
fn datadog_base(object: &Map<String, Value>) -> Result<String, String> {
    match (string(object, "site")?, string(object, "url")?) {
        (Some(_), Some(_)) => Err("config.url: give `site` or `url`, not both".to_owned()),
        (None, Some(given)) => {
            let url = parse_url(given, "url")?;
            if url.query().is_some() {
                return Err(
                    "config.url: must be a base URL without a query (`/api/v2/series` is \
                     appended)"
                        .to_owned(),
                );
            }
            Ok(url.as_str().trim_end_matches('/').to_owned())
        }
        (Some(site), None) => {
            let lower = site.to_ascii_lowercase();
            let bare = lower.strip_prefix("app.").unwrap_or(&lower);
            DATADOG_SITES
                .iter()
                .find(|known| **known == bare)
                .map(|known| format!("https://api.{known}"))
                .ok_or_else(|| {
                    format!(
                        "config.site: unknown Datadog site `{}`; one of {}",
                        clip(site, 64),
                        DATADOG_SITES.join(", ")
                    )
                })
        }
        (None, None) => Ok(format!("https://api.{}", DATADOG_SITES[0])),
    }
}

/// A Splunk HEC URL; one given without a path gets [`SPLUNK_PATH`].
fn splunk_url(given: &str) -> Result<String, String> {
    let mut url = parse_url(given, "url")?;
    if matches!(url.path(), "" | "/") {
        url.set_path(SPLUNK_PATH);
    }
    Ok(url.to_string())
}

/// `to`: one address, several separated by commas, or a list of them.
fn recipients(to: Option<&Value>) -> Result<Vec<String>, String> {
    let mut addresses: Vec<(String, String)> = Vec::new();
    match to {
        None | Some(Value::Null) => {}
        Some(Value::String(list)) => {
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                addresses.push(("config.to".to_owned(), part.to_owned()));
            }
        }
        Some(Value::Array(items)) => {
            if items.len() > MAX_RECIPIENTS {
                return Err(format!(
                    "config.to: at most {MAX_RECIPIENTS} addresses, not {}",
                    items.len()
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let Value::String(address) = item else {
                    return Err(format!("config.to[{i}]: must be a string"));
                };
                addresses.push((format!("config.to[{i}]"), address.trim().to_owned()));
            }
        }
        Some(_) => {
            return Err("config.to: must be an address or a list of addresses".to_owned());
        }
    }
    if addresses.is_empty() {
        return Err(format!(
            "config.to: required (1 to {MAX_RECIPIENTS} addresses)"
        ));
    }
    if addresses.len() > MAX_RECIPIENTS {
        return Err(format!(
            "config.to: at most {MAX_RECIPIENTS} addresses, not {}",
            addresses.len()
        ));
    }
    let mut to: Vec<String> = Vec::with_capacity(addresses.len());
    for (field, address) in addresses {
        if !is_address(&address) {
            return Err(format!(
                "{field}: `{}` is not an email address",
                clip(&address, 254)
            ));
        }
        if !to.iter().any(|seen| seen.eq_ignore_ascii_case(&address)) {
            to.push(address);
        }
    }
    Ok(to)
}

/// A plain `local@domain` address (RFC 5321's dot-atom local part, an ASCII host name): no
/// display names, quoted parts or domain literals, and nothing that could break a header.
fn is_address(address: &str) -> bool {
    const LOCAL_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~.";
    if address.len() > 254 {
        return false;
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c));
    let domain_ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn err(kind: Kind, config: Value) -> String {
        parse_config(kind, &config).expect_err("invalid")
    }

    #[test]
    fn valid_configs_parse_for_every_kind() {
        let cases = [
            (
                Kind::Webhook,
                json!({"url": "https://example.com/hook", "secret": SECRET}),
                vec!["https://example.com/hook"],
            ),
            (
                Kind::Webhook,
                json!({"url": "http://127.0.0.1:9000/in"}),
                vec!["http://127.0.0.1:9000/in"],
            ),
            (
                Kind::Slack,
                json!({"url": "https://hooks.slack.com/services/T0/B0/x"}),
                vec!["https://hooks.slack.com/services/T0/B0/x"],
            ),
            (
                Kind::Discord,
                json!({"url": "https://discord.com/api/webhooks/1/abc"}),
                vec!["https://discord.com/api/webhooks/1/abc"],
            ),
            (
                Kind::Teams,
                json!({"url": "https://prod-1.westus.logic.azure.com:443/workflows/x/triggers/manual/paths/invoke?api-version=2016-06-01&sig=abc"}),
                vec![
                    "https://prod-1.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke?api-version=2016-06-01&sig=abc",
                ],
            ),
            (
                Kind::Pagerduty,
                json!({"routing_key": "R0UT1NGKEY"}),
                vec![PAGERDUTY_URL],
            ),
            (
                Kind::Pagerduty,
                json!({"routing_key": "R0UT1NGKEY", "url": "http://localhost:8080/v2/enqueue"}),
                vec!["http://localhost:8080/v2/enqueue"],
            ),
            (
                Kind::Datadog,
                json!({"api_key": "abc123", "site": "datadoghq.eu"}),
                vec![
                    "https://api.datadoghq.eu/api/v2/series",
                    "https://api.datadoghq.eu/api/v1/events",
                ],
            ),
            (
                Kind::Datadog,
                json!({"api_key": "abc123", "site": "app.US5.datadoghq.com"}),
                vec![
                    "https://api.us5.datadoghq.com/api/v2/series",
                    "https://api.us5.datadoghq.com/api/v1/events",
                ],
            ),
            (
                Kind::Datadog,
                json!({"api_key": "abc123"}),
                vec![
                    "https://api.datadoghq.com/api/v2/series",
                    "https://api.datadoghq.com/api/v1/events",
                ],
            ),
            (
                Kind::Datadog,
                json!({"api_key": "abc123", "url": "http://127.0.0.1:7000/dd/"}),
                vec![
                    "http://127.0.0.1:7000/dd/api/v2/series",
                    "http://127.0.0.1:7000/dd/api/v1/events",
                ],
            ),
            (
                Kind::Splunk,
                json!({"url": "https://splunk.example.com:8088", "token": "11111111-2222-3333-4444-555555555555"}),
                vec!["https://splunk.example.com:8088/services/collector/event"],
            ),
            (
                Kind::Splunk,
                json!({"url": "https://splunk.example.com:8088/services/collector/event?channel=x", "token": "t"}),
                vec!["https://splunk.example.com:8088/services/collector/event?channel=x"],
            ),
            (Kind::Email, json!({"to": "ops@example.com"}), vec![]),
        ];
        for (kind, config, urls) in cases {
            let parsed =
                parse_config(kind, &config).unwrap_or_else(|e| panic!("{kind} {config}: {e}"));
            assert_eq!(parsed.kind(), kind);
            assert_eq!(parsed.urls(), urls, "{kind} {config}");
        }
    }

    #[test]
    fn every_error_names_its_field() {
        let cases = [
            (Kind::Slack, json!("https://x"), "config: must be an object"),
            (Kind::Slack, json!({}), "config.url: required"),
            (Kind::Slack, json!({"url": ""}), "config.url: required"),
            (
                Kind::Slack,
                json!({"url": 7}),
                "config.url: must be a string",
            ),
            (
                Kind::Slack,
                json!({"url": "hooks.slack.com/x"}),
                "config.url: not a URL",
            ),
            (
                Kind::Slack,
                json!({"url": "ftp://example.com/x"}),
                "config.url: must be an http or https URL, not `ftp:`",
            ),
            (
                Kind::Discord,
                json!({"url": "https://user:pass@example.com/x"}),
                "config.url: must not carry a user name or password",
            ),
            (
                Kind::Teams,
                json!({"url": "https://example.com/x#frag"}),
                "config.url: must not have a fragment",
            ),
            (
                Kind::Teams,
                json!({"url": format!("https://example.com/{}", "a".repeat(3000))}),
                "config.url: longer than 2048 characters",
            ),
            (
                Kind::Slack,
                json!({"url": "https://example.com/x", "channel": "#ops"}),
                "config.channel: unknown field; a slack integration takes url",
            ),
            (
                Kind::Webhook,
                json!({"url": "https://example.com/x", "secret": "hunter2"}),
                "config.secret: must be `whsec_`",
            ),
            (
                Kind::Webhook,
                json!({"url": "https://example.com/x", "secret": "whsec_c2hvcnQ="}),
                "config.secret: must be `whsec_`",
            ),
            (Kind::Pagerduty, json!({}), "config.routing_key: required"),
            (
                Kind::Pagerduty,
                json!({"routing_key": "has space"}),
                "config.routing_key: must be printable ASCII without spaces",
            ),
            (
                Kind::Pagerduty,
                json!({"routing_key": "k\r\nX-Evil: 1"}),
                "config.routing_key: must be printable ASCII without spaces",
            ),
            (
                Kind::Pagerduty,
                json!({"routing_key": "k", "url": "gopher://x"}),
                "config.url: must be an http or https URL",
            ),
            (
                Kind::Datadog,
                json!({"site": "datadoghq.com"}),
                "config.api_key: required",
            ),
            (
                Kind::Datadog,
                json!({"api_key": "k", "site": "datadoghq.org"}),
                "config.site: unknown Datadog site `datadoghq.org`; one of datadoghq.com, \
                 us3.datadoghq.com, us5.datadoghq.com, datadoghq.eu, ap1.datadoghq.com, \
                 ap2.datadoghq.com, uk1.datadoghq.com, ddog-gov.com, us2.ddog-gov.com",
            ),
            (
                Kind::Datadog,
                json!({"api_key": "k", "site": "datadoghq.com", "url": "https://x"}),
                "config.url: give `site` or `url`, not both",
            ),
            (
                Kind::Datadog,
                json!({"api_key": "k", "url": "https://x/?a=b"}),
                "config.url: must be a base URL without a query",
            ),
            (
                Kind::Datadog,
                json!({"api_key": ["k"]}),
                "config.api_key: must be a string",
            ),
            (Kind::Splunk, json!({"token": "t"}), "config.url: required"),
            (
                Kind::Splunk,
                json!({"url": "https://s:8088"}),
                "config.token: required",
            ),
            (
                Kind::Splunk,
                json!({"url": "https://s:8088", "token": "x".repeat(600)}),
                "config.token: longer than 512 characters",
            ),
            (Kind::Email, json!({}), "config.to: required"),
            (Kind::Email, json!({"to": []}), "config.to: required"),
            (Kind::Email, json!({"to": " , "}), "config.to: required"),
            (
                Kind::Email,
                json!({"to": 5}),
                "config.to: must be an address or a list",
            ),
            (
                Kind::Email,
                json!({"to": ["a@x.org", 5]}),
                "config.to[1]: must be a string",
            ),
            (
                Kind::Email,
                json!({"to": ["a@x.org", "not an address"]}),
                "config.to[1]: `not an address` is not an email address",
            ),
            (
                Kind::Email,
                json!({"to": "a@x.org\r\nBcc: evil@x.org"}),
                "config.to: `a@x.org\r\nBcc: evil@x.org` is not an email address",
            ),
            (
                Kind::Email,
                json!({"to": (0..21).map(|i| format!("u{i}@x.org")).collect::<Vec<_>>()}),
                "config.to: at most 20 addresses, not 21",
            ),
            (
                Kind::Email,
                json!({"to": (0..21).map(|i| format!("u{i}@x.org")).collect::<Vec<_>>().join(",")}),
                "config.to: at most 20 addresses, not 21",
            ),
        ];
        for (kind, config, expected) in cases {
            let got = err(kind, config.clone());
            assert!(
                got.starts_with(expected),
                "{kind} {config}: expected `{expected}…`, got `{got}`"
            );
        }
    }

    #[test]
    fn recipients_are_split_trimmed_and_deduplicated() {
        let config = parse_config(
            Kind::Email,
            &json!({"to": "ops@example.com, Dev.Team+alerts@mail.example.org,OPS@example.com"}),
        )
        .expect("valid");
        assert_eq!(
            config.recipients(),
            ["ops@example.com", "Dev.Team+alerts@mail.example.org"]
        );
        let list = parse_config(Kind::Email, &json!({"to": ["a@localhost"]})).expect("valid");
        assert_eq!(list.recipients(), ["a@localhost"]);
        for bad in [
            "a@",
            "@x.org",
            "a@@x.org",
            "a..b@x.org",
            ".a@x.org",
            "a@-x.org",
            "a@x..org",
            "Name <a@x.org>",
            "a b@x.org",
            "é@x.org",
        ] {
            assert!(!is_address(bad), "{bad}");
        }
    }

    #[test]
    fn a_webhook_secret_is_optional_and_kept() {
        let with = parse_config(
            Kind::Webhook,
            &json!({"url": "https://example.com/x", "secret": SECRET}),
        )
        .expect("valid");
        assert_eq!(with.webhook_secret(), Some(SECRET));
        let without =
            parse_config(Kind::Webhook, &json!({"url": "https://example.com/x"})).expect("valid");
        assert_eq!(without.webhook_secret(), None);
        let generated = super::super::new_webhook_secret();
        assert!(
            parse_config(
                Kind::Webhook,
                &json!({"url": "https://example.com/x", "secret": generated}),
            )
            .is_ok()
        );
    }

    #[test]
    fn masked_configs_never_contain_a_secret() {
        let secret = "S3CR3T-VALUE";
        let configs = [
            (
                Kind::Webhook,
                json!({"url": "https://e.com/x", "secret": format!("whsec_{secret}")}),
            ),
            (
                Kind::Slack,
                json!({"url": format!("https://hooks.slack.com/services/{secret}")}),
            ),
            (
                Kind::Discord,
                json!({"url": format!("https://discord.com/api/webhooks/1/{secret}")}),
            ),
            (
                Kind::Teams,
                json!({"url": format!("https://x.logic.azure.com/w?sig={secret}")}),
            ),
            (Kind::Pagerduty, json!({"routing_key": secret})),
            (
                Kind::Datadog,
                json!({"api_key": secret, "site": "datadoghq.com"}),
            ),
            (
                Kind::Splunk,
                json!({"url": "https://s:8088", "token": secret}),
            ),
        ];
        for (kind, config) in configs {
            let shown = masked(kind, &config);
            assert!(!shown.to_string().contains(secret), "{kind}: {shown}");
            for field in secret_fields(kind) {
                assert_eq!(shown[*field], json!(MASK), "{kind}.{field}");
            }
        }
        // Fields that are not secrets are shown as they are.
        let splunk = masked(
            Kind::Splunk,
            &json!({"url": "https://s:8088", "token": "t"}),
        );
        assert_eq!(splunk, json!({"url": "https://s:8088", "token": MASK}));
        let email = json!({"to": ["a@x.org"]});
        assert_eq!(masked(Kind::Email, &email), email);
        // An absent secret stays absent; a config that is not an object is masked whole.
        assert_eq!(
            masked(
                Kind::Webhook,
                &json!({"url": "https://e.com/x", "secret": null})
            ),
            json!({"url": "https://e.com/x", "secret": null})
        );
        assert_eq!(masked(Kind::Pagerduty, &json!(secret)), json!(MASK));
    }

    #[test]
    fn a_config_debugs_without_its_secrets() {
        let config = parse_config(
            Kind::Pagerduty,
            &json!({"routing_key": "R0UT1NG", "url": "https://events.pagerduty.com/v2/enqueue"}),
        )
        .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("R0UT1NG"), "{shown}");
        assert!(shown.contains("https://events.pagerduty.com/…"), "{shown}");
        let slack = parse_config(
            Kind::Slack,
            &json!({"url": "https://hooks.slack.com/services/T/B/TOKEN"}),
        )
        .expect("valid");
        assert!(!format!("{slack:?}").contains("TOKEN"));
    }
}
