//! The rules between the server's modules that Cargo cannot check, read from the source text
//! (the rust-analyzer "tidy" habit).
//!
//! Cargo keeps the crates in their layers: `outpost-store` depends on nothing of the server,
//! `outpost-core` on the store, `outpost-web` on both, and `outpost-server` (the binary) on all
//! three, so nothing can reach up a layer. What is left is checked here, on whole files
//! (`#[cfg(test)]` items, and only they, left out):
//! - no HTTP crate below the web crate (their manifests do not name one);
//! - inside each crate, which module may use which (`RULES`: the leaves stay leaves; the HTTP
//!   handlers do not reach the accept loop's internals), and no database crate where only the
//!   store's methods belong (`FORBIDDEN_CRATES`);
//! - a `//!` doc at the top of every file, saying why the module exists;
//! - a span on every REST handler.
//!
//! When a use is refused, move the code to the module it belongs to rather than widening a row
//! (docs/ARCHITECTURE.md, "Crates and layers", has the same table in words).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A crate of the server: its folder (under `server/`) and, for each of its top-level modules
/// that is restricted, the modules of the same crate it may use. A module without a row may use
/// any module of its crate (it is the crate's core, such as the store's own files or the
/// services); the crates it may use are its manifest's.
struct Crate {
    dir: &'static str,
    rules: &'static [(&'static str, &'static [&'static str])],
}

const CRATES: &[Crate] = &[
    Crate {
        dir: "store",
        rules: &[
            // The vocabulary every layer shares: a leaf.
            ("domain", &[]),
            ("credentials", &[]),
            ("seal", &[]),
            ("private_files", &[]),
            ("secrets", &["domain", "seal"]),
            ("metrics", &["domain"]),
        ],
    },
    Crate {
        dir: "core",
        rules: &[
            // Pure leaves.
            ("cron", &[]),
            ("providers", &[]),
            ("jwt", &[]),
            ("passwords", &[]),
            ("forwarded", &[]),
            ("mail", &["providers"]),
            // The seams: below the services, never above them.
            ("bus", &[]),
            ("finish", &["bus"]),
            ("frames", &[]),
            ("tags", &[]),
            ("access", &["jwt"]),
            ("release", &[]),
            ("builtin", &["release"]),
        ],
    },
    Crate {
        dir: "web",
        rules: &[
            // The REST handlers: services only (through AppState), the error mapping, and the
            // connection's authenticated mark.
            ("api", &["http_error", "listen"]),
            // The dashboard: like the REST handlers (api for the client's address and the
            // extractors with our error shape).
            ("ui", &["api", "http_error", "listen"]),
            ("hub", &["http_error", "listen"]),
            ("cluster", &["hub"]),
            ("listen", &[]),
            ("http_error", &[]),
        ],
    },
    Crate {
        dir: ".",
        rules: &[("config", &[]), ("ops", &["config"])],
    },
];

/// Crates that a module must not use, with why.
const FORBIDDEN_CRATES: &[(&str, &str, &str)] = &[
    ("domain", "sea_orm", "the domain model is not a row"),
    (
        "service",
        "sea_orm",
        "services call the store's methods, never SQL",
    ),
    ("api", "sea_orm", "handlers do not query the database"),
    ("ui", "sea_orm", "pages do not query the database"),
    (
        "hub",
        "sea_orm",
        "the hub calls the store's methods, never SQL",
    ),
];

/// HTTP crates: only the web crate and the binary may depend on them.
const HTTP_CRATES: &[&str] = &[
    "axum",
    "askama",
    "askama_web",
    "hyper",
    "hyper-util",
    "tower-http",
    "tokio-tungstenite",
    "utoipa-swagger-ui",
];

fn server_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn src_of(krate: &Crate) -> PathBuf {
    server_dir().join(krate.dir).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`service/jobs.rs` → `service`).
fn module_of(src: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The file's code, line by line with numbers: comments left out, and each `#[cfg(test)]`
/// item (a `mod tests { … }`, a helper function) skipped to its closing brace, so the lines
/// after it are read too.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut skipping = false;
    let mut depth = 0i64;
    let mut opened = false;
    for (number, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        if !skipping && code.trim_start().starts_with("#[cfg(test)]") {
            skipping = true;
            depth = 0;
            opened = false;
            continue;
        }
        if skipping {
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            // An item without a body (`mod tests;`, `use …;`) ends at its semicolon.
            let ended = if opened {
                depth <= 0
            } else {
                code.trim_end().ends_with(';')
            };
            if ended {
                skipping = false;
            }
            continue;
        }
        if !code.trim().is_empty() {
            lines.push((number + 1, code.to_owned()));
        }
    }
    lines
}

/// The names that follow `crate::` on a line (`crate::a::b` → `a`; `crate::{a, b}` → both).
fn crate_uses(line: &str) -> Vec<String> {
    let mut uses = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    uses.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                uses.push(name);
            }
        }
        rest = after;
    }
    uses
}

/// Whether the line names `krate` as a path root (`axum::…`, `use axum;`).
fn uses_crate(line: &str, krate: &str) -> bool {
    let pattern = format!("{krate}::");
    line.match_indices(&pattern).any(|(at, _)| {
        at == 0
            || !line[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

/// Every breach of the rules in the server's crates, as messages.
fn breaches() -> Vec<String> {
    let mut found = Vec::new();
    for krate in CRATES {
        let src = src_of(krate);
        let rules: BTreeMap<&str, BTreeSet<&str>> = krate
            .rules
            .iter()
            .map(|(module, allowed)| (*module, allowed.iter().copied().collect()))
            .collect();
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        files.sort();
        for file in &files {
            let shown = file
                .strip_prefix(server_dir())
                .expect("under server/")
                .display();
            let text = std::fs::read_to_string(file).expect("read a source file");
            if !text.trim_start().starts_with("//!") {
                found.push(format!(
                    "server/{shown}: no `//!` module doc at the top (say why the module exists)"
                ));
            }
            let module = module_of(&src, file);
            let allowed = rules.get(module.as_str());
            for (number, line) in code_lines(&text) {
                if let Some(allowed) = allowed {
                    for name in crate_uses(&line) {
                        if name == module || allowed.contains(name.as_str()) {
                            continue;
                        }
                        found.push(format!(
                            "server/{shown}:{number}: `{module}` may not use `crate::{name}` \
                             (allowed: {allowed:?}); move the code to the module it belongs to"
                        ));
                    }
                }
                for (restricted, forbidden, why) in FORBIDDEN_CRATES {
                    if module == *restricted && uses_crate(&line, forbidden) {
                        found.push(format!(
                            "server/{shown}:{number}: `{module}` may not use `{forbidden}`: {why}"
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn every_module_keeps_to_its_layer_and_says_why_it_exists() {
    let found = breaches();
    assert!(
        found.is_empty(),
        "the layering of docs/ARCHITECTURE.md is broken:\n{}",
        found.join("\n")
    );
}

/// The dependencies a manifest declares, by name (`[dependencies]` only).
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("read a manifest");
    let mut in_dependencies = false;
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && !line.starts_with('#') && !line.is_empty() {
            let name = line
                .split(['.', '=', ' '])
                .next()
                .unwrap_or_default()
                .to_owned();
            names.push(name);
        }
    }
    names
}

#[test]
fn no_http_crate_below_the_web_crate() {
    for dir in ["store", "core"] {
        let manifest = server_dir().join(dir).join("Cargo.toml");
        let deps = dependencies(&manifest);
        assert!(
            deps.iter().any(|d| d == "serde"),
            "{}: the manifest reader found no dependencies",
            manifest.display()
        );
        for http in HTTP_CRATES {
            assert!(
                !deps.iter().any(|d| d == http),
                "server/{dir}/Cargo.toml depends on {http}: HTTP belongs to outpost-web"
            );
        }
    }
}

#[test]
fn the_rules_name_only_modules_that_exist() {
    for krate in CRATES {
        let src = src_of(krate);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
        for (module, allowed) in krate.rules {
            assert!(
                modules.contains(*module),
                "RULES of server/{} names no module {module}",
                krate.dir
            );
            for target in *allowed {
                assert!(
                    modules.contains(*target),
                    "RULES of server/{} lets {module} use {target}, which does not exist",
                    krate.dir
                );
            }
        }
    }
}

#[test]
fn the_reader_sees_uses_in_every_form() {
    assert_eq!(crate_uses("use crate::store::{agent, command};"), ["store"]);
    assert_eq!(
        crate_uses("use crate::{bus, finish::Finish};"),
        ["bus", "finish"]
    );
    assert_eq!(
        crate_uses("let x = crate::metrics::frame(crate::domain::Transport::Http);"),
        ["metrics", "domain"]
    );
    assert!(code_lines("/// crate::api is mentioned\nfn f() {}").len() == 1);
    assert!(uses_crate("use axum::Json;", "axum"));
    assert!(uses_crate("    axum::http::StatusCode", "axum"));
    assert!(!uses_crate("use not_axum::Json;", "axum"));
}

#[test]
fn code_after_a_test_item_is_read() {
    let text = "\
fn a() {}
#[cfg(test)]
fn helper() {
    let x = { 1 };
}
fn b() { crate::x::y(); }
#[cfg(test)]
mod tests;
fn c() {}
#[cfg(test)]
mod tests {
    fn t() { crate::hidden(); }
}
";
    let lines: Vec<String> = code_lines(text).into_iter().map(|(_, l)| l).collect();
    assert_eq!(
        lines,
        ["fn a() {}", "fn b() { crate::x::y(); }", "fn c() {}"]
    );
}

/// Every REST handler opens a span of its own (`#[tracing::instrument(level = "debug",
/// skip_all, …)]`), so a request's log lines carry its tenant and ids, and `skip_all` keeps
/// its body (which may hold secret parameters) out of the span. At debug level: at the default
/// `info` the services' spans carry the same ids, once.
#[test]
fn every_handler_has_a_span_that_skips_its_arguments() {
    let mut files = Vec::new();
    rust_files(&server_dir().join("web/src/api"), &mut files);
    let mut missing = Vec::new();
    let mut handlers = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with("pub async fn ") {
                continue;
            }
            // The attributes right above the function.
            let attributes: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("///"))
                .copied()
                .collect();
            let documented = attributes.iter().any(|l| l.contains("utoipa::path"));
            let spanned = attributes
                .iter()
                .any(|l| l.contains("tracing::instrument(") && l.contains("skip_all"));
            if documented {
                handlers += 1;
            }
            if documented && !spanned {
                missing.push(format!("{}:{}: {line}", file.display(), i + 1));
            }
        }
    }
    assert!(
        handlers > 50,
        "found only {handlers} handlers: is the path right?"
    );
    assert!(
        missing.is_empty(),
        "handlers without #[tracing::instrument(skip_all, …)]:\n{}",
        missing.join("\n")
    );
}
