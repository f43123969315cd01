//! The script library in the store (CONTRACT.md §15), on SQLite and (postgres profile) PostgreSQL:
//! versions are immutable (the same bytes again change nothing, other bytes are refused), the
//! newest version is the highest by number (1.10.0 after 1.9.0), bytes are reached only within
//! their tenant, a delete takes the bytes with the row, agents' policies come back as
//! registered, and retention leaves the library alone. Drafts (§20): saved and replaced in
//! place, turned into a version only over the bytes that were signed (else `Changed`, nothing
//! moved), never resolved as a version; a name's switch.

use crate::common;

use outpost_protocol::release::Version;
use outpost_store::domain::{Actor, AuditAction, AuditEvent, AuditTarget, Transport};
use outpost_store::{
    AuditRecord, DraftRefused, LibraryRefused, MAX_LIBRARY_VERSIONS, NewDraft, NewLibraryScript,
    Store,
};
use serde_json::json;

fn audit(tenant: &str) -> AuditRecord {
    AuditRecord {
        tenant_id: tenant.to_owned(),
        actor: Actor::system("test", "test"),
        address: None,
        event: AuditEvent::new(AuditAction::ScriptUpload, AuditTarget::Script, ""),
    }
}

fn version(tenant: &str, name: &str, v: &str, sha: char) -> NewLibraryScript {
    NewLibraryScript {
        tenant_id: tenant.to_owned(),
        name: name.to_owned(),
        version: v.parse::<Version>().expect("version"),
        sha256: sha.to_string().repeat(64),
        signer_key: "key".into(),
        signature: "sig".into(),
        manifest: json!({"name": name, "version": v, "entrypoint": "run.sh"}),
        files: json!([{"path": "run.sh", "size": 3, "executable": true}]),
        uploaded_by: "key:test".into(),
    }
}

async fn insert(
    store: &Store,
    new: NewLibraryScript,
    bytes: &[u8],
) -> Result<bool, LibraryRefused> {
    insert_within(store, new, bytes, u64::MAX).await
}

/// [`insert`] into a library that may hold `max_bytes` per tenant.
async fn insert_within(
    store: &Store,
    new: NewLibraryScript,
    bytes: &[u8],
    max_bytes: u64,
) -> Result<bool, LibraryRefused> {
    let tenant = new.tenant_id.clone();
    store
        .insert_library_script(new, bytes.to_vec(), max_bytes, audit(&tenant))
        .await
        .expect("store")
        .map(|(_, created)| created)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_immutable_ordered_by_number_and_kept_per_tenant() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let (other, _) = store.create_tenant("other", None).await.expect("tenant");

    assert_eq!(
        insert(&store, version(&tenant, "backup", "1.9.0", 'a'), b"nine").await,
        Ok(true)
    );
    // The same bytes again: stored already, nothing written.
    assert_eq!(
        insert(&store, version(&tenant, "backup", "1.9.0", 'a'), b"nine").await,
        Ok(false)
    );
    // Other bytes under the same version: refused, naming the hash already there.
    assert_eq!(
        insert(&store, version(&tenant, "backup", "1.9.0", 'b'), b"other").await,
        Err(LibraryRefused::VersionTaken("a".repeat(64)))
    );
    assert_eq!(
        insert(&store, version(&tenant, "backup", "1.10.0", 'c'), b"ten").await,
        Ok(true)
    );
    assert_eq!(
        insert(&store, version(&tenant, "backup", "1.2.0", 'd'), b"two").await,
        Ok(true)
    );
    // Another tenant's version of the same name is its own.
    assert_eq!(
        insert(&store, version(&other, "backup", "9.0.0", 'e'), b"theirs").await,
        Ok(true)
    );

    let newest = store
        .library_resolve(&tenant, "backup", None)
        .await
        .expect("resolve")
        .expect("found");
    assert_eq!(newest.version, "1.10.0", "1.10.0 is newer than 1.9.0");
    let pinned = store
        .library_resolve(&tenant, "backup", Some(&"1.2.0".parse().expect("v")))
        .await
        .expect("resolve")
        .expect("found");
    assert_eq!(pinned.sha256, "d".repeat(64));
    assert!(
        store
            .library_resolve(&tenant, "backup", Some(&"3.0.0".parse().expect("v")))
            .await
            .expect("resolve")
            .is_none()
    );
    let versions: Vec<String> = store
        .library_versions(&tenant, "backup")
        .await
        .expect("versions")
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, ["1.10.0", "1.9.0", "1.2.0"]);

    // Bytes only within their tenant.
    assert_eq!(
        store
            .library_bundle(&tenant, &"c".repeat(64))
            .await
            .expect("read"),
        Some(b"ten".to_vec())
    );
    assert_eq!(
        store
            .library_bundle(&other, &"c".repeat(64))
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        store
            .library_bundle(&tenant, &"e".repeat(64))
            .await
            .expect("read"),
        None
    );

    // A delete takes the row and the bytes; a second one finds nothing.
    let gone = store
        .delete_library_script(
            &tenant,
            "backup",
            &"1.10.0".parse().expect("v"),
            audit(&tenant),
        )
        .await
        .expect("delete");
    assert!(gone.is_some());
    assert_eq!(
        store
            .library_bundle(&tenant, &"c".repeat(64))
            .await
            .expect("read"),
        None
    );
    assert!(
        store
            .delete_library_script(
                &tenant,
                "backup",
                &"1.10.0".parse().expect("v"),
                audit(&tenant)
            )
            .await
            .expect("delete")
            .is_none()
    );
    let newest = store
        .library_resolve(&tenant, "backup", None)
        .await
        .expect("resolve")
        .expect("found");
    assert_eq!(newest.version, "1.9.0");
    // Uploads and deletes are in the audit log.
    let entries = store
        .list_audit(
            &tenant,
            &outpost_store::AuditFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("audit");
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "script.upload").count(),
        4,
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_policies_come_back_as_registered_and_retention_keeps_the_library() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let with = uuid::Uuid::now_v7();
    let without = uuid::Uuid::now_v7();
    for (id, library) in [
        (with, Some(json!({"allow": ["backup-*"], "keys": ["k"]}))),
        (without, None),
    ] {
        let mut data = json!({
            "agent_id": id, "hostname": "h", "ip": "127.0.0.1",
            "version": "0.1.0", "os": "linux", "arch": "x86_64", "protocol": 1,
            "capabilities": ["run"], "tags": [], "scripts": []
        });
        if let Some(library) = library {
            data["library"] = library;
        }
        let data: outpost_protocol::RegisterData = serde_json::from_value(data).expect("register");
        store
            .upsert_agent(&tenant, "key-1", &data, None, Transport::Websocket)
            .await
            .expect("upsert");
    }
    let policies = store.agent_libraries(&tenant).await.expect("policies");
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[&with.to_string()]["allow"], json!(["backup-*"]));

    // Registering again without `library` clears it.
    let data: outpost_protocol::RegisterData = serde_json::from_value(json!({
        "agent_id": with, "hostname": "h", "ip": "127.0.0.1",
        "version": "0.1.0", "os": "linux", "arch": "x86_64", "protocol": 1,
        "capabilities": ["run"], "tags": [], "scripts": []
    }))
    .expect("register");
    store
        .upsert_agent(&tenant, "key-1", &data, None, Transport::Websocket)
        .await
        .expect("upsert");
    assert!(
        store
            .agent_libraries(&tenant)
            .await
            .expect("policies")
            .is_empty()
    );

    insert(
        &store,
        version(&tenant, "backup-db", "1.0.0", 'a'),
        b"bytes",
    )
    .await
    .expect("stored");
    // Everything before a day from now is old: the cleaner deletes all it may.
    let cutoff = chrono::Utc::now() + chrono::Duration::days(1);
    loop {
        let step = store
            .retention_step(&tenant, cutoff, 500)
            .await
            .expect("step");
        if !step.more {
            break;
        }
    }
    assert_eq!(
        store
            .library_bundle(&tenant, &"a".repeat(64))
            .await
            .expect("read"),
        Some(b"bytes".to_vec()),
        "retention must not delete library scripts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_holds_at_most_its_limit_of_versions() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let sha = |i: u64| format!("{i:064x}");
    for i in 0..MAX_LIBRARY_VERSIONS {
        let mut new = version(&tenant, "many", &format!("1.0.{i}"), 'a');
        new.sha256 = sha(i);
        assert_eq!(insert(&store, new, b"x").await, Ok(true), "version {i}");
    }
    let mut new = version(&tenant, "many", "2.0.0", 'a');
    new.sha256 = sha(MAX_LIBRARY_VERSIONS);
    assert_eq!(
        insert(&store, new.clone(), b"x").await,
        Err(LibraryRefused::TooManyVersions(MAX_LIBRARY_VERSIONS))
    );
    // Another script is not affected, and a delete makes room.
    assert_eq!(
        insert(&store, version(&tenant, "other", "1.0.0", 'f'), b"x").await,
        Ok(true)
    );
    store
        .delete_library_script(
            &tenant,
            "many",
            &"1.0.0".parse().expect("v"),
            audit(&tenant),
        )
        .await
        .expect("delete")
        .expect("deleted");
    assert_eq!(insert(&store, new, b"x").await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_library_holds_at_most_its_bound_even_for_uploads_at_once() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let (other, _) = store.create_tenant("other", None).await.expect("tenant");
    const MAX: u64 = 10;

    assert_eq!(
        insert_within(&store, version(&tenant, "a", "1.0.0", 'a'), b"123456", MAX).await,
        Ok(true)
    );
    assert_eq!(store.library_bytes(&tenant).await.expect("bytes"), 6);
    // 6 + 5 > 10, under any name.
    assert_eq!(
        insert_within(&store, version(&tenant, "b", "1.0.0", 'b'), b"12345", MAX).await,
        Err(LibraryRefused::Full { used: 6, max: MAX })
    );
    // Exactly up to the bound fits; the same bytes again are not counted twice.
    assert_eq!(
        insert_within(&store, version(&tenant, "b", "1.0.0", 'b'), b"1234", MAX).await,
        Ok(true)
    );
    assert_eq!(
        insert_within(&store, version(&tenant, "b", "1.0.0", 'b'), b"1234", MAX).await,
        Ok(false)
    );
    // Another tenant has its own bound.
    assert_eq!(
        insert_within(
            &store,
            version(&other, "a", "1.0.0", 'c'),
            b"123456789",
            MAX
        )
        .await,
        Ok(true)
    );
    // A delete makes room.
    store
        .delete_library_script(&tenant, "a", &"1.0.0".parse().expect("v"), audit(&tenant))
        .await
        .expect("delete")
        .expect("deleted");
    assert_eq!(store.library_bytes(&tenant).await.expect("bytes"), 4);
    assert_eq!(
        insert_within(&store, version(&tenant, "c", "1.0.0", 'd'), b"123456", MAX).await,
        Ok(true)
    );

    // Uploads at once (on PostgreSQL, each in its own connection's transaction): room for one
    // of them, so exactly one is stored.
    let (third, _) = store.create_tenant("third", None).await.expect("tenant");
    let uploads = (0..4u8).map(|i| {
        let store = store.clone();
        let new = version(&third, &format!("s{i}"), "1.0.0", char::from(b'e' + i));
        tokio::spawn(async move { insert_within(&store, new, b"1234567", MAX).await })
    });
    let results: Vec<Result<bool, LibraryRefused>> = futures_util::future::join_all(uploads)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert_eq!(
        results.iter().filter(|r| **r == Ok(true)).count(),
        1,
        "{results:?}"
    );
    assert_eq!(store.library_bytes(&third).await.expect("bytes"), 7);
}

fn draft(tenant: &str, v: &str, sha: char) -> NewDraft {
    NewDraft {
        tenant_id: tenant.to_owned(),
        name: "backup".into(),
        version: v.parse::<Version>().expect("version"),
        sha256: sha.to_string().repeat(64),
        manifest: json!({"name": "backup", "version": v, "entrypoint": "run.sh"}),
        files: json!([{"path": "run.sh", "size": 3, "executable": true}]),
        base_version: Some("1.0.0".into()),
        author: "user:ada".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_become_versions_only_over_the_signed_bytes() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let (other, _) = store.create_tenant("other", None).await.expect("tenant");
    assert_eq!(
        insert(&store, version(&tenant, "backup", "1.0.0", 'a'), b"one").await,
        Ok(true)
    );
    let save = |new: NewDraft, bytes: &'static [u8], max: u64| {
        let store = store.clone();
        async move {
            let tenant = new.tenant_id.clone();
            store
                .save_library_draft(new, bytes.to_vec(), max, audit(&tenant))
                .await
                .expect("store")
        }
    };
    // A signed version's number is taken.
    assert_eq!(
        save(draft(&tenant, "1.0.0", 'b'), b"draft", u64::MAX).await,
        Err(DraftRefused::VersionTaken("a".repeat(64)))
    );
    let first = save(draft(&tenant, "1.1.0", 'b'), b"draft", u64::MAX)
        .await
        .expect("saved");
    // Saved again: the same row, other bytes.
    let again = save(draft(&tenant, "1.1.0", 'c'), b"draft two", u64::MAX)
        .await
        .expect("saved");
    assert_eq!(again.id, first.id);
    assert_eq!(again.sha256, "c".repeat(64));
    assert_eq!(
        store
            .library_draft_bundle(&tenant, &again.id)
            .await
            .expect("bytes"),
        Some(b"draft two".to_vec())
    );
    // Drafts count toward the library's bound (3 bytes of versions + 9 of this draft).
    assert_eq!(
        save(draft(&tenant, "1.2.0", 'd'), b"x", 12).await,
        Err(DraftRefused::Full { used: 12, max: 12 })
    );
    // A draft is no version: nothing resolves to it, and no other tenant sees it.
    let v110: Version = "1.1.0".parse().expect("v");
    assert!(
        store
            .library_resolve(&tenant, "backup", Some(&v110))
            .await
            .expect("resolve")
            .is_none()
    );
    assert!(
        store
            .library_by_sha256(&tenant, &"c".repeat(64))
            .await
            .expect("sha")
            .is_none()
    );
    assert!(
        store
            .library_drafts(&other, None)
            .await
            .expect("drafts")
            .is_empty()
    );
    assert!(
        store
            .library_draft_bundle(&other, &again.id)
            .await
            .expect("bytes")
            .is_none()
    );
    // Signed over the first bytes: refused, naming the bytes it holds now; nothing moved.
    let sign = |sha: char| {
        let store = store.clone();
        let tenant = tenant.clone();
        async move {
            store
                .sign_library_draft(
                    &tenant,
                    "backup",
                    &"1.1.0".parse().expect("v"),
                    &sha.to_string().repeat(64),
                    "key".into(),
                    "sig".into(),
                    "user:ada".into(),
                    audit(&tenant),
                )
                .await
                .expect("store")
        }
    };
    assert_eq!(
        sign('b').await.map(|m| m.version),
        Err(DraftRefused::Changed("c".repeat(64)))
    );
    assert_eq!(
        store
            .library_drafts(&tenant, Some("backup"))
            .await
            .expect("drafts")
            .len(),
        1
    );
    // Over the bytes it holds: a version, with those bytes; the draft is gone.
    let made = sign('c').await.expect("signed");
    assert_eq!(
        (made.version.as_str(), made.signer_key.as_str()),
        ("1.1.0", "key")
    );
    assert_eq!(
        store
            .library_bundle(&tenant, &"c".repeat(64))
            .await
            .expect("bytes"),
        Some(b"draft two".to_vec())
    );
    assert!(
        store
            .library_drafts(&tenant, None)
            .await
            .expect("drafts")
            .is_empty()
    );
    assert_eq!(
        sign('c').await.map(|m| m.version),
        Err(DraftRefused::Missing)
    );

    // A name's switch: enabled until switched, per tenant.
    assert!(
        store
            .library_name(&tenant, "backup")
            .await
            .expect("name")
            .is_none()
    );
    store
        .set_library_enabled(&tenant, "backup", false, "user:ada".into(), audit(&tenant))
        .await
        .expect("switch");
    assert_eq!(
        store.library_disabled(&tenant).await.expect("disabled"),
        ["backup"]
    );
    assert!(
        store
            .library_disabled(&other)
            .await
            .expect("disabled")
            .is_empty()
    );
    store
        .set_library_enabled(&tenant, "backup", true, "user:ada".into(), audit(&tenant))
        .await
        .expect("switch");
    assert!(
        store
            .library_disabled(&tenant)
            .await
            .expect("disabled")
            .is_empty()
    );
    assert!(
        store
            .library_name(&tenant, "backup")
            .await
            .expect("name")
            .expect("row")
            .enabled
    );
}
