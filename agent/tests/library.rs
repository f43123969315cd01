//! Library runs (CONTRACT.md §15) on a real agent: its manifest, state directory, containment (a
//! cgroup per run where the machine allows one, as in service) and spools, downloading over HTTP from a stand-in for the server's bundle route (a real axum
//! server on loopback that can serve tampered bytes or cut a download half-way). The route
//! itself, and the whole path through the real server, are tested in `tests/`.
//!
//! Every bundle's entrypoint creates a marker file; each refusal checks that the marker does
//! not exist, so "nothing executed" is proved, not assumed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use base64::Engine as _;
use clap::Parser as _;
use outpost_agent::{Agent, Config};
use outpost_protocol::bundle::{self, LibraryRun, MANIFEST_FILE, archive};
use outpost_protocol::{OutputStream, Response, ServerCommand, codes};
use ring::signature::KeyPair as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

// ----- the stand-in for GET /agent/v1/scripts/{sha256} -----

#[derive(Clone)]
enum Serve {
    /// These bytes, whole.
    Bytes(Vec<u8>),
    /// Announces these bytes' length, sends half of them and breaks the connection.
    Cut(Vec<u8>),
    /// Announces these bytes' length, sends half of them and then nothing, for ever.
    Stall(Vec<u8>),
    /// Answers this status with `Retry-After: 1` as many times as the count says, then serves
    /// the bytes whole (as the real route does when too many downloads are under way).
    Busy(usize, StatusCode, Vec<u8>),
}

#[derive(Default)]
struct FakeState {
    bundles: HashMap<String, Serve>,
    hits: usize,
    bearers: Vec<String>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn serve(&self, sha256: &str, how: Serve) {
        self.0
            .lock()
            .expect("lock")
            .bundles
            .insert(sha256.into(), how);
    }
    fn hits(&self) -> usize {
        self.0.lock().expect("lock").hits
    }
}

async fn bundle_route(
    State(fake): State<Fake>,
    UrlPath(sha): UrlPath<String>,
    headers: HeaderMap,
) -> HttpResponse {
    let how = {
        let mut state = fake.0.lock().expect("lock");
        state.hits += 1;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        state.bearers.push(bearer);
        match state.bundles.get_mut(&sha) {
            Some(Serve::Busy(left, status, bytes)) => {
                if *left == 0 {
                    Some(Serve::Bytes(bytes.clone()))
                } else {
                    *left -= 1;
                    Some(Serve::Busy(*left, *status, Vec::new()))
                }
            }
            how => how.cloned(),
        }
    };
    match how {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(Serve::Busy(_, status, _)) => (
            status,
            [(header::RETRY_AFTER, "1")],
            "too many bundle downloads at once; try again",
        )
            .into_response(),
        Some(Serve::Bytes(bytes)) => {
            ([(header::CONTENT_TYPE, "application/gzip")], bytes).into_response()
        }
        Some(Serve::Stall(bytes)) => {
            use futures_util::StreamExt as _;
            let half = Bytes::from(bytes[..bytes.len() / 2].to_vec());
            let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(half)])
                .chain(futures_util::stream::pending());
            HttpResponse::builder()
                .header(header::CONTENT_LENGTH, bytes.len())
                .body(Body::from_stream(chunks))
                .expect("response")
        }
        Some(Serve::Cut(bytes)) => {
            use futures_util::StreamExt as _;
            let half = Bytes::from(bytes[..bytes.len() / 2].to_vec());
            // The half goes out first; the connection breaks a moment later.
            let chunks = futures_util::stream::iter([true, false]).then(move |first| {
                let half = half.clone();
                async move {
                    if first {
                        Ok(half)
                    } else {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Err(std::io::Error::other("cut"))
                    }
                }
            });
            HttpResponse::builder()
                .header(header::CONTENT_LENGTH, bytes.len())
                .body(Body::from_stream(chunks))
                .expect("response")
        }
    }
}

async fn start_fake() -> (Fake, String) {
    let fake = Fake::default();
    let app = axum::Router::new()
        .route("/agent/v1/scripts/{sha}", axum::routing::get(bundle_route))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, url)
}

// ----- signing, bundles, the agent -----

struct Signer {
    pair: ring::signature::Ed25519KeyPair,
}

impl Signer {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        Self {
            pair: ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key"),
        }
    }
    fn public(&self) -> String {
        b64(self.pair.public_key().as_ref())
    }
    /// The `data.library` of a run of `bytes` as `version`, signed by this key.
    fn run(&self, bytes: &[u8], version: &str) -> LibraryRun {
        let sha256 = sha256(bytes);
        let size = bytes.len() as u64;
        let signature = self
            .pair
            .sign(bundle::signed_message(&sha256, size).as_bytes());
        LibraryRun {
            version: version.parse().expect("version"),
            sha256,
            size,
            key: self.public(),
            signature: b64(signature.as_ref()),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A shell entrypoint that prints a line and creates `marker`.
fn marking_script(marker: &Path) -> Vec<u8> {
    format!(
        "#!/bin/sh\necho \"hello from $(pwd | sed 's|.*/||') $OUTPOST_PARAM_WHO\"\ntouch '{}'\n",
        marker.display()
    )
    .into_bytes()
}

fn manifest_json(name: &str, version: &str, extra: Value) -> Vec<u8> {
    let mut manifest = json!({"name": name, "version": version, "entrypoint": "run.sh"});
    if let (Value::Object(m), Value::Object(extra)) = (&mut manifest, extra) {
        m.extend(extra);
    }
    manifest.to_string().into_bytes()
}

fn good_bundle(name: &str, version: &str, marker: &Path) -> Vec<u8> {
    archive::pack(&[
        (
            MANIFEST_FILE,
            &manifest_json(name, version, json!({})),
            false,
        ),
        ("run.sh", &marking_script(marker), true),
    ])
    .expect("pack")
}

/// A tar entry as written raw: path, type, content, link target.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);

/// A tar.gz written header by header, bypassing the tar crate's own path checks, as an
/// attacker would.
fn raw_bundle(entries: &[RawEntry]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (path, kind, content, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        if let Some(link) = link {
            header.set_link_name(link).expect("link");
        }
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *content).expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gz")
}

struct Setup {
    dir: tempfile::TempDir,
    agent: Arc<Agent>,
    fake: Fake,
    signer: Signer,
}

impl Setup {
    /// An agent whose manifest holds `library` (`None`: no library section at all).
    async fn new(library: Option<Value>) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let signer = Signer::new();
        let library = library.map(|mut l| {
            if l.get("keys").is_none() {
                l["keys"] = json!([signer.public()]);
            }
            l
        });
        let mut manifest = json!({"scripts": []});
        if let Some(library) = library {
            manifest["library"] = library;
        }
        let manifest_path = dir.path().join("script_manifest.json");
        std::fs::write(&manifest_path, manifest.to_string()).expect("manifest");
        let (fake, url) = start_fake().await;
        let config = Config::try_parse_from([
            "outpost-agent",
            "--server-url",
            &url,
            "--api-key",
            "opa_library_test",
            "--state-dir",
            &dir.path().join("state").display().to_string(),
            "--manifest",
            &manifest_path.display().to_string(),
            "--containment",
            "auto",
        ])
        .expect("config");
        let agent = Agent::new(config).expect("agent");
        let tls = outpost_agent::tls::client_config(None).expect("tls");
        let client = outpost_agent::endpoint::http_client(&tls).expect("client");
        agent.set_endpoint(
            outpost_agent::http::Endpoint::new(
                client,
                &url,
                "opa_library_test",
                Duration::from_secs(5),
            )
            .expect("endpoint"),
        );
        Self {
            dir,
            agent,
            fake,
            signer,
        }
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.ran"))
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `name` from the library with `run` as its `data.library`.
    async fn run(&self, name: &str, run: &LibraryRun, params: Value) -> (Response, String) {
        self.run_data(
            json!({"script": name, "params": params, "library": run}),
            60,
        )
        .await
    }

    async fn run_data(&self, data: Value, timeout_s: u32) -> (Response, String) {
        let ran = self.execute(data, timeout_s).await;
        self.assert_clean();
        ran
    }

    /// Whatever happened, no unpacked bundle and no partial download is left behind.
    fn assert_clean(&self) {
        for leftovers in ["library/runs", "library/tmp"] {
            let left: Vec<_> = std::fs::read_dir(self.state().join(leftovers))
                .expect("library folder")
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "{leftovers} holds {left:?}");
        }
    }

    async fn execute(&self, data: Value, timeout_s: u32) -> (Response, String) {
        self.execute_with(data, timeout_s, CancellationToken::new())
            .await
    }

    async fn execute_with(
        &self,
        data: Value,
        timeout_s: u32,
        cancel: CancellationToken,
    ) -> (Response, String) {
        let cmd = ServerCommand {
            command_id: uuid::Uuid::now_v7(),
            command: "run".into(),
            data,
            timeout_s,
            timestamp: chrono::Utc::now(),
        };
        let outcome = outpost_agent::commands::execute(&self.agent, &cmd, cancel).await;
        let mut output = String::new();
        if let Some(mut reader) =
            outpost_agent::spool::SpoolReader::open(&self.agent.spool_path(cmd.command_id))
        {
            while let Some(chunk) = reader.next_chunk().expect("spool") {
                if chunk.stream == OutputStream::Stdout || chunk.stream == OutputStream::Stderr {
                    output.push_str(&String::from_utf8_lossy(&chunk.bytes));
                }
            }
        }
        (outcome.response, output)
    }

    fn cached(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state().join("library/bundles"))
            .expect("cache")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn code(response: &Response) -> &str {
    response.error.as_ref().map_or("", |e| e.code.as_str())
}

fn message(response: &Response) -> &str {
    response.error.as_ref().map_or("", |e| e.message.as_str())
}

/// The run was refused with `code`, its message says `says`, and nothing ran.
#[track_caller]
fn refused(response: &Response, code_wanted: &str, says: &str, marker: &Path) {
    assert!(!response.success, "{response:?}");
    assert_eq!(code(response), code_wanted, "{response:?}");
    assert!(
        message(response).contains(says),
        "{:?} does not say {says:?}",
        message(response)
    );
    assert!(!marker.exists(), "the entrypoint ran: {}", marker.display());
}

// ----- the tests -----

#[tokio::test]
async fn an_allowed_signed_bundle_runs_once_downloaded_then_from_the_cache() {
    let s = Setup::new(Some(json!({"allow": ["backup-*"]}))).await;
    // Runs are contained as the machine allows (a cgroup per run where one can be made).
    println!("containment: {}", s.agent.info()["containment"]);
    let marker = s.marker("backup");
    let bytes = good_bundle("backup-db", "1.2.0", &marker);
    let run = s.signer.run(&bytes, "1.2.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes));

    let (response, output) = s.run("backup-db", &run, json!({"WHO": "ops"})).await;
    assert!(response.success, "{response:?} {output}");
    assert!(marker.exists(), "the entrypoint ran");
    assert!(output.starts_with("hello from "), "{output}");
    assert!(output.trim_end().ends_with(" ops"), "{output}");
    assert_eq!(response.data["exit_code"], 0);
    assert_eq!(response.data["library"]["downloaded"], true);
    assert_eq!(s.fake.hits(), 1);
    assert_eq!(
        s.fake.0.lock().expect("lock").bearers,
        vec!["Bearer opa_library_test".to_owned()],
        "downloaded with the agent key"
    );
    assert_eq!(s.cached(), vec![format!("{}.tar.gz", run.sha256)]);

    std::fs::remove_file(&marker).expect("rm");
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    assert!(response.success, "{response:?}");
    assert!(marker.exists());
    assert_eq!(response.data["library"]["downloaded"], false);
    assert_eq!(s.fake.hits(), 1, "the second run is served by the cache");

    // The register frame carries the consent.
    let register = s.agent.register_data();
    let policy = register.library.clone().expect("library in register");
    assert_eq!(policy.allow, vec!["backup-*".to_owned()]);
    register.check().expect("a register the server accepts");
}

#[tokio::test]
async fn the_manifest_must_consent_to_the_name_and_the_signer() {
    // No library section at all.
    let s = Setup::new(None).await;
    let marker = s.marker("x");
    let bytes = good_bundle("backup-db", "1.0.0", &marker);
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes.clone()));
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    refused(
        &response,
        codes::SCRIPT_NOT_ALLOWED,
        "no \"library\" section",
        &marker,
    );
    assert!(s.agent.register_data().library.is_none());

    // A library that allows nothing.
    let s = Setup::new(Some(json!({"allow": []}))).await;
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes.clone()));
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    refused(
        &response,
        codes::SCRIPT_NOT_ALLOWED,
        "allows no library script",
        &marker,
    );

    // A name no pattern matches.
    let s = Setup::new(Some(json!({"allow": ["restore-*", "report"]}))).await;
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes.clone()));
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    refused(
        &response,
        codes::SCRIPT_NOT_ALLOWED,
        "\"backup-db\" is not allowed by this agent's manifest (library.allow: restore-*, report)",
        &marker,
    );

    // `library: null` is a manifest run, refused here as the manifest lists no scripts.
    let (response, _) = s
        .run_data(json!({"script": "backup-db", "library": null}), 60)
        .await;
    refused(
        &response,
        codes::SCRIPT_NOT_ALLOWED,
        "is not in this agent's manifest",
        &marker,
    );

    // Signed by a key the manifest does not pin.
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let stranger = Signer::new();
    let run = stranger.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes.clone()));
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    refused(
        &response,
        codes::SCRIPT_NOT_ALLOWED,
        "does not pin",
        &marker,
    );
    assert_eq!(s.fake.hits(), 0, "nothing is downloaded for a refused run");
}

#[tokio::test]
async fn a_signature_that_does_not_verify_is_refused_before_the_download() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let marker = s.marker("x");
    let bytes = good_bundle("backup-db", "1.0.0", &marker);
    let good = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&good.sha256, Serve::Bytes(bytes.clone()));

    // The pinned key's signature, but over another size (and so another message).
    let mut other = good.clone();
    other.size += 1;
    other.signature = good.signature.clone();
    let (response, _) = s.run("backup-db", &other, json!({})).await;
    refused(&response, codes::BUNDLE_REFUSED, "does not verify", &marker);

    // No signature at all: 64 zero bytes.
    let mut unsigned = good.clone();
    unsigned.signature = b64(&[0u8; 64]);
    let (response, _) = s.run("backup-db", &unsigned, json!({})).await;
    refused(&response, codes::BUNDLE_REFUSED, "does not verify", &marker);

    // A run without its signature field is not a library run the agent can read.
    let mut data = json!({"script": "backup-db", "library": good});
    data["library"]
        .as_object_mut()
        .expect("object")
        .remove("signature");
    let (response, _) = s.run_data(data, 60).await;
    refused(&response, codes::BAD_DATA, "signature", &marker);
    assert_eq!(
        s.fake.hits(),
        0,
        "nothing is downloaded before the signature verifies"
    );
}

#[tokio::test]
async fn the_download_is_held_to_the_signed_hash_and_size() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let marker = s.marker("x");
    let bytes = good_bundle("backup-db", "1.0.0", &marker);
    let run = s.signer.run(&bytes, "1.0.0");

    // Tampered on the server: same size, one byte changed.
    let mut tampered = bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x20;
    s.fake.serve(&run.sha256, Serve::Bytes(tampered));
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    refused(
        &response,
        codes::BUNDLE_REFUSED,
        "not the bundle that was signed",
        &marker,
    );
    assert!(s.cached().is_empty(), "{:?}", s.cached());

    // Longer than signed.
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"more");
    s.fake.serve(&run.sha256, Serve::Bytes(longer));
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    refused(
        &response,
        codes::BUNDLE_REFUSED,
        "bytes for bundle",
        &marker,
    );

    // Cut in the middle.
    s.fake.serve(&run.sha256, Serve::Cut(bytes.clone()));
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    refused(&response, codes::DOWNLOAD_FAILED, "was cut after", &marker);
    assert!(s.cached().is_empty(), "{:?}", s.cached());

    // Not on the server.
    s.fake.0.lock().expect("lock").bundles.clear();
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    refused(&response, codes::DOWNLOAD_FAILED, "404", &marker);

    // And once served whole, it runs.
    s.fake.serve(&run.sha256, Serve::Bytes(bytes));
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    assert!(response.success, "{response:?}");
    assert!(marker.exists());

    // A cached file changed on disk is not trusted: it is fetched again.
    std::fs::remove_file(&marker).expect("rm");
    let cached = s
        .state()
        .join("library/bundles")
        .join(format!("{}.tar.gz", run.sha256));
    let mut on_disk = std::fs::read(&cached).expect("cached");
    on_disk[middle] ^= 0x20;
    std::fs::write(&cached, on_disk).expect("write");
    let hits = s.fake.hits();
    let (response, _) = s.run("backup-db", &run, json!({})).await;
    assert!(response.success, "{response:?}");
    assert_eq!(s.fake.hits(), hits + 1, "downloaded again");
}

#[tokio::test]
async fn a_cancel_stops_a_download_and_leaves_nothing() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let marker = s.marker("x");
    let bytes = good_bundle("slow", "1.0.0", &marker);
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Stall(bytes));
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
    });
    let started = Instant::now();
    let (response, _) = s
        .execute_with(json!({"script": "slow", "library": run}), 60, cancel)
        .await;
    s.assert_clean();
    refused(&response, codes::CANCELLED, "downloading", &marker);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(s.cached().is_empty());
}

#[tokio::test]
async fn a_busy_server_is_asked_again_after_the_wait_it_names() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    // A run sent to a whole fleet at once meets 429s (CONTRACT.md §15's download route sends a few
    // bundles at a time) and 503s (a node draining): each is a wait, not a failed run.
    for (version, status) in [
        ("1.0.0", StatusCode::TOO_MANY_REQUESTS),
        ("1.0.1", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let marker = s.marker(version);
        let bytes = good_bundle("fleet-wide", version, &marker);
        let run = s.signer.run(&bytes, version);
        s.fake.serve(&run.sha256, Serve::Busy(2, status, bytes));
        let hits = s.fake.hits();
        let (response, output) = s.run("fleet-wide", &run, json!({})).await;
        assert!(response.success, "{status}: {response:?} {output}");
        assert!(marker.exists(), "{status}");
        assert_eq!(
            s.fake.hits(),
            hits + 3,
            "{status}: two refusals, then the bundle"
        );
    }

    // Cancelled while it waits: it stops at once, with nothing left behind.
    let marker = s.marker("never");
    let bytes = good_bundle("fleet-wide", "1.0.2", &marker);
    let run = s.signer.run(&bytes, "1.0.2");
    s.fake.serve(
        &run.sha256,
        Serve::Busy(usize::MAX, StatusCode::TOO_MANY_REQUESTS, bytes),
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let fake = s.fake.clone();
    let hits = fake.hits();
    tokio::spawn(async move {
        // Once the first refusal is in, the agent is waiting.
        while fake.hits() == hits {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
    });
    let (response, _) = s
        .execute_with(json!({"script": "fleet-wide", "library": run}), 60, cancel)
        .await;
    s.assert_clean();
    refused(&response, codes::CANCELLED, "waiting to download", &marker);
    let file = format!("{}.tar.gz", run.sha256);
    assert!(!s.cached().contains(&file), "{:?}", s.cached());
}

#[tokio::test]
async fn the_folder_goes_even_when_the_script_locks_parts_of_it() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let script = b"#!/bin/sh\nmkdir -p locked/inner && touch locked/inner/f && chmod 000 locked/inner locked\nchmod 500 .\n";
    let bytes = archive::pack(&[
        (
            MANIFEST_FILE,
            &manifest_json("locker", "1.0.0", json!({})),
            false,
        ),
        ("run.sh", script, true),
    ])
    .expect("pack");
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes));
    // `run` checks that library/runs is empty afterwards.
    let (response, output) = s.run("locker", &run, json!({})).await;
    assert!(response.success, "{response:?} {output}");
}

#[tokio::test]
async fn a_new_agent_clears_what_a_crashed_one_left() {
    let state = tempfile::tempdir().expect("tmp");
    let library = outpost_agent::library::Library::open(state.path()).expect("open");
    drop(library);
    let root = state.path().join("library");
    std::fs::create_dir_all(root.join("runs/0193/sub")).expect("run");
    std::fs::write(root.join("tmp/x.part"), b"half").expect("part");
    std::fs::create_dir_all(root.join("venvs/half-built/bin")).expect("venv");
    std::fs::create_dir_all(root.join("venvs/built")).expect("venv");
    std::fs::write(root.join("venvs/built/.outpost-ready"), b"").expect("ready");
    std::fs::write(root.join("bundles/kept.tar.gz"), b"").expect("bundle");
    outpost_agent::library::Library::open(state.path()).expect("open");
    let list = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert!(list("runs").is_empty());
    assert!(list("tmp").is_empty());
    assert_eq!(list("venvs"), vec!["built".to_owned()]);
    assert_eq!(list("bundles"), vec!["kept.tar.gz".to_owned()]);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&root).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the library's folders are private");
}

#[tokio::test]
async fn hostile_archives_are_refused_and_nothing_is_written_outside() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let marker = s.marker("x");
    let manifest = manifest_json("evil", "1.0.0", json!({}));
    let script = marking_script(&marker);
    let regular = tar::EntryType::Regular;
    let good = [
        (MANIFEST_FILE, regular, manifest.as_slice(), None),
        ("run.sh", regular, script.as_slice(), None),
    ];
    let escape = s.state().join("library/escaped");
    let cases: Vec<(Vec<RawEntry>, &str)> = vec![
        (
            vec![("../../escaped", regular, b"x", None)],
            "\"..\" component",
        ),
        (
            vec![(escape.to_str().expect("utf-8"), regular, b"x", None)],
            "is absolute",
        ),
        (
            vec![("link", tar::EntryType::Symlink, b"", Some("/etc/passwd"))],
            "a symbolic link",
        ),
        (
            vec![("hard", tar::EntryType::Link, b"", Some("../../escaped"))],
            "a hard link",
        ),
        (
            vec![("dev", tar::EntryType::Char, b"", None)],
            "a character device",
        ),
        (vec![("fifo", tar::EntryType::Fifo, b"", None)], "a FIFO"),
    ];
    for (extra, says) in cases {
        // The bad entry first, so that the entrypoint is never even written.
        let mut entries = extra.clone();
        entries.extend(good.iter().cloned());
        let bytes = raw_bundle(&entries);
        let run = s.signer.run(&bytes, "1.0.0");
        s.fake.serve(&run.sha256, Serve::Bytes(bytes));
        let (response, _) = s.run("evil", &run, json!({})).await;
        refused(&response, codes::BUNDLE_REFUSED, says, &marker);
        assert!(!escape.exists(), "{says}: wrote outside its folder");
    }

    // The entrypoint missing.
    let bytes = raw_bundle(&[(MANIFEST_FILE, regular, manifest.as_slice(), None)]);
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes));
    let (response, _) = s.run("evil", &run, json!({})).await;
    refused(
        &response,
        codes::BUNDLE_REFUSED,
        "entrypoint \"run.sh\" is not a file",
        &marker,
    );

    // An entrypoint outside the bundle.
    let outside = manifest_json("evil", "1.0.0", json!({"entrypoint": "../run.sh"}));
    let bytes = raw_bundle(&[
        (MANIFEST_FILE, regular, outside.as_slice(), None),
        ("run.sh", regular, script.as_slice(), None),
    ]);
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes));
    let (response, _) = s.run("evil", &run, json!({})).await;
    refused(&response, codes::BUNDLE_REFUSED, "entrypoint", &marker);

    // A bomb: 257 MiB of zeros in a few hundred KiB, refused at the limit, before writing.
    let zeros = outpost_protocol::bundle::limits::MAX_UNPACKED_BYTES + 1024 * 1024;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (path, content) in [(MANIFEST_FILE, &manifest), ("run.sh", &script)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_entry_type(regular);
        builder
            .append_data(&mut header, path, content.as_slice())
            .expect("append");
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(zeros);
    header.set_mode(0o644);
    header.set_entry_type(regular);
    builder
        .append_data(
            &mut header,
            "zeros",
            std::io::Read::take(std::io::repeat(0), zeros),
        )
        .expect("append");
    let bomb = builder.into_inner().expect("tar").finish().expect("gz");
    let run = s.signer.run(&bomb, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bomb));
    let (response, _) = s.run("evil", &run, json!({})).await;
    refused(
        &response,
        codes::BUNDLE_REFUSED,
        "more than 268435456 bytes",
        &marker,
    );

    // Too many entries.
    let names: Vec<String> = (0..outpost_protocol::bundle::limits::MAX_BUNDLE_ENTRIES)
        .map(|i| format!("f{i}"))
        .collect();
    let mut files: Vec<(&str, &[u8], bool)> = vec![
        (MANIFEST_FILE, manifest.as_slice(), false),
        ("run.sh", script.as_slice(), true),
    ];
    files.extend(names.iter().map(|n| (n.as_str(), &b""[..], false)));
    let many = archive::pack(&files).expect("pack");
    let run = s.signer.run(&many, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(many));
    let (response, _) = s.run("evil", &run, json!({})).await;
    refused(
        &response,
        codes::BUNDLE_REFUSED,
        "more than 4096 entries",
        &marker,
    );
}

#[tokio::test]
async fn the_bundle_must_be_the_named_script_and_take_the_params() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let marker = s.marker("x");
    let bytes = archive::pack(&[
        (
            MANIFEST_FILE,
            &manifest_json(
                "backup-db",
                "1.0.0",
                json!({"params": ["WHO"], "timeout_s": 1}),
            ),
            false,
        ),
        ("run.sh", &marking_script(&marker), true),
    ])
    .expect("pack");

    // Another name, or another version, than the bundle holds.
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes.clone()));
    let (response, _) = s.run("backup-files", &run, json!({})).await;
    refused(
        &response,
        codes::BUNDLE_REFUSED,
        "holds backup-db@1.0.0, not the backup-files@1.0.0",
        &marker,
    );
    let run2 = s.signer.run(&bytes, "1.0.1");
    let (response, _) = s.run("backup-db", &run2, json!({})).await;
    refused(
        &response,
        codes::BUNDLE_REFUSED,
        "not the backup-db@1.0.1",
        &marker,
    );

    // A parameter the bundle does not list.
    let (response, _) = s.run("backup-db", &run, json!({"OTHER": "x"})).await;
    refused(
        &response,
        codes::BAD_PARAMS,
        "does not take parameter OTHER",
        &marker,
    );

    // The bundle's timeout caps the request's: a sleeper dies after 1 s, not 60.
    let sleeper = archive::pack(&[
        (
            MANIFEST_FILE,
            &manifest_json("sleeper", "1.0.0", json!({"timeout_s": 1})),
            false,
        ),
        ("run.sh", b"#!/bin/sh\nexec sleep 30\n", true),
    ])
    .expect("pack");
    let run = s.signer.run(&sleeper, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(sleeper));
    let started = Instant::now();
    let (response, _) = s.run("sleeper", &run, json!({})).await;
    assert_eq!(code(&response), codes::TIMED_OUT, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn concurrent_runs_download_once_and_the_cache_stays_bounded() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let marker = s.marker("x");
    let bytes = good_bundle("one", "1.0.0", &marker);
    let one = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&one.sha256, Serve::Bytes(bytes.clone()));
    let data = json!({"script": "one", "library": one});
    let (a, b, c) = tokio::join!(
        s.execute(data.clone(), 60),
        s.execute(data.clone(), 60),
        s.execute(data, 60)
    );
    s.assert_clean();
    for (response, _) in [a, b, c] {
        assert!(response.success, "{response:?}");
    }
    assert_eq!(s.fake.hits(), 1, "three runs at once, one download");

    // Room for one bundle of this size: the least recently used goes.
    s.agent
        .library()
        .set_limits(bytes.len() as u64 + 10, outpost_agent::library::MAX_VENVS);
    let two_bytes = good_bundle("two", "1.0.0", &marker);
    let two = s.signer.run(&two_bytes, "1.0.0");
    s.fake.serve(&two.sha256, Serve::Bytes(two_bytes));
    let (response, _) = s.run("two", &two, json!({})).await;
    assert!(response.success, "{response:?}");
    assert_eq!(s.cached(), vec![format!("{}.tar.gz", two.sha256)]);
}

#[tokio::test]
async fn a_changed_library_is_read_again_and_announced() {
    let s = Setup::new(Some(json!({"allow": ["a-*"]}))).await;
    let path = s.dir.path().join("script_manifest.json");
    let marker = s.marker("x");
    let bytes = good_bundle("b-job", "1.0.0", &marker);
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes));
    let (response, _) = s.run("b-job", &run, json!({})).await;
    refused(&response, codes::SCRIPT_NOT_ALLOWED, "not allowed", &marker);

    let manifest = json!({"library": {"allow": ["a-*", "b-*"], "keys": [s.signer.public()]}});
    std::fs::write(&path, manifest.to_string()).expect("manifest");
    s.agent.reload_manifest();
    tokio::time::timeout(Duration::from_secs(5), s.agent.manifest_changed.notified())
        .await
        .expect("a new register is asked for");
    let policy = s.agent.register_data().library.expect("library");
    assert_eq!(policy.allow, vec!["a-*".to_owned(), "b-*".to_owned()]);
    let (response, _) = s.run("b-job", &run, json!({})).await;
    assert!(response.success, "{response:?}");

    // A broken library drops the consent: nothing runs from the library until it is fixed.
    std::fs::write(&path, r#"{"library": {"allow": ["*"], "keys": ["nope"]}}"#).expect("manifest");
    s.agent.reload_manifest();
    assert!(s.agent.register_data().library.is_none());
    std::fs::remove_file(&marker).expect("rm");
    let (response, _) = s.run("b-job", &run, json!({})).await;
    refused(
        &response,
        codes::SCRIPT_NOT_ALLOWED,
        "no \"library\" section",
        &marker,
    );
}

/// Whether `python3 -m venv` works here; the venv tests say so and pass when it does not.
fn python_venv_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A pure-Python wheel `<package>-0.1-py3-none-any.whl`, built without network (a zip with
/// the metadata pip needs). Returns its file name and bytes.
fn tiny_wheel(dir: &Path, package: &str) -> (String, Vec<u8>) {
    let file = format!("{package}-0.1-py3-none-any.whl");
    let out = dir.join(&file);
    let script = r#"
import base64, hashlib, sys, zipfile
out, pkg = sys.argv[1], sys.argv[2]
files = {
    f"{pkg}/__init__.py": f'GREETING = "hello from {pkg}"\n'.encode(),
    f"{pkg}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1\n".encode(),
    f"{pkg}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, content in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    record += f"{name},sha256={digest},{len(content)}\n"
record += f"{pkg}-0.1.dist-info/RECORD,,\n"
files[f"{pkg}-0.1.dist-info/RECORD"] = record.encode()
with zipfile.ZipFile(out, "w") as z:
    for name, content in files.items():
        z.writestr(name, content)
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&out)
        .arg(package)
        .status()
        .expect("python3");
    assert!(status.success());
    (file, std::fs::read(&out).expect("wheel"))
}

#[tokio::test]
async fn requirements_get_a_virtual_environment_per_bundle() {
    if !python_venv_available() {
        eprintln!("SKIPPED: python3 with venv and ensurepip is not installed here");
        return;
    }
    let s = Setup::new(Some(json!({"allow": ["py-*"]}))).await;
    let marker = s.marker("py");
    let (_, wheel) = tiny_wheel(s.dir.path(), "tinypkg");
    let requirements = format!(
        "./tinypkg-0.1-py3-none-any.whl --hash=sha256:{}\n",
        sha256(&wheel)
    );
    let main = format!(
        "import os, sys, tinypkg\nprint(tinypkg.GREETING, os.environ['VIRTUAL_ENV'] == sys.prefix)\nopen({:?}, 'w').close()\n",
        marker.display().to_string()
    );
    let manifest = json!({"name": "py-hello", "version": "1.0.0", "entrypoint": "main.py",
                          "requirements": "requirements.txt"})
    .to_string();
    let bytes = archive::pack(&[
        (MANIFEST_FILE, manifest.as_bytes(), false),
        ("main.py", main.as_bytes(), false),
        ("requirements.txt", requirements.as_bytes(), false),
        ("tinypkg-0.1-py3-none-any.whl", &wheel, false),
    ])
    .expect("pack");
    let run = s.signer.run(&bytes, "1.0.0");
    s.fake.serve(&run.sha256, Serve::Bytes(bytes));

    // Two runs at once on a new bundle: one download, one build, both run.
    let first = Instant::now();
    let data = json!({"script": "py-hello", "library": run});
    let (a, b) = tokio::join!(s.execute(data.clone(), 60), s.execute(data, 60));
    let first = first.elapsed();
    s.assert_clean();
    let library = &s.agent.info()["library_cache"];
    assert_eq!(library["downloads"], 1, "{library}");
    assert_eq!(library["venv_builds"], 1, "{library}");
    let (response, output) = a;
    assert!(response.success, "{response:?}\n{output}");
    assert_eq!(
        output, "hello from tinypkg True\n",
        "only the script's output"
    );
    let (response, output) = b;
    assert!(response.success, "{response:?}\n{output}");
    assert!(marker.exists());
    let venv = s.state().join("library/venvs").join(&run.sha256);
    assert!(venv.join(".outpost-ready").is_file());

    std::fs::remove_file(&marker).expect("rm");
    let second = Instant::now();
    let (response, output) = s.run("py-hello", &run, json!({})).await;
    let second = second.elapsed();
    assert!(response.success, "{response:?}\n{output}");
    assert!(marker.exists());
    let library = &s.agent.info()["library_cache"];
    assert_eq!(
        library["venv_builds"], 1,
        "the environment is reused: {library}"
    );
    assert_eq!(library["downloads"], 1, "{library}");
    println!(
        "python bundle: first run (venv built) {first:?}, second run (venv cached) {second:?}"
    );
}

#[tokio::test]
async fn requirements_that_fail_to_install_fail_the_run_with_the_log() {
    if !python_venv_available() {
        eprintln!("SKIPPED: python3 with venv and ensurepip is not installed here");
        return;
    }
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let marker = s.marker("py");
    let manifest = json!({"name": "py-broken", "version": "1.0.0", "entrypoint": "main.py",
                          "requirements": "requirements.txt"})
    .to_string();
    let main = format!("open({:?}, 'w').close()\n", marker.display().to_string());
    let (pinned, pinned_bytes) = tiny_wheel(s.dir.path(), "pinned");
    let (loose, loose_bytes) = tiny_wheel(s.dir.path(), "loose");
    let cases = [
        // A file that is not there.
        (
            "./missing-0.1-py3-none-any.whl\n".to_owned(),
            "missing-0.1-py3-none-any.whl",
        ),
        // Hashes pinned for one requirement: every one must have its hash.
        (
            format!(
                "./{pinned} --hash=sha256:{}\n./{loose}\n",
                sha256(&pinned_bytes)
            ),
            "--require-hashes",
        ),
    ];
    for (requirements, log_says) in cases {
        let bytes = archive::pack(&[
            (MANIFEST_FILE, manifest.as_bytes(), false),
            ("main.py", main.as_bytes(), false),
            ("requirements.txt", requirements.as_bytes(), false),
            (&pinned, &pinned_bytes, false),
            (&loose, &loose_bytes, false),
        ])
        .expect("pack");
        let run = s.signer.run(&bytes, "1.0.0");
        s.fake.serve(&run.sha256, Serve::Bytes(bytes));
        let (response, output) = s.run("py-broken", &run, json!({})).await;
        refused(
            &response,
            codes::REQUIREMENTS_FAILED,
            "pip install exited with code",
            &marker,
        );
        assert!(output.contains(log_says), "the pip log: {output}");
        assert!(
            !s.state().join("library/venvs").join(&run.sha256).exists(),
            "a failed build is removed"
        );
    }
}

/// Not a timed assertion: prints what a library run costs over a manifest run of the same
/// script (`cargo nextest run -p outpost-agent --test library overhead --no-capture`).
#[tokio::test]
async fn overhead_against_a_manifest_script() {
    let s = Setup::new(Some(json!({"allow": ["*"]}))).await;
    let marker = s.marker("bench");
    let script = marking_script(&marker);
    // The same script in the manifest.
    let scripts = s.dir.path().join("run.sh");
    std::fs::write(&scripts, &script).expect("script");
    std::fs::set_permissions(
        &scripts,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let manifest = json!({"scripts": [{"name": "bench", "path": "run.sh"}],
                          "library": {"allow": ["*"], "keys": [s.signer.public()]}});
    std::fs::write(
        s.dir.path().join("script_manifest.json"),
        manifest.to_string(),
    )
    .expect("manifest");
    s.agent.reload_manifest();

    // The machine may be shared: minimum and median both, of many rounds.
    const ROUNDS: usize = 30;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        format!("min {:?} / median {:?}", v[0], v[v.len() / 2])
    };
    let mut manifest_runs = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let (response, _) = s.run_data(json!({"script": "bench"}), 60).await;
        manifest_runs.push(t.elapsed());
        assert!(response.success, "{response:?}");
    }
    let mut first_runs = Vec::new();
    let mut cached_runs = Vec::new();
    for round in 0..ROUNDS {
        // A new bundle each round (a different version), so that the first run downloads.
        let version = format!("1.0.{round}");
        let bytes = archive::pack(&[
            (
                MANIFEST_FILE,
                &manifest_json("bench", &version, json!({})),
                false,
            ),
            ("run.sh", &script, true),
        ])
        .expect("pack");
        let run = s.signer.run(&bytes, &version);
        s.fake.serve(&run.sha256, Serve::Bytes(bytes));
        let t = Instant::now();
        let (response, _) = s.run("bench", &run, json!({})).await;
        first_runs.push(t.elapsed());
        assert_eq!(response.data["library"]["downloaded"], true, "{response:?}");
        let t = Instant::now();
        let (response, _) = s.run("bench", &run, json!({})).await;
        cached_runs.push(t.elapsed());
        assert_eq!(
            response.data["library"]["downloaded"], false,
            "{response:?}"
        );
    }
    // A large bundle: 8 MiB that do not compress, to show what hashing and unpacking cost.
    let mut noise = vec![0u8; 8 * 1024 * 1024];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).expect("rand");
    let mut large_first = Vec::new();
    let mut large_cached = Vec::new();
    for round in 0..10 {
        let version = format!("2.0.{round}");
        let bytes = archive::pack(&[
            (
                MANIFEST_FILE,
                &manifest_json("bench", &version, json!({})),
                false,
            ),
            ("run.sh", &script, true),
            (&format!("data{round}.bin"), &noise, false),
        ])
        .expect("pack");
        let run = s.signer.run(&bytes, &version);
        s.fake.serve(&run.sha256, Serve::Bytes(bytes));
        let t = Instant::now();
        let (response, _) = s.run("bench", &run, json!({})).await;
        large_first.push(t.elapsed());
        assert!(response.success, "{response:?}");
        let t = Instant::now();
        let (response, _) = s.run("bench", &run, json!({})).await;
        large_cached.push(t.elapsed());
        assert!(response.success, "{response:?}");
    }
    println!(
        "library overhead with an 8 MiB bundle (10 rounds): first run {}, cached run {}",
        median(large_first),
        median(large_cached)
    );
    println!(
        "library overhead ({ROUNDS} rounds): manifest run {}; library first run {} (verify, \
         download, hash, unpack, run); library cached run {} (hash, unpack, run)",
        median(manifest_runs),
        median(first_runs),
        median(cached_runs),
    );
}
