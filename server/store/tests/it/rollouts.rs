//! Staged rollouts in the store (CONTRACT.md §17): an agent is held by one active rollout at a
//! time; an agent's row moves only from the state it was seen in, and only while the node
//! holds the rollout's claim; a rollout moves only from the state and stage it was seen at;
//! completion lets go of the agents and sets the target's desired version; another node takes
//! a rollout over once its holder's claim lapses.

use chrono::{Duration, Utc};
use outpost_store::domain::{
    Actor, AuditAction, AuditEvent, AuditTarget, RolloutAgentState as A, RolloutState as R,
};
use outpost_store::{
    AgentMove, AuditRecord, NewEvent, RolloutMove, RolloutRefused, Store, rollout, rollout_agent,
};
use serde_json::json;

use crate::common;

fn audit(tenant: &str, id: &str) -> AuditRecord {
    AuditRecord {
        tenant_id: tenant.to_owned(),
        actor: Actor::system("test", "test"),
        address: None,
        event: AuditEvent::new(AuditAction::RolloutStart, AuditTarget::Rollout, id),
    }
}

fn event<'a>(tenant: &'a str, id: &'a str) -> NewEvent<'a> {
    NewEvent {
        tenant_id: tenant,
        kind: "rollout.started",
        subject: ("rollout", id, "0.2.0"),
        summary: "started".into(),
        detail: json!({}),
        dedup_key: Some(format!("rollout.started:{id}")),
    }
}

fn model(tenant: &str, id: &str, agents: usize) -> rollout::Model {
    let now = Utc::now();
    rollout::Model {
        id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        version: "0.2.0".into(),
        target: json!({"all": true}),
        target_key: "all".into(),
        canary: 1,
        waves: json!([100]),
        max_in_flight: 10,
        health: json!({}),
        state: R::Running.as_str().into(),
        stage: 0,
        agents: agents as i32,
        reason: None,
        created_by: "test".into(),
        created_at: now,
        updated_at: now,
        finished_at: None,
        claimed_by: None,
        claimed_until: None,
    }
}

fn agents(tenant: &str, id: &str, names: &[&str]) -> Vec<rollout_agent::Model> {
    names
        .iter()
        .enumerate()
        .map(|(i, agent)| rollout_agent::Model {
            rollout_id: id.to_owned(),
            agent_id: (*agent).to_owned(),
            tenant_id: tenant.to_owned(),
            seq: i as i32,
            stage: i32::from(i > 0),
            state: A::Pending.as_str().into(),
            from_version: "0.1.0".into(),
            sent_at: None,
            soak_from: None,
            command_id: None,
            check_id: None,
            reason: None,
            updated_at: Utc::now(),
            held: true,
        })
        .collect()
}

async fn start(store: &Store, tenant: &str, id: &str, names: &[&str]) -> rollout::Model {
    let m = model(tenant, id, names.len());
    store
        .insert_rollout(
            m.clone(),
            agents(tenant, id, names),
            &audit(tenant, id),
            event(tenant, id),
        )
        .await
        .expect("insert")
        .expect("not refused");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_held_by_one_active_rollout_and_moves_only_from_what_was_seen() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let first = start(&store, &tenant, "r1", &["a", "b", "c"]).await;
    // A second rollout over one of its agents is refused as a whole, naming it.
    let refused = store
        .insert_rollout(
            model(&tenant, "r2", 2),
            agents(&tenant, "r2", &["c", "d"]),
            &audit(&tenant, "r2"),
            event(&tenant, "r2"),
        )
        .await
        .expect("insert");
    match refused {
        Err(RolloutRefused::Held(taken)) => {
            assert_eq!(taken, [("c".to_owned(), "r1".to_owned())]);
        }
        Ok(()) => panic!("a held agent was taken by a second rollout"),
    }
    assert!(
        store
            .get_rollout(&tenant, "r2")
            .await
            .expect("read")
            .is_none()
    );

    // Only the node holding the claim moves agents, and only from the state it saw.
    let now = Utc::now();
    let claimed = store
        .claim_rollouts("node-1", now, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert!(
        store
            .claim_rollouts("node-2", now, 10)
            .await
            .expect("claim")
            .is_empty(),
        "a held claim is not taken"
    );
    let send = AgentMove::new("a", A::Pending, A::Updating, None);
    let made = store
        .move_rollout_agents("r1", "node-2", vec![send.clone()], now)
        .await
        .expect("move");
    assert!(made.is_empty(), "node-2 holds no claim");
    let made = store
        .move_rollout_agents("r1", "node-1", vec![send.clone(), send.clone()], now)
        .await
        .expect("move");
    assert_eq!(
        made.len(),
        1,
        "the second move saw a state that had changed"
    );

    // Once the claim lapses, another node takes the rollout over.
    let later = now + Duration::seconds(31);
    let taken = store
        .claim_rollouts("node-2", later, 10)
        .await
        .expect("claim");
    assert_eq!(taken.len(), 1, "a lapsed claim is taken over");

    // A rollout moves only from the state and stage it was seen at; completing it lets go of
    // its agents and sets the desired version.
    let pause = RolloutMove {
        from: R::Running,
        from_stage: 1,
        to: R::Paused,
        to_stage: 1,
        reason: None,
    };
    assert!(
        !store
            .move_rollout(&first, None, &pause, None, None, later)
            .await
            .expect("move"),
        "seen at another stage"
    );
    let done = RolloutMove {
        from: R::Running,
        from_stage: 0,
        to: R::Completed,
        to_stage: 0,
        reason: None,
    };
    assert!(
        !store
            .move_rollout(&first, Some("node-1"), &done, None, None, later)
            .await
            .expect("move"),
        "node-1's claim was taken over"
    );
    assert!(
        store
            .move_rollout(&first, Some("node-2"), &done, None, None, later)
            .await
            .expect("move")
    );
    let desired = store.desired_versions(&tenant).await.expect("desired");
    assert_eq!(desired.len(), 1);
    assert_eq!(desired[0].version, "0.2.0");
    assert!(store.held_agents(&tenant).await.expect("held").is_empty());
    // Its agents are free for the next rollout.
    start(&store, &tenant, "r3", &["c", "d"]).await;
    let counts = store.rollout_counts("r1").await.expect("counts");
    let updating: i64 = counts
        .iter()
        .filter(|(_, s, _)| s == A::Updating.as_str())
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(updating, 1);
}
