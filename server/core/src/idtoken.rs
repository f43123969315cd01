//! OpenID Connect ID tokens: signed JWTs from the provider, verified over `ring::signature`
//! against the provider's published keys (a JWK set), decoded strictly (CONTRACT.md §18).
//!
//! Why our own and not the `openidconnect` crate: that crate verifies RSA with RustCrypto's
//! `rsa` (RUSTSEC-2023-0071, no fixed release) and brings a second crypto stack beside ring,
//! which the project refuses (see `jwt`, which is why HS256 is ours too). What an ID token
//! needs is small: RS256 is `ring::signature::RsaPublicKeyComponents` over the JWK's `n` and
//! `e`, ES256 is `ring::signature::ECDSA_P256_SHA256_FIXED` over its `x` and `y`. What
//! matters is what is refused:
//! - an algorithm outside [`ALGORITHMS`] (RS256, ES256): `none` and every `HS*` (a provider's
//!   public key used as an HMAC secret) are refused before any key is looked at;
//! - a `kid` that names no key of the set ([`TokenError::UnknownKey`]: the caller fetches the
//!   keys again, once, in case the provider rotated them), or a key whose type or curve does
//!   not fit the algorithm;
//! - a signature that does not verify, before any claim is trusted;
//! - `iss` not exactly the provider's, `aud` without our client id, several audiences without
//!   `azp` equal to ours, `exp` passed or `iat` ahead of the clock (each by more than
//!   [`LEEWAY_S`]), `nonce` not the one this sign-in sent;
//! - no `email`, or one not verified: `email_verified: true` (or the string `"true"`, which
//!   some providers send), or Entra ID's `xms_edov: true`.
//!
//! This module depends on nothing else of the crate: it takes the keys and the expectations
//! and answers the claims or why not.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// The signature algorithms accepted.
pub const ALGORITHMS: &[&str] = &["RS256", "ES256"];
/// Clock skew allowed between us and the provider, for `exp` and `iat`.
pub const LEEWAY_S: i64 = 120;
/// The longest ID token looked at.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why an ID token was refused (the caller tells the person which, in plain words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, too long, or not JSON where JSON is due.
    #[error("the ID token is malformed")]
    Malformed,
    /// The header names an algorithm outside RS256 and ES256 (`none`, `HS256`, …).
    #[error("the ID token is signed with {0:?}, which is not accepted (RS256 or ES256 only)")]
    Algorithm(String),
    /// No key of the provider's set has the header's `kid` (or fits its algorithm).
    #[error("the ID token is signed with a key the provider does not publish")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the ID token's signature does not verify")]
    Signature,
    /// A claim is missing or mistyped.
    #[error("the ID token's claims are not as expected: {0}")]
    Claims(String),
    /// `iss` is not the provider's.
    #[error("the ID token was issued by {0:?}, not by the configured provider")]
    Issuer(String),
    /// `aud`/`azp` does not name our client.
    #[error("the ID token is not meant for this server (audience)")]
    Audience,
    /// `exp` has passed.
    #[error("the ID token has expired")]
    Expired,
    /// `iat` is in the future.
    #[error("the ID token is issued in the future (check the clocks)")]
    NotYetValid,
    /// `nonce` is not the one this sign-in sent.
    #[error("the ID token's nonce is not this sign-in's")]
    Nonce,
    /// No email, or one the provider has not verified.
    #[error("the provider gave no verified email (email_verified is not true)")]
    Unverified,
}

/// A provider's published keys (`jwks_uri`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JwkSet {
    /// The keys; ones we cannot use are skipped.
    #[serde(default)]
    pub keys: Vec<Jwk>,
}

/// One published key (RFC 7517); only what RS256 and ES256 need is read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jwk {
    /// `RSA` or `EC`.
    #[serde(default)]
    pub kty: String,
    /// The key's id, matched with the token header's.
    pub kid: Option<String>,
    /// `sig` when given; a key for encryption (`enc`) is never used.
    #[serde(rename = "use")]
    pub use_: Option<String>,
    /// The algorithm the key is for, when given.
    pub alg: Option<String>,
    /// RSA modulus (base64url).
    pub n: Option<String>,
    /// RSA exponent (base64url).
    pub e: Option<String>,
    /// EC curve (`P-256`).
    pub crv: Option<String>,
    /// EC x coordinate (base64url).
    pub x: Option<String>,
    /// EC y coordinate (base64url).
    pub y: Option<String>,
}

impl JwkSet {
    /// Whether a key has this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// What the ID token must say.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The provider's issuer, exactly.
    pub issuer: &'a str,
    /// Our client id.
    pub client_id: &'a str,
    /// The nonce this sign-in sent.
    pub nonce: &'a str,
    /// Now, seconds since the epoch.
    pub now: i64,
}

/// The claims a verified ID token gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    /// The provider.
    pub issuer: String,
    /// The person at the provider.
    pub subject: String,
    /// Their email, verified by the provider.
    pub email: String,
    /// Their name, when given.
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Text(String),
}

impl Flag {
    fn is_true(&self) -> bool {
        match self {
            Self::Bool(b) => *b,
            Self::Text(t) => t == "true",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    azp: Option<String>,
    exp: Option<f64>,
    iat: Option<f64>,
    nonce: Option<String>,
    email: Option<String>,
    email_verified: Option<Flag>,
    xms_edov: Option<Flag>,
    name: Option<String>,
}

/// The kid a token's header names, if it parses (to tell an unknown key from others before
/// fetching the keys again).
pub fn header_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    header.kid
}

/// Verifies `token` against `keys` and `expected`: its claims, or why not.
pub fn verify(token: &str, keys: &JwkSet, expected: &Expected<'_>) -> Result<IdClaims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| TokenError::Malformed)?,
    )
    .map_err(|_| TokenError::Malformed)?;
    if !ALGORITHMS.contains(&header.alg.as_str()) {
        return Err(TokenError::Algorithm(header.alg));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| TokenError::Malformed)?;
    let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
    let candidates: Vec<&Jwk> = keys
        .keys
        .iter()
        .filter(|k| fits(k, &header.alg))
        .filter(|k| match &header.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey);
    }
    if !candidates
        .iter()
        .any(|k| verify_with(k, &header.alg, signed.as_bytes(), &signature))
    {
        return Err(TokenError::Signature);
    }
    let claims: Claims = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| TokenError::Malformed)?,
    )
    .map_err(|e| TokenError::Claims(e.to_string()))?;
    check(claims, expected)
}

fn check(claims: Claims, expected: &Expected<'_>) -> Result<IdClaims, TokenError> {
    let missing = |name: &str| TokenError::Claims(format!("no {name}"));
    let iss = claims.iss.ok_or_else(|| missing("iss"))?;
    if iss != expected.issuer {
        return Err(TokenError::Issuer(iss));
    }
    let audiences = match claims.aud.ok_or_else(|| missing("aud"))? {
        Audience::One(one) => vec![one],
        Audience::Many(many) => many,
    };
    if !audiences.iter().any(|a| a == expected.client_id) {
        return Err(TokenError::Audience);
    }
    if (audiences.len() > 1 || claims.azp.is_some())
        && claims.azp.as_deref() != Some(expected.client_id)
    {
        return Err(TokenError::Audience);
    }
    let exp = claims.exp.ok_or_else(|| missing("exp"))?;
    if (exp as i64) + LEEWAY_S <= expected.now {
        return Err(TokenError::Expired);
    }
    let iat = claims.iat.ok_or_else(|| missing("iat"))?;
    if (iat as i64) > expected.now + LEEWAY_S {
        return Err(TokenError::NotYetValid);
    }
    let nonce = claims.nonce.ok_or(TokenError::Nonce)?;
    if !ring_eq(nonce.as_bytes(), expected.nonce.as_bytes()) {
        return Err(TokenError::Nonce);
    }
    let subject = claims
        .sub
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("sub"))?;
    let verified = claims.email_verified.as_ref().is_some_and(Flag::is_true)
        || claims.xms_edov.as_ref().is_some_and(Flag::is_true);
    let email = claims
        .email
        .filter(|e| !e.trim().is_empty())
        .ok_or(TokenError::Unverified)?;
    if !verified {
        return Err(TokenError::Unverified);
    }
    Ok(IdClaims {
        issuer: iss,
        subject,
        email: email.trim().to_owned(),
        name: claims.name,
    })
}

/// Constant-time equality (lengths may differ: then unequal).
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    let ka = ring::digest::digest(&ring::digest::SHA256, a);
    let kb = ring::digest::digest(&ring::digest::SHA256, b);
    ka.as_ref()
        .iter()
        .zip(kb.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether the key can verify `alg`.
fn fits(key: &Jwk, alg: &str) -> bool {
    if key.use_.as_deref().is_some_and(|u| u != "sig") {
        return false;
    }
    if key.alg.as_deref().is_some_and(|a| a != alg) {
        return false;
    }
    match alg {
        "RS256" => key.kty == "RSA" && key.n.is_some() && key.e.is_some(),
        "ES256" => {
            key.kty == "EC"
                && key.crv.as_deref() == Some("P-256")
                && key.x.is_some()
                && key.y.is_some()
        }
        _ => false,
    }
}

fn verify_with(key: &Jwk, alg: &str, message: &[u8], sig: &[u8]) -> bool {
    let decode = |v: &Option<String>| v.as_deref().and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
    match alg {
        "RS256" => {
            let (Some(n), Some(e)) = (decode(&key.n), decode(&key.e)) else {
                return false;
            };
            RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok()
        }
        "ES256" => {
            let (Some(x), Some(y)) = (decode(&key.x), decode(&key.y)) else {
                return false;
            };
            if x.len() != 32 || y.len() != 32 {
                return false;
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, sig)
                .is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
    use serde_json::json;

    /// A 2048-bit RSA key (RSAPrivateKey DER, base64) made with `openssl genpkey` for these tests only.
    const RSA_DER_B64: &str = include_str!("idtoken_test_rsa.b64");

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Keys {
        ec: EcdsaKeyPair,
        rsa: RsaKeyPair,
        set: JwkSet,
    }

    fn keys() -> Keys {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("ec key");
        let ec = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("ec key");
        let public = ec.public_key().as_ref();
        let der = base64::engine::general_purpose::STANDARD
            .decode(RSA_DER_B64.trim())
            .expect("base64");
        let rsa = RsaKeyPair::from_der(&der).expect("rsa key");
        let components = RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "EC", "kid": "ec1", "use": "sig", "crv": "P-256",
             "x": b64(&public[1..33]), "y": b64(&public[33..65])},
            {"kty": "RSA", "kid": "rsa1", "alg": "RS256",
             "n": b64(&components.n), "e": b64(&components.e)},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        ]}))
        .expect("jwks");
        Keys { ec, rsa, set }
    }

    fn sign(keys: &Keys, header: serde_json::Value, claims: serde_json::Value) -> String {
        let alg = header["alg"].as_str().unwrap_or("").to_owned();
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match alg.as_str() {
            "ES256" => keys
                .ec
                .sign(&rng, input.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            "RS256" => {
                let mut sig = vec![0; keys.rsa.public().modulus_len()];
                keys.rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &rng,
                        input.as_bytes(),
                        &mut sig,
                    )
                    .expect("sign");
                sig
            }
            "HS256" => ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret"),
                input.as_bytes(),
            )
            .as_ref()
            .to_vec(),
            _ => Vec::new(),
        };
        format!("{input}.{}", b64(&sig))
    }

    const NOW: i64 = 1_800_000_000;

    fn expected() -> Expected<'static> {
        Expected {
            issuer: "https://idp.example",
            client_id: "outpost",
            nonce: "n-0S6_WzA2Mj",
            now: NOW,
        }
    }

    fn claims() -> serde_json::Value {
        json!({
            "iss": "https://idp.example", "sub": "248289761001", "aud": "outpost",
            "exp": NOW + 300, "iat": NOW - 5, "nonce": "n-0S6_WzA2Mj",
            "email": "ada@example.com", "email_verified": true, "name": "Ada",
        })
    }

    fn with(change: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let mut c = claims();
        change(&mut c);
        c
    }

    #[test]
    fn good_tokens_of_both_algorithms_verify() {
        let k = keys();
        for (alg, kid) in [("ES256", "ec1"), ("RS256", "rsa1")] {
            let token = sign(&k, json!({"alg": alg, "kid": kid, "typ": "JWT"}), claims());
            let got = verify(&token, &k.set, &expected()).expect(alg);
            assert_eq!(got.subject, "248289761001");
            assert_eq!(got.email, "ada@example.com");
            assert_eq!(got.issuer, "https://idp.example");
        }
        // No kid: every key that fits the algorithm is tried.
        let token = sign(&k, json!({"alg": "RS256"}), claims());
        assert!(verify(&token, &k.set, &expected()).is_ok());
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key() {
        let k = keys();
        let unsigned = format!(
            "{}.{}.",
            b64(json!({"alg": "none"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(
            verify(&unsigned, &k.set, &expected()),
            Err(TokenError::Algorithm("none".into()))
        );
        let hs = sign(&k, json!({"alg": "HS256", "kid": "hmac"}), claims());
        assert_eq!(
            verify(&hs, &k.set, &expected()),
            Err(TokenError::Algorithm("HS256".into()))
        );
    }

    #[test]
    fn an_unknown_kid_or_a_wrong_key_is_refused() {
        let k = keys();
        let token = sign(&k, json!({"alg": "ES256", "kid": "rotated"}), claims());
        assert_eq!(
            verify(&token, &k.set, &expected()),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(header_kid(&token).as_deref(), Some("rotated"));
        // Signed by the EC key but naming the RSA key's id: RS256 does not fit an EC key.
        let token = sign(&k, json!({"alg": "ES256", "kid": "rsa1"}), claims());
        assert_eq!(
            verify(&token, &k.set, &expected()),
            Err(TokenError::UnknownKey)
        );
        // A forged signature.
        let token = sign(&k, json!({"alg": "RS256", "kid": "rsa1"}), claims());
        let (head, _) = token.rsplit_once('.').expect("three parts");
        let forged = format!("{head}.{}", b64(&[7u8; 256]));
        assert_eq!(
            verify(&forged, &k.set, &expected()),
            Err(TokenError::Signature)
        );
        // Claims changed after signing.
        let other = sign(
            &k,
            json!({"alg": "RS256", "kid": "rsa1"}),
            with(|c| c["sub"] = json!("x")),
        );
        let parts: Vec<&str> = token.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
        assert_eq!(
            verify(&spliced, &k.set, &expected()),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn claims_are_checked() {
        let k = keys();
        let header = json!({"alg": "ES256", "kid": "ec1"});
        let cases: Vec<(serde_json::Value, TokenError)> = vec![
            (
                with(|c| c["iss"] = json!("https://evil.example")),
                TokenError::Issuer("https://evil.example".into()),
            ),
            (
                with(|c| c["aud"] = json!("someone-else")),
                TokenError::Audience,
            ),
            (
                with(|c| c["aud"] = json!(["outpost", "other"])),
                TokenError::Audience,
            ),
            (with(|c| c["azp"] = json!("other")), TokenError::Audience),
            (
                with(|c| c["exp"] = json!(NOW - LEEWAY_S - 1)),
                TokenError::Expired,
            ),
            (
                with(|c| c["iat"] = json!(NOW + LEEWAY_S + 10)),
                TokenError::NotYetValid,
            ),
            (with(|c| c["nonce"] = json!("replayed")), TokenError::Nonce),
            (
                with(|c| {
                    c.as_object_mut().map(|o| o.remove("nonce"));
                }),
                TokenError::Nonce,
            ),
            (
                with(|c| c["email_verified"] = json!(false)),
                TokenError::Unverified,
            ),
            (
                with(|c| {
                    c.as_object_mut().map(|o| o.remove("email"));
                }),
                TokenError::Unverified,
            ),
        ];
        for (claims, want) in cases {
            let token = sign(&k, header.clone(), claims.clone());
            assert_eq!(verify(&token, &k.set, &expected()), Err(want), "{claims}");
        }
        // Several audiences with azp ours; Entra's xms_edov; the string "true".
        for claims in [
            with(|c| {
                c["aud"] = json!(["outpost", "other"]);
                c["azp"] = json!("outpost");
            }),
            with(|c| {
                c.as_object_mut().map(|o| o.remove("email_verified"));
                c["xms_edov"] = json!(true);
            }),
            with(|c| c["email_verified"] = json!("true")),
        ] {
            let token = sign(&k, header.clone(), claims.clone());
            assert!(verify(&token, &k.set, &expected()).is_ok(), "{claims}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let k = keys();
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(verify(bad, &k.set, &expected()).is_err(), "{bad}");
        }
    }
}
