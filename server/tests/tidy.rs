//! The server's layering, checked from its source text (the rust-analyzer "tidy" habit).
//!
//! `docs/ARCHITECTURE.md` states which module may use which; [`RULES`] is that table, and this
//! test reads every `crate::…` path in the code of `server/src` (comments and `#[cfg(test)]`
//! modules left out) and fails on a use the table does not allow, on a module the table does
//! not know, on a forbidden crate in a layer that must not see it (axum below the HTTP layer,
//! the database crates outside the store), and on a file without a `//!` module doc.
//!
//! When a new module is added, give it a row here and in ARCHITECTURE.md's table; when a use
//! is refused, move the code to the layer it belongs to rather than widening the row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the crate, and the modules it may use. Items at the crate root
/// (`crate::AppState`, `crate::Config`, `crate::create_private_dir`) count as the module
/// named in [`ROOT_ITEMS`].
const RULES: &[(&str, &[&str])] = &[
    // Wiring: everything.
    ("lib", &["*"]),
    ("main", &["*"]),
    // HTTP: the REST handlers, on services only (store for the rows their views show).
    (
        "api",
        &[
            "service",
            "domain",
            "http_error",
            "metrics",
            "store",
            "release",
            "builtin",
            "lib",
        ],
    ),
    // The dashboard: pages over the services, like the REST handlers (api for the client's
    // address and the extractors with our error shape).
    (
        "ui",
        &["service", "domain", "http_error", "store", "lib", "api"],
    ),
    // Agents' connections: the in-process bus.
    (
        "hub",
        &[
            "bus",
            "finish",
            "frames",
            "store",
            "tags",
            "access",
            "http_error",
            "metrics",
            "listen",
            "domain",
        ],
    ),
    // Several nodes on PostgreSQL: the bus across nodes, over this node's hub and the store.
    ("cluster", &["bus", "hub", "store", "domain", "metrics"]),
    // Domain operations.
    (
        "service",
        &[
            "access",
            "cron",
            "providers",
            "bus",
            "finish",
            "frames",
            "store",
            "tags",
            "secrets",
            "seal",
            "domain",
            "metrics",
            "builtin",
            "release",
            "forwarded",
            "credentials",
            "jwt",
            "passwords",
            "mail",
        ],
    ),
    (
        "access",
        &["credentials", "domain", "jwt", "listen", "store"],
    ),
    // Fire times: a leaf.
    ("cron", &[]),
    // Integrations' payloads and the meaning of providers' answers: a leaf.
    ("providers", &[]),
    // The SMTP sender of email integrations: I/O over what `providers` rendered.
    ("mail", &["providers"]),
    ("finish", &["bus", "metrics", "store", "domain"]),
    ("bus", &["domain", "store"]),
    ("frames", &["domain", "seal", "secrets", "store"]),
    ("tags", &["store"]),
    (
        "store",
        &["domain", "credentials", "secrets", "seal", "metrics"],
    ),
    ("secrets", &["domain", "seal"]),
    ("http_error", &["domain"]),
    ("metrics", &["domain"]),
    // Operator commands and the builds the server ships.
    ("admin_key", &["store", "credentials", "config", "lib"]),
    (
        "users_admin",
        &["store", "credentials", "passwords", "domain", "service"],
    ),
    (
        "tenants_admin",
        &["store", "domain", "service", "users_admin"],
    ),
    ("backup", &["store", "config", "lib"]),
    ("release", &["store", "lib"]),
    ("builtin", &["release", "lib"]),
    // Leaves.
    ("domain", &[]),
    ("credentials", &[]),
    ("seal", &[]),
    ("config", &["forwarded"]),
    ("forwarded", &[]),
    ("jwt", &[]),
    ("passwords", &[]),
    ("listen", &["config"]),
];

/// Items defined at the crate root, by the module that owns them.
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("AppState", "lib"),
    ("create_private_dir", "lib"),
    ("Config", "config"),
];

/// Crates a layer must not use, with why.
const FORBIDDEN_CRATES: &[(&str, &str, &str)] = &[
    (
        "service",
        "axum",
        "services never see HTTP: handlers parse and serialise",
    ),
    (
        "domain",
        "axum",
        "the domain model is shared by every layer",
    ),
    ("store", "axum", "the store knows nothing of HTTP"),
    ("bus", "axum", "the bus is transport-neutral"),
    ("finish", "axum", "the finish path is transport-neutral"),
    ("domain", "sea_orm", "the domain model is not a row"),
    ("api", "sea_orm", "handlers do not query the database"),
    ("ui", "sea_orm", "pages do not query the database"),
    (
        "service",
        "sea_orm",
        "services call the store's methods, never SQL",
    ),
    (
        "hub",
        "sea_orm",
        "the hub calls the store's methods, never SQL",
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
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
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(src()).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The file's code: comments and `#[cfg(test)]` modules (which sit at the end of a file, by
/// this crate's habit) left out.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
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

/// Every breach of the rules in the crate's source, as messages.
fn breaches() -> Vec<String> {
    let rules: BTreeMap<&str, BTreeSet<&str>> = RULES
        .iter()
        .map(|(module, allowed)| (*module, allowed.iter().copied().collect()))
        .collect();
    let root_items: BTreeMap<&str, &str> = ROOT_ITEMS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in &files {
        let shown = file.strip_prefix(src()).expect("under src").display();
        let text = std::fs::read_to_string(file).expect("read a source file");
        if !text.trim_start().starts_with("//!") {
            found.push(format!(
                "server/src/{shown}: no `//!` module doc at the top (say why the module exists)"
            ));
        }
        let module = module_of(file);
        let Some(allowed) = rules.get(module.as_str()) else {
            found.push(format!(
                "server/src/{shown}: module `{module}` has no row in RULES (tests/tidy.rs) \
                 and docs/ARCHITECTURE.md"
            ));
            continue;
        };
        for (number, line) in code_lines(&text) {
            for name in crate_uses(&line) {
                let target = root_items.get(name.as_str()).copied().unwrap_or(&name);
                if target == module || allowed.contains("*") || allowed.contains(target) {
                    continue;
                }
                found.push(format!(
                    "server/src/{shown}:{number}: `{module}` may not use `crate::{name}` \
                     (allowed: {allowed:?}); move the code to the layer it belongs to"
                ));
            }
            for (layer, krate, why) in FORBIDDEN_CRATES {
                if module == *layer && uses_crate(&line, krate) {
                    found.push(format!(
                        "server/src/{shown}:{number}: `{module}` may not use `{krate}`: {why}"
                    ));
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

#[test]
fn the_rules_name_only_modules_that_exist() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    for (module, allowed) in RULES {
        assert!(modules.contains(*module), "RULES names no module {module}");
        for target in *allowed {
            assert!(
                *target == "*" || modules.contains(*target),
                "RULES lets {module} use {target}, which does not exist"
            );
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

/// Every REST handler opens a span of its own (`#[tracing::instrument(level = "debug",
/// skip_all, …)]`), so a request's log lines carry its tenant and ids, and `skip_all` keeps
/// its body (which may hold secret parameters) out of the span. At debug level: at the default
/// `info` the services' spans carry the same ids, once.
#[test]
fn every_handler_has_a_span_that_skips_its_arguments() {
    let mut files = Vec::new();
    rust_files(&src().join("api"), &mut files);
    let mut missing = Vec::new();
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
            if documented && !spanned {
                missing.push(format!("{}:{}: {line}", file.display(), i + 1));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "handlers without #[tracing::instrument(skip_all, …)]:\n{}",
        missing.join("\n")
    );
}
