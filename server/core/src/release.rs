//! `outpost-server release keygen|publish`: the release signing key and publishing signed
//! agent and supervisor builds.
//!
//! Publishing runs on the operator's machine with the data directory at hand (the same one a
//! running server uses is fine: SQLite in WAL mode takes a second writer). The binaries are
//! copied to `<data-dir>/releases/<version>/<target>/<name>`; what is hashed and signed is the
//! copy as written, so the signature covers exactly the bytes the server will serve. Releases
//! are immutable: publishing a (version, target) twice is refused.
//!
//! Each artifact is signed twice: over the v1 message (name, version, target, SHA-256), which
//! every supervisor checks, and over the v2 message, which adds the size, so that supervisors
//! that know it check the metadata before downloading and never read past the signed size
//! (see `outpost_protocol::release`).
//!
//! The signing key never needs to be on the server: publish from a machine that has the data
//! directory (or the database URL) and the key, or copy the key in only for the publish.
//! Until the first release is published, the server serves the builds it ships with, signed
//! with a key of its own (`crate::builtin`); publishing ends that.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use outpost_protocol::release::{self, Version, signed_message, signed_message_v2, valid_target};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use outpost_store::{DatabaseLocation, Store, release as row};

/// Where one artifact of a release lives.
pub fn artifact_path(dir: &Path, version: &Version, target: &str, name: &str) -> PathBuf {
    dir.join(version.to_string()).join(target).join(name)
}

/// `outpost-server release …`.
#[derive(Debug, Args)]
#[command(about = "Create the release signing key and publish signed agent/supervisor builds")]
pub struct ReleaseCli {
    #[command(subcommand)]
    command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Write a new Ed25519 signing key (PKCS#8 PEM, mode 0600) and print its public key
    /// (base64) for agents to pin as OUTPOST_RELEASE_PUBKEY.
    Keygen {
        /// File to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Copy, hash, sign and record a release.
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// The server's data directory (releases are stored under <data-dir>/releases).
    #[arg(long, env = "OUTPOST_DATA_DIR", default_value = "./outpost-data")]
    data_dir: PathBuf,
    /// Database URL; default: SQLite in --data-dir.
    #[arg(long, env = "OUTPOST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The signing key written by `release keygen` (PKCS#8, PEM or DER).
    #[arg(long, env = "OUTPOST_RELEASE_SIGNING_KEY")]
    signing_key: PathBuf,
    /// Release version, MAJOR.MINOR.PATCH.
    #[arg(long)]
    version: String,
    /// Rust target triple the binaries are built for, e.g. x86_64-unknown-linux-gnu.
    #[arg(long)]
    target: String,
    /// The outpost-agent binary.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The outpost-supervisor binary.
    #[arg(long)]
    supervisor: Option<PathBuf>,
}

/// Runs a `release` subcommand; `args` starts with `release`.
pub async fn run(cli: ReleaseCli) -> anyhow::Result<()> {
    match cli.command {
        ReleaseCommand::Keygen { out } => keygen(&out),
        ReleaseCommand::Publish(args) => publish(args).await,
    }
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let pair = create_signing_key(out)?;
    eprintln!(
        "wrote the release signing key to {} (mode 0600); keep it offline and backed up.\n\
         Agents pin the public key below as OUTPOST_RELEASE_PUBKEY:",
        out.display()
    );
    println!("{}", STANDARD.encode(pair.public_key().as_ref()));
    Ok(())
}

/// Writes a new Ed25519 signing key to `out` (PKCS#8 PEM, mode 0600, never over an existing
/// file) and returns it. Used by `release keygen` and by the server for its own key
/// (`crate::builtin`).
pub fn create_signing_key(out: &Path) -> anyhow::Result<Ed25519KeyPair> {
    use std::os::unix::fs::OpenOptionsExt;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("the operating system's random source failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("ring produced an unreadable key"))?;
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    let body = STANDARD.encode(pkcs8.as_ref());
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                out.display()
            )
        })?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    Ok(pair)
}

/// The v1 and v2 signatures (base64) of one artifact: what `publish` records and what the
/// server's built-in builds carry. Supervisors check exactly these messages
/// ([`signed_message`], [`signed_message_v2`]).
pub fn sign_artifact(
    key: &Ed25519KeyPair,
    name: &str,
    version: &Version,
    target: &str,
    sha256: &str,
    size: u64,
) -> (String, String) {
    let v1 = signed_message(name, version, target, sha256);
    let v2 = signed_message_v2(name, version, target, sha256, size);
    (
        STANDARD.encode(key.sign(v1.as_bytes()).as_ref()),
        STANDARD.encode(key.sign(v2.as_bytes()).as_ref()),
    )
}

/// Reads a PKCS#8 Ed25519 key, PEM or DER (v2 from `keygen`, or v1 as `openssl genpkey
/// -algorithm ed25519` writes it).
pub fn load_signing_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der = match std::str::from_utf8(&bytes) {
        Ok(text) if text.trim_start().starts_with("-----BEGIN") => {
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::trim)
                .collect();
            STANDARD
                .decode(body)
                .with_context(|| format!("{}: the PEM body is not base64", path.display()))?
        }
        _ => bytes,
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| anyhow::anyhow!("{}: not a PKCS#8 Ed25519 private key ({e})", path.display()))
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let version: Version = args.version.parse()?;
    if !valid_target(&args.target) {
        bail!(
            "--target {:?} is not a target triple (1 to 64 characters [A-Za-z0-9_.-])",
            args.target
        );
    }
    let artifacts: Vec<(&str, &PathBuf)> = [
        (release::AGENT, args.agent.as_ref()),
        (release::SUPERVISOR, args.supervisor.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, path)| path.map(|p| (name, p)))
    .collect();
    if artifacts.is_empty() {
        bail!("nothing to publish: give --agent and/or --supervisor");
    }
    let key = load_signing_key(&args.signing_key)?;
    let public_key = STANDARD.encode(key.public_key().as_ref());

    let location = match &args.database_url {
        Some(url) => DatabaseLocation::Url(url.clone()),
        None => {
            outpost_store::private_files::create_private_dir(&args.data_dir)?;
            DatabaseLocation::Sqlite(args.data_dir.join("outpost.db"))
        }
    };
    let store = Store::open(&location)
        .await
        .context("opening the server's database")?;
    if !store
        .release_artifacts(&version, &args.target)
        .await?
        .is_empty()
    {
        bail!(
            "release {version} for {} is already published; releases are immutable, publish a new version",
            args.target
        );
    }

    let dir = args.data_dir.join("releases");
    let release_dir = dir.join(version.to_string()).join(&args.target);
    std::fs::create_dir_all(&release_dir)
        .with_context(|| format!("creating {}", release_dir.display()))?;
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for (name, source) in artifacts {
        let dest = artifact_path(&dir, &version, &args.target, name);
        let (sha256, size) = copy_hashed(source, &dest)?;
        let (signature, signature_v2) =
            sign_artifact(&key, name, &version, &args.target, &sha256, size);
        println!(
            "published {name} {version} for {}: {size} bytes, sha256 {sha256}",
            args.target
        );
        rows.push(row::Model {
            version: version.to_string(),
            target: args.target.clone(),
            name: name.to_owned(),
            major: version.major as i64,
            minor: version.minor as i64,
            patch: version.patch as i64,
            sha256,
            size: size as i64,
            signature,
            public_key: public_key.clone(),
            published_at: now,
            signature_v2: Some(signature_v2),
        });
    }
    store.insert_release(rows).await?;
    println!("signed with public key {public_key}");
    Ok(())
}

/// Copies `source` to `dest` through a temporary file in the same directory, hashing exactly
/// the bytes written; returns the hex SHA-256 and size.
fn copy_hashed(source: &Path, dest: &Path) -> anyhow::Result<(String, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut input =
        std::fs::File::open(source).with_context(|| format!("reading {}", source.display()))?;
    let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .with_context(|| format!("reading {}", source.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
        size += n as u64;
    }
    output.sync_all()?;
    drop(output);
    std::fs::rename(&tmp, dest).with_context(|| format!("moving into {}", dest.display()))?;
    Ok((hex::encode(hasher.finish().as_ref()), size))
}
