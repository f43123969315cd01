//! TLS for release downloads: rustls with the ring provider, the system's roots and an
//! optional extra CA (`OUTPOST_CA_CERT`) for servers with a private certificate.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Builds the client configuration for `https://` (the same trust as the agent's).
pub fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(error = %err, "skipping an unreadable system certificate");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
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
    } else if added == 0 {
        tracing::warn!(
            "no system CA certificates found; https:// downloads will fail unless OUTPOST_CA_CERT is set"
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("configuring TLS")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}
