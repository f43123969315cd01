//! Secrets at rest: sealed with AES-256-GCM under the master key (`OUTPOST_MASTER_KEY`).
//!
//! The database then holds no usable secret on its own: a stolen backup without the master key
//! reveals no webhook signing secret. Each value gets a fresh random nonce; the stored form is
//! base64 of `nonce || ciphertext || tag`, and the tenant id is bound in as associated data, so
//! a sealed value copied to another tenant's row does not open.
//!
//! The master key also keys the fingerprints of requests ([`MasterKey::fingerprint`]): an
//! HMAC-SHA256 under a key derived from it, so that a stored fingerprint of a request holding
//! a secret parameter cannot be used to guess that secret without the master key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// The master key.
pub struct MasterKey(LessSafeKey, hmac::Key, hkdf::Prk);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Parses 32 bytes given as 64 hex digits or as base64.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| STANDARD.decode(text).ok())
            .ok_or("OUTPOST_MASTER_KEY must be 32 bytes as 64 hex digits or base64")?;
        if bytes.len() != 32 {
            return Err(format!(
                "OUTPOST_MASTER_KEY must be 32 bytes, not {}",
                bytes.len()
            ));
        }
        Self::from_bytes(&bytes)
    }

    /// A new random key, as 64 hex digits.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the operating system's random source failed");
        hex::encode(bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| "bad AES-256 key".to_owned())?;
        // A key of its own for fingerprints, derived rather than reused across algorithms.
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"outpost request fingerprint v1",
        );
        let fingerprints = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"outpost master key derivation v1").extract(bytes);
        Ok(Self(LessSafeKey::new(key), fingerprints, prk))
    }

    /// A keyed fingerprint (hex HMAC-SHA256) of `data`, bound to `context` (the tenant id):
    /// equal for equal inputs under the same master key, useless without it.
    pub fn fingerprint(&self, context: &str, data: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.1);
        ctx.update(context.as_bytes());
        ctx.update(&[0]);
        ctx.update(data);
        hex::encode(ctx.sign().as_ref())
    }

    /// 32 bytes derived from the master key for `label` (HKDF-SHA256): the same on every node
    /// with the same master key, unrelated between labels.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let info = [label];
        // HKDF-SHA256 gives up to 255 * 32 bytes; 32 always fit.
        if let Ok(okm) = self.2.expand(&info, hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut out);
        }
        out
    }

    /// Seals `plain`, bound to `context` (for example the tenant id).
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random source failed");
        let mut buffer = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .expect("AES-GCM sealing cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        STANDARD.encode(out)
    }

    /// Opens a value sealed with the same key and context.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let raw = STANDARD
            .decode(sealed)
            .map_err(|_| "sealed value is not base64".to_owned())?;
        if raw.len() < NONCE_LEN {
            return Err("sealed value is too short".into());
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_owned())?;
        let mut buffer = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| {
                "cannot open a sealed value: wrong OUTPOST_MASTER_KEY or tampered data".to_owned()
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_context() {
        let key = MasterKey::parse(&MasterKey::generate()).expect("key");
        let sealed = key.seal("tenant-a", b"whsec");
        assert_ne!(
            sealed,
            key.seal("tenant-a", b"whsec"),
            "fresh nonce each time"
        );
        assert_eq!(key.open("tenant-a", &sealed).expect("open"), b"whsec");
        assert!(
            key.open("tenant-b", &sealed).is_err(),
            "bound to its context"
        );
        let other = MasterKey::parse(&MasterKey::generate()).expect("key");
        assert!(other.open("tenant-a", &sealed).is_err());
        // Fingerprints: stable for the same key, context and data; different otherwise.
        let f = key.fingerprint("tenant-a", b"body");
        assert_eq!(f, key.fingerprint("tenant-a", b"body"));
        assert_eq!(f.len(), 64);
        assert_ne!(f, key.fingerprint("tenant-b", b"body"));
        assert_ne!(f, key.fingerprint("tenant-a", b"bodY"));
        assert_ne!(f, other.fingerprint("tenant-a", b"body"));
        assert!(key.open("tenant-a", "AAAA").is_err());
        // Derived keys: stable per label and key, different across labels and keys.
        assert_eq!(key.derive(b"jwt"), key.derive(b"jwt"));
        assert_ne!(key.derive(b"jwt"), key.derive(b"other"));
        assert_ne!(key.derive(b"jwt"), other.derive(b"jwt"));
        assert_ne!(key.derive(b"jwt"), [0; 32]);
        assert!(MasterKey::parse("short").is_err());
        assert!(MasterKey::parse(&"ab".repeat(31)).is_err());
    }
}
