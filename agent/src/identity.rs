//! The agent's own certificate (CONTRACT.md §19): enrolled once with the agent key, renewed over
//! mutual TLS at two thirds of its life, presented on every connection.
//!
//! Why: with a certificate, the agent key only enrolls. A key copied from this host can no
//! longer speak for this agent once it enrolled, and deleting this agent on the server refuses
//! it alone. The private key is generated here (ECDSA P-256, by ring) and never leaves the state
//! folder (`identity/key.pem`, mode 0600); the server sees only a CSR.
//!
//! The CSR is a few dozen bytes of DER written below rather than through a certificate crate:
//! it is the one X.509 structure the agent writes, and the agent's size matters (the server's
//! parser, rcgen over x509-parser, checks it in the end-to-end tests).
//!
//! With `OUTPOST_CA_FINGERPRINT` the agent trusts exactly the CA with that SHA-256: it fetches
//! the CA once (`GET /agent/v1/ca`, whose TLS certificate cannot be checked yet, which is fine:
//! the answer is checked against the fingerprint and carries nothing secret, and no key is sent
//! on that connection), keeps it in `identity/ca.pem`, and from then on verifies the server
//! against it alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use url::Url;

use outpost_protocol::AgentId;

/// The folder under the state directory.
pub const DIR: &str = "identity";
const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const META_FILE: &str = "cert.json";
/// The CA fetched for `OUTPOST_CA_FINGERPRINT`.
pub const CA_FILE: &str = "ca.pem";
/// Shortest wait between renewal attempts that failed.
const RETRY_MIN: Duration = Duration::from_secs(30);
/// Longest.
const RETRY_MAX: Duration = Duration::from_secs(15 * 60);
/// First wait after an enrollment refused or failed.
const ENROLL_RETRY_MIN: Duration = Duration::from_secs(10);
/// Longest wait between enrollments refused or failed: an agent waiting for an admin to clear
/// it (`agent_revoked`) is back within this of the clearing.
const ENROLL_RETRY_MAX: Duration = Duration::from_secs(60);

/// When the certificate was received and when it expires.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Meta {
    received_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl Meta {
    /// Two thirds into its life, by this machine's clock.
    fn renew_at(&self) -> DateTime<Utc> {
        self.received_at + (self.expires_at - self.received_at) * 2 / 3
    }
}

struct Current {
    certified: Arc<CertifiedKey>,
    meta: Meta,
}

/// The certificate and key the agent presents, swapped in place on renewal. Every connection
/// (WebSocket, long-poll, library downloads) asks it during its TLS handshake.
pub struct Identity {
    dir: PathBuf,
    current: RwLock<Option<Current>>,
    /// Wakes the renewal loop (the certificate was dropped) and whoever waits for a new one.
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("dir", &self.dir)
            .field("expires_at", &self.expires_at())
            .finish()
    }
}

/// The server's answer to `enroll` and `renew`.
#[derive(Debug, Deserialize)]
struct Issued {
    certificate: String,
    expires_at: DateTime<Utc>,
}

/// What an enrollment attempt came to.
#[derive(Debug)]
pub enum Enrolled {
    /// A certificate was issued and is in use.
    Yes,
    /// The server has no CA (it does not serve TLS itself): the agent goes on with its key.
    NoCa,
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.read().as_ref().map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.read().is_some()
    }
}

impl Identity {
    /// The identity kept in `dir` (`<state>/identity`), if a certificate there is still good;
    /// else an empty one that [`enroll`](Self::enroll) fills.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        crate::platform::create_private_dir(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let identity = Self {
            dir: dir.to_owned(),
            current: RwLock::new(None),
            changed: tokio::sync::Notify::new(),
        };
        match identity.read_files() {
            Ok(Some(current)) if current.meta.expires_at > Utc::now() => {
                tracing::info!(expires_at = %current.meta.expires_at, "agent certificate loaded");
                *identity.write() = Some(current);
            }
            Ok(Some(current)) => {
                tracing::warn!(expired_at = %current.meta.expires_at, "the agent certificate has expired; enrolling again");
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "the agent certificate in the state folder cannot be used; enrolling again");
            }
        }
        Ok(identity)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Current>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Current>> {
        self.current.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the certificate in use expires; `None` before enrollment.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.read().as_ref().map(|c| c.meta.expires_at)
    }

    /// Whether a certificate is in use.
    pub fn is_enrolled(&self) -> bool {
        self.read().is_some()
    }

    fn read_files(&self) -> anyhow::Result<Option<Current>> {
        let meta_path = self.dir.join(META_FILE);
        let meta = match std::fs::read(&meta_path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", meta_path.display()));
            }
        };
        let meta: Meta = serde_json::from_slice(&meta)
            .with_context(|| format!("reading {}", meta_path.display()))?;
        let cert = std::fs::read(self.dir.join(CERT_FILE)).context("reading cert.pem")?;
        let key = std::fs::read(self.dir.join(KEY_FILE)).context("reading key.pem")?;
        let certified = certified_key(&cert, &key)?;
        Ok(Some(Current {
            certified: Arc::new(certified),
            meta,
        }))
    }

    /// Keeps a certificate just issued for `key_der` (PKCS#8) and uses it from the next
    /// handshake on.
    fn install(&self, key_der: &[u8], issued: &Issued) -> anyhow::Result<()> {
        let key_pem = pem("PRIVATE KEY", key_der);
        let certified = certified_key(issued.certificate.as_bytes(), key_pem.as_bytes())?;
        let meta = Meta {
            received_at: Utc::now(),
            expires_at: issued.expires_at,
        };
        // The key first: a crash in between leaves a certificate whose key does not match,
        // which `load` refuses (and enrolls again), never a certificate with no key.
        crate::platform::write_private_file(&self.dir.join(KEY_FILE), key_pem.as_bytes())?;
        crate::platform::write_private_file(
            &self.dir.join(CERT_FILE),
            issued.certificate.as_bytes(),
        )?;
        crate::platform::write_private_file(
            &self.dir.join(META_FILE),
            &serde_json::to_vec(&meta)?,
        )?;
        *self.write() = Some(Current {
            certified: Arc::new(certified),
            meta,
        });
        self.changed.notify_waiters();
        Ok(())
    }

    /// Drops the certificate in use (the server revoked it): the renewal loop enrolls again.
    pub fn forget(&self) {
        if self.write().take().is_some() {
            tracing::warn!(
                "the server revoked this agent's certificate; enrolling again (refused until an admin clears the agent)"
            );
            for file in [META_FILE, CERT_FILE, KEY_FILE] {
                let _ = std::fs::remove_file(self.dir.join(file));
            }
        }
        self.changed.notify_waiters();
    }

    /// Resolves once a certificate is in use (at once if one is).
    pub async fn enrolled(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_enrolled() {
                return;
            }
            changed.await;
        }
    }

    /// `POST /agent/v1/enroll` with the agent key: a new key, a CSR, the certificate.
    pub async fn enroll(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        server: &Url,
        agent_key: &str,
        agent_id: AgentId,
    ) -> anyhow::Result<Enrolled> {
        let (key_der, csr) = new_key_and_csr(agent_id)?;
        let client = fresh_client(tls)?;
        let url = endpoint(server, "agent/v1/enroll")?;
        let response = client
            .post(url)
            .bearer_auth(agent_key)
            .json(&serde_json::json!({"agent_id": agent_id, "csr": csr}))
            .send()
            .await
            .context("enrolling")?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Enrolled::NoCa);
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!(
                "enrollment refused ({status}): {}",
                body.chars().take(500).collect::<String>()
            );
        }
        let issued: Issued = response.json().await.context("reading the certificate")?;
        self.install(&key_der, &issued)?;
        tracing::info!(expires_at = %issued.expires_at, "enrolled: the agent connects with its certificate from now on");
        Ok(Enrolled::Yes)
    }

    /// Enrolls with the first server that answers; `None` when none did (each failure logged).
    pub async fn enroll_any(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        servers: &[Url],
        agent_key: &str,
        agent_id: AgentId,
    ) -> Option<Enrolled> {
        for server in servers {
            match self.enroll(tls, server, agent_key, agent_id).await {
                Ok(outcome) => return Some(outcome),
                Err(err) => {
                    tracing::warn!(server = %crate::config::url_for_logs(server), error = %format!("{err:#}"), "could not enroll; the agent connects with its key meanwhile");
                }
            }
        }
        None
    }

    /// `POST /agent/v1/renew` over mutual TLS with the current certificate, for a new key.
    pub async fn renew(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        server: &Url,
        agent_id: AgentId,
    ) -> anyhow::Result<()> {
        let (key_der, csr) = new_key_and_csr(agent_id)?;
        let client = fresh_client(tls)?;
        let url = endpoint(server, "agent/v1/renew")?;
        let response = client
            .post(url)
            .json(&serde_json::json!({"csr": csr}))
            .send()
            .await
            .context("renewing")?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!(
                "renewal refused ({status}): {}",
                body.chars().take(500).collect::<String>()
            );
        }
        let issued: Issued = response.json().await.context("reading the certificate")?;
        self.install(&key_der, &issued)?;
        tracing::info!(expires_at = %issued.expires_at, "agent certificate renewed");
        Ok(())
    }

    /// Renews at two thirds of each certificate's life until `shutdown`, trying each server
    /// in turn and again with a growing wait when none answers. A certificate that runs out
    /// un-renewed is dropped, so that the next connection enrolls again with the key.
    pub async fn keep_renewed(
        self: Arc<Self>,
        tls: Arc<rustls::ClientConfig>,
        servers: Vec<Url>,
        agent_id: AgentId,
        agent_key: String,
        shutdown: CancellationToken,
    ) {
        let mut retry = RETRY_MIN;
        let mut enroll_retry = ENROLL_RETRY_MIN;
        loop {
            if !self.is_enrolled() {
                match self.enroll_any(&tls, &servers, &agent_key, agent_id).await {
                    Some(Enrolled::Yes) => {
                        retry = RETRY_MIN;
                        enroll_retry = ENROLL_RETRY_MIN;
                    }
                    // The servers have no CA: nothing to renew, the agent uses its key.
                    Some(Enrolled::NoCa) => return,
                    None => {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(enroll_retry) => {}
                        }
                        enroll_retry = (enroll_retry * 2).min(ENROLL_RETRY_MAX);
                        continue;
                    }
                }
            }
            let renew_at = self.read().as_ref().map(|c| c.meta.renew_at());
            let wait = match renew_at {
                Some(at) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                None => continue,
            };
            let changed = self.changed.notified();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                // Dropped (revoked): enroll at once.
                () = changed => continue,
            }
            let mut renewed = false;
            for server in &servers {
                match self.renew(&tls, server, agent_id).await {
                    Ok(()) => {
                        renewed = true;
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(server = %crate::config::url_for_logs(server), error = %format!("{err:#}"), "could not renew the agent certificate");
                    }
                }
            }
            if renewed {
                retry = RETRY_MIN;
                continue;
            }
            if self.expires_at().is_some_and(|at| at <= Utc::now()) {
                tracing::warn!(
                    "the agent certificate expired before it could be renewed; the agent enrolls again with its key"
                );
                *self.write() = None;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}

/// The TLS configuration the agent connects with: the pinned CA (`OUTPOST_CA_FINGERPRINT`,
/// fetched until a server answers) and, when the servers serve TLS and `OUTPOST_ENROLL` is on,
/// the agent's certificate, enrolled now if it has none and kept renewed in the background.
/// `None` if `shutdown` came first.
pub async fn setup(
    agent: &Arc<crate::Agent>,
    servers: &[Url],
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Arc<rustls::ClientConfig>, Option<Arc<Identity>>)>> {
    let config = &agent.config;
    let dir = config.state_dir().join(DIR);
    let pinned = match &config.ca_fingerprint {
        None => None,
        Some(fingerprint) => {
            normalize_fingerprint(fingerprint)?;
            let mut wait = Duration::from_secs(2);
            loop {
                match pinned_ca(&dir, fingerprint, config.ca_cert.as_deref(), servers).await {
                    Ok(path) => break Some(path),
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), retry_in_s = wait.as_secs(), "cannot trust the server yet");
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(None),
                            () = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(Duration::from_secs(60));
                    }
                }
            }
        }
    };
    let over_tls = servers
        .iter()
        .all(|u| matches!(u.scheme(), "https" | "wss"));
    let identity = (config.enroll && over_tls)
        .then(|| Identity::load(&dir).map(Arc::new))
        .transpose()?;
    let extra_ca = if pinned.is_some() {
        None
    } else {
        config.ca_cert.as_deref()
    };
    let tls = crate::tls::client_config_for(extra_ca, pinned.as_deref(), identity.clone())?;
    if let Some(identity) = identity.clone() {
        let agent_id = agent.agent_id;
        // Enrolled before the first connection, so that it already presents the certificate
        // (under `--agent-auth cert` it must); a failure leaves the key in use and the
        // background loop tries again.
        let mut no_ca = false;
        if !identity.is_enrolled() {
            no_ca = matches!(
                identity
                    .enroll_any(&tls, servers, config.key(), agent_id)
                    .await,
                Some(Enrolled::NoCa)
            );
            if no_ca {
                tracing::info!("the server has no agent CA; connecting with the agent key");
            }
        }
        if !no_ca {
            tokio::spawn(identity.keep_renewed(
                tls.clone(),
                servers.to_vec(),
                agent_id,
                config.key().to_owned(),
                shutdown.clone(),
            ));
        }
    }
    Ok(Some((tls, identity)))
}

/// A client that opens connections of its own, so that the certificate presented is the one
/// in use now (a pooled connection keeps the one of its handshake).
fn fresh_client(tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .user_agent(concat!("outpost-agent/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// `<server>/<path>` over http(s), whatever scheme `--server-url` used.
fn endpoint(server: &Url, path: &str) -> anyhow::Result<Url> {
    let mut url = crate::endpoint::with_scheme(server.as_str(), "http", "https")?;
    let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    Ok(url)
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate is not PEM")?;
    if chain.is_empty() {
        bail!("no certificate in cert.pem");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("the key is not PEM")?;
    let key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .context("the key cannot be used")?;
    let certified = CertifiedKey::new(chain, key);
    certified
        .keys_match()
        .context("the certificate is not for this key")?;
    Ok(certified)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A new ECDSA P-256 key (PKCS#8 DER) and a PEM CSR for it whose subject is `CN=<agent id>`.
pub fn new_key_and_csr(agent_id: AgentId) -> anyhow::Result<(Vec<u8>, String)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("could not generate a key"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("could not load the key just generated"))?;
    let csr = csr_der(&key, &agent_id.to_string(), &rng)?;
    // Checked as rustls will load it.
    let _ = PrivatePkcs8KeyDer::from(pkcs8.as_ref());
    Ok((pkcs8.as_ref().to_vec(), pem("CERTIFICATE REQUEST", &csr)))
}

/// DER: a tag and its contents.
fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(contents);
    out
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// id-ecPublicKey (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// ecdsa-with-SHA256 (1.2.840.10045.4.3.2).
const OID_ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// commonName (2.5.4.3).
const OID_CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

/// A PKCS#10 request (RFC 2986) for `key`, subject `CN=<cn>`, no attributes.
fn csr_der(key: &EcdsaKeyPair, cn: &str, rng: &SystemRandom) -> anyhow::Result<Vec<u8>> {
    let name = tlv(
        SEQUENCE,
        &tlv(
            SET,
            &tlv(SEQUENCE, &[OID_CN, &tlv(0x0c, cn.as_bytes())].concat()),
        ),
    );
    let mut bits = vec![0u8];
    bits.extend_from_slice(key.public_key().as_ref());
    let spki = tlv(
        SEQUENCE,
        &[
            tlv(SEQUENCE, &[OID_EC_PUBLIC_KEY, OID_P256].concat()),
            tlv(0x03, &bits),
        ]
        .concat(),
    );
    let info = tlv(
        SEQUENCE,
        &[
            vec![0x02, 0x01, 0x00],
            name,
            spki,
            // attributes [0] IMPLICIT SET OF: empty.
            vec![0xa0, 0x00],
        ]
        .concat(),
    );
    let signature = key
        .sign(rng, &info)
        .map_err(|_| anyhow::anyhow!("could not sign the CSR"))?;
    let mut sig_bits = vec![0u8];
    sig_bits.extend_from_slice(signature.as_ref());
    Ok(tlv(
        SEQUENCE,
        &[info, tlv(SEQUENCE, OID_ECDSA_SHA256), tlv(0x03, &sig_bits)].concat(),
    ))
}

/// Lowercase hex SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `OUTPOST_CA_FINGERPRINT` as 64 lowercase hex digits (colons and case ignored).
pub fn normalize_fingerprint(text: &str) -> anyhow::Result<String> {
    let clean: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if clean.len() != 64 || !clean.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("OUTPOST_CA_FINGERPRINT must be the CA certificate's SHA-256: 64 hex digits");
    }
    Ok(clean)
}

/// The CA to trust alone for `OUTPOST_CA_FINGERPRINT`: `OUTPOST_CA_CERT` if given (it must
/// match), else `identity/ca.pem`, fetched from the first server that answers with a CA of that
/// fingerprint.
pub async fn pinned_ca(
    dir: &Path,
    fingerprint: &str,
    given: Option<&Path>,
    servers: &[Url],
) -> anyhow::Result<PathBuf> {
    let fingerprint = normalize_fingerprint(fingerprint)?;
    let matches = |pem_bytes: &[u8]| -> bool {
        CertificateDer::pem_slice_iter(pem_bytes)
            .next()
            .and_then(Result::ok)
            .is_some_and(|der| sha256_hex(&der) == fingerprint)
    };
    if let Some(path) = given {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if !matches(&bytes) {
            bail!(
                "OUTPOST_CA_CERT {} is not the CA of OUTPOST_CA_FINGERPRINT",
                path.display()
            );
        }
        return Ok(path.to_owned());
    }
    crate::platform::create_private_dir(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(CA_FILE);
    if std::fs::read(&path).is_ok_and(|b| matches(&b)) {
        return Ok(path);
    }
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(unverified_tls()?)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let mut last = None;
    for server in servers {
        let url = endpoint(server, "agent/v1/ca")?;
        let fetched = async {
            let response = client.get(url).send().await?.error_for_status()?;
            anyhow::Ok(response.bytes().await?)
        }
        .await;
        match fetched {
            Ok(bytes) if matches(&bytes) => {
                crate::platform::write_private_file(&path, &bytes)?;
                tracing::info!(fingerprint = %fingerprint, "trusting the server's CA (OUTPOST_CA_FINGERPRINT)");
                return Ok(path);
            }
            Ok(_) => {
                last = Some(anyhow::anyhow!(
                    "{} served a CA whose fingerprint is not OUTPOST_CA_FINGERPRINT: refusing it",
                    crate::config::url_for_logs(server)
                ));
            }
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no server")))
        .context("fetching the CA of OUTPOST_CA_FINGERPRINT")
}

/// A TLS configuration that accepts any server certificate (signatures in the handshake are
/// still checked): only for fetching the public CA, whose bytes are then checked against the
/// fingerprint.
fn unverified_tls() -> anyhow::Result<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &rustls::pki_types::ServerName<'_>,
            _ocsp_response: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("configuring TLS")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_der() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        assert_eq!(&tlv(0x04, &[0; 200])[..3], &[0x04, 0x81, 200]);
        assert_eq!(&tlv(0x04, &[0; 300])[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn fingerprints_take_colons_and_capitals() {
        let hex = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_fingerprint(&hex).expect("ok"), "ab".repeat(32));
        assert!(normalize_fingerprint("abc").is_err());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn renewal_is_at_two_thirds() {
        let received_at = Utc::now();
        let meta = Meta {
            received_at,
            expires_at: received_at + chrono::Duration::seconds(90),
        };
        assert_eq!(meta.renew_at(), received_at + chrono::Duration::seconds(60));
    }

    #[test]
    fn a_csr_is_der_the_key_signs() {
        let id: AgentId = uuid::Uuid::now_v7();
        let (key, csr) = new_key_and_csr(id).expect("csr");
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        assert!(PrivateKeyDer::try_from(key.as_slice()).is_ok());
    }
}
