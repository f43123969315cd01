//! The server's certificate authority for agents (CONTRACT.md §19): its key, the certificates
//! it issues to agents from their CSRs, and the server's own TLS certificate (`--tls-auto`).
//!
//! Why a CA of our own rather than long-lived keys: a certificate names one agent, so a key
//! copied from one host no longer speaks for the fleet, and one stolen machine is refused by
//! revoking its agent alone. The agent generates its key and sends only a CSR; the CA never
//! sees an agent's private key.
//!
//! The CA's key (ECDSA P-256) is made on first start and kept in the database sealed under the
//! master key, so every node signs with the same CA and a restart keeps every agent's
//! identity; an operator may bring their own (`--agent-ca-cert`, `--agent-ca-key`) instead. The
//! server's TLS key is kept the same way, so that the install line's pin of it
//! (`curl --pinnedpubkey`) holds across restarts and nodes; its certificate is re-issued when
//! a third of its life is left.
//!
//! What a CSR may ask for is narrow on purpose: ECDSA P-256 or P-384, or Ed25519 (RSA and
//! other curves are refused: our agents never make them, and refusing them refuses weak RSA
//! sizes too); a subject that is empty or names exactly the agent enrolling; no other
//! extension than a SAN naming that agent. Whatever it asks, the certificate's subject, SAN,
//! dates and usages are ours.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use ring::digest;

use outpost_store::Store;
use outpost_store::seal::MasterKey;

/// The `pki_keys` row of the agent CA.
pub const CA_ROW: &str = "agent_ca";
/// The `pki_keys` row of the server's own TLS key (`--tls-auto`).
pub const SERVER_ROW: &str = "server_tls";
/// The seal context of both rows' private keys.
const SEAL_CONTEXT: &str = "pki key";
/// How far back a certificate's `notBefore` is set: an agent or server whose clock is behind by
/// up to this much still accepts a certificate issued just now.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);
/// Default life of an agent certificate (`--agent-cert-validity`).
pub const DEFAULT_AGENT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Life of the server's own certificate (`--tls-auto`).
pub const SERVER_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Life of a CA made by the server.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Largest CSR accepted, PEM.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// Why a CSR was refused: the message names what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CsrRefused(pub String);

/// A certificate just issued to an agent.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM.
    pub certificate: String,
    /// Lowercase hex SHA-256 of the DER (the `agent_certs` key).
    pub fingerprint: String,
    /// Lowercase hex SHA-256 of the certified SubjectPublicKeyInfo.
    pub public_key: String,
    /// Hex serial.
    pub serial: String,
    /// When its life starts as recorded (its `notBefore` is [`CLOCK_SKEW`] earlier).
    pub issued_at: DateTime<Utc>,
    /// `notAfter`.
    pub expires_at: DateTime<Utc>,
}

/// A CSR checked for an agent: its key, to certify.
pub struct CheckedCsr {
    csr: CertificateSigningRequestParams,
    /// Lowercase hex SHA-256 of the SubjectPublicKeyInfo.
    pub public_key: String,
}

/// The agents' CA.
pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pem: String,
    /// The CA certificate, DER.
    der: Vec<u8>,
    /// Lowercase hex SHA-256 of the DER: what the install line pins.
    fingerprint: String,
    /// Life of the agent certificates it issues.
    validity: Duration,
}

impl std::fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCa")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

/// The URI SAN of an agent's certificate.
pub fn agent_uri(tenant_id: &str, agent_id: &str) -> String {
    format!("outpost://{tenant_id}/agents/{agent_id}")
}

fn to_time(at: DateTime<Utc>) -> anyhow::Result<time::OffsetDateTime> {
    Ok(time::OffsetDateTime::from_unix_timestamp(at.timestamp())?)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn random_serial() -> anyhow::Result<(SerialNumber, String)> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for a serial number"))?;
    // Positive, as DER integers of serials must be.
    bytes[0] &= 0x7f;
    Ok((SerialNumber::from_slice(&bytes), hex::encode(bytes)))
}

fn pem_der(pem_text: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem_text.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    Ok(der.to_vec())
}

impl AgentCa {
    /// The CA stored in the database, made and stored on the first start of the first node.
    pub async fn load_or_create(
        store: &Store,
        master: &MasterKey,
        validity: Duration,
    ) -> anyhow::Result<Self> {
        let row = match store.pki_key(CA_ROW).await? {
            Some(row) => row,
            None => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::default();
                let mut name = DistinguishedName::new();
                name.push(DnType::CommonName, "Outpost agent CA");
                params.distinguished_name = name;
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                let now = Utc::now();
                params.not_before = to_time(now - chrono_duration(CLOCK_SKEW))?;
                params.not_after = to_time(now + chrono_duration(CA_VALIDITY))?;
                params.serial_number = Some(random_serial()?.0);
                let cert = params.self_signed(&key)?;
                let sealed = master.seal(SEAL_CONTEXT, key.serialize_pem().as_bytes());
                // Another node may have stored its CA meanwhile: then that one is used.
                store.put_pki_key_once(CA_ROW, &cert.pem(), &sealed).await?
            }
        };
        let key_pem = master.open(SEAL_CONTEXT, &row.private_key).map_err(|e| {
            anyhow::anyhow!("the agent CA's key cannot be opened with this master key: {e}")
        })?;
        let key_pem = String::from_utf8(key_pem)?;
        Self::from_pem(&row.certificate, &key_pem, validity)
    }

    /// An operator's CA, from PEM files' text.
    pub fn from_pem(cert_pem: &str, key_pem: &str, validity: Duration) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            anyhow::anyhow!("the CA key is not a PKCS#8 PEM key rcgen can use: {e}")
        })?;
        let der = pem_der(cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .map_err(|e| anyhow::anyhow!("the CA certificate cannot be read: {e}"))?;
        Ok(Self {
            issuer,
            pem: cert_pem.to_owned(),
            fingerprint: sha256_hex(&der),
            der,
            validity,
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Life of the agent certificates issued.
    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// Checks a CSR for `agent_id` (see the module doc for what it may ask).
    pub fn check_csr(
        &self,
        csr_pem: &str,
        tenant_id: &str,
        agent_id: &str,
    ) -> Result<CheckedCsr, CsrRefused> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CsrRefused(format!(
                "csr: larger than {MAX_CSR_BYTES} bytes"
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CsrRefused(format!(
                "csr: not a PEM certificate request with a valid self-signature ({e}); the key must be ECDSA P-256 or P-384, or Ed25519 (RSA is refused)"
            ))
        })?;
        let alg = csr.public_key.algorithm();
        let raw = csr.public_key.der_bytes();
        let strong = (alg == &rcgen::PKCS_ECDSA_P256_SHA256 && raw.len() == 65)
            || (alg == &rcgen::PKCS_ECDSA_P384_SHA384 && raw.len() == 97)
            || (alg == &rcgen::PKCS_ED25519 && raw.len() == 32);
        if !strong {
            return Err(CsrRefused(
                "csr: the key must be ECDSA P-256 or P-384, or Ed25519 (RSA and other curves are refused)"
                    .into(),
            ));
        }
        for (kind, value) in csr.params.distinguished_name.iter() {
            let text = match value {
                DnValue::Utf8String(s) => s.clone(),
                DnValue::PrintableString(s) => s.as_str().to_owned(),
                DnValue::Ia5String(s) => s.as_str().to_owned(),
                _ => String::from("(unreadable)"),
            };
            if *kind != DnType::CommonName || text != agent_id {
                return Err(CsrRefused(format!(
                    "csr: its subject may only name the agent enrolling (CN={agent_id}), not {text:?}"
                )));
            }
        }
        let uri = agent_uri(tenant_id, agent_id);
        for san in &csr.params.subject_alt_names {
            let ok = matches!(san, SanType::URI(u) if u.as_str() == uri);
            if !ok {
                return Err(CsrRefused(format!(
                    "csr: its subject alternative names may only be {uri}"
                )));
            }
        }
        if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(CsrRefused("csr: asks to be a CA".into()));
        }
        let public_key = sha256_hex(&csr.public_key.subject_public_key_info());
        Ok(CheckedCsr { csr, public_key })
    }

    /// Issues the certificate of `agent_id` in `tenant_id` for a checked CSR, valid from
    /// `now` for [`validity`](Self::validity).
    pub fn issue_agent(
        &self,
        csr: CheckedCsr,
        tenant_id: &str,
        agent_id: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, agent_id);
        name.push(
            DnType::OrganizationName,
            format!("Outpost tenant {tenant_id}"),
        );
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(agent_uri(tenant_id, agent_id).try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let expires_at = now + chrono_duration(self.validity);
        params.not_before = to_time(now - chrono_duration(CLOCK_SKEW))?;
        params.not_after = to_time(expires_at)?;
        let (serial, serial_hex) = random_serial()?;
        params.serial_number = Some(serial);
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.csr.public_key,
        };
        let cert = request.signed_by(&self.issuer)?;
        Ok(Issued {
            fingerprint: sha256_hex(cert.der()),
            certificate: cert.pem(),
            public_key: csr.public_key,
            serial: serial_hex,
            issued_at: now,
            expires_at: DateTime::from_timestamp(expires_at.timestamp(), 0).unwrap_or(expires_at),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses) over the key `key`.
    fn issue_server(
        &self,
        key: &KeyPair,
        names: &[String],
        now: DateTime<Utc>,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| "outpost".into()),
        );
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let expires_at = now + chrono_duration(SERVER_VALIDITY);
        params.not_before = to_time(now - chrono_duration(CLOCK_SKEW))?;
        params.not_after = to_time(expires_at)?;
        params.serial_number = Some(random_serial()?.0);
        let cert = params.signed_by(key, &self.issuer)?;
        Ok((cert.pem(), expires_at))
    }
}

/// The server's own TLS identity under `--tls-auto`: a key kept in the database (sealed) and a
/// certificate from the agent CA for the names given.
pub struct ServerIdentity {
    /// The certificate chain (leaf, then the CA), PEM.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// When the leaf expires.
    pub expires_at: DateTime<Utc>,
    /// `sha256//<base64>` of the key's SubjectPublicKeyInfo: what `curl --pinnedpubkey` takes.
    pub pin: String,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("expires_at", &self.expires_at)
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

/// The server's TLS key (made and stored on first use) with a certificate for `names` issued
/// now by `ca`; the stored certificate is reused while it names the same hosts and has more than
/// a third of its life left.
pub async fn server_identity(
    store: &Store,
    master: &MasterKey,
    ca: &AgentCa,
    names: &[String],
) -> anyhow::Result<ServerIdentity> {
    let now = Utc::now();
    let row = match store.pki_key(SERVER_ROW).await? {
        Some(row) => row,
        None => {
            let key = KeyPair::generate()?;
            let (cert, _) = ca.issue_server(&key, names, now)?;
            let sealed = master.seal(SEAL_CONTEXT, key.serialize_pem().as_bytes());
            store.put_pki_key_once(SERVER_ROW, &cert, &sealed).await?
        }
    };
    let key_pem = String::from_utf8(master.open(SEAL_CONTEXT, &row.private_key).map_err(|e| {
        anyhow::anyhow!("the server's TLS key cannot be opened with this master key: {e}")
    })?)?;
    let key = KeyPair::from_pem(&key_pem)?;
    let stored = stored_server_cert(&row.certificate, names, ca);
    let (cert, expires_at) = match stored {
        Some(expires_at) if expires_at - now > chrono_duration(SERVER_VALIDITY) / 3 => {
            (row.certificate.clone(), expires_at)
        }
        _ => {
            let (cert, expires_at) = ca.issue_server(&key, names, now)?;
            store.set_pki_certificate(SERVER_ROW, &cert).await?;
            (cert, expires_at)
        }
    };
    use base64::Engine as _;
    let pin = format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(digest::digest(
            &digest::SHA256,
            &key.subject_public_key_info()
        ))
    );
    Ok(ServerIdentity {
        chain_pem: format!("{cert}{}", ca.pem()),
        key_pem,
        expires_at,
        pin,
    })
}

/// When the stored server certificate expires, if it was issued by `ca` for exactly `names`.
fn stored_server_cert(pem_text: &str, names: &[String], ca: &AgentCa) -> Option<DateTime<Utc>> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let der = pem_der(pem_text).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let (_, ca_cert) = X509Certificate::from_der(ca.der()).ok()?;
    if cert.issuer() != ca_cert.subject()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return None;
    }
    let mut have: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut want: Vec<String> = names.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return None;
    }
    DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
}

/// Shared handle.
pub type SharedCa = Arc<AgentCa>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> AgentCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca");
        AgentCa::from_pem(&cert.pem(), &key.serialize_pem(), DEFAULT_AGENT_VALIDITY).expect("ca")
    }

    fn csr(subject: Option<&str>, san: Option<&str>, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        if let Some(cn) = subject {
            name.push(DnType::CommonName, cn);
        }
        params.distinguished_name = name;
        if let Some(uri) = san {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
        }
        params
            .serialize_request(key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn a_csr_for_the_agent_is_certified_with_our_names_and_dates() {
        let ca = ca();
        let key = KeyPair::generate().expect("key");
        let pem = csr(Some("a1"), Some(&agent_uri("t1", "a1")), &key);
        let checked = ca.check_csr(&pem, "t1", "a1").expect("accepted");
        let now = Utc::now();
        let issued = ca.issue_agent(checked, "t1", "a1", now).expect("issued");
        assert_eq!(
            issued.expires_at.timestamp(),
            (now + chrono_duration(DEFAULT_AGENT_VALIDITY)).timestamp()
        );
        let der = pem_der(&issued.certificate).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.der()).expect("x509");
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA");
        let san = cert.subject_alternative_name().expect("ok").expect("a SAN");
        assert_eq!(
            format!("{:?}", san.value.general_names),
            format!(
                "{:?}",
                [x509_parser::extensions::GeneralName::URI(
                    "outpost://t1/agents/a1"
                )]
            )
        );
        assert!(cert.validity().not_before.timestamp() <= now.timestamp() - 3599);
        assert_eq!(sha256_hex(&der), issued.fingerprint);
        // An empty subject is fine too.
        let pem = csr(None, None, &KeyPair::generate().expect("key"));
        ca.check_csr(&pem, "t1", "a1").expect("empty subject");
    }

    #[test]
    fn a_csr_naming_another_agent_or_with_a_weak_key_is_refused() {
        let ca = ca();
        let key = KeyPair::generate().expect("key");
        let err = ca
            .check_csr(&csr(Some("a2"), None, &key), "t1", "a1")
            .err()
            .expect("refused");
        assert!(err.0.contains("subject"), "{err}");
        let err = ca
            .check_csr(&csr(None, Some(&agent_uri("t1", "a2")), &key), "t1", "a1")
            .err()
            .expect("refused");
        assert!(err.0.contains("alternative names"), "{err}");
        let err = ca
            .check_csr(&csr(None, Some(&agent_uri("t2", "a1")), &key), "t1", "a1")
            .err()
            .expect("another tenant refused");
        assert!(err.0.contains("alternative names"), "{err}");
        let err = ca
            .check_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "t1",
                "a1",
            )
            .err()
            .expect("garbage");
        assert!(err.0.contains("not a PEM certificate request"), "{err}");
        let big = "A".repeat(MAX_CSR_BYTES + 1);
        assert!(ca.check_csr(&big, "t1", "a1").is_err());
        // A tampered CSR: its signature no longer covers its subject.
        let good = csr(Some("a1"), None, &key);
        let der = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
                .expect("pem")
        };
        let mut bytes = der.as_ref().to_vec();
        let at = bytes
            .windows(2)
            .position(|w| w == b"a1")
            .expect("subject in the DER");
        bytes[at + 1] = b'2';
        let tampered = {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).expect("ascii"))
                .collect();
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
                lines.join("\n")
            )
        };
        let err = ca
            .check_csr(&tampered, "t1", "a1")
            .err()
            .expect("bad signature");
        assert!(err.0.contains("self-signature"), "{err}");
    }

    #[test]
    fn an_rsa_csr_is_refused_as_weak() {
        // RSA keys cannot be generated with ring; a CSR made by openssl for a 1024-bit key.
        let pem = include_str!("pki_test_rsa1024.csr");
        let err = ca().check_csr(pem, "t1", "a1").err().expect("refused");
        assert!(err.0.contains("RSA"), "{err}");
    }
}
