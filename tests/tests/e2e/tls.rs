//! Native TLS: the server serves HTTPS/WSS with `--tls-cert/--tls-key`, and the agent trusts
//! a private CA given by `OUTPOST_CA_CERT` (and only then).

use outpost_e2e::{Agent, Server, ServerOptions};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_connects_over_wss_to_a_server_with_a_private_ca() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server_cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let (cert_path, key_path, ca_path) = (
        tmp.path().join("server.pem"),
        tmp.path().join("server.key"),
        tmp.path().join("ca.pem"),
    );
    std::fs::write(&cert_path, server_cert.pem()).expect("write");
    std::fs::write(&key_path, server_key.serialize_pem()).expect("write");
    std::fs::write(&ca_path, ca.pem()).expect("write");

    let server = Server::start_with(ServerOptions {
        args: vec![
            "--tls-cert".into(),
            cert_path.display().to_string(),
            "--tls-key".into(),
            key_path.display().to_string(),
        ],
        ca_pem: Some(ca.pem()),
        ..Default::default()
    })
    .await;
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let api = server.api();
    let (_, secret) = api.agent_key().await;

    // Without the CA the agent cannot verify the server and never registers.
    let untrusting = Agent::start(&server.url, &secret);
    outpost_e2e::wait_for(
        "a certificate error",
        outpost_e2e::READY_TIMEOUT,
        || async {
            let logs = untrusting.logs();
            (logs.contains("certificate") || logs.contains("UnknownIssuer")).then_some(())
        },
    )
    .await;
    let (_, connected) = api.get("/api/agents/connected").await;
    assert_eq!(connected, json!([]));

    // With it, over wss://, everything works.
    let wss = server.url.replacen("https", "wss", 1);
    let agent = Agent::start_with(
        &wss,
        &secret,
        None,
        vec![("OUTPOST_CA_CERT".into(), ca_path.display().to_string())],
    );
    let id = agent.wait_online(&api).await;
    let (status, pong) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{pong}");
    assert_eq!(pong["data"]["pong"], true);
}
