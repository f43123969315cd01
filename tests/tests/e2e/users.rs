//! Users and sessions over the real server (CONTRACT.md §9): sign-in, access tokens that are checked
//! strictly and against the user's current state, refresh rotation with reuse detection,
//! invites, the last-owner rule, roles and tenants. The last test drives the real `outpost`
//! CLI from the first owner to a member who may read but not manage users.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outpost_e2e::{Api, CliHome, Server};
use outpost_store::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
}

fn b64_decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_answers_one_401_for_every_failure_and_a_session_otherwise() {
    let server = Server::start().await;
    let (owner, _) = server.user("Ada@Example.com", "owner", PASSWORD).await;
    let api = server.api();

    // Emails are case-insensitive; the session has both tokens and the user.
    let (status, session) = api
        .anonymous(
            "/api/auth/login",
            json!({"email": "ada@example.COM", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["expires_in"], 900);
    assert_eq!(session["token_type"], "Bearer");
    assert!(
        session["refresh_token"]
            .as_str()
            .expect("refresh")
            .starts_with("opr_")
    );
    assert_eq!(session["user"]["role"], "owner");
    assert!(session["user"].get("password_hash").is_none());
    let claims = b64_decode(
        session["access_token"]
            .as_str()
            .expect("jwt")
            .split('.')
            .nth(1)
            .expect("payload"),
    );
    for claim in ["sub", "tid", "role", "iat", "exp", "jti"] {
        assert!(claims.get(claim).is_some(), "{claim} in {claims}");
    }
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        900
    );

    // me, with the access token.
    let (status, me) = owner.get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["kind"], "user");
    assert_eq!(me["role"], "owner");
    assert_eq!(me["user"]["email"], "Ada@Example.com");
    let (_, me) = api.get("/api/auth/me").await;
    assert_eq!(me["kind"], "api_key");

    // Wrong password, unknown email, short password, empty: the same 401 and message, and
    // the unknown email costs about what a wrong password does (both hash).
    let mut messages = Vec::new();
    let mut times = Vec::new();
    for (email, password) in [
        ("ada@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
        ("ada@example.com", "short"),
        ("", ""),
    ] {
        let started = Instant::now();
        let (status, body) = api
            .anonymous(
                "/api/auth/login",
                json!({"email": email, "password": password}),
            )
            .await;
        times.push(started.elapsed());
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{email}: {body}");
        assert_eq!(code(&body), "unauthorized");
        messages.push(body["error"]["message"].clone());
    }
    assert!(messages.iter().all(|m| *m == messages[0]), "{messages:?}");
    assert_eq!(messages[0], "wrong email or password");
    // An unknown email is not answered much faster than a known one (argon2 ran for both).
    assert!(
        times[1] * 4 >= times[0],
        "unknown email {:?} vs wrong password {:?}",
        times[1],
        times[0]
    );

    // A body missing the password is a 400 naming it.
    let (status, body) = api
        .anonymous("/api/auth/login", json!({"email": "ada@example.com"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("password")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_are_refused_when_tampered_forged_or_expired() {
    let server = Server::start().await;
    let (owner, _) = server.user("ada@example.com", "owner", PASSWORD).await;
    let (member, _) = server.user("bob@example.com", "member", PASSWORD).await;
    let token = owner.token().to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    let header = b64_decode(parts[0]);
    let mut claims = b64_decode(parts[1]);
    assert_eq!(header["alg"], "HS256");
    let (status, _) = owner.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK);

    let mut forged = Vec::new();
    // The signature changed in one byte.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
    sig[5] ^= 0x40;
    forged.push(format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(&sig)
    ));
    // A member's token with the role claim raised, signature kept.
    let member_parts: Vec<&str> = member.token().split('.').collect();
    let mut raised = b64_decode(member_parts[1]);
    raised["role"] = json!("owner");
    forged.push(format!(
        "{}.{}.{}",
        member_parts[0],
        b64(&raised),
        member_parts[2]
    ));
    // alg none, without and with the old signature.
    let none = b64(&json!({"alg": "none", "typ": "JWT"}));
    forged.push(format!("{none}.{}.", parts[1]));
    forged.push(format!("{none}.{}.{}", parts[1], parts[2]));
    // alg switched.
    for alg in ["HS512", "RS256", "ES256"] {
        let switched = b64(&json!({"alg": alg, "typ": "JWT"}));
        forged.push(format!("{switched}.{}.{}", parts[1], parts[2]));
    }
    // Expired (signed correctly would need the key: the claim is changed, which breaks the
    // signature too; the expiry itself is covered by the unit tests of `jwt`).
    claims["exp"] = json!(claims["iat"].as_i64().expect("iat") - 1);
    forged.push(format!("{}.{}.{}", parts[0], b64(&claims), parts[2]));
    // Garbage.
    forged.push("a.b.c".into());
    forged.push(format!("{}.{}", parts[0], parts[1]));
    for bad in &forged {
        for path in ["/api/agents", "/api/users", "/api/auth/me"] {
            let (status, body) = owner.with_token(bad).get(path).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad} on {path}: {body}");
            assert_eq!(code(&body), "unauthorized");
        }
    }
    // The member's own token still gets a member's answer, not an owner's.
    let (status, _) = member.get("/api/users").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A token that really expired: made with the key the server derives from its master key.
    let master = std::fs::read_to_string(server.data_dir.join("master.key")).expect("master key");
    let master = outpost_store::seal::MasterKey::parse(&master).expect("parse");
    let signer = outpost_core::jwt::Signer::new(
        &master.derive(outpost_core::service::ACCESS_TOKEN_KEY_LABEL),
    );
    let mut expired: outpost_core::jwt::Claims =
        serde_json::from_value(b64_decode(parts[1])).expect("claims");
    let now = chrono::Utc::now().timestamp();
    expired.iat = now - 1000;
    expired.exp = now - 100;
    let (status, body) = owner
        .with_token(&signer.sign(&expired))
        .get("/api/agents")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("expired"),
        "{body}"
    );
    // The same signer with a valid expiry is accepted: the key is the server's.
    expired.exp = now + 100;
    let (status, body) = owner
        .with_token(&signer.sign(&expired))
        .get("/api/agents")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Agent keys stay refused on /api, access tokens or not.
    let (_, agent_key) = server.api().agent_key().await;
    let (status, _) = owner.with_token(&agent_key).get("/api/agents").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_a_replayed_token_revokes_the_family() {
    let server = Server::start().await;
    let (_, first) = server.user("ada@example.com", "owner", PASSWORD).await;
    let api = server.api();
    let refresh = |token: String| {
        let api = api.clone();
        async move {
            api.anonymous("/api/auth/refresh", json!({"refresh_token": token}))
                .await
        }
    };

    // Rotation: a new pair, a new refresh token; the new access token works.
    let retired = Instant::now();
    let (status, second) = refresh(first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second_token = second["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(second_token, first);
    let (status, _) = api
        .with_token(second["access_token"].as_str().expect("access"))
        .get("/api/agents")
        .await;
    assert_eq!(status, StatusCode::OK);
    // Within the grace (two tabs at once) the retired token still gets a pair of the family.
    let (status, sibling) = refresh(first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{sibling}");

    // Past the grace (5 s from the token's retirement), the retired token is a theft: 401,
    // and the family is revoked, so the tokens issued from it stop working too. The grace is
    // a span of the server's clock, so this waits it out rather than polling: each refresh
    // is a sign-in attempt, 10 a minute per address (`Limits::auth_attempt`).
    tokio::time::sleep_until((retired + Duration::from_millis(5_500)).into()).await;
    let (status, body) = refresh(first.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("already used")
    );
    for token in [
        second_token,
        sibling["refresh_token"].as_str().expect("r").to_owned(),
    ] {
        let (status, _) = refresh(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // Logout revokes the family of a fresh login; logging out again changes nothing.
    let (_, third) = server.login("ada@example.com", PASSWORD).await;
    let (status, next) = refresh(third.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let next = next["refresh_token"].as_str().expect("r").to_owned();
    let (status, _) = api
        .anonymous("/api/auth/logout", json!({"refresh_token": third}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = refresh(next.clone()).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the family's newest token is revoked"
    );
    let (status, _) = api
        .anonymous("/api/auth/logout", json!({"refresh_token": next}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Sign-in attempts are limited per client address (CONTRACT.md §9: 10 a minute): bad refresh tokens
/// and wrong passwords are refused one by one with 401 and count; past ten, even the right
/// password answers 429 naming the limit, and nothing about the account is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_sign_in_attempt_in_a_minute_is_refused() {
    let server = Server::start().await;
    // Made on the server's host: no sign-in attempt.
    let (ok, text) = server.user_create("ada@example.com", "owner", Some(PASSWORD));
    assert!(ok, "user create: {text}");
    let api = server.api();
    for bad in ["", "opr_unknown", "not a token"] {
        let (status, _) = api
            .anonymous("/api/auth/refresh", json!({"refresh_token": bad}))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    for _ in 0..7 {
        let (status, body) = api
            .anonymous(
                "/api/auth/login",
                json!({"email": "ada@example.com", "password": "wrong password!"}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, body) = api
        .anonymous(
            "/api/auth/login",
            json!({"email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sign-in attempts")),
        "{body}"
    );
    // Each refused sign-in of a known email is in the tenant's audit log, by that user, from
    // this address; the refusal past the limit is not a sign-in attempt that was judged.
    let (status, page) = api.get("/api/audit?action=auth.login_failed").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let entries = page["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 7, "{page}");
    for entry in entries {
        assert_eq!(entry["actor"]["kind"], "user", "{entry}");
        assert_eq!(entry["actor"]["label"], "ada@example.com", "{entry}");
        assert_eq!(entry["address"], "127.0.0.1", "{entry}");
    }
    let (status, check) = api.get("/api/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(check["ok"], true, "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_deleted_or_demoted_user_loses_rights_on_the_next_request() {
    let server = Server::start().await;
    let (owner, _) = server.user("ada@example.com", "owner", PASSWORD).await;
    let (admin, admin_refresh) = server.user("eve@example.com", "admin", PASSWORD).await;
    let (member, _) = server.user("bob@example.com", "member", PASSWORD).await;
    let id_of = |api: &Api| {
        let api = api.clone();
        async move {
            let (_, me) = api.get("/api/auth/me").await;
            me["user"]["id"].as_str().expect("id").to_owned()
        }
    };
    let (admin_id, member_id) = (id_of(&admin).await, id_of(&member).await);

    // The admin may read users and the webhook secret; demoted to member, at once not.
    assert_eq!(admin.get("/api/users").await.0, StatusCode::OK);
    assert_eq!(
        admin.get("/api/webhooks/signing-secret").await.0,
        StatusCode::OK
    );
    let (status, body) = owner
        .patch(&format!("/api/users/{admin_id}"), json!({"role": "member"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "member");
    assert_eq!(admin.get("/api/users").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        admin.get("/api/webhooks/signing-secret").await.0,
        StatusCode::FORBIDDEN
    );
    let (_, me) = admin.get("/api/auth/me").await;
    assert_eq!(me["role"], "member", "the row's role, not the token's");

    // Disabled: the next request is 401, and so is refreshing and signing in.
    let (status, _) = owner
        .patch(&format!("/api/users/{admin_id}"), json!({"disabled": true}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(admin.get("/api/agents").await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .api()
        .anonymous("/api/auth/refresh", json!({"refresh_token": admin_refresh}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .api()
        .anonymous(
            "/api/auth/login",
            json!({"email": "eve@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Enabled again, they sign in anew.
    owner
        .patch(
            &format!("/api/users/{admin_id}"),
            json!({"disabled": false}),
        )
        .await;
    server.login("eve@example.com", PASSWORD).await;

    // Deleted: the next request is 401.
    assert_eq!(member.get("/api/agents").await.0, StatusCode::OK);
    let (status, _) = owner.delete(&format!("/api/users/{member_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(member.get("/api/agents").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        owner.get(&format!("/api/users/{member_id}")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_work_once_and_owners_alone_manage_users() {
    let server = Server::start().await;
    let (owner, _) = server.user("ada@example.com", "owner", PASSWORD).await;
    let owner_id = {
        let (_, me) = owner.get("/api/auth/me").await;
        me["user"]["id"].as_str().expect("id").to_owned()
    };

    // An owner invites; the invite is shown once, the user has no password yet.
    let (status, created) = owner
        .post(
            "/api/users",
            json!({"email": "bob@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let invite = created["invite_token"].as_str().expect("invite").to_owned();
    assert!(invite.starts_with("opi_"));
    assert_eq!(created["user"]["invite_pending"], true);
    let bob_id = created["user"]["id"].as_str().expect("id").to_owned();
    // The same email again (any case) is a conflict.
    let (status, body) = owner
        .post(
            "/api/users",
            json!({"email": "BOB@example.com", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "email_taken");
    // Bad input names the field.
    for (body, field) in [
        (json!({"email": "not-an-email", "role": "member"}), "email"),
        (json!({"email": "x@y", "role": "king"}), "role"),
    ] {
        let (status, answer) = owner.post("/api/users", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .expect("m")
                .contains(field),
            "{answer}"
        );
    }

    // Not yet accepted: no sign-in.
    let api = server.api();
    let (status, _) = api
        .anonymous(
            "/api/auth/login",
            json!({"email": "bob@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A short password is refused, naming the rule, and does not use the invite.
    let (status, body) = api
        .anonymous(
            "/api/auth/accept-invite",
            json!({"token": invite, "password": "short"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("12 characters")
    );
    let (status, body) = api
        .anonymous(
            "/api/auth/accept-invite",
            json!({"token": invite, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["invite_pending"], false);
    // Used twice: refused, and the password set the first time stays.
    let (status, body) = api
        .anonymous(
            "/api/auth/accept-invite",
            json!({"token": invite, "password": "another password!"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (member, _) = server.login("bob@example.com", PASSWORD).await;

    // A member reads agents but manages no user, nor reads them.
    assert_eq!(member.get("/api/agents").await.0, StatusCode::OK);
    for (status, body) in [
        member.get("/api/users").await,
        member.get(&format!("/api/users/{owner_id}")).await,
        member
            .post(
                "/api/users",
                json!({"email": "c@example.com", "role": "member"}),
            )
            .await,
        member
            .patch(&format!("/api/users/{bob_id}"), json!({"role": "owner"}))
            .await,
        member.delete(&format!("/api/users/{owner_id}")).await,
    ] {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(code(&body), "forbidden");
    }
    // An admin reads users but does not change them.
    owner
        .patch(&format!("/api/users/{bob_id}"), json!({"role": "admin"}))
        .await;
    assert_eq!(member.get("/api/users").await.0, StatusCode::OK);
    let (status, _) = member
        .patch(&format!("/api/users/{owner_id}"), json!({"disabled": true}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The last active owner: neither demoted, disabled nor deleted.
    for (status, body) in [
        owner
            .patch(&format!("/api/users/{owner_id}"), json!({"role": "admin"}))
            .await,
        owner
            .patch(&format!("/api/users/{owner_id}"), json!({"disabled": true}))
            .await,
        owner.delete(&format!("/api/users/{owner_id}")).await,
    ] {
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(code(&body), "last_owner");
    }
    // With a second owner, the first may step down.
    owner
        .patch(&format!("/api/users/{bob_id}"), json!({"role": "owner"}))
        .await;
    let (status, body) = owner
        .patch(&format!("/api/users/{owner_id}"), json!({"role": "member"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // And now bob is the last one.
    let (status, body) = member.delete(&format!("/api/users/{bob_id}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // An empty patch changes nothing; an unknown field is a 400 naming it.
    let (status, body) = member
        .patch(&format!("/api/users/{owner_id}"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "member");
    let (status, body) = member
        .patch(&format!("/api/users/{owner_id}"), json!({"admin": true}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("admin"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_users_are_not_found() {
    let server = Server::start().await;
    let (owner_a, _) = server.user("ada@example.com", "owner", PASSWORD).await;
    let store = Store::open(&server.database()).await.expect("open store");
    let (tenant_b, _) = store.create_tenant("other", None).await.expect("tenant");
    drop(store);
    let out = Command::new(outpost_e2e::bin_dir().join("outpost-server"))
        .args([
            "user",
            "create",
            "--email",
            "zed@example.com",
            "--role",
            "owner",
        ])
        .args(["--tenant", &tenant_b, "--password-stdin", "--data-dir"])
        .arg(&server.data_dir)
        .args(server.database_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(format!("{PASSWORD}\n").as_bytes())?;
            drop(stdin);
            child.wait_with_output()
        })
        .expect("user create");
    assert!(out.status.success(), "{out:?}");
    let (owner_b, _) = server.login("zed@example.com", PASSWORD).await;
    let (_, me_b) = owner_b.get("/api/auth/me").await;
    assert_eq!(me_b["tenant_id"], tenant_b.as_str());
    let b_id = me_b["user"]["id"].as_str().expect("id").to_owned();

    // A sees only its own users, and every one of B's ids is a 404.
    let (_, users) = owner_a.get("/api/users").await;
    assert_eq!(users.as_array().expect("list").len(), 1, "{users}");
    for (status, body) in [
        owner_a.get(&format!("/api/users/{b_id}")).await,
        owner_a
            .patch(&format!("/api/users/{b_id}"), json!({"role": "member"}))
            .await,
        owner_a.delete(&format!("/api/users/{b_id}")).await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // B still works.
    assert_eq!(owner_b.get("/api/auth/me").await.0, StatusCode::OK);
    // The same email cannot be taken in another tenant either.
    let (status, body) = owner_a
        .post(
            "/api/users",
            json!({"email": "Zed@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// The CLI from the first owner to a member: `outpost-server user create` makes the owner,
/// `outpost login` signs in, `outpost users invite` invites a member who accepts with
/// `outpost users accept-invite`, lists agents, and is refused creating users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_owner_invites_a_member_through_the_cli() {
    let server = Server::start().await;
    let (ok, text) = server.user_create("ada@example.com", "owner", None);
    assert!(ok, "{text}");
    // Without a password the tool prints an invite; accept it through the CLI.
    let owner_invite = text
        .split_whitespace()
        .find(|w| w.starts_with("opi_"))
        .unwrap_or_else(|| panic!("no invite in {text}"))
        .to_owned();
    let ada = CliHome::new(&server);
    let run = ada.run(&["users", "accept-invite", &owner_invite], Some(PASSWORD));
    assert_eq!(run.0, 0, "{run:?}");
    let run = ada.run(
        &["login", "--email", "ada@example.com", "--password-stdin"],
        Some(PASSWORD),
    );
    assert_eq!(run.0, 0, "{run:?}");
    // The config file keeps the session, privately.
    let file = ada.home.path().join("config/outpost/config.toml");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file)
        .expect("config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = std::fs::read_to_string(&file).expect("config");
    assert!(config.contains("refresh_token = \"opr_"), "{config}");

    let run = ada.run(
        &[
            "--json",
            "users",
            "invite",
            "bob@example.com",
            "--role",
            "member",
        ],
        None,
    );
    assert_eq!(run.0, 0, "{run:?}");
    let invited: Value = serde_json::from_str(&run.1).expect("json");
    let invite = invited["invite_token"].as_str().expect("invite").to_owned();
    let run = ada.run(&["users", "ls"], None);
    assert_eq!(run.0, 0, "{run:?}");
    assert!(
        run.1.contains("bob@example.com") && run.1.contains("invited"),
        "{run:?}"
    );

    let bob = CliHome::new(&server);
    let run = bob.run(
        &["users", "accept-invite", &invite, "--password-stdin"],
        Some(PASSWORD),
    );
    assert_eq!(run.0, 0, "{run:?}");
    let run = bob.run(&["login", "--email", "bob@example.com"], Some(PASSWORD));
    assert_eq!(run.0, 0, "{run:?}");
    let run = bob.run(&["agents", "ls"], None);
    assert_eq!(run.0, 0, "{run:?}");
    let run = bob.run(&["users", "invite", "carol@example.com"], None);
    assert_eq!(run.0, 1, "{run:?}");
    assert!(run.2.contains("forbidden"), "{run:?}");

    // An expired access token is refreshed by the CLI by itself, and the rotated refresh
    // token is saved: pretend the saved one expired.
    let config = std::fs::read_to_string(bob.config()).expect("config");
    let before: toml::Value = toml::from_str(&config).expect("toml");
    let aged = config
        .lines()
        .map(|l| {
            if l.starts_with("access_expires_at") {
                "access_expires_at = 0".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(bob.config(), aged).expect("write");
    let run = bob.run(&["agents", "ls"], None);
    assert_eq!(run.0, 0, "{run:?}");
    let after: toml::Value =
        toml::from_str(&std::fs::read_to_string(bob.config()).expect("config")).expect("toml");
    assert_ne!(
        before["refresh_token"], after["refresh_token"],
        "rotated and saved"
    );

    // The owner demotes nothing of the last owner, and sets bob's role.
    let run = ada.run(&["users", "set-role", "bob@example.com", "admin"], None);
    assert_eq!(run.0, 0, "{run:?}");
    let run = bob.run(&["users", "ls"], None);
    assert_eq!(run.0, 0, "admins read users: {run:?}");
    let run = ada.run(&["users", "disable", "bob@example.com"], None);
    assert_eq!(run.0, 0, "{run:?}");
    let run = bob.run(&["agents", "ls"], None);
    assert_eq!(run.0, 77, "a disabled user is refused: {run:?}");
    let run = ada.run(&["users", "rm", "bob@example.com"], None);
    assert_eq!(run.0, 0, "{run:?}");

    // Logout ends the session on the server too.
    let session: toml::Value =
        toml::from_str(&std::fs::read_to_string(ada.config()).expect("config")).expect("toml");
    let run = ada.run(&["logout"], None);
    assert_eq!(run.0, 0, "{run:?}");
    assert!(!ada.config().exists());
    let (status, _) = server
        .api()
        .anonymous(
            "/api/auth/refresh",
            json!({"refresh_token": session["refresh_token"].as_str().expect("r")}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The API key path still works.
    let run = ada.run_with_key(&["agents", "ls"]);
    assert_eq!(run.0, 0, "{run:?}");
}

/// A member reads agents and runs and cancels jobs (CONTRACT.md §9) but manages nothing: agent keys,
/// agents' tags, forgetting agents and control commands are refused with 403 naming the role,
/// wherever they are asked (one agent, a job); an admin may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_runs_but_does_not_manage_the_fleet() {
    let server = Server::start().await;
    let (member, _) = server.user("bob@example.com", "member", PASSWORD).await;
    let (admin, _) = server.user("eve@example.com", "admin", PASSWORD).await;
    let agent = "0190d7b6-0000-7000-8000-000000000001";
    let refused = [
        member
            .post("/api/agents/keys", json!({"name": "member's"}))
            .await,
        member
            .patch(&format!("/api/agents/{agent}"), json!({"tags": ["x"]}))
            .await,
        member.delete(&format!("/api/agents/{agent}")).await,
        member
            .post(
                &format!("/api/agents/{agent}/command"),
                json!({"command": "restart"}),
            )
            .await,
        member
            .post(
                "/api/jobs",
                json!({"command": "redeploy", "target": {"all": true}}),
            )
            .await,
    ];
    for (status, body) in refused {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("member")),
            "{body}"
        );
    }
    // What a member may do is not refused for its role (a job with no agent to reach is
    // refused for that, 422).
    assert_eq!(member.get("/api/agents").await.0, StatusCode::OK);
    let (status, body) = member
        .post(
            "/api/jobs",
            json!({"command": "ping", "target": {"all": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // An admin manages agent keys.
    let (status, body) = admin
        .post("/api/agents/keys", json!({"name": "admin's"}))
        .await;
    assert!(status.is_success(), "{status} {body}");
}
