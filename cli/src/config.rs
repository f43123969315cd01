//! Where the server URL and credentials come from, and `outpost login` / `logout`.
//!
//! Precedence: flags, then `OUTPOST_URL` / `OUTPOST_TOKEN` (clap merges those two), then the
//! config file, then the default URL. The file holds either an API key (`token`) or a user's
//! session (`email`, `refresh_token`, and the current `access_token` with its expiry, which
//! the client replaces by itself: `crate::client`). It holds secrets, so it is written with
//! mode 0600 in a directory of mode 0700, through a temporary file and a rename so that a
//! crash never leaves half a file.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::args::{Global, LoginArgs};
use crate::client::Client;
use crate::error::CliError;

/// The URL used when nothing else says: the server's default `--listen`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The config file's contents.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The server.
    pub url: Option<String>,
    /// An API key.
    pub token: Option<String>,
    /// The signed-in user's email (a session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The session's refresh token (`opr_…`): rotated on every use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The current access token (a JWT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// When it expires, in seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<i64>,
}

/// What a request authenticates with.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A fixed bearer token: an API key (or an access token given by hand).
    Token(String),
    /// A user's session from `outpost login --email`, kept fresh by the client.
    Session(FileConfig),
}

/// `$XDG_CONFIG_HOME/outpost/config.toml`, else `$HOME/.config/outpost/config.toml`.
pub fn path() -> Result<PathBuf, CliError> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or_else(|| {
            CliError::Other("neither XDG_CONFIG_HOME nor HOME is set: no config directory".into())
        })?;
    Ok(base.join("outpost").join("config.toml"))
}

fn read_file() -> Result<FileConfig, CliError> {
    let path = path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(CliError::Other(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The URL and credentials to use.
pub fn resolve(global: &Global) -> Result<(String, Option<Credentials>), CliError> {
    let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let (mut url, token) = (nonempty(&global.url), nonempty(&global.token));
    let mut credentials = token.map(|t| Credentials::Token(t.trim().to_owned()));
    if url.is_none() || credentials.is_none() {
        let file = read_file()?;
        url = url.or(file.url.clone());
        if credentials.is_none() {
            credentials = if file.refresh_token.is_some() {
                Some(Credentials::Session(file))
            } else {
                file.token.map(|t| Credentials::Token(t.trim().to_owned()))
            };
        }
    }
    Ok((url.unwrap_or_else(|| DEFAULT_URL.to_owned()), credentials))
}

/// Saves a session's new tokens (the client calls this after every refresh).
pub fn save_session(session: &FileConfig) -> Result<(), CliError> {
    write_file(&path()?, session)
}

/// `outpost login`.
pub async fn login(global: &Global, args: LoginArgs) -> Result<(), CliError> {
    if let Some(email) = args.email {
        return login_user(global, &email, args.password_stdin, args.totp_code).await;
    }
    if args.sso {
        let url = login_url(global);
        let session = crate::sso::login(&url).await?;
        let email = session
            .pointer("/user/email")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let file = session_file(&url, &email, &session)?;
        let path = path()?;
        write_file(&path, &file)?;
        eprintln!(
            "Signed in to {url} as {email} through single sign-on; session saved to {}",
            path.display()
        );
        return Ok(());
    }
    // The URL: given now, else the file's (a broken file is about to be replaced, so it does
    // not stop a login), else the default.
    let url = match global.url.clone().filter(|u| !u.trim().is_empty()) {
        Some(url) => url,
        None => read_file()
            .ok()
            .and_then(|f| f.url)
            .unwrap_or_else(|| DEFAULT_URL.to_owned()),
    };
    // A token already in the file is not what the user is logging in with: unless one is
    // given now (flag or OUTPOST_TOKEN), ask for it.
    let token = match global.token.clone().filter(|t| !t.trim().is_empty()) {
        Some(token) => token.trim().to_owned(),
        None => read_token()?,
    };
    let client = Client::new(&url, &token)?;
    // Any authenticated read proves the token; listing agents is one every owner key may do.
    client.get("/api/agents", &[]).await?;
    let path = path()?;
    write_file(
        &path,
        &FileConfig {
            url: Some(url.clone()),
            token: Some(token),
            ..FileConfig::default()
        },
    )?;
    eprintln!("Logged in to {url}; saved to {}", path.display());
    Ok(())
}

/// The URL `login` uses: given now, else the file's (a broken file is about to be replaced,
/// so it does not stop a login), else the default.
fn login_url(global: &Global) -> String {
    match global.url.clone().filter(|u| !u.trim().is_empty()) {
        Some(url) => url,
        None => read_file()
            .ok()
            .and_then(|f| f.url)
            .unwrap_or_else(|| DEFAULT_URL.to_owned()),
    }
}

/// `outpost login --email`: signs in and saves the session.
async fn login_user(
    global: &Global,
    email: &str,
    from_stdin: bool,
    totp_code: Option<String>,
) -> Result<(), CliError> {
    let url = login_url(global);
    let password = read_secret("Password", from_stdin)?;
    let client = Client::new(&url, "")?;
    let answer = client
        .anonymous(
            "/api/auth/login",
            &serde_json::json!({"email": email, "password": password}),
        )
        .await?;
    let session = crate::totp::second_step(&client, answer, totp_code, from_stdin).await?;
    let file = session_file(&url, email, &session)?;
    let path = path()?;
    write_file(&path, &file)?;
    let role = session
        .pointer("/user/role")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?");
    eprintln!(
        "Signed in to {url} as {email} ({role}); session saved to {}",
        path.display()
    );
    Ok(())
}

/// The config of a session from the answer of login or refresh.
pub fn session_file(
    url: &str,
    email: &str,
    session: &serde_json::Value,
) -> Result<FileConfig, CliError> {
    let text = |key: &str| {
        session
            .get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| CliError::Other(format!("{url} answered a session without {key}")))
    };
    let expires_in = session
        .get("expires_in")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    Ok(FileConfig {
        url: Some(url.to_owned()),
        token: None,
        email: Some(email.to_owned()),
        refresh_token: Some(text("refresh_token")?),
        access_token: Some(text("access_token")?),
        access_expires_at: Some(chrono::Utc::now().timestamp() + expires_in),
    })
}

/// A password: prompted for without echo on a terminal (unless `from_stdin`), else stdin's
/// first line.
pub fn read_secret(what: &str, from_stdin: bool) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() && !from_stdin {
        eprint!("{what}: ");
        let _ = std::io::stderr().flush();
        let echo = EchoOff::new(&stdin);
        let read = stdin.lock().read_line(&mut line);
        drop(echo);
        eprintln!();
        read.map_err(|e| CliError::Other(format!("cannot read the {what}: {e}")))?;
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Other(format!("cannot read the {what} from stdin: {e}")))?;
    }
    let secret = line.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(CliError::Usage(format!(
            "no {what} given: type it when asked, or pipe it with --password-stdin"
        )));
    }
    Ok(secret)
}

/// The token from stdin: prompted for without echo on a terminal, else its first line.
fn read_token() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("API token (opk_…): ");
        let _ = std::io::stderr().flush();
        let echo = EchoOff::new(&stdin);
        let read = stdin.lock().read_line(&mut line);
        drop(echo);
        eprintln!();
        read.map_err(|e| CliError::Other(format!("cannot read the token: {e}")))?;
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Other(format!("cannot read the token from stdin: {e}")))?;
    }
    let token = line.trim().to_owned();
    if token.is_empty() {
        return Err(CliError::Usage(
            "no token given: pass --token, set OUTPOST_TOKEN, or type it when asked".into(),
        ));
    }
    Ok(token)
}

/// Terminal echo off while it lives (best effort: a terminal that refuses keeps echoing).
struct EchoOff<'a> {
    stdin: &'a std::io::Stdin,
    saved: Option<nix::sys::termios::Termios>,
}

impl<'a> EchoOff<'a> {
    fn new(stdin: &'a std::io::Stdin) -> Self {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            let _ = tcsetattr(stdin, SetArg::TCSANOW, &quiet);
        }
        Self { stdin, saved }
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ =
                nix::sys::termios::tcsetattr(self.stdin, nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

fn write_file(path: &std::path::Path, config: &FileConfig) -> Result<(), CliError> {
    let io = |what: &str, e: std::io::Error| CliError::Other(format!("cannot {what}: {e}"));
    let dir = path
        .parent()
        .ok_or_else(|| CliError::Other(format!("{} has no directory", path.display())))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(&format!("create {}", dir.display()), e))?;
    // The directory is ours: make sure it is private even if it existed with wider rights.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(&format!("set the mode of {}", dir.display()), e))?;
    let text = toml::to_string(config)
        .map_err(|e| CliError::Other(format!("cannot encode the config: {e}")))?;
    let tmp = dir.join(".config.toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&format!("create {}", tmp.display()), e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(&format!("write {}", path.display()), e))?;
    Ok(())
}

/// `outpost logout`: a saved session is revoked on the server first (best effort: the file is
/// removed whatever the server says).
pub async fn logout() -> Result<(), CliError> {
    let path = path()?;
    if let Ok(file) = read_file()
        && let (Some(url), Some(refresh)) = (&file.url, &file.refresh_token)
    {
        let body = serde_json::json!({"refresh_token": refresh});
        match Client::new(url, "") {
            Ok(client) => {
                if let Err(err) = client.anonymous("/api/auth/logout", &body).await {
                    eprintln!("warning: the server did not end the session: {err}");
                }
            }
            Err(err) => eprintln!("warning: {err}"),
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {
            eprintln!("Logged out; removed {}", path.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("Not logged in ({} does not exist)", path.display());
            Ok(())
        }
        Err(e) => Err(CliError::Other(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
    }
}
