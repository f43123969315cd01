//! Library bundles for the tests (CONTRACT.md §15): an operator's signing key, good bundles, hostile
//! archives written header by header, and the upload form.

use base64::Engine as _;
use outpost_protocol::bundle::{self, MANIFEST_FILE, SignatureFile, archive};
use reqwest::StatusCode;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::Server;

/// An operator's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

impl Signer {
    /// A new random key.
    pub fn new() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
        Self {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pkcs8"),
        }
    }

    /// Its public key, standard base64 (what manifests pin).
    pub fn public(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pair.public_key().as_ref())
    }

    /// `BUNDLE.sig` for `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> SignatureFile {
        let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
        let size = bytes.len() as u64;
        let signature = self
            .pair
            .sign(bundle::signed_message(&sha256, size).as_bytes());
        SignatureFile {
            format: bundle::SIGNATURE_FORMAT.into(),
            sha256,
            size,
            key: self.public(),
            signature: base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
        }
    }
}

/// A bundle's manifest: `run.sh`, two parameters (`PASSWORD` secret).
pub fn manifest(name: &str, version: &str) -> String {
    json!({"name": name, "version": version, "entrypoint": "run.sh",
           "description": format!("{name} {version}"),
           "params": ["TARGET", {"name": "PASSWORD", "secret": true}]})
    .to_string()
}

/// A good bundle of `name` at `version`.
pub fn bundle_of(name: &str, version: &str) -> Vec<u8> {
    archive::pack(&[
        (MANIFEST_FILE, manifest(name, version).as_bytes(), false),
        ("run.sh", b"#!/bin/sh\necho hello\n", true),
    ])
    .expect("pack")
}

/// One raw tar entry: path, kind, content, link target, and the size its header claims (its
/// content's when `None`).
pub type RawEntry<'a> = (
    &'a str,
    tar::EntryType,
    &'a [u8],
    Option<&'a str>,
    Option<u64>,
);

/// A tar.gz written header by header, as an attacker would (no packer's checks).
pub fn raw(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (path, kind, content, link, claimed) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(claimed.unwrap_or(content.len() as u64));
        header.set_mode(0o755);
        if let Some(link) = link {
            header.set_link_name(link).expect("link");
        }
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, *content).expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gz")
}

/// `POST /api/scripts` with the parts given (`None`: left out).
pub async fn upload(
    server: &Server,
    token: &str,
    bundle: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new();
    if let Some(bytes) = bundle {
        form = form.part(
            "bundle",
            reqwest::multipart::Part::bytes(bytes).file_name("b.tar.gz"),
        );
    }
    if let Some(bytes) = signature {
        form = form.part(
            "signature",
            reqwest::multipart::Part::bytes(bytes).file_name("b.tar.gz.sig"),
        );
    }
    let response = reqwest::Client::new()
        .post(format!("{}/api/scripts", server.url))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = response.status();
    let body = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A signature file as JSON bytes.
pub fn sig_bytes(sig: &SignatureFile) -> Vec<u8> {
    serde_json::to_vec(sig).expect("json")
}

/// Uploads a bundle signed by `signer`; answers the status and body.
pub async fn signed_upload(
    server: &Server,
    signer: &Signer,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let sig = sig_bytes(&signer.sign(&bytes));
    upload(server, &server.admin_key, Some(bytes), Some(sig)).await
}
