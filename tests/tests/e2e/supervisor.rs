//! Self-update through a real server: `outpost-server release keygen|publish`, the real
//! supervisor running the real agent, and the `update` command.
//!
//! One supervisor walks through every case in turn, each checked through the API (the version
//! the agent registers with and the `update_status` the supervisor reports) and on disk (the
//! agent binary's hash):
//! a "latest" that is older than the running agent refused by the supervisor, A -> B
//! (signature-checked download), an older version refused by the server without `force` and
//! `force` refused to a non-owner, a corrupted file refused, a file longer than its release
//! states refused before it is read, a release signed by another key refused, a B that
//! crashes at start rolled back to the previous binary, and finally a downgrade forced by an
//! owner.
//!
//! Versions are the real agent binary with a few bytes appended (an ELF file runs the same
//! with trailing bytes), so every version is a distinct file with its own hash while the
//! agent inside is the real one. The agent reports the release version the supervisor
//! verified and installed (`OUTPOST_RELEASE_VERSION`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outpost_e2e::{Api, READY_TIMEOUT, Server, bin_dir, wait_for};
use outpost_store::{DatabaseLocation, Store};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read");
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

pub(crate) fn server_tool(args: &[&str]) -> String {
    let out = Command::new(bin_dir().join("outpost-server"))
        .args(args)
        .output()
        .expect("run outpost-server");
    assert!(
        out.status.success(),
        "outpost-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The target the supervisor was built for, from its long version.
pub(crate) fn supervisor_target() -> String {
    let out = Command::new(bin_dir().join("outpost-supervisor"))
        .arg("--version")
        .output()
        .expect("run outpost-supervisor");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.split('(')
        .nth(1)
        .and_then(|t| t.split(')').next())
        .unwrap_or_else(|| panic!("no target in {text:?}"))
        .to_owned()
}

pub(crate) struct Release {
    pub(crate) key: PathBuf,
    pub(crate) target: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) dir: PathBuf,
    /// `--database-url …` when the server is not on SQLite in its data directory.
    pub(crate) database: Vec<String>,
}

/// A release key and two published versions of the real agent, `0.1.0` (`old`, the file a
/// test installs) and `0.2.0`: what a fleet-version test starts from.
pub(crate) struct TwoReleases {
    pub(crate) release: Release,
    /// The release public key supervisors pin.
    pub(crate) pubkey: String,
    pub(crate) old: PathBuf,
}

impl TwoReleases {
    /// Published through `server`'s data directory and database; files under `dir`.
    pub(crate) fn publish(server: &Server, dir: &Path) -> Self {
        let release = Release {
            key: dir.join("release.key"),
            target: supervisor_target(),
            data_dir: server.data_dir.clone(),
            dir: dir.to_owned(),
            database: server.database_args(),
        };
        let key_path = release.key.to_str().expect("utf-8").to_owned();
        let pubkey = server_tool(&["release", "keygen", "--out", &key_path])
            .trim()
            .to_owned();
        let old = release.agent_variant("0.1.0");
        let new = release.agent_variant("0.2.0");
        release.publish("0.1.0", &old, &release.key);
        release.publish("0.2.0", &new, &release.key);
        Self {
            release,
            pubkey,
            old,
        }
    }
}

impl Release {
    /// A file: the real agent with `tag` appended.
    pub(crate) fn agent_variant(&self, tag: &str) -> PathBuf {
        let mut bytes = std::fs::read(bin_dir().join("outpost-agent")).expect("agent");
        bytes.extend_from_slice(format!("\noutpost-e2e-variant {tag}\n").as_bytes());
        let path = self.dir.join(format!("agent-{tag}"));
        std::fs::write(&path, bytes).expect("write variant");
        path
    }

    pub(crate) fn publish(&self, version: &str, agent: &Path, key: &Path) {
        let mut args = vec![
            "release",
            "publish",
            "--data-dir",
            self.data_dir.to_str().expect("utf-8"),
            "--signing-key",
            key.to_str().expect("utf-8"),
            "--version",
            version,
            "--target",
            &self.target,
            "--agent",
            agent.to_str().expect("utf-8"),
        ];
        args.extend(self.database.iter().map(String::as_str));
        server_tool(&args);
    }

    fn published_file(&self, version: &str) -> PathBuf {
        self.data_dir
            .join("releases")
            .join(version)
            .join(&self.target)
            .join("outpost-agent")
    }
}

pub(crate) struct Supervisor {
    child: Child,
    pub(crate) bin: PathBuf,
    pub(crate) state: PathBuf,
    log: PathBuf,
}

impl Supervisor {
    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- supervisor + agent output ----\n{}", self.logs());
        }
    }
}

/// Sends `update` and waits until the agent is back with a new `update_status`.
async fn update(api: &Api, id: &str, data: Value, previous_at: &Value) -> Value {
    let (status, answer) = api
        .command(id, json!({"command": "update", "data": data}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["exit_code"], 43, "{answer}");
    let path = format!("/api/agents/{id}");
    wait_for(
        "the agent back with a new update report",
        Duration::from_secs(90),
        || {
            let path = path.clone();
            async move {
                let (_, agent) = api.get(&path).await;
                (agent["status"] == "online"
                    && agent["update_status"].is_object()
                    && agent["update_status"]["at"] != *previous_at)
                    .then_some(agent)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_self_update_refusals_and_rollback() {
    let server = Server::start().await;
    let api = server.api();
    let tmp = tempfile::tempdir().expect("tempdir");
    let release = Release {
        key: tmp.path().join("release.key"),
        target: supervisor_target(),
        data_dir: server.data_dir.clone(),
        dir: tmp.path().to_owned(),
        database: server.database_args(),
    };

    // The release key: keygen prints the public key to pin, and never overwrites a key.
    let key_path = release.key.to_str().expect("utf-8");
    let pubkey = server_tool(&["release", "keygen", "--out", key_path])
        .trim()
        .to_owned();
    assert_eq!(pubkey.len(), 44, "{pubkey}");
    let again = Command::new(bin_dir().join("outpost-server"))
        .args(["release", "keygen", "--out", key_path])
        .output()
        .expect("keygen");
    assert!(!again.status.success(), "keygen overwrote a key");

    let a = release.agent_variant("0.1.0");
    let b = release.agent_variant("0.2.0");
    // At first the latest release is older than the agent that will run.
    let older = release.agent_variant("0.0.9");
    release.publish("0.0.9", &older, &release.key);

    let (_, secret) = api
        .create_key(
            json!({"name": "supervised", "permissions": ["ping", "info", "update", "redeploy"]}),
        )
        .await;
    let sup = start_supervisor(&server, &release, &a, &secret, &pubkey);
    let bin_dir_installed = sup.bin.parent().expect("bin dir").to_owned();
    let id_path = sup.state.join("agent_id");
    let id = wait_for("agent_id", READY_TIMEOUT, || {
        let id_path = id_path.clone();
        async move {
            std::fs::read_to_string(&id_path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| s.len() == 36)
        }
    })
    .await;
    api.wait_online(&id).await;
    let (_, agent) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(agent["version"], "0.1.0", "{agent}");
    assert!(agent["update_status"].is_null(), "{agent}");
    assert!(
        agent["capabilities"]
            .as_array()
            .expect("caps")
            .contains(&json!("update")),
        "supervised agents offer update: {agent}"
    );

    // An update to "the latest" names no version, so the server cannot tell that it is a
    // downgrade: the supervisor compares and refuses, since it was not told to force.
    let agent = update(&api, &id, json!({}), &Value::Null).await;
    let report = agent["update_status"].clone();
    assert_eq!(report["status"], "failed", "{report}");
    assert_eq!(report["to"], "0.0.9", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .expect("reason")
            .contains("older than the running 0.1.0"),
        "{report}"
    );
    assert_eq!(agent["version"], "0.1.0");
    assert_eq!(sha256(&sup.bin), sha256(&a));

    release.publish("0.1.0", &a, &release.key);
    release.publish("0.2.0", &b, &release.key);

    // Metadata needs a key; the files themselves are public and match the metadata.
    let anonymous = Api::new(&server.url, "");
    let (status, _) = anonymous
        .get(&format!("/api/releases/latest?target={}", release.target))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let as_agent = Api::new(&server.url, &secret);
    let (status, latest) = as_agent
        .get(&format!("/api/releases/latest?target={}", release.target))
        .await;
    assert_eq!(status, StatusCode::OK, "{latest}");
    assert_eq!(latest["version"], "0.2.0");
    assert_eq!(latest["public_key"], pubkey.as_str());
    assert_eq!(latest["agent"]["sha256"], sha256(&b).as_str());
    assert!(
        latest["agent"]["signature_v2"].is_string(),
        "new releases also sign their size: {latest}"
    );
    let (status, _) = as_agent.get("/api/releases/latest?target=nope-none").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let checksum = reqwest::get(format!(
        "{}/downloads/latest/{}/outpost-agent.sha256",
        server.url, release.target
    ))
    .await
    .expect("get")
    .text()
    .await
    .expect("text");
    assert_eq!(checksum, format!("{}  outpost-agent\n", sha256(&b)));
    let file = reqwest::get(latest["agent"]["url"].as_str().expect("url"))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(file.as_ref(), std::fs::read(&b).expect("read").as_slice());
    for (path, want) in [
        ("/api/releases/latest".to_owned(), StatusCode::BAD_REQUEST),
        (
            format!("/api/releases/1.2?target={}", release.target),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/releases/latest?target=../etc".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/releases/9.9.9?target={}", release.target),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/downloads/9.9.9/{}/outpost-agent", release.target),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/downloads/0.2.0/{}/outpost-supervisor", release.target),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/downloads/0.2.0/{}/agent.db", release.target),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = as_agent.get(&path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    // Releases are immutable.
    let twice = Command::new(bin_dir().join("outpost-server"))
        .args(["release", "publish", "--data-dir"])
        .arg(&release.data_dir)
        .arg("--signing-key")
        .arg(&release.key)
        .args(["--version", "0.2.0", "--target", &release.target, "--agent"])
        .arg(&a)
        .output()
        .expect("publish");
    assert!(!twice.status.success(), "published 0.2.0 twice");
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already published"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );

    // A -> B: the latest release, downloaded, verified and swapped in.
    let agent = update(&api, &id, json!({}), &report["at"]).await;
    assert_eq!(agent["version"], "0.2.0", "{agent}");
    let report = agent["update_status"].clone();
    assert_eq!(report["status"], "updated", "{report}");
    assert_eq!(report["from"], "0.1.0", "{report}");
    assert_eq!(report["to"], "0.2.0", "{report}");
    assert_eq!(sha256(&sup.bin), sha256(&b), "B is installed");
    let prev = bin_dir_installed.join("outpost-agent.prev");
    assert_eq!(sha256(&prev), sha256(&a), "A is kept as .prev");
    let leftovers: Vec<_> = std::fs::read_dir(&bin_dir_installed)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("download"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An older version is refused by the server without force, on the command route and,
    // run by run, in a job; nothing reaches the agent.
    let downgrade = json!({"command": "update", "data": {"version": "0.1.0"}});
    let (status, err) = api.command(&id, downgrade.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let message = err["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("downgrade") && message.contains("force"),
        "{err}"
    );
    let mut job = downgrade.clone();
    job["target"] = json!({"all": true});
    let (status, job) = api.job(job, Some(30)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        job["runs"][0]["error"]["code"], "downgrade_needs_force",
        "{job}"
    );
    // Only an owner may force one: an admin's key is refused on every route.
    let store = Store::open(&DatabaseLocation::Sqlite(
        server.data_dir.join("outpost.db"),
    ))
    .await
    .expect("open store");
    let owner = store
        .api_key_by_hash(&outpost_store::credentials::hash_secret(&server.admin_key))
        .await
        .expect("read")
        .expect("owner key");
    let admin_key = store
        .create_api_key(&owner.tenant_id, "an admin", "admin")
        .await
        .expect("admin key");
    let admin = api.with_token(&admin_key);
    let forced = json!({"command": "update", "data": {"version": "0.1.0", "force": true}});
    let (status, err) = admin.command(&id, forced.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("message")
            .contains("only an owner"),
        "{err}"
    );
    let mut job = forced.clone();
    job["target"] = json!({"agents": [id]});
    let (status, err) = admin.job(job, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let (status, err) = admin
        .post(
            &format!(
                "/api/agents/keys/{}/command",
                agent["key_id"].as_str().expect("key")
            ),
            forced,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    let (_, agent) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(agent["version"], "0.2.0");
    assert_eq!(agent["update_status"], report, "no update was attempted");
    assert_eq!(sha256(&sup.bin), sha256(&b));

    // A file changed on the server after publishing: the hash does not match.
    let c = release.agent_variant("0.3.0");
    release.publish("0.3.0", &c, &release.key);
    let published = release.published_file("0.3.0");
    let mut bytes = std::fs::read(&published).expect("read");
    let last = bytes.len() - 2;
    bytes[last] ^= 0x55;
    std::fs::write(&published, bytes).expect("tamper");
    let agent = update(&api, &id, json!({"version": "0.3.0"}), &report["at"]).await;
    let report = agent["update_status"].clone();
    assert_eq!(report["status"], "failed", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .expect("reason")
            .contains("SHA-256 mismatch"),
        "{report}"
    );
    assert_eq!(agent["version"], "0.2.0");
    assert_eq!(sha256(&sup.bin), sha256(&b));

    // A file longer than its release states: refused before its body is read.
    let longer = release.agent_variant("0.3.1");
    release.publish("0.3.1", &longer, &release.key);
    let published = release.published_file("0.3.1");
    let mut bytes = std::fs::read(&published).expect("read");
    bytes.extend_from_slice(&vec![0u8; 1 << 20]);
    std::fs::write(&published, bytes).expect("extend");
    let agent = update(&api, &id, json!({"version": "0.3.1"}), &report["at"]).await;
    let report = agent["update_status"].clone();
    assert_eq!(report["status"], "failed", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .expect("reason")
            .contains("the release states"),
        "{report}"
    );
    assert_eq!(agent["version"], "0.2.0");
    assert_eq!(sha256(&sup.bin), sha256(&b));

    // A release signed with another key than the pinned one.
    let other_key = tmp.path().join("other.key");
    server_tool(&[
        "release",
        "keygen",
        "--out",
        other_key.to_str().expect("utf-8"),
    ]);
    let d = release.agent_variant("0.4.0");
    release.publish("0.4.0", &d, &other_key);
    let agent = update(&api, &id, json!({"version": "0.4.0"}), &report["at"]).await;
    let report = agent["update_status"].clone();
    assert_eq!(report["status"], "failed", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .expect("reason")
            .contains("signature"),
        "{report}"
    );
    assert_eq!(agent["version"], "0.2.0");
    assert_eq!(sha256(&sup.bin), sha256(&b));

    // A validly signed B that crashes at start: rolled back after three failed starts.
    let crashing = tmp.path().join("crashing");
    std::fs::write(
        &crashing,
        "#!/bin/sh\necho 'crashing on purpose' >&2\nexit 1\n",
    )
    .expect("write");
    release.publish("0.5.0", &crashing, &release.key);
    let agent = update(&api, &id, json!({"version": "0.5.0"}), &report["at"]).await;
    let report = agent["update_status"].clone();
    assert_eq!(report["status"], "rolled_back", "{report}");
    assert_eq!(report["from"], "0.2.0", "{report}");
    assert_eq!(report["to"], "0.5.0", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .expect("reason")
            .contains("3 times"),
        "{report}"
    );
    assert_eq!(agent["version"], "0.2.0", "{agent}");
    assert_eq!(sha256(&sup.bin), sha256(&b), "B is back");
    assert_eq!(
        sup.logs().matches("crashing on purpose").count(),
        3,
        "three failed starts"
    );

    // With force, a downgrade goes through.
    let agent = update(
        &api,
        &id,
        json!({"version": "0.1.0", "force": true}),
        &report["at"],
    )
    .await;
    assert_eq!(agent["update_status"]["status"], "updated", "{agent}");
    assert_eq!(agent["version"], "0.1.0");
    assert_eq!(sha256(&sup.bin), sha256(&a));

    // Redeploy: the running version downloaded afresh through the same checks.
    let before = agent["update_status"]["at"].clone();
    let (status, answer) = api.command(&id, json!({"command": "redeploy"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["exit_code"], 44, "{answer}");
    let path = format!("/api/agents/{id}");
    let agent = wait_for(
        "the agent back after redeploy",
        Duration::from_secs(90),
        || {
            let path = path.clone();
            let api = &api;
            let before = &before;
            async move {
                let (_, agent) = api.get(&path).await;
                (agent["status"] == "online" && agent["update_status"]["at"] != *before)
                    .then_some(agent)
            }
        },
    )
    .await;
    let report = &agent["update_status"];
    assert_eq!(report["status"], "updated", "{report}");
    assert_eq!(report["reason"], "redeploy", "{report}");
    assert_eq!(report["from"], "0.1.0", "{report}");
    assert_eq!(report["to"], "0.1.0", "{report}");
    assert_eq!(agent["version"], "0.1.0");
    assert_eq!(sha256(&sup.bin), sha256(&a));

    // CONTRACT.md §11: each report is one event, however many times the agent registered with it;
    // a refused update changed nothing and is none.
    let (_, events) = api.get("/api/events?type=agent").await;
    let events = events["events"].as_array().expect("events").clone();
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
    let rolled_back = of("agent.update_rolled_back");
    assert_eq!(rolled_back.len(), 1, "{events:?}");
    assert_eq!(rolled_back[0]["data"]["to"], "0.5.0");
    assert_eq!(rolled_back[0]["subject"]["id"], id.as_str());
    let updated = of("agent.updated");
    let mut times: Vec<&Value> = updated.iter().map(|e| &e["data"]["at"]).collect();
    times.dedup();
    assert_eq!(
        times.len(),
        updated.len(),
        "one event per report: {updated:?}"
    );
    assert_eq!(
        updated[0]["data"]["reason"], "redeploy",
        "newest first: {updated:?}"
    );
    assert!(
        events.iter().all(|e| !e["data"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("older than the running")),
        "a refused update is no event: {events:?}"
    );
}

/// Installs `agent` as the agent binary beside a fresh state directory, as deploy.sh lays it
/// out, and starts the real supervisor on it.
fn start_supervisor(
    server: &Server,
    release: &Release,
    agent: &Path,
    secret: &str,
    pubkey: &str,
) -> Supervisor {
    start_supervisor_in(server, &release.dir, agent, secret, pubkey)
}

/// [`start_supervisor`] with its binary, state and logs under `home` (several on one host).
pub(crate) fn start_supervisor_in(
    server: &Server,
    home: &Path,
    agent: &Path,
    secret: &str,
    pubkey: &str,
) -> Supervisor {
    start_supervisor_at(&server.url, home, agent, secret, pubkey, &[])
}

/// [`start_supervisor_in`] for the servers at `urls` (`http://…`, comma-separated: nodes),
/// with `extra` settings in the agent's env file (such as a script manifest).
pub(crate) fn start_supervisor_at(
    urls: &str,
    home: &Path,
    agent: &Path,
    secret: &str,
    pubkey: &str,
    extra: &[(String, String)],
) -> Supervisor {
    let bin_dir_installed = home.join("bin");
    std::fs::create_dir_all(&bin_dir_installed).expect("mkdir");
    let bin = bin_dir_installed.join("outpost-agent");
    std::fs::copy(agent, &bin).expect("install A");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let state = home.join("state");
    let env_file = home.join("agent.env");
    let mut settings = format!(
        "OUTPOST_SERVER_URL={}\nOUTPOST_API_KEY={secret}\nOUTPOST_STATE_DIR={}\nOUTPOST_RELEASE_PUBKEY={pubkey}\n",
        urls.replace("http://", "ws://"),
        state.display()
    );
    for (name, value) in extra {
        settings.push_str(&format!("{name}={value}\n"));
    }
    std::fs::write(&env_file, settings).expect("env file");
    let log = home.join("supervisor.out");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(bin_dir().join("outpost-supervisor"))
        .arg("--env-file")
        .arg(&env_file)
        .arg("--agent-bin")
        .arg(&bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("OUTPOST_SUPERVISOR_BACKOFF_BASE_MS", "100")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn supervisor");
    Supervisor {
        child,
        bin,
        state,
        log,
    }
}
