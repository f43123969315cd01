//! Agents' events in the store, on SQLite and (postgres profile) PostgreSQL: `agent.offline`
//! once per disconnect that lasted past the cutoff, never for one that came back or is held by
//! a node, once however many sweeps race; `agent.online` only after an announced offline;
//! an update report once however often the agent repeats it.

use crate::common;

use chrono::{Duration, Utc};
use outpost_protocol::release::UpdateStatus;
use outpost_store::domain::Transport;
use outpost_store::{
    AGENT_OFFLINE, AGENT_ONLINE, AGENT_UPDATE_ROLLED_BACK, AGENT_UPDATED, EventFilter, Store, agent,
};
use serde_json::json;

fn register(hostname: &str, id: uuid::Uuid) -> outpost_protocol::RegisterData {
    serde_json::from_value(json!({
        "agent_id": id, "hostname": hostname, "ip": "127.0.0.1",
        "version": "0.1.0", "os": "linux", "arch": "x86_64", "protocol": 1,
        "capabilities": ["ping"], "tags": ["web"], "scripts": []
    }))
    .expect("register data")
}

async fn connect(store: &Store, tenant: &str, hostname: &str, id: uuid::Uuid) -> agent::Model {
    store
        .upsert_agent(
            tenant,
            "key-1",
            &register(hostname, id),
            None,
            Transport::Websocket,
        )
        .await
        .expect("upsert")
        .into_stored()
        .expect("bound to its key")
}

async fn events(store: &Store, tenant: &str, kind: &str) -> Vec<(String, String)> {
    let mut got: Vec<(String, String)> = store
        .list_events(
            tenant,
            &EventFilter {
                kind: Some(kind.into()),
                limit: 1000,
                ..EventFilter::default()
            },
        )
        .await
        .expect("events")
        .into_iter()
        .map(|e| (e.subject_id, e.subject_name))
        .collect();
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_is_announced_once_per_disconnect_and_online_only_after_it() {
    let (fresh, store, tenant) = common::fresh_store().await;
    let other = Store::open(&fresh.location)
        .await
        .expect("second connection");
    let (a, b, c, d) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    for (host, id) in [("a", a), ("b", b), ("c", c), ("d", d)] {
        connect(&store, &tenant, host, id).await;
    }
    for id in [a, b] {
        store
            .record_disconnect(&tenant, &id.to_string(), None)
            .await
            .expect("disconnect");
    }
    // c came back before the sweep: not offline.
    store
        .record_disconnect(&tenant, &c.to_string(), None)
        .await
        .expect("disconnect");
    connect(&store, &tenant, "c", c).await;

    // Gone, but not for long enough.
    let past = Utc::now() - Duration::hours(1);
    assert!(
        store
            .record_agents_offline(past, None)
            .await
            .expect("sweep")
            .is_empty()
    );

    // Two sweeps at once announce each agent once.
    let cutoff = Utc::now() + Duration::seconds(1);
    let (x, y) = tokio::join!(
        store.record_agents_offline(cutoff, None),
        other.record_agents_offline(cutoff, None)
    );
    let announced = x.expect("sweep").len() + y.expect("sweep").len();
    assert_eq!(announced, 2, "a and b, once each");
    let mut want = vec![
        (a.to_string(), "a".to_owned()),
        (b.to_string(), "b".to_owned()),
    ];
    want.sort();
    assert_eq!(events(&store, &tenant, AGENT_OFFLINE).await, want);
    let offline = store
        .list_events(
            &tenant,
            &EventFilter {
                kind: Some(AGENT_OFFLINE.into()),
                limit: 10,
                ..EventFilter::default()
            },
        )
        .await
        .expect("events");
    for event in &offline {
        assert_eq!(event.subject_type, "agent");
        assert_eq!(
            event.detail["online"], 2,
            "c and d are online: {}",
            event.detail
        );
        assert_eq!(event.detail["tags"], json!(["web"]));
        assert!(
            event.summary.contains("is offline since"),
            "{}",
            event.summary
        );
    }
    // A later sweep finds nothing new.
    assert!(
        store
            .record_agents_offline(cutoff, None)
            .await
            .expect("sweep")
            .is_empty()
    );

    // d goes away before this node started (`not_before`): left for later, then announced.
    store
        .record_disconnect(&tenant, &d.to_string(), None)
        .await
        .expect("disconnect");
    let later = Utc::now() + Duration::seconds(2);
    assert!(
        store
            .record_agents_offline(later, Some(later))
            .await
            .expect("sweep")
            .is_empty()
    );
    assert_eq!(
        store
            .record_agents_offline(later, None)
            .await
            .expect("sweep")
            .len(),
        1
    );

    // a comes back: one agent.online; c (never announced) makes none.
    let back = connect(&store, &tenant, "a", a).await;
    assert!(back.offline_reported_at.is_some());
    let (x, y) = tokio::join!(
        store.record_agent_online(&back),
        other.record_agent_online(&back)
    );
    assert_eq!(
        usize::from(x.expect("online").is_some()) + usize::from(y.expect("online").is_some()),
        1
    );
    let c_row = connect(&store, &tenant, "c", c).await;
    assert!(c_row.offline_reported_at.is_none());
    assert!(
        store
            .record_agent_online(&c_row)
            .await
            .expect("online")
            .is_none()
    );
    assert_eq!(
        events(&store, &tenant, AGENT_ONLINE).await,
        vec![(a.to_string(), "a".to_owned())]
    );

    // a goes away again: a second offline, for the second disconnect.
    store
        .record_disconnect(&tenant, &a.to_string(), None)
        .await
        .expect("disconnect");
    let cutoff = Utc::now() + Duration::seconds(1);
    assert_eq!(
        store
            .record_agents_offline(cutoff, None)
            .await
            .expect("sweep")
            .len(),
        1
    );
    assert_eq!(events(&store, &tenant, AGENT_OFFLINE).await.len(), 4);
}

#[tokio::test]
async fn an_agent_held_by_a_node_is_never_offline_and_a_crash_leaves_none_connected() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let held = uuid::Uuid::now_v7();
    let crashed = uuid::Uuid::now_v7();
    connect(&store, &tenant, "held", held).await;
    connect(&store, &tenant, "crashed", crashed).await;
    let cutoff = Utc::now() + Duration::hours(1);
    assert!(
        store
            .record_agents_offline(cutoff, None)
            .await
            .expect("sweep")
            .is_empty()
    );
    // The server stopped without recording the disconnects; at its start, nobody is connected.
    assert_eq!(store.release_agents_at_start().await.expect("release"), 2);
    assert_eq!(store.release_agents_at_start().await.expect("release"), 0);
    assert_eq!(
        store
            .record_agents_offline(cutoff, None)
            .await
            .expect("sweep")
            .len(),
        2
    );
}

#[tokio::test]
async fn an_update_report_is_one_event_however_often_it_is_repeated() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let id = uuid::Uuid::now_v7();
    let agent = connect(&store, &tenant, "web-1", id).await;
    let report = |status: &str| UpdateStatus {
        status: status.into(),
        from: Some("0.1.0".into()),
        to: Some("0.2.0".into()),
        reason: (status == "rolled_back").then(|| "crashed 3 times at start".into()),
        at: Utc::now(),
    };
    let updated = report("updated");
    for _ in 0..3 {
        store
            .record_update_report(&agent, &updated)
            .await
            .expect("record");
    }
    assert_eq!(events(&store, &tenant, AGENT_UPDATED).await.len(), 1);
    let rolled = report("rolled_back");
    let event = store
        .record_update_report(&agent, &rolled)
        .await
        .expect("record")
        .expect("recorded");
    assert_eq!(event.kind, AGENT_UPDATE_ROLLED_BACK);
    assert!(
        event
            .summary
            .contains("rolled back (crashed 3 times at start)"),
        "{}",
        event.summary
    );
    assert_eq!(event.detail["to"], "0.2.0");
    assert!(
        store
            .record_update_report(&agent, &report("failed"))
            .await
            .expect("record")
            .is_none(),
        "a failed download changed nothing: no event"
    );
}

/// An agent key's `last_used_at` moves at most once a minute: a fleet connecting through one
/// key wrote the same row on every connection, and on PostgreSQL those writes queued on its
/// lock. Within the minute a connection changes nothing; past it, the next one records it.
#[tokio::test]
async fn a_key_s_use_is_recorded_once_a_minute() {
    use sea_orm::ConnectionTrait;
    let (dir, store, tenant) = common::fresh_store().await;
    let (key, _) = store
        .create_agent_key(&tenant, "fleet", &[], &[], None)
        .await
        .expect("key");
    let used = |store: Store| {
        let (tenant, id) = (tenant.clone(), key.id.clone());
        async move {
            store
                .get_agent_key(&tenant, &id)
                .await
                .expect("get")
                .expect("the key")
                .last_used_at
        }
    };
    assert_eq!(used(store.clone()).await, None, "a new key was never used");
    store
        .touch_agent_key(&tenant, &key.id)
        .await
        .expect("touch");
    let first = used(store.clone())
        .await
        .expect("the first use is recorded");
    store
        .touch_agent_key(&tenant, &key.id)
        .await
        .expect("touch");
    assert_eq!(used(store.clone()).await, Some(first), "the same minute");

    // Its last use two minutes ago: the next connection records itself.
    let earlier = Utc::now() - outpost_store::KEY_USE_GRANULARITY * 2;
    let other = sea_orm::Database::connect(&dir.url).await.expect("connect");
    let (backend, sql) = if dir.is_postgres() {
        (
            sea_orm::DbBackend::Postgres,
            "UPDATE agent_keys SET last_used_at = $1 WHERE id = $2",
        )
    } else {
        (
            sea_orm::DbBackend::Sqlite,
            "UPDATE agent_keys SET last_used_at = ? WHERE id = ?",
        )
    };
    other
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            sql,
            [earlier.into(), key.id.clone().into()],
        ))
        .await
        .expect("age the key's use");
    let aged = used(store.clone()).await.expect("aged");
    assert!(aged < first, "{aged} is before {first}");
    store
        .touch_agent_key(&tenant, &key.id)
        .await
        .expect("touch");
    let again = used(store.clone()).await.expect("recorded");
    assert!(again >= first, "{again} is the new use, after {first}");
}
