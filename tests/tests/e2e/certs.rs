//! Agent identity by certificate (CONTRACT.md §19), over TLS on loopback with the real server
//! and agent: enrollment, connection by certificate, renewal, a restart, revocation, and the
//! attacks of the issue (a certificate for agent A registering as B, an expired certificate, one
//! from another CA, a replayed enrollment, bad CSRs, a disabled enrollment key, a copied key
//! speaking for an enrolled agent).

use std::sync::Arc;
use std::time::Duration;

use outpost_e2e::{Agent, READY_TIMEOUT, Server, ServerOptions, wait_for};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// A server issuing its own TLS certificate, with `extra` flags.
async fn tls_server(extra: &[&str]) -> Server {
    Server::start_with(ServerOptions {
        tls_auto: true,
        args: extra.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    })
    .await
}

/// A client trusting the server's CA and presenting `identity` (certificate PEM, key PKCS#8
/// DER), if any.
fn client(server: &Server, identity: Option<(&str, &[u8])>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    let ca = server.ca_pem_text();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("CA")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls")
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("cert");
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::try_from(key.to_vec()).expect("key"))
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn post(
    client: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = client.post(url).json(&body);
    if let Some(key) = bearer {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Enrolls `agent_id` with `key`: the status, the answer and the private key the CSR was for.
async fn enroll(server: &Server, key: &str, agent_id: &str) -> (StatusCode, Value, Vec<u8>) {
    let (key_der, csr) =
        outpost_agent::identity::new_key_and_csr(agent_id.parse().expect("uuid")).expect("csr");
    let (status, body) = post(
        &client(server, None),
        format!("{}/agent/v1/enroll", server.url),
        Some(key),
        json!({"agent_id": agent_id, "csr": csr}),
    )
    .await;
    (status, body, key_der)
}

/// A long-poll `register` for `agent_id` over `client`.
async fn register(
    server: &Server,
    client: &reqwest::Client,
    bearer: Option<&str>,
    agent_id: &str,
) -> (StatusCode, Value) {
    let register = outpost_e2e::ws::register(agent_id);
    post(
        client,
        format!("{}/agent/v1/frames", server.url),
        bearer,
        json!({"frames": [register]}),
    )
    .await
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_renews_survives_a_restart_and_is_cut_off_when_deleted() {
    let mut server = tls_server(&["--agent-auth", "cert", "--agent-cert-validity", "60s"]).await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let api = server.api();
    let (_, key) = api.agent_key().await;
    let fingerprint = server.agent_ca_fingerprint();

    // The agent trusts exactly the CA of the fingerprint, enrolls and connects by certificate.
    let agent = Agent::start_with(
        &server.url.replacen("https", "wss", 1),
        &key,
        None,
        vec![("OUTPOST_CA_FINGERPRINT".into(), fingerprint.to_uppercase())],
    );
    let id = agent.wait_online(&api).await;
    let identity = agent.state_dir.join("identity");
    for file in ["key.pem", "cert.pem", "cert.json", "ca.pem"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(identity.join(file))
                .expect(file)
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
    assert!(agent.logs().contains("enrolled"), "{}", agent.logs());
    let (status, pong) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{pong}");

    // Under --agent-auth cert the key alone connects nothing.
    let (status, body) = register(&server, &client(&server, None), Some(&key), &new_id()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body.to_string().contains("requires an agent certificate"),
        "{body}"
    );

    // Renewal at two thirds of a 60 s life: a new certificate for a new key, and the old one
    // refused once it has expired.
    let first_cert = std::fs::read_to_string(identity.join("cert.pem")).expect("cert");
    let first_key = std::fs::read_to_string(identity.join("key.pem")).expect("key");
    // The log line comes after the files are written and the new certificate is in use.
    wait_for("the certificate renewed", Duration::from_secs(90), || {
        let logs = agent.logs();
        async move { logs.contains("agent certificate renewed").then_some(()) }
    })
    .await;
    assert_ne!(
        std::fs::read_to_string(identity.join("cert.pem")).expect("cert"),
        first_cert
    );
    assert_ne!(
        std::fs::read_to_string(identity.join("key.pem")).expect("key"),
        first_key
    );
    assert!(
        agent.logs().contains("agent certificate renewed"),
        "{}",
        agent.logs()
    );
    let old_key = PrivateKeyDer::from_pem_slice(first_key.as_bytes()).expect("old key");
    let old_key = old_key.secret_der().to_vec();
    let old = client(&server, Some((&first_cert, &old_key)));
    wait_for(
        "the old certificate expired",
        Duration::from_secs(90),
        || {
            let (old, url) = (old.clone(), format!("{}/agent/v1/renew", server.url));
            async move {
                match old.post(url).json(&json!({"csr": "x"})).send().await {
                    // rustls refuses the expired certificate in the handshake.
                    Err(_) => Some(()),
                    Ok(response) if response.status() == StatusCode::UNAUTHORIZED => Some(()),
                    Ok(_) => None,
                }
            }
        },
    )
    .await;

    // A restart keeps every agent's identity: the same CA, the agent back by certificate.
    let ca_before = server.ca_pem_text();
    server.restart().await;
    assert_eq!(
        server.fetch_agent_ca().await,
        ca_before,
        "the CA changed across a restart"
    );
    api.wait_online(&id).await;
    let (status, pong) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{pong}");

    let current_cert = std::fs::read_to_string(identity.join("cert.pem")).expect("cert");
    let current_key = PrivateKeyDer::from_pem_slice(
        std::fs::read_to_string(identity.join("key.pem"))
            .expect("key")
            .as_bytes(),
    )
    .expect("key")
    .secret_der()
    .to_vec();
    // Deleting the agent revokes its certificates: its connection closes and it cannot come back.
    let (status, _) = api.delete(&format!("/api/agents/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    wait_for("the agent refused", READY_TIMEOUT, || {
        let logs = agent.logs();
        async move { logs.contains("certificate_revoked").then_some(()) }
    })
    .await;
    // Not listed as connected any more. On PostgreSQL the restarted server sees its killed
    // predecessor as another node until that node's lease runs out, and lists that node's
    // agents from a presence cache read at most every 2 s: wait for it, do not read it once.
    wait_for(
        "the agent no longer listed as connected",
        READY_TIMEOUT,
        || {
            let (api, id) = (api.clone(), id.clone());
            async move {
                let (_, connected) = api.get("/api/agents/connected").await;
                (!connected.to_string().contains(&id)).then_some(())
            }
        },
    )
    .await;
    let (status, body) = register(
        &server,
        &client(&server, Some((&current_cert, &current_key))),
        None,
        &id,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.to_string().contains("certificate_revoked"), "{body}");
    // Nor may it enroll again until an admin clears it.
    let (status, body, _) = enroll(&server, &key, &id).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "agent_revoked", "{body}");
    let (status, _) = api
        .post(&format!("/api/agents/{id}/unrevoke"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .post(&format!("/api/agents/{id}/unrevoke"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Cleared, the agent enrolls again by itself (its revoked certificate dropped) and is back.
    wait_for(
        "the agent back after unrevoke",
        Duration::from_secs(90),
        || {
            let (api, id) = (api.clone(), id.clone());
            async move {
                let (_, agent) = api.get(&format!("/api/agents/{id}")).await;
                (agent["status"] == "online").then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_refuse_what_the_attacks_try() {
    let server = tls_server(&[]).await; // --agent-auth either
    let api = server.api();
    let (key_id, key) = api.agent_key().await;
    let url = |path: &str| format!("{}{path}", server.url);

    // Enroll agent A.
    let a = new_id();
    let (status, issued, a_key) = enroll(&server, &key, &a).await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    let a_cert = issued["certificate"]
        .as_str()
        .expect("certificate")
        .to_owned();
    assert_eq!(issued["ca"].as_str(), Some(server.ca_pem_text().as_str()));
    let as_a = client(&server, Some((&a_cert, &a_key)));

    // A certificate for A registering as B.
    let (status, body) = register(&server, &as_a, None, &new_id()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "certificate_mismatch", "{body}");
    // As A it registers.
    let (status, body) = register(&server, &as_a, None, &a).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The enrollment key (copied) speaking for A without A's certificate: refused, since A enrolled.
    let (status, body) = register(&server, &client(&server, None), Some(&key), &a).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "certificate_required", "{body}");
    // An agent that never enrolled still connects by key under `either`.
    let (status, body) = register(&server, &client(&server, None), Some(&key), &new_id()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The same enrollment replayed: the same certificate, nothing new issued.
    let b = new_id();
    let (_, csr) = outpost_agent::identity::new_key_and_csr(b.parse().expect("uuid")).expect("csr");
    let (status, first) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": b, "csr": csr}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": b, "csr": csr}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(first["certificate"], again["certificate"]);
    // A new key for an agent that holds a live certificate: refused (only renewal renews).
    let (status, body, _) = enroll(&server, &key, &b).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "already_enrolled", "{body}");
    // One key certified for two agents: refused (a CSR with an empty subject, as other tools make).
    let shared = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    let anonymous = params
        .serialize_request(&shared)
        .expect("csr")
        .pem()
        .expect("pem");
    let (status, body) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": new_id(), "csr": anonymous}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": new_id(), "csr": anonymous}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "csr_reused", "{body}");

    // CSRs: a subject asking for another agent, an RSA key, garbage.
    let other = new_id();
    let (_, csr_for_a) =
        outpost_agent::identity::new_key_and_csr(a.parse().expect("uuid")).expect("csr");
    let (status, body) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": other, "csr": csr_for_a}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("subject"),
        "{body}"
    );
    let rsa = include_str!("../../../server/core/src/pki_test_rsa1024.csr");
    let (status, body) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": other, "csr": rsa}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("RSA"),
        "{body}"
    );
    let (status, body) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": other, "csr": "hello"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": other, "csr": "x", "tags": ["prod"]}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields refused: {body}"
    );
    let (status, body) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some(&key),
        json!({"agent_id": other, "csr": "A".repeat(20_000)}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // No key, a bad key.
    let (status, _) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        None,
        json!({"agent_id": other, "csr": csr}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &client(&server, None),
        url("/agent/v1/enroll"),
        Some("opa_notakeyatallnotakeyatall"),
        json!({"agent_id": other, "csr": csr}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Renewal without a certificate.
    let (status, body) = post(
        &client(&server, None),
        url("/agent/v1/renew"),
        Some(&key),
        json!({"csr": csr}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A certificate from another CA: the handshake fails.
    let foreign_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_ca =
        rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key"))
            .expect("ca");
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.subject_alt_names = vec![rcgen::SanType::URI(
        format!("outpost://x/agents/{a}")
            .as_str()
            .try_into()
            .expect("uri"),
    )];
    let forged = leaf.signed_by(&foreign_key, &foreign_ca).expect("forged");
    let forger = client(&server, Some((&forged.pem(), &foreign_key.serialize_der())));
    let result = forger
        .post(url("/agent/v1/frames"))
        .json(&json!({"frames": []}))
        .send()
        .await;
    assert!(
        result.is_err(),
        "a certificate from another CA was accepted: {result:?}"
    );

    // A disabled enrollment key: its agents' certificates and its enrollments are refused.
    let (status, _) = api
        .patch(
            &format!("/api/agents/keys/{key_id}"),
            json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = register(&server, &as_a, None, &a).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "key_disabled", "{body}");
    let (status, body, _) = enroll(&server, &key, &new_id()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "key_disabled", "{body}");
    let (status, _) = api
        .patch(
            &format!("/api/agents/keys/{key_id}"),
            json!({"status": "active"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = register(&server, &as_a, None, &a).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The install line pins the server's key and the CA.
    let (status, _) = api.get("/deploy.sh").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_has_no_ca_and_agents_keep_their_keys() {
    let server = Server::start().await;
    let api = server.api();
    let (_, key) = api.agent_key().await;
    let response = reqwest::get(format!("{}/agent/v1/ca", server.url))
        .await
        .expect("ca");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let agent = Agent::start(&server.url, &key);
    agent.wait_online(&api).await;
    assert!(!agent.state_dir.join("identity").join("cert.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_line_pins_the_server_and_its_agent_enrolls() {
    let server = tls_server(&["--agent-auth", "cert"]).await;
    let api = server.api();
    let (_, key) = api.agent_key().await;
    let fingerprint = server.agent_ca_fingerprint();
    let logs = server.logs();
    let pin = logs
        .split_whitespace()
        .find_map(|word| word.strip_prefix("pin=sha256//"))
        .map(|b64| format!("sha256//{}", b64.trim_matches('"')))
        .unwrap_or_else(|| panic!("the server logs its key's pin:\n{logs}"));

    let machine = crate::deploy::Machine::new(&server.url).without_boot_entry();
    let script = client(&server, None)
        .get(format!("{}/deploy.sh", server.url))
        .send()
        .await
        .expect("deploy.sh")
        .text()
        .await
        .expect("script");
    std::fs::write(machine.tmp.path().join("deploy.sh"), &script).expect("keep script");

    // A pin of another key: curl refuses the server, nothing is installed.
    let wrong = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = machine
        .bash(&format!(
            "set -o pipefail; curl -fsSL -k --pinnedpubkey '{wrong}' '{}/deploy.sh' | bash -s -- --native --key {key} --ca-fingerprint {fingerprint}",
            server.url
        ))
        .await;
    assert!(!out.status.success(), "{}", crate::deploy::text(&out));
    // A fingerprint of another CA: deploy.sh refuses the server's CA.
    let out = machine
        .bash(&format!(
            "set -o pipefail; curl -fsSL -k --pinnedpubkey '{pin}' '{}/deploy.sh' | bash -s -- --native --key {key} --ca-fingerprint {}",
            server.url,
            "0".repeat(64)
        ))
        .await;
    assert!(!out.status.success(), "{}", crate::deploy::text(&out));
    assert!(
        crate::deploy::text(&out).contains("not trusted"),
        "{}",
        crate::deploy::text(&out)
    );

    // The install line as the dashboard shows it.
    let out = machine
        .bash(&format!(
            "set -o pipefail; curl -fsSL -k --pinnedpubkey '{pin}' '{}/deploy.sh' | bash -s -- --native --key {key} --ca-fingerprint {fingerprint}",
            server.url
        ))
        .await;
    assert!(
        out.status.success(),
        "install failed:\n{}",
        crate::deploy::text(&out)
    );
    let env = std::fs::read_to_string(machine.install_dir().join("agent.env")).expect("agent.env");
    assert!(
        env.contains(&format!("OUTPOST_CA_FINGERPRINT={fingerprint}")),
        "{env}"
    );
    wait_for(
        "the installed agent online",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                let (_, agents) = api.get("/api/agents").await;
                agents["agents"]
                    .as_array()
                    .or_else(|| agents.as_array())
                    .and_then(|list| list.first().cloned())
                    .filter(|agent| agent["status"] == "online")
            }
        },
    )
    .await;
    let state = machine.install_dir();
    assert!(
        state.join("identity").join("cert.pem").exists(),
        "the agent enrolled"
    );
}
