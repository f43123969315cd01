//! The batching writer: many agents finishing at once cost few transactions, every write is
//! committed and answered, and repeats are no-ops.

use outpost_protocol::Response;
use outpost_server::store::writer::{Write, Writer, Written};
use outpost_server::store::{DatabaseLocation, NewCommand, Store};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_results_commit_in_few_transactions() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("outpost.db")))
        .await
        .expect("open");
    let (tenant, _) = store.create_tenant("t", None).await.expect("tenant");
    let mut ids = Vec::new();
    for i in 0..2000 {
        let command = store
            .insert_command(NewCommand {
                tenant_id: tenant.clone(),
                agent_id: format!("agent-{i}"),
                command: "ping".into(),
                data: json!({}),
                timeout_s: 60,
                ttl_s: 3600,
                job_id: None,
            })
            .await
            .expect("insert");
        ids.push((format!("agent-{i}"), command.id));
    }
    let writer = Writer::start(store.clone());
    let finish = |agent: String, id: String| {
        let (writer, tenant) = (writer.clone(), tenant.clone());
        tokio::spawn(async move {
            let response = Response::ok(id.parse().expect("uuid"), json!({"pong": true}));
            writer
                .write(Write::Finish {
                    tenant_id: tenant,
                    agent_id: agent,
                    response,
                })
                .await
                .expect("write")
        })
    };
    let tasks: Vec<_> = ids
        .iter()
        .map(|(a, id)| finish(a.clone(), id.clone()))
        .collect();
    for task in tasks {
        assert!(matches!(
            task.await.expect("join"),
            Written::Finished(Some(_))
        ));
    }
    let (batches, writes) = writer.stats();
    println!("{writes} results committed in {batches} transactions");
    assert_eq!(writes, 2000);
    assert!(
        batches * 4 < writes,
        "{batches} transactions for {writes} writes"
    );
    for (_, id) in &ids {
        let stored = store
            .get_command(&tenant, id)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(stored.state, "succeeded");
    }
    // A repeated answer changes nothing; one for another agent's command is ignored.
    let (agent, id) = ids[0].clone();
    let again = Response::ok(id.parse().expect("uuid"), json!({"pong": false}));
    let written = writer
        .write(Write::Finish {
            tenant_id: tenant.clone(),
            agent_id: agent,
            response: again.clone(),
        })
        .await
        .expect("write");
    assert!(matches!(written, Written::Finished(None)));
    let written = writer
        .write(Write::Finish {
            tenant_id: tenant.clone(),
            agent_id: "intruder".into(),
            response: again,
        })
        .await
        .expect("write");
    assert!(matches!(written, Written::Finished(None)));
    let stored = store
        .get_command(&tenant, &id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(stored.result, Some(json!({"pong": true})));
}
