//! Tenants over the real binaries (CONTRACT.md §9): signup only with `--allow-signup`, the server's
//! admin alone changes quotas, another tenant is a 404, and quotas set with `outpost-server
//! tenant set-quota` refuse a user and a new agent past them (`quota_exceeded`), never an
//! agent already registered.

use std::process::{Command, Stdio};

use outpost_e2e::{Agent, Server, ServerOptions, wait_for};

use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

/// `outpost-server tenant …` on the server's database: exit status and what it printed.
fn tenant_cli(server: &Server, args: &[&str]) -> (bool, String) {
    let out = Command::new(outpost_e2e::bin_dir().join("outpost-server"))
        .arg("tenant")
        .args(args)
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args(server.database_args())
        .env_remove("OUTPOST_DATABASE_URL")
        .env_remove("OUTPOST_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("running outpost-server tenant");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Without `--allow-signup` registering is refused and creates nothing; with
/// `OUTPOST_ALLOW_SIGNUP=1` it makes a tenant whose owner is signed in, sees its own tenant
/// but not the server's (404), and may not change quotas (403 for its own tenant, 404 for
/// another); the server's admin lists both and sets the new tenant's `max_users`, which then
/// refuses that tenant's next user with `quota_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_only_when_allowed_and_quotas_only_by_the_server_s_admin() {
    let body = json!({"email": "ada@acme.example", "password": PASSWORD, "tenant_name": "acme"});

    let closed = Server::start().await;
    let (status, refused) = closed
        .api()
        .anonymous("/api/auth/register", body.clone())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(code(&refused), "signup_disabled", "{refused}");
    let (_, tenants) = closed.api().get("/api/tenants").await;
    assert_eq!(tenants.as_array().map(Vec::len), Some(1), "{tenants}");
    drop(closed);

    let server = Server::start_with(ServerOptions {
        envs: vec![("OUTPOST_ALLOW_SIGNUP".into(), "1".into())],
        ..ServerOptions::default()
    })
    .await;
    let admin = server.api();
    let (_, me) = admin.get("/api/auth/me").await;
    let first = me["tenant_id"].as_str().expect("tenant id").to_owned();

    // Bad input names the field; nothing is made.
    for (bad, field) in [
        (
            json!({"email": "x@acme.example", "password": "short", "tenant_name": "acme"}),
            "password",
        ),
        (
            json!({"email": "x@acme.example", "password": PASSWORD, "tenant_name": " "}),
            "tenant_name",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD, "tenant_name": "acme"}),
            "email",
        ),
    ] {
        let (status, err) = admin.anonymous("/api/auth/register", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert!(message(&err).starts_with(field), "{field}: {err}");
    }

    let (status, session) = admin.anonymous("/api/auth/register", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{session}");
    assert_eq!(session["user"]["role"], "owner");
    assert_eq!(session["user"]["email"], "ada@acme.example");
    let acme = session["user"]["tenant_id"]
        .as_str()
        .expect("tenant")
        .to_owned();
    assert_ne!(acme, first, "a new tenant");
    let owner = admin.with_token(session["access_token"].as_str().expect("token"));
    let (status, me) = owner.get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["tenant_id"], acme.as_str());
    // The same email again, in another case: 409 naming it; no second tenant.
    let (status, taken) = admin
        .anonymous(
            "/api/auth/register",
            json!({"email": "ADA@acme.example", "password": PASSWORD, "tenant_name": "acme 2"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{taken}");
    assert!(message(&taken).contains("ADA@acme.example"), "{taken}");

    // The new tenant's owner: its own tenant, not another's, and no quota changes.
    let (status, own) = owner.get(&format!("/api/tenants/{acme}")).await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own["name"], "acme");
    assert_eq!(own["usage"]["users"], 1);
    assert_eq!(own["max_users"], Value::Null);
    for (status, body) in [
        owner.get(&format!("/api/tenants/{first}")).await,
        owner
            .patch(&format!("/api/tenants/{first}"), json!({"max_users": 100}))
            .await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    let (status, body) = owner
        .patch(&format!("/api/tenants/{acme}"), json!({"max_users": 100}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = owner.get("/api/tenants").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The server's admin: every tenant, the first first, and the quotas.
    let (status, all) = admin.get("/api/tenants").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let ids: Vec<&str> = all
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, [first.as_str(), acme.as_str()]);
    for (bad, field) in [
        (json!({"max_agents": -1}), "max_agents"),
        (json!({"max_users": 1_000_001}), "max_users"),
        (json!({"name": ""}), "name"),
        (json!({"max_schedules": "many"}), "max_schedules"),
    ] {
        let (status, err) = admin.patch(&format!("/api/tenants/{acme}"), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert!(message(&err).contains(field), "{field}: {err}");
    }
    let (status, patched) = admin
        .patch(
            &format!("/api/tenants/{acme}"),
            json!({"max_users": 1, "max_schedules": 20}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["max_users"], 1);
    assert_eq!(patched["max_schedules"], 20);
    assert_eq!(patched["max_agents"], Value::Null);

    let (status, refused) = owner
        .post(
            "/api/users",
            json!({"email": "bob@acme.example", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(code(&refused), "quota_exceeded", "{refused}");
    assert!(message(&refused).contains("max_users is 1"), "{refused}");

    // null is unlimited again; an absent field stays as it was.
    let (_, patched) = admin
        .patch(&format!("/api/tenants/{acme}"), json!({"max_users": null}))
        .await;
    assert_eq!(patched["max_users"], Value::Null);
    assert_eq!(patched["max_schedules"], 20);
    let (status, created) = owner
        .post(
            "/api/users",
            json!({"email": "bob@acme.example", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    // The new tenant's audit log: its creation by its owner, and the admin's changes.
    let (_, log) = owner.get("/api/audit?action=tenant").await;
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["tenant.update", "tenant.update", "tenant.create"],
        "{log}"
    );

    // Signup is limited as sign-ins are: 10 attempts a minute per address (5 made above).
    let mut statuses = Vec::new();
    for n in 0..6 {
        let (status, body) = admin
            .anonymous(
                "/api/auth/register",
                json!({"email": format!("z{n}@acme.example"), "password": "short", "tenant_name": "z"}),
            )
            .await;
        statuses.push((status, code(&body).to_owned()));
    }
    assert_eq!(
        statuses.last(),
        Some(&(StatusCode::TOO_MANY_REQUESTS, "rate_limited".to_owned())),
        "{statuses:?}"
    );
}

/// `outpost-server tenant set-quota` on the host: past `max_users` a user is refused (by the
/// API and by `user create`); past `max_agents` a new agent is refused with `quota_exceeded`
/// and retries slowly, while the registered agent keeps working and reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_set_on_the_host_refuse_users_and_new_agents_only() {
    let server = Server::start().await;
    let api = server.api();
    let (_, me) = api.get("/api/auth/me").await;
    let tenant = me["tenant_id"].as_str().expect("tenant id").to_owned();
    let (_, secret) = api.agent_key().await;
    let mut first = Agent::start(&server.url, &secret);
    let first_id = first.wait_online(&api).await;

    let (ok, text) = tenant_cli(
        &server,
        &["set-quota", "--tenant", "nope", "--max-users", "1"],
    );
    assert!(!ok && text.contains("no tenant nope"), "{text}");
    let (ok, text) = tenant_cli(
        &server,
        &["set-quota", "--tenant", &tenant, "--max-users", "x"],
    );
    assert!(!ok && text.contains("none"), "{text}");
    let (ok, text) = tenant_cli(
        &server,
        &[
            "set-quota",
            "--tenant",
            &tenant,
            "--max-agents",
            "1",
            "--max-users",
            "1",
        ],
    );
    assert!(ok, "{text}");
    let (ok, text) = tenant_cli(&server, &["ls", "--json"]);
    assert!(ok, "{text}");
    let listed: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(listed[0]["id"], tenant.as_str(), "{listed}");
    assert_eq!(listed[0]["max_agents"], 1);
    assert_eq!(listed[0]["max_users"], 1);
    assert_eq!(listed[0]["usage"]["agents"], 1);

    // Users: one fits, the next is refused from the host and over the API.
    let (ok, text) = server.user_create("ada@example.com", "owner", Some(PASSWORD));
    assert!(ok, "{text}");
    let (ok, text) = server.user_create("bob@example.com", "member", Some(PASSWORD));
    assert!(!ok && text.contains("max_users is 1"), "{text}");
    let (status, refused) = api
        .post(
            "/api/users",
            json!({"email": "bob@example.com", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(code(&refused), "quota_exceeded", "{refused}");

    // A second agent (a new id) is refused and told why; nothing of it is stored.
    let second = Agent::start(&server.url, &secret);
    let refusal = "quota_exceeded";
    wait_for(
        "the second agent's refusal",
        std::time::Duration::from_secs(30),
        || {
            let logs = second.logs();
            async move { logs.contains(refusal).then_some(()) }
        },
    )
    .await;
    let second_id = second.agent_id().await;
    let (status, _) = api.get(&format!("/api/agents/{second_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, agents) = api.get("/api/agents").await;
    assert_eq!(agents.as_array().map(Vec::len), Some(1), "{agents}");

    // The first agent works, and comes back after a restart.
    let (status, pong) = api.command(&first_id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{pong}");
    let connected_at = |agent: &Value| agent["connected_at"].as_str().map(str::to_owned);
    let (_, before) = api.get(&format!("/api/agents/{first_id}")).await;
    first.restart();
    wait_for(
        "the first agent's new connection",
        std::time::Duration::from_secs(30),
        || {
            let (api, path, before) = (
                api.clone(),
                format!("/api/agents/{first_id}"),
                before.clone(),
            );
            async move {
                let (_, now) = api.get(&path).await;
                (now["status"] == "online" && connected_at(&now) != connected_at(&before))
                    .then_some(())
            }
        },
    )
    .await;
    let (status, pong) = api.command(&first_id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{pong}");

    // The refused agent waits as for a refused key (30 s and more, jittered): a handful of
    // attempts at most in the seconds this test took, never a hot loop.
    let attempts = second
        .logs()
        .matches("the server refused the agent key")
        .count();
    assert!(
        (1..=3).contains(&attempts),
        "{attempts} attempts:\n{}",
        second.logs()
    );
}
