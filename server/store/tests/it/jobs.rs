//! Creating a job stores exactly the runs it returns: every shared field, each run's own
//! agent, and a refused run's outcome, across more runs than one insert statement holds.

use outpost_store::domain::Transport;
use outpost_store::{NewJob, NewRun, Store, job_status, state};
use serde_json::json;

use crate::common;

async fn store_with_tenant() -> (common::Fresh, Store, String) {
    common::fresh_store().await
}

#[tokio::test]
async fn a_job_s_runs_are_stored_as_returned_refused_ones_already_failed() {
    let (_dir, store, tenant) = store_with_tenant().await;

    // 2,500 runs: two full statements of 1,024 and a padded one.
    let runs: Vec<NewRun> = (0..2500)
        .map(|i| NewRun {
            agent_id: format!("agent-{i}"),
            refused: (i % 100 == 7).then(|| ("forbidden".to_owned(), format!("no {i}"))),
            key_id: None,
        })
        .collect();
    let data = json!({"script": "backup", "params": {"where": "o'neil; drop table x"}});
    let (job, returned, created) = store
        .create_job(
            NewJob {
                tenant_id: tenant.clone(),
                command: "run".into(),
                data: data.clone(),
                sealed_params: Some("sealed-values".into()),
                target: json!({"all": true}),
                timeout_s: 90,
                ttl_s: 600,
                idempotency_key: None,
                request_fingerprint: None,
                webhook_url: None,
                fire: None,
                note: None,
                rerun_of: None,
            },
            runs,
        )
        .await
        .expect("create");
    assert!(created);
    assert_eq!(job.status, job_status::RUNNING);
    assert_eq!(returned.len(), 2500);

    let mut stored = store.job_runs(&tenant, &job.id).await.expect("runs");
    assert_eq!(stored.len(), 2500);
    stored.sort_by(|a, b| a.id.cmp(&b.id));
    let mut returned = returned;
    returned.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        stored, returned,
        "the rows are the models create_job handed back"
    );

    let refused: Vec<_> = stored.iter().filter(|r| r.state == state::FAILED).collect();
    assert_eq!(refused.len(), 25);
    for run in &refused {
        let i: u32 = run.agent_id["agent-".len()..]
            .parse()
            .expect("agent number");
        assert_eq!(i % 100, 7);
        assert_eq!(run.error_code.as_deref(), Some("forbidden"));
        assert_eq!(run.error_message, Some(format!("no {i}")));
        assert_eq!(run.success, Some(false));
        assert!(run.finished_at.is_some());
    }
    for run in &stored {
        assert_eq!(run.tenant_id, tenant);
        assert_eq!(run.job_id.as_deref(), Some(job.id.as_str()));
        assert_eq!(run.command, "run");
        assert_eq!(run.data, data);
        assert_eq!(run.sealed_params.as_deref(), Some("sealed-values"));
        assert_eq!(run.timeout_s, 90);
        assert_eq!(
            run.expires_at - run.created_at,
            chrono::Duration::seconds(600)
        );
        assert_eq!(run.stdout_bytes, 0);
        assert!(!run.output_truncated);
        if run.state != state::FAILED {
            assert_eq!(run.state, state::PENDING);
            assert!(run.finished_at.is_none() && run.success.is_none());
            assert!(run.error_code.is_none() && run.error_message.is_none());
        }
    }
    let agents: std::collections::HashSet<_> = stored.iter().map(|r| &r.agent_id).collect();
    assert_eq!(agents.len(), 2500, "one run per agent");
}

fn register(hostname: &str, tags: &[&str]) -> outpost_protocol::RegisterData {
    serde_json::from_value(json!({
        "agent_id": uuid::Uuid::now_v7(), "hostname": hostname, "ip": "127.0.0.1",
        "version": "0.1.0", "os": "linux", "arch": "x86_64", "protocol": 1,
        "capabilities": ["ping"], "tags": tags, "scripts": []
    }))
    .expect("register data")
}

#[tokio::test]
async fn targets_are_the_tenant_s_agents_in_hostname_order_with_every_tag() {
    let (_dir, store, tenant) = store_with_tenant().await;
    let (other, _) = store.create_tenant("u", None).await.expect("tenant");
    assert!(
        store
            .agent_targets(&tenant)
            .await
            .expect("empty")
            .is_empty()
    );

    let hosts = [
        "web-2",
        "db \"main\"",
        "web-10",
        "ünïcode",
        "web-1",
        "ctl\u{1e}\u{1f}host",
    ];
    let mut ids = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let tags = [
            "fleet",
            if i % 2 == 0 {
                "even"
            } else {
                "odd\\\"]\u{1e}\u{1f}"
            },
        ];
        let agent = store
            .upsert_agent(
                &tenant,
                &format!("key-{i}"),
                &register(host, &tags),
                None,
                Transport::Websocket,
            )
            .await
            .expect("upsert")
            .into_stored()
            .expect("bound to its key");
        ids.push((host.to_string(), agent.id, format!("key-{i}"), i));
    }
    store
        .set_agent_tags(&tenant, &ids[0].1, &["pinned".to_owned()])
        .await
        .expect("tags");
    // Another tenant's agent, first in hostname order, is not a target. (The odd tags hold
    // the separators the SQLite query joins fields with: stored as JSON, they are escaped.)
    store
        .upsert_agent(
            &other,
            "key-x",
            &register("a-first", &["fleet"]),
            None,
            Transport::Websocket,
        )
        .await
        .expect("upsert")
        .into_stored()
        .expect("bound to its key");

    let targets = store.agent_targets(&tenant).await.expect("targets");
    let mut expected = ids.clone();
    expected.sort();
    let got: Vec<(&str, &str)> = targets
        .iter()
        .map(|t| (t.id.as_str(), t.key_id.as_str()))
        .collect();
    let want: Vec<(&str, &str)> = expected
        .iter()
        .map(|(_, id, key, _)| (id.as_str(), key.as_str()))
        .collect();
    assert_eq!(got, want, "by hostname, then id");
    for (target, (_, _, _, i)) in targets.iter().zip(&expected) {
        let tags = vec![
            "fleet".to_owned(),
            if i % 2 == 0 {
                "even"
            } else {
                "odd\\\"]\u{1e}\u{1f}"
            }
            .to_owned(),
        ];
        assert_eq!(target.declared, tags, "the agent's own tags");
        let server: Vec<String> = if *i == 0 {
            vec!["pinned".to_owned()]
        } else {
            Vec::new()
        };
        assert_eq!(target.server, server, "the server's tags");
    }
}

/// A command's agent and its key come back from one query: the key while it exists, nothing for
/// another tenant's agent, and no key for an agent whose key is gone or belongs elsewhere.
#[tokio::test]
async fn an_agent_is_read_with_its_own_tenant_s_key() {
    let (_dir, store, tenant) = store_with_tenant().await;
    let (other, _) = store.create_tenant("u", None).await.expect("tenant");
    let (key, _) = store
        .create_agent_key(&tenant, "k", &["ping".to_owned()], &[], None)
        .await
        .expect("key");
    let (foreign_key, _) = store
        .create_agent_key(&other, "k", &["ping".to_owned()], &[], None)
        .await
        .expect("key");
    let agent = store
        .upsert_agent(
            &tenant,
            &key.id,
            &register("a", &[]),
            None,
            Transport::Websocket,
        )
        .await
        .expect("upsert")
        .into_stored()
        .expect("bound to its key");
    let misfiled = store
        .upsert_agent(
            &tenant,
            &foreign_key.id,
            &register("b", &[]),
            None,
            Transport::Websocket,
        )
        .await
        .expect("upsert")
        .into_stored()
        .expect("bound to its key");

    let (found, found_key) = store
        .get_agent_with_key(&tenant, &agent.id)
        .await
        .expect("read")
        .expect("the agent");
    assert_eq!(found.id, agent.id);
    assert_eq!(found_key.map(|k| k.id), Some(key.id.clone()));
    assert!(
        store
            .get_agent_with_key(&other, &agent.id)
            .await
            .expect("read")
            .is_none(),
        "another tenant sees no such agent"
    );
    let (_, no_key) = store
        .get_agent_with_key(&tenant, &misfiled.id)
        .await
        .expect("read")
        .expect("the agent");
    assert!(no_key.is_none(), "another tenant's key is not this agent's");

    assert!(
        store
            .delete_agent_key(&tenant, &key.id)
            .await
            .expect("delete")
    );
    let (_, gone) = store
        .get_agent_with_key(&tenant, &agent.id)
        .await
        .expect("read")
        .expect("the agent stays");
    assert!(gone.is_none(), "a deleted key is no key");
}

/// A job whose every run was refused is over when it is created (failed, with its end time);
/// the writer's check after a batch of results ends a job once its last run is final.
#[tokio::test]
async fn a_job_ends_when_its_last_run_is_final_even_at_creation() {
    let (_dir, store, tenant) = store_with_tenant().await;
    let new = |key: &str| NewJob {
        tenant_id: tenant.clone(),
        command: "ping".into(),
        data: json!({}),
        sealed_params: None,
        target: json!({"all": true}),
        timeout_s: 60,
        ttl_s: 600,
        idempotency_key: Some(key.into()),
        request_fingerprint: None,
        webhook_url: None,
        fire: None,
        note: None,
        rerun_of: None,
    };
    let refused = |i: usize| NewRun {
        agent_id: format!("agent-{i}"),
        refused: Some(("forbidden".to_owned(), "no ping".to_owned())),
        key_id: None,
    };
    let (job, _, _) = store
        .create_job(new("all-refused"), (0..3).map(refused).collect())
        .await
        .expect("create");
    assert_eq!(job.status, job_status::FAILED);
    assert!(job.finished_at.is_some());

    let runs = vec![
        refused(0),
        NewRun {
            agent_id: "agent-1".into(),
            refused: None,
            key_id: None,
        },
    ];
    let (job, runs, _) = store
        .create_job(new("one-pending"), runs)
        .await
        .expect("create");
    assert_eq!(job.status, job_status::RUNNING);
    assert!(job.finished_at.is_none());
    // Still running while the pending run is open: the check changes nothing.
    store
        .refresh_job_after_results(&tenant, &job.id)
        .await
        .expect("refresh");
    let still = store
        .get_job(&tenant, &job.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(still.status, job_status::RUNNING);
    // Its last run answered: the same check ends the job.
    let pending = runs
        .iter()
        .find(|r| r.state == state::PENDING)
        .expect("a pending run");
    let answer =
        outpost_protocol::Response::ok(pending.id.parse().expect("uuid"), json!({"pong": true}));
    let stored = store
        .store_results_many(&[(tenant.as_str(), "agent-1", &answer)])
        .await
        .expect("store");
    assert_eq!(stored.len(), 1);
    store
        .refresh_job_after_results(&tenant, &job.id)
        .await
        .expect("refresh");
    let ended = store
        .get_job(&tenant, &job.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(ended.status, job_status::FAILED, "one run was refused");
    assert!(ended.finished_at.is_some());
}

/// An agent id is bound to the key that first registered it: another key is refused (and
/// changes nothing) until the agent is forgotten; the same id in another tenant is another
/// agent. Registrations racing each other with two keys bind the id to exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_id_is_bound_to_the_key_that_first_registered_it() {
    use outpost_store::Registered;
    let (_dir, store, tenant) = store_with_tenant().await;
    let (other, _) = store.create_tenant("u", None).await.expect("tenant");
    let data = register("host-a", &["own"]);
    let first = store
        .upsert_agent(&tenant, "key-a", &data, None, Transport::Websocket)
        .await
        .expect("register")
        .into_stored()
        .expect("a new id binds");
    assert_eq!(first.key_id, "key-a");

    let thief = outpost_protocol::RegisterData {
        hostname: "stolen".into(),
        ..data.clone()
    };
    let taken = store
        .upsert_agent(&tenant, "key-b", &thief, None, Transport::Websocket)
        .await
        .expect("register");
    assert!(
        matches!(&taken, Registered::Taken { key_id } if key_id == "key-a"),
        "{taken:?}"
    );
    let kept = store
        .get_agent(&tenant, &first.id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        (kept.key_id.as_str(), kept.hostname.as_str()),
        ("key-a", "host-a")
    );

    // Its own key refreshes it; another tenant's same id is a different agent.
    let again = store
        .upsert_agent(&tenant, "key-a", &thief, None, Transport::Websocket)
        .await
        .expect("register")
        .into_stored()
        .expect("its own key");
    assert_eq!(again.hostname, "stolen");
    assert!(
        store
            .upsert_agent(&other, "key-b", &data, None, Transport::Websocket)
            .await
            .expect("register")
            .into_stored()
            .is_some()
    );

    // Forgotten, the id is free for the next key.
    assert!(
        store
            .delete_agent(&tenant, &first.id)
            .await
            .expect("delete")
            .is_some()
    );
    let rebound = store
        .upsert_agent(&tenant, "key-b", &data, None, Transport::Websocket)
        .await
        .expect("register")
        .into_stored()
        .expect("free again");
    assert_eq!(rebound.key_id, "key-b");

    // Racing: two keys, ten registrations each, one fresh id.
    let contested = register("contested", &[]);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (store, tenant, data) = (store.clone(), tenant.clone(), contested.clone());
        let key = if i % 2 == 0 { "key-x" } else { "key-y" };
        tasks.push(tokio::spawn(async move {
            let registered = store
                .upsert_agent(&tenant, key, &data, None, Transport::Websocket)
                .await
                .expect("register");
            (key, registered.into_stored().is_some())
        }));
    }
    let mut won = std::collections::HashMap::new();
    for task in tasks {
        let (key, stored) = task.await.expect("join");
        *won.entry((key, stored)).or_insert(0) += 1;
    }
    let winner = store
        .get_agent(&tenant, &contested.agent_id.to_string())
        .await
        .expect("read")
        .expect("row")
        .key_id;
    let loser = if winner == "key-x" { "key-y" } else { "key-x" };
    assert_eq!(won.get(&(winner.as_str(), true)), Some(&10), "{won:?}");
    assert_eq!(won.get(&(loser, false)), Some(&10), "{won:?}");
}

/// Two nodes' writers store a job's last two results, each in its own transaction, and settle
/// the job after their commits (as on PostgreSQL): the first to settle still sees the other's
/// run open and leaves the job; until the second settles, the job is the sweep's to find
/// (`unsettled_jobs`: a node stopped in between); the second settles it. On PostgreSQL the two
/// transactions are open at once, as two nodes' are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_node_to_commit_a_job_s_results_settles_it() {
    let (fresh, node1, tenant) = store_with_tenant().await;
    let node2 = Store::open(&fresh.location).await.expect("second node");
    let runs = (1..=2)
        .map(|i| NewRun {
            agent_id: format!("agent-{i}"),
            refused: None,
            key_id: None,
        })
        .collect();
    let (job, runs, _) = node1
        .create_job(
            NewJob {
                tenant_id: tenant.clone(),
                command: "ping".into(),
                data: json!({}),
                sealed_params: None,
                target: json!({"all": true}),
                timeout_s: 60,
                ttl_s: 600,
                idempotency_key: None,
                request_fingerprint: None,
                webhook_url: None,
                fire: None,
                note: None,
                rerun_of: None,
            },
            runs,
        )
        .await
        .expect("create");
    let answer = |i: usize| {
        outpost_protocol::Response::ok(runs[i].id.parse().expect("uuid"), json!({"pong": true}))
    };
    let (one, two) = (answer(0), answer(1));
    let status = || async {
        node1
            .get_job(&tenant, &job.id)
            .await
            .expect("get")
            .expect("job")
            .status
    };

    let first = node1.begin().await.expect("begin");
    let stored = first
        .store_results_many(&[(tenant.as_str(), runs[0].agent_id.as_str(), &one)])
        .await
        .expect("store");
    assert_eq!(stored.len(), 1);
    let second = if fresh.is_postgres() {
        let second = node2.begin().await.expect("begin");
        second
            .store_results_many(&[(tenant.as_str(), runs[1].agent_id.as_str(), &two)])
            .await
            .expect("store");
        Some(second)
    } else {
        None
    };
    first.commit().await.expect("commit");
    node1.settle_job(&tenant, &job.id).await.expect("settle");
    assert_eq!(status().await, job_status::RUNNING, "the other run is open");
    assert!(node1.unsettled_jobs().await.expect("look").is_empty());

    match second {
        Some(second) => second.commit().await.expect("commit"),
        None => {
            let second = node2.begin().await.expect("begin");
            second
                .store_results_many(&[(tenant.as_str(), runs[1].agent_id.as_str(), &two)])
                .await
                .expect("store");
            second.commit().await.expect("commit");
        }
    }
    assert_eq!(status().await, job_status::RUNNING, "not settled yet");
    assert_eq!(
        node1.unsettled_jobs().await.expect("look"),
        vec![(tenant.clone(), job.id.clone())],
        "the sweep finds the job every run of which is final"
    );
    node2.settle_job(&tenant, &job.id).await.expect("settle");
    assert_eq!(status().await, job_status::SUCCEEDED);
    assert!(node1.unsettled_jobs().await.expect("look").is_empty());
    // Settling again changes nothing.
    node1.settle_job(&tenant, &job.id).await.expect("settle");
    assert_eq!(status().await, job_status::SUCCEEDED);
}
