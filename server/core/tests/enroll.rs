//! Agent enrollment (CONTRACT.md §19) on the store, on SQLite or PostgreSQL as the run asks:
//! the per-key rate limit holds against a flood of enrollments, refused ones included, without
//! touching another key; and nodes that start at once on an empty database end up with one CA.

use std::sync::Arc;
use std::time::Duration;

use outpost_core::enroll::Enrollment;
use outpost_core::pki::AgentCa;
use outpost_protocol::AgentId;
use outpost_store::Store;
use outpost_store::domain::DomainError;
use outpost_store::seal::MasterKey;

#[path = "../../store/tests/it/common/mod.rs"]
mod common;

const VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

fn master() -> MasterKey {
    MasterKey::parse(&MasterKey::generate()).expect("master key")
}

/// A flood of enrollments with one key is cut at the limit: every request counts, also one
/// whose CSR is refused (a flood of garbage cannot cost the server a signature each, nor slip
/// past the limit by failing); the refusal says when to retry; another key is not affected.
/// At 10 a minute (an allowance every 6 s) no refill happens within the test; at the
/// server's 3,000 (every 20 ms) one did on a busy CI machine, between the flood and the next
/// request.
#[tokio::test]
async fn enrollments_are_limited_per_key_and_refused_ones_count() {
    const LIMIT: u32 = 10;
    let (_fresh, store, tenant) = common::fresh_store().await;
    let ca = AgentCa::load_or_create(&store, &master(), VALIDITY)
        .await
        .expect("CA");
    let enrollment = Enrollment::limited(store.clone(), Arc::new(ca), LIMIT);
    let (flooding, _) = store
        .create_agent_key(&tenant, "flood", &[], &[], None)
        .await
        .expect("key");
    let (other, _) = store
        .create_agent_key(&tenant, "other", &[], &[], None)
        .await
        .expect("key");
    let agent = AgentId::now_v7();
    for n in 0..LIMIT {
        match enrollment.enroll(&flooding, agent, "not a CSR").await {
            Err(DomainError::Invalid {
                code: "bad_csr", ..
            }) => {}
            other => panic!("enrollment {n}: expected bad_csr, got {other:?}"),
        }
    }
    match enrollment.enroll(&flooding, agent, "not a CSR").await {
        Err(DomainError::RateLimited {
            message,
            retry_after_s,
        }) => {
            assert!(retry_after_s >= 1, "{retry_after_s}");
            assert!(message.contains("10 a minute per agent key"), "{message}");
        }
        other => panic!("past the limit: expected rate_limited, got {other:?}"),
    }
    // A valid CSR is refused too while the key is over its limit.
    let (_, csr) = csr_for(agent);
    assert!(matches!(
        enrollment.enroll(&flooding, agent, &csr).await,
        Err(DomainError::RateLimited { .. })
    ));
    // The other key enrolls.
    let enrolled = enrollment
        .enroll(&other, agent, &csr)
        .await
        .expect("another key is not limited by the first one's flood");
    assert!(enrolled.certificate.contains("BEGIN CERTIFICATE"));
}

/// Two nodes starting at once on an empty database both make a CA; one is stored, and both
/// use that one (the other's is dropped), so every node issues and checks the same identities.
#[tokio::test]
async fn nodes_starting_at_once_share_one_ca() {
    let (fresh, first, _tenant) = common::fresh_store().await;
    let second = Store::open(&fresh.location).await.expect("second node");
    let master = master();
    let (a, b) = tokio::join!(
        AgentCa::load_or_create(&first, &master, VALIDITY),
        AgentCa::load_or_create(&second, &master, VALIDITY),
    );
    let (a, b) = (a.expect("first CA"), b.expect("second CA"));
    assert_eq!(a.fingerprint(), b.fingerprint(), "two CAs in one cluster");
    // A node started later loads it too.
    let third = AgentCa::load_or_create(&second, &master, VALIDITY)
        .await
        .expect("third");
    assert_eq!(a.fingerprint(), third.fingerprint());
    // A node with another master key cannot open it, and says so.
    let err = AgentCa::load_or_create(&first, &self::master(), VALIDITY)
        .await
        .expect_err("another master key");
    assert!(err.to_string().contains("master key"), "{err}");
}

/// A P-256 key and a CSR for `agent`, made as the agent makes them.
fn csr_for(agent: AgentId) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, agent.to_string());
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, csr)
}
