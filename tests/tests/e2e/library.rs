//! The script library, server and CLI side (CONTRACT.md §15), over the real binaries: every bad
//! upload refused with a 400 (or 413, 403, 409) naming what was wrong and nothing stored; the
//! CLI's keygen, pack, sign, upload, ls, show and rm; jobs and schedules resolving a name to
//! its newest (or pinned) version; the early `script_not_allowed` per agent from the `library`
//! policy it registered (raw protocol peers play the agents); the agents' download route,
//! tenant-scoped and rate-bounded.

use std::time::Duration;

use base64::Engine as _;
use outpost_e2e::library::{Signer, bundle_of, manifest, raw, sig_bytes, signed_upload, upload};
use outpost_e2e::ws::{self, Seen};
use outpost_e2e::{CliHome, Server};
use outpost_protocol::ServerFrame;
use outpost_protocol::bundle::{self, MANIFEST_FILE, SignatureFile, archive};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn message(answer: &Value) -> String {
    answer["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_upload_is_refused_naming_what_was_wrong_and_nothing_is_stored() {
    let server = Server::start().await;
    let signer = Signer::new();
    let other = Signer::new();
    let good = bundle_of("backup-db", "1.0.0");

    // No signature part: an unsigned bundle.
    let (status, answer) = upload(&server, &server.admin_key, Some(good.clone()), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        message(&answer).starts_with("signature: missing part"),
        "{answer}"
    );
    // No bundle part.
    let (status, answer) = upload(
        &server,
        &server.admin_key,
        None,
        Some(sig_bytes(&signer.sign(&good))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        message(&answer).starts_with("bundle: missing part"),
        "{answer}"
    );

    let refusals: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "not JSON",
            good.clone(),
            b"not a signature".to_vec(),
            "signature: not a signature file",
        ),
        (
            "another format",
            good.clone(),
            sig_bytes(&SignatureFile {
                format: "outpost-release-v1".into(),
                ..signer.sign(&good)
            }),
            "signature: format:",
        ),
        (
            "signed by one key, claiming another",
            good.clone(),
            sig_bytes(&SignatureFile {
                key: other.public(),
                ..signer.sign(&good)
            }),
            "does not verify with key",
        ),
        (
            "the signature of another bundle",
            good.clone(),
            sig_bytes(&signer.sign(&bundle_of("backup-db", "1.0.1"))),
            "it is for a bundle with sha256",
        ),
        (
            "the right hash with another size",
            good.clone(),
            sig_bytes(&SignatureFile {
                size: good.len() as u64 + 1,
                ..signer.sign(&good)
            }),
            "bytes, but this one has",
        ),
        (
            "a tampered signature",
            good.clone(),
            sig_bytes(&SignatureFile {
                signature: base64::engine::general_purpose::STANDARD.encode([7u8; 64]),
                ..signer.sign(&good)
            }),
            "does not verify",
        ),
    ];
    for (case, bytes, sig, needle) in refusals {
        let (status, answer) = upload(&server, &server.admin_key, Some(bytes), Some(sig)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {answer}");
        assert!(message(&answer).contains(needle), "{case}: {answer}");
    }

    // Archives the walker refuses, each signed properly so that the archive is what fails.
    let m = manifest("backup-db", "1.0.0");
    let m = m.as_bytes();
    let reg = tar::EntryType::Regular;
    let mut many: Vec<(String, Vec<u8>)> =
        (0..4100).map(|i| (format!("f{i}"), Vec::new())).collect();
    many.push((MANIFEST_FILE.into(), m.to_vec()));
    many.push(("run.sh".into(), b"x".to_vec()));
    let many: Vec<(&str, &[u8], bool)> = many
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice(), false))
        .collect();
    let archives: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "../",
            raw(&[
                (MANIFEST_FILE, reg, m, None, None),
                ("run.sh", reg, b"x", None, None),
                ("../escape", reg, b"x", None, None),
            ]),
            "\"..\"",
        ),
        (
            "an absolute path",
            raw(&[
                (MANIFEST_FILE, reg, m, None, None),
                ("run.sh", reg, b"x", None, None),
                ("/etc/cron.d/x", reg, b"x", None, None),
            ]),
            "absolute",
        ),
        (
            "a symlink",
            raw(&[
                (MANIFEST_FILE, reg, m, None, None),
                (
                    "run.sh",
                    tar::EntryType::Symlink,
                    b"",
                    Some("/etc/passwd"),
                    None,
                ),
            ]),
            "symbolic link",
        ),
        (
            "a hard link",
            raw(&[
                (MANIFEST_FILE, reg, m, None, None),
                (
                    "run.sh",
                    tar::EntryType::Link,
                    b"",
                    Some("../../etc/passwd"),
                    None,
                ),
            ]),
            "hard link",
        ),
        (
            "a device",
            raw(&[
                (MANIFEST_FILE, reg, m, None, None),
                ("run.sh", reg, b"x", None, None),
                ("dev", tar::EntryType::Char, b"", None, None),
            ]),
            "device",
        ),
        (
            "a bomb by size (a header claiming 300 MiB)",
            raw(&[
                (MANIFEST_FILE, reg, m, None, None),
                ("run.sh", reg, b"x", None, None),
                ("big", reg, b"", None, Some(300 << 20)),
            ]),
            "unpacked",
        ),
        (
            "a bomb by count",
            archive::pack(&many).expect("pack"),
            "4096",
        ),
        (
            "a missing entrypoint",
            raw(&[
                (MANIFEST_FILE, reg, m, None, None),
                ("other.sh", reg, b"x", None, None),
            ]),
            "run.sh",
        ),
        (
            "no manifest",
            raw(&[("run.sh", reg, b"x", None, None)]),
            MANIFEST_FILE,
        ),
        ("not a tar.gz", b"plain text".to_vec(), "bundle: "),
    ];
    for (case, bytes, needle) in archives {
        let (status, answer) = signed_upload(&server, &signer, bytes).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {answer}");
        let text = message(&answer);
        assert!(
            text.starts_with("bundle: ") && text.contains(needle),
            "{case}: {answer}"
        );
    }

    // Past 16 MiB: 413 before the body is read.
    let huge = vec![0u8; (bundle::limits::MAX_BUNDLE_BYTES + 1) as usize];
    let (status, answer) = signed_upload(&server, &signer, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(message(&answer).contains("16 MiB"), "{answer}");

    // A member may not upload.
    let (member, _) = server
        .user("m@example.com", "member", "a long password 1")
        .await;
    let sig = sig_bytes(&signer.sign(&good));
    let (status, answer) = upload(&server, member.token(), Some(good.clone()), Some(sig)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");

    // Nothing of the above was stored.
    let (_, listed) = server.api().get("/api/scripts").await;
    assert_eq!(listed["scripts"], json!([]), "{listed}");

    // The good one: 201 with its description; the same again 200; other bytes under the
    // same version 409.
    let (status, stored) = signed_upload(&server, &signer, good.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    assert_eq!(stored["name"], "backup-db");
    assert_eq!(stored["version"], "1.0.0");
    assert_eq!(stored["signer_key"], signer.public());
    assert_eq!(
        stored["files"].as_array().map(Vec::len),
        Some(2),
        "{stored}"
    );
    assert_eq!(
        stored["params"][1],
        json!({"name": "PASSWORD", "secret": true})
    );
    let (status, again) = signed_upload(&server, &signer, good.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["sha256"], stored["sha256"]);
    let changed = archive::pack(&[
        (
            MANIFEST_FILE,
            manifest("backup-db", "1.0.0").as_bytes(),
            false,
        ),
        ("run.sh", b"#!/bin/sh\necho changed\n", true),
    ])
    .expect("pack");
    let (status, answer) = signed_upload(&server, &signer, changed).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "version_exists");

    // Members read the library; uploads and deletes are audited.
    let (status, listed) = member.get("/api/scripts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["scripts"][0]["latest_version"], "1.0.0", "{listed}");
    let (status, _) = member.delete("/api/scripts/backup-db/versions/1.0.0").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .api()
        .delete("/api/scripts/backup-db/versions/1.0.0")
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.api().get("/api/scripts/backup-db").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, audit) = server.api().get("/api/audit?action=script").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["script.delete", "script.upload"], "{audit}");
}

/// A raw peer registered with `library` (or none), and its id.
async fn library_peer(server: &Server, secret: &str, library: Option<Value>) -> (ws::Peer, String) {
    let mut peer = ws::connect(&server.url, secret).await.expect("connect");
    assert!(matches!(peer.frame().await, ServerFrame::Connected(_)));
    let id = uuid::Uuid::now_v7().to_string();
    let mut frame = ws::register(&id);
    frame["data"]["capabilities"] = json!(["ping", "run"]);
    if let Some(library) = library {
        frame["data"]["library"] = library;
    }
    peer.send_json(&frame).await;
    server.api().wait_online(&id).await;
    (peer, id)
}

/// The next command frame the peer gets.
async fn next_command(peer: &mut ws::Peer) -> outpost_protocol::ServerCommand {
    loop {
        match peer.next(Duration::from_secs(20)).await {
            Seen::Frame(ServerFrame::Command(command)) => return command,
            Seen::Frame(_) => continue,
            Seen::Closed(why) => panic!("closed: {why:?}"),
        }
    }
}

async fn download(server: &Server, token: &str, sha256: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/agent/v1/scripts/{sha256}", server.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("download")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_resolve_library_names_and_refuse_early_where_an_agent_would() {
    let server = Server::start().await;
    let api = server.api();
    let signer = Signer::new();
    let stranger = Signer::new();
    for version in ["1.0.0", "1.1.0"] {
        let (status, answer) =
            signed_upload(&server, &signer, bundle_of("backup-db", version)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let (_, secret) = api.agent_key().await;
    let (mut willing, willing_id) = library_peer(
        &server,
        &secret,
        Some(json!({"allow": ["backup-*"], "keys": [signer.public()]})),
    )
    .await;
    let (_none, none_id) = library_peer(&server, &secret, None).await;
    let (_other_name, other_name_id) = library_peer(
        &server,
        &secret,
        Some(json!({"allow": ["restore-*"], "keys": [signer.public()]})),
    )
    .await;
    let (_other_key, other_key_id) = library_peer(
        &server,
        &secret,
        Some(json!({"allow": ["*"], "keys": [stranger.public()]})),
    )
    .await;
    // The agent's API answer shows the policy it registered.
    let (_, shown) = api.get(&format!("/api/agents/{willing_id}")).await;
    assert_eq!(shown["library"]["allow"], json!(["backup-*"]), "{shown}");

    // The newest version, recorded in the job; refused early on the three that would refuse.
    let (status, job) = api
        .job(
            json!({"command": "run", "target": {"all": true},
                   "data": {"script": "backup-db", "params": {"TARGET": "db1", "PASSWORD": "hunter2"}}}),
            None,
        )
        .await;
    assert!(status.is_success(), "{job}");
    assert_eq!(job["data"]["script"], "backup-db", "{job}");
    assert_eq!(job["data"]["library"]["version"], "1.1.0", "{job}");
    assert_eq!(
        job["data"]["params"]["PASSWORD"], "********",
        "the bundle declares it secret: {job}"
    );
    let runs: Vec<&Value> = job["runs"].as_array().expect("runs").iter().collect();
    let run_of = |id: &str| *runs.iter().find(|r| r["agent_id"] == id).expect("run");
    for (id, needle) in [
        (&none_id, "runs no library scripts"),
        (
            &other_name_id,
            "does not allow library script \"backup-db\"",
        ),
        (&other_key_id, "does not trust the key"),
    ] {
        let run = run_of(id);
        assert_eq!(run["status"], "failed", "{run}");
        assert_eq!(run["error"]["code"], "script_not_allowed", "{run}");
        let text = run["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(needle), "{id}: {run}");
    }
    assert_ne!(run_of(&willing_id)["status"], "failed");
    let command = next_command(&mut willing).await;
    assert_eq!(command.data["script"], "backup-db");
    assert_eq!(
        command.data["params"]["PASSWORD"], "hunter2",
        "unsealed for the agent only"
    );
    let library: bundle::LibraryRun =
        serde_json::from_value(command.data["library"].clone()).expect("data.library");
    library.check().expect("a valid LibraryRun");
    assert_eq!(library.version.to_string(), "1.1.0");
    assert_eq!(library.key, signer.public());

    // The agent downloads exactly those bytes with its key; other keys and hashes get nothing.
    let response = download(&server, &secret, &library.sha256).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"].to_str().ok(),
        Some(library.size.to_string().as_str())
    );
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let bytes = response.bytes().await.expect("bytes");
    assert_eq!(bytes.as_ref(), bundle_of("backup-db", "1.1.0").as_slice());
    assert_eq!(
        download(&server, &secret, &"0".repeat(64)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        download(&server, &secret, "not-a-hash").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        download(&server, &server.admin_key, &library.sha256)
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "an API key is no agent key"
    );
    assert_eq!(
        download(&server, "opa_nope", &library.sha256)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // A pinned version; a version that does not exist; a caller's own data.library.
    let (status, job) = api
        .job(
            json!({"command": "run", "target": {"agents": [willing_id]},
                   "data": {"script": "backup-db@1.0.0"}}),
            None,
        )
        .await;
    assert!(status.is_success(), "{job}");
    assert_eq!(job["data"]["library"]["version"], "1.0.0", "{job}");
    let (status, answer) = api
        .job(
            json!({"command": "run", "target": {"all": true}, "data": {"script": "backup-db@9.9.9"}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(message(&answer).contains("no version 9.9.9"), "{answer}");
    let (status, answer) = api
        .job(
            json!({"command": "run", "target": {"all": true},
                   "data": {"script": "backup-db", "library": library}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(message(&answer).starts_with("data.library"), "{answer}");
    // One agent that refuses: the request itself is refused, as for manifest scripts.
    let (status, answer) = api
        .command(
            &none_id,
            json!({"command": "run", "data": {"script": "backup-db"}}),
        )
        .await;
    assert_eq!(status.as_u16(), 422, "{answer}");
    assert_eq!(answer["error"]["code"], "script_not_allowed", "{answer}");

    // A schedule resolves at each fire: the newest version of the moment.
    let (status, schedule) = api
        .post(
            "/api/schedules",
            json!({"name": "nightly", "cron": "0 3 * * *", "command": "run",
                   "data": {"script": "backup-db"}, "target": {"agents": [willing_id]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    let id = schedule["id"].as_str().expect("id");
    let (_, fired) = api
        .post(&format!("/api/schedules/{id}/run"), json!({}))
        .await;
    assert_eq!(fired["data"]["library"]["version"], "1.1.0", "{fired}");
    let (status, _) = signed_upload(&server, &signer, bundle_of("backup-db", "1.2.0")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, fired) = api
        .post(&format!("/api/schedules/{id}/run"), json!({}))
        .await;
    assert_eq!(fired["data"]["library"]["version"], "1.2.0", "{fired}");
    // A schedule pinned to a version that does not exist is refused when made.
    let (status, answer) = api
        .post(
            "/api/schedules",
            json!({"name": "pinned", "cron": "0 3 * * *", "command": "run",
                   "data": {"script": "backup-db@7.0.0"}, "target": {"agents": [willing_id]}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
}

/// `--library-max-bytes` bounds what a tenant's library holds: past it an upload is a 409
/// naming the bytes held, the bound and the way out, and a delete makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_library_refuses_uploads_until_versions_are_deleted() {
    let one = bundle_of("backup-db", "1.0.0");
    let two = bundle_of("backup-db", "2.0.0");
    let max = one.len() + two.len() / 2;
    let server = Server::start_with(outpost_e2e::ServerOptions {
        args: vec!["--library-max-bytes".into(), max.to_string()],
        ..Default::default()
    })
    .await;
    let signer = Signer::new();
    let (status, answer) = signed_upload(&server, &signer, one.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, answer) = signed_upload(&server, &signer, two.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "library_full", "{answer}");
    let said = message(&answer);
    assert!(
        said.contains(&format!("holds {} bytes", one.len()))
            && said.contains(&format!("the {max} bytes"))
            && said.contains("outpost scripts rm"),
        "{said}"
    );
    let (_, listed) = server.api().get("/api/scripts/backup-db").await;
    assert_eq!(
        listed["versions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    let (status, _) = server
        .api()
        .delete("/api/scripts/backup-db/versions/1.0.0")
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, answer) = signed_upload(&server, &signer, two).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_rate_bounded_per_agent_key() {
    let server = Server::start().await;
    let signer = Signer::new();
    let (status, stored) = signed_upload(&server, &signer, bundle_of("tiny", "1.0.0")).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    let sha = stored["sha256"].as_str().expect("sha").to_owned();
    let (_, secret) = server.api().agent_key().await;
    let (_, fresh) = server.api().agent_key().await;
    // A minute's allowance at once (plus what refills while the loop runs: one every
    // 100 ms), then 429 with Retry-After; another key is not affected.
    let allowance = outpost_core::service::scripts::DOWNLOADS_PER_MINUTE as usize;
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut refused = None;
    for n in 0..allowance * 2 {
        let response = client
            .get(format!("{}/agent/v1/scripts/{sha}", server.url))
            .bearer_auth(&secret)
            .send()
            .await
            .expect("download");
        if response.status() != StatusCode::OK {
            refused = Some((
                n,
                response.status(),
                response.headers().get("retry-after").cloned(),
            ));
            break;
        }
        response.bytes().await.expect("body");
    }
    let refilled = (started.elapsed().as_millis() / 100) as usize + 1;
    let (n, status, retry) = refused.expect("the key was never limited");
    assert!(
        (allowance..=allowance + refilled).contains(&n),
        "refused after {n} downloads (allowance {allowance}, {refilled} refilled)"
    );
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry.is_some(), "no Retry-After");
    assert_eq!(
        download(&server, &fresh, &sha).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_keys_packs_signs_uploads_lists_shows_and_removes() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = Server::start().await;
    let cli = CliHome::new(&server);
    let work = tempfile::tempdir().expect("tmp");
    let key = work.path().join("library.key");
    let key_arg = key.to_str().expect("utf-8");

    let (code, public, err) = cli.run_with_key(&["scripts", "keygen", "--out", key_arg]);
    assert_eq!(code, 0, "{err}");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pub_file = std::fs::read_to_string(work.path().join("library.key.pub")).expect("pub");
    assert_eq!(pub_file.trim(), public.trim());
    bundle::public_key(public.trim()).expect("32 bytes of base64");
    // Never overwritten.
    let (code, _, err) = cli.run_with_key(&["scripts", "keygen", "--out", key_arg]);
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");

    // A folder to pack: a symlink in it is refused, then removed.
    let dir = work.path().join("backup-db");
    std::fs::create_dir_all(dir.join("lib")).expect("dir");
    std::fs::write(dir.join(MANIFEST_FILE), manifest("backup-db", "2.0.0")).expect("manifest");
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\necho hi\n").expect("run.sh");
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::write(dir.join("lib/helper.sh"), "echo helper\n").expect("helper");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).expect("symlink");
    let out = work.path().join("backup-db-2.0.0.tar.gz");
    let (dir_arg, out_arg) = (dir.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let (code, _, err) = cli.run_with_key(&["scripts", "pack", dir_arg, "--out", out_arg]);
    assert_ne!(code, 0);
    assert!(err.contains("symlink"), "{err}");
    std::fs::remove_file(dir.join("passwd")).expect("rm");
    let (code, _, err) = cli.run_with_key(&["scripts", "pack", dir_arg, "--out", out_arg]);
    assert_eq!(code, 0, "{err}");

    // Upload before signing: the CLI says to sign first.
    let (code, _, err) = cli.run_with_key(&["scripts", "upload", out_arg]);
    assert_ne!(code, 0);
    assert!(err.contains("sign"), "{err}");
    let (code, _, err) = cli.run_with_key(&["scripts", "sign", out_arg, "--key", key_arg]);
    assert_eq!(code, 0, "{err}");
    let sig: SignatureFile = serde_json::from_slice(
        &std::fs::read(work.path().join("backup-db-2.0.0.tar.gz.sig")).expect("sig"),
    )
    .expect("signature file");
    assert_eq!(sig.key, public.trim());
    let (code, _, err) = cli.run_with_key(&["scripts", "upload", out_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("uploaded: backup-db@2.0.0"), "{err}");
    let (code, _, err) = cli.run_with_key(&["scripts", "upload", out_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already"), "{err}");

    let (code, out, err) = cli.run_with_key(&["scripts", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backup-db") && out.contains("2.0.0"), "{out}");
    let (code, out, err) = cli.run_with_key(&["scripts", "show", "backup-db"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        &sig.sha256,
        "lib/helper.sh",
        "run.sh",
        "PASSWORD (secret)",
        public.trim(),
    ] {
        assert!(out.contains(needle), "{needle} not in {out}");
    }
    // Completion offers the library's names.
    let (code, out, _) = cli.run_with_key(&["__complete", "scripts"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["backup-db"]);
    let (code, out, _) = cli.run_with_key(&["--json", "scripts", "ls"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed["scripts"][0]["sha256"], sig.sha256.as_str());

    let (code, _, err) = cli.run_with_key(&["scripts", "rm", "backup-db", "2.0.0"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli.run_with_key(&["scripts", "show", "backup-db"]);
    assert_ne!(code, 0);
    assert!(err.contains("not_found"), "{err}");
}

/// Two server nodes on one PostgreSQL: a bundle uploaded through one is served by the other,
/// and a job made on one refuses early by the policy an agent registered on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_library_and_the_agents_policies() {
    use outpost_e2e::ServerOptions;
    use outpost_e2e::postgres::{self, Database};
    let Some(cluster) =
        postgres::required("library::two_nodes_share_the_library_and_the_agents_policies")
    else {
        return;
    };
    let database = Database::create(&cluster);
    let node = |name: &str| {
        Server::start_with(ServerOptions {
            database_url: Some(database.url.clone()),
            args: vec!["--node-name".into(), name.into()],
            envs: vec![
                (
                    "OUTPOST_ADMIN_KEY".into(),
                    "opk_library0000000000000000000000000000000000".into(),
                ),
                (
                    "OUTPOST_MASTER_KEY".into(),
                    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
                ),
            ],
            ..ServerOptions::default()
        })
    };
    let a = node("a").await;
    let b = node("b").await;
    let signer = Signer::new();
    let (status, stored) = signed_upload(&a, &signer, bundle_of("backup-db", "1.0.0")).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    let sha = stored["sha256"].as_str().expect("sha").to_owned();
    let (_, secret) = a.api().agent_key().await;
    // Agents on node B.
    let (mut willing, willing_id) = library_peer(
        &b,
        &secret,
        Some(json!({"allow": ["backup-*"], "keys": [signer.public()]})),
    )
    .await;
    let (_unwilling, unwilling_id) = library_peer(&b, &secret, None).await;
    // The job made on node A.
    let (status, job) = a
        .api()
        .job(
            json!({"command": "run", "target": {"all": true}, "data": {"script": "backup-db"}}),
            None,
        )
        .await;
    assert!(status.is_success(), "{job}");
    let runs = job["runs"].as_array().expect("runs");
    let unwilling = runs
        .iter()
        .find(|r| r["agent_id"] == unwilling_id.as_str())
        .expect("run");
    assert_eq!(unwilling["error"]["code"], "script_not_allowed", "{job}");
    let willing_run = runs
        .iter()
        .find(|r| r["agent_id"] == willing_id.as_str())
        .expect("run");
    assert_ne!(willing_run["status"], "failed", "{job}");
    let command = next_command(&mut willing).await;
    assert_eq!(command.data["library"]["sha256"], sha.as_str());
    // Either node serves the bytes.
    for server in [&a, &b] {
        let response = download(server, &secret, &sha).await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.bytes().await.expect("bytes");
        assert_eq!(bytes.as_ref(), bundle_of("backup-db", "1.0.0").as_slice());
    }
}

/// The value of `name` among a response's `Set-Cookie` headers.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .and_then(|pair| pair.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
        })
}

/// A dashboard session cookie for `email`.
async fn ui_session(
    server: &Server,
    client: &reqwest::Client,
    email: &str,
    password: &str,
) -> String {
    let page = client
        .get(format!("{}/ui/login", server.url))
        .send()
        .await
        .expect("login page");
    let login = set_cookie(&page, "outpost_login").expect("the sign-in form's cookie");
    let html = page.text().await.expect("html");
    let marker = "name=\"_csrf\" value=\"";
    let start = html.find(marker).expect("a form token") + marker.len();
    let csrf = html[start..].split('"').next().expect("token").to_owned();
    let body = reqwest::Url::parse_with_params(
        "http://x/",
        &[
            ("_csrf", csrf.as_str()),
            ("email", email),
            ("password", password),
        ],
    )
    .expect("form")
    .query()
    .expect("query")
    .to_owned();
    let response = client
        .post(format!("{}/ui/login", server.url))
        .header(reqwest::header::COOKIE, format!("outpost_login={login}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("sign in");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    format!(
        "outpost_session={}",
        set_cookie(&response, "outpost_session").expect("a session cookie")
    )
}

/// The dashboard's read-only library: the list and a script's versions with their files, all
/// of it escaped, for members too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_library_read_only() {
    let server = Server::start().await;
    let signer = Signer::new();
    // A description with markup: shown as text.
    let manifest = json!({"name": "report", "version": "3.1.4", "entrypoint": "bin/run.sh",
                          "description": "<script>alert(1)</script> weekly"})
    .to_string();
    let bytes = archive::pack(&[
        (MANIFEST_FILE, manifest.as_bytes(), false),
        ("bin/run.sh", b"#!/bin/sh\necho hi\n", true),
        ("lib/<b>data</b>.txt", b"x", false),
    ])
    .expect("pack");
    let (status, stored) = signed_upload(&server, &signer, bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    let (ok, text) = server.user_create("viewer@example.com", "member", Some("a long password 1"));
    assert!(ok, "{text}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let cookie = ui_session(&server, &client, "viewer@example.com", "a long password 1").await;
    let get = |path: &str| {
        client
            .get(format!("{}{path}", server.url))
            .header(reqwest::header::COOKIE, cookie.clone())
            .send()
    };
    let list = get("/ui/scripts").await.expect("page");
    assert_eq!(list.status(), StatusCode::OK);
    let html = list.text().await.expect("html");
    for needle in [
        "/ui/scripts/report",
        "3.1.4",
        &signer.public(),
        "&#60;script&#62;alert(1)",
    ] {
        assert!(html.contains(needle), "{needle} not in the list");
    }
    assert!(!html.contains("<script>alert(1)"), "markup not escaped");
    // A member sees no upload form, no switch and no editor (CONTRACT.md §20).
    assert!(
        !html.contains("upload-form"),
        "a member is offered no upload"
    );
    let page = get("/ui/scripts/report").await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    for needle in [
        stored["sha256"].as_str().expect("sha"),
        "/ui/scripts/report/versions/3.1.4",
        "enabled",
    ] {
        assert!(html.contains(needle), "{needle} not in the script's page");
    }
    assert!(!html.contains("id=\"disable\"") && !html.contains("id=\"new-version\""));
    // The version's page lists every file and shows the entrypoint's text.
    let page = get("/ui/scripts/report/versions/3.1.4")
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    for needle in [
        stored["sha256"].as_str().expect("sha"),
        "bin/run.sh",
        "lib/&#60;b&#62;data",
        "report@3.1.4",
        "echo",
    ] {
        assert!(html.contains(needle), "{needle} not in the version's page");
    }
    assert!(!html.contains("<b>data"), "a path's markup not escaped");
    let file = get("/ui/scripts/report/versions/3.1.4?file=lib%2F%3Cb%3Edata%3C%2Fb%3E.txt")
        .await
        .expect("page");
    assert_eq!(file.status(), StatusCode::OK);
    let missing = get("/ui/scripts/report/versions/3.1.4?file=nope")
        .await
        .expect("page");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let missing = get("/ui/scripts/nothing-here").await.expect("page");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
