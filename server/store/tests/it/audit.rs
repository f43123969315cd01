//! The audit log's chain in the store, on SQLite and (with `OUTPOST_TEST_BACKEND=postgres`) on
//! PostgreSQL: appends from several handles at once (several nodes) keep one unbroken chain per
//! tenant; a row changed or deleted in the database is found, exactly; rows are append-only;
//! a chain's base never moves and its oldest rows stay (or their loss is reported); a tenant's
//! rows are its own.

use crate::common;

use outpost_store::domain::{Actor, ActorKind, AuditAction, AuditEvent, AuditTarget};
use outpost_store::{AuditFilter, AuditRecord, ChainCheck, Store};
use sea_orm::ConnectionTrait;
use serde_json::json;

fn record(tenant: &str, actor: &str, action: AuditAction, target: &str) -> AuditRecord {
    AuditRecord {
        tenant_id: tenant.to_owned(),
        actor: Actor {
            kind: ActorKind::ApiKey,
            id: actor.to_owned(),
            label: format!("{actor}-label"),
        },
        address: Some("192.0.2.7".into()),
        event: AuditEvent::new(action, AuditTarget::Job, target).with(json!({"n": target})),
    }
}

fn intact_count(check: &ChainCheck) -> u64 {
    match check {
        ChainCheck::Intact { count, .. } => *count,
        broken => panic!("the chain should be intact: {broken:?}"),
    }
}

/// Two handles on one database (two nodes on PostgreSQL; two pools on one SQLite file), each
/// appending from several tasks at once, some inside transactions that change something else
/// too: every row gets its own number, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_two_nodes_keep_one_chain() {
    let (fresh, first, tenant) = common::fresh_store().await;
    let second = Store::open(&fresh.location).await.expect("second node");
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = if task % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let tenant = tenant.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let rec = record(
                    &tenant,
                    "k",
                    AuditAction::JobTrigger,
                    &format!("{task}-{i}"),
                );
                if i % 3 == 0 {
                    // With a change, in its transaction.
                    let txn = store.begin().await.expect("begin");
                    txn.create_agent_key(&tenant, "k", &[], &[], None)
                        .await
                        .expect("key");
                    txn.append_audit_now(&rec).await.expect("append");
                    txn.commit().await.expect("commit");
                } else {
                    store.append_audit(&rec).await.expect("append");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("join");
    }
    // 80 appended, plus the tenant's creation.
    let check = first.verify_audit(&tenant).await.expect("verify");
    assert_eq!(intact_count(&check), 81, "{check:?}");
    let all = first
        .list_audit(
            &tenant,
            &AuditFilter {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let seqs: Vec<i64> = all.iter().rev().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=81).collect::<Vec<_>>());
    assert_eq!(all.last().expect("first row").action, "tenant.create");
}

/// Rows cannot be changed or deleted through SQL while the triggers stand; someone who
/// removes them (the database's owner) and changes a row is found at that row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_in_the_database_is_found_exactly() {
    let (fresh, store, tenant) = common::fresh_store().await;
    for i in 0..5 {
        store
            .append_audit(&record(
                &tenant,
                "k",
                AuditAction::JobTrigger,
                &i.to_string(),
            ))
            .await
            .expect("append");
    }
    let db = sea_orm::Database::connect(&fresh.url)
        .await
        .expect("connect");
    let edit = format!(
        "UPDATE audit_log SET action = 'job.cancel' WHERE tenant_id = '{tenant}' AND seq = 3"
    );
    let refused = db.execute_unprepared(&edit).await.expect_err("append-only");
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let delete = format!("DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq = 3");
    let refused = db
        .execute_unprepared(&delete)
        .await
        .expect_err("append-only");
    assert!(refused.to_string().contains("append-only"), "{refused}");
    assert_eq!(
        intact_count(&store.verify_audit(&tenant).await.expect("verify")),
        6
    );

    drop_triggers(&db, fresh.is_postgres()).await;
    db.execute_unprepared(&edit).await.expect("edit");
    match store.verify_audit(&tenant).await.expect("verify") {
        ChainCheck::Broken { count, seq, reason } => {
            assert_eq!((count, seq), (2, 3), "{reason}");
            assert!(reason.contains("changed"), "{reason}");
        }
        intact => panic!("an edited row went unnoticed: {intact:?}"),
    }
}

/// A row deleted from the middle is reported as missing, by its number; so is the last row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_row_is_found_exactly() {
    let (fresh, store, tenant) = common::fresh_store().await;
    for i in 0..5 {
        store
            .append_audit(&record(
                &tenant,
                "k",
                AuditAction::JobTrigger,
                &i.to_string(),
            ))
            .await
            .expect("append");
    }
    let db = sea_orm::Database::connect(&fresh.url)
        .await
        .expect("connect");
    drop_triggers(&db, fresh.is_postgres()).await;
    // The last row (6) first: only the head knows it existed.
    db.execute_unprepared(&format!(
        "DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq = 6"
    ))
    .await
    .expect("delete");
    match store.verify_audit(&tenant).await.expect("verify") {
        ChainCheck::Broken { seq, reason, .. } => {
            assert_eq!(seq, 6, "{reason}");
            assert!(reason.contains("row 6 is missing"), "{reason}");
        }
        intact => panic!("a deleted last row went unnoticed: {intact:?}"),
    }
    db.execute_unprepared(&format!(
        "DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq = 4"
    ))
    .await
    .expect("delete");
    match store.verify_audit(&tenant).await.expect("verify") {
        ChainCheck::Broken { count, seq, reason } => {
            assert_eq!((count, seq), (3, 4), "{reason}");
            assert!(reason.contains("row 4 is missing"), "{reason}");
        }
        intact => panic!("a deleted row went unnoticed: {intact:?}"),
    }
}

/// Filters, pages, and tenants: a tenant's listing and check never see another's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_filter_page_and_stay_in_their_tenant() {
    let (_fresh, store, a) = common::fresh_store().await;
    let (b, _) = store.create_tenant("b", None).await.expect("tenant b");
    for i in 0..4 {
        store
            .append_audit(&record(
                &a,
                "alice",
                AuditAction::AgentKeyCreate,
                &i.to_string(),
            ))
            .await
            .expect("append");
        store
            .append_audit(&record(&a, "bob", AuditAction::JobTrigger, &i.to_string()))
            .await
            .expect("append");
        store
            .append_audit(&record(
                &b,
                "carol",
                AuditAction::JobTrigger,
                &i.to_string(),
            ))
            .await
            .expect("append");
    }
    let list = |tenant: String, filter: AuditFilter| {
        let store = store.clone();
        async move { store.list_audit(&tenant, &filter).await.expect("list") }
    };
    let filter = |f: fn(&mut AuditFilter)| {
        let mut filter = AuditFilter {
            limit: 100,
            ..Default::default()
        };
        f(&mut filter);
        filter
    };
    let by_kind = list(a.clone(), filter(|f| f.action = Some("agent_key".into()))).await;
    assert_eq!(by_kind.len(), 4);
    assert!(by_kind.iter().all(|r| r.action == "agent_key.create"));
    // `_` is not a wildcard, and a kind needs its dot.
    assert!(
        list(a.clone(), filter(|f| f.action = Some("agent_ke_".into())))
            .await
            .is_empty()
    );
    assert!(
        list(a.clone(), filter(|f| f.action = Some("agent".into())))
            .await
            .is_empty()
    );
    let exact = list(a.clone(), filter(|f| f.action = Some("job.trigger".into()))).await;
    assert_eq!(exact.len(), 4);
    let by_label = list(a.clone(), filter(|f| f.actor = Some("bob-label".into()))).await;
    assert_eq!(by_label.len(), 4);
    let by_id = list(a.clone(), filter(|f| f.actor = Some("alice".into()))).await;
    assert_eq!(by_id.len(), 4);
    // Another tenant's actor is nobody here, and B sees only its own.
    assert!(
        list(a.clone(), filter(|f| f.actor = Some("carol".into())))
            .await
            .is_empty()
    );
    let of_b = list(b.clone(), filter(|_| {})).await;
    assert_eq!(of_b.len(), 5, "B's creation and its 4 rows");
    assert!(of_b.iter().all(|r| r.tenant_id == b));
    // Pages: newest first, each after the cursor.
    let page = list(
        a.clone(),
        AuditFilter {
            limit: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [9, 8, 7]);
    let next = list(
        a.clone(),
        AuditFilter {
            limit: 3,
            before: Some(7),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), [6, 5, 4]);
    // Time bounds.
    let first_at = page.last().expect("row").at;
    let since = list(
        a.clone(),
        AuditFilter {
            limit: 100,
            since: Some(first_at),
            ..Default::default()
        },
    )
    .await;
    assert!(since.iter().all(|r| r.at >= first_at) && !since.is_empty());
    let until = list(
        a.clone(),
        AuditFilter {
            limit: 100,
            until: Some(first_at),
            ..Default::default()
        },
    )
    .await;
    assert!(until.iter().all(|r| r.at < first_at));
    assert_eq!(intact_count(&store.verify_audit(&a).await.expect("a")), 9);
    assert_eq!(intact_count(&store.verify_audit(&b).await.expect("b")), 5);
    // A tenant with no rows at all (made around the server) is intact and empty.
    assert_eq!(
        intact_count(&store.verify_audit("nobody").await.expect("none")),
        0
    );
}

/// The owner key's replacement and rotation are recorded in the default tenant's chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_key_changes_are_recorded() {
    let fresh = common::Fresh::new();
    let store = Store::open(&fresh.location).await.expect("open");
    store.bootstrap(None).await.expect("first start");
    store
        .bootstrap(Some("opk_audit0000000000000000000000000000000000000"))
        .await
        .expect("a new OUTPOST_ADMIN_KEY");
    store.rotate_owner_key().await.expect("rotate");
    let db = sea_orm::Database::connect(&fresh.url)
        .await
        .expect("connect");
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT tenant_id FROM audit_log WHERE seq = 1",
        ))
        .await
        .expect("query")
        .expect("a row");
    let tenant: String = row.try_get_by_index(0).expect("tenant");
    let rows = store
        .list_audit(
            &tenant,
            &AuditFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let actions: Vec<&str> = rows.iter().rev().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        ["tenant.create", "api_key.create", "api_key.rotate"]
    );
    assert!(rows.iter().all(|r| r.actor_kind == "system"));
    assert!(
        rows.iter().all(|r| !r.detail.contains("opk_")),
        "no secret in a detail"
    );
    assert_eq!(
        intact_count(&store.verify_audit(&tenant).await.expect("verify")),
        3
    );
}

/// A tenant's chain with rows 1 (its creation) to 6, and a second connection of the test's
/// own to the database, as someone with its credentials (but not its owner's) would have.
async fn six_rows() -> (common::Fresh, Store, String, sea_orm::DatabaseConnection) {
    let (fresh, store, tenant) = common::fresh_store().await;
    for i in 0..5 {
        store
            .append_audit(&record(
                &tenant,
                "k",
                AuditAction::JobTrigger,
                &i.to_string(),
            ))
            .await
            .expect("append");
    }
    let db = sea_orm::Database::connect(&fresh.url)
        .await
        .expect("connect");
    (fresh, store, tenant, db)
}

/// The hash of one of `tenant`'s rows, read in SQL.
async fn hash_of(db: &sea_orm::DatabaseConnection, tenant: &str, seq: i64) -> String {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT hash FROM audit_log WHERE tenant_id = '{tenant}' AND seq = {seq}"),
        ))
        .await
        .expect("query")
        .expect("the row");
    row.try_get_by_index(0).expect("hash")
}

/// The attack of issue 54 and its variants, in plain SQL with the triggers standing: raising
/// the chain's base to let the oldest rows go, deleting rows at or below a base, deleting the
/// head to insert one with a base, inserting a head with a base for a tenant without one,
/// moving the head back, and (SQLite) writing over rows or the head with `INSERT OR REPLACE`.
/// Every one is refused, and the chain still verifies whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_base_cannot_be_raised_nor_its_oldest_rows_deleted() {
    let (fresh, store, tenant, db) = six_rows().await;
    let row3 = hash_of(&db, &tenant, 3).await;
    let postgres = fresh.is_postgres();
    let mut attacks = vec![
        format!(
            "UPDATE audit_heads SET base_seq = 3, base_hash = '{row3}' WHERE tenant_id = '{tenant}'"
        ),
        format!("UPDATE audit_heads SET base_seq = 3 WHERE tenant_id = '{tenant}'"),
        format!("UPDATE audit_heads SET base_hash = '{row3}' WHERE tenant_id = '{tenant}'"),
        format!("DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq <= 3"),
        format!("DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq = 1"),
        format!("DELETE FROM audit_heads WHERE tenant_id = '{tenant}'"),
        format!("UPDATE audit_heads SET seq = 2, hash = '{}' WHERE tenant_id = '{tenant}'", hash_of(&db, &tenant, 2).await),
        format!("UPDATE audit_heads SET tenant_id = 'nobody' WHERE tenant_id = '{tenant}'"),
        format!(
            "INSERT INTO audit_heads (tenant_id, seq, hash, base_seq, base_hash) \
             VALUES ('{tenant}', 6, 'x', 3, '{row3}') \
             ON CONFLICT (tenant_id) DO UPDATE SET base_seq = 3, base_hash = '{row3}'"
        ),
        "INSERT INTO tenants (id, name, created_at) VALUES ('bare', 'bare', '2026-01-01T00:00:00Z')"
            .to_owned(),
    ];
    if postgres {
        attacks.push("TRUNCATE audit_log".into());
        attacks.push("TRUNCATE audit_heads".into());
    } else {
        attacks.push(format!(
            "INSERT OR REPLACE INTO audit_heads (tenant_id, seq, hash, base_seq, base_hash) \
             VALUES ('{tenant}', 6, 'x', 3, '{row3}')"
        ));
        attacks.push(format!(
            "INSERT OR REPLACE INTO audit_log SELECT tenant_id, seq, at, actor_kind, actor_id, \
             actor_label, address, 'job.cancel', target_type, target_id, detail, prev_hash, hash \
             FROM audit_log WHERE tenant_id = '{tenant}' AND seq = 1"
        ));
    }
    for sql in &attacks {
        let done = db.execute_unprepared(sql).await;
        if sql.starts_with("INSERT INTO tenants") {
            // Not an attack: a tenant without a head, for the next one.
            done.expect("a tenant made in SQL");
            let with_base = format!(
                "INSERT INTO audit_heads (tenant_id, seq, hash, base_seq, base_hash) \
                 VALUES ('bare', 3, '{row3}', 3, '{row3}')"
            );
            let refused = db
                .execute_unprepared(&with_base)
                .await
                .expect_err(&with_base);
            assert!(refused.to_string().contains("audit_heads"), "{refused}");
            continue;
        }
        let refused = done.expect_err(sql);
        let text = refused.to_string();
        assert!(
            text.contains("append-only") || text.contains("audit_heads"),
            "{sql}: {text}"
        );
    }
    assert_eq!(
        intact_count(&store.verify_audit(&tenant).await.expect("verify")),
        6
    );
    // Appending still works under the new triggers, on both tenants.
    store
        .append_audit(&record(&tenant, "k", AuditAction::JobTrigger, "after"))
        .await
        .expect("append");
    store
        .append_audit(&record("bare", "k", AuditAction::JobTrigger, "first"))
        .await
        .expect("append to a tenant made in SQL");
    assert_eq!(
        intact_count(&store.verify_audit(&tenant).await.expect("verify")),
        7
    );
    assert_eq!(
        intact_count(&store.verify_audit("bare").await.expect("verify")),
        1
    );
}

/// On a database whose triggers predate the fix (migration 12's, which let a `DELETE` through
/// at or below the base), the attack goes through in plain SQL: the base raised to row 3, rows
/// 1 to 3 deleted, the head untouched. `verify` reports the moved base and where; opening the
/// database with this server upgrades the triggers, which then refuse what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_raised_around_the_server_is_reported_and_the_upgrade_closes_the_hole() {
    let (fresh, store, tenant, db) = six_rows().await;
    let postgres = fresh.is_postgres();
    rewind_to_the_old_triggers(&db, postgres).await;
    let row3 = hash_of(&db, &tenant, 3).await;
    db.execute_unprepared(&format!(
        "UPDATE audit_heads SET base_seq = 3, base_hash = '{row3}' WHERE tenant_id = '{tenant}'"
    ))
    .await
    .expect("the old triggers let the base move");
    db.execute_unprepared(&format!(
        "DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq <= 3"
    ))
    .await
    .expect("the old triggers let rows at or below the base go");
    let reported = |check: ChainCheck| match check {
        ChainCheck::Broken { count, seq, reason } => {
            assert_eq!((count, seq), (0, 3), "{reason}");
            assert!(
                reason.contains("base was moved to row 3 without a checkpoint"),
                "{reason}"
            );
        }
        intact => panic!("a raised base and deleted rows went unnoticed: {intact:?}"),
    };
    reported(store.verify_audit(&tenant).await.expect("verify"));

    // The server's next start brings the new triggers.
    let upgraded = Store::open(&fresh.location).await.expect("upgrade");
    reported(upgraded.verify_audit(&tenant).await.expect("verify"));
    for sql in [
        format!("DELETE FROM audit_log WHERE tenant_id = '{tenant}' AND seq = 4"),
        format!("UPDATE audit_heads SET base_seq = 5 WHERE tenant_id = '{tenant}'"),
        format!(
            "UPDATE audit_heads SET base_seq = 0, base_hash = '{}' WHERE tenant_id = '{tenant}'",
            outpost_store::audit::GENESIS
        ),
    ] {
        db.execute_unprepared(&sql).await.expect_err(&sql);
    }
}

/// A head moved back (on SQLite, an `INSERT OR REPLACE` puts an empty head back, which no
/// trigger sees as a delete) hides the rows past it from a walk that stops at the head:
/// `verify` reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_a_head_moved_back_are_reported() {
    let (fresh, store, tenant, db) = six_rows().await;
    let sql = if fresh.is_postgres() {
        // Only the database's owner can do this on PostgreSQL: the triggers refuse it.
        db.execute_unprepared("ALTER TABLE audit_heads DISABLE TRIGGER USER")
            .await
            .expect("disable");
        format!(
            "UPDATE audit_heads SET seq = 0, hash = '{}' WHERE tenant_id = '{tenant}'",
            outpost_store::audit::GENESIS
        )
    } else {
        format!(
            "INSERT OR REPLACE INTO audit_heads (tenant_id, seq, hash, base_seq, base_hash) \
             VALUES ('{tenant}', 0, '{g}', 0, '{g}')",
            g = outpost_store::audit::GENESIS
        )
    };
    db.execute_unprepared(&sql).await.expect("head moved back");
    match store.verify_audit(&tenant).await.expect("verify") {
        ChainCheck::Broken { count, seq, reason } => {
            assert_eq!((count, seq), (0, 1), "{reason}");
            assert!(
                reason.contains("row 6 exists past the chain's head (row 0)"),
                "{reason}"
            );
        }
        intact => panic!("rows hidden past the head went unnoticed: {intact:?}"),
    }
}

/// Puts back the audit triggers of migration 12, before the fix, and marks the schema as
/// before it, as a database last opened by an older server is.
async fn rewind_to_the_old_triggers(db: &sea_orm::DatabaseConnection, postgres: bool) {
    let statements: &[&str] = if postgres {
        &[
            "DROP TRIGGER audit_heads_guard ON audit_heads",
            "DROP TRIGGER audit_heads_no_truncate ON audit_heads",
            "DROP FUNCTION audit_heads_guard()",
            "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF TG_OP = 'DELETE' THEN IF OLD.seq <= COALESCE((SELECT base_seq FROM audit_heads WHERE tenant_id = OLD.tenant_id), 0) THEN RETURN OLD; END IF; END IF; RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP; END $$",
        ]
    } else {
        &[
            "DROP TRIGGER audit_log_no_delete",
            "DROP TRIGGER audit_log_no_replace",
            "DROP TRIGGER audit_heads_genesis",
            "DROP TRIGGER audit_heads_forward",
            "DROP TRIGGER audit_heads_no_delete",
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log WHEN OLD.seq > COALESCE((SELECT base_seq FROM audit_heads WHERE tenant_id = OLD.tenant_id), 0) BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: only rows up to the chain base may be deleted'); END",
        ]
    };
    // And what the migrations after 22 made, so that the schema is the one of a server from
    // before 22: the next start applies them all again (23: fleet results; 24: rollouts;
    // 25: sign-in; 26: agent certificates; 27: scripts in the dashboard).
    let later = [
        "DROP TABLE library_draft_bundles",
        "DROP TABLE library_drafts",
        "DROP TABLE library_names",
        "DROP TABLE revoked_agents",
        "DROP TABLE agent_certs",
        "DROP TABLE pki_keys",
        "DROP TABLE oidc_logins",
        "DROP TABLE oidc_identities",
        "DROP TABLE login_tickets",
        "DROP TABLE recovery_codes",
        "DROP TABLE totp_factors",
        "DROP TABLE password_resets",
        "DROP TABLE email_codes",
        "DROP TABLE mail_outbox",
        "ALTER TABLE tenants DROP COLUMN require_totp",
        "ALTER TABLE users DROP COLUMN email_verified_at",
        "ALTER TABLE users DROP COLUMN password_changed_at",
        "DROP TABLE fleet_policies",
        "DROP TABLE desired_versions",
        "DROP TABLE rollout_agents",
        "DROP TABLE rollouts",
        "DROP INDEX jobs_undigested",
        "DROP INDEX commands_job_order",
        "DROP TABLE run_digests",
        "ALTER TABLE jobs DROP COLUMN digested",
        "ALTER TABLE jobs DROP COLUMN rerun_of",
        "ALTER TABLE commands DROP COLUMN key_id",
        "DELETE FROM outpost_schema WHERE version >= 22",
    ];
    for sql in statements.iter().chain(&later) {
        db.execute_unprepared(sql).await.expect(sql);
    }
}

/// Takes the append-only triggers away, as the database's owner could.
async fn drop_triggers(db: &sea_orm::DatabaseConnection, postgres: bool) {
    let statements: &[&str] = if postgres {
        &["ALTER TABLE audit_log DISABLE TRIGGER USER"]
    } else {
        &[
            "DROP TRIGGER audit_log_no_update",
            "DROP TRIGGER audit_log_no_delete",
        ]
    };
    for sql in statements {
        db.execute_unprepared(sql).await.expect("drop triggers");
    }
}

/// A published release is recorded in the first tenant's log (releases serve every tenant),
/// by `system`, with what was signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_release_is_recorded_in_the_first_tenant() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let (other, _) = store.create_tenant("later", None).await.expect("tenant");
    let row = outpost_store::release::Model {
        version: "1.2.3".into(),
        target: "x86_64-unknown-linux-gnu".into(),
        name: "outpost-agent".into(),
        major: 1,
        minor: 2,
        patch: 3,
        sha256: "ab".repeat(32),
        size: 42,
        signature: "sig".into(),
        public_key: "pub".into(),
        published_at: outpost_store::now(),
        signature_v2: Some("sig2".into()),
    };
    store.insert_release(vec![row]).await.expect("publish");
    let rows = store
        .list_audit(
            &tenant,
            &AuditFilter {
                action: Some("release".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].actor_kind, "system");
    assert_eq!(rows[0].target_id, "1.2.3/x86_64-unknown-linux-gnu");
    let detail: serde_json::Value = serde_json::from_str(&rows[0].detail).expect("json");
    assert_eq!(detail["artifacts"][0]["sha256"], "ab".repeat(32));
    assert_eq!(
        intact_count(&store.verify_audit(&other).await.expect("other")),
        1
    );
}

/// A command and its audit row stored together, the head guessed from what this process
/// wrote last (the round trip's path): other handles (another node, another pool) and other
/// appends through the same handle move the head behind the guess, and the command is still
/// stored once, its row chains, and its row names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_stored_with_their_audit_rows_chain_whoever_moved_the_head() {
    use outpost_store::{AuditHeads, NewCommand};
    let (fresh, first, tenant) = common::fresh_store().await;
    let second = Store::open(&fresh.location).await.expect("second node");
    let mut tasks = Vec::new();
    for task in 0..6 {
        let (store, other) = if task % 2 == 0 {
            (first.clone(), second.clone())
        } else {
            (second.clone(), first.clone())
        };
        let tenant = tenant.clone();
        tasks.push(tokio::spawn(async move {
            // Each task a process of its own, with its own guesses.
            let heads = AuditHeads::default();
            let mut ids = Vec::new();
            for i in 0..12 {
                let rec = record(
                    &tenant,
                    "k",
                    AuditAction::CommandSend,
                    &format!("{task}-{i}"),
                );
                let command = store
                    .insert_command_audited(
                        NewCommand {
                            tenant_id: tenant.clone(),
                            agent_id: format!("agent-{task}"),
                            command: "ping".into(),
                            data: json!({}),
                            timeout_s: 60,
                            ttl_s: 3600,
                            job_id: None,
                            sealed_params: None,
                        },
                        Some(&rec),
                        &heads,
                    )
                    .await
                    .expect("command stored");
                ids.push(command);
                if i % 4 == 1 {
                    // Behind this task's guess: the same handle's other path, then another's.
                    let moved = record(&tenant, "k", AuditAction::JobTrigger, "moved");
                    store.append_audit(&moved).await.expect("append");
                    other.append_audit(&moved).await.expect("append");
                }
            }
            ids
        }));
    }
    let mut commands = Vec::new();
    for task in tasks {
        commands.extend(task.await.expect("join"));
    }
    // Each stored as returned, every column.
    for command in &commands {
        let stored = first.get_command(&tenant, &command.id).await.expect("read");
        assert_eq!(
            stored.as_ref(),
            Some(command),
            "command {} as stored",
            command.id
        );
    }
    let mut ids: Vec<String> = commands.into_iter().map(|c| c.id).collect();
    // 72 commands, 36 other rows, the tenant's creation.
    let check = first.verify_audit(&tenant).await.expect("verify");
    assert_eq!(intact_count(&check), 72 + 36 + 1, "{check:?}");
    let rows = first
        .list_audit(
            &tenant,
            &AuditFilter {
                action: Some("command.send".into()),
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    let mut named: Vec<String> = rows
        .iter()
        .map(|r| {
            let detail: serde_json::Value = serde_json::from_str(&r.detail).expect("detail");
            detail["command_id"]
                .as_str()
                .expect("command_id")
                .to_owned()
        })
        .collect();
    named.sort();
    ids.sort();
    assert_eq!(named, ids, "each command's row names it, once");
}
