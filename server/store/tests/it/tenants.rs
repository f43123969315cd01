//! The store's side of tenants and their quotas (CONTRACT.md §9), on SQLite and, with the postgres
//! profile, on PostgreSQL: `max_users` and `max_agents` hold under concurrent creations (the
//! count and the insert under the tenant's lock), an agent already registered is never
//! refused, a patch tells "unlimited" from "unchanged" and is audited, and a signup whose
//! email is taken leaves nothing behind.

use crate::common;

use outpost_protocol::RegisterData;
use outpost_store::domain::{Actor, Role, Transport};
use outpost_store::{
    AuditFilter, ChainCheck, NewUser, Registered, Store, TenantPatch, UserRefused,
};

fn new_user(tenant: &str, email: &str) -> NewUser {
    NewUser {
        tenant_id: tenant.to_owned(),
        email: email.to_owned(),
        role: Role::Member,
        password_hash: None,
    }
}

fn register(hostname: &str) -> RegisterData {
    serde_json::from_value(serde_json::json!({
        "agent_id": uuid::Uuid::now_v7(), "hostname": hostname, "ip": "127.0.0.1",
        "version": "0.1.0", "os": "linux", "arch": "x86_64", "protocol": 1,
        "capabilities": ["ping"], "tags": [], "scripts": []
    }))
    .expect("register data")
}

fn operator() -> Actor {
    Actor::system("test", "the test")
}

async fn set(store: &Store, tenant: &str, patch: TenantPatch) {
    store
        .update_tenant(tenant, &patch, &operator(), None)
        .await
        .expect("update")
        .expect("the tenant");
}

/// Several users created at once in a tenant one short of its `max_users`: exactly one is
/// created, the others are refused with the quota, and the tenant ends at its quota. Run a few
/// rounds, each raising the quota by one, so that the creations overlap in different ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_users_against_max_users_create_exactly_one() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    store
        .create_user(new_user(&tenant, "first@example.com"))
        .await
        .expect("create")
        .expect("free");
    for round in 0..4u32 {
        let current = store.tenant_usage(&tenant).await.expect("usage").users as i64;
        set(
            &store,
            &tenant,
            TenantPatch {
                max_users: Some(Some(current + 1)),
                ..TenantPatch::default()
            },
        )
        .await;
        let mut tasks = Vec::new();
        for n in 0..4 {
            let (store, tenant) = (store.clone(), tenant.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .create_user(new_user(&tenant, &format!("u{round}-{n}@example.com")))
                    .await
                    .expect("create")
            }));
        }
        let mut created = 0;
        for task in tasks {
            match task.await.expect("join") {
                Ok(_) => created += 1,
                Err(refused) => assert_eq!(
                    refused,
                    UserRefused::OverQuota { max: current + 1 },
                    "round {round}"
                ),
            }
        }
        assert_eq!(created, 1, "round {round}");
        assert_eq!(
            store.tenant_usage(&tenant).await.expect("usage").users as i64,
            current + 1,
            "round {round}"
        );
    }
    // Unlimited again: creations go through; a taken email is still told apart.
    set(
        &store,
        &tenant,
        TenantPatch {
            max_users: Some(None),
            ..TenantPatch::default()
        },
    )
    .await;
    store
        .create_user(new_user(&tenant, "later@example.com"))
        .await
        .expect("create")
        .expect("unlimited");
    assert_eq!(
        store
            .create_user(new_user(&tenant, "LATER@example.com"))
            .await
            .expect("create")
            .err(),
        Some(UserRefused::EmailTaken)
    );
}

/// `max_agents` refuses a new agent id, never one already registered (which reconnects,
/// refreshed), counts per tenant, and lets exactly one of several new agents in when one
/// place is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_agents_refuses_new_agents_only() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let (other, _) = store.create_tenant("other", None).await.expect("tenant");
    let first = register("first");
    assert!(matches!(
        store
            .upsert_agent(&tenant, "key", &first, None, Transport::Websocket)
            .await
            .expect("register"),
        Registered::Stored(_)
    ));
    set(
        &store,
        &tenant,
        TenantPatch {
            max_agents: Some(Some(1)),
            ..TenantPatch::default()
        },
    )
    .await;
    let second = register("second");
    let refused = store
        .upsert_agent(&tenant, "key", &second, None, Transport::Websocket)
        .await
        .expect("register");
    assert!(
        matches!(refused, Registered::OverQuota { max: 1 }),
        "{refused:?}"
    );
    assert!(
        store
            .get_agent(&tenant, &second.agent_id.to_string())
            .await
            .expect("read")
            .is_none(),
        "nothing stored for a refused agent"
    );
    // The registered agent comes back, with what it says now.
    let again = RegisterData {
        hostname: "first-renamed".into(),
        ..first.clone()
    };
    match store
        .upsert_agent(&tenant, "key", &again, None, Transport::Websocket)
        .await
        .expect("register")
    {
        Registered::Stored(agent) => assert_eq!(agent.hostname, "first-renamed"),
        other => panic!("an existing agent was refused: {other:?}"),
    }
    // Another tenant's quota is its own.
    assert!(matches!(
        store
            .upsert_agent(&other, "key-o", &second, None, Transport::Websocket)
            .await
            .expect("register"),
        Registered::Stored(_)
    ));

    // One place left, several new agents at once: one gets it. A few rounds, each raising
    // the quota by one, so that the registrations overlap in different ways.
    for round in 0..4i64 {
        let max = 2 + round;
        set(
            &store,
            &tenant,
            TenantPatch {
                max_agents: Some(Some(max)),
                ..TenantPatch::default()
            },
        )
        .await;
        let mut tasks = Vec::new();
        for n in 0..6 {
            let (store, tenant) = (store.clone(), tenant.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .upsert_agent(
                        &tenant,
                        "key",
                        &register(&format!("racer{round}-{n}")),
                        None,
                        Transport::Websocket,
                    )
                    .await
                    .expect("register")
            }));
        }
        let mut stored = 0;
        for task in tasks {
            match task.await.expect("join") {
                Registered::Stored(_) => stored += 1,
                Registered::OverQuota { max: seen } => assert_eq!(seen, max, "round {round}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(stored, 1, "round {round}");
        assert_eq!(
            store.tenant_usage(&tenant).await.expect("usage").agents as i64,
            max,
            "round {round}"
        );
    }
}

/// A patch changes what it names: `Some(None)` makes a quota unlimited, an absent field is
/// kept; each change is one `tenant.update` row in the tenant's own chain; an unknown tenant
/// is `None`; the listing has every tenant, the first one first, with its usage.
#[tokio::test]
async fn a_patch_changes_what_it_names_and_is_audited() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    set(
        &store,
        &tenant,
        TenantPatch {
            name: Some("renamed".into()),
            max_agents: Some(Some(10)),
            max_schedules: Some(Some(5)),
            max_users: Some(Some(3)),
            retention_days: Some(Some(30)),
        },
    )
    .await;
    set(
        &store,
        &tenant,
        TenantPatch {
            max_agents: Some(None),
            ..TenantPatch::default()
        },
    )
    .await;
    let row = store.get_tenant(&tenant).await.expect("read").expect("row");
    assert_eq!(row.name, "renamed");
    assert_eq!(
        (row.max_agents, row.max_schedules, row.max_users),
        (None, Some(5), Some(3))
    );
    assert_eq!(row.retention_days, Some(30));
    let rows = store
        .list_audit(
            &tenant,
            &AuditFilter {
                action: Some("tenant.update".into()),
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("audit");
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].detail.contains("\"max_agents\":null"),
        "{}",
        rows[0].detail
    );
    assert!(!rows[0].detail.contains("max_users"), "{}", rows[0].detail);
    assert!(rows[1].detail.contains("renamed"), "{}", rows[1].detail);
    assert!(
        rows[1].detail.contains("\"retention_days\":30"),
        "{}",
        rows[1].detail
    );
    assert!(matches!(
        store.verify_audit(&tenant).await.expect("verify"),
        ChainCheck::Intact { .. }
    ));
    assert!(
        store
            .update_tenant("no-such-tenant", &TenantPatch::default(), &operator(), None)
            .await
            .expect("update")
            .is_none()
    );
    let (other, _) = store.create_tenant("other", None).await.expect("tenant");
    let listed = store.list_tenants().await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|t| t.tenant.id.as_str())
            .collect::<Vec<_>>(),
        [tenant.as_str(), other.as_str()]
    );
}

/// A signup makes a tenant and its owner together, with the tenant's `tenant.create` row;
/// one whose email is taken (in any case) leaves no tenant behind.
#[tokio::test]
async fn a_signup_is_a_tenant_and_its_owner_or_nothing() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let (acme, owner) = store
        .create_tenant_with_owner("acme", "ada@acme.example", "$argon2id$test", None)
        .await
        .expect("signup")
        .expect("free");
    assert_eq!(owner.tenant_id, acme.id);
    assert_eq!(owner.role, "owner");
    assert_eq!(acme.max_users, None);
    let rows = store
        .list_audit(
            &acme.id,
            &AuditFilter {
                action: Some("tenant.create".into()),
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .expect("audit");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].actor_id, owner.id);

    let before = store.list_tenants().await.expect("list").len();
    let taken = store
        .create_tenant_with_owner("acme2", "ADA@acme.example", "$argon2id$test", None)
        .await
        .expect("signup");
    assert_eq!(taken.err(), Some(UserRefused::EmailTaken));
    assert_eq!(store.list_tenants().await.expect("list").len(), before);
    assert_eq!(
        store.default_tenant().await.expect("read").expect("one").id,
        tenant,
        "the first tenant stays the server's"
    );
}
