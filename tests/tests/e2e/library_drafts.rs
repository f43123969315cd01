//! Scripts in the dashboard over the API and the CLI (CONTRACT.md §20, issue 50): a script name
//! switched off and on; drafts refused for bad input (a path out of the bundle, a link, a
//! bomb, more than 10 MiB, a member, the reserved name); a draft that never runs and never
//! reaches an agent; and a draft changed on the server after `outpost scripts sign --draft`
//! downloaded it, whose signature is then refused (`draft_changed`) and nothing is stored.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use outpost_e2e::{Api, CliHome, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub(crate) const NAME: &str = "greet";

pub(crate) fn cli(home: &CliHome, args: &[&str]) -> String {
    let (code, out, err) = home.run_with_key(args);
    assert_eq!(code, 0, "outpost {args:?}: {out}{err}");
    out
}

/// An operator's key (`outpost scripts keygen`): its path and the public key.
pub(crate) fn operator_key(home: &CliHome, dir: &Path) -> (PathBuf, String) {
    let key = dir.join("operator.key");
    cli(
        home,
        &["scripts", "keygen", "--out", key.to_str().expect("utf-8")],
    );
    let public = std::fs::read_to_string(dir.join("operator.key.pub")).expect("FILE.pub");
    (key, public.trim().to_owned())
}

/// Packs `files` as bundle `NAME@version` with `outpost scripts pack`, signs it with `key` and
/// returns the bundle's path (its `.sig` beside it).
pub(crate) fn signed_bundle(
    home: &CliHome,
    dir: &Path,
    key: &Path,
    version: &str,
    files: &[(&str, &str, bool)],
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.join(format!("src-{version}"));
    std::fs::create_dir_all(&src).expect("mkdir");
    let manifest = json!({"name": NAME, "version": version, "entrypoint": files[0].0,
                          "description": "Say hello", "params": ["WHO"]});
    std::fs::write(
        src.join("outpost-bundle.json"),
        serde_json::to_string_pretty(&manifest).expect("json"),
    )
    .expect("manifest");
    for (path, content, executable) in files {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, content).expect("write");
        let mode = if *executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let out = dir.join(format!("{NAME}-{version}.tar.gz"));
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    cli(home, &["scripts", "pack", &s(&src), "--out", &s(&out)]);
    cli(home, &["scripts", "sign", &s(&out), "--key", &s(key)]);
    out
}

pub(crate) const RUN_SH: &str = "#!/bin/sh\necho \"hello, $OUTPOST_PARAM_WHO\"\n";

/// A library holding `greet@1.0.0`, signed by a fresh operator key: the key's path and public
/// key, and the folder they are in.
async fn library(server: &Server) -> (CliHome, tempfile::TempDir, PathBuf, String) {
    let home = CliHome::new(server);
    let work = tempfile::tempdir().expect("tempdir");
    let (key, public) = operator_key(&home, work.path());
    let bundle = signed_bundle(
        &home,
        work.path(),
        &key,
        "1.0.0",
        &[
            ("run.sh", RUN_SH, true),
            ("lib/notes.txt", "notes\n", false),
        ],
    );
    cli(
        &home,
        &["scripts", "upload", bundle.to_str().expect("utf-8")],
    );
    (home, work, key, public)
}

fn drafts_path(name: &str) -> String {
    format!("/api/scripts/{name}/drafts")
}

async fn refused(api: &Api, body: Value, status: StatusCode, says: &str) -> Value {
    let (got, answer) = api.post(&drafts_path(NAME), body.clone()).await;
    assert_eq!(got, status, "{body:.200}: {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(says),
        "the refusal says {says:?}: {answer}"
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_refuse_bad_input_carry_files_over_and_never_run() {
    let server = Server::start().await;
    let api = server.api();
    let (_home, _work, _key, _public) = library(&server).await;

    // A path out of the bundle, absolute, or a folder.
    for (path, says) in [
        ("../evil.sh", "\"..\" component"),
        ("lib/../../evil.sh", "\"..\" component"),
        ("/etc/cron.d/evil", "is absolute"),
        ("lib/", "names a folder"),
        ("a\\b", "backslash"),
    ] {
        refused(
            &api,
            json!({"version": "1.1.0", "files": {path: {"text": "x"}}}),
            StatusCode::BAD_REQUEST,
            says,
        )
        .await;
    }
    // A link cannot be said: a file is text and a mode, nothing else.
    refused(
        &api,
        json!({"version": "1.1.0", "files": {"link": {"text": "", "symlink": "/etc/passwd"}}}),
        StatusCode::BAD_REQUEST,
        "unknown field",
    )
    .await;
    // A bomb of entries: more files than a bundle may hold.
    let many: serde_json::Map<String, Value> = (0..=4096)
        .map(|i| (format!("f/{i}"), json!({"text": ""})))
        .collect();
    refused(
        &api,
        json!({"version": "1.1.0", "files": many}),
        StatusCode::BAD_REQUEST,
        "4096",
    )
    .await;
    // 10 MiB of files: one byte more is refused, naming the limit; a little less is saved.
    let limit = 10 * 1024 * 1024;
    refused(
        &api,
        json!({"version": "1.1.0", "files": {"big.txt": {"text": "a".repeat(limit + 1)}}}),
        StatusCode::PAYLOAD_TOO_LARGE,
        "10485760",
    )
    .await;
    // With what carries over (run.sh, notes, the manifest) past the limit too.
    refused(
        &api,
        json!({"version": "1.1.0", "files": {"big.txt": {"text": "a".repeat(limit - 10)}}}),
        StatusCode::PAYLOAD_TOO_LARGE,
        "at most 10485760",
    )
    .await;
    let (status, big) = api
        .post(
            &drafts_path(NAME),
            json!({"version": "1.9.0", "files": {"big.txt": {"text": "a".repeat(limit - 64 * 1024)}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{big:.300}");
    let (status, _) = api.delete(&format!("{}/1.9.0", drafts_path(NAME))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A draft never renames a script, nor takes a signed version's number.
    refused(
        &api,
        json!({"version": "1.1.0", "files": {"outpost-bundle.json":
            {"text": "{\"name\": \"other\", \"version\": \"1.1.0\", \"entrypoint\": \"run.sh\"}"}}}),
        StatusCode::BAD_REQUEST,
        "its name must be \"greet\"",
    )
    .await;
    let answer = refused(
        &api,
        json!({"version": "1.0.0", "files": {}}),
        StatusCode::CONFLICT,
        "already a signed version",
    )
    .await;
    assert_eq!(answer["error"]["code"], "version_exists");
    // The reserved name, and a script the library does not hold (its first version is
    // uploaded signed).
    let (status, answer) = api
        .post(
            &drafts_path("drafts"),
            json!({"version": "1.0.0", "files": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.to_string().contains("reserved"), "{answer}");
    let (status, answer) = api
        .post(
            &drafts_path("nothing-here"),
            json!({"version": "1.0.0", "files": {"run.sh": {"text": "x"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(answer.to_string().contains("no script"), "{answer}");

    // A member may read but not save, sign or switch.
    let (member, _) = server
        .user("mia@example.com", "member", "a long enough password")
        .await;
    let (status, answer) = member
        .post(&drafts_path(NAME), json!({"version": "1.1.0", "files": {}}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let (status, _) = member
        .patch(&format!("/api/scripts/{NAME}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A good draft: run.sh changed, a file added, the notes carried over with their mode.
    let (status, draft) = api
        .post(
            &drafts_path(NAME),
            json!({"version": "1.1.0", "files": {
                "run.sh": {"text": "#!/bin/sh\necho \"hi, $OUTPOST_PARAM_WHO\"\n", "executable": false},
                "lib/added.py": {"text": "print('added')\n"},
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");
    let files: Vec<(String, bool)> = draft["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_owned(),
                f["executable"].as_bool().expect("mode"),
            )
        })
        .collect();
    assert!(
        files.contains(&("run.sh".into(), true)),
        "the entrypoint stays executable: {files:?}"
    );
    assert!(
        files.contains(&("lib/notes.txt".into(), false)),
        "{files:?}"
    );
    assert!(files.contains(&("lib/added.py".into(), false)), "{files:?}");
    assert_eq!(draft["base_version"], "1.0.0");
    let sha256 = draft["sha256"].as_str().expect("sha256").to_owned();
    // Members read drafts; the list of all drafts has it too.
    let (status, listed) = member.get("/api/script-drafts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["drafts"][0]["sha256"], sha256.as_str(), "{listed}");

    // It never runs: a job naming it finds no such version, and no agent can download it.
    let (status, job) = api
        .post(
            "/api/jobs",
            json!({"command": "run", "data": {"script": format!("{NAME}@1.1.0")}, "target": {"all": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{job}");
    let (_, agent_key) = api.agent_key().await;
    let download = reqwest::Client::new()
        .get(format!("{}/agent/v1/scripts/{sha256}", server.url))
        .bearer_auth(&agent_key)
        .send()
        .await
        .expect("download");
    assert_eq!(download.status(), StatusCode::NOT_FOUND);

    // The audit log names the author of each save.
    let (_, audit) = api.get("/api/audit?action=script.draft_save").await;
    let rows = audit["entries"].as_array().expect("entries");
    assert!(rows.len() >= 2, "{audit}");
    assert_eq!(rows[0]["target"]["id"], format!("{NAME}@1.1.0"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_script_is_refused_its_versions_kept_and_enabled_again() {
    let server = Server::start().await;
    let api = server.api();
    let (_home, _work, _key, _public) = library(&server).await;
    let run = json!({"command": "run", "data": {"script": NAME}, "target": {"tags": ["nowhere"]}});

    let (status, answer) = api
        .patch(&format!("/api/scripts/{NAME}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"name": NAME, "enabled": false}));
    for script in [NAME.to_owned(), format!("{NAME}@1.0.0")] {
        let mut body = run.clone();
        body["data"]["script"] = json!(script);
        let (status, job) = api.post("/api/jobs", body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{job}");
        assert_eq!(job["error"]["code"], "script_disabled", "{job}");
    }
    let (_, listed) = api.get("/api/scripts").await;
    assert_eq!(listed["scripts"][0]["enabled"], false, "{listed}");
    let (status, shown) = api.get(&format!("/api/scripts/{NAME}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["enabled"], false);
    assert_eq!(
        shown["versions"].as_array().map(Vec::len),
        Some(1),
        "versions are kept"
    );
    // Unknown names and bad bodies.
    let (status, _) = api
        .patch("/api/scripts/nothing-here", json!({"enabled": false}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = api
        .patch(&format!("/api/scripts/{NAME}"), json!({"enabled": "no"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    let (status, _) = api
        .patch(&format!("/api/scripts/{NAME}"), json!({"enabled": true}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, job) = api.post("/api/jobs", run).await;
    assert_ne!(job["error"]["code"], "script_disabled", "{status} {job}");
    let (_, audit) = api.get("/api/audit?action=script").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.starts_with(&["script.enable", "script.disable"]),
        "{actions:?}"
    );
}

/// Reads `outpost`'s stderr until it asks its question.
fn until_asked(stderr: &mut impl std::io::Read) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"[y/N] ") {
        match stderr.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!(
                "outpost ended before asking: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_changed_after_the_cli_fetched_it_is_refused() {
    let server = Server::start().await;
    let api = server.api();
    let (home, _work, key, public) = library(&server).await;
    let key_s = key.to_str().expect("utf-8").to_owned();
    let reference = format!("{NAME}@1.1.0");
    let (status, draft) = api
        .post(
            &drafts_path(NAME),
            json!({"version": "1.1.0", "files": {"run.sh": {"text": "#!/bin/sh\necho shown\n"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");

    let mut child = home
        .command()
        .env("OUTPOST_TOKEN", server.admin_key.as_str())
        .args(["scripts", "sign", "--draft", &reference, "--key", &key_s])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("outpost");
    let mut stderr = child.stderr.take().expect("stderr");
    let asked = tokio::task::spawn_blocking(move || (until_asked(&mut stderr), stderr))
        .await
        .expect("read");
    let (question, mut stderr) = asked;
    assert!(question.contains(&public), "it names the key: {question}");
    assert!(
        question.contains("its signature verifies with your key"),
        "the base was checked: {question}"
    );
    // The server's copy changes while the operator reads the diff.
    let (status, swapped) = api
        .post(
            &drafts_path(NAME),
            json!({"version": "1.1.0", "files": {"run.sh": {"text": "#!/bin/sh\necho swapped\n"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{swapped}");
    assert_ne!(swapped["sha256"], draft["sha256"]);
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"y\n")
        .expect("answer");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("stderr");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("stdout");
    let code = child.wait().expect("exit");
    assert!(!code.success(), "the signature is refused: {rest}");
    assert!(rest.contains("draft_changed"), "{rest}");
    assert!(
        stdout.contains("+echo shown"),
        "the diff it showed: {stdout}"
    );
    let (_, shown) = api.get(&format!("/api/scripts/{NAME}")).await;
    assert_eq!(
        shown["versions"].as_array().map(Vec::len),
        Some(1),
        "nothing was stored: {shown}"
    );
    // The draft is still there, with the swapped bytes; signing those (their diff shown even
    // with --yes) makes the version.
    let (_, listed) = api.get(&drafts_path(NAME)).await;
    assert_eq!(listed["drafts"][0]["sha256"], swapped["sha256"]);
    let (code, out, err) = home.run_with_key(&[
        "scripts", "sign", "--draft", &reference, "--key", &key_s, "--yes",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("-echo hello") || out.contains("+echo swapped"),
        "the diff is printed with --yes: {out}"
    );
    assert!(out.contains("+echo swapped"), "{out}");
    let (_, shown) = api.get(&format!("/api/scripts/{NAME}")).await;
    assert_eq!(shown["versions"][0]["version"], "1.1.0", "{shown}");
    assert_eq!(shown["versions"][0]["signer_key"], public.as_str());
    assert_eq!(shown["versions"][0]["sha256"], swapped["sha256"]);
    let (_, listed) = api.get("/api/script-drafts").await;
    assert_eq!(listed["drafts"], json!([]), "the draft became the version");
    // The signer is in the audit log, with the draft's author.
    let (_, audit) = api.get("/api/audit?action=script.draft_sign").await;
    let row = &audit["entries"][0];
    assert_eq!(row["target"]["id"], reference.as_str(), "{audit}");
    assert_eq!(row["detail"]["signer_key"], public.as_str(), "{audit}");

    // A signature file that does not verify, and one for bytes the draft never held.
    let (status, draft) = api
        .post(
            &drafts_path(NAME),
            json!({"version": "1.2.0", "files": {"run.sh": {"text": "#!/bin/sh\necho 3\n"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");
    let sign_path = format!("{}/1.2.0/signature", drafts_path(NAME));
    let (status, answer) = api
        .post(
            &sign_path,
            json!({"format": "outpost-bundle-signature-v1", "sha256": "ab".repeat(32),
                   "size": 10, "key": public, "signature": "A".repeat(86) + "=="}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "draft_changed");
    let (status, answer) = api
        .post(
            &sign_path,
            json!({"format": "outpost-bundle-signature-v1", "sha256": draft["sha256"],
                   "size": draft["size"], "key": public, "signature": "A".repeat(86) + "=="}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.to_string().contains("does not verify"), "{answer}");
}
