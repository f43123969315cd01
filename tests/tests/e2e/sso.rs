//! Single sign-on through a real OpenID Connect provider (CONTRACT.md §18): PyPI
//! `oidc-provider-mock` on loopback (`outpost_e2e::oidc`), driven over HTTP as a browser would
//! (redirects, the provider's form, the state cookie), and through `outpost login --sso`'s
//! loopback handoff. The ID token's own checks (audience, issuer, nonce, expiry, unknown key,
//! `alg: none`) are unit tests of `outpost_core::idtoken`, with tokens signed in the test.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use outpost_e2e::oidc::{Browserless, Provider, free_port};
use outpost_e2e::{Api, CliHome, Server, ServerOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A server on a port known in advance (its `--public-url` is the provider's redirect target)
/// with the provider and `extra` flags.
async fn server(provider: &Provider, extra: &[&str]) -> Server {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut args = provider.server_args(&public);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Server::start_with(ServerOptions {
        args,
        listen: Some(format!("127.0.0.1:{port}").parse().expect("addr")),
        ..ServerOptions::default()
    })
    .await
}

fn start_url(server: &Server) -> String {
    format!("{}/api/auth/oidc/start", server.url)
}

async fn users(api: &Api) -> Vec<Value> {
    let (status, body) = api.get("/api/users").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array()
        .or_else(|| body["users"].as_array())
        .cloned()
        .unwrap_or_default()
}

async fn actions(api: &Api) -> Vec<String> {
    let (status, page) = api.get("/api/audit?limit=200").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|r| r["action"].as_str().map(str::to_owned))
        .collect()
}

/// A first sign-in with a mapped domain joins that tenant as a member and lands on the
/// dashboard signed in; the next one is the same user (by issuer and subject, not email).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_domain_mapping_signs_in_to_the_dashboard() {
    let Some(provider) = Provider::start("sso_domain_mapping_signs_in_to_the_dashboard").await
    else {
        return;
    };
    let server = server(&provider, &["--oidc-domain", "example.com=default"]).await;
    provider
        .set_user(
            "alice-sub",
            json!({"email": "alice@example.com", "email_verified": true, "name": "Alice"}),
        )
        .await;
    // The sign-in page shows the provider's button.
    let browser = Browserless::new();
    let page = browser
        .get(&format!("{}/ui/login", server.url), None, None)
        .await;
    assert!(
        page.body.contains("Sign in with Mock IdP") && page.body.contains("/api/auth/oidc/start"),
        "{}",
        page.body
    );
    let done = browser
        .sign_in(&start_url(&server), "alice-sub", None)
        .await;
    assert_eq!(done.status, StatusCode::FOUND, "{done:?}");
    assert!(
        done.cookie("outpost_session").is_none(),
        "no session from the API"
    );
    let handoff = done.cookie("outpost_sso").expect("handoff");
    let done = browser.finish(&server.url, &done).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{done:?}");
    assert_eq!(done.location.as_deref(), Some("/ui/agents"));
    // The handoff works once.
    let again = browser
        .get(
            &format!("{}/ui/sso/finish", server.url),
            Some(&format!("outpost_sso={handoff}")),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{again:?}");
    let session = done
        .cookie("outpost_session")
        .expect("the dashboard's session");
    assert!(
        done.set_cookie
            .iter()
            .any(|c| c.starts_with("outpost_session=") && c.contains("SameSite=Lax")),
        "{:?}",
        done.set_cookie
    );
    let dashboard = browser
        .get(
            &format!("{}/ui/agents", server.url),
            Some(&format!("outpost_session={session}")),
            None,
        )
        .await;
    assert_eq!(dashboard.status, StatusCode::OK, "{}", dashboard.body);
    assert!(dashboard.body.contains("alice@example.com"));

    let api = server.api();
    let listed = users(&api).await;
    let alice: Vec<&Value> = listed
        .iter()
        .filter(|u| u["email"] == "alice@example.com")
        .collect();
    assert_eq!(alice.len(), 1, "{listed:?}");
    assert_eq!(alice[0]["role"], "member");
    let id = alice[0]["id"].clone();

    // Again: the same user, no second one.
    let again = browser
        .sign_in(&start_url(&server), "alice-sub", None)
        .await;
    assert_eq!(again.status, StatusCode::FOUND, "{again:?}");
    let listed = users(&api).await;
    assert_eq!(
        listed
            .iter()
            .filter(|u| u["email"] == "alice@example.com")
            .map(|u| u["id"].clone())
            .collect::<Vec<_>>(),
        vec![id]
    );
    let log = actions(&api).await;
    assert!(log.iter().any(|a| a == "user.create"), "{log:?}");
    assert_eq!(
        log.iter().filter(|a| *a == "auth.sso_login").count(),
        2,
        "{log:?}"
    );

    // A disabled user is refused, and the refusal audited.
    let (status, body) = api
        .patch(
            &format!("/api/users/{}", alice[0]["id"].as_str().expect("id")),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refused = browser
        .sign_in(&start_url(&server), "alice-sub", None)
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    assert!(refused.body.contains("disabled"), "{}", refused.body);
    assert!(actions(&api).await.iter().any(|a| a == "auth.sso_refused"));

    // An email the provider has not verified is refused.
    provider
        .set_user(
            "mallory-sub",
            json!({"email": "mallory@example.com", "email_verified": false}),
        )
        .await;
    let unverified = browser
        .sign_in(&start_url(&server), "mallory-sub", None)
        .await;
    assert_eq!(
        unverified.status,
        StatusCode::UNAUTHORIZED,
        "{unverified:?}"
    );
    assert!(unverified.body.contains("verified"), "{}", unverified.body);
}

/// An identity whose email is an existing user's answers 409 until that user, signed in,
/// links it; then it signs in as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_existing_email_is_refused_until_linked() {
    let Some(provider) = Provider::start("sso_existing_email_is_refused_until_linked").await else {
        return;
    };
    let server = server(&provider, &["--oidc-domain", "example.com=default"]).await;
    let (bob, _) = server
        .user("bob@example.com", "admin", "correct horse battery")
        .await;
    provider
        .set_user(
            "bob-sub",
            json!({"email": "bob@example.com", "email_verified": true}),
        )
        .await;
    let browser = Browserless::new();
    let refused = browser.sign_in(&start_url(&server), "bob-sub", None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert_eq!(
        refused.json()["error"]["code"],
        "sso_not_linked",
        "{}",
        refused.body
    );

    // Bob, signed in with his password, links the identity.
    let linked = browser
        .sign_in(
            &format!("{}?link=1", start_url(&server)),
            "bob-sub",
            Some(bob.token()),
        )
        .await;
    assert_eq!(linked.status, StatusCode::FOUND, "{linked:?}");
    assert_eq!(linked.location.as_deref(), Some("/ui/agents?linked=1"));
    // Now the identity signs in as Bob.
    let done = browser.sign_in(&start_url(&server), "bob-sub", None).await;
    assert_eq!(done.status, StatusCode::FOUND, "{done:?}");
    let done = browser.finish(&server.url, &done).await;
    assert_eq!(done.location.as_deref(), Some("/ui/agents"));
    assert!(done.cookie("outpost_session").is_some());
    let log = actions(&server.api()).await;
    for action in ["auth.sso_refused", "user.sso_link", "auth.sso_login"] {
        assert!(log.iter().any(|a| a == action), "{action}: {log:?}");
    }
    // Bob's password still works.
    server
        .login("bob@example.com", "correct horse battery")
        .await;
    // A link without a bearer token is refused.
    let anonymous = browser
        .get(&format!("{}?link=1", start_url(&server)), None, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{anonymous:?}");
}

/// Outside the mapped domains: with `--allow-signup` a tenant of one's own (as its owner);
/// without it, refused saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_signup_or_refusal_outside_the_mapped_domains() {
    let Some(provider) = Provider::start("sso_signup_or_refusal_outside_the_mapped_domains").await
    else {
        return;
    };
    provider
        .set_user(
            "carol-sub",
            json!({"email": "carol@other.org", "email_verified": true}),
        )
        .await;
    let browser = Browserless::new();
    let closed = server(&provider, &["--oidc-domain", "example.com=default"]).await;
    let refused = browser
        .sign_in(&start_url(&closed), "carol-sub", None)
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    assert_eq!(
        refused.json()["error"]["code"],
        "sso_no_tenant",
        "{}",
        refused.body
    );
    assert!(refused.body.contains("other.org"), "{}", refused.body);
    drop(closed);

    let open = server(&provider, &["--allow-signup"]).await;
    let done = browser.sign_in(&start_url(&open), "carol-sub", None).await;
    assert_eq!(done.status, StatusCode::FOUND, "{done:?}");
    // Carol owns a tenant of her own: the server's tenants list shows a second one.
    let (status, tenants) = open.api().get("/api/tenants").await;
    assert_eq!(status, StatusCode::OK, "{tenants}");
    let count = tenants
        .as_array()
        .or_else(|| tenants["tenants"].as_array())
        .map_or(0, Vec::len);
    assert_eq!(count, 2, "{tenants}");
}

/// A callback whose state is not this browser's, or used already, is 400 (never a redirect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_state_mismatch_is_400() {
    let Some(provider) = Provider::start("sso_state_mismatch_is_400").await else {
        return;
    };
    let server = server(&provider, &["--oidc-domain", "example.com=default"]).await;
    provider
        .set_user(
            "dave-sub",
            json!({"email": "dave@example.com", "email_verified": true}),
        )
        .await;
    let browser = Browserless::new();
    let start = browser.get(&start_url(&server), None, None).await;
    assert_eq!(start.status, StatusCode::FOUND);
    let location = start.location.clone().expect("to the provider");
    // What the provider was asked for.
    let asked = reqwest::Url::parse(&location).expect("url");
    let pairs: std::collections::HashMap<String, String> =
        asked.query_pairs().into_owned().collect();
    assert_eq!(pairs["response_type"], "code");
    assert_eq!(pairs["code_challenge_method"], "S256");
    assert_eq!(pairs["scope"], "openid email profile");
    assert!(pairs["nonce"].len() >= 32 && pairs["state"].len() >= 32);
    assert_eq!(
        pairs["redirect_uri"],
        format!("{}/api/auth/oidc/callback", server.url)
    );
    let state = start.cookie("outpost_oidc").expect("state cookie");
    let back = browser.authorize(&location, "dave-sub").await;
    let callback = back.location.expect("back");
    // No cookie; another sign-in's cookie.
    let none = browser.get(&callback, None, None).await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST, "{none:?}");
    assert!(none.location.is_none());
    let other = browser.get(&start_url(&server), None, None).await;
    let wrong = browser
        .get(
            &callback,
            Some(&format!(
                "outpost_oidc={}",
                other.cookie("outpost_oidc").expect("cookie")
            )),
            None,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{wrong:?}");
    // The right one signs in, once; the same callback again is 400.
    let cookie = format!("outpost_oidc={state}");
    let good = browser.get(&callback, Some(&cookie), None).await;
    assert_eq!(good.status, StatusCode::FOUND, "{good:?}");
    let replay = browser.get(&callback, Some(&cookie), None).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{replay:?}");
    assert!(replay.body.contains("already used"), "{}", replay.body);
}

/// `outpost login --sso`: the CLI waits on loopback, the browser's sign-in ends there with a
/// one-time code, and the CLI exchanges it for a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_cli_login_through_the_loopback_redirect() {
    let Some(provider) = Provider::start("sso_cli_login_through_the_loopback_redirect").await
    else {
        return;
    };
    let server = server(&provider, &["--oidc-domain", "example.com=default"]).await;
    provider
        .set_user(
            "erin-sub",
            json!({"email": "erin@example.com", "email_verified": true}),
        )
        .await;
    let home = CliHome::new(&server);
    let mut child = home
        .command()
        .args(["login", "--sso"])
        .env("OUTPOST_NO_BROWSER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outpost login --sso");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the CLI prints the URL to open");
        if let Some(url) = line.trim().strip_prefix("http") {
            break format!("http{url}");
        }
    };
    assert!(url.contains("/api/auth/oidc/start?cli="), "{url}");
    let browser = Browserless::new();
    let done = browser.sign_in(&url, "erin-sub", None).await;
    assert_eq!(done.status, StatusCode::FOUND, "{done:?}");
    let loopback = done.location.clone().expect("on to the CLI");
    assert!(loopback.starts_with("http://127.0.0.1:"), "{loopback}");
    assert!(loopback.contains("code=oph_"), "{loopback}");
    assert!(
        done.cookie("outpost_session").is_none(),
        "no dashboard session for the CLI"
    );
    let landed = browser.get(&loopback, None, None).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success());
    let session = home.session();
    assert_eq!(session["email"].as_str(), Some("erin@example.com"));
    let access = session["access_token"].as_str().expect("access token");
    let (status, me) = server.api().with_token(access).get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email"], "erin@example.com");
    // The handoff code works once.
    let code = reqwest::Url::parse(&loopback)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    let (status, body) = server
        .api()
        .anonymous("/api/auth/oidc/exchange", json!({"code": code}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Only a loopback address is accepted for the CLI.
    let evil = browser
        .get(
            &format!(
                "{}?cli=http%3A%2F%2Fevil.example%3A80%2F",
                start_url(&server)
            ),
            None,
            None,
        )
        .await;
    assert_eq!(evil.status, StatusCode::BAD_REQUEST, "{evil:?}");
}

/// A provider that cannot be reached: the server starts, the sign-in says so (503 naming
/// the provider), and password sign-in keeps working. Needs no provider at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_provider_unreachable_says_so_and_passwords_still_work() {
    let port = free_port();
    let dead = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let issuer = format!("http://127.0.0.1:{dead}");
    let server = Server::start_with(ServerOptions {
        args: [
            "--public-url",
            &public,
            "--oidc-issuer",
            &issuer,
            "--oidc-client-id",
            "x",
            "--oidc-client-secret",
            "y",
            "--oidc-name",
            "Down IdP",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect(),
        listen: Some(format!("127.0.0.1:{port}").parse().expect("addr")),
        ..ServerOptions::default()
    })
    .await;
    let browser = Browserless::new();
    let start = browser.get(&start_url(&server), None, None).await;
    assert_eq!(start.status, StatusCode::SERVICE_UNAVAILABLE, "{start:?}");
    assert!(
        start.body.contains("Down IdP") && start.body.contains("cannot be reached"),
        "{}",
        start.body
    );
    server
        .user("frank@example.com", "member", "correct horse battery")
        .await;
    // Single sign-on off: its routes are 404.
    let plain = Server::start().await;
    let off = browser.get(&start_url(&plain), None, None).await;
    assert_eq!(off.status, StatusCode::NOT_FOUND, "{off:?}");
}

/// Bad flags stop the start with a message naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_flags_are_checked_at_start() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--oidc-issuer",
                "http://idp.example",
                "--oidc-client-id",
                "a",
                "--oidc-client-secret",
                "b",
                "--public-url",
                "http://127.0.0.1:1",
            ],
            "must be https",
        ),
        (
            &[
                "--oidc-issuer",
                "https://idp.example",
                "--oidc-client-id",
                "a",
                "--oidc-client-secret",
                "b",
            ],
            "--public-url",
        ),
        (
            &[
                "--oidc-issuer",
                "https://idp.example",
                "--oidc-client-secret",
                "b",
                "--public-url",
                "http://127.0.0.1:1",
            ],
            "--oidc-client-id",
        ),
        (
            &[
                "--oidc-issuer",
                "https://idp.example",
                "--oidc-client-id",
                "a",
                "--oidc-client-secret",
                "b",
                "--public-url",
                "http://127.0.0.1:1",
                "--oidc-domain",
                "example.com=nosuchtenant",
            ],
            "nosuchtenant",
        ),
        (&["--oidc-domain", "example.com=default"], "--oidc-issuer"),
    ];
    for (args, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(outpost_e2e::bin_dir().join("outpost-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(*args)
            .env_remove("OUTPOST_DATABASE_URL")
            .output()
            .expect("outpost-server");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(text.contains(expected), "{args:?}: {text}");
    }
}

/// The dashboard's "Sign in with …" button in a real browser (chromium over WebDriver): to the
/// provider's form, back through the callback and `/ui/sso/finish`, signed in on the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_browser_signs_in_with_the_button() {
    use outpost_e2e::webdriver::By;
    let Some(provider) = Provider::start("sso_browser_signs_in_with_the_button").await else {
        return;
    };
    let Some(browser) = crate::ui::Browser::start("sso_browser_signs_in_with_the_button").await
    else {
        return;
    };
    let server = server(&provider, &["--oidc-domain", "example.com=default"]).await;
    provider
        .set_user(
            "gina-sub",
            json!({"email": "gina@example.com", "email_verified": true}),
        )
        .await;
    browser
        .driver
        .goto(&format!("{}/ui/login", server.url))
        .await
        .expect("login page");
    browser
        .wait_text(By::id("sso-sign-in"), "Sign in with Mock IdP")
        .await;
    browser
        .driver
        .find(&By::id("sso-sign-in"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("click");
    browser.wait_text(By::css("h1"), "Authorize").await;
    browser
        .driver
        .find(&By::css("input[name='sub']"))
        .await
        .expect("the provider's form")
        .send_keys("gina-sub")
        .await
        .expect("type");
    browser
        .driver
        .find(&By::css("form button[type='submit']"))
        .await
        .expect("authorize")
        .click()
        .await
        .expect("click");
    browser.wait_text(By::css("main h1"), "Agents").await;
    browser
        .wait_text(By::css(".user"), "gina@example.com")
        .await;
    browser.quit().await;
}
