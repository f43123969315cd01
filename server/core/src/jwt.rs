//! Users' access tokens: JWTs signed HS256 with `ring::hmac`, decoded strictly.
//!
//! Why our own: `jsonwebtoken` has no ring backend (DEPENDENCIES.md), and a second crypto
//! provider is what the project refuses. HS256 is a few lines over `ring::hmac`; what matters
//! is the decoding, which accepts exactly what [`Signer::sign`] makes and nothing else:
//! - three base64url parts without padding, at most [`MAX_TOKEN_BYTES`] in all;
//! - a header that is a JSON object whose `alg` is exactly `"HS256"` (so `none`, `HS512`,
//!   `RS256`, … are refused before any signature is looked at), `typ` absent or `"JWT"`, and
//!   no other member (a `crit` or `kid` we would ignore is refused instead);
//! - the signature checked by `ring::hmac::verify` (constant time) before the claims are read;
//! - every claim present with its type, no other, `exp` in the future and `iat` not ahead of
//!   the clock by more than [`LEEWAY_S`].
//!
//! The key is derived from the master key (`seal::MasterKey::derive`), so every node sharing
//! a database signs and checks with the same key, and a restart keeps sessions. Rotating the
//! master key therefore signs everyone out (docs/OPERATIONS.md, "Users and sessions").
//!
//! This module depends on nothing else of the crate.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// How long an access token lives.
pub const ACCESS_TTL_S: i64 = 15 * 60;
/// Clock skew allowed between nodes for `iat` (never for `exp`).
pub const LEEWAY_S: i64 = 60;
/// The longest token looked at; ours are a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims of an access token (CONTRACT.md §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The user's tenant.
    pub tid: String,
    /// The role when the token was issued (informative: requests use the user's current role).
    pub role: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// This token's id.
    pub jti: String,
}

/// Why a token was refused. The caller shows one message for all; the variant is for logs
/// and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, too long, or not JSON where JSON is due.
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm (or `none`), or has members we do not accept.
    #[error("unsupported token header")]
    Algorithm,
    /// The signature does not match.
    #[error("bad signature")]
    Signature,
    /// A claim is missing, mistyped or unknown.
    #[error("bad claims")]
    Claims,
    /// `exp` has passed.
    #[error("expired")]
    Expired,
    /// `iat` is in the future.
    #[error("issued in the future")]
    NotYetValid,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    typ: Option<String>,
}

/// The header every token carries, as encoded once.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Signs and checks access tokens with one HMAC-SHA256 key.
pub struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A signer over `key` (32 bytes derived from the master key).
    pub fn new(key: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        // Serialising a struct of strings and integers cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of `token` if it is one of ours, unexpired at `now` (seconds since the
    /// epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_part), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = decode_json(header_part)?;
        if header.alg != "HS256" || header.typ.as_deref().is_some_and(|t| t != "JWT") {
            return Err(JwtError::Algorithm);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwtError::Malformed)?;
        let signed = &token[..header_part.len() + 1 + payload.len()];
        hmac::verify(&self.key, signed.as_bytes(), &signature).map_err(|_| JwtError::Signature)?;
        let claims: Claims = decode_json(payload).map_err(|_| JwtError::Claims)?;
        if claims.exp <= now {
            return Err(JwtError::Expired);
        }
        if claims.iat > now + LEEWAY_S {
            return Err(JwtError::NotYetValid);
        }
        Ok(claims)
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// Whether a bearer token looks like a JWT (three dot-separated parts) rather than a key.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            sub: "u1".into(),
            tid: "t1".into(),
            role: "owner".into(),
            iat: now,
            exp: now + ACCESS_TTL_S,
            jti: "j1".into(),
        }
    }

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips() {
        let signer = Signer::new(&[7; 32]);
        let token = signer.sign(&claims(1000));
        assert!(looks_like_jwt(&token));
        assert_eq!(signer.verify(&token, 1001), Ok(claims(1000)));
    }

    #[test]
    fn anything_else_is_refused() {
        let signer = Signer::new(&[7; 32]);
        let token = signer.sign(&claims(1000));
        let parts: Vec<&str> = token.split('.').collect();
        let other = Signer::new(&[8; 32]).sign(&claims(1000));

        // Expired, and issued in the future.
        assert_eq!(
            signer.verify(&token, 1000 + ACCESS_TTL_S),
            Err(JwtError::Expired)
        );
        assert_eq!(
            signer.verify(&token, 1000 - LEEWAY_S - 1),
            Err(JwtError::NotYetValid)
        );
        // Another key's signature; a flipped signature byte; a changed payload.
        assert_eq!(signer.verify(&other, 1001), Err(JwtError::Signature));
        let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
        sig[0] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(signer.verify(&flipped, 1001), Err(JwtError::Signature));
        let mut admin = claims(1000);
        admin.role = "member".into();
        admin.sub = "u2".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).expect("json"));
        let swapped = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert_eq!(signer.verify(&swapped, 1001), Err(JwtError::Signature));

        // alg none (with and without a signature), alg switched, extra header members.
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":"JWS"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
        ] {
            let forged = format!("{}.{}.{}", b64(header), parts[1], parts[2]);
            assert!(signer.verify(&forged, 1001).is_err(), "{header}");
            let unsigned = format!("{}.{}.", b64(header), parts[1]);
            assert!(signer.verify(&unsigned, 1001).is_err(), "{header}");
        }
        // A correctly signed token with alg none's header is still refused (alg checked first).
        let none_header = b64(r#"{"alg":"none"}"#);
        let input = format!("{none_header}.{}", parts[1]);
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]),
            input.as_bytes(),
        );
        let signed_none = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(signer.verify(&signed_none, 1001), Err(JwtError::Algorithm));

        // Malformed: parts, base64, padding, JSON, length.
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            &format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            &format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(signer.verify(bad, 1001).is_err(), "{bad}");
        }

        // Signed correctly but with missing, mistyped or unknown claims.
        for payload in [
            r#"{"sub":"u1","tid":"t1","role":"owner","iat":1000,"jti":"j"}"#,
            r#"{"sub":"u1","tid":"t1","role":"owner","iat":1000,"exp":"2000","jti":"j"}"#,
            r#"{"sub":"u1","tid":"t1","role":"owner","iat":1000,"exp":2000,"jti":"j","x":1}"#,
        ] {
            let input = format!("{}.{}", parts[0], b64(payload));
            let tag = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]),
                input.as_bytes(),
            );
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
            assert_eq!(
                signer.verify(&token, 1001),
                Err(JwtError::Claims),
                "{payload}"
            );
        }
    }
}
