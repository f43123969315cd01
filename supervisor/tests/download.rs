//! The supervisor's download against a hostile release server: a plain TCP listener that
//! answers each request the way a test tells it to (a body longer than the release says, a
//! `Content-Length` that lies, a body that never ends) and records what it was asked and how
//! much it managed to send. The release metadata is signed here with a fresh key that the
//! `Updater` pins, so only what the server does is hostile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use outpost_protocol::release::{
    self, Artifact, ReleaseInfo, Version, signed_message, signed_message_v2,
};
use outpost_supervisor::update::{TARGET, Updater};
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server sends for the file.
#[derive(Clone, Copy)]
enum Serve {
    /// The body with a `Content-Length` of its length.
    Exact,
    /// The body and `extra` more bytes, announced as the body's length plus `extra`.
    Longer { extra: usize },
    /// The body and then bytes without end, chunked (no length announced).
    Endless,
    /// Half the body, announced whole, and then nothing more: the connection left open.
    Stall,
}

/// A request's head, read a byte at a time up to its blank line (so nothing of a body is
/// taken); `None` if the client closed first.
async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

struct Hostile {
    url: String,
    /// Requests received.
    requests: Arc<AtomicUsize>,
    /// Body bytes written before the client went away.
    sent: Arc<AtomicU64>,
}

async fn hostile(body: Vec<u8>, serve: Serve) -> Hostile {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/downloads/agent",
        listener.local_addr().expect("addr")
    );
    let requests = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (count, total) = (requests.clone(), sent.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (body, count, total) = (body.clone(), count.clone(), total.clone());
            tokio::spawn(async move {
                let Some(_) = read_head(&mut socket).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let send = |bytes: &[u8]| {
                    total.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                };
                match serve {
                    Serve::Exact | Serve::Longer { .. } => {
                        let extra = match serve {
                            Serve::Longer { extra } => extra,
                            _ => 0,
                        };
                        let mut all = body.clone();
                        all.extend(std::iter::repeat_n(b'x', extra));
                        let header = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            all.len()
                        );
                        if socket.write_all(header.as_bytes()).await.is_err() {
                            return;
                        }
                        for piece in all.chunks(16 * 1024) {
                            if socket.write_all(piece).await.is_err() {
                                return;
                            }
                            send(piece);
                        }
                    }
                    Serve::Stall => {
                        let header = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let half = &body[..body.len() / 2];
                        if socket.write_all(header.as_bytes()).await.is_ok()
                            && socket.write_all(half).await.is_ok()
                        {
                            send(half);
                            std::future::pending::<()>().await;
                        }
                    }
                    Serve::Endless => {
                        let header = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                        if socket.write_all(header.as_bytes()).await.is_err() {
                            return;
                        }
                        let filler = vec![b'x'; 64 * 1024];
                        let mut pieces = body
                            .chunks(64 * 1024)
                            .map(<[u8]>::to_vec)
                            .collect::<Vec<_>>();
                        pieces.reverse();
                        loop {
                            let piece = pieces.pop().unwrap_or_else(|| filler.clone());
                            let frame = [
                                format!("{:x}\r\n", piece.len()).into_bytes(),
                                piece.clone(),
                                b"\r\n".to_vec(),
                            ]
                            .concat();
                            if socket.write_all(&frame).await.is_err() {
                                return;
                            }
                            send(&piece);
                        }
                    }
                }
            });
        }
    });
    Hostile {
        url,
        requests,
        sent,
    }
}

struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    fn new() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
        Self {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair"),
        }
    }

    fn public(&self) -> String {
        STANDARD.encode(self.pair.public_key().as_ref())
    }

    fn sign(&self, message: &str) -> String {
        STANDARD.encode(self.pair.sign(message.as_bytes()).as_ref())
    }

    /// Metadata for `body` served at `url`: both signatures over the true hash and size,
    /// then the size the metadata states replaced by `stated` (when given).
    fn release(&self, body: &[u8], url: &str, v2: bool, stated: Option<u64>) -> ReleaseInfo {
        let version: Version = "1.2.3".parse().expect("version");
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, body).as_ref());
        let size = body.len() as u64;
        ReleaseInfo {
            version,
            target: TARGET.to_owned(),
            published_at: chrono::Utc::now(),
            public_key: self.public(),
            agent: Some(Artifact {
                url: url.to_owned(),
                sha256: sha.clone(),
                size: stated.unwrap_or(size),
                signature: self.sign(&signed_message(release::AGENT, &version, TARGET, &sha)),
                signature_v2: v2.then(|| {
                    self.sign(&signed_message_v2(
                        release::AGENT,
                        &version,
                        TARGET,
                        &sha,
                        size,
                    ))
                }),
            }),
            supervisor: None,
        }
    }
}

fn updater(signer: &Signer) -> Updater {
    updater_for(signer, "http://127.0.0.1:9")
}

fn updater_for(signer: &Signer, server_url: &str) -> Updater {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Updater::new(
        Some(server_url),
        Some("opa_unused"),
        None,
        Some(&signer.public()),
    )
    .expect("updater")
}

/// A server node's release API that answers every request with `status` and `body`; returns
/// its URL and the count of requests it got.
async fn release_node(status: u16, body: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (body, count) = (body.clone(), count.clone());
            tokio::spawn(async move {
                let Some(_) = read_head(&mut socket).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, requests)
}

/// A loopback URL nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", listener.local_addr().expect("addr"))
}

fn agent_bytes() -> Vec<u8> {
    (0..300_000u32).map(|i| (i % 251) as u8).collect()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn an_honest_release_downloads_with_either_signature() {
    let signer = Signer::new();
    let body = agent_bytes();
    for v2 in [true, false] {
        let server = hostile(body.clone(), Serve::Exact).await;
        let dir = tempfile::tempdir().expect("tmp");
        let info = signer.release(&body, &server.url, v2, None);
        let (file, sha) = updater(&signer)
            .download(&info, dir.path())
            .await
            .unwrap_or_else(|e| panic!("v2={v2}: {e}"));
        assert_eq!(std::fs::read(&file).expect("read"), body);
        assert_eq!(
            Some(sha.as_str()),
            info.agent.as_ref().map(|a| a.sha256.as_str())
        );
    }
}

#[tokio::test]
async fn a_body_longer_than_announced_is_refused_before_it_is_read() {
    let signer = Signer::new();
    let body = agent_bytes();
    let server = hostile(body.clone(), Serve::Longer { extra: 1 << 20 }).await;
    let dir = tempfile::tempdir().expect("tmp");
    let info = signer.release(&body, &server.url, true, None);
    let err = updater(&signer)
        .download(&info, dir.path())
        .await
        .expect_err("longer than the release");
    assert!(err.contains("announces"), "{err}");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

#[tokio::test]
async fn a_body_that_never_ends_is_cut_off_at_the_signed_size() {
    let signer = Signer::new();
    let body = agent_bytes();
    let server = hostile(body.clone(), Serve::Endless).await;
    let dir = tempfile::tempdir().expect("tmp");
    let info = signer.release(&body, &server.url, true, None);
    let err = updater(&signer)
        .download(&info, dir.path())
        .await
        .expect_err("endless");
    assert!(err.contains("larger than the 300000 bytes"), "{err}");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    // The connection is gone: the server's writes fail once the socket buffers are full,
    // a few MiB at most on loopback, where an endless download would go on for minutes.
    let settle = std::time::Instant::now();
    let mut last = server.sent.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = server.sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        assert!(
            settle.elapsed() < std::time::Duration::from_secs(30),
            "the server is still sending"
        );
    }
    assert!(
        last < 64 << 20,
        "{last} bytes sent for a 300,000-byte release"
    );
}

#[tokio::test]
async fn a_size_the_signature_does_not_cover_is_refused_before_downloading() {
    let signer = Signer::new();
    let body = agent_bytes();
    let server = hostile(body.clone(), Serve::Longer { extra: 4 << 20 }).await;
    let dir = tempfile::tempdir().expect("tmp");
    // The metadata claims a larger file than was signed (and the server serves that much).
    let info = signer.release(
        &body,
        &server.url,
        true,
        Some(body.len() as u64 + (4 << 20)),
    );
    let err = updater(&signer)
        .download(&info, dir.path())
        .await
        .expect_err("size not signed");
    assert!(err.contains("signature check failed"), "{err}");
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        0,
        "nothing is downloaded for metadata that does not verify"
    );
    // A release signed by another key is refused the same way, before any download.
    let other = Signer::new();
    let info = other.release(&body, &server.url, true, None);
    let err = updater(&signer)
        .download(&info, dir.path())
        .await
        .expect_err("other key");
    assert!(err.contains("not signed by the pinned"), "{err}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
    assert!(leftovers(dir.path()).is_empty());
}

#[tokio::test]
async fn release_metadata_is_asked_of_each_server_in_turn_until_one_answers() {
    let signer = Signer::new();
    let info = signer.release(&agent_bytes(), "http://127.0.0.1:9/agent", true, None);
    let (live, live_asked) = release_node(200, serde_json::to_string(&info).expect("json")).await;
    let (broken, broken_asked) = release_node(503, r#"{"error":{}}"#.to_owned()).await;
    let dead = dead_url();
    // Wherever the random start falls, the live node is asked once per fetch, and the others
    // at most once.
    let updater = updater_for(&signer, &format!("{dead},{broken},{live}"));
    for n in 1..=6 {
        let got = updater.fetch(None).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, info);
        assert_eq!(live_asked.load(Ordering::SeqCst), n);
        assert!(broken_asked.load(Ordering::SeqCst) <= n);
    }

    // When no node answers, each says why (asked once: the pauses between rounds are
    // `updater::fetch`'s own test's).
    let updater = updater_for(&signer, &format!("{dead},{broken}")).with_patience(Duration::ZERO);
    let err = updater.fetch(None).await.expect_err("no answer");
    assert!(err.contains(&dead) && err.contains("503"), "{err}");
}

#[tokio::test]
async fn a_server_that_answers_no_is_not_asked_again_elsewhere() {
    let signer = Signer::new();
    let body = r#"{"error":{"code":"not_found","message":"no release"}}"#.to_owned();
    let (first, first_asked) = release_node(404, body.clone()).await;
    let (second, second_asked) = release_node(404, body).await;
    let updater = updater_for(&signer, &format!("{first},{second}"));
    let err = updater.fetch(None).await.expect_err("no release");
    assert!(err.contains("HTTP 404"), "{err}");
    let asked = first_asked.load(Ordering::SeqCst) + second_asked.load(Ordering::SeqCst);
    assert_eq!(
        asked, 1,
        "every node reads the same releases: one answer is enough"
    );
}

/// One node serving both the release API (`info`, whose agent URL points back at it) and the
/// agent's file: the first `break_first` downloads send half the file under a full
/// `Content-Length` and close (a node killed mid-download); with `corrupt`, every download
/// sends bytes of the right length that hash to something else. Counts metadata requests and
/// downloads.
async fn flaky_node(
    listener: tokio::net::TcpListener,
    info: ReleaseInfo,
    body: Vec<u8>,
    break_first: usize,
    corrupt: bool,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let metadata = Arc::new(AtomicUsize::new(0));
    let downloads = Arc::new(AtomicUsize::new(0));
    let (asked, fetched) = (metadata.clone(), downloads.clone());
    let json = serde_json::to_string(&info).expect("json");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let Some(head) = read_head(&mut socket).await else {
                continue;
            };
            if head.starts_with(b"GET /api/releases/") {
                asked.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                continue;
            }
            let n = fetched.fetch_add(1, Ordering::SeqCst);
            let mut sent = body.clone();
            if corrupt {
                sent.iter_mut().for_each(|b| *b = b.wrapping_add(1));
            }
            let header = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                sent.len()
            );
            let _ = socket.write_all(header.as_bytes()).await;
            if n < break_first {
                let _ = socket.write_all(&sent[..sent.len() / 2]).await;
            } else {
                let _ = socket.write_all(&sent).await;
            }
            // Dropped here: closed, half-way or not.
        }
    });
    (metadata, downloads)
}

/// A node that dies in the middle of the agent's download: the release is asked for again
/// (another node, or this one back) and the download made again; a download that completes
/// but does not verify is not.
#[tokio::test]
async fn a_download_cut_off_is_made_again_and_a_bad_one_is_not() {
    let signer = Signer::new();
    let body = agent_bytes();
    for corrupt in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let info = signer.release(&body, &format!("{base}/downloads/agent"), true, None);
        let (metadata, downloads) =
            flaky_node(listener, info.clone(), body.clone(), 1, corrupt).await;
        let dir = tempfile::tempdir().expect("tmp");
        let updater = updater_for(&signer, &base);
        let got = updater
            .fetch_and_download(None, dir.path(), |_| Ok(Some(())))
            .await;
        if corrupt {
            let Err((seen, why)) = got else {
                panic!("a file that does not verify is refused");
            };
            assert_eq!(seen, Some(info.clone()));
            assert!(why.contains("SHA-256 mismatch"), "{why}");
            // The first try broke off (asked again), the second completed and was refused.
            assert_eq!(downloads.load(Ordering::SeqCst), 2);
            assert_eq!(metadata.load(Ordering::SeqCst), 2);
        } else {
            let (got_info, (), file, sha) = got
                .unwrap_or_else(|(_, why)| panic!("{why}"))
                .expect("a release to install");
            assert_eq!(got_info, info);
            assert_eq!(std::fs::read(&file).expect("read"), body);
            assert_eq!(sha, info.agent.as_ref().expect("agent").sha256);
            assert_eq!(downloads.load(Ordering::SeqCst), 2, "downloaded again");
            assert_eq!(
                metadata.load(Ordering::SeqCst),
                2,
                "the release asked again"
            );
            std::fs::remove_file(file).expect("rm");
        }
        assert!(leftovers(dir.path()).is_empty(), "no partial file is left");
    }
}

/// A supervisor stopped during a download (the future dropped, as at a shutdown) leaves no
/// file behind, and one killed during it (its file left) has that file removed by the next
/// download into the folder.
#[tokio::test]
async fn a_download_stopped_half_way_leaves_no_file() {
    let signer = Signer::new();
    let body = agent_bytes();
    let server = hostile(body.clone(), Serve::Stall).await;
    let dir = tempfile::tempdir().expect("tmp");
    let info = signer.release(&body, &server.url, true, None);
    let updater = Arc::new(updater(&signer));
    let task = tokio::spawn({
        let (updater, info, dir) = (updater.clone(), info.clone(), dir.path().to_owned());
        async move { updater.download(&info, &dir).await }
    });
    // Wait until half the body is written into the file.
    let half = (body.len() / 2) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let written: u64 = std::fs::read_dir(dir.path())
            .expect("ls")
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        if written >= half {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the download never got half-way"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );

    // What a killed supervisor leaves (another pid's name) goes with the next download.
    let stale = dir.path().join(".outpost-agent.download-1-7");
    std::fs::write(&stale, b"half").expect("stale");
    let honest = hostile(body.clone(), Serve::Exact).await;
    let info = signer.release(&body, &honest.url, true, None);
    let (file, _) = updater.download(&info, dir.path()).await.expect("download");
    let name = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert_eq!(leftovers(dir.path()), [name]);
}
