//! Mail to people over the real server and a real SMTP server (aiosmtpd), CONTRACT.md §18:
//! password reset by a mailed single-use link, email verification by a mailed code under
//! `--require-verified-email`, invites by mail, and a relay that is down (the API answers, the
//! mail is retried, an admin sees why). Codes and links are read from the mails the sink
//! received, as a person would.

use std::process::Command;
use std::time::Duration;

use outpost_e2e::smtp::{SmtpSink, text_part};
use outpost_e2e::{Server, ServerOptions, bin_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";
const PUBLIC_URL: &str = "https://outpost.test.example";

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn server_with(sink_url: &str, extra: &[&str]) -> Server {
    let mut args: Vec<String> = vec![
        "--smtp-url".into(),
        sink_url.into(),
        "--smtp-from".into(),
        "Outpost <outpost@test.example>".into(),
        "--public-url".into(),
        PUBLIC_URL.into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Server::start_with(ServerOptions {
        args,
        ..Default::default()
    })
    .await
}

/// The `opw_…` token of the first link of a mail's text.
fn reset_token(mail: &str) -> String {
    let mail = &text_part(mail);
    let prefix = format!("{PUBLIC_URL}/ui/reset?token=");
    let start = mail
        .find(&prefix)
        .unwrap_or_else(|| panic!("no reset link in {mail}"))
        + prefix.len();
    let token: String = mail[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert!(token.starts_with("opw_") && token.len() > 40, "{token}");
    token
}

/// The 6-digit code of a verification mail: the line of its text part after "…code is:".
fn mailed_code(mail: &str) -> String {
    outpost_e2e::smtp::mailed_code(mail)
}

fn count_to(sink: &SmtpSink, to: &str) -> usize {
    sink.messages()
        .iter()
        .filter(|m| {
            m.lines()
                .any(|l| l.starts_with("X-Envelope-To:") && l.contains(to))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_password_is_reset_by_a_mailed_link_that_works_once() {
    let Some(sink) = SmtpSink::start("a_forgotten_password_is_reset") else {
        return;
    };
    let server = server_with(&sink.url(), &[]).await;
    let (old_session, old_refresh) = server.user("ada@example.com", "member", PASSWORD).await;
    let api = server.api();

    // The same answer for an unknown email and a user's.
    let (status, unknown) = api
        .anonymous(
            "/api/auth/password-reset",
            json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{unknown}");
    let (status, known) = api
        .anonymous(
            "/api/auth/password-reset",
            json!({"email": "ADA@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{known}");
    assert_eq!(unknown, known);

    let mail = sink.wait_for("ada@example.com", "/ui/reset?token=").await;
    assert!(
        mail.contains("Subject: [Outpost] Reset your password"),
        "{mail}"
    );
    assert!(mail.contains("multipart/alternative"), "{mail}");
    // The link is built from --public-url, and is the text part's first link.
    let text = text_part(&mail);
    assert!(
        text.starts_with(&format!("{PUBLIC_URL}/ui/reset?token=opw_")),
        "{text}"
    );
    let token = reset_token(&mail);
    assert_eq!(count_to(&sink, "nobody@example.com"), 0);

    // A forged token: refused. (Five tries a minute from one address: this test uses them
    // all.)
    let forged = format!("opw_{}", "A".repeat(43));
    let (status, body) = api
        .anonymous(
            "/api/auth/password-reset/confirm",
            json!({"token": forged, "password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, user) = api
        .anonymous(
            "/api/auth/password-reset/confirm",
            json!({"token": token, "password": "a brand new password"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["email_verified"], true, "the link came to the mailbox");

    // Every session ended: the access token at once, the refresh token too.
    let (status, body) = old_session.get("/api/auth/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = api
        .anonymous("/api/auth/refresh", json!({"refresh_token": old_refresh}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // Used once.
    let (status, body) = api
        .anonymous(
            "/api/auth/password-reset/confirm",
            json!({"token": token, "password": "yet another password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("already used"),
        "{body}"
    );

    // The new password signs in, the old one no longer.
    let (status, _) = api
        .anonymous(
            "/api/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (fresh, _) = server
        .login("ada@example.com", "a brand new password")
        .await;
    let (status, _) = fresh.get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK);

    // Audited, and the outbox shows the mail sent, without its body.
    let (status, audit) = api.get("/api/audit?action=user").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"user.password_reset_request"),
        "{actions:?}"
    );
    assert!(actions.contains(&"user.password_reset"), "{actions:?}");
    let (status, outbox) = api.get("/api/mail").await;
    assert_eq!(status, StatusCode::OK, "{outbox}");
    let mails = outbox["mail"].as_array().expect("mail");
    assert_eq!(mails.len(), 1, "{outbox}");
    assert_eq!(mails[0]["kind"], "reset");
    assert_eq!(mails[0]["state"], "sent");
    assert!(!outbox.to_string().contains(&token), "{outbox}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_resets_are_limited_per_email_and_address() {
    let Some(sink) = SmtpSink::start("password_resets_are_limited") else {
        return;
    };
    let server = server_with(&sink.url(), &[]).await;
    let api = server.api();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, _) = api
            .anonymous(
                "/api/auth/password-reset",
                json!({"email": "someone@example.com"}),
            )
            .await;
        statuses.push(status);
    }
    assert_eq!(statuses[..5], [StatusCode::ACCEPTED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    // The confirmation shares the address's bucket.
    let (status, body) = api
        .anonymous(
            "/api/auth/password-reset/confirm",
            json!({"token": format!("opw_{}", "B".repeat(43)), "password": "whatever it is here"}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_user_signs_in_only_to_verify_when_the_server_requires_it() {
    let Some(sink) = SmtpSink::start("an_unverified_user_signs_in_only_to_verify") else {
        return;
    };
    let server = server_with(&sink.url(), &["--require-verified-email"]).await;
    let api = server.api();
    // Signing in is enough to be mailed a code.
    let (user, _) = server.user("bob@example.com", "admin", PASSWORD).await;
    let first = mailed_code(&sink.wait_for("bob@example.com", "verification code").await);

    let (status, me) = user.get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email_verified"], false);
    let (status, body) = user.get("/api/agents").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code(&body), "email_unverified", "{body}");

    // Five wrong codes, and that code is void even when right.
    let wrong = if first == "000000" {
        "111111"
    } else {
        "000000"
    };
    for left in (0..5).rev() {
        let (status, body) = user.post("/api/auth/verify", json!({"code": wrong})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        if left > 0 {
            assert_eq!(code(&body), "wrong_code", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("{left} tr")),
                "{body}"
            );
        } else {
            assert_eq!(code(&body), "no_code", "{body}");
        }
    }
    let (status, body) = user.post("/api/auth/verify", json!({"code": first})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "no_code", "{body}");
    let (status, body) = user
        .post("/api/auth/verify", json!({"code": "12ab56"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // A new code, by mail; it verifies.
    let before = count_to(&sink, "bob@example.com");
    let (status, body) = user.post("/api/auth/verify/resend", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["expires_in"], 600);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count_to(&sink, "bob@example.com") == before {
        assert!(std::time::Instant::now() < deadline, "no second code");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mails = sink.messages();
    let second = mailed_code(mails.last().expect("a mail"));
    let (status, verified) = user.post("/api/auth/verify", json!({"code": second})).await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["email_verified"], true);
    let (status, body) = user.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = user.post("/api/auth/verify/resend", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "already_verified");

    // Only a user's session verifies; the owner key is not refused elsewhere (it has no
    // email).
    let (status, body) = api.post("/api/auth/verify", json!({"code": second})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = api.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK);
    let (_, audit) = api.get("/api/audit?action=user.email_verify").await;
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(1),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_are_limited_to_three_a_minute() {
    let Some(sink) = SmtpSink::start("resends_are_limited") else {
        return;
    };
    let server = server_with(&sink.url(), &[]).await;
    // Without --require-verified-email nothing is mailed at sign-in; the user asks.
    let (user, _) = server.user("cy@example.com", "member", PASSWORD).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, _) = user.post("/api/auth/verify/resend", json!({})).await;
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Only the last code works.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count_to(&sink, "cy@example.com") < 3 {
        assert!(std::time::Instant::now() < deadline, "three codes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mails = sink.messages();
    let codes: Vec<String> = mails.iter().map(|m| mailed_code(m)).collect();
    let last = codes.last().expect("code").clone();
    if codes[0] != last {
        let (status, body) = user
            .post("/api/auth/verify", json!({"code": codes[0]}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (status, body) = user.post("/api/auth/verify", json!({"code": last})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_mailed_with_the_token_the_answer_shows() {
    let Some(sink) = SmtpSink::start("invites_are_mailed") else {
        return;
    };
    let server = server_with(&sink.url(), &[]).await;
    let api = server.api();
    let (status, created) = api
        .post(
            "/api/users",
            json!({"email": "dee@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["invite_token"].as_str().expect("token").to_owned();
    let mail = sink
        .wait_for(
            "dee@example.com",
            &format!("{PUBLIC_URL}/ui/invite?token={token}"),
        )
        .await;
    assert!(
        mail.contains("Subject: [Outpost] You are invited"),
        "{mail}"
    );
    let (status, body) = api
        .anonymous(
            "/api/auth/accept-invite",
            json!({"token": token, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.login("dee@example.com", PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_down_delays_mail_and_an_admin_sees_why() {
    if !SmtpSink::available("a_relay_that_is_down_delays_mail") {
        return;
    }
    // A port nobody listens on yet: the relay comes up later on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server = server_with(&format!("smtp://127.0.0.1:{port}"), &[]).await;
    server.user("eve@example.com", "member", PASSWORD).await;
    server
        .user("refuse-frank@example.com", "member", PASSWORD)
        .await;
    let api = server.api();
    for email in ["eve@example.com", "refuse-frank@example.com"] {
        let (status, body) = api
            .anonymous("/api/auth/password-reset", json!({"email": email}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // Both wait for a retry, saying why.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, outbox) = api.get("/api/mail?state=pending").await;
        assert_eq!(status, StatusCode::OK, "{outbox}");
        let tried: Vec<&Value> = outbox["mail"]
            .as_array()
            .expect("mail")
            .iter()
            .filter(|m| m["attempts"].as_i64() >= Some(1))
            .collect();
        if tried.len() == 2 {
            for mail in tried {
                assert!(mail["last_error"].as_str().is_some(), "{mail}");
                assert!(mail["next_at"].as_str().is_some(), "{mail}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed attempt: {outbox}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The relay comes up: the retry delivers one, and the other is refused for good (550).
    let sink = SmtpSink::start_on("a_relay_that_is_down_delays_mail", port).expect("sink");
    let mail = sink.wait_for("eve@example.com", "/ui/reset?token=").await;
    reset_token(&mail);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, failed) = api.get("/api/mail?state=failed").await;
        if let Some(mail) = failed["mail"].as_array().and_then(|m| m.first()) {
            assert_eq!(mail["recipient"], "refuse-frank@example.com");
            assert!(
                mail["last_error"].as_str().unwrap_or("").contains("550"),
                "{mail}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not given up: {failed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Members do not read the outbox.
    let (member, _) = server.user("gil@example.com", "member", PASSWORD).await;
    let (status, _) = member.get("/api/mail").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[test]
fn mail_flags_that_cannot_work_stop_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = Command::new(bin_dir().join("outpost-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .env_remove("OUTPOST_DATABASE_URL")
            .env_remove("OUTPOST_PUBLIC_URL")
            .env_remove("OUTPOST_SMTP_URL")
            .output()
            .expect("outpost-server");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--smtp-url", "smtp://127.0.0.1:25"]);
    assert!(err.contains("--smtp-url needs --public-url"), "{err}");
    let err = run(&["--require-verified-email"]);
    assert!(
        err.contains("--require-verified-email needs --smtp-url"),
        "{err}"
    );
}
