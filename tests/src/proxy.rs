//! A small HTTP proxy standing in for a corporate one: it forwards plain requests to the
//! server and, while told to, refuses WebSocket upgrades or cuts connections that stay open
//! too long (what breaks long polls).
//!
//! It reads only the first request head of each connection to decide, then splices bytes both
//! ways. A WebSocket client always opens a fresh connection for its upgrade, so one look per
//! connection sees every upgrade.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read before giving up on a connection.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Default)]
struct Rules {
    block_upgrades: AtomicBool,
    cut_after: Mutex<Option<Duration>>,
    refused: AtomicUsize,
    upgrades: AtomicUsize,
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    rules: Arc<Rules>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream`, letting everything through.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let rules = Arc::new(Rules::default());
        let shared = rules.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rules = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(client, upstream, rules).await;
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            rules,
            task,
        }
    }

    /// Refuses (403) WebSocket upgrades from now on, or lets them through again.
    pub fn block_upgrades(&self, block: bool) {
        self.rules.block_upgrades.store(block, Ordering::SeqCst);
    }

    /// Cuts a connection whose request waited this long for an answer (None: never).
    pub fn cut_after(&self, limit: Option<Duration>) {
        if let Ok(mut cut) = self.rules.cut_after.lock() {
            *cut = limit;
        }
    }

    /// Upgrades refused so far.
    pub fn refused_upgrades(&self) -> usize {
        self.rules.refused.load(Ordering::SeqCst)
    }

    /// Upgrades let through so far.
    pub fn passed_upgrades(&self) -> usize {
        self.rules.upgrades.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    rules: Arc<Rules>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let upgrade = text
        .lines()
        .any(|l| l.starts_with("upgrade:") && l.contains("websocket"));
    if upgrade && rules.block_upgrades.load(Ordering::SeqCst) {
        rules.refused.fetch_add(1, Ordering::SeqCst);
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 25\r\nConnection: close\r\n\r\nwebsockets are not allowed")
            .await?;
        return client.shutdown().await;
    }
    if upgrade {
        rules.upgrades.fetch_add(1, Ordering::SeqCst);
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    client.set_nodelay(true)?;
    server.write_all(&head).await?;
    let cut = rules.cut_after.lock().ok().and_then(|c| *c);
    match cut {
        Some(limit) => splice_with_response_timeout(client, server, limit).await,
        None => {
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
            Ok(())
        }
    }
}

/// Splices like a proxy with a response timeout: a request that waits longer than `limit`
/// for the first byte of its answer gets its connection cut.
async fn splice_with_response_timeout(
    client: TcpStream,
    server: TcpStream,
    limit: Duration,
) -> std::io::Result<()> {
    use std::time::Instant;
    let waiting: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(Some(Instant::now())));
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let up_waiting = waiting.clone();
    let up = async move {
        let mut buf = [0u8; 8192];
        loop {
            let n = client_rd.read(&mut buf).await?;
            if n == 0 {
                return server_wr.shutdown().await;
            }
            if let Ok(mut w) = up_waiting.lock() {
                w.get_or_insert_with(Instant::now);
            }
            server_wr.write_all(&buf[..n]).await?;
        }
    };
    let down_waiting = waiting.clone();
    let down = async move {
        let mut buf = [0u8; 8192];
        loop {
            let n = server_rd.read(&mut buf).await?;
            if n == 0 {
                return client_wr.shutdown().await;
            }
            if let Ok(mut w) = down_waiting.lock() {
                *w = None;
            }
            client_wr.write_all(&buf[..n]).await?;
        }
    };
    let watchdog = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let overdue = waiting
                .lock()
                .ok()
                .and_then(|w| *w)
                .is_some_and(|since| since.elapsed() > limit);
            if overdue {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down).map(|_| ()) } => r,
        r = watchdog => r,
    }
}
