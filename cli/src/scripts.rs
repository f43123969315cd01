//! `outpost scripts keygen|pack|sign|upload|ls|show|rm`: the script library (CONTRACT.md §15);
//! `drafts` and `sign --draft` are in [`crate::drafts`] (§20).
//!
//! Keys and signatures are made here, on the operator's machine, and never sent: the server
//! gets the bundle and its signature file, and agents check the signature against the public
//! keys their manifests pin. `sign` and `pack` run the same archive walker as the server and
//! the agent (`outpost_protocol::bundle::archive`), so a bundle that would be refused is
//! refused before it is signed, naming the entry.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use outpost_protocol::bundle::{self, SignatureFile, archive, limits};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::Value;

use crate::args::{Global, ScriptsCommand};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, Table};

/// An upload of up to 16 MiB may take a while on a slow link.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs a `scripts` subcommand.
pub async fn run(global: &Global, cmd: ScriptsCommand) -> Result<(), CliError> {
    match cmd {
        ScriptsCommand::Keygen { out } => keygen(&out),
        ScriptsCommand::Pack { dir, out } => pack(&dir, &out),
        ScriptsCommand::Sign {
            bundle,
            draft,
            key,
            yes,
        } => match (bundle, draft) {
            (_, Some(draft)) => {
                let client = Client::from_config(global)?;
                crate::drafts::sign(&client, global, &draft, &key, yes).await
            }
            (Some(bundle), None) => sign(&bundle, &key),
            (None, None) => Err(CliError::Usage(
                "name a bundle to sign, or --draft NAME@VERSION".into(),
            )),
        },
        ScriptsCommand::Drafts => {
            let client = Client::from_config(global)?;
            crate::drafts::list(&client, global).await
        }
        ScriptsCommand::Upload { bundle, signature } => {
            let client = Client::from_config(global)?;
            upload(&client, global, &bundle, signature).await
        }
        ScriptsCommand::Ls => {
            let client = Client::from_config(global)?;
            list(&client, global).await
        }
        ScriptsCommand::Show { name } => {
            let client = Client::from_config(global)?;
            show(&client, global, &name).await
        }
        ScriptsCommand::Rm { name, version } => {
            let client = Client::from_config(global)?;
            client
                .json(
                    reqwest::Method::DELETE,
                    &format!(
                        "/api/scripts/{}/versions/{}",
                        segment(&name),
                        segment(&version)
                    ),
                    &[],
                    None,
                )
                .await?;
            eprintln!(
                "deleted {}@{}",
                output::escape(&name),
                output::escape(&version)
            );
            Ok(())
        }
    }
}

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn local(path: &Path, what: &str, err: impl std::fmt::Display) -> CliError {
    CliError::Other(format!("{what} {}: {err}", path.display()))
}

/// `FILE.pub` beside `FILE`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn keygen(out: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let public_path = with_suffix(out, ".pub");
    for path in [out, public_path.as_path()] {
        if path.exists() {
            return Err(CliError::Usage(format!(
                "{} exists; a signing key is never overwritten (remove it first, or choose another --out)",
                path.display()
            )));
        }
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| CliError::Other("cannot generate a key: no randomness".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| CliError::Other(format!("the new key does not parse: {e}")))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| local(out, "cannot create", e))?;
    file.write_all(format!("{}\n", b64.encode(pkcs8.as_ref())).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| local(out, "cannot write", e))?;
    let public = b64.encode(pair.public_key().as_ref());
    std::fs::write(&public_path, format!("{public}\n"))
        .map_err(|e| local(&public_path, "cannot write", e))?;
    eprintln!(
        "private key: {} (mode 0600; keep it off the server)\npublic key:  {}\n\nPin it in each agent's manifest:\n  \"library\": {{\"allow\": [\"NAME-PATTERN\"], \"keys\": [\"{public}\"]}}",
        out.display(),
        public_path.display()
    );
    output::print_stdout(format!("{public}\n").as_bytes());
    Ok(())
}

/// Checks a bundle with the walker, naming the first rule it breaks.
fn check_bundle(path: &Path, bytes: &[u8]) -> Result<archive::Contents, CliError> {
    if bytes.len() as u64 > limits::MAX_BUNDLE_BYTES {
        return Err(CliError::Usage(format!(
            "{}: {} bytes; a bundle may hold at most {} (16 MiB)",
            path.display(),
            bytes.len(),
            limits::MAX_BUNDLE_BYTES
        )));
    }
    archive::walk(bytes, |_, _, r| {
        std::io::copy(r, &mut std::io::sink()).map(drop)
    })
    .map_err(|refused| CliError::Usage(format!("{}: refused: {refused}", path.display())))
}

fn sign(bundle_path: &Path, key_path: &Path) -> Result<(), CliError> {
    let bytes = std::fs::read(bundle_path).map_err(|e| local(bundle_path, "cannot read", e))?;
    let contents = check_bundle(bundle_path, &bytes)?;
    let text = std::fs::read_to_string(key_path).map_err(|e| local(key_path, "cannot read", e))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pkcs8 = b64.decode(text.trim()).map_err(|_| {
        CliError::Usage(format!(
            "{}: not a key of `outpost scripts keygen` (base64 PKCS#8)",
            key_path.display()
        ))
    })?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| {
        CliError::Usage(format!(
            "{}: not an Ed25519 private key ({e})",
            key_path.display()
        ))
    })?;
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    let size = bytes.len() as u64;
    let signature = pair.sign(bundle::signed_message(&sha256, size).as_bytes());
    let file = SignatureFile {
        format: bundle::SIGNATURE_FORMAT.into(),
        sha256: sha256.clone(),
        size,
        key: b64.encode(pair.public_key().as_ref()),
        signature: b64.encode(signature.as_ref()),
    };
    let out = with_suffix(bundle_path, ".sig");
    let json = serde_json::to_string_pretty(&file)
        .map_err(|e| CliError::Other(format!("signature: {e}")))?;
    std::fs::write(&out, format!("{json}\n")).map_err(|e| local(&out, "cannot write", e))?;
    eprintln!(
        "signed {}@{} (sha256 {sha256}, {size} bytes) with key {}\nwrote {}",
        output::escape(&contents.manifest.name),
        contents.manifest.version,
        file.key,
        out.display()
    );
    Ok(())
}

/// Every file under `dir` (relative paths with `/`, content, executable), refusing anything
/// that is neither a file nor a folder, and stopping at the library's limits.
fn collect(
    root: &Path,
    dir: &Path,
    files: &mut Vec<(String, Vec<u8>, bool)>,
    total: &mut u64,
) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| local(dir, "cannot read", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| local(dir, "cannot read", e))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| local(&path, "cannot read", e))?;
        let relative = path
            .strip_prefix(root)
            .map_err(|e| local(&path, "outside the folder", e))?
            .to_str()
            .ok_or_else(|| CliError::Usage(format!("{}: the name is not UTF-8", path.display())))?
            .to_owned();
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(CliError::Usage(format!(
                "{}: a symlink; bundles hold only files and folders (copy the file in instead)",
                path.display()
            )));
        }
        if kind.is_dir() {
            collect(root, &path, files, total)?;
            continue;
        }
        if !kind.is_file() {
            return Err(CliError::Usage(format!(
                "{}: not a regular file (a device, socket or FIFO); bundles hold only files and folders",
                path.display()
            )));
        }
        bundle::bundle_path(&relative)
            .map_err(|why| CliError::Usage(format!("{}: {why}", path.display())))?;
        *total += meta.len();
        if *total > limits::MAX_UNPACKED_BYTES || files.len() >= limits::MAX_BUNDLE_ENTRIES {
            return Err(CliError::Usage(format!(
                "{}: past the library's limits ({} files, {} bytes unpacked)",
                root.display(),
                limits::MAX_BUNDLE_ENTRIES,
                limits::MAX_UNPACKED_BYTES
            )));
        }
        let content = std::fs::read(&path).map_err(|e| local(&path, "cannot read", e))?;
        let executable = meta.permissions().mode() & 0o111 != 0;
        files.push((relative, content, executable));
    }
    Ok(())
}

fn pack(dir: &Path, out: &Path) -> Result<(), CliError> {
    if !dir.join(bundle::MANIFEST_FILE).is_file() {
        return Err(CliError::Usage(format!(
            "{}: no {} at its root; a bundle needs one (name, version, entrypoint)",
            dir.display(),
            bundle::MANIFEST_FILE
        )));
    }
    let mut files = Vec::new();
    let mut total = 0;
    collect(dir, dir, &mut files, &mut total)?;
    let refs: Vec<(&str, &[u8], bool)> = files
        .iter()
        .map(|(path, content, executable)| (path.as_str(), content.as_slice(), *executable))
        .collect();
    let bytes = archive::pack(&refs).map_err(|e| CliError::Other(format!("packing: {e}")))?;
    let contents = check_bundle(out, &bytes)?;
    std::fs::write(out, &bytes).map_err(|e| local(out, "cannot write", e))?;
    eprintln!(
        "packed {}@{}: {} files, {} bytes; sign it with `outpost scripts sign {} --key FILE`",
        output::escape(&contents.manifest.name),
        contents.manifest.version,
        contents.files.len(),
        bytes.len(),
        out.display()
    );
    Ok(())
}

async fn upload(
    client: &Client,
    global: &Global,
    bundle_path: &Path,
    signature: Option<PathBuf>,
) -> Result<(), CliError> {
    let signature_path = signature.unwrap_or_else(|| with_suffix(bundle_path, ".sig"));
    let bytes = std::fs::read(bundle_path).map_err(|e| local(bundle_path, "cannot read", e))?;
    let sig = std::fs::read(&signature_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CliError::Usage(format!(
                "{}: no signature file; sign the bundle first: outpost scripts sign {} --key FILE",
                signature_path.display(),
                bundle_path.display()
            ))
        } else {
            local(&signature_path, "cannot read", e)
        }
    })?;
    let name = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("bundle")
            .to_owned()
    };
    let (status, answer) = client
        .post_files(
            "/api/scripts",
            &[
                ("bundle", &name(bundle_path), &bytes),
                ("signature", &name(&signature_path), &sig),
            ],
            UPLOAD_TIMEOUT,
        )
        .await?;
    if global.json {
        output::print_json(&answer);
        return Ok(());
    }
    let what = if status == 201 {
        "uploaded"
    } else {
        "already in the library (same bytes)"
    };
    eprintln!(
        "{what}: {}@{} sha256 {} signed by {}",
        output::field(&answer, "name"),
        output::field(&answer, "version"),
        output::field(&answer, "sha256"),
        output::field(&answer, "signer_key"),
    );
    Ok(())
}

async fn list(client: &Client, global: &Global) -> Result<(), CliError> {
    let page = client.get("/api/scripts", &[]).await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    let mut table = Table::new(vec![
        "NAME",
        "LATEST",
        "VERSIONS",
        "SIGNER",
        "UPLOADED",
        "DESCRIPTION",
    ]);
    for row in page
        .get("scripts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        table.row(vec![
            output::field(row, "name").into(),
            output::field(row, "latest_version").into(),
            output::field(row, "versions").into(),
            short_key(&output::field(row, "signer_key")).into(),
            output::ago(row, "uploaded_at").into(),
            output::field(row, "description").into(),
        ]);
    }
    table.print();
    Ok(())
}

/// The start of a key, enough to tell keys apart in a table.
fn short_key(key: &str) -> String {
    match key.get(..12) {
        Some(start) if key.len() > 12 => format!("{start}…"),
        _ => key.to_owned(),
    }
}

async fn show(client: &Client, global: &Global, name: &str) -> Result<(), CliError> {
    let script = client
        .get(&format!("/api/scripts/{}", segment(name)), &[])
        .await?;
    if global.json {
        output::print_json(&script);
        return Ok(());
    }
    let mut out = String::new();
    for version in script
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let params: Vec<String> = version
            .get("params")
            .and_then(Value::as_array)
            .map(|params| {
                params
                    .iter()
                    .map(|p| {
                        let name = output::field(p, "name");
                        if p.get("secret").and_then(Value::as_bool) == Some(true) {
                            format!("{name} (secret)")
                        } else {
                            name
                        }
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec!["any".into()]);
        out.push_str(&format!(
            "{}@{}\n  sha256:       {}\n  size:         {} bytes\n  signer:       {}\n  uploaded:     {} by {}\n  entrypoint:   {}\n  params:       {}\n  timeout_s:    {}\n  requirements: {}\n  description:  {}\n  files:\n",
            output::field(version, "name"),
            output::field(version, "version"),
            output::field(version, "sha256"),
            output::field(version, "size"),
            output::field(version, "signer_key"),
            output::field(version, "uploaded_at"),
            output::field(version, "uploaded_by"),
            output::field(version, "entrypoint"),
            params.join(", "),
            output::field(version, "timeout_s"),
            output::field(version, "requirements"),
            output::field(version, "description"),
        ));
        for file in version
            .get("files")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let exec = file.get("executable").and_then(Value::as_bool) == Some(true);
            out.push_str(&format!(
                "    {} {:>10}  {}\n",
                if exec { "x" } else { "-" },
                output::field(file, "size"),
                output::field(file, "path"),
            ));
        }
        out.push('\n');
    }
    output::print_stdout(out.as_bytes());
    Ok(())
}
