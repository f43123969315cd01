//! A real OpenID Connect provider for the single sign-on tests: PyPI `oidc-provider-mock`
//! (authlib underneath: discovery, JWKS, the authorization code flow with a form to pick the
//! user, RS256 ID tokens), started on a free loopback port. Without it a test skips, saying
//! how to enable it (`pip install oidc-provider-mock`), unless `OUTPOST_TEST_OIDC=1` asks for it
//! (CI), when it fails instead. `OUTPOST_TEST_PYTHON` names the interpreter that has it.
//!
//! [`Browserless`] drives the redirect flow over plain HTTP as a browser would: it follows the
//! server's redirect to the provider, submits the provider's form for a subject, and carries
//! the server's state cookie back to the callback.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

/// A running provider; stopped when dropped.
pub struct Provider {
    child: Child,
    /// `http://127.0.0.1:PORT`: its issuer.
    pub issuer: String,
}

impl Provider {
    /// Starts one, or returns `None` (after printing why `test` is skipped).
    pub async fn start(test: &str) -> Option<Self> {
        crate::init();
        let python = std::env::var("OUTPOST_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let found = Command::new(&python)
            .args(["-c", "import oidc_provider_mock"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var("OUTPOST_TEST_OIDC").as_deref() == Ok("1") {
                panic!(
                    "OUTPOST_TEST_OIDC=1 but {python} cannot import oidc_provider_mock (pip install oidc-provider-mock)"
                );
            }
            eprintln!(
                "SKIPPED {test}: needs an OpenID Connect provider: pip install oidc-provider-mock (CI sets OUTPOST_TEST_OIDC=1)"
            );
            return None;
        }
        let port = free_port();
        let child = Command::new(&python)
            .args(["-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--require-nonce", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python -m oidc_provider_mock");
        let provider = Self {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let discovery = format!("{}/.well-known/openid-configuration", provider.issuer);
        crate::wait_for("the OpenID provider", Duration::from_secs(30), || {
            let http = http.clone();
            let discovery = discovery.clone();
            async move {
                let response = http.get(&discovery).send().await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
        Some(provider)
    }

    /// Declares the claims the provider gives `subject` (`email`, `email_verified`, …).
    pub async fn set_user(&self, subject: &str, claims: Value) {
        let status = reqwest::Client::new()
            .put(format!("{}/users/{}", self.issuer, url_encode(subject)))
            .json(&claims)
            .send()
            .await
            .expect("PUT /users")
            .status();
        assert!(
            status.is_success(),
            "the provider refused the user: {status}"
        );
    }

    /// The server flags for this provider, with the server's public URL.
    pub fn server_args(&self, public_url: &str) -> Vec<String> {
        [
            "--public-url",
            public_url,
            "--oidc-issuer",
            &self.issuer,
            "--oidc-client-id",
            "outpost-test",
            "--oidc-client-secret",
            "test-secret",
            "--oidc-name",
            "Mock IdP",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (for a server whose `--public-url` must be known before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One answer on the way: status, `Location`, `Set-Cookie` values, body.
#[derive(Debug)]
pub struct Hop {
    /// The status.
    pub status: StatusCode,
    /// Where it redirects.
    pub location: Option<String>,
    /// Its cookies (`name=value`, attributes dropped) and the raw headers.
    pub cookies: Vec<String>,
    /// The raw `Set-Cookie` headers.
    pub set_cookie: Vec<String>,
    /// The body.
    pub body: String,
}

impl Hop {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The value of cookie `name` set by this answer.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.iter().find_map(|c| {
            c.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        })
    }
}

/// A browser without a browser: HTTP, no automatic redirects.
#[derive(Clone)]
pub struct Browserless {
    http: reqwest::Client,
}

impl Default for Browserless {
    fn default() -> Self {
        Self::new()
    }
}

impl Browserless {
    /// A new one.
    pub fn new() -> Self {
        crate::init();
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
        }
    }

    async fn hop(&self, request: reqwest::RequestBuilder) -> Hop {
        let response = request.send().await.expect("request");
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let set_cookie: Vec<String> = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let cookies = set_cookie
            .iter()
            .filter_map(|c| c.split(';').next().map(|s| s.trim().to_owned()))
            .collect();
        let body = response.text().await.unwrap_or_default();
        Hop {
            status,
            location,
            cookies,
            set_cookie,
            body,
        }
    }

    /// `GET url` with `cookie` (a `Cookie` header value, or none) and maybe a bearer token.
    pub async fn get(&self, url: &str, cookie: Option<&str>, bearer: Option<&str>) -> Hop {
        let mut request = self.http.get(url);
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        self.hop(request).await
    }

    /// Submits the provider's form at `authorize_url` for `subject`: its redirect back.
    pub async fn authorize(&self, authorize_url: &str, subject: &str) -> Hop {
        let form = self.get(authorize_url, None, None).await;
        assert_eq!(form.status, StatusCode::OK, "the provider's form: {form:?}");
        assert!(form.body.contains("name=\"sub\""), "{}", form.body);
        self.hop(
            self.http
                .post(authorize_url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(format!("sub={}", url_encode(subject))),
        )
        .await
    }

    /// A browser's sign-in finished: the callback's answer `done` sent it to the dashboard's
    /// `/ui/sso/finish` with a one-time code in a cookie; that page's answer (a redirect to the
    /// dashboard with the session cookie).
    pub async fn finish(&self, server_url: &str, done: &Hop) -> Hop {
        assert_eq!(done.location.as_deref(), Some("/ui/sso/finish"), "{done:?}");
        let code = done.cookie("outpost_sso").expect("the handoff cookie");
        assert!(
            done.set_cookie.iter().any(|c| c.starts_with("outpost_sso=")
                && c.contains("SameSite=Lax")
                && c.contains("HttpOnly")),
            "{:?}",
            done.set_cookie
        );
        self.get(
            &format!("{server_url}/ui/sso/finish"),
            Some(&format!("outpost_sso={code}")),
            None,
        )
        .await
    }

    /// The whole sign-in from `start_url` (a server's `/api/auth/oidc/start…`) as `subject`:
    /// the callback's answer.
    pub async fn sign_in(&self, start_url: &str, subject: &str, bearer: Option<&str>) -> Hop {
        let start = self.get(start_url, None, bearer).await;
        assert_eq!(start.status, StatusCode::FOUND, "start: {start:?}");
        let state = start.cookie("outpost_oidc").expect("the state cookie");
        assert!(
            start
                .set_cookie
                .iter()
                .any(|c| c.contains("SameSite=Lax") && c.contains("HttpOnly")),
            "{:?}",
            start.set_cookie
        );
        let back = self
            .authorize(start.location.as_deref().expect("to the provider"), subject)
            .await;
        assert_eq!(back.status, StatusCode::FOUND, "the provider: {back:?}");
        let callback = back.location.expect("back to the server");
        self.get(&callback, Some(&format!("outpost_oidc={state}")), None)
            .await
    }
}
