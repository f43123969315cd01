//! The TOTP second factor (CONTRACT.md §18) over the real server and CLI, with codes computed by
//! PyPI's `pyotp` (`outpost_e2e::totp`), never by our own code: setup and confirmation, the
//! two-step sign-in, a replayed code refused, the 6th wrong code finding its ticket void, a
//! recovery code working once, an owner's reset (a member's refused), the tenant's policy
//! leading a user through setup, an API key refused, and `outpost login --totp-code`.
//!
//! Sign-ins are limited to 10 a minute per address and per email (CONTRACT.md §9), so each test
//! has its own server and counts its attempts.

use super::ui::form;
use outpost_e2e::totp::PyOtp;
use outpost_e2e::{Api, CliHome, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

/// Sets up and confirms a factor for the user behind `api`: `(secret, the confirming code,
/// recovery codes)`.
async fn enroll(api: &Api, otp: &PyOtp) -> (String, String, Vec<String>) {
    let (status, setup) = api.post("/api/auth/totp/setup", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let secret = setup["secret"].as_str().expect("secret").to_owned();
    let code = otp.code(&secret, 0);
    let (status, confirmed) = api
        .post("/api/auth/totp/confirm", json!({"code": code}))
        .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    assert!(confirmed["session"].is_null(), "{confirmed}");
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .expect("recovery_codes")
        .iter()
        .map(|c| c.as_str().expect("a code").to_owned())
        .collect();
    (secret, code, codes)
}

/// The password step: the answer, which must be a second factor of `kind`; its ticket.
async fn ticket(server: &Server, email: &str, kind: &str) -> String {
    let (status, answer) = server
        .api()
        .anonymous(
            "/api/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["second_factor"], kind, "{answer}");
    assert!(answer.get("access_token").is_none(), "{answer}");
    assert_eq!(answer["expires_in"], 300, "{answer}");
    let ticket = answer["ticket"].as_str().expect("ticket");
    assert!(ticket.starts_with("opt_"), "{ticket}");
    ticket.to_owned()
}

async fn second_step(server: &Server, ticket: &str, code: &str) -> (StatusCode, Value) {
    server
        .api()
        .anonymous(
            "/api/auth/login/totp",
            json!({"ticket": ticket, "code": code}),
        )
        .await
}

/// The audit actions of the tenant, newest first.
async fn actions(api: &Api) -> Vec<String> {
    let (status, page) = api.get("/api/audit?limit=200").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let rows = page
        .get("items")
        .or(page.get("entries"))
        .and_then(Value::as_array)
        .cloned()
        .or_else(|| page.as_array().cloned())
        .unwrap_or_default();
    rows.iter()
        .filter_map(|r| r["action"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn totp_setup_confirm_and_sign_in_in_two_steps() {
    let Some(otp) = PyOtp::find("totp_setup_confirm_and_sign_in_in_two_steps") else {
        return;
    };
    let server = Server::start().await;
    let email = "ada@example.com";
    // Sign-in attempts for this email: 1.
    let (ada, _) = server.user(email, "owner", PASSWORD).await;

    // An API key cannot set up a factor (the owner key is one).
    let (status, body) = server.api().post("/api/auth/totp/setup", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("API key"),
        "{body}"
    );

    // Setup: a secret pyotp reads from the otpauth URL.
    let (status, setup) = ada.post("/api/auth/totp/setup", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let first = setup["secret"].as_str().expect("secret").to_owned();
    let url = setup["otpauth_url"].as_str().expect("otpauth_url");
    assert!(
        url.starts_with("otpauth://totp/Outpost:ada%40example.com?"),
        "{url}"
    );
    assert_eq!(
        otp.parse_uri(url),
        format!("{first} Outpost {email} 6 30"),
        "{url}"
    );
    // A new setup replaces the unconfirmed one.
    let (status, again) = ada.post("/api/auth/totp/setup", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let secret = again["secret"].as_str().expect("secret").to_owned();
    assert_ne!(secret, first);
    assert_eq!(secret.len(), 32, "20 bytes in base32: {secret}");

    // A wrong code does not confirm; the old secret's code no longer does either.
    let (status, body) = ada
        .post(
            "/api/auth/totp/confirm",
            json!({"code": otp.wrong(&secret)}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "wrong_code", "{body}");
    // Until confirmed, the password alone signs in (attempts: 2).
    let (status, session) = server
        .api()
        .anonymous(
            "/api/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert!(session["access_token"].is_string(), "{session}");

    let confirm_code = otp.code(&secret, 0);
    let (status, confirmed) = ada
        .post("/api/auth/totp/confirm", json!({"code": confirm_code}))
        .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .expect("recovery_codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_owned())
        .collect();
    assert_eq!(recovery.len(), 10, "{confirmed}");
    let distinct: std::collections::HashSet<_> = recovery.iter().collect();
    assert_eq!(distinct.len(), 10);
    // A confirmed factor is not replaced by a new setup.
    let (status, body) = ada.post("/api/auth/totp/setup", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "totp_confirmed", "{body}");

    // The password now answers a ticket (attempts: 3), and the code that confirmed the factor
    // is used: replayed, it is refused.
    let t = ticket(&server, email, "totp").await;
    let (status, body) = second_step(&server, &t, &confirm_code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // The next step's code finishes the sign-in with the usual session.
    let code = otp.code(&secret, 30);
    let (status, session) = second_step(&server, &t, &code).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let access = session["access_token"].as_str().expect("access_token");
    assert!(
        session["refresh_token"]
            .as_str()
            .expect("refresh")
            .starts_with("opr_")
    );
    let (status, me) = server.api().with_token(access).get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email"], email);
    // The ticket finished one sign-in.
    let (status, body) = second_step(&server, &t, &recovery[0]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A replayed code within its window is refused on a new ticket too (attempts: 4).
    let t = ticket(&server, email, "totp").await;
    let (status, body) = second_step(&server, &t, &code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // A recovery code works, typed however (upper case, spaces for the dash) ...
    let typed = recovery[0].to_uppercase().replace('-', " ");
    let (status, session) = second_step(&server, &t, &typed).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert!(session["access_token"].is_string());
    // ... once (attempts: 5).
    let t = ticket(&server, email, "totp").await;
    let (status, body) = second_step(&server, &t, &recovery[0]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // Five wrong codes on one ticket (that one counted), and the 6th finds it void, even with
    // a good recovery code, which stays unused.
    for _ in 0..4 {
        let (status, body) = second_step(&server, &t, &otp.wrong(&secret)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, body) = second_step(&server, &t, &recovery[1]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("void"),
        "{body}"
    );
    // (attempts: 6)
    let t = ticket(&server, email, "totp").await;
    let (status, session) = second_step(&server, &t, &recovery[1]).await;
    assert_eq!(status, StatusCode::OK, "{session}");

    // A forged or malformed ticket is refused; the body is checked.
    let (status, _) = second_step(&server, "opt_forged", "123456").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .api()
        .anonymous("/api/auth/login/totp", json!({"ticket": t}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // `outpost login --email … --totp-code` finishes a sign-in with a recovery code
    // (attempts: 7).
    let cli = CliHome::new(&server);
    let (status, out, err) = cli.run(
        &[
            "login",
            "--email",
            email,
            "--password-stdin",
            "--totp-code",
            &recovery[2],
        ],
        Some(PASSWORD),
    );
    assert_eq!(status, 0, "{out}{err}");
    assert!(cli.session().get("refresh_token").is_some());
    // A wrong code fails the CLI's sign-in, saying so (attempts: 8).
    let (status, out, err) = cli.run(
        &[
            "login",
            "--email",
            email,
            "--password-stdin",
            "--totp-code",
            &recovery[2],
        ],
        Some(PASSWORD),
    );
    assert_ne!(status, 0, "{out}{err}");
    assert!(err.contains("wrong code"), "{err}");

    let audit = actions(&ada).await;
    for action in [
        "user.totp_setup",
        "user.totp_confirm",
        "auth.totp_failed",
        "auth.recovery_code_used",
        "auth.login",
    ] {
        assert!(audit.iter().any(|a| a == action), "{action} in {audit:?}");
    }
    // The secret is sealed: its base32 and raw forms are nowhere in the database's files.
    let raw = base32_decode(&secret);
    for (name, bytes) in server.at_rest() {
        assert!(
            !contains(&bytes, secret.as_bytes()) && !contains(&bytes, &raw),
            "the TOTP secret is readable in {name}"
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buffer, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base32") as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn totp_owner_resets_a_lost_factor_and_a_member_cannot() {
    let Some(otp) = PyOtp::find("totp_owner_resets_a_lost_factor_and_a_member_cannot") else {
        return;
    };
    let server = Server::start().await;
    let (ada, _) = server.user("ada@example.com", "owner", PASSWORD).await;
    let (bob, _) = server.user("bob@example.com", "member", PASSWORD).await;
    let (_, me) = ada.get("/api/auth/me").await;
    let ada_id = me["user"]["id"].as_str().expect("id").to_owned();
    let (_, me) = bob.get("/api/auth/me").await;
    let bob_id = me["user"]["id"].as_str().expect("id").to_owned();

    let (secret, _, _) = enroll(&bob, &otp).await;
    ticket(&server, "bob@example.com", "totp").await;

    // A member cannot reset anyone's factor.
    let (status, body) = bob.delete(&format!("/api/users/{ada_id}/totp")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // An unknown user is 404.
    let (status, body) = ada.delete("/api/users/nobody/totp").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The owner resets bob's: bob signs in with the password alone.
    let (status, body) = ada.delete(&format!("/api/users/{bob_id}/totp")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, session) = server
        .api()
        .anonymous(
            "/api/auth/login",
            json!({"email": "bob@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert!(session["access_token"].is_string(), "{session}");
    let audit = actions(&ada).await;
    assert!(audit.iter().any(|a| a == "user.totp_reset"), "{audit:?}");

    // Bob sets up again, and removes it himself with a current code (the confirming one is
    // used, so the next step's).
    let (secret2, confirm_code, _) = enroll(&bob, &otp).await;
    assert_ne!(secret, secret2);
    let (status, body) = bob
        .call(
            reqwest::Method::DELETE,
            "/api/auth/totp",
            Some(json!({"code": confirm_code})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a used code removes nothing: {body}"
    );
    let (status, body) = bob
        .call(
            reqwest::Method::DELETE,
            "/api/auth/totp",
            Some(json!({"code": otp.code(&secret2, 30)})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = bob
        .call(
            reqwest::Method::DELETE,
            "/api/auth/totp",
            Some(json!({"code": "123456"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let audit = actions(&ada).await;
    assert!(audit.iter().any(|a| a == "user.totp_remove"), "{audit:?}");
}

#[tokio::test]
async fn totp_policy_leads_a_user_through_setup_at_sign_in() {
    let Some(otp) = PyOtp::find("totp_policy_leads_a_user_through_setup_at_sign_in") else {
        return;
    };
    let server = Server::start().await;
    let (ada, _) = server.user("ada@example.com", "owner", PASSWORD).await;
    let (bob, _) = server.user("bob@example.com", "member", PASSWORD).await;
    let (_, me) = ada.get("/api/auth/me").await;
    let tenant = me["tenant_id"].as_str().expect("tenant").to_owned();

    // A member cannot set the policy; an owner can.
    let (status, body) = bob
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"require_totp": true}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = ada
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"require_totp": null}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = ada
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"require_totp": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["require_totp"], true, "{body}");

    // Bob's password now leads to setup, not to a session.
    let t = ticket(&server, "bob@example.com", "totp_setup").await;
    // The setup ticket does not sign in with a code.
    let (status, body) = second_step(&server, &t, "123456").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, setup) = server
        .api()
        .anonymous("/api/auth/login/totp/setup", json!({"ticket": t}))
        .await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let secret = setup["secret"].as_str().expect("secret").to_owned();
    let (status, body) = server
        .api()
        .anonymous(
            "/api/auth/login/totp/confirm",
            json!({"ticket": t, "code": otp.wrong(&secret)}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, confirmed) = server
        .api()
        .anonymous(
            "/api/auth/login/totp/confirm",
            json!({"ticket": t, "code": otp.code(&secret, 0)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    assert_eq!(
        confirmed["recovery_codes"].as_array().map(Vec::len),
        Some(10)
    );
    let access = confirmed["session"]["access_token"]
        .as_str()
        .expect("a session");
    let (status, me) = server.api().with_token(access).get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email"], "bob@example.com");
    // The ticket is used.
    let (status, _) = server
        .api()
        .anonymous("/api/auth/login/totp/setup", json!({"ticket": t}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // From now on bob signs in with a code.
    ticket(&server, "bob@example.com", "totp").await;

    // The policy off again: a user without a factor signs in with the password alone.
    let (status, body) = ada
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"require_totp": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["require_totp"], false, "{body}");
    let (status, session) = server
        .api()
        .anonymous(
            "/api/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert!(session["access_token"].is_string(), "{session}");
}

// ---- the dashboard, over plain HTTP ----------------------------------------------------------

fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .and_then(|pair| pair.strip_prefix(&format!("{name}=")))
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        })
}

fn field_of(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in {html}"))
        + marker.len();
    html[start..]
        .split('"')
        .next()
        .expect("the value's end")
        .to_owned()
}

#[tokio::test]
async fn totp_dashboard_sign_in_asks_for_the_code_after_the_password() {
    let Some(otp) = PyOtp::find("totp_dashboard_sign_in_asks_for_the_code_after_the_password")
    else {
        return;
    };
    let server = Server::start().await;
    let email = "ada@example.com";
    let (ada, _) = server.user(email, "owner", PASSWORD).await;
    let (secret, _, recovery) = enroll(&ada, &otp).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let page = client
        .get(format!("{}/ui/login", server.url))
        .send()
        .await
        .expect("login page");
    let login = set_cookie(&page, "outpost_login").expect("the form's cookie");
    let html = page.text().await.expect("html");
    let response = client
        .post(format!("{}/ui/login", server.url))
        .header(reqwest::header::COOKIE, format!("outpost_login={login}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("_csrf", &field_of(&html, "_csrf")),
            ("email", email),
            ("password", PASSWORD),
        ]))
        .send()
        .await
        .expect("sign in");
    // The password step gives the code page, not a session.
    assert_eq!(response.status(), StatusCode::OK);
    assert!(set_cookie(&response, "outpost_session").is_none());
    let html = response.text().await.expect("html");
    assert!(html.contains("id=\"code\""), "{html}");
    let ticket = field_of(&html, "ticket");

    let post = |fields: Vec<(&'static str, String)>| {
        let client = client.clone();
        let url = format!("{}/ui/login/totp", server.url);
        async move {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&pairs))
                .send()
                .await
                .expect("second step")
        }
    };
    let wrong = post(vec![
        ("ticket", ticket.clone()),
        ("code", otp.wrong(&secret)),
        ("next", String::new()),
    ])
    .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let html = wrong.text().await.expect("html");
    assert!(html.contains("id=\"totp-error\""), "{html}");
    let right = post(vec![
        ("ticket", ticket.clone()),
        ("code", recovery[0].clone()),
        ("next", String::new()),
    ])
    .await;
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(right.headers()[reqwest::header::LOCATION], "/ui/agents");
    let session = set_cookie(&right, "outpost_session").expect("a session cookie");
    let cookie = format!("outpost_session={session}");

    // The account page says the factor is on, with 9 codes left; the users page shows it.
    let page = client
        .get(format!("{}/ui/account", server.url))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .expect("account");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("9 recovery codes are left"), "{html}");
    let page = client
        .get(format!("{}/ui/users", server.url))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .expect("users");
    let html = page.text().await.expect("html");
    assert!(html.contains("/totp/reset"), "{html}");
}

/// `outpost login --email` under the tenant's policy: the CLI shows the new secret, reads the
/// app's code from stdin's next line, and prints the recovery codes once; the session is saved.
#[tokio::test]
async fn totp_cli_sets_up_a_required_factor_at_sign_in() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let Some(otp) = PyOtp::find("totp_cli_sets_up_a_required_factor_at_sign_in") else {
        return;
    };
    let server = Server::start().await;
    let (ada, _) = server.user("ada@example.com", "owner", PASSWORD).await;
    let (created, text) = server.user_create("bob@example.com", "member", Some(PASSWORD));
    assert!(created, "{text}");
    let (_, me) = ada.get("/api/auth/me").await;
    let tenant = me["tenant_id"].as_str().expect("tenant").to_owned();
    let (status, body) = ada
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"require_totp": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let cli = CliHome::new(&server);
    let mut child = cli
        .command()
        .args(["login", "--email", "bob@example.com", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outpost login");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{PASSWORD}").expect("the password");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut said = String::new();
    let mut secret = None;
    for line in stderr.by_ref() {
        let line = line.expect("stderr");
        said.push_str(&line);
        said.push('\n');
        if let Some(found) = line.trim().strip_prefix("secret: ") {
            secret = Some(found.to_owned());
            break;
        }
    }
    let secret = secret.unwrap_or_else(|| panic!("no secret shown: {said}"));
    let _ = writeln!(stdin, "{}", otp.code(&secret, 0));
    drop(stdin);
    let out = child.wait_with_output().expect("outpost login");
    for line in stderr {
        said.push_str(&line.unwrap_or_default());
        said.push('\n');
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{stdout}");
    assert_eq!(stdout.lines().count(), 10, "the recovery codes: {stdout}");
    assert!(cli.session().get("refresh_token").is_some());
    // From now on bob's password asks for a code.
    ticket(&server, "bob@example.com", "totp").await;
}
