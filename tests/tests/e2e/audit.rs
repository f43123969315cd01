//! The audit log over the real server, agent and CLI: every mutating route leaves its row with
//! the caller, its address, the action and the target; nothing secret is recorded; members are
//! refused the log; another tenant's rows are never seen; the chain verifies, and a chain cut
//! at its base in the database while the server is stopped is reported.

use outpost_e2e::{Agent, Api, Server};
use outpost_store::Store;
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

/// Every row of the caller's log, oldest first.
async fn rows(api: &Api) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/audit?limit=3&cursor={c}"),
            None => "/api/audit?limit=3".to_owned(),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        all.extend(page["entries"].as_array().expect("entries").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    all.reverse();
    all
}

fn outpost(server: &Server, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(outpost_e2e::bin_dir().join("outpost"))
        .args(args)
        .env("OUTPOST_URL", &server.url)
        .env("OUTPOST_TOKEN", token)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("outpost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_and_trigger_is_recorded_with_who_where_and_what() {
    let server = Server::start().await;
    let api = server.api();
    let store = Store::open(&server.database()).await.expect("open store");
    let owner = store
        .api_key_by_hash(&outpost_store::credentials::hash_secret(&server.admin_key))
        .await
        .expect("read")
        .expect("owner key");
    let member_key = store
        .create_api_key(&owner.tenant_id, "a member", "member")
        .await
        .expect("member key");
    let admin_key = store
        .create_api_key(&owner.tenant_id, "an admin", "admin")
        .await
        .expect("admin key");
    let member = api.with_token(&member_key);

    // An agent to send to, on a key of its own.
    let (fleet_key, fleet_secret) = api.agent_key().await;
    let agent = Agent::start(&server.url, &fleet_secret);
    let agent_id = agent.wait_online(&api).await;

    // Every mutating route, once (the expected row: action, target type, target id).
    let mut expected: Vec<(&str, &str, String)> =
        vec![("agent_key.create", "agent_key", fleet_key.clone())];
    let (key_id, _) = api
        .create_key(json!({"name": "spare", "tags": ["x"]}))
        .await;
    expected.push(("agent_key.create", "agent_key", key_id.clone()));
    let key_path = format!("/api/agents/keys/{key_id}");
    for (body, action) in [
        (json!({"name": "renamed"}), "agent_key.update"),
        (json!({"status": "disabled"}), "agent_key.disable"),
        (json!({"status": "active"}), "agent_key.enable"),
    ] {
        let (status, answer) = api.patch(&key_path, body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        expected.push((action, "agent_key", key_id.clone()));
    }
    let (status, answer) = api.post(&format!("{key_path}/regenerate"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    expected.push(("agent_key.regenerate", "agent_key", key_id.clone()));
    let (status, answer) = api.command(&agent_id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    expected.push(("command.send", "agent", agent_id.clone()));
    let fleet_path = format!("/api/agents/keys/{fleet_key}");
    let (status, answer) = api.post(&format!("{fleet_path}/ping"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    expected.push(("command.fan_out", "agent_key", fleet_key.clone()));
    let (status, answer) = api
        .post(
            &format!("{fleet_path}/command"),
            json!({"command": "echo", "data": {"token": "not-for-the-log"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    expected.push(("command.fan_out", "agent_key", fleet_key.clone()));
    // A member triggers a job: recorded as the member.
    let (status, job) = member
        .job(
            json!({"command": "echo", "data": {"token": "not-for-the-log"}, "target": {"agents": [agent_id]}}),
            Some(10),
        )
        .await;
    assert!(status.is_success(), "{job}");
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    expected.push(("job.trigger", "job", job_id.clone()));
    let (status, answer) = api
        .post(&format!("/api/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert!(status.is_success(), "{answer}");
    expected.push(("job.cancel", "job", job_id.clone()));
    let agent_path = format!("/api/agents/{agent_id}");
    let (status, answer) = api.patch(&agent_path, json!({"tags": ["web"]})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    expected.push(("agent.update", "agent", agent_id.clone()));
    let (status, answer) = api
        .post("/api/webhooks/signing-secret/rotate", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    expected.push(("webhook_secret.rotate", "tenant", owner.tenant_id.clone()));
    let (status, answer) = api.delete(&key_path).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    expected.push(("agent_key.delete", "agent_key", key_id.clone()));
    // Through the CLI, too.
    let out = outpost(
        &server,
        &server.admin_key,
        &["keys", "agent", "create", "from-cli", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_key: Value = serde_json::from_slice(&out.stdout).expect("json");
    expected.push((
        "agent_key.create",
        "agent_key",
        cli_key["id"].as_str().expect("id").to_owned(),
    ));
    drop(agent);
    let (status, answer) = api.delete(&agent_path).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    expected.push(("agent.delete", "agent", agent_id.clone()));

    // The log, read by an admin, page by page.
    let admin = api.with_token(&admin_key);
    let all = rows(&admin).await;
    assert_eq!(all[0]["action"], "tenant.create", "{:?}", all[0]);
    assert_eq!(all[0]["actor"]["kind"], "system");
    let recorded = &all[1..];
    let got: Vec<(String, String, String)> = recorded
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default().to_owned(),
                r["target"]["type"].as_str().unwrap_or_default().to_owned(),
                r["target"]["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, t, i)| ((*a).to_owned(), (*t).to_owned(), i.clone()))
        .collect();
    assert_eq!(got, want);
    for row in recorded {
        let by_member = row["action"] == "job.trigger";
        let (key, label) = if by_member {
            (member_key_id(&store, &member_key).await, "a member")
        } else {
            (owner.id.clone(), "owner")
        };
        assert_eq!(
            row["actor"],
            json!({"kind": "api_key", "id": key, "label": label}),
            "{row}"
        );
        assert_eq!(row["address"], "127.0.0.1", "{row}");
        assert!(row["at"].is_string() && row["hash"].as_str().is_some_and(|h| h.len() == 64));
    }
    // What a row says about its target, and nothing secret anywhere.
    let job_row = recorded
        .iter()
        .find(|r| r["action"] == "job.trigger")
        .expect("job row");
    assert_eq!(job_row["detail"]["command"], "echo", "{job_row}");
    assert_eq!(job_row["detail"]["runs"], 1, "{job_row}");
    let text = serde_json::to_string(&all).expect("json");
    for secret in ["opa_", "opk_", "whsec_", "not-for-the-log"] {
        assert!(!text.contains(secret), "{secret} in the audit log: {text}");
    }

    // Filters, over the API and the CLI.
    let (_, keys_only) = admin.get("/api/audit?action=agent_key&limit=200").await;
    let kinds: Vec<&str> = keys_only["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|r| r["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds.len(), 8, "{kinds:?}");
    assert!(
        kinds.iter().all(|k| k.starts_with("agent_key.")),
        "{kinds:?}"
    );
    let (_, by_member) = admin.get("/api/audit?actor=a%20member").await;
    assert_eq!(
        by_member["entries"].as_array().map(Vec::len),
        Some(1),
        "{by_member}"
    );
    let (status, bad) = admin.get("/api/audit?cursor=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cursor")),
        "{bad}"
    );
    let out = outpost(
        &server,
        &admin_key,
        &["audit", "ls", "--action", "job.trigger", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        page["entries"][0]["target"]["id"],
        job_id.as_str(),
        "{page}"
    );
    let out = outpost(&server, &admin_key, &["audit", "ls", "--limit", "2"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("agent.delete") && table.contains("ACTION"),
        "{table}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cursor"),
        "paging hint"
    );

    // The chain verifies, over the API and the CLI.
    let (status, check) = admin.get("/api/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{check}");
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["count"], all.len(), "{check}");
    assert_eq!(check["head_hash"], all.last().expect("row")["hash"]);
    let out = outpost(&server, &server.admin_key, &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));

    // Members may not read it.
    for path in ["/api/audit", "/api/audit/verify"] {
        let (status, body) = member.get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
    let out = outpost(&server, &member_key, &["audit", "ls"]);
    assert!(!out.status.success());

    // Another tenant sees only its own log.
    let (_, other_key) = store.create_tenant("other", None).await.expect("tenant");
    let other = Api::new(&server.url, &other_key);
    let theirs = rows(&other).await;
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0]["action"], "tenant.create");
    let (_, none) = other.get(&format!("/api/audit?actor={}", owner.id)).await;
    assert_eq!(none["entries"], json!([]), "{none}");
    let (_, check) = other.get("/api/audit/verify").await;
    assert_eq!(
        (check["ok"].clone(), check["count"].clone()),
        (json!(true), json!(1))
    );
}

async fn member_key_id(store: &Store, secret: &str) -> String {
    store
        .api_key_by_hash(&outpost_store::credentials::hash_secret(secret))
        .await
        .expect("read")
        .expect("key")
        .id
}

/// The attack of issue 54 on `server`'s database, stopped, in plain SQL: raise `tenant`'s chain
/// base to row `base` and delete the rows up to it. With the triggers standing the database
/// refuses both; the test then removes the triggers as the database's owner could (or as a
/// database whose triggers predate them is), does it, and starts the server again.
pub(crate) async fn cut_the_chain_at_its_base(server: &mut Server, tenant: &str, base: i64) {
    server.terminate();
    let url = match server.database() {
        outpost_store::DatabaseLocation::Url(url) => url,
        outpost_store::DatabaseLocation::Sqlite(path) => {
            format!("sqlite://{}?mode=rw", path.display())
        }
    };
    let db = sea_orm::Database::connect(&url)
        .await
        .expect("the server's database");
    let raise = format!(
        "UPDATE audit_heads SET base_seq = {base}, base_hash = (SELECT hash FROM audit_log \
         WHERE tenant_id = '{tenant}' AND seq = {base}) WHERE tenant_id = '{tenant}'"
    );
    let delete = format!("DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq <= {base}");
    for sql in [&raise, &delete] {
        let refused = db.execute_unprepared(sql).await.expect_err(sql);
        let text = refused.to_string();
        assert!(
            text.contains("audit_heads") || text.contains("append-only"),
            "{sql}: {text}"
        );
    }
    let postgres = db.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
    let untrigger: &[&str] = if postgres {
        &[
            "ALTER TABLE audit_log DISABLE TRIGGER USER",
            "ALTER TABLE audit_heads DISABLE TRIGGER USER",
        ]
    } else {
        &[
            "DROP TRIGGER audit_log_no_delete",
            "DROP TRIGGER audit_heads_forward",
        ]
    };
    for sql in untrigger.iter().chain([&raise.as_str(), &delete.as_str()]) {
        db.execute_unprepared(sql).await.expect(sql);
    }
    db.close().await.expect("close");
    server.restart().await;
}

/// The oldest rows of a chain deleted under a raised base, while the server was stopped: the
/// server started again answers `ok: false` at the base, saying it moved, where the chain
/// used to verify with fewer rows and its head unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_cut_at_its_base_while_stopped_is_reported() {
    let mut server = Server::start().await;
    let api = server.api();
    for _ in 0..3 {
        api.agent_key().await;
    }
    let tenant = {
        let store = Store::open(&server.database()).await.expect("open store");
        store
            .api_key_by_hash(&outpost_store::credentials::hash_secret(&server.admin_key))
            .await
            .expect("read")
            .expect("owner key")
            .tenant_id
    };
    let (_, before) = api.get("/api/audit/verify").await;
    assert_eq!(before["ok"], true, "{before}");
    let count = before["count"].as_i64().expect("count");
    assert!(count >= 4, "{before}");
    cut_the_chain_at_its_base(&mut server, &tenant, 2).await;
    let (status, after) = server.api().get("/api/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["ok"], false, "{after}");
    assert_eq!(after["first_broken"]["id"], 2, "{after}");
    let reason = after["first_broken"]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("base was moved to row 2 without a checkpoint"),
        "{reason}"
    );
    let out = outpost(&server, &server.admin_key, &["audit", "verify"]);
    assert!(!out.status.success(), "the CLI says it failed too");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("base was moved")
            || String::from_utf8_lossy(&out.stderr).contains("base was moved"),
        "{out:?}"
    );
}
