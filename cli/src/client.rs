//! The REST client: one base URL, its credentials, and error mapping.
//!
//! Credentials are an API key (a fixed bearer token) or a user's session from `outpost login
//! --email`. A session's access token lives 15 minutes: the client gets a new pair from
//! `/api/auth/refresh` before a request when the saved one has expired (or is about to), and
//! once more when the server answers 401 anyway (a clock off, a restarted server with another
//! master key: then the refresh fails too and the error says to sign in again). Every new pair
//! is written back to the config file at once: the refresh token presented is retired by the
//! server, so the file must hold its successor.
//!
//! Every non-2xx answer becomes [`CliError::Api`] with the server's `{"error":{code,message}}`
//! (or the HTTP status when the body is not ours, e.g. a proxy's page); every transport failure
//! becomes [`CliError::Unreachable`] naming the URL, so the user sees where the CLI tried to go.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::args::Global;
use crate::config::{self, Credentials, FileConfig};
use crate::error::CliError;

/// A session's access token is refreshed this long before it expires.
const REFRESH_AHEAD_S: i64 = 30;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for one server with its credentials.
pub struct Client {
    base: String,
    auth: Mutex<Credentials>,
    http: reqwest::Client,
}

impl Client {
    /// From flags, environment and config file; fails without credentials.
    pub fn from_config(global: &Global) -> Result<Self, CliError> {
        let (url, credentials) = config::resolve(global)?;
        let credentials = credentials.ok_or(CliError::NoToken)?;
        let mut client = Self::new(&url, "")?;
        client.auth = Mutex::new(credentials);
        Ok(client)
    }

    /// A client for `url` with `token`.
    pub fn new(url: &str, token: &str) -> Result<Self, CliError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            CliError::Usage(format!(
                "the server URL {url:?} is not a URL ({e}); expected e.g. http://127.0.0.1:8080"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!(
                "the server URL {url:?} must start with http:// or https://"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("outpost-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = std::env::var_os("OUTPOST_CA_CERT").filter(|p| !p.is_empty()) {
            let pem = std::fs::read(&path).map_err(|e| {
                CliError::Other(format!(
                    "OUTPOST_CA_CERT: cannot read {}: {e}",
                    path.to_string_lossy()
                ))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                CliError::Other(format!(
                    "OUTPOST_CA_CERT: {} is not a PEM certificate: {e}",
                    path.to_string_lossy()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Other(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            auth: Mutex::new(Credentials::Token(token.to_owned())),
            http,
        })
    }

    fn credentials(&self) -> Credentials {
        match self.auth.lock() {
            Ok(auth) => auth.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The bearer token to send now: a session's access token, refreshed first when it has
    /// expired (or `force`).
    async fn bearer(&self, force: bool) -> Result<String, CliError> {
        match self.credentials() {
            Credentials::Token(token) => Ok(token),
            Credentials::Session(session) => {
                let fresh = session
                    .access_expires_at
                    .is_some_and(|at| at - REFRESH_AHEAD_S > chrono::Utc::now().timestamp());
                match (&session.access_token, fresh && !force) {
                    (Some(token), true) => Ok(token.clone()),
                    _ => self.refresh(session).await,
                }
            }
        }
    }

    /// Exchanges the session's refresh token for a new pair, saves it, and returns the new
    /// access token.
    async fn refresh(&self, session: FileConfig) -> Result<String, CliError> {
        let email = session.email.clone().unwrap_or_default();
        let again = || {
            format!(
                "sign in again: outpost login --url {} --email {email}",
                self.base
            )
        };
        let refresh = session.refresh_token.clone().ok_or(CliError::NoToken)?;
        let answer = self
            .anonymous("/api/auth/refresh", &json!({"refresh_token": refresh}))
            .await
            .map_err(|err| match err {
                err @ CliError::Api { status: 401, .. } => err.with_hint(again()),
                err => err,
            })?;
        let next = config::session_file(&self.base, &email, &answer)?;
        config::save_session(&next).map_err(|err| {
            // The old refresh token is retired now: without the new one saved, the next
            // command cannot refresh.
            err.with_hint(again())
        })?;
        let token = next.access_token.clone().unwrap_or_default();
        if let Ok(mut auth) = self.auth.lock() {
            *auth = Credentials::Session(next);
        }
        Ok(token)
    }

    /// A POST without credentials (sign-in, refresh, logout, accepting an invite) whose answer
    /// is JSON (or `null` when empty).
    pub async fn anonymous(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        if !response.status().is_success() {
            return Err(self.api_error(response).await);
        }
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Other(format!(
                "{}{path} answered something that is not JSON: {e}",
                self.base
            ))
        })
    }

    fn is_session(&self) -> bool {
        matches!(self.credentials(), Credentials::Session(_))
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; answers only 2xx, everything else is an error. `timeout` of `None`
    /// means no overall limit (event streams).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Response, CliError> {
        let mut url = url::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| CliError::Other(format!("bad request URL {path}: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let mut force = false;
        loop {
            let token = self.bearer(force).await?;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&token)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| self.transport(&e))?;
            if response.status().is_success() {
                return Ok(response);
            }
            // A session's token refused: refresh once and try again.
            if response.status() == StatusCode::UNAUTHORIZED && self.is_session() && !force {
                force = true;
                continue;
            }
            return Err(self.api_error(response).await);
        }
    }

    /// A request whose answer is JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        self.json_within(method, path, query, body, REQUEST_TIMEOUT)
            .await
    }

    /// A request whose answer is JSON, with its own time limit.
    pub async fn json_within(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, CliError> {
        let response = self.send(method, path, query, body, Some(timeout)).await?;
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Other(format!(
                "{}{path} answered something that is not JSON: {e}",
                self.base
            ))
        })
    }

    /// POSTs a `multipart/form-data` body of `(part, file name, bytes)` parts; answers the
    /// status and the JSON answer. Each try builds the form anew (a session's token may be
    /// refreshed once).
    pub async fn post_files(
        &self,
        path: &str,
        parts: &[(&str, &str, &[u8])],
        timeout: Duration,
    ) -> Result<(u16, Value), CliError> {
        let mut force = false;
        loop {
            let token = self.bearer(force).await?;
            let mut form = reqwest::multipart::Form::new();
            for (name, file, bytes) in parts {
                let part = reqwest::multipart::Part::bytes(bytes.to_vec())
                    .file_name((*file).to_owned())
                    .mime_str("application/octet-stream")
                    .map_err(|e| CliError::Other(format!("{name}: {e}")))?;
                form = form.part((*name).to_owned(), part);
            }
            let response = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&token)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(timeout)
                .multipart(form)
                .send()
                .await
                .map_err(|e| self.transport(&e))?;
            let status = response.status();
            if status.is_success() {
                let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
                let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                return Ok((status.as_u16(), value));
            }
            if status == StatusCode::UNAUTHORIZED && self.is_session() && !force {
                force = true;
                continue;
            }
            return Err(self.api_error(response).await);
        }
    }

    /// GET returning JSON.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        self.json(Method::GET, path, query, None).await
    }

    /// Opens an event stream (no overall time limit), resuming after `last_event_id`.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<Response, CliError> {
        let mut force = false;
        loop {
            let token = self.bearer(force).await?;
            let mut request = self
                .http
                .get(format!("{}{path}", self.base))
                .bearer_auth(&token)
                .header(reqwest::header::ACCEPT, "text/event-stream");
            if let Some(id) = last_event_id {
                request = request.header("Last-Event-ID", id);
            }
            let response = request.send().await.map_err(|e| self.transport(&e))?;
            if response.status().is_success() {
                return Ok(response);
            }
            if response.status() == StatusCode::UNAUTHORIZED && self.is_session() && !force {
                force = true;
                continue;
            }
            return Err(self.api_error(response).await);
        }
    }

    /// A transport failure, naming the server and the root cause.
    pub fn transport(&self, err: &reqwest::Error) -> CliError {
        let mut cause = String::new();
        // reqwest's own top line repeats the URL, which the message already names.
        let mut source: Option<&dyn std::error::Error> = match std::error::Error::source(err) {
            Some(inner) if err.is_connect() || err.is_request() => Some(inner),
            _ => Some(err),
        };
        while let Some(e) = source {
            let text = e.to_string();
            if !cause.contains(&text) {
                if !cause.is_empty() {
                    cause.push_str(": ");
                }
                cause.push_str(&text);
            }
            source = e.source();
        }
        if err.is_timeout() && !cause.contains("timed out") {
            cause.push_str(" (timed out)");
        }
        // rustls's words for a TLS client that got plain HTTP back ("received corrupt message
        // of type InvalidContentType") name the symptom, not the cause or the cure.
        if let Some(plain) = self.base.strip_prefix("https://")
            && cause.contains("InvalidContentType")
        {
            cause = format!(
                "it answered in plain HTTP, not HTTPS: use --url http://{plain} (or set OUTPOST_URL), \
                 or serve HTTPS with the server's --tls-cert and --tls-key"
            );
        }
        CliError::Unreachable {
            url: self.base.clone(),
            cause,
        }
    }

    async fn api_error(&self, response: Response) -> CliError {
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let parsed: Option<(String, String)> =
            serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
                let e = v.get("error")?;
                Some((
                    e.get("code")?.as_str()?.to_owned(),
                    e.get("message")?.as_str()?.to_owned(),
                ))
            });
        let (code, message) = parsed.unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.trim().chars().take(200).collect();
            (
                format!("http_{}", status.as_u16()),
                if text.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_owned()
                } else {
                    text
                },
            )
        });
        CliError::Api {
            status: status.as_u16(),
            code,
            message,
            url: self.base.clone(),
        }
    }
}
