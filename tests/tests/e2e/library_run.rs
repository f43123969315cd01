//! The script library end to end (CONTRACT.md §15, issue 35): an operator signs a bundle with the CLI
//! on their own machine, uploads it, and runs it by tag; only agents whose manifest allows the
//! name and pins the signer's key run it, the others fail early with `script_not_allowed`.
//! Then: a second run uses the agent's cache, a Python bundle gets its own virtual environment
//! from PyPI, and a bundle tampered with in the server's database is refused by the agent.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use outpost_e2e::{Agent, Api, CliHome, Scripts, Server};
use serde_json::{Value, json};

/// Writes a bundle folder and packs it with the system's `tar`, as an operator would.
fn bundle(dir: &Path, name: &str, version: &str, files: &[(&str, &str, bool)], extra: Value) {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(&src).expect("mkdir");
    let mut manifest = json!({"name": name, "version": version, "entrypoint": files[0].0});
    if let (Some(m), Some(extra)) = (manifest.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    std::fs::write(src.join("outpost-bundle.json"), manifest.to_string()).expect("manifest");
    for (path, content, executable) in files {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
        let mode = if *executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let out = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-czf")
        .arg(dir.join(format!("{name}-{version}.tar.gz")))
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar: {out:?}");
}

fn cli(home: &CliHome, args: &[&str]) -> String {
    let (code, out, err) = home.run_with_key(args);
    assert_eq!(code, 0, "outpost {args:?}: {out}{err}");
    out
}

/// `outpost scripts keygen` in `dir`: the private key's path and the public key.
fn operator_key(home: &CliHome, dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("operator.key");
    cli(
        home,
        &["scripts", "keygen", "--out", key.to_str().expect("utf-8")],
    );
    let public = std::fs::read_to_string(dir.join("operator.key.pub")).expect("FILE.pub");
    (key, public.to_owned())
}

/// An agent tagged `tag` whose manifest holds `library` (and no script of its own).
async fn agent(
    server: &Server,
    api: &Api,
    tag: &str,
    library: Option<Value>,
) -> (Agent, Scripts, String) {
    let scripts = Scripts::new();
    let mut manifest = json!({"scripts": []});
    if let Some(library) = library {
        manifest["library"] = library;
    }
    scripts.write_raw(&manifest.to_string());
    let (_, secret) = api.agent_key().await;
    let mut env = scripts.env();
    env.push(("OUTPOST_TAGS".into(), tag.into()));
    let agent = Agent::start_with(&server.url, &secret, None, env);
    let id = agent.wait_online(api).await;
    (agent, scripts, id)
}

async fn run_by_tag(api: &Api, script: &str, tag: &str, params: Value) -> Value {
    let (status, job) = api
        .job(
            json!({"command": "run", "data": {"script": script, "params": params},
                   "target": {"tags": [tag]}, "timeout_s": 600}),
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {job}");
    api.wait_job(job["job_id"].as_str().expect("job_id")).await
}

fn run_of<'a>(job: &'a Value, agent_id: &str) -> &'a Value {
    job["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|run| run["agent_id"] == agent_id)
        .unwrap_or_else(|| panic!("no run on {agent_id}: {job}"))
}

async fn stdout(api: &Api, job: &Value, run: &Value) -> String {
    let (_, bytes) = api
        .output(
            job["job_id"].as_str().expect("job"),
            run["run_id"].as_str().expect("run"),
            "?stream=stdout",
        )
        .await;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_bundle_runs_where_agents_allow_it_and_is_refused_elsewhere() {
    let server = Server::start().await;
    let api = server.api();
    let home = CliHome::new(&server);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (key, public) = operator_key(&home, dir);
    let key_s = key.to_str().expect("utf-8");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the private key is the operator's alone"
        );
    }
    // The entrypoint leaves a marker beside the agent's state, so a refusal can prove that
    // nothing ran.
    bundle(
        dir,
        "hello-lib",
        "1.0.0",
        &[(
            "run.sh",
            "#!/bin/sh\necho \"hello from the library, $OUTPOST_PARAM_WHO\"\npwd\n",
            true,
        )],
        json!({"description": "Say hello from the library", "params": ["WHO"], "timeout_s": 60}),
    );
    let tarball = dir.join("hello-lib-1.0.0.tar.gz");
    let tarball_s = tarball.to_str().expect("utf-8");
    cli(&home, &["scripts", "sign", tarball_s, "--key", key_s]);
    assert!(
        dir.join("hello-lib-1.0.0.tar.gz.sig").exists(),
        "BUNDLE.sig"
    );
    cli(&home, &["scripts", "upload", tarball_s]);
    let listed = cli(&home, &["scripts", "ls"]);
    assert!(
        listed.contains("hello-lib") && listed.contains("1.0.0"),
        "{listed}"
    );
    let shown = cli(&home, &["scripts", "show", "hello-lib"]);
    assert!(shown.contains("run.sh"), "{shown}");

    let (willing, _s1, willing_id) = agent(
        &server,
        &api,
        "fleet",
        Some(json!({"allow": ["hello-*"], "keys": [public]})),
    )
    .await;
    let (_unwilling, _s2, unwilling_id) = agent(&server, &api, "fleet", None).await;

    let started = Instant::now();
    let job = run_by_tag(&api, "hello-lib", "fleet", json!({"WHO": "fleet"})).await;
    let first = started.elapsed();
    let ran = run_of(&job, &willing_id);
    assert_eq!(ran["status"], "succeeded", "{job}");
    let out = stdout(&api, &job, ran).await;
    assert!(out.contains("hello from the library, fleet"), "{out}");
    let refused = run_of(&job, &unwilling_id);
    assert_eq!(refused["status"], "failed", "{job}");
    assert_eq!(refused["error"]["code"], "script_not_allowed", "{refused}");
    // The job records the version it resolved.
    assert!(job.to_string().contains("1.0.0"), "{job}");

    // Again, pinned to the version: the agent's cache answers, no second download.
    assert_eq!(library_cache(&api, &willing_id).await["downloads"], 1);
    let started = Instant::now();
    let job = run_by_tag(&api, "hello-lib@1.0.0", "fleet", json!({"WHO": "again"})).await;
    let cached = started.elapsed();
    let ran = run_of(&job, &willing_id);
    assert_eq!(ran["status"], "succeeded", "{job}");
    assert!(
        stdout(&api, &job, ran)
            .await
            .contains("hello from the library, again")
    );
    assert_eq!(
        library_cache(&api, &willing_id).await["downloads"],
        1,
        "a cached bundle is not downloaded again"
    );
    // The run's folder is gone; only the cache stays.
    assert_eq!(
        unpacked_folders(&willing),
        0,
        "run folders are removed after the run"
    );
    eprintln!("library run by tag over the real binaries: first {first:?}, cached {cached:?}");
}

/// The agent's `info.library_cache`: downloads and venv builds since it started.
async fn library_cache(api: &Api, agent_id: &str) -> Value {
    let (status, info) = api.command(agent_id, json!({"command": "info"})).await;
    assert!(status.is_success(), "{status} {info}");
    info["data"]["library_cache"].clone()
}

/// Folders a library run unpacked into that are still there (the agent's `library/runs`).
fn unpacked_folders(agent: &Agent) -> usize {
    let runs = agent.state_dir.join("library").join("runs");
    std::fs::read_dir(runs).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_tampered_with_in_the_servers_database_is_refused_by_the_agent() {
    let server = Server::start().await;
    let api = server.api();
    let home = CliHome::new(&server);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (key, public) = operator_key(&home, dir);
    let key_s = key.to_str().expect("utf-8");
    bundle(
        dir,
        "nightly",
        "1.0.0",
        &[(
            "run.sh",
            "#!/bin/sh
echo fine
",
            true,
        )],
        json!({}),
    );
    let tarball = dir.join("nightly-1.0.0.tar.gz");
    let tarball_s = tarball.to_str().expect("utf-8");
    cli(&home, &["scripts", "sign", tarball_s, "--key", key_s]);
    cli(&home, &["scripts", "upload", tarball_s]);

    // Whoever holds the server's database swaps the bundle's bytes for their own: same name
    // and version, an entrypoint that leaves a mark.
    let marker = dir.join("pwned");
    let evil = dir.join("evil");
    std::fs::create_dir_all(&evil).expect("mkdir");
    bundle(
        &evil,
        "nightly",
        "1.0.0",
        &[(
            "run.sh",
            &format!(
                "#!/bin/sh
touch {}
",
                marker.display()
            ),
            true,
        )],
        json!({}),
    );
    let evil_bytes = std::fs::read(evil.join("nightly-1.0.0.tar.gz")).expect("evil");
    tamper(&server, &evil_bytes).await;

    let (_agent, _scripts, id) = agent(
        &server,
        &api,
        "nightly",
        Some(json!({"allow": ["nightly"], "keys": [public]})),
    )
    .await;
    let job = run_by_tag(&api, "nightly", "nightly", json!({})).await;
    let run = run_of(&job, &id);
    assert_eq!(run["status"], "failed", "{job}");
    assert_eq!(run["error"]["code"], "bundle_refused", "{run}");
    let message = run["error"]["message"].as_str().unwrap_or_default();
    // The stored bytes are not the signed ones (here their size already differs).
    assert!(
        message.contains("bundle") && message.contains("signature"),
        "the refusal says why: {message}"
    );
    assert!(!marker.exists(), "nothing of the tampered bundle ran");
}

/// Replaces every stored bundle's bytes, straight in the database.
async fn tamper(server: &Server, bytes: &[u8]) {
    use sea_orm::ConnectionTrait;
    let url = match server.database() {
        outpost_store::DatabaseLocation::Url(url) => url,
        outpost_store::DatabaseLocation::Sqlite(path) => {
            format!("sqlite://{}?mode=rw", path.display())
        }
    };
    let db = sea_orm::Database::connect(&url)
        .await
        .expect("the server's database");
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DatabaseBackend::Postgres => "UPDATE library_bundles SET data = $1",
        _ => "UPDATE library_bundles SET data = ?",
    };
    let done = db
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            sql,
            [bytes.to_vec().into()],
        ))
        .await
        .expect("tamper");
    assert_eq!(done.rows_affected(), 1);
}

/// A Python bundle whose requirement comes from PyPI gets a virtual environment of its own,
/// built once: the second run reuses it. Needs PyPI: set OUTPOST_TEST_PYPI=1 (CI does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_bundle_gets_its_requirements_from_pypi_in_its_own_venv() {
    if std::env::var_os("OUTPOST_TEST_PYPI").is_none() {
        eprintln!(
            "skipped: a_python_bundle_gets_its_requirements_from_pypi_in_its_own_venv needs              PyPI and python3 -m venv; set OUTPOST_TEST_PYPI=1 to run it"
        );
        return;
    }
    let server = Server::start().await;
    let api = server.api();
    let home = CliHome::new(&server);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (key, public) = operator_key(&home, dir);
    let key_s = key.to_str().expect("utf-8");
    // six: one pure-Python file, a wheel on PyPI for every Python 3.
    bundle(
        dir,
        "py-report",
        "1.0.0",
        &[
            (
                "main.py",
                "import sys, six
print('six', six.__version__, 'in', sys.prefix)
",
                false,
            ),
            (
                "requirements.txt",
                "six==1.17.0
",
                false,
            ),
        ],
        json!({"requirements": "requirements.txt"}),
    );
    let tarball = dir.join("py-report-1.0.0.tar.gz");
    let tarball_s = tarball.to_str().expect("utf-8");
    cli(&home, &["scripts", "sign", tarball_s, "--key", key_s]);
    cli(&home, &["scripts", "upload", tarball_s]);
    let (_agent, _scripts, id) = agent(
        &server,
        &api,
        "py",
        Some(json!({"allow": ["py-*"], "keys": [public]})),
    )
    .await;
    let started = Instant::now();
    let job = run_by_tag(&api, "py-report", "py", json!({})).await;
    let first = started.elapsed();
    let run = run_of(&job, &id);
    assert_eq!(run["status"], "succeeded", "{job}");
    let out = stdout(&api, &job, run).await;
    assert!(out.starts_with("six 1.17.0 in "), "{out}");
    assert!(
        !out.contains("/usr"),
        "the bundle's own environment, not the system's: {out}"
    );
    let started = Instant::now();
    let job = run_by_tag(&api, "py-report", "py", json!({})).await;
    let second = started.elapsed();
    assert_eq!(run_of(&job, &id)["status"], "succeeded", "{job}");
    let cache = library_cache(&api, &id).await;
    assert_eq!(cache["venv_builds"], 1, "{cache}");
    assert_eq!(cache["downloads"], 1, "{cache}");
    eprintln!("python bundle from PyPI: first run {first:?} (venv built), second {second:?}");
}
