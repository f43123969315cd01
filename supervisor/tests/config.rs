//! The `outpost-supervisor` binary's configuration from the environment.

use std::process::Command;

fn supervisor(state: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-supervisor"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["--agent-bin", "/bin/true", "--state-dir"])
        .arg(state);
    cmd
}

/// `OUTPOST_SKIP_UPDATE` takes 1/0, true/false, yes/no as the agent's and the server's
/// booleans do; a word that is none of them stops the supervisor with the variable named,
/// where it used to mean "off" without a word.
#[test]
fn boolean_variables_take_1_0_true_false_yes_no() {
    let dir = tempfile::tempdir().expect("tmp");
    for value in ["yes", "no", "1", "0", "true", "false"] {
        // The stand-in agent (/bin/true) exits 0, so the supervisor stops with 0.
        let out = supervisor(dir.path())
            .env("OUTPOST_SKIP_UPDATE", value)
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = supervisor(dir.path())
        .env("OUTPOST_SKIP_UPDATE", "maybe")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OUTPOST_SKIP_UPDATE=\"maybe\"") && stderr.contains("yes/no"),
        "{stderr}"
    );
}
