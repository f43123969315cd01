//! The first run, as the README tells a new user: a server started as `./quickstart.sh` starts
//! it (`--listen`, `--data-dir`, stdout to a file, no key given, nothing published), then the
//! install line on a "second machine" (a throwaway HOME, run as `nobody` under root, as in
//! `deploy.rs`, but without a boot entry: `deploy.rs` checks that one, and nobody's crontab is
//! shared by the tests running at once) with `--manifest`, a script run on the new agent, its
//! self-update path, its removal and the server forgetting it.
//!
//! What each test guards (issue #27): the install line works with no release published (the
//! server serves the builds it ships with, signed with its own key, and the supervisor accepts
//! them); the agent has the scripts given with `--manifest` and says where they are; a server
//! without builds says what to do and the failed install leaves nothing behind; a published
//! release takes precedence over the built-in builds whatever its version.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use outpost_e2e::{Server, ServerOptions, wait_for};
use reqwest::StatusCode;
use serde_json::json;

use crate::deploy::{Machine, NOBODY, publish, sha256_hex, target, text, tree};

/// The served installer, kept where `Machine`'s clean-up finds it.
async fn served_script(server: &Server, machine: &Machine) -> String {
    let script = reqwest::get(format!("{}/deploy.sh", server.url))
        .await
        .expect("GET /deploy.sh")
        .text()
        .await
        .expect("script");
    std::fs::write(machine.tmp.path().join("deploy.sh"), &script).expect("keep script");
    script
}

/// The value deploy.sh carries in `served_pubkey='…'`.
fn served_pubkey(script: &str) -> String {
    script
        .lines()
        .find_map(|l| l.strip_prefix("served_pubkey='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("a served_pubkey line")
        .to_owned()
}

/// A folder of scripts with its manifest, as a fleet keeps it, owned by the machine's user.
fn fleet_scripts(machine: &Machine) -> std::path::PathBuf {
    let dir = machine.tmp.path().join("fleet-scripts");
    std::fs::create_dir(&dir).expect("scripts dir");
    // A helper the manifest does not name: a folder is installed whole.
    std::fs::write(dir.join("lib.sh"), "greeting() { echo \"hello $1\"; }\n").expect("lib");
    std::fs::write(
        dir.join("greet.sh"),
        "#!/bin/sh\n. \"$(dirname \"$0\")/lib.sh\"\ngreeting \"$OUTPOST_PARAM_NAME from the fleet manifest\"\n",
    )
    .expect("script");
    std::fs::set_permissions(dir.join("greet.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::write(
        dir.join("script_manifest.json"),
        json!({"scripts": [{"name": "greet", "path": "greet.sh", "params": ["NAME"]}]}).to_string(),
    )
    .expect("manifest");
    if machine.root {
        let ok = std::process::Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(ok.success());
    }
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_nothing_to_a_script_on_a_second_machine_and_back() {
    // Started as quickstart.sh starts it; nothing published.
    let server = Server::start().await;
    let api = server.api();
    assert!(!server.data_dir.join("releases").exists());
    assert_eq!(mode(&server.data_dir), 0o700);
    if server.database_url.is_none() {
        assert_eq!(mode(&server.data_dir.join("outpost.db")), 0o600);
    }
    assert_eq!(mode(&server.data_dir.join("release.key")), 0o600);

    let (_, secret) = api
        .create_key(json!({
            "name": "second-machine",
            "tags": ["fleet"],
            "permissions": ["ping", "info", "echo", "run", "redeploy"],
        }))
        .await;
    let machine = Machine::new(&server.url).without_boot_entry();
    let scripts = fleet_scripts(&machine);
    let script = served_script(&server, &machine).await;
    let pinned = served_pubkey(&script);
    assert_eq!(
        pinned.len(),
        44,
        "the server's own release key is offered: {pinned:?}"
    );
    let before = tree(&machine.home);

    // The install line, with the scripts (and no --native: --manifest implies it).
    let out = machine
        .deploy(&format!("--key {secret} --manifest {}", scripts.display()))
        .await;
    assert!(out.status.success(), "install failed:\n{}", text(&out));
    let dir = machine.install_dir();
    let manifest = dir.join("scripts").join("script_manifest.json");
    assert!(
        text(&out).contains(&format!("script manifest: {}", manifest.display())),
        "deploy.sh does not say where the manifest is:\n{}",
        text(&out)
    );
    for name in ["outpost-agent", "outpost-supervisor"] {
        assert_eq!(
            sha256_hex(&dir.join("bin").join(name)),
            sha256_hex(&outpost_e2e::bin_dir().join(name)),
            "{name} installed is not the build the server ships with"
        );
    }
    assert!(
        dir.join("scripts").join("lib.sh").is_file(),
        "the folder was not copied whole"
    );
    let env = std::fs::read_to_string(dir.join("agent.env")).expect("agent.env");
    assert!(
        env.contains(&format!("OUTPOST_RELEASE_PUBKEY={pinned}\n")),
        "{env}"
    );
    assert!(
        env.contains(&format!("OUTPOST_MANIFEST={}\n", manifest.display())),
        "{env}"
    );

    // Online, with the manifest's scripts.
    let agent_id = wait_for("agent_id", outpost_e2e::READY_TIMEOUT, || {
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
    assert_eq!(agent["scripts"][0]["name"], "greet", "{agent}");

    // A script on it, by tag, as the tour runs one.
    let (status, job) = api
        .job(
            json!({"command": "run", "data": {"script": "greet", "params": {"NAME": "newcomer"}},
                   "target": {"tags": ["fleet"]}}),
            Some(30),
        )
        .await;
    assert!(status.is_success(), "{job}");
    let (job_id, run_id, run) = outpost_e2e::only_run(&job);
    assert_eq!(run["status"], "succeeded", "{job}");
    let (_, output) = api.output(&job_id, &run_id, "").await;
    assert_eq!(
        String::from_utf8_lossy(&output),
        "hello newcomer from the fleet manifest\n"
    );

    // The server's key really signs what it serves: a redeploy makes the supervisor fetch the
    // running version again and install it only after checking its size, hash and signature
    // against the key deploy.sh pinned.
    let (status, answer) = api.command(&agent_id, json!({"command": "redeploy"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let path = format!("/api/agents/{agent_id}");
    let agent = wait_for(
        "the agent back after its redeploy",
        Duration::from_secs(90),
        || {
            let path = path.clone();
            let api = api.clone();
            async move {
                let (_, agent) = api.get(&path).await;
                (agent["status"] == "online" && agent["update_status"].is_object()).then_some(agent)
            }
        },
    )
    .await;
    let report = &agent["update_status"];
    assert_eq!(report["status"], "updated", "{report}");
    assert_eq!(report["to"], env!("CARGO_PKG_VERSION"), "{report}");

    // Uninstall: offline, nothing left in HOME.
    let out = machine.deploy("--uninstall").await;
    assert!(out.status.success(), "{}", text(&out));
    api.wait_status(&agent_id, "offline").await;
    assert!(machine.processes().is_empty(), "{:?}", machine.processes());
    assert_eq!(tree(&machine.home), before, "files left behind");

    // Forget it on the server, as the README does.
    let forget = std::process::Command::new(outpost_e2e::bin_dir().join("outpost"))
        .args(["agents", "rm", &agent_id])
        .env("OUTPOST_URL", &server.url)
        .env("OUTPOST_TOKEN", &server.admin_key)
        .output()
        .expect("outpost agents rm");
    assert!(forget.status.success(), "{}", text(&forget));
    let (status, _) = api.get(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_builds_the_install_line_says_what_to_do_and_leaves_nothing() {
    let empty = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(ServerOptions {
        args: vec!["--builds-dir".into(), empty.path().display().to_string()],
        ..ServerOptions::default()
    })
    .await;
    let (_, secret) = server.api().agent_key().await;
    let machine = Machine::new(&server.url).without_boot_entry();
    let script = served_script(&server, &machine).await;
    assert_eq!(
        served_pubkey(&script),
        "",
        "a key is offered for builds the server does not have"
    );
    let before = tree(&machine.home);

    let out = machine.deploy(&format!("--native --key {secret}")).await;
    assert!(
        !out.status.success(),
        "installed without builds:\n{}",
        text(&out)
    );
    let said = text(&out);
    for needed in [
        "HTTP 404",
        "outpost-agent",
        "--builds-dir",
        "outpost-server release publish",
    ] {
        assert!(said.contains(needed), "no {needed:?} in:\n{said}");
    }
    assert_eq!(
        tree(&machine.home),
        before,
        "a failed first install left files behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_release_takes_precedence_over_the_built_in_builds() {
    let server = Server::start().await;
    let api = server.api();
    let target = target();
    let (status, builtin) = api
        .get(&format!("/api/releases/latest?target={target}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{builtin}");
    assert_eq!(builtin["version"], env!("CARGO_PKG_VERSION"));
    assert!(builtin["agent"]["signature_v2"].is_string(), "{builtin}");
    let builtin_key = builtin["public_key"].as_str().expect("key").to_owned();
    let checksum = reqwest::get(format!(
        "{}/downloads/latest/{target}/outpost-supervisor.sha256",
        server.url
    ))
    .await
    .expect("checksum")
    .text()
    .await
    .expect("text");
    assert_eq!(
        checksum,
        format!(
            "{}  outpost-supervisor\n",
            sha256_hex(&outpost_e2e::bin_dir().join("outpost-supervisor"))
        )
    );
    let (status, other) = api
        .get("/api/releases/latest?target=aarch64-unknown-linux-musl")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{other}");
    assert!(
        other["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("release publish")),
        "{other}"
    );

    // An operator's release with an offline key, older than the built-in version: still it.
    let keys = tempfile::tempdir().expect("tempdir");
    let signing_key = keys.path().join("offline.key");
    let keygen = std::process::Command::new(outpost_e2e::bin_dir().join("outpost-server"))
        .args(["release", "keygen", "--out"])
        .arg(&signing_key)
        .output()
        .expect("keygen");
    assert!(keygen.status.success(), "{keygen:?}");
    let offline_key = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
    assert_ne!(offline_key, builtin_key);
    publish(&server, &signing_key, "0.0.1");

    let (_, latest) = api
        .get(&format!("/api/releases/latest?target={target}"))
        .await;
    assert_eq!(latest["version"], "0.0.1", "{latest}");
    assert_eq!(latest["public_key"], offline_key.as_str());
    let script = reqwest::get(format!("{}/deploy.sh", server.url))
        .await
        .expect("deploy.sh")
        .text()
        .await
        .expect("text");
    assert_eq!(served_pubkey(&script), offline_key);
    // The built-in version is not served any more, under any route.
    let version = env!("CARGO_PKG_VERSION");
    let (status, _) = api
        .get(&format!("/api/releases/{version}?target={target}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let download = reqwest::get(format!(
        "{}/downloads/{version}/{target}/outpost-agent",
        server.url
    ))
    .await
    .expect("download");
    assert_eq!(download.status(), StatusCode::NOT_FOUND);
}

/// `GET /downloads/packages/{file}` (OPERATIONS.md, "Installing from packages"): the Debian
/// packages in `<builds-dir>/packages`, their checksums, 404s that name what there is, a file
/// replaced by an upgrade served with its new hash, and the agent's package hidden once a
/// release is published (the CLI's stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_packages_are_served_until_a_release_is_published() {
    let builds = tempfile::tempdir().expect("tempdir");
    let packages = builds.path().join("packages");
    std::fs::create_dir(&packages).expect("packages dir");
    std::fs::write(packages.join("outpost-agent_amd64.deb"), b"agent package").expect("write");
    std::fs::write(packages.join("outpost_amd64.deb"), b"cli package").expect("write");
    let server = Server::start_with(ServerOptions {
        args: vec!["--builds-dir".into(), builds.path().display().to_string()],
        ..ServerOptions::default()
    })
    .await;
    let client = reqwest::Client::new();
    let get = |file: &str| {
        let url = format!("{}/downloads/packages/{file}", server.url);
        let client = client.clone();
        async move { client.get(url).send().await.expect("request") }
    };

    let deb = get("outpost-agent_amd64.deb").await;
    assert_eq!(deb.status(), StatusCode::OK);
    assert_eq!(
        deb.headers()["content-type"],
        "application/vnd.debian.binary-package"
    );
    assert!(
        deb.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("outpost-agent_amd64.deb")
    );
    assert_eq!(deb.bytes().await.expect("body").as_ref(), b"agent package");
    let sum = get("outpost-agent_amd64.deb.sha256").await;
    assert_eq!(sum.status(), StatusCode::OK);
    assert_eq!(
        sum.text().await.expect("text"),
        format!(
            "{}  outpost-agent_amd64.deb\n",
            sha256_hex(&packages.join("outpost-agent_amd64.deb"))
        )
    );

    // A package the server does not have, and names that are no package at all.
    let missing = get("outpost-server_amd64.deb").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let said = missing.text().await.expect("text");
    assert!(said.contains("no outpost-server_amd64.deb"), "{said}");
    for bad in [
        "outpost-agent_i386.deb",
        "outpost-agent_0.1.0_amd64.deb",
        "outpost-agent_amd64.deb.sha256.sha256",
        "..%2Foutpost-agent_amd64.deb",
        "script_manifest.json",
    ] {
        let answer = get(bad).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{bad}");
        let said = answer.text().await.expect("text");
        assert!(
            said.contains("package outpost-agent, outpost, outpost-server"),
            "{bad}: {said}"
        );
    }

    // An upgrade of the server package replaces the file: the new bytes, the new hash.
    let new = packages.join(".new");
    std::fs::write(&new, b"agent package, newer").expect("write");
    std::fs::rename(&new, packages.join("outpost-agent_amd64.deb")).expect("rename");
    let sum = get("outpost-agent_amd64.deb.sha256").await;
    assert!(
        sum.text()
            .await
            .expect("text")
            .starts_with(&sha256_hex(&packages.join("outpost-agent_amd64.deb")))
    );
    assert_eq!(
        get("outpost-agent_amd64.deb")
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        b"agent package, newer"
    );

    // A published release: agents take the signed builds from now on, not the package.
    let keys = tempfile::tempdir().expect("tempdir");
    let signing_key = keys.path().join("offline.key");
    let keygen = std::process::Command::new(outpost_e2e::bin_dir().join("outpost-server"))
        .args(["release", "keygen", "--out"])
        .arg(&signing_key)
        .output()
        .expect("keygen");
    assert!(keygen.status.success(), "{keygen:?}");
    publish(&server, &signing_key, "0.0.1");
    for file in ["outpost-agent_amd64.deb", "outpost-agent_amd64.deb.sha256"] {
        let hidden = get(file).await;
        assert_eq!(hidden.status(), StatusCode::NOT_FOUND, "{file}");
        let said = hidden.text().await.expect("text");
        assert!(said.contains("releases are published"), "{said}");
    }
    assert_eq!(get("outpost_amd64.deb").await.status(), StatusCode::OK);
}
