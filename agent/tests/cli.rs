//! The `outpost-agent` binary's command line. (These tests also make `cargo test` build the
//! binary that the end-to-end tests in `tests/` run.)

use std::process::Command;

fn agent() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-agent"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

#[test]
fn missing_configuration_is_named() {
    let out = agent().output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--server-url") && stderr.contains("--api-key"),
        "{stderr}"
    );
}

#[test]
fn a_bad_server_url_is_fatal_and_explained() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = agent()
        .env("OUTPOST_SERVER_URL", "ftp://example")
        .env("OUTPOST_API_KEY", "opa_secret-value")
        .env("OUTPOST_STATE_DIR", dir.path())
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(99),
        "fatal configuration errors exit 99"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ftp://"), "{stderr}");
    assert!(
        !stderr.contains("opa_secret-value"),
        "the key must never be logged"
    );
}

#[test]
fn a_missing_ca_file_is_fatal_and_explained() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = agent()
        .env("OUTPOST_SERVER_URL", "wss://127.0.0.1:1")
        .env("OUTPOST_API_KEY", "opa_x")
        .env("OUTPOST_STATE_DIR", dir.path())
        .env("OUTPOST_CA_CERT", dir.path().join("missing.pem"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(99));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pem"));
}
