//! The accounts story as a new operator lives it (CONTRACT.md §9), over the real server, agent and
//! `outpost` CLI: the first owner is made on the server's host and signs in; they invite an
//! admin and a member, who accept and sign in; the member runs a manifest script on a real
//! agent and reads its output, and is refused what only admins may do; the admin reads the
//! audit log; the owner disables the member, whose unexpired access token stops working at
//! once; a refresh token replayed after its rotation revokes its whole sign-in.
//!
//! The CLI is used wherever it has the command; the REST API checks the statuses behind the
//! CLI's exit codes, with the access token the CLI saved.

use std::time::{Duration, Instant};

use outpost_e2e::{Agent, CliHome, Scripts, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";
const OWNER: &str = "ada@example.com";
const ADMIN: &str = "eve@example.com";
const MEMBER: &str = "bob@example.com";

/// `outpost args` succeeded; its stdout.
fn ok(cli: &CliHome, args: &[&str], stdin: Option<&str>) -> String {
    let (status, out, err) = cli.run(args, stdin);
    assert_eq!(status, 0, "outpost {args:?}: {out}{err}");
    out
}

/// `outpost --json args` succeeded; its JSON.
fn ok_json(cli: &CliHome, args: &[&str]) -> Value {
    let args: Vec<&str> = std::iter::once("--json")
        .chain(args.iter().copied())
        .collect();
    let out = ok(cli, &args, None);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("outpost {args:?}: {e}: {out}"))
}

/// The error envelope's message.
fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_invites_an_admin_and_a_member_who_run_read_and_lose_their_session() {
    let server = Server::start().await;
    let api = server.api();

    // 1. The first owner, made on the server's host, signs in with the CLI.
    let (created, text) = server.user_create(OWNER, "owner", Some(PASSWORD));
    assert!(created, "outpost-server user create: {text}");
    let owner = CliHome::new(&server);
    ok(
        &owner,
        &["login", "--email", OWNER, "--password-stdin"],
        Some(PASSWORD),
    );
    let me = ok_json(&owner, &["users", "ls"]);
    let me = &me.as_array().expect("users")[0];
    assert_eq!(
        (me["email"].as_str(), me["role"].as_str()),
        (Some(OWNER), Some("owner"))
    );
    let owner_id = me["id"].as_str().expect("id").to_owned();

    // 2. The owner invites an admin and a member; each accepts the invite and signs in.
    let mut invited = Vec::new();
    for (email, role) in [(ADMIN, "admin"), (MEMBER, "member")] {
        let answer = ok_json(&owner, &["users", "invite", email, "--role", role]);
        let token = answer["invite_token"].as_str().expect("invite token");
        assert!(token.starts_with("opi_"), "{answer}");
        assert_eq!(answer["user"]["invite_pending"], true, "{answer}");
        let cli = CliHome::new(&server);
        ok(
            &cli,
            &["users", "accept-invite", token, "--password-stdin"],
            Some(PASSWORD),
        );
        ok(
            &cli,
            &["login", "--email", email, "--password-stdin"],
            Some(PASSWORD),
        );
        invited.push((answer["user"]["id"].as_str().expect("id").to_owned(), cli));
    }
    let (admin_id, admin) = invited.remove(0);
    let (member_id, member) = invited.remove(0);
    let users = ok_json(&owner, &["users", "ls"]);
    for (id, role) in [(&admin_id, "admin"), (&member_id, "member")] {
        let user = users
            .as_array()
            .expect("users")
            .iter()
            .find(|u| u["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} in {users}"));
        assert_eq!(user["role"], role, "{user}");
        assert_eq!(user["invite_pending"], false, "{user}");
        assert_eq!(user["status"], "active", "{user}");
    }
    // What the CLI saved is what the API takes: each session's access token.
    let member_api = api.with_token(
        member.session()["access_token"]
            .as_str()
            .expect("member's access token"),
    );
    let admin_session = admin.session();
    let admin_api = api.with_token(admin_session["access_token"].as_str().expect("access"));
    let (_, whoami) = member_api.get("/api/auth/me").await;
    assert_eq!(whoami["role"], "member", "{whoami}");

    // 3. A real agent with a manifest script, on a key the owner made with the CLI.
    let key = ok(&owner, &["keys", "agent", "create", "web"], None);
    let key = key.trim();
    assert!(key.starts_with("opa_"), "{key}");
    let mut scripts = Scripts::new();
    scripts.add(
        "greet",
        r#"echo "hello $OUTPOST_PARAM_NAME from the manifest""#,
        json!({"description": "Say hello"}),
    );
    let agent = Agent::start_with(&server.url, key, None, scripts.env());
    let agent_id = agent.wait_online(&api).await;

    // The member runs it, and reads its output.
    let out = ok(
        &member,
        &["run", "greet", "--on", &agent_id, "--param", "NAME=bob"],
        None,
    );
    assert_eq!(out, "hello bob from the manifest\n");
    let jobs = ok_json(&member, &["jobs", "ls", "--script", "greet"]);
    let job = &jobs["jobs"][0];
    assert_eq!(job["status"], "succeeded", "{jobs}");
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    let logs = ok(&member, &["jobs", "logs", &job_id], None);
    assert_eq!(logs, "hello bob from the manifest\n");

    // The member is refused what admins do: agent keys, agents' tags, the audit log. The CLI
    // quotes the server's refusal (exit 1); the API says 403 `forbidden`, naming the rule and
    // the member's role.
    for (args, says) in [
        (
            vec!["keys", "agent", "create", "mine"],
            "POST /api/agents/keys: this needs the admin role or higher",
        ),
        (
            vec!["agents", "tag", "add", agent_id.as_str(), "db"],
            "PATCH /api/agents/{id}: this needs the admin role or higher",
        ),
        (
            vec!["audit", "ls"],
            "GET /api/audit: this needs the admin role or higher",
        ),
    ] {
        let (status, out, err) = member.run(&args, None);
        assert_eq!(status, 1, "outpost {args:?}: {out}{err}");
        assert!(
            err.contains("forbidden") && err.contains(says) && err.contains("member"),
            "outpost {args:?}: {err}"
        );
    }
    for ((status, body), says) in [
        (
            member_api
                .post("/api/agents/keys", json!({"name": "mine"}))
                .await,
            "POST /api/agents/keys: this needs the admin role or higher",
        ),
        (
            member_api
                .patch(&format!("/api/agents/{agent_id}"), json!({"tags": ["db"]}))
                .await,
            "PATCH /api/agents/{id}: this needs the admin role or higher",
        ),
        (
            member_api.get("/api/audit").await,
            "GET /api/audit: this needs the admin role or higher",
        ),
    ] {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        assert!(
            message(&body).contains(says) && message(&body).contains("member"),
            "{body}"
        );
    }
    // Nothing was changed by the refusals.
    let (_, listed) = api.get(&format!("/api/agents/{agent_id}")).await;
    assert!(
        !listed["tags"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t == "db")),
        "{listed}"
    );

    // The admin reads the audit log: the member's job, the owner's invites, each accept by the
    // invited user.
    let log = ok_json(&admin, &["audit", "ls", "--limit", "200"]);
    let rows = log["entries"].as_array().expect("entries");
    let row = |action: &str, target: &str| {
        rows.iter()
            .find(|r| r["action"] == action && r["target"]["id"] == target)
            .unwrap_or_else(|| panic!("no {action} of {target} in {log}"))
    };
    let actor = |id: &str, label: &str| json!({"kind": "user", "id": id, "label": label});
    let trigger = row("job.trigger", &job_id);
    assert_eq!(trigger["actor"], actor(&member_id, MEMBER), "{trigger}");
    assert_eq!(trigger["address"], "127.0.0.1", "{trigger}");
    for (id, email, role) in [(&admin_id, ADMIN, "admin"), (&member_id, MEMBER, "member")] {
        let invite = row("user.create", id);
        assert_eq!(invite["actor"], actor(&owner_id, OWNER), "{invite}");
        assert_eq!(
            (&invite["detail"]["email"], &invite["detail"]["role"]),
            (&json!(email), &json!(role)),
            "{invite}"
        );
        let accepted = row("user.invite_accept", id);
        assert_eq!(accepted["actor"], actor(id, email), "{accepted}");
    }
    // The member's refusals changed nothing, so they left no row.
    assert!(
        !rows
            .iter()
            .any(|r| r["action"] == "agent_key.create" && r["actor"]["id"] == member_id.as_str()),
        "{log}"
    );
    let (status, check) = admin_api.get("/api/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{check}");
    assert_eq!(check["ok"], true, "{check}");

    // 4. The owner disables the member: the member's very next request, with an access token
    // that has minutes left, is 401; the CLI says so (exit 77) and cannot refresh either.
    let expires_at = member.session()["access_expires_at"]
        .as_integer()
        .expect("access_expires_at");
    assert!(
        expires_at > chrono::Utc::now().timestamp() + 60,
        "the access token still has minutes to live: {expires_at}"
    );
    ok(&owner, &["users", "disable", MEMBER], None);
    let (status, body) = member_api.get("/api/agents").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert_eq!(message(&body), "this user is disabled", "{body}");
    let (status, out, err) = member.run(&["agents", "ls"], None);
    assert_eq!(status, 77, "a disabled member: {out}{err}");
    assert!(err.contains("unauthorized"), "{err}");
    let disabled = row_after(&admin_api, "user.disable", &member_id).await;
    assert_eq!(disabled["actor"], actor(&owner_id, OWNER), "{disabled}");
    // The admin is untouched.
    assert_eq!(admin_api.get("/api/agents").await.0, StatusCode::OK);

    // 5. A refresh token replayed after its rotation: the admin's session rotates once; the
    // retired token presented again past the grace (a span of the server's clock, 5 s from
    // its retirement) is a theft: 401, and the whole sign-in is revoked, so the token the
    // rotation produced is refused too.
    let retired = admin_session["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let refresh = |token: String| {
        let api = api.clone();
        async move {
            api.anonymous("/api/auth/refresh", json!({"refresh_token": token}))
                .await
        }
    };
    let (status, rotated) = refresh(retired.clone()).await;
    // The server retired the token before it answered: the grace ends at most 5 s from now.
    let answered = Instant::now();
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let rotated_token = rotated["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_owned();
    assert_ne!(rotated_token, retired);
    let rotated_api = api.with_token(rotated["access_token"].as_str().expect("access"));
    assert_eq!(rotated_api.get("/api/auth/me").await.0, StatusCode::OK);
    // Each refresh is a sign-in attempt (10 a minute per address, and this story has made
    // seven or eight already), so the replay is not
    // polled from the start of the grace: it is presented once the grace has ended by this
    // side's clock, and again (up to 30 s) only if the server still honoured it.
    let grace_end = answered + Duration::from_secs(5) + Duration::from_millis(100);
    let deadline = answered + Duration::from_secs(30);
    let mut at = grace_end;
    let body = loop {
        tokio::time::sleep_until(at.into()).await;
        let (status, body) = refresh(retired.clone()).await;
        if status == StatusCode::UNAUTHORIZED {
            break body;
        }
        assert_eq!(status, StatusCode::OK, "a replay within the grace: {body}");
        assert!(
            Instant::now() < deadline,
            "a replay still honoured after 30 s"
        );
        at = Instant::now() + Duration::from_secs(1);
    };
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert_eq!(
        message(&body),
        "this refresh token was already used: every session of that sign-in is revoked; \
         sign in again",
        "{body}"
    );
    let (status, body) = refresh(rotated_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        message(&body),
        "the refresh token is unknown, expired or revoked: sign in again",
        "{body}"
    );
    drop(agent);
}

/// The newest audit row of `action` on `target`, as `api` reads it.
async fn row_after(api: &outpost_e2e::Api, action: &str, target: &str) -> Value {
    let (status, page) = api
        .get(&format!("/api/audit?action={action}&limit=200"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|r| r["target"]["id"] == target)
        .cloned()
        .unwrap_or_else(|| panic!("no {action} of {target} in {page}"))
}
