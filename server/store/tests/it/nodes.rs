//! What several nodes sharing one database need from the store: starting together on an empty
//! database, claims that one node at a time wins, and a dead node taken over once.

use crate::common;

use outpost_store::domain::{Actor, AuditAction, AuditEvent, AuditTarget};
use outpost_store::{AuditRecord, Bootstrapped, NewEvent, NewIntegration, NewMail, Store, node};
use serde_json::json;

const ADMIN_KEY: &str = "opk_nodes000000000000000000000000000000000000";

/// Nodes starting at the same moment on an empty database: every one migrates and bootstraps
/// without an error, and there is one tenant with one owner key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_an_empty_database_all_start() {
    let fresh = common::Fresh::new();
    let mut starts = Vec::new();
    for _ in 0..4 {
        let location = fresh.location.clone();
        starts.push(tokio::spawn(async move {
            let store = Store::open(&location).await.expect("open");
            store.bootstrap(Some(ADMIN_KEY)).await.expect("bootstrap")
        }));
    }
    let mut created = 0;
    for start in starts {
        match start.await.expect("join") {
            Bootstrapped::Created(None) => created += 1,
            Bootstrapped::Unchanged => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created, 1, "one node made the tenant and its key");
}

/// A claim is held by one node until its deadline, renewed by its holder, and taken by another
/// once it lapsed; a dead node's row is deleted by exactly one of the nodes that look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_takeovers_are_won_once() {
    let (_fresh, store, _tenant) = common::fresh_store().await;
    let now = outpost_store::now();
    let later = now + chrono::Duration::seconds(60);
    assert!(store.try_claim("sweep", "a", later).await.expect("claim"));
    assert!(!store.try_claim("sweep", "b", later).await.expect("claim"));
    assert!(store.try_claim("sweep", "a", later).await.expect("renew"));
    let lapsed = now - chrono::Duration::seconds(1);
    assert!(store.try_claim("sweep", "a", lapsed).await.expect("renew"));
    assert!(
        store
            .try_claim("sweep", "b", later)
            .await
            .expect("take over")
    );
    assert!(!store.try_claim("sweep", "a", later).await.expect("claim"));

    store
        .register_node(node::Model {
            id: "dead".into(),
            name: "dead".into(),
            address: "127.0.0.1:1".into(),
            version: "0".into(),
            started_at: lapsed,
            renewed_at: lapsed,
            lease_until: lapsed,
            agents: 0,
        })
        .await
        .expect("register");
    let (one, two) = tokio::join!(
        store.take_over_dead_nodes(now),
        store.take_over_dead_nodes(now)
    );
    let taken = one.expect("take over").len() + two.expect("take over").len();
    assert_eq!(taken, 1, "one node takes the dead one over");
    assert!(store.list_nodes().await.expect("list").is_empty());
}

/// A node killed between sending a delivery (or a mail) and recording it holds the claim for a
/// minute; once its lease is taken over, or (SQLite, one node) once the server starts again,
/// the send is claimable at once by whoever looks, and a live node's claims are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_unfinished_sends_are_released() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let holders = ["dead", "live", "local"];
    for holder in holders {
        let audit = AuditRecord {
            tenant_id: tenant.clone(),
            actor: Actor::system("test", "test"),
            address: None,
            event: AuditEvent::new(AuditAction::IntegrationCreate, AuditTarget::Integration, ""),
        };
        let new = NewIntegration {
            tenant_id: tenant.clone(),
            name: holder.into(),
            kind: "webhook".into(),
            config: json!({"url": "http://127.0.0.1:1/"}),
            sealed_config: None,
            events: vec!["*".into()],
            filter: None,
            enabled: true,
            notify_after: 1,
            created_by: "test".into(),
        };
        let made = store
            .create_integration(new, audit)
            .await
            .expect("integration");
        assert!(made.is_some());
    }
    store
        .record_event(NewEvent {
            tenant_id: &tenant,
            kind: "agent.offline",
            subject: ("agent", "a1", "host"),
            summary: "gone".into(),
            detail: json!({}),
            dedup_key: Some("a1".into()),
        })
        .await
        .expect("event")
        .expect("recorded");
    // A second ahead: what is queued below is due by then.
    let now = outpost_store::now() + chrono::Duration::seconds(1);
    // One delivery (one per integration) and one mail claimed by each holder.
    for holder in holders {
        let claimed = store.claim_deliveries(holder, now, 1).await.expect("claim");
        assert_eq!(claimed.len(), 1, "{holder}");
        let mail = NewMail {
            tenant_id: Some(tenant.clone()),
            kind: "reset",
            recipient: format!("{holder}@example.com"),
            subject: "s".into(),
            sealed_body: "b".into(),
        };
        store.queue_mail(mail).await.expect("mail");
        let mails = store.claim_mail(holder, now, 10).await.expect("mail");
        assert_eq!(mails.len(), 1, "{holder}");
    }
    let lapsed = now - chrono::Duration::seconds(1);
    for (id, lease_until) in [
        ("dead", lapsed),
        ("live", now + chrono::Duration::seconds(60)),
    ] {
        let row = node::Model {
            id: id.into(),
            name: id.into(),
            address: "127.0.0.1:1".into(),
            version: "0".into(),
            started_at: lapsed,
            renewed_at: lapsed,
            lease_until,
            agents: 0,
        };
        store.register_node(row).await.expect("register");
    }
    let free = async |what: &str| {
        let deliveries = store
            .claim_deliveries("other", now, 10)
            .await
            .expect("claim");
        let mails = store.claim_mail("other", now, 10).await.expect("mail");
        assert_eq!((deliveries.len(), mails.len()), (1, 1), "{what}");
        mails[0].recipient.clone()
    };
    let none = async || {
        let deliveries = store
            .claim_deliveries("other", now, 10)
            .await
            .expect("claim");
        let mails = store.claim_mail("other", now, 10).await.expect("mail");
        assert!(
            deliveries.is_empty() && mails.is_empty(),
            "{deliveries:?} {mails:?}"
        );
    };
    none().await;
    let taken = store.take_over_dead_nodes(now).await.expect("take over");
    assert_eq!(taken, ["dead"]);
    assert_eq!(free("the dead node's").await, "dead@example.com");
    none().await;
    let released = store
        .release_sends_at_start("local")
        .await
        .expect("release");
    assert_eq!(released, 2);
    assert_eq!(free("the single server's own").await, "local@example.com");
    none().await;
}
