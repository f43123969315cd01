//! Who may call what (CONTRACT.md §9), over the real server: the route × role × tenant matrix, made
//! from the server's own OpenAPI document so that a new route is covered by itself, and the
//! scoped API keys of `/api/keys`.
//!
//! The matrix checks the permission table (`outpost_web::api::permissions::ROUTES`, which
//! `server/web/tests/openapi.rs` holds equal to the document) against what the running server
//! answers: for every route and every caller (owner, admin and member users of tenant A, an
//! owner's key with one unrelated scope, a member's `*` key, the owner, admin and member of
//! tenant B, nobody), the status the table implies: 401 without a token, 403 for a scope or
//! role short of the route's, 404 for tenant A's ids asked by tenant B, and success for
//! tenant A's callers on their own things. The table itself is pinned to CONTRACT.md §9's words by
//! the unit test in `api/permissions.rs`.

use std::collections::BTreeMap;

use outpost_e2e::{Agent, Api, Server, ServerOptions, only_run, wait_for, ws};
use outpost_store::Store;
use outpost_store::domain::{Caller, Principal, Role, Scope, Scopes};
use outpost_web::api::permissions::{Permission, ROUTES, refusal};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

/// A caller of the matrix.
struct Who {
    name: &'static str,
    api: Api,
    /// `None`: no valid token at all.
    role: Option<Role>,
    scopes: Scopes,
    /// In tenant B (A's ids are foreign to it).
    foreign: bool,
}

impl Who {
    /// Why the table refuses this caller `permission`, if it does.
    fn refused(&self, scope: Option<Scope>, role: Role) -> bool {
        let Some(own) = self.role else { return true };
        let caller = Caller {
            tenant_id: String::new(),
            role: own,
            scopes: self.scopes,
            principal: Principal::ApiKey {
                key_id: String::new(),
                owner: None,
            },
            label: String::new(),
            address: None,
        };
        refusal(&caller, scope, role).is_some()
    }
}

/// What one call should answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Status(StatusCode),
    Success,
    /// Past the permission table, refused by the route's own logic (not 401, 403 or 5xx).
    PastTheTable,
}

/// Tenant A's things the routes' ids point at.
struct Fixtures {
    agent_key: String,
    agent_key_secret: String,
    agent: String,
    command: String,
    job: String,
    run: String,
    member_user: String,
    member_key: String,
    tenant: String,
    schedule: String,
    integration: String,
    /// A rollout of A's (over an agent that is offline: it ends at once).
    rollout: String,
    /// The version the server ships (what a rollout here goes to; nothing is published).
    version: String,
    /// An agent key allowing `update`, for the agents rollouts that stay running update.
    update_key_secret: String,
    /// The connections of those agents, kept open for the test.
    peers: std::sync::Mutex<Vec<ws::Peer>>,
    /// Signature files over drafts made for a call that is to succeed, by the call's serial.
    signatures: std::sync::Mutex<BTreeMap<usize, Value>>,
}

async fn invite(owner: &Api, email: &str, role: &str) -> Value {
    let (status, created) = owner
        .post("/api/users", json!({"email": email, "role": role}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_role_of_every_tenant_as_its_permission_says() {
    let server = Server::start().await;
    let root = server.api();
    let (owner, _) = server.user("owner@a.example", "owner", PASSWORD).await;
    let (admin, _) = server.user("admin@a.example", "admin", PASSWORD).await;
    let (member, _) = server.user("member@a.example", "member", PASSWORD).await;
    let (_, me) = member.get("/api/auth/me").await;
    let member_user = me["user"]["id"].as_str().expect("member id").to_owned();
    let tenant = me["tenant_id"].as_str().expect("tenant id").to_owned();

    // Keys: the owner's with one scope no route needs yet, the member's with every scope.
    let (status, narrow) = owner
        .post(
            "/api/keys",
            json!({"name": "narrow", "scopes": ["schedules:read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{narrow}");
    let (status, member_star) = member
        .post("/api/keys", json!({"name": "everything", "scopes": ["*"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{member_star}");
    let member_key = member_star["id"].as_str().expect("id").to_owned();

    // Tenant B, with a key of each role.
    let store = Store::open(&server.database()).await.expect("open store");
    let (tenant_b, b_owner) = store.create_tenant("b", None).await.expect("tenant");
    let b_admin = store
        .create_api_key(&tenant_b, "b-admin", "admin")
        .await
        .expect("key");
    let b_member = store
        .create_api_key(&tenant_b, "b-member", "member")
        .await
        .expect("key");

    // A's agent, a command, a finished job with a run.
    let (agent_key, agent_key_secret) = root.agent_key().await;
    let agent_process = Agent::start(&server.url, &agent_key_secret);
    let agent = agent_process.wait_online(&root).await;
    let (status, done) = root.command(&agent, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let command = done["command_id"].as_str().expect("command id").to_owned();
    let (status, job) = root
        .job(
            json!({"command": "ping", "target": {"agents": [agent]}}),
            Some(30),
        )
        .await;
    assert!(status.is_success(), "{job}");
    let (job_id, _, _) = only_run(&job);
    let job = root.wait_job(&job_id).await;
    let (_, run, _) = only_run(&job);
    let (status, schedule) = root
        .post("/api/schedules", schedule_body("fixture", &agent))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    let schedule = schedule["id"].as_str().expect("id").to_owned();
    let (status, integration) = root
        .post("/api/integrations", integration_body("fixture"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{integration}");
    let integration = integration["id"].as_str().expect("id").to_owned();
    let (_, fixture_agent) = root.get(&format!("/api/agents/{agent}")).await;
    let version = fixture_agent["version"]
        .as_str()
        .expect("version")
        .to_owned();
    let (_, update_key_secret) = root
        .create_key(json!({"name": "rollouts", "permissions": ["ping", "update"]}))
        .await;
    let offline = disposable_agent(&server, &root, &agent_key_secret).await;
    let rollout = tagged_rollout(&root, &offline, "rollout-fixture", &version).await;
    let fixtures = Fixtures {
        agent_key,
        agent_key_secret,
        agent,
        command,
        job: job_id,
        run,
        member_user,
        member_key,
        tenant,
        schedule,
        integration,
        rollout,
        version,
        update_key_secret,
        peers: std::sync::Mutex::new(Vec::new()),
        signatures: std::sync::Mutex::new(BTreeMap::new()),
    };

    let base = Scopes::ALL;
    let callers = [
        Who {
            name: "A owner (user)",
            api: owner.clone(),
            role: Some(Role::Owner),
            scopes: base,
            foreign: false,
        },
        Who {
            name: "A admin (user)",
            api: admin.clone(),
            role: Some(Role::Admin),
            scopes: base,
            foreign: false,
        },
        Who {
            name: "A member (user)",
            api: member.clone(),
            role: Some(Role::Member),
            scopes: base,
            foreign: false,
        },
        Who {
            name: "A owner's schedules:read key",
            api: root.with_token(narrow["secret"].as_str().expect("secret")),
            role: Some(Role::Owner),
            scopes: Scopes::of(&[Scope::SchedulesRead]),
            foreign: false,
        },
        Who {
            name: "A member's * key",
            api: root.with_token(member_star["secret"].as_str().expect("secret")),
            role: Some(Role::Member),
            scopes: base,
            foreign: false,
        },
        Who {
            name: "B owner",
            api: root.with_token(&b_owner),
            role: Some(Role::Owner),
            scopes: base,
            foreign: true,
        },
        Who {
            name: "B admin",
            api: root.with_token(&b_admin),
            role: Some(Role::Admin),
            scopes: base,
            foreign: true,
        },
        Who {
            name: "B member",
            api: root.with_token(&b_member),
            role: Some(Role::Member),
            scopes: base,
            foreign: true,
        },
        Who {
            name: "nobody",
            api: root.with_token("opk_not-a-key"),
            role: None,
            scopes: Scopes::of(&[]),
            foreign: false,
        },
    ];

    let (status, made) = outpost_e2e::library::signed_upload(
        &server,
        &outpost_e2e::library::Signer::new(),
        outpost_e2e::library::bundle_of("matrix", "0.0.1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    // And a draft of it that the calls which only read point at (CONTRACT.md §20).
    let (status, made) = root
        .post(
            "/api/scripts/matrix/drafts",
            json!({"version": "0.9.0", "files": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let (status, document) = root.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut serial = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let method: Method = method.to_uppercase().parse().expect("method");
            let rule = ROUTES
                .iter()
                .find(|r| r.method == method.as_str() && r.path == path)
                .unwrap_or_else(|| panic!("{method} {path} is not in the permission table"));
            let (scope, role, server_owner) = match rule.permission {
                Permission::Caller { scope, role } => (scope, role, false),
                // Any signed-in caller; what each answers depends on the caller's kind (a
                // user's session verifies, a key cannot) and on SMTP: `signin_mail::` and
                // `users::` test them.
                Permission::SignedIn => continue,
                Permission::ServerOwner { scope } => (Some(scope), Role::Owner, true),
                // Public, agent-or-caller and agent routes: their own checks are their
                // tests' (the library's download: `library::`).
                Permission::Public | Permission::AgentOrCaller | Permission::Agent => continue,
            };
            let takes_body = operation["requestBody"].is_object();
            for who in &callers {
                serial += 1;
                let expect = if who.role.is_none() {
                    Expect::Status(StatusCode::UNAUTHORIZED)
                } else if who.refused(scope, role) {
                    Expect::Status(StatusCode::FORBIDDEN)
                } else if who.foreign && path.contains('{') {
                    Expect::Status(StatusCode::NOT_FOUND)
                } else if who.foreign && server_owner {
                    // B's owner is no owner of the server's first tenant.
                    Expect::Status(StatusCode::FORBIDDEN)
                } else if path == "/api/scripts" && method == Method::POST {
                    // Past the permission layer: the matrix sends JSON, and an upload is a
                    // form (its refusals are `library::`'s).
                    Expect::Status(StatusCode::BAD_REQUEST)
                } else if who.foreign
                    && (path == "/api/jobs" || path == "/api/schedules" || path == "/api/rollouts")
                    && method == Method::POST
                {
                    // Its body names A's agent, which B does not have.
                    Expect::Status(StatusCode::BAD_REQUEST)
                } else if (path == "/api/auth/totp/setup"
                    || path == "/api/auth/totp/confirm"
                    || path == "/api/auth/totp")
                    && !who.name.ends_with("(user)")
                {
                    // A second factor is its user's (CONTRACT.md §18): an API key (tenant B's
                    // callers are keys too) is refused.
                    Expect::Status(StatusCode::FORBIDDEN)
                } else if path == "/api/auth/totp/confirm" || path == "/api/auth/totp" {
                    // The matrix's code confirms or removes nothing (400 `wrong_code`, 404 or
                    // 409, or an unconfirmed factor removed): past the table is what counts.
                    Expect::PastTheTable
                } else {
                    Expect::Success
                };
                // A call that is to succeed gets things of its own to change; the others
                // are pointed at the shared fixtures, which they must not touch.
                let fresh = expect == Expect::Success;
                let uri = fill(path, &method, fresh, who, &root, &server, &fixtures, serial).await;
                let body = takes_body.then(|| sample_body(path, &method, &fixtures, serial));
                let (status, answer) = who.api.call(method.clone(), &uri, body).await;
                checked += 1;
                let ok = match expect {
                    Expect::Status(want) => status == want,
                    Expect::Success => status.is_success(),
                    Expect::PastTheTable => {
                        status != StatusCode::UNAUTHORIZED
                            && status != StatusCode::FORBIDDEN
                            && !status.is_server_error()
                    }
                };
                let code_ok = match expect {
                    Expect::Status(StatusCode::FORBIDDEN) => answer["error"]["code"] == "forbidden",
                    Expect::Status(StatusCode::NOT_FOUND) => answer["error"]["code"] == "not_found",
                    Expect::Status(StatusCode::UNAUTHORIZED) => {
                        answer["error"]["code"] == "unauthorized"
                    }
                    _ => true,
                };
                if !ok || !code_ok {
                    failures.push(format!(
                        "{method} {uri} as {}: expected {expect:?}, got {status} {answer}",
                        who.name
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} calls answered otherwise than the permission table says:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 300, "only {checked} calls checked");

    // None of B's calls or the refused ones touched A's shared things.
    let (status, _) = root.get(&format!("/api/agents/{}", fixtures.agent)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = root
        .get(&format!("/api/agents/keys/{}", fixtures.agent_key))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, me) = member.get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["role"], "member");
    let (status, _) = root
        .with_token(member_star["secret"].as_str().expect("secret"))
        .get("/api/auth/me")
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the member's key was revoked by someone else"
    );
    drop(agent_process);
}

/// The path with its `{…}` filled from the fixtures, or with things made for this call when
/// it is to succeed and would change them.
#[allow(clippy::too_many_arguments)]
async fn fill(
    path: &str,
    method: &Method,
    fresh: bool,
    who: &Who,
    root: &Api,
    server: &Server,
    f: &Fixtures,
    serial: usize,
) -> String {
    let changes = *method != Method::GET;
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    if path.starts_with("/api/agents/keys/") {
        let id = if fresh && changes {
            root.create_key(json!({"name": format!("fixture-{serial}")}))
                .await
                .0
        } else {
            f.agent_key.clone()
        };
        ids.insert("id", id);
    } else if path.starts_with("/api/agents/{id}") {
        let id = if fresh && *method == Method::DELETE {
            disposable_agent(server, root, &f.agent_key_secret).await
        } else {
            f.agent.clone()
        };
        ids.insert("id", id);
    } else if path.starts_with("/api/users/") {
        let id = if fresh && changes {
            invite(root, &format!("fixture-{serial}@a.example"), "member").await["user"]["id"]
                .as_str()
                .expect("id")
                .to_owned()
        } else {
            f.member_user.clone()
        };
        ids.insert("id", id);
    } else if path.starts_with("/api/keys/") {
        let id = if fresh {
            let (status, key) = who
                .api
                .post(
                    "/api/keys",
                    json!({"name": format!("fixture-{serial}"), "scopes": ["jobs:read"]}),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{} makes a key: {key}",
                who.name
            );
            key["id"].as_str().expect("id").to_owned()
        } else {
            f.member_key.clone()
        };
        ids.insert("id", id);
    } else if path.starts_with("/api/tenants/") {
        ids.insert("id", f.tenant.clone());
    } else if path.starts_with("/api/commands/") {
        ids.insert("id", f.command.clone());
    } else if path.starts_with("/api/jobs/") {
        ids.insert("id", f.job.clone());
        ids.insert("run_id", f.run.clone());
    } else if path.starts_with("/api/integrations/") {
        let id = if fresh && changes {
            let (status, made) = root
                .post(
                    "/api/integrations",
                    integration_body(&format!("fixture-{serial}")),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{made}");
            made["id"].as_str().expect("id").to_owned()
        } else {
            f.integration.clone()
        };
        ids.insert("id", id);
    } else if path.starts_with("/api/scripts/{name}/drafts/") {
        // A's library holds the draft `matrix` 0.9.0; a call that is to succeed and changes
        // gets a draft of its own, and a signature gets a signature file over its bytes.
        let version = if fresh && changes {
            let version = format!("3.0.{serial}");
            let (status, made) = root
                .post(
                    "/api/scripts/matrix/drafts",
                    json!({"version": version, "files": {}}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{made}");
            if path.ends_with("/signature") {
                let bytes = reqwest::Client::new()
                    .get(format!(
                        "{}/api/scripts/matrix/drafts/{version}/bundle",
                        server.url
                    ))
                    .bearer_auth(&server.admin_key)
                    .send()
                    .await
                    .expect("draft bundle")
                    .bytes()
                    .await
                    .expect("draft bytes");
                let sig = outpost_e2e::library::Signer::new().sign(&bytes);
                f.signatures
                    .lock()
                    .expect("signatures")
                    .insert(serial, serde_json::to_value(sig).expect("json"));
            }
            version
        } else {
            "0.9.0".to_owned()
        };
        ids.insert("name", "matrix".to_owned());
        ids.insert("version", version);
    } else if path.starts_with("/api/scripts/") {
        // A's library holds `matrix` 0.0.1; a delete that is to succeed gets a version of
        // its own.
        let version = if fresh && *method == Method::DELETE {
            let version = format!("1.0.{serial}");
            let (status, made) = outpost_e2e::library::signed_upload(
                server,
                &outpost_e2e::library::Signer::new(),
                outpost_e2e::library::bundle_of("matrix", &version),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{made}");
            version
        } else {
            "0.0.1".to_owned()
        };
        ids.insert("name", "matrix".to_owned());
        ids.insert("version", version);
    } else if path == "/api/rollouts" && *method == Method::POST && fresh {
        // The sample body targets the tag `rollout-SERIAL`: an agent of its own (offline).
        let offline = disposable_agent(server, root, &f.agent_key_secret).await;
        tag_agent(root, &offline, &format!("rollout-{serial}")).await;
    } else if path.starts_with("/api/rollouts/") {
        let action = path.rsplit('/').next().unwrap_or_default();
        let id = match (fresh, action) {
            (true, "pause" | "resume" | "abort") => {
                // A rollout that stays running: its one agent is sent the update and never
                // answers (its `online_within_s` is a day).
                let id = running_rollout(server, root, f, serial).await;
                if action == "resume" {
                    let (status, paused) = root
                        .post(&format!("/api/rollouts/{id}/pause"), json!({}))
                        .await;
                    assert_eq!(status, StatusCode::OK, "{paused}");
                }
                id
            }
            (true, "rollback") => {
                let offline = disposable_agent(server, root, &f.agent_key_secret).await;
                tagged_rollout(root, &offline, &format!("rollout-{serial}"), &f.version).await
            }
            _ => f.rollout.clone(),
        };
        ids.insert("id", id);
    } else if path == "/api/schedules/preview" {
        return format!("{path}?cron=%40daily&timezone=Europe%2FParis&count=3");
    } else if path.starts_with("/api/schedules/") {
        let id = if fresh && changes {
            let (status, made) = root
                .post(
                    "/api/schedules",
                    schedule_body(&format!("fixture-{serial}"), &f.agent),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{made}");
            made["id"].as_str().expect("id").to_owned()
        } else {
            f.schedule.clone()
        };
        ids.insert("id", id);
    }
    let mut uri = path.to_owned();
    for (name, value) in ids {
        uri = uri.replace(&format!("{{{name}}}"), &value);
    }
    assert!(
        !uri.contains('{'),
        "{method} {path}: the matrix does not know what to put in its path; add it to `fill`"
    );
    uri
}

/// Sets `tag` on agent `id` (a server tag).
async fn tag_agent(root: &Api, id: &str, tag: &str) {
    let (status, tagged) = root
        .patch(&format!("/api/agents/{id}"), json!({"tags": [tag]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{tagged}");
}

/// A rollout of `version` over agent `id` alone (tagged `tag` for it).
async fn tagged_rollout(root: &Api, id: &str, tag: &str, version: &str) -> String {
    tag_agent(root, id, tag).await;
    let (status, made) = root
        .post(
            "/api/rollouts",
            json!({"version": version, "target": {"tags": [tag]},
                   "health": {"online_within_s": 86400}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    made["id"].as_str().expect("id").to_owned()
}

/// A rollout that stays running: over an agent of its own that runs an older version, can
/// update, and never answers the update (its connection is kept open in the fixtures).
async fn running_rollout(server: &Server, root: &Api, f: &Fixtures, serial: usize) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let mut peer = ws::connect(&server.url, &f.update_key_secret)
        .await
        .expect("connect");
    let _ = peer.frame().await;
    let mut register = ws::register(&id);
    register["data"]["version"] = "0.0.1".into();
    register["data"]["capabilities"] = json!(["ping", "update"]);
    peer.send_json(&register).await;
    wait_for(
        "the rollout's agent online",
        Duration::from_secs(30),
        || async {
            let (_, agent) = root.get(&format!("/api/agents/{id}")).await;
            (agent["status"] == "online").then_some(())
        },
    )
    .await;
    f.peers.lock().expect("peers").push(peer);
    tagged_rollout(root, &id, &format!("rollout-{serial}"), &f.version).await
}

/// A webhook integration (its URL is never reached: `test` answers that it could not be).
fn integration_body(name: &str) -> Value {
    json!({"name": name, "kind": "webhook", "config": {"url": "https://hooks.invalid/outpost"},
           "events": ["job.failed"]})
}

/// A schedule that pings A's agent once a year.
fn schedule_body(name: &str, agent: &str) -> Value {
    json!({"name": name, "cron": "0 0 1 1 *", "command": "ping", "target": {"agents": [agent]}})
}

/// An agent of A's key registered for this call alone (to be forgotten).
async fn disposable_agent(server: &Server, root: &Api, secret: &str) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let mut peer = ws::connect(&server.url, secret).await.expect("connect");
    peer.handshake(&id).await;
    wait_for("the disposable agent", Duration::from_secs(30), || async {
        let (status, _) = root.get(&format!("/api/agents/{id}")).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    peer.crash();
    id
}

/// A body the route accepts: a new route taking a body fails here until it has one.
fn sample_body(path: &str, method: &Method, f: &Fixtures, serial: usize) -> Value {
    match (method.as_str(), path) {
        ("POST", "/api/agents/keys") => json!({"name": format!("made-{serial}")}),
        ("PATCH", "/api/agents/keys/{id}") => json!({"name": format!("renamed-{serial}")}),
        ("POST", "/api/agents/keys/{id}/command") => json!({"command": "ping"}),
        ("PATCH", "/api/agents/{id}") => json!({"tags": ["matrix"]}),
        ("POST", "/api/agents/{id}/command") => json!({"command": "ping"}),
        ("POST", "/api/jobs") => json!({"command": "ping", "target": {"agents": [f.agent]}}),
        ("POST", "/api/jobs/{id}/rerun") => json!({"runs": "all"}),
        ("POST", "/api/users") => {
            json!({"email": format!("made-{serial}@example.com"), "role": "member"})
        }
        ("PATCH", "/api/users/{id}") => json!({"role": "admin"}),
        ("PATCH", "/api/tenants/{id}") => json!({"name": format!("tenant a {serial}")}),
        ("POST", "/api/keys") => json!({"name": format!("made-{serial}"), "scopes": ["jobs:read"]}),
        ("POST", "/api/schedules") => schedule_body(&format!("made-{serial}"), &f.agent),
        ("PATCH", "/api/schedules/{id}") => json!({"enabled": false}),
        ("POST", "/api/integrations") => integration_body(&format!("made-{serial}")),
        ("PATCH", "/api/integrations/{id}") => json!({"enabled": false}),
        ("POST", "/api/integrations/{id}/test") => json!({}),
        // An upload is a form; JSON gets as far as the handler, which refuses it (400).
        ("POST", "/api/scripts") => json!({}),
        // Scripts in the dashboard (CONTRACT.md §20): a name switched on (as it is), a draft of a
        // version of its own, and the signature file `fill` made over a fresh draft.
        ("PATCH", "/api/scripts/{name}") => json!({"enabled": true}),
        ("POST", "/api/scripts/{name}/drafts") => {
            json!({"version": format!("2.0.{serial}"), "files": {}})
        }
        ("POST", "/api/scripts/{name}/drafts/{version}/signature") => f
            .signatures
            .lock()
            .expect("signatures")
            .remove(&serial)
            .unwrap_or_else(|| json!({})),
        ("POST", "/api/rollouts") => json!({"version": f.version,
            "target": {"tags": [format!("rollout-{serial}")]}}),
        ("PUT", "/api/fleet/policy") => json!({"min_agent_version": null}),
        ("POST", "/api/auth/totp/confirm") | ("DELETE", "/api/auth/totp") => {
            json!({"code": "000000"})
        }
        (method, path) => panic!(
            "{method} {path} takes a body the access matrix has no sample of; add one to `sample_body`"
        ),
    }
}

/// Scoped keys: what a key may do is its scopes ∩ its owner's current role; it cannot give
/// more than its maker holds, expires within `--max-key-days`, and dies with its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_act_with_their_scopes_and_their_owner_s_current_role() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--max-key-days".into(), "30".into()],
        ..Default::default()
    })
    .await;
    let root = server.api();
    let (owner, _) = server.user("owner@example.com", "owner", PASSWORD).await;
    let (admin, _) = server.user("admin@example.com", "admin", PASSWORD).await;
    let (_, me) = admin.get("/api/auth/me").await;
    let admin_id = me["user"]["id"].as_str().expect("id").to_owned();

    // Bad requests, each naming what was wrong.
    for (body, status, needle) in [
        (
            json!({"name": "x", "scopes": []}),
            StatusCode::BAD_REQUEST,
            "scopes",
        ),
        (
            json!({"name": "x", "scopes": ["jobs:fly"]}),
            StatusCode::BAD_REQUEST,
            "scopes",
        ),
        (
            json!({"name": "", "scopes": ["jobs:read"]}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({"name": "x", "scopes": ["jobs:read"], "expires_at": "2020-01-01T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
            "expires_at: must be in the future",
        ),
        (
            json!({"name": "x", "scopes": ["jobs:read"], "expires_at": (chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339()}),
            StatusCode::BAD_REQUEST,
            "at most 30 days",
        ),
        (json!({"name": "x"}), StatusCode::BAD_REQUEST, "scopes"),
    ] {
        let (got, answer) = admin.post("/api/keys", body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
    }

    // The default expiry is the cap.
    let (status, key) = admin
        .post(
            "/api/keys",
            json!({"name": "ops", "scopes": ["audit:read", "keys:write", "agents:read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let expires: chrono::DateTime<chrono::Utc> = key["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("time");
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((29.9..=30.0).contains(&days), "default expiry {days} days");
    assert_eq!(key["owner_user_id"], admin_id.as_str());
    let ops = root.with_token(key["secret"].as_str().expect("secret"));

    // It does what its scopes and the admin role both allow, and nothing else.
    let (status, body) = ops.get("/api/audit").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops.get("/api/jobs").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("lacks the jobs:read scope"),
        "{body}"
    );
    // An admin's `users:write`-less key cannot reach owners' routes, and a scope does not
    // lift a role: keys:write does not let it create users.
    let (status, body) = ops.get("/api/users").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A key cannot give more than its maker holds.
    let (status, body) = ops
        .post("/api/keys", json!({"name": "more", "scopes": ["jobs:run"]}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("lacks jobs:run"),
        "{body}"
    );
    let (status, child) = ops
        .post(
            "/api/keys",
            json!({"name": "child", "scopes": ["audit:read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{child}");
    assert_eq!(
        child["owner_user_id"],
        admin_id.as_str(),
        "a key's key is its user's"
    );

    // The owner demotes the admin: the key loses what the admin role gave, at once.
    let (status, body) = owner
        .patch(&format!("/api/users/{admin_id}"), json!({"role": "member"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ops.get("/api/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, me) = ops.get("/api/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["role"], "member");
    assert_eq!(me["kind"], "api_key");
    assert_eq!(
        me["scopes"],
        json!(["agents:read", "keys:write", "audit:read"])
    );

    // Disabled, the key stops; enabled, it works again; the user deleted, it stops for good.
    let (status, _) = owner
        .patch(&format!("/api/users/{admin_id}"), json!({"disabled": true}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = ops.get("/api/agents").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("user is disabled or deleted"),
        "{body}"
    );
    let (status, _) = owner
        .patch(
            &format!("/api/users/{admin_id}"),
            json!({"disabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = ops.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Everyone sees their own keys; the owner sees all and revokes anyone's.
    let (status, listed) = ops.get("/api/keys").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let names: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["ops", "child"]);
    assert!(
        listed
            .as_array()
            .expect("list")
            .iter()
            .all(|k| k.get("secret").is_none() && k.get("key_hash").is_none())
    );
    let (status, owners_key) = owner
        .post("/api/keys", json!({"name": "mine", "scopes": ["*"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{owners_key}");
    let owners_key_id = owners_key["id"].as_str().expect("id");
    // The member (the demoted admin) cannot revoke the owner's key: it is not theirs.
    let (status, body) = ops.delete(&format!("/api/keys/{owners_key_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, all) = owner.get("/api/keys").await;
    assert_eq!(status, StatusCode::OK);
    assert!(all.as_array().expect("list").len() >= 4, "{all}");
    let ops_id = key["id"].as_str().expect("id");
    let (status, _) = owner.delete(&format!("/api/keys/{ops_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = ops.get("/api/agents").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = owner.delete(&format!("/api/keys/{ops_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoked twice");

    // The child dies with its user.
    let child_api = root.with_token(child["secret"].as_str().expect("secret"));
    let (status, _) = child_api.get("/api/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a member's audit:read key");
    let (status, _) = owner.delete(&format!("/api/users/{admin_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = child_api.get("/api/auth/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // The audit log has the keys' lives, never a secret.
    let (status, audit) = owner.get("/api/audit?action=api_key").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert!(actions.contains(&"api_key.create"), "{audit}");
    assert!(actions.contains(&"api_key.delete"), "{audit}");
    let text = audit.to_string();
    for secret in [&key["secret"], &child["secret"], &owners_key["secret"]] {
        assert!(
            !text.contains(secret.as_str().expect("secret")),
            "a secret in the audit log"
        );
    }
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

/// `outpost keys api create|ls|rm`: the secret alone on stdout, usable at once; revoked, it
/// stops; a scope the server does not know is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_lists_and_revokes_api_keys() {
    let server = Server::start().await;
    let (owner, _) = server.user("owner@example.com", "owner", PASSWORD).await;
    let token = owner.token().to_owned();

    let made = outpost(
        &server,
        &token,
        &[
            "keys",
            "api",
            "create",
            "ci",
            "--scope",
            "jobs:read",
            "--scope",
            "agents:read",
        ],
    );
    assert!(made.status.success(), "{made:?}");
    let secret = String::from_utf8(made.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(secret.starts_with("opk_"), "{secret}");
    let told = String::from_utf8_lossy(&made.stderr);
    assert!(
        told.contains("jobs:read, agents:read") || told.contains("jobs:read"),
        "{told}"
    );
    let ci = server.api().with_token(&secret);
    let (status, _) = ci.get("/api/jobs").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = ci.get("/api/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let listed = outpost(&server, &token, &["keys", "api", "ls"]);
    assert!(listed.status.success(), "{listed:?}");
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains("ci") && table.contains("jobs:read"),
        "{table}"
    );
    assert!(!table.contains(&secret), "ls shows a secret");

    let bad = outpost(
        &server,
        &token,
        &["keys", "api", "create", "x", "--scope", "jobs:fly"],
    );
    assert!(!bad.status.success());
    let why = String::from_utf8_lossy(&bad.stderr);
    assert!(why.contains("jobs:fly"), "{why}");

    let removed = outpost(&server, &token, &["keys", "api", "rm", "ci"]);
    assert!(removed.status.success(), "{removed:?}");
    let (status, _) = ci.get("/api/jobs").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let again = outpost(&server, &token, &["keys", "api", "rm", "ci"]);
    assert!(
        !again.status.success(),
        "a revoked key is not there any more"
    );
}
