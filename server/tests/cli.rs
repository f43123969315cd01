//! The `outpost-server` binary's command line. (These tests also make `cargo test` build the
//! binary that the end-to-end tests in `tests/` run.)

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost-server"))
}

#[test]
fn help_lists_every_documented_flag() {
    let out = server().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--database-url",
        "--public-url",
        "--tls-cert",
        "--tls-key",
        "--log-format",
        "--heartbeat-interval",
        "--builds-dir",
        "--header-timeout",
        "--body-timeout",
        "--idle-timeout",
        "--keepalive-timeout",
        "--max-unauthenticated",
        "--max-unauthenticated-per-address",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    let out = server()
        .args(["--listen", "nowhere"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));

    let out = server()
        .args(["--tls-cert", "/x.pem"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}

#[test]
fn a_weak_admin_key_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = server()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("OUTPOST_ADMIN_KEY", "opk_short")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OUTPOST_ADMIN_KEY"), "{stderr}");
    assert!(
        !stderr.contains("opk_short"),
        "the key itself must not be echoed"
    );
}

#[test]
fn lost_after_shorter_than_three_heartbeats_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = server()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "10",
            "--lost-after",
            "20",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lost-after"));
}

#[test]
fn connection_timeouts_and_caps_refuse_zero() {
    for (flag, env) in [
        ("--header-timeout", "OUTPOST_HEADER_TIMEOUT"),
        ("--body-timeout", "OUTPOST_BODY_TIMEOUT"),
        ("--idle-timeout", "OUTPOST_IDLE_TIMEOUT"),
        ("--keepalive-timeout", "OUTPOST_KEEPALIVE_TIMEOUT"),
        ("--max-unauthenticated", "OUTPOST_MAX_UNAUTHENTICATED"),
        (
            "--max-unauthenticated-per-address",
            "OUTPOST_MAX_UNAUTHENTICATED_PER_ADDRESS",
        ),
    ] {
        // A timeout of 0 would close every connection at once, a cap of 0 refuse every one.
        let out = server().args([flag, "0"]).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{flag} 0");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        // The environment variable is checked the same way.
        let out = server().env(env, "soon").output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{env}=soon");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("soon"),
            "{env}"
        );
    }
}

/// A boolean variable that is not a boolean stops the server with a message naming the flag
/// and the words it takes (1/0, true/false, yes/no are accepted: `tests/e2e/webhooks.rs`).
#[test]
fn a_boolean_variable_that_is_not_one_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = server()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("OUTPOST_WEBHOOK_ALLOW_PRIVATE", "maybe")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("maybe") && stderr.contains("--webhook-allow-private"),
        "{stderr}"
    );
}
