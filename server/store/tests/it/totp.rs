//! The store's side of the second factor (CONTRACT.md §18), on SQLite and, with the postgres
//! profile, on PostgreSQL: a step used once (also by two callers at once), a recovery code used
//! once, a ticket's wrong codes counted in its row until it is void, a confirmed factor never
//! replaced by a new setup, and a user's deletion taking their factor along.

use crate::common;

use chrono::{Duration, Utc};
use outpost_store::domain::Role;
use outpost_store::totp::{FactorPut, MAX_TICKET_TRIES};
use outpost_store::{NewUser, Store, UserChange, user};

async fn user(store: &Store, tenant: &str, email: &str) -> user::Model {
    store
        .create_user(NewUser {
            tenant_id: tenant.into(),
            email: email.into(),
            role: Role::Member,
            password_hash: Some("$argon2id$test".into()),
        })
        .await
        .expect("create")
        .expect("email free")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_and_a_recovery_code_are_used_once() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let bob = user(&store, &tenant, "bob@example.com").await;
    // Nothing to use before a factor is confirmed.
    assert_eq!(
        store
            .put_totp_factor(&tenant, &bob.id, "sealed-1")
            .await
            .expect("put"),
        FactorPut::Stored
    );
    assert!(!store.use_totp_step(&bob.id, 10).await.expect("use"));
    // A new setup replaces an unconfirmed one.
    assert_eq!(
        store
            .put_totp_factor(&tenant, &bob.id, "sealed-2")
            .await
            .expect("put"),
        FactorPut::Stored
    );
    let hashes: Vec<String> = (0..10).map(|i| format!("hash-{i}")).collect();
    assert!(
        store
            .confirm_totp(&bob.id, 100, &hashes)
            .await
            .expect("confirm")
    );
    assert!(
        !store
            .confirm_totp(&bob.id, 101, &hashes)
            .await
            .expect("confirm twice")
    );
    let factor = store
        .totp_factor(&bob.id)
        .await
        .expect("get")
        .expect("a factor");
    assert_eq!(factor.secret, "sealed-2");
    assert_eq!(factor.last_step, Some(100));
    assert_eq!(
        store
            .put_totp_factor(&tenant, &bob.id, "sealed-3")
            .await
            .expect("put"),
        FactorPut::Confirmed
    );
    assert_eq!(
        store.users_with_totp(&tenant).await.expect("list"),
        vec![bob.id.clone()]
    );

    // The confirming step is used; earlier ones too; a later one once.
    for step in [99, 100] {
        assert!(
            !store.use_totp_step(&bob.id, step).await.expect("use"),
            "{step}"
        );
    }
    // Two callers with the same later step at once: one wins.
    let (a, b) = tokio::join!(
        store.use_totp_step(&bob.id, 101),
        store.use_totp_step(&bob.id, 101)
    );
    assert_eq!(
        u8::from(a.expect("a")) + u8::from(b.expect("b")),
        1,
        "one use of step 101"
    );

    assert!(
        store
            .use_recovery_code(&bob.id, "hash-3")
            .await
            .expect("use")
    );
    assert!(
        !store
            .use_recovery_code(&bob.id, "hash-3")
            .await
            .expect("again")
    );
    assert!(
        !store
            .use_recovery_code(&bob.id, "unknown")
            .await
            .expect("unknown")
    );
    assert_eq!(store.recovery_codes_left(&bob.id).await.expect("left"), 9);

    // Deleting the user takes the factor and codes along.
    store
        .change_user(&tenant, &bob.id, UserChange::Delete)
        .await
        .expect("delete");
    assert!(store.totp_factor(&bob.id).await.expect("get").is_none());
    assert_eq!(store.recovery_codes_left(&bob.id).await.expect("left"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_finishes_once_and_is_void_after_its_wrong_codes() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let bob = user(&store, &tenant, "bob@example.com").await;
    let later = Utc::now() + Duration::minutes(5);
    store
        .insert_login_ticket(&tenant, &bob.id, "t1", later)
        .await
        .expect("ticket");
    assert!(store.live_login_ticket("t1").await.expect("live").is_some());
    for expected in 1..=MAX_TICKET_TRIES {
        assert_eq!(
            store.login_ticket_wrong_code("t1").await.expect("wrong"),
            expected
        );
    }
    assert!(store.live_login_ticket("t1").await.expect("live").is_none());
    assert!(
        !store
            .use_login_ticket("t1")
            .await
            .expect("use a void ticket")
    );

    store
        .insert_login_ticket(&tenant, &bob.id, "t2", later)
        .await
        .expect("ticket");
    let (a, b) = tokio::join!(store.use_login_ticket("t2"), store.use_login_ticket("t2"));
    assert_eq!(u8::from(a.expect("a")) + u8::from(b.expect("b")), 1);
    assert!(store.live_login_ticket("t2").await.expect("live").is_none());

    // An expired ticket is not live, and the sweep deletes it.
    store
        .insert_login_ticket(&tenant, &bob.id, "t3", Utc::now() - Duration::seconds(1))
        .await
        .expect("ticket");
    assert!(store.live_login_ticket("t3").await.expect("live").is_none());
    assert!(store.delete_expired_login_tickets().await.expect("sweep") >= 1);

    // A reset ends open tickets.
    store
        .insert_login_ticket(&tenant, &bob.id, "t4", later)
        .await
        .expect("ticket");
    assert!(
        !store
            .delete_totp(&bob.id)
            .await
            .expect("reset without a factor")
    );
    assert!(store.live_login_ticket("t4").await.expect("live").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_policy_is_stored() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let updated = store
        .set_require_totp(&tenant, true)
        .await
        .expect("set")
        .expect("the tenant");
    assert!(updated.require_totp);
    assert!(
        store
            .get_tenant(&tenant)
            .await
            .expect("get")
            .expect("tenant")
            .require_totp
    );
    assert!(
        store
            .set_require_totp("nope", true)
            .await
            .expect("set")
            .is_none()
    );
}
