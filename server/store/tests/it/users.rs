//! The store's side of users and sessions (CONTRACT.md §9), on SQLite and, with the postgres profile,
//! on PostgreSQL: rotation that a token survives once, reuse that revokes a family, invites
//! used once, the last-owner rule under concurrent changes, emails unique across tenants.

use crate::common;

use chrono::{Duration, Utc};
use outpost_store::credentials::{KeyKind, generate_secret, hash_secret};
use outpost_store::domain::{Role, UserStatus};
use outpost_store::{NewUser, Refreshed, Store, UserChange, UserChanged, UserRefused, user};

async fn user(store: &Store, tenant: &str, email: &str, role: Role) -> user::Model {
    store
        .create_user(NewUser {
            tenant_id: tenant.into(),
            email: email.into(),
            role,
            password_hash: Some("$argon2id$test".into()),
        })
        .await
        .expect("create")
        .expect("email free")
}

/// A new refresh token for `user`, of a new family.
async fn login(store: &Store, user: &user::Model) -> String {
    let token = generate_secret(KeyKind::Refresh);
    store
        .insert_refresh(
            user,
            &outpost_store::new_id(),
            &hash_secret(&token),
            Utc::now() + Duration::days(7),
        )
        .await
        .expect("insert");
    token
}

async fn rotate(store: &Store, token: &str, grace: Duration) -> (Refreshed, String) {
    let next = generate_secret(KeyKind::Refresh);
    let outcome = store
        .rotate_refresh(
            &hash_secret(token),
            &hash_secret(&next),
            Utc::now() + Duration::days(7),
            grace,
        )
        .await
        .expect("rotate");
    (outcome, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_a_reuse_revokes_the_family() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let ada = user(&store, &tenant, "ada@example.com", Role::Owner).await;
    let first = login(&store, &ada).await;

    let (outcome, second) = rotate(&store, &first, Duration::seconds(5)).await;
    assert!(
        matches!(outcome, Refreshed::Rotated(ref u) if u.id == ada.id),
        "{outcome:?}"
    );
    // Within the grace, the retired token gets another of the family.
    let (outcome, sibling) = rotate(&store, &first, Duration::seconds(5)).await;
    assert!(matches!(outcome, Refreshed::Rotated(_)), "{outcome:?}");
    // Without grace, it is a reuse: the family goes, every token of it.
    let (outcome, _) = rotate(&store, &first, Duration::zero()).await;
    assert_eq!(outcome, Refreshed::Reused);
    for token in [&second, &sibling, &first] {
        let (outcome, _) = rotate(&store, token, Duration::seconds(5)).await;
        assert_eq!(outcome, Refreshed::Refused, "a revoked family");
    }
    // Another login of the same user is another family, untouched.
    let other = login(&store, &ada).await;
    let (outcome, third) = rotate(&store, &other, Duration::zero()).await;
    assert!(matches!(outcome, Refreshed::Rotated(_)));
    // Logout revokes that family.
    assert!(
        store
            .revoke_refresh_family(&hash_secret(&third))
            .await
            .expect("logout")
    );
    assert!(
        !store
            .revoke_refresh_family(&hash_secret("opr_unknown"))
            .await
            .expect("logout")
    );
    assert_eq!(
        rotate(&store, &third, Duration::zero()).await.0,
        Refreshed::Refused
    );
    assert_eq!(
        rotate(&store, "opr_unknown", Duration::zero()).await.0,
        Refreshed::Refused
    );
}

/// Many exchanges of one token at once, with no grace: exactly one is the rotation, and the
/// others are reuses that revoke the family (whatever the order, never two live successors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exchanges_of_one_token_rotate_once() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let ada = user(&store, &tenant, "ada@example.com", Role::Owner).await;
    let token = login(&store, &ada).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (store, token) = (store.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            rotate(&store, &token, Duration::zero()).await.0
        }));
    }
    let mut rotated = 0;
    for task in tasks {
        match task.await.expect("join") {
            Refreshed::Rotated(_) => rotated += 1,
            Refreshed::Reused | Refreshed::Refused => {}
        }
    }
    assert_eq!(rotated, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_is_used_once_and_not_after_it_expires() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let bob = store
        .create_user(NewUser {
            tenant_id: tenant.clone(),
            email: "bob@example.com".into(),
            role: Role::Member,
            password_hash: None,
        })
        .await
        .expect("create")
        .expect("free");
    let invite = generate_secret(KeyKind::Invite);
    store
        .create_invite(
            &tenant,
            &bob.id,
            &hash_secret(&invite),
            Utc::now() + Duration::hours(72),
        )
        .await
        .expect("invite");
    let accepted = store
        .accept_invite(&hash_secret(&invite), "$argon2id$first")
        .await
        .expect("accept")
        .expect("accepted");
    assert_eq!(accepted.password_hash.as_deref(), Some("$argon2id$first"));
    assert!(
        store
            .accept_invite(&hash_secret(&invite), "$argon2id$second")
            .await
            .expect("accept")
            .is_none(),
        "used twice"
    );
    let stored = store
        .get_user(&tenant, &bob.id)
        .await
        .expect("get")
        .expect("bob");
    assert_eq!(stored.password_hash.as_deref(), Some("$argon2id$first"));

    let late = generate_secret(KeyKind::Invite);
    store
        .create_invite(
            &tenant,
            &bob.id,
            &hash_secret(&late),
            Utc::now() - Duration::seconds(1),
        )
        .await
        .expect("invite");
    assert!(
        store
            .accept_invite(&hash_secret(&late), "$x")
            .await
            .expect("accept")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_are_unique_across_tenants_whatever_their_case() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let (other, _) = store.create_tenant("other", None).await.expect("tenant");
    user(&store, &tenant, "Ada@Example.com", Role::Owner).await;
    for (t, email) in [(&tenant, "ada@example.com"), (&other, " ADA@EXAMPLE.COM ")] {
        let taken = store
            .create_user(NewUser {
                tenant_id: t.clone(),
                email: email.into(),
                role: Role::Member,
                password_hash: None,
            })
            .await
            .expect("create");
        assert_eq!(taken.err(), Some(UserRefused::EmailTaken), "{email}");
    }
    let found = store
        .user_by_email("ADA@example.COM")
        .await
        .expect("find")
        .expect("ada");
    assert_eq!(found.email, "Ada@Example.com");
    // Tenant-scoped reads.
    assert!(
        store
            .get_user(&other, &found.id)
            .await
            .expect("get")
            .is_none()
    );
    assert!(store.list_users(&other).await.expect("list").is_empty());
    assert_eq!(
        store
            .change_user(&other, &found.id, UserChange::Delete)
            .await
            .expect("change"),
        UserChanged::NotFound
    );
}

/// Two owners demoting each other at the same moment: one succeeds, the other is refused as
/// the last owner; the tenant always keeps an active owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_active_owner_is_kept_even_under_concurrent_changes() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let ada = user(&store, &tenant, "ada@example.com", Role::Owner).await;
    let demote = UserChange::Update {
        role: Some(Role::Admin),
        status: None,
    };
    let disable = UserChange::Update {
        role: None,
        status: Some(UserStatus::Disabled),
    };
    for change in [demote, disable, UserChange::Delete] {
        assert_eq!(
            store
                .change_user(&tenant, &ada.id, change)
                .await
                .expect("change"),
            UserChanged::LastOwner
        );
    }
    // An invited owner without a password does not count.
    store
        .create_user(NewUser {
            tenant_id: tenant.clone(),
            email: "pending@example.com".into(),
            role: Role::Owner,
            password_hash: None,
        })
        .await
        .expect("create")
        .expect("free");
    assert_eq!(
        store
            .change_user(&tenant, &ada.id, demote)
            .await
            .expect("change"),
        UserChanged::LastOwner
    );

    for round in 0..5 {
        let eve = user(
            &store,
            &tenant,
            &format!("eve{round}@example.com"),
            Role::Owner,
        )
        .await;
        let ada_id = store
            .list_users(&tenant)
            .await
            .expect("list")
            .into_iter()
            .find(|u| u.role == Role::Owner && u.password_hash.is_some() && u.id != eve.id)
            .expect("another owner")
            .id;
        let (a, b) = tokio::join!(
            store.change_user(&tenant, &ada_id, demote),
            store.change_user(&tenant, &eve.id, demote)
        );
        let outcomes = [a.expect("a"), b.expect("b")];
        let done = outcomes
            .iter()
            .filter(|o| matches!(o, UserChanged::Done(_)))
            .count();
        assert_eq!(done, 1, "round {round}: {outcomes:?}");
        let owners = store
            .list_users(&tenant)
            .await
            .expect("list")
            .into_iter()
            .filter(|u| u.role == Role::Owner && u.password_hash.is_some())
            .count();
        assert_eq!(owners, 1, "round {round}");
    }

    // Disabling a user revokes their refresh tokens.
    let admin = user(&store, &tenant, "adm@example.com", Role::Admin).await;
    let token = login(&store, &admin).await;
    store
        .change_user(&tenant, &admin.id, disable)
        .await
        .expect("disable");
    assert_eq!(
        rotate(&store, &token, Duration::seconds(5)).await.0,
        Refreshed::Refused
    );
}

/// CONTRACT.md §18 in the store: a reset link is used once and not after its hour; using one
/// voids the user's other links, revokes every refresh token and marks the email verified.
#[tokio::test]
async fn reset_links_work_once_and_not_after_they_expire() {
    let (_fresh, store, tenant) = common::fresh_store().await;
    let ada = user(&store, &tenant, "ada@example.com", Role::Member).await;
    let session = login(&store, &ada).await;
    let expired = generate_secret(KeyKind::Reset);
    store
        .create_password_reset(
            &ada,
            &hash_secret(&expired),
            Utc::now() - Duration::seconds(1),
        )
        .await
        .expect("create");
    assert!(
        store
            .password_reset_user(&hash_secret(&expired))
            .await
            .expect("look up")
            .is_none()
    );
    assert!(
        store
            .use_password_reset(&hash_secret(&expired), "$argon2id$new")
            .await
            .expect("use")
            .is_none(),
        "an expired link set a password"
    );
    let first = generate_secret(KeyKind::Reset);
    let second = generate_secret(KeyKind::Reset);
    for token in [&first, &second] {
        store
            .create_password_reset(&ada, &hash_secret(token), Utc::now() + Duration::hours(1))
            .await
            .expect("create");
    }
    let changed = store
        .use_password_reset(&hash_secret(&first), "$argon2id$new")
        .await
        .expect("use")
        .expect("a live link works");
    assert_eq!(changed.password_hash.as_deref(), Some("$argon2id$new"));
    assert!(changed.email_verified_at.is_some());
    assert!(changed.password_changed_at.is_some());
    for token in [&first, &second] {
        assert!(
            store
                .use_password_reset(&hash_secret(token), "$argon2id$again")
                .await
                .expect("use")
                .is_none(),
            "a link worked twice, or after another was used"
        );
    }
    let (refreshed, _) = rotate(&store, &session, Duration::seconds(5)).await;
    assert_eq!(
        refreshed,
        Refreshed::Refused,
        "a session outlived the reset"
    );
}

/// A verification code: 5 wrong tries void it (even the right code then fails), a new code
/// starts again, the right one verifies; an expired one is refused.
#[tokio::test]
async fn verification_codes_take_five_tries_and_expire() {
    use outpost_store::CodeCheck;
    let (_fresh, store, tenant) = common::fresh_store().await;
    let bob = user(&store, &tenant, "bob@example.com", Role::Member).await;
    let check = |stored: &'static str| move |hash: &str| hash == stored;
    store
        .put_email_code(&bob, "right", Utc::now() + Duration::minutes(10))
        .await
        .expect("put");
    for left in (0..5).rev() {
        assert_eq!(
            store
                .check_email_code(&tenant, &bob.id, 5, check("wrong"))
                .await
                .expect("check"),
            CodeCheck::Wrong { left }
        );
    }
    assert_eq!(
        store
            .check_email_code(&tenant, &bob.id, 5, check("right"))
            .await
            .expect("check"),
        CodeCheck::NoCode
    );
    store
        .put_email_code(&bob, "old", Utc::now() - Duration::seconds(1))
        .await
        .expect("put");
    assert_eq!(
        store
            .check_email_code(&tenant, &bob.id, 5, check("old"))
            .await
            .expect("check"),
        CodeCheck::NoCode,
        "an expired code verified"
    );
    store
        .put_email_code(&bob, "new", Utc::now() + Duration::minutes(10))
        .await
        .expect("put");
    // Another tenant's id never reaches it.
    assert_eq!(
        store
            .check_email_code("another-tenant", &bob.id, 5, check("new"))
            .await
            .expect("check"),
        CodeCheck::NoCode
    );
    assert_eq!(
        store
            .check_email_code(&tenant, &bob.id, 5, check("new"))
            .await
            .expect("check"),
        CodeCheck::Verified
    );
    let bob = store
        .get_user(&tenant, &bob.id)
        .await
        .expect("get")
        .expect("bob");
    assert!(bob.email_verified_at.is_some());
}
