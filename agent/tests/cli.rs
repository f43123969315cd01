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
fn a_bad_server_list_is_fatal_names_the_entry_and_touches_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    for (list, want) in [
        ("ws://127.0.0.1:1,,ws://127.0.0.1:2", "entry 2 is empty"),
        (
            "ws://127.0.0.1:1,http://127.0.0.1:1/",
            "entry 2 (\"http://127.0.0.1:1/\") names the same server as entry 1",
        ),
    ] {
        let out = agent()
            .env("OUTPOST_SERVER_URL", list)
            .env("OUTPOST_API_KEY", "opa_x")
            .env("OUTPOST_STATE_DIR", &state)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(99), "{list}: {stderr}");
        assert!(stderr.contains(want), "{list}: {stderr}");
        assert!(!state.exists(), "the state directory is not created");
    }
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

#[test]
fn the_key_comes_from_one_place_and_a_bad_key_file_is_fatal_and_explained() {
    let dir = tempfile::tempdir().expect("tmp");
    let key_file = dir.path().join("key");
    let run = |envs: &[(&str, &std::path::Path)], stdin: &str| {
        use std::io::Write;
        let mut child = agent()
            .env("OUTPOST_SERVER_URL", "ftp://example")
            .env("OUTPOST_STATE_DIR", dir.path().join("state"))
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        let mut input = child.stdin.take().expect("stdin");
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let key = std::path::Path::new("opa_from-the-environment");

    let (code, stderr) = run(
        &[
            ("OUTPOST_API_KEY", key),
            ("OUTPOST_API_KEY_FILE", &key_file),
        ],
        "",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--api-key-file"), "{stderr}");

    let (code, stderr) = run(&[("OUTPOST_API_KEY_FILE", &key_file)], "");
    assert_eq!(code, Some(99), "{stderr}");
    assert!(stderr.contains(&key_file.display().to_string()), "{stderr}");

    std::fs::write(&key_file, "OUTPOST_API_KEY=opa_secret-value\n").expect("write");
    let (code, stderr) = run(&[("OUTPOST_API_KEY_FILE", &key_file)], "");
    assert_eq!(code, Some(99), "{stderr}");
    assert!(stderr.contains("KEY=value"), "{stderr}");
    assert!(
        !stderr.contains("opa_secret-value"),
        "the key must never be logged"
    );

    // Read whole from a file or standard input: the agent goes on to the next check.
    std::fs::write(&key_file, "opa_secret-value\n").expect("write");
    for (file, stdin) in [
        (key_file.as_path(), ""),
        (std::path::Path::new("-"), "opa_secret-value\n"),
    ] {
        let (code, stderr) = run(&[("OUTPOST_API_KEY_FILE", file)], stdin);
        assert_eq!(code, Some(99), "{stderr}");
        assert!(stderr.contains("ftp://"), "{stderr}");
    }
}

/// A boolean variable takes 1/0, true/false, yes/no (accepted ones: `tests/e2e/commands.rs`);
/// anything else stops the agent with the flag named, before it connects anywhere.
#[test]
fn a_boolean_variable_that_is_not_one_is_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = agent()
        .env("OUTPOST_SERVER_URL", "ws://127.0.0.1:1")
        .env("OUTPOST_API_KEY", "opa_x")
        .env("OUTPOST_STATE_DIR", dir.path())
        .env("OUTPOST_HTTP_FALLBACK", "maybe")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("maybe") && stderr.contains("--http-fallback"),
        "{stderr}"
    );
}
