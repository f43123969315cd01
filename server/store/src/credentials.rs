//! Secrets the server issues: generation, hashing and constant-time verification.
//!
//! Keys are 32 random bytes from the OS, so a plain SHA-256 is a safe verifier (a slow hash
//! such as argon2 protects low-entropy passwords, not random keys) and lets a key be found by
//! an indexed lookup on its hash. After the lookup the hashes are compared again in constant
//! time, so nothing about a near-miss leaks through timing. Secrets are never logged: they
//! only pass through [`hash_secret`] and the one response that shows a new key.
//!
//! This module depends on nothing else of the crate, so the store (which issues keys) and
//! authentication (which checks them) both use it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// The kinds of secret the server issues.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    /// `opk_…`: REST API keys.
    Api,
    /// `opa_…`: agent keys.
    Agent,
    /// `opr_…`: users' refresh tokens.
    Refresh,
    /// `opi_…`: one-time invites.
    Invite,
    /// `opw_…`: password reset links (CONTRACT.md §18).
    Reset,
}

impl KeyKind {
    /// What every key of this kind starts with.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Api => "opk_",
            Self::Agent => "opa_",
            Self::Refresh => "opr_",
            Self::Invite => "opi_",
            Self::Reset => "opw_",
        }
    }
}

/// Bytes of randomness in a key.
const KEY_BYTES: usize = 32;

/// A fresh key: prefix plus 32 random bytes in URL-safe base64.
pub fn generate_secret(kind: KeyKind) -> String {
    let mut bytes = [0u8; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes))
}

/// The verifier stored for a key: hex SHA-256 of the whole secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, secret.as_bytes()))
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub fn verify_secret(secret: &str, stored: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored.as_bytes())
        .into()
}

/// Checks that an operator-provided key (`OUTPOST_ADMIN_KEY`) looks like one we would issue.
pub fn validate_admin_key(key: &str) -> Result<(), String> {
    if !key.starts_with("opk_") {
        return Err("OUTPOST_ADMIN_KEY must start with opk_".into());
    }
    if key.len() < 4 + 32 {
        return Err("OUTPOST_ADMIN_KEY must have at least 32 characters after opk_".into());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("OUTPOST_ADMIN_KEY must be printable ASCII without spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_prefix_and_entropy() {
        let a = generate_secret(KeyKind::Agent);
        let b = generate_secret(KeyKind::Agent);
        assert!(a.starts_with("opa_") && a.len() == 4 + 43, "{a}");
        assert_ne!(a, b);
        assert!(generate_secret(KeyKind::Api).starts_with("opk_"));
    }

    #[test]
    fn verify_matches_only_the_right_secret() {
        let secret = generate_secret(KeyKind::Api);
        let stored = hash_secret(&secret);
        assert!(verify_secret(&secret, &stored));
        assert!(!verify_secret("opk_wrong", &stored));
        assert!(!verify_secret(&secret, ""));
    }

    #[test]
    fn admin_key_rules() {
        assert!(validate_admin_key(&generate_secret(KeyKind::Api)).is_ok());
        assert!(validate_admin_key("opk_short").is_err());
        assert!(validate_admin_key(&format!("opa_{}", "x".repeat(40))).is_err());
        assert!(validate_admin_key(&format!("opk_{} x", "x".repeat(40))).is_err());
    }
}
