//! `deploy.sh --native` as users run it: fetched from a real server's `/deploy.sh` and piped to
//! bash, against a server with a published release (the real agent and supervisor binaries),
//! in a throwaway HOME.
//!
//! Run as root (CI), the script runs as the unprivileged user `nobody` (uid 65534, via
//! `setpriv`), so it takes the non-root path: `~/.outpost-agent` in the throwaway HOME and an
//! `@reboot` line in nobody's crontab (when cron is installed), checked and gone after
//! `--uninstall`. Nothing is
//! installed under /opt. Run as another user, the script runs as that user with
//! `OUTPOST_BOOT=none`, so the test never edits a developer's own crontab.
//!
//! `Machine` and the helpers here are shared with `firstrun.rs` (the install line against a
//! server with nothing published).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use outpost_e2e::{Server, bin_dir};
use serde_json::json;

pub(crate) const NOBODY: u32 = 65534;

/// The machine the script installs for, as `deploy.sh` maps `uname -m`.
pub(crate) fn target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Publishes the built agent and supervisor as `version`, signed with `key`.
pub(crate) fn publish(server: &Server, key: &Path, version: &str) {
    let out = std::process::Command::new(bin_dir().join("outpost-server"))
        .args(["release", "publish", "--data-dir"])
        .arg(&server.data_dir)
        .args(server.database_args())
        .arg("--signing-key")
        .arg(key)
        .args(["--version", version, "--target", &target(), "--agent"])
        .arg(bin_dir().join("outpost-agent"))
        .arg("--supervisor")
        .arg(bin_dir().join("outpost-supervisor"))
        .output()
        .expect("release publish");
    assert!(out.status.success(), "publish {version}: {out:?}");
}

/// A throwaway HOME and the user that runs the script in it.
pub(crate) struct Machine {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) home: PathBuf,
    pub(crate) root: bool,
    /// Root with `crontab` installed: the script adds an `@reboot` line for nobody. Otherwise
    /// it runs with `OUTPOST_BOOT=none`.
    pub(crate) cron: bool,
    server_url: String,
}

impl Machine {
    pub(crate) fn new(server_url: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).expect("home");
        std::fs::write(home.join(".profile"), "# the user's own file\n").expect("profile");
        let root = is_root();
        if root {
            for path in [tmp.path(), &home, &home.join(".profile")] {
                let ok = std::process::Command::new("chown")
                    .arg(format!("{NOBODY}:{NOBODY}"))
                    .arg(path)
                    .status()
                    .expect("chown");
                assert!(ok.success());
            }
        }
        let cron = root
            && std::process::Command::new("sh")
                .args(["-c", "command -v crontab"])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        Self {
            tmp,
            home,
            root,
            cron,
            server_url: server_url.to_owned(),
        }
    }

    /// No boot entry, even where cron is installed: nobody's crontab is one file for every
    /// test, and this test's line would show in another's check that nothing is left there.
    pub(crate) fn without_boot_entry(mut self) -> Self {
        self.cron = false;
        self
    }

    pub(crate) fn install_dir(&self) -> PathBuf {
        self.home.join(".outpost-agent")
    }

    /// Runs `bash -c SCRIPT` as the machine's user with a clean environment.
    pub(crate) async fn bash(&self, script: &str) -> Output {
        let mut cmd = if self.root {
            let mut c = tokio::process::Command::new("setpriv");
            c.arg(format!("--reuid={NOBODY}"))
                .arg(format!("--regid={NOBODY}"))
                .args(["--clear-groups", "--", "bash"]);
            c
        } else {
            tokio::process::Command::new("bash")
        };
        cmd.arg("-c")
            .arg(script)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir(&self.home)
            .kill_on_drop(true);
        if !self.cron {
            cmd.env("OUTPOST_BOOT", "none");
        }
        cmd.output().await.expect("bash")
    }

    /// The one-liner: `curl -fsSL URL/deploy.sh | bash -s -- ARGS`.
    pub(crate) async fn deploy(&self, args: &str) -> Output {
        let out = self
            .bash(&format!(
                "set -o pipefail; curl -fsSL '{}/deploy.sh' | bash -s -- {args}",
                self.server_url
            ))
            .await;
        eprintln!(
            "deploy.sh {args}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub(crate) async fn crontab(&self) -> String {
        let out = self.bash("crontab -l 2>/dev/null || true").await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Processes running a binary from the install directory.
    pub(crate) fn processes(&self) -> Vec<String> {
        let bin = self.install_dir().join("bin");
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            if let Ok(exe) = std::fs::read_link(entry.path().join("exe"))
                && exe.starts_with(&bin)
            {
                found.push(format!(
                    "{} {}",
                    entry.file_name().to_string_lossy(),
                    exe.display()
                ));
            }
        }
        found
    }
}

impl Drop for Machine {
    // A failed test must not leave an agent running: uninstall with the script the server
    // served (kept outside HOME), then kill whatever still runs from the install directory.
    fn drop(&mut self) {
        let script = self.tmp.path().join("deploy.sh");
        if script.exists() && self.install_dir().exists() {
            let mut cmd = if self.root {
                let mut c = std::process::Command::new("setpriv");
                c.arg(format!("--reuid={NOBODY}"))
                    .arg(format!("--regid={NOBODY}"))
                    .args(["--clear-groups", "--", "bash"]);
                c
            } else {
                std::process::Command::new("bash")
            };
            let _ = cmd
                .arg(&script)
                .arg("--uninstall")
                .env_clear()
                .env("HOME", &self.home)
                .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
                .env("OUTPOST_BOOT", if self.cron { "auto" } else { "none" })
                .output();
        }
        for line in self.processes() {
            if let Some(pid) = line.split(' ').next() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid])
                    .status();
            }
        }
    }
}

/// Every path under `dir`, relative to it.
pub(crate) fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(dir).expect("prefix").to_path_buf());
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            }
        }
    }
    out
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(crate) fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read binary");
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_install_lifecycle_leaves_nothing_behind() {
    let server = Server::start().await;
    let api = server.api();

    // A release key and two releases of the binaries under test.
    let keys = tempfile::tempdir().expect("tempdir");
    let signing_key = keys.path().join("release.key");
    let keygen = std::process::Command::new(bin_dir().join("outpost-server"))
        .args(["release", "keygen", "--out"])
        .arg(&signing_key)
        .output()
        .expect("release keygen");
    assert!(keygen.status.success(), "{keygen:?}");
    let public_key = String::from_utf8_lossy(&keygen.stdout)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .expect("public key printed")
        .to_owned();
    publish(&server, &signing_key, "0.1.0");

    // The served script has this server's URL and the release key filled in.
    let served = reqwest::get(format!("{}/deploy.sh", server.url))
        .await
        .expect("GET /deploy.sh");
    assert_eq!(served.status(), 200);
    assert!(
        served.headers()["content-type"]
            .to_str()
            .expect("content-type")
            .starts_with("text/x-shellscript")
    );
    let script = served.text().await.expect("script");
    assert!(script.contains(&format!("\nserved_url='{}'\n", server.url)));
    assert!(script.contains(&format!("\nserved_pubkey='{public_key}'\n")));

    let (_, secret) = api
        .create_key(json!({"name": "deploy", "tags": ["fleet"]}))
        .await;
    let machine = Machine::new(&server.url);
    std::fs::write(machine.tmp.path().join("deploy.sh"), &script).expect("keep script");
    let before = tree(&machine.home);

    // Install: binaries verified and installed, config 0600, boot entry, agent online.
    let out = machine
        .deploy(&format!("--native --key {secret} --tags web,deploy-e2e"))
        .await;
    assert!(out.status.success(), "install failed:\n{}", text(&out));
    let dir = machine.install_dir();
    for name in ["outpost-agent", "outpost-supervisor"] {
        assert_eq!(
            sha256_hex(&dir.join("bin").join(name)),
            sha256_hex(&bin_dir().join(name)),
            "{name} installed is not the published one"
        );
    }
    let env_file = dir.join("agent.env");
    let mode = std::fs::metadata(&env_file)
        .expect("agent.env")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "agent.env mode {mode:o}");
    let env = std::fs::read_to_string(&env_file).expect("agent.env");
    assert!(
        env.contains(&format!("OUTPOST_SERVER_URL={}\n", server.url)),
        "{env}"
    );
    assert!(env.contains(&format!("OUTPOST_API_KEY={secret}\n")));
    assert!(env.contains(&format!("OUTPOST_RELEASE_PUBKEY={public_key}\n")));
    assert!(!text(&out).contains(&secret), "the key was echoed");
    if machine.cron {
        let cron = machine.crontab().await;
        assert!(
            cron.lines().any(|l| l.starts_with("@reboot ")
                && l.contains(&format!("{}/bin/outpost-supervisor", dir.display()))),
            "no @reboot line: {cron}"
        );
    }

    let agent_id = outpost_e2e::wait_for("agent_id", outpost_e2e::READY_TIMEOUT, || {
        let path = dir.join("agent_id");
        async move {
            std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| s.len() == 36)
        }
    })
    .await;
    api.wait_online(&agent_id).await;
    let (_, agent) = api.get(&format!("/api/agents/{agent_id}")).await;
    let tags = agent["tags"].to_string();
    assert!(
        tags.contains("deploy-e2e") && tags.contains("fleet"),
        "{agent}"
    );
    let (status, pong) = api.command(&agent_id, json!({"command": "ping"})).await;
    assert!(status.is_success(), "{pong}");

    // Twice: nothing changes, the same supervisor keeps running.
    let status1 = text(&machine.deploy("--status").await);
    let out = machine.deploy("--native").await;
    assert!(out.status.success(), "second run:\n{}", text(&out));
    let second = text(&out);
    assert!(
        !second.contains("installed ") && !second.contains("wrote ") && !second.contains("added "),
        "the second run changed something:\n{second}"
    );
    let out = machine.deploy("--status").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("running: yes"));
    assert_eq!(text(&out), status1, "the supervisor changed");

    let out = machine.deploy("--logs").await;
    assert!(out.status.success(), "{}", text(&out));
    let logs = text(&out);
    assert!(
        logs.contains("logs/supervisor.log <==")
            && logs.contains("logs/agent.log <==")
            && !logs.contains("(none yet)"),
        "{logs}"
    );

    // Stop: the agent goes offline and stays installed; start: back online.
    let out = machine.deploy("--stop").await;
    assert!(out.status.success(), "{}", text(&out));
    api.wait_status(&agent_id, "offline").await;
    assert!(machine.processes().is_empty(), "{:?}", machine.processes());
    let out = machine.deploy("--status").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = machine.deploy("--start").await;
    assert!(out.status.success(), "{}", text(&out));
    api.wait_online(&agent_id).await;

    // Update to a newer release: downloaded, verified, restarted, same identity.
    publish(&server, &signing_key, "0.1.1");
    let out = machine.deploy("--update").await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("installed "), "{}", text(&out));
    api.wait_online(&agent_id).await;
    let out = machine.deploy("--status").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_ne!(
        text(&out),
        status1,
        "--update did not restart the supervisor"
    );

    // Uninstall: offline, no process, no file, no crontab line.
    let out = machine.deploy("--uninstall").await;
    assert!(out.status.success(), "{}", text(&out));
    api.wait_status(&agent_id, "offline").await;
    assert!(machine.processes().is_empty(), "{:?}", machine.processes());
    assert_eq!(tree(&machine.home), before, "files left behind");
    if machine.cron {
        assert_eq!(machine.crontab().await, "", "crontab left behind");
    }
    let out = machine.deploy("--status").await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
}
