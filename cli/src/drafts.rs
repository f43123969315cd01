//! `outpost scripts drafts` and `outpost scripts sign --draft NAME@VERSION` (CONTRACT.md §20):
//! signing, on the operator's machine, a draft edited in the dashboard.
//!
//! The server that holds a draft is not trusted to say what changed. So the CLI downloads the
//! draft's exact bytes, downloads the newest signed version's bytes and checks them against
//! the operator's own key (the signature the server lists must verify with that key over
//! those bytes); only then is the diff made against them. If the newest version does not
//! verify with this key, the whole draft is shown as new. The diff is printed even with
//! `--yes`, the signature covers the bytes that were shown, and if the draft changed on the
//! server in between, the server refuses it (`draft_changed`).

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use outpost_protocol::bundle::{self, SignatureFile, archive, limits};
use reqwest::Method;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::Value;

use crate::args::Global;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, Table};

/// A bundle of up to 16 MiB may take a while on a slow link.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Past this many cells (lines × lines) of the part that differs, a file's change is shown as
/// all removed and all added rather than computed line by line.
const MAX_DIFF_CELLS: usize = 4_000_000;

/// A file of a bundle: its bytes and execute bit.
type Files = BTreeMap<String, (Vec<u8>, bool)>;

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `outpost scripts drafts`.
pub async fn list(client: &Client, global: &Global) -> Result<(), CliError> {
    let page = client.get("/api/script-drafts", &[]).await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    let mut table = Table::new(vec!["DRAFT", "FROM", "SHA256", "SIZE", "AUTHOR", "SAVED"]);
    for row in page
        .get("drafts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        table.row(vec![
            format!(
                "{}@{}",
                output::field(row, "name"),
                output::field(row, "version")
            )
            .into(),
            output::field(row, "base_version").into(),
            output::field(row, "sha256").get(..16).unwrap_or("").into(),
            output::field(row, "size").into(),
            output::field(row, "author").into(),
            output::ago(row, "updated_at").into(),
        ]);
    }
    table.print();
    Ok(())
}

/// Reads the private key file of `outpost scripts keygen`.
pub fn load_key(key_path: &Path) -> Result<Ed25519KeyPair, CliError> {
    let text = std::fs::read_to_string(key_path)
        .map_err(|e| CliError::Other(format!("cannot read {}: {e}", key_path.display())))?;
    let pkcs8 = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| {
            CliError::Usage(format!(
                "{}: not a key of `outpost scripts keygen` (base64 PKCS#8)",
                key_path.display()
            ))
        })?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| {
        CliError::Usage(format!(
            "{}: not an Ed25519 private key ({e})",
            key_path.display()
        ))
    })
}

/// The signature file of `bytes` made with `pair`.
pub fn signature_of(pair: &Ed25519KeyPair, bytes: &[u8]) -> SignatureFile {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
    let size = bytes.len() as u64;
    let signature = pair.sign(bundle::signed_message(&sha256, size).as_bytes());
    SignatureFile {
        format: bundle::SIGNATURE_FORMAT.into(),
        sha256,
        size,
        key: b64.encode(pair.public_key().as_ref()),
        signature: b64.encode(signature.as_ref()),
    }
}

/// GETs a bundle's bytes, reading no more than a bundle may hold.
async fn download(client: &Client, path: &str) -> Result<Vec<u8>, CliError> {
    let mut response = client
        .send(Method::GET, path, &[], None, Some(DOWNLOAD_TIMEOUT))
        .await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| client.transport(&e))? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > limits::MAX_BUNDLE_BYTES {
            return Err(CliError::Other(format!(
                "{path}: the server sent more than {} bytes, more than a bundle may hold",
                limits::MAX_BUNDLE_BYTES
            )));
        }
    }
    Ok(bytes)
}

/// Every file of a bundle, through the same walker the server and the agents use.
fn files_of(what: &str, bytes: &[u8]) -> Result<(archive::Contents, Files), CliError> {
    let mut files = Files::new();
    let contents = archive::walk(bytes, |path, kind, reader| {
        if let archive::EntryKind::File { executable } = kind {
            let mut content = Vec::new();
            reader.read_to_end(&mut content)?;
            files.insert(path.to_owned(), (content, executable));
        }
        Ok(())
    })
    .map_err(|refused| CliError::Other(format!("{what}: refused: {refused}")))?;
    Ok((contents, files))
}

/// Whether `bytes` were signed by `public` (standard base64) with `signature`, as the library
/// signs bundles.
fn verifies(public: &[u8], bytes: &[u8], signature: &str) -> bool {
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(
            bundle::signed_message(&sha256, bytes.len() as u64).as_bytes(),
            &signature,
        )
        .is_ok()
}

/// `outpost scripts sign --draft NAME@VERSION --key FILE [--yes]`.
pub async fn sign(
    client: &Client,
    global: &Global,
    reference: &str,
    key_path: &Path,
    yes: bool,
) -> Result<(), CliError> {
    let usage = || {
        CliError::Usage(format!(
            "--draft {:?}: name a draft as NAME@VERSION (outpost scripts drafts lists them)",
            output::escape(reference)
        ))
    };
    let (name, version) = bundle::split_reference(reference).map_err(|_| usage())?;
    let version = version.ok_or_else(usage)?;
    let pair = load_key(key_path)?;
    let public = pair.public_key().as_ref().to_vec();
    let public_b64 = base64::engine::general_purpose::STANDARD.encode(&public);

    let draft_bytes = download(
        client,
        &format!("/api/scripts/{}/drafts/{version}/bundle", segment(name)),
    )
    .await?;
    let what = format!("draft {name}@{version}");
    let (contents, draft_files) = files_of(&what, &draft_bytes)?;
    if contents.manifest.name != name || contents.manifest.version != version {
        return Err(CliError::Other(format!(
            "{what}: its {} names {}@{}, not the draft asked for; nothing was signed",
            bundle::MANIFEST_FILE,
            output::escape(&contents.manifest.name),
            contents.manifest.version
        )));
    }
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &draft_bytes));

    // The newest signed version, believed only if it verifies with this key.
    let newest = match client
        .get(&format!("/api/scripts/{}", segment(name)), &[])
        .await
    {
        Ok(script) => script
            .get("versions")
            .and_then(Value::as_array)
            .and_then(|v| v.first())
            .cloned(),
        Err(CliError::Api { status: 404, .. }) => None,
        Err(err) => return Err(err),
    };
    let mut base: Option<(String, Files)> = None;
    let mut note = format!("{name} has no signed version: the whole draft is new");
    if let Some(newest) = newest {
        let base_version = output::field(&newest, "version");
        let bytes = download(
            client,
            &format!(
                "/api/scripts/{}/versions/{}/bundle",
                segment(name),
                segment(&base_version)
            ),
        )
        .await?;
        let signer = output::field(&newest, "signer_key");
        let signer_bytes = base64::engine::general_purpose::STANDARD
            .decode(signer.trim())
            .unwrap_or_default();
        if signer_bytes == public && verifies(&public, &bytes, &output::field(&newest, "signature"))
        {
            let (_, files) = files_of(&format!("{name}@{base_version}"), &bytes)?;
            note = format!(
                "against {name}@{base_version}, the newest signed version (its signature verifies with your key)"
            );
            base = Some((base_version, files));
        } else {
            note = format!(
                "the newest signed version, {name}@{}, does not verify with your key {public_b64} \
                 (signed by {}): it is not a base this machine can vouch for, so the whole draft \
                 is shown as new",
                output::escape(&base_version),
                output::escape(&signer)
            );
        }
    }

    let empty = Files::new();
    let old = base.as_ref().map_or(&empty, |(_, files)| files);
    let diff = diff_files(old, &draft_files);
    output::print_stdout(diff.as_bytes());
    eprintln!(
        "draft {name}@{version}: sha256 {sha256}, {} bytes, {} files, {}; diff {note}",
        draft_bytes.len(),
        draft_files.len(),
        if diff.is_empty() {
            "no change"
        } else {
            "changes above"
        }
    );
    if !yes {
        confirm(&format!(
            "Sign {name}@{version} (sha256 {sha256}) with key {public_b64} and make it a version?"
        ))?;
    }
    let file = signature_of(&pair, &draft_bytes);
    let body = serde_json::to_value(&file).map_err(|e| CliError::Other(format!("{e}")))?;
    let answer = client
        .json(
            Method::POST,
            &format!("/api/scripts/{}/drafts/{version}/signature", segment(name)),
            &[],
            Some(&body),
        )
        .await?;
    if global.json {
        output::print_json(&answer);
        return Ok(());
    }
    eprintln!(
        "signed: {}@{} sha256 {} by {}; it is a version now",
        output::field(&answer, "name"),
        output::field(&answer, "version"),
        output::field(&answer, "sha256"),
        output::field(&answer, "signer_key"),
    );
    Ok(())
}

/// Asks `question` on stderr and reads the answer from stdin (a terminal or not: the end of
/// input answers no). Anything but yes refuses.
fn confirm(question: &str) -> Result<(), CliError> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Other(format!("cannot read the answer: {e}")))?;
    if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Other("not confirmed; nothing was signed".into()))
    }
}

/// The changes from `old` to `new`, file by file, as a unified diff (text escaped for the
/// terminal: a bundle's text never reaches it raw).
pub fn diff_files(old: &Files, new: &Files) -> String {
    let mut out = String::new();
    let paths: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for path in paths {
        let shown = output::escape(path);
        let (a, b) = (old.get(path), new.get(path));
        if a == b {
            continue;
        }
        let mode = |f: Option<&(Vec<u8>, bool)>| match f {
            Some((_, true)) => "755",
            Some((_, false)) => "644",
            None => "---",
        };
        out.push_str(&format!(
            "--- {}\n+++ {}\n",
            if a.is_some() {
                format!("a/{shown}")
            } else {
                "/dev/null".into()
            },
            if b.is_some() {
                format!("b/{shown}")
            } else {
                "/dev/null".into()
            }
        ));
        if mode(a) != mode(b) && a.is_some() && b.is_some() {
            out.push_str(&format!("mode {} -> {}\n", mode(a), mode(b)));
        }
        let text = |f: Option<&(Vec<u8>, bool)>| -> Option<Vec<String>> {
            match f {
                None => Some(Vec::new()),
                Some((bytes, _)) => std::str::from_utf8(bytes)
                    .ok()
                    .map(|t| t.lines().map(escape_line).collect()),
            }
        };
        match (text(a), text(b)) {
            (Some(x), Some(y)) => {
                if x != y {
                    out.push_str(&unified(&x, &y));
                }
            }
            _ => {
                let describe = |f: Option<&(Vec<u8>, bool)>| match f {
                    None => "none".to_owned(),
                    Some((bytes, _)) => format!(
                        "{} bytes, sha256 {}",
                        bytes.len(),
                        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
                    ),
                };
                out.push_str(&format!(
                    "binary file changed: {} -> {}\n",
                    describe(a),
                    describe(b)
                ));
            }
        }
    }
    out
}

/// A line with its control characters escaped, tabs aside (they move the cursor, nothing
/// more, and a diff of indentation must show them).
fn escape_line(line: &str) -> String {
    line.split('\t')
        .map(|part| output::escape(part).into_owned())
        .collect::<Vec<_>>()
        .join("\t")
}

/// What a line of a diff is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// The line-by-line changes from `a` to `b` in hunks with [`CONTEXT`] lines around them.
fn unified(a: &[String], b: &[String]) -> String {
    // Common start and end first: most edits touch a few lines of a file.
    let start = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let end = a[start..]
        .iter()
        .rev()
        .zip(b[start..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[start..a.len() - end], &b[start..b.len() - end]);
    let mut ops: Vec<(Op, usize, usize)> = (0..start).map(|i| (Op::Same, i, i)).collect();
    if am.len().saturating_mul(bm.len()) > MAX_DIFF_CELLS {
        ops.extend((0..am.len()).map(|i| (Op::Removed, start + i, 0)));
        ops.extend((0..bm.len()).map(|j| (Op::Added, 0, start + j)));
    } else {
        // Longest common subsequence, table from the end.
        let (n, m) = (am.len(), bm.len());
        let mut table = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                table[i * (m + 1) + j] = if am[i] == bm[j] {
                    table[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    table[(i + 1) * (m + 1) + j].max(table[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push((Op::Same, start + i, start + j));
                i += 1;
                j += 1;
            } else if i < n
                && (j == m || table[(i + 1) * (m + 1) + j] >= table[i * (m + 1) + j + 1])
            {
                ops.push((Op::Removed, start + i, 0));
                i += 1;
            } else {
                ops.push((Op::Added, 0, start + j));
                j += 1;
            }
        }
    }
    let (sa, sb) = (a.len() - end, b.len() - end);
    ops.extend((0..end).map(|k| (Op::Same, sa + k, sb + k)));
    // Hunks: runs of changes with their context, merged when the context touches.
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (op, _, _))| *op != Op::Same)
        .map(|(k, _)| k)
        .collect();
    let mut out = String::new();
    let mut k = 0;
    while k < changed.len() {
        let from = changed[k].saturating_sub(CONTEXT);
        let mut to = changed[k];
        while k < changed.len() && changed[k] <= to + 2 * CONTEXT + 1 {
            to = changed[k];
            k += 1;
        }
        let to = (to + CONTEXT + 1).min(ops.len());
        let hunk = &ops[from..to];
        let a_start = hunk
            .iter()
            .find(|(op, _, _)| *op != Op::Added)
            .map_or(0, |(_, i, _)| i + 1);
        let b_start = hunk
            .iter()
            .find(|(op, _, _)| *op != Op::Removed)
            .map_or(0, |(_, _, j)| j + 1);
        let a_len = hunk.iter().filter(|(op, _, _)| *op != Op::Added).count();
        let b_len = hunk.iter().filter(|(op, _, _)| *op != Op::Removed).count();
        out.push_str(&format!("@@ -{a_start},{a_len} +{b_start},{b_len} @@\n"));
        for (op, i, j) in hunk {
            match op {
                Op::Same => out.push_str(&format!(" {}\n", a[*i])),
                Op::Removed => out.push_str(&format!("-{}\n", a[*i])),
                Op::Added => out.push_str(&format!("+{}\n", b[*j])),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str, bool)]) -> Files {
        list.iter()
            .map(|(p, t, x)| ((*p).to_owned(), (t.as_bytes().to_vec(), *x)))
            .collect()
    }

    #[test]
    fn a_diff_shows_changed_lines_with_context_and_modes() {
        let old = files(&[
            ("run.sh", "#!/bin/sh\na\nb\nc\nd\ne\nf\ng\nh\n", true),
            ("gone.txt", "x\n", false),
            ("same.txt", "s\n", false),
        ]);
        let new = files(&[
            ("run.sh", "#!/bin/sh\na\nb\nc\nD\ne\nf\ng\nh\n", true),
            ("new.txt", "\u{1b}[31mred\n", true),
            ("same.txt", "s\n", false),
        ]);
        let diff = diff_files(&old, &new);
        assert!(
            diff.contains(
                "--- a/run.sh\n+++ b/run.sh\n@@ -2,7 +2,7 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n"
            ),
            "{diff}"
        );
        assert!(diff.contains("--- a/gone.txt\n+++ /dev/null\n"), "{diff}");
        assert!(diff.contains("+\\x1b[31mred"), "escaped: {diff}");
        assert!(!diff.contains("same.txt"), "{diff}");
        let moded = files(&[("run.sh", "#!/bin/sh\na\nb\nc\nd\ne\nf\ng\nh\n", false)]);
        assert!(diff_files(&old, &moded).contains("mode 755 -> 644"));
        assert!(diff_files(&old, &old).is_empty());
        let tabbed = files(&[("run.sh", "#!/bin/sh\na\nb\nc\nd\ne\nf\ng\nh\n\tx\n", true)]);
        assert!(
            diff_files(&old, &tabbed).contains("+\tx\n"),
            "a tab stays a tab"
        );
    }
}
