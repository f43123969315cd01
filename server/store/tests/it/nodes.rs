//! What several nodes sharing one database need from the store: starting together on an empty
//! database, claims that one node at a time wins, and a dead node taken over once.

use crate::common;

use outpost_store::{Bootstrapped, Store, node};

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
