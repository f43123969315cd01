//! TLS client configuration: rustls with the ring provider, the system's roots and an
//! optional extra CA (`OUTPOST_CA_CERT`) for servers with a private certificate; or, with
//! `OUTPOST_CA_FINGERPRINT`, the server's own CA alone, and the agent's certificate
//! (`crate::identity`).
//!
//! The supervisor downloads releases with this same configuration, so both trust exactly the
//! same servers.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Builds the client configuration used for `wss://` and `https://` (agent and supervisor).
pub fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_for(extra_ca, None, None)
}

/// The agent's configuration: with `pinned_ca` (`OUTPOST_CA_FINGERPRINT`), that CA alone is
/// trusted; with `identity`, its certificate is presented (CONTRACT.md §19).
pub fn client_config_for(
    extra_ca: Option<&Path>,
    pinned_ca: Option<&Path>,
    identity: Option<Arc<crate::identity::Identity>>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let roots = match pinned_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            add_pem_roots(&mut roots, path)?;
            roots
        }
        None => system_roots(extra_ca)?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("configuring TLS")?
    .with_root_certificates(roots);
    let config = match identity {
        Some(identity) => {
            let mut config = builder.with_client_cert_resolver(identity);
            // A resumed TLS 1.3 session keeps the client certificate of the handshake it
            // resumes: one resumed from before enrollment (or from an older certificate) would
            // present none, or the old one. Every connection does a full handshake instead.
            config.resumption = rustls::client::Resumption::disabled();
            config
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn add_pem_roots(roots: &mut rustls::RootCertStore, path: &Path) -> anyhow::Result<()> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading CA certificate {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing CA certificate {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", path.display());
    }
    for cert in certs {
        roots
            .add(cert)
            .with_context(|| format!("adding CA certificate {}", path.display()))?;
    }
    Ok(())
}

fn system_roots(extra_ca: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(error = %err, "skipping an unreadable system certificate");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        add_pem_roots(&mut roots, path)?;
    } else if added == 0 {
        tracing::warn!(
            "no system CA certificates found; wss:// and https:// will fail unless OUTPOST_CA_CERT is set"
        );
    }
    Ok(roots)
}
