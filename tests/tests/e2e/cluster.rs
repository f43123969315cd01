//! Three real server nodes on one PostgreSQL (CONTRACT.md §13): agents on node A, REST calls on node
//! B, a job's event stream on node C; then node A killed with `kill -9` in the middle of a
//! fan-out: every run reaches a final state, none runs twice, the counts add up, and the run of
//! an agent that never comes back becomes lost once, by one node.
//!
//! Needs PostgreSQL: `OUTPOST_TEST_POSTGRES=$(scripts/postgres.sh start /tmp/outpost-pg)`;
//! skipped with a message without it.
//!
//! Then the same shape as `scripts/cluster.sh` starts it on this machine (its own PostgreSQL,
//! three nodes, HAProxy in front; skipped without haproxy or PostgreSQL's server programs), and
//! the compose example (`deploy/compose.yaml`, `deploy/haproxy.cfg`) that operators start in
//! containers with the same balancer settings.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_e2e::cluster::Cluster;
use outpost_e2e::postgres::{self, Database};
use outpost_e2e::{Agent, READY_TIMEOUT, Scripts, Server, ServerOptions, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "opk_cluster0000000000000000000000000000000000";
const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

async fn node(database_url: &str, name: &str) -> Server {
    Server::start_with(ServerOptions {
        database_url: Some(database_url.to_owned()),
        args: vec![
            "--node-name".into(),
            name.into(),
            "--heartbeat-interval".into(),
            "1".into(),
            "--lost-after".into(),
            "3".into(),
        ],
        envs: vec![
            ("OUTPOST_ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("OUTPOST_MASTER_KEY".into(), MASTER_KEY.into()),
        ],
        ..ServerOptions::default()
    })
    .await
}

/// The job's event stream on `api`'s node, collected until its `end` event.
async fn follow(base: String, key: String, job_id: String) -> Vec<(String, Value)> {
    let mut response = reqwest::Client::new()
        .get(format!("{base}/api/jobs/{job_id}/events"))
        .bearer_auth(key)
        .send()
        .await
        .expect("events");
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = Vec::new();
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            if event.is_empty() {
                continue;
            }
            let value = serde_json::from_str(&data).unwrap_or(Value::Null);
            let done = event == "end";
            events.push((event, value));
            if done {
                return events;
            }
        }
    }
    events
}

/// Debian's libfaketime (package `faketime`), which shifts a process's wall clock.
fn libfaketime() -> Option<String> {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}/faketime/libfaketimeMT.so.1"))
        .find(|path| Path::new(path).exists())
}

/// Leases are measured by the database's clock, not the nodes' (CONTRACT.md §13): a node
/// whose own clock runs 40 s ahead (libfaketime; a host without NTP) takes no live node for
/// dead at its renewals, and is not taken for dead. Measured by its own clock, every other
/// node's lease (at most 15 s ahead of that node's clock) had run out, so it released their
/// agents every 5 s (scripts/faults.sh, `clock-skew`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_runs_ahead_takes_no_live_node_for_dead() {
    let test = "cluster::a_node_whose_clock_runs_ahead_takes_no_live_node_for_dead";
    let Some(cluster) = postgres::required(test) else {
        return;
    };
    let Some(faketime) = libfaketime() else {
        eprintln!("SKIPPED {test}: needs libfaketime (Debian: apt-get install faketime)");
        return;
    };
    let database = Database::create(&cluster);
    let a = node(&database.url, "a").await;
    let ahead = Server::start_with(ServerOptions {
        database_url: Some(database.url.clone()),
        args: vec!["--node-name".into(), "ahead".into()],
        envs: vec![
            ("OUTPOST_ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("OUTPOST_MASTER_KEY".into(), MASTER_KEY.into()),
            ("LD_PRELOAD".into(), faketime),
            ("FAKETIME".into(), "+40".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ],
        ..ServerOptions::default()
    })
    .await;

    // Three renewals of the node that runs ahead (every 5 s), each of which looks for dead
    // nodes to take over; node a renews in between, and would find its row gone.
    let api_a = a.api();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the node ahead renewed {} times in 60 s",
            seen.len().saturating_sub(1)
        );
        let (status, nodes) = api_a.get("/api/nodes").await;
        assert_eq!(status, StatusCode::OK, "{nodes}");
        if let Some(lease) = nodes
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == "ahead"))
            .and_then(|n| n["lease_until"].as_str())
        {
            seen.insert(lease.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = format!("{}{}", a.logs(), ahead.logs());
    assert!(
        !logs.contains("lease ran out") && !logs.contains("lease had run out"),
        "a live node was taken for dead:\n{logs}"
    );
    let (_, nodes) = api_a.get("/api/nodes").await;
    let alive = nodes
        .as_array()
        .expect("list")
        .iter()
        .filter(|n| n["alive"] == true)
        .count();
    assert_eq!(alive, 2, "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_fleet_and_survive_the_loss_of_one() {
    let Some(cluster) =
        postgres::required("cluster::three_nodes_serve_one_fleet_and_survive_the_loss_of_one")
    else {
        return;
    };
    let database = Database::create(&cluster);
    let mut a = node(&database.url, "a").await;
    let b = node(&database.url, "b").await;
    let c = node(&database.url, "c").await;
    let (api_a, api_b, api_c) = (a.api(), b.api(), c.api());

    // Every node sees the three.
    let nodes = wait_for("three live nodes", READY_TIMEOUT, || {
        let api_c = api_c.clone();
        async move {
            let (status, nodes) = api_c.get("/api/nodes").await;
            assert_eq!(status, StatusCode::OK, "{nodes}");
            let live = nodes
                .as_array()?
                .iter()
                .filter(|n| n["alive"] == true)
                .count();
            (live == 3).then_some(nodes)
        }
    })
    .await;
    let names: Vec<&str> = nodes
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "{nodes}");

    // Agents start on node A and know the others; a run waits for a file before it ends.
    let tmp = tempfile::tempdir().expect("tmp");
    let go = tmp.path().join("go");
    let (_, secret) = api_b.agent_key().await;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        let marks = tmp.path().join(format!("runs-{i}"));
        let mut scripts = Scripts::new();
        scripts.add(
            "slow",
            &format!(
                "echo started >> '{marks}'\necho begun\nwhile [ ! -e '{go}' ]; do sleep 0.05; done\necho done",
                marks = marks.display(),
                go = go.display()
            ),
            json!({"timeout_s": 120}),
        );
        let mut envs = scripts.env();
        envs.push(("OUTPOST_FIRST_SERVER".into(), "1".into()));
        let list = format!("{},{},{}", a.url, b.url, c.url);
        let agent = Agent::start_with(&list, &secret, None, envs);
        // Online as node B sees it: B reads who node A holds.
        let id = agent.wait_online(&api_b).await;
        agents.push((agent, scripts, marks));
        ids.push(id);
    }
    // One more agent knows node A only: it goes away with it and never comes back.
    let mut doomed_scripts = Scripts::new();
    doomed_scripts.add("slow", "echo begun\nsleep 600", json!({"timeout_s": 900}));
    let mut doomed = Agent::start_with(&a.url, &secret, None, doomed_scripts.env());
    let doomed_id = doomed.wait_online(&api_b).await;
    // Node A records an agent in the database before it adds the connection to its own list
    // (a command stored in between is resent on the new connection), so B can see an agent
    // online a moment before A lists it as connected.
    wait_for("node A holds all five agents", READY_TIMEOUT, || {
        let api_a = api_a.clone();
        async move {
            let (_, connected) = api_a.get("/api/agents/connected").await;
            (connected.as_array().map(Vec::len) == Some(5)).then_some(())
        }
    })
    .await;

    // A command made on node B reaches an agent held by node A, and its result comes back to
    // B's waiting caller.
    let (status, pong) = api_b.command(&ids[0], json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{pong}");
    assert_eq!(pong["status"], "succeeded", "{pong}");
    // A whole job on B, waited for on B, followed on C.
    let (status, job) = api_b
        .job(
            json!({"target": {"all": true}, "command": "ping"}),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "succeeded", "{job}");

    // The fan-out: a slow run on every agent, created on B, followed on C.
    let (status, job) = api_b
        .job(
            json!({"target": {"all": true}, "command": "run", "data": {"script": "slow"}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    let stream = tokio::spawn(follow(c.url.clone(), c.admin_key.clone(), job_id.clone()));
    // Every run has started on its agent (and so is held by node A) when A dies.
    wait_for("every run started", READY_TIMEOUT, || {
        let api_b = api_b.clone();
        let job_id = job_id.clone();
        async move {
            let (_, job) = api_b.get(&format!("/api/jobs/{job_id}")).await;
            let runs = job["runs"].as_array()?;
            runs.iter().all(|r| r["status"] == "running").then_some(())
        }
    })
    .await;
    a.kill9();
    doomed.kill9();

    // The agents move to B or C and report there; the runs finish once the file is there.
    for id in &ids {
        wait_for("the agent back on a live node", READY_TIMEOUT, || {
            let api_b = api_b.clone();
            let id = id.clone();
            async move {
                let (_, agent) = api_b.get(&format!("/api/agents/{id}")).await;
                (agent["status"] == "online").then_some(())
            }
        })
        .await;
    }
    std::fs::write(&go, "").expect("go");
    // The run on the agent that never returns becomes lost once node A's lease has run out
    // and its agents were released; the others succeed.
    let done = api_c.wait_job(&job_id).await;
    assert_eq!(done["status"], "failed", "{done}");
    let runs = done["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 5, "{done}");
    for run in runs {
        let want = if run["agent_id"] == doomed_id.as_str() {
            "lost"
        } else {
            "succeeded"
        };
        assert_eq!(run["status"], want, "{done}");
    }
    // Lost by one node: counted once over the survivors' metrics.
    let http = reqwest::Client::new();
    let mut lost = 0.0;
    for node in [&b, &c] {
        let (_, text) = crate::metrics::scrape(&http, &node.url, Some(ADMIN_KEY)).await;
        lost += crate::metrics::value(&text, "outpost_commands_finished_total{state=\"lost\"}");
    }
    assert_eq!(lost, 1.0, "one lost run, marked by one node");
    // Each agent ran its script once.
    for (_, _, marks) in &agents {
        let started = std::fs::read_to_string(marks).expect("marks");
        assert_eq!(started.lines().count(), 1, "{}", marks.display());
    }
    // The stream on C saw every run end, then the job's end.
    let events = tokio::time::timeout(Duration::from_secs(60), stream)
        .await
        .expect("the stream ended")
        .expect("join");
    let (last, end) = events.last().expect("events");
    assert_eq!(last, "end", "{events:?}");
    assert_eq!(end["status"], "failed", "{events:?}");

    // Node A's lease runs out; one node takes it over.
    wait_for("node a taken over", Duration::from_secs(60), || {
        let api_b = api_b.clone();
        async move {
            let (_, nodes) = api_b.get("/api/nodes").await;
            let names: Vec<String> = nodes
                .as_array()?
                .iter()
                .filter_map(|n| n["name"].as_str().map(str::to_owned))
                .collect();
            (names == ["b", "c"]).then_some(())
        }
    })
    .await;
    drop(agents);
}

/// A rollout goes on when the node working it dies (CONTRACT.md §17, the claim rule): two
/// nodes, four supervised agents that know both; once the canary passed, the node holding the
/// rollout's claim is killed with `kill -9`; its agents move to the other node, which takes the
/// claim over once its lease lapses and finishes the rollout. Every agent ends at the new
/// version, healthy, and the rollout's events are recorded once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_on_when_the_node_working_it_dies() {
    use crate::rollouts::{counts, rollout_state, wait_versions};
    use crate::supervisor::{TwoReleases, start_supervisor_at};
    const AGENTS: usize = 4;
    let Some(pg) = postgres::required("cluster::a_rollout_goes_on_when_the_node_working_it_dies")
    else {
        return;
    };
    let database = Database::create(&pg);
    let mut nodes = [
        node(&database.url, "a").await,
        node(&database.url, "b").await,
    ];
    let tmp = tempfile::tempdir().expect("tempdir");
    let TwoReleases { pubkey, old, .. } = TwoReleases::publish(&nodes[0], tmp.path());
    // The release files, on node b too (OPERATIONS: shared storage, or a copy on each node).
    let copied = Command::new("cp")
        .arg("-a")
        .arg(nodes[0].data_dir.join("releases"))
        .arg(&nodes[1].data_dir)
        .status()
        .expect("cp");
    assert!(copied.success());

    let api = nodes[1].api();
    let (_, secret) = api
        .create_key(json!({"name": "fleet", "permissions": ["ping", "update"]}))
        .await;
    let urls = format!("{},{}", nodes[0].url, nodes[1].url);
    let fleet: Vec<_> = (0..AGENTS)
        .map(|i| {
            let home = tmp.path().join(format!("host-{i}"));
            std::fs::create_dir_all(&home).expect("mkdir");
            start_supervisor_at(&urls, &home, &old, &secret, &pubkey, &[])
        })
        .collect();
    wait_versions(&api, "every agent online at 0.1.0", |f| {
        f.len() == AGENTS && f.iter().all(|(_, v, s)| v == "0.1.0" && s == "online")
    })
    .await;

    // A canary, then two waves; soaks long enough that the kill lands inside a wave.
    let (status, rollout) = api
        .post(
            "/api/rollouts",
            json!({"version": "0.2.0", "target": {"all": true}, "canary": 1,
                   "waves": [50, 50], "max_in_flight": 100,
                   "health": {"online_within_s": 120, "soak_s": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let id = rollout["id"].as_str().expect("id").to_owned();
    rollout_state(&api, &id, &["wave 1"]).await;
    let holder = postgres::psql(
        &database.url,
        &format!(
            "SELECT n.name FROM rollouts r JOIN nodes n ON n.id = r.claimed_by WHERE r.id = '{id}'"
        ),
    );
    let doomed = match holder.trim() {
        "a" => 0,
        "b" => 1,
        other => panic!("the rollout's claim is held by {other:?}"),
    };
    nodes[doomed].kill9();
    let killed = std::time::Instant::now();
    let survivor = &nodes[1 - doomed];
    let api = survivor.api();

    let done = rollout_state(&api, &id, &["completed", "halted"]).await;
    eprintln!(
        "rollout over two nodes: node {holder} killed in wave 1; completed by the other {:.1} s later",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(counts(&done, "healthy"), AGENTS as i64, "{done}");
    wait_versions(&api, "every agent at 0.2.0, online", |f| {
        f.len() == AGENTS && f.iter().all(|(_, v, s)| v == "0.2.0" && s == "online")
    })
    .await;
    let (_, events) = api.get("/api/events?type=rollout").await;
    let mut kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["rollout.completed", "rollout.started"], "{events}");
    drop(fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_the_balancer_answers_a_ping_sent_through_it() {
    let Some(cluster) = Cluster::start(
        "cluster::an_agent_behind_the_balancer_answers_a_ping_sent_through_it",
        3,
    ) else {
        return;
    };
    assert_eq!(cluster.node_urls.len(), 3);
    for i in 0..3 {
        let (status, ready) = cluster.node_api(i).get("/readyz").await;
        assert_eq!(status, StatusCode::OK, "node{}: {ready}", i + 1);
    }
    let api = cluster.api();
    let (status, ready) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "through the balancer: {ready}");

    // The agent knows only the balancer: its WebSocket goes through HAProxy to some node.
    let (_, secret) = api.agent_key().await;
    let agent = Agent::start(&cluster.url, &secret);
    let id = agent.agent_id().await;
    let path = format!("/api/agents/{id}");
    let holder = wait_for("the agent online on a node", READY_TIMEOUT, || {
        let (cluster, path) = (&cluster, &path);
        async move {
            for i in 0..cluster.node_urls.len() {
                let (status, agent) = cluster.node_api(i).get(path).await;
                if status == StatusCode::OK && agent["status"] == "online" {
                    return Some(i);
                }
            }
            None
        }
    })
    .await;
    // The other nodes learn where it is from the database (within a few seconds).
    wait_for("the agent online on every node", READY_TIMEOUT, || {
        let (cluster, path) = (&cluster, &path);
        async move {
            for i in 0..cluster.node_urls.len() {
                let (_, agent) = cluster.node_api(i).get(path).await;
                if agent["status"] != "online" {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    assert!(
        agent.logs().contains("connected and registered"),
        "{}",
        agent.logs()
    );

    // The command goes through the balancer too, to whichever node it picks.
    let asked = std::time::Instant::now();
    let (status, pong) = api.command(&id, json!({"command": "ping"})).await;
    eprintln!("the ping took {:?}", asked.elapsed());
    assert_eq!(
        status,
        StatusCode::OK,
        "ping through the balancer (agent on node{}): {pong}",
        holder + 1
    );
    assert_eq!(pong["status"], "succeeded", "{pong}");
}

/// `docker-compose config` with every variable of `deploy/env.example` set to a sample.
fn compose_config(root: &Path, with_secrets: bool) -> Option<std::process::Output> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = tmp.path().join("empty.env");
    std::fs::write(&empty, "").expect("empty env file");
    let mut command = Command::new("docker-compose");
    // Nothing from the machine's own environment or a `.env` beside the file.
    command
        .arg("--env-file")
        .arg(&empty)
        .arg("-f")
        .arg(root.join("deploy/compose.yaml"))
        .args(["config", "-q"])
        .env_remove("OUTPOST_ADMIN_KEY")
        .env_remove("OUTPOST_MASTER_KEY")
        .env_remove("POSTGRES_PASSWORD");
    if with_secrets {
        command
            .env("OUTPOST_ADMIN_KEY", format!("opk_{}", "a1".repeat(24)))
            .env("OUTPOST_MASTER_KEY", "b2".repeat(32))
            .env("POSTGRES_PASSWORD", "c3c3c3");
    }
    command.output().ok()
}

#[test]
fn the_compose_example_is_valid_and_needs_its_secrets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let config = std::fs::read_to_string(root.join("deploy/haproxy.cfg")).expect("haproxy.cfg");
    let compose = std::fs::read_to_string(root.join("deploy/compose.yaml")).expect("compose");
    // Every server of the balancer is a service of the compose file, and the other way round.
    let servers: Vec<&str> = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.split_whitespace().nth(1)?.split(':').next())
        .collect();
    assert_eq!(servers, ["outpost-1", "outpost-2", "outpost-3"]);
    for server in &servers {
        assert!(
            compose.contains(&format!("\n  {server}:\n")),
            "{server} is not a compose service"
        );
    }
    // scripts/cluster.sh keeps what is above this line.
    assert!(config.contains("\n    # --- servers"), "the servers marker");

    if Command::new("haproxy").arg("-v").output().is_ok() {
        let out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(root.join("deploy/haproxy.cfg"))
            .output()
            .expect("haproxy -c");
        assert!(out.status.success(), "haproxy -c: {out:?}");
    } else {
        eprintln!("haproxy is not installed: deploy/haproxy.cfg not checked by HAProxy itself");
    }

    let Some(out) = compose_config(root, true) else {
        eprintln!(
            "SKIPPED cluster::the_compose_example_is_valid_and_needs_its_secrets (compose part): \
             needs docker-compose (Debian: apt-get install docker-compose)"
        );
        return;
    };
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No default stands in for a secret.
    let out = compose_config(root, false).expect("docker-compose");
    assert!(!out.status.success(), "it ran without the secrets");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("env.example"), "{err}");
}

/// `GET /api/nodes` is for owners (the nodes serve every tenant): an admin's key, a wrong key
/// and no key are refused; on SQLite, with one node and no cluster, the list is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_list_is_for_owners_only() {
    use outpost_store::Store;
    let server = Server::start().await;
    let api = server.api();
    let store = Store::open(&server.database()).await.expect("open store");
    let owner = store
        .api_key_by_hash(&outpost_store::credentials::hash_secret(&server.admin_key))
        .await
        .expect("read")
        .expect("owner key");
    let admin_key = store
        .create_api_key(&owner.tenant_id, "an admin", "admin")
        .await
        .expect("admin key");
    let (status, body) = api.with_token(&admin_key).get("/api/nodes").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let (status, _) = api.with_token("opk_wrong").get("/api/nodes").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, nodes) = api.get("/api/nodes").await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    let nodes = nodes.as_array().expect("a list");
    if server.database_url.is_none() {
        assert!(nodes.is_empty(), "{nodes:?}");
    } else {
        assert_eq!(nodes.len(), 1, "{nodes:?}");
        assert_eq!(nodes[0]["this_node"], true, "{nodes:?}");
    }
}

/// A key revoked on one node is refused by the others at once: the node that revoked it tells
/// them (a `NOTIFY`) to forget their kept copies of credentials, rather than leaving the copies
/// to age out (CONTRACT.md §9: "takes effect on the next request").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_node_is_forgotten_by_the_others() {
    let test = "cluster::a_key_revoked_on_one_node_is_forgotten_by_the_others";
    let Some(cluster) = postgres::required(test) else {
        return;
    };
    let database = Database::create(&cluster);
    let a = node(&database.url, "a").await;
    let b = node(&database.url, "b").await;
    let (owner, _) = a
        .user("owner@example.com", "owner", "a long enough password")
        .await;
    let (status, key) = owner
        .post("/api/keys", json!({"name": "ops", "scopes": ["*"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let on_b = b.api().with_token(key["secret"].as_str().expect("secret"));
    // Node b reads the key and keeps it (a creation tells no node anything).
    assert_eq!(on_b.get("/api/agents").await.0, StatusCode::OK);
    let heard = forgotten_by_word_of_another_node(&b, ADMIN_KEY).await;

    let id = key["id"].as_str().expect("id");
    let (status, body) = owner.delete(&format!("/api/keys/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        a.api()
            .with_token(key["secret"].as_str().expect("secret"))
            .get("/api/agents")
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "the node that revoked it"
    );
    let told = wait_for(
        "node b to be told of the revocation",
        READY_TIMEOUT,
        || async {
            let n = forgotten_by_word_of_another_node(&b, ADMIN_KEY).await;
            (n > heard).then_some(n)
        },
    )
    .await;
    assert_eq!(on_b.get("/api/agents").await.0, StatusCode::UNAUTHORIZED);

    // The host command that rotates the owner key beside running nodes tells them too; once
    // it returns, the old owner key is refused on every node.
    let out = Command::new(outpost_e2e::bin_dir().join("outpost-server"))
        .args(["admin-key", "rotate", "--data-dir"])
        .arg(&a.data_dir)
        .args(a.database_args())
        .env_remove("OUTPOST_ADMIN_KEY")
        .env_remove("OUTPOST_DATABASE_URL")
        .output()
        .expect("running admin-key rotate");
    assert!(out.status.success(), "{out:?}");
    for server in [&a, &b] {
        let (status, body) = server.api().with_token(ADMIN_KEY).get("/api/agents").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let rotated = std::fs::read_to_string(a.data_dir.join("admin.key")).expect("admin.key");
    assert!(forgotten_by_word_of_another_node(&b, rotated.trim()).await > told);
}

/// An agent key narrowed on node a refuses the next command to its agent connected to node
/// b once b is told, though b keeps the agent's row (with its key) for commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_key_narrowed_on_one_node_is_forgotten_by_the_others() {
    let test = "cluster::an_agent_key_narrowed_on_one_node_is_forgotten_by_the_others";
    let Some(cluster) = postgres::required(test) else {
        return;
    };
    let database = Database::create(&cluster);
    let a = node(&database.url, "a").await;
    let b = node(&database.url, "b").await;
    let (key_id, secret) = a
        .api()
        .create_key(json!({"name": "deploy", "permissions": ["ping", "echo"]}))
        .await;
    let agent = Agent::start(&b.url, &secret);
    let on_b = b.api();
    let id = agent.wait_online(&on_b).await;
    let echo = json!({"command": "echo", "data": {"message": "hi"}});
    for _ in 0..3 {
        let (status, body) = on_b.command(&id, echo.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let kept = b
        .metric("outpost_agent_row_reads_total", "from=\"kept\"")
        .await;
    assert!(kept >= 1.0, "node b read no kept row ({kept})");
    let other_node = "why=\"other_node\"";
    let heard = b
        .metric("outpost_agent_rows_forgotten_total", other_node)
        .await;

    let (status, body) = a
        .api()
        .patch(
            &format!("/api/agents/keys/{key_id}"),
            json!({"permissions": ["ping"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for(
        "node b to be told of the key's change",
        READY_TIMEOUT,
        || async {
            (b.metric("outpost_agent_rows_forgotten_total", other_node)
                .await
                > heard)
                .then_some(())
        },
    )
    .await;
    let (status, err) = on_b.command(&id, echo).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let (status, body) = on_b.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `outpost_credentials_forgotten_total{why="other_node"}` of `server`, read with an owner key.
async fn forgotten_by_word_of_another_node(server: &Server, owner_key: &str) -> f64 {
    server
        .metric_as(
            owner_key,
            "outpost_credentials_forgotten_total",
            "why=\"other_node\"",
        )
        .await
}
