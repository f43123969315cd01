//! The script manifest: the only scripts this agent will ever run.
//!
//! `script_manifest.json` lists scripts by name. A `run` command names a script; anything not
//! listed is refused before any process starts. Each script's `path` is relative to the
//! manifest's folder and must resolve, symlinks included, to a regular file inside that folder.
//! The path is resolved again just before each run, so swapping a file for a symlink after the
//! manifest was loaded does not escape the folder either.
//!
//! Parameters from a request only ever become environment variables named
//! `OUTPOST_PARAM_<NAME>`; the prefix makes names like `PATH`, `LD_PRELOAD` or `BASH_ENV`
//! impossible by construction, and nothing from a request reaches argv or a shell.
//!
//! A script's `params` lists names (`"NAME"`) or entries (`{"name": "DB_PASSWORD", "secret":
//! true}`), mixed as needed, so manifests written before entries existed keep working. The
//! list, with each parameter's `secret` mark, is announced in `register`: the server then
//! keeps those values sealed at rest and masked wherever a job is shown. An entry with a key
//! other than `name` and `secret` leaves its script out, like any other broken entry: a
//! misspelt `"secret"` must not quietly make a secret an ordinary parameter.
//!
//! The optional `library` object is the machine owner's consent to scripts from the server's
//! library (CONTRACT.md §15): `{"allow": ["backup-*"], "keys": ["<base64 Ed25519 public key>"]}`.
//! It fails closed: a `library` that breaks a rule (an unknown key, a bad pattern, a key that
//! is not 32 bytes of base64) is dropped whole with an error in the log, so the agent runs no
//! library script rather than one its owner did not mean to allow; the manifest's scripts
//! still load. Keeping the previous policy instead would be worse: an owner who removes a
//! stolen key and makes a typo on the way would keep trusting the stolen key. A manifest may
//! hold a `library` and no `scripts`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use outpost_protocol::bundle::LibraryPolicy;
use outpost_protocol::limits::{
    MAX_PARAM_VALUE, MAX_REGISTER_PARAMS, MAX_SCRIPT_DESCRIPTION_LEN, MAX_SCRIPT_PARAMS,
    MAX_SCRIPTS,
};
use outpost_protocol::{ParamInfo, ScriptInfo, check};
use serde::Deserialize;
use serde_json::Value;

/// Largest manifest file read.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// A whitelisted script.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Name callers use.
    pub name: String,
    /// Path as written in the manifest, relative to its folder.
    pub path: String,
    /// What it does.
    pub description: Option<String>,
    /// Fixed arguments from the manifest.
    pub args: Vec<String>,
    /// Default timeout, used when the command does not give one.
    pub timeout_s: Option<u32>,
    /// Parameters the script accepts, with their `secret` marks; `None` accepts any valid
    /// name.
    pub params: Option<Vec<ParamInfo>>,
}

/// A loaded manifest.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// The manifest's folder, canonical. Scripts must resolve inside it.
    pub dir: PathBuf,
    scripts: BTreeMap<String, Script>,
    /// The consent to library scripts; `None` runs none.
    library: Option<LibraryPolicy>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    scripts: Vec<RawScript>,
    /// Checked in [`library_policy`], so that a bad one is reported by field and dropped.
    #[serde(default)]
    library: Option<Value>,
}

#[derive(Deserialize)]
struct RawScript {
    name: String,
    path: String,
    description: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    timeout_s: Option<u32>,
    /// Names or `{name, secret}` entries, checked one by one in [`validate`] so that a bad
    /// entry is reported by name.
    params: Option<Vec<Value>>,
}

impl Manifest {
    /// Reads a manifest. A missing file is an empty manifest; unreadable or invalid JSON is an
    /// error (the caller keeps its previous manifest). Entries that break the rules are left
    /// out with a warning, so one bad entry does not disable the others.
    pub fn load(path: &Path) -> Result<Self, String> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let text = match std::fs::metadata(path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    dir: dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
                    scripts: BTreeMap::new(),
                    library: None,
                });
            }
            Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
            Ok(meta) if meta.len() > MAX_MANIFEST_BYTES => {
                return Err(format!(
                    "{} is larger than {MAX_MANIFEST_BYTES} bytes",
                    path.display()
                ));
            }
            Ok(_) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        };
        let raw: RawManifest = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a valid manifest: {e}", path.display()))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
        let mut scripts = BTreeMap::new();
        let mut over = 0;
        let mut params = 0;
        for entry in raw.scripts {
            match validate(&dir, entry) {
                Ok(script) => {
                    if scripts.contains_key(&script.name) {
                        tracing::warn!(name = %script.name, "duplicate script name in the manifest; keeping the first");
                        continue;
                    }
                    // The server refuses a `register` announcing more (see
                    // `outpost_protocol::limits`): keep the first ones rather than none.
                    let declares = script.params.as_ref().map_or(0, Vec::len);
                    if scripts.len() == MAX_SCRIPTS || params + declares > MAX_REGISTER_PARAMS {
                        over += 1;
                        continue;
                    }
                    params += declares;
                    scripts.insert(script.name.clone(), script);
                }
                Err(why) => tracing::warn!("manifest entry left out: {why}"),
            }
        }
        if over > 0 {
            tracing::error!(
                left_out = over,
                "the manifest lists more than {MAX_SCRIPTS} scripts or {MAX_REGISTER_PARAMS} parameters in all (the protocol's limits); the first that fit are kept"
            );
        }
        let library = match raw.library.as_ref().map(library_policy) {
            None => None,
            Some(Ok(policy)) => Some(policy),
            Some(Err(why)) => {
                tracing::error!(
                    "{}: library: {why}; no library script will run until it is fixed",
                    path.display()
                );
                None
            }
        };
        Ok(Self {
            dir,
            scripts,
            library,
        })
    }

    /// The consent to library scripts, as `register` carries it; `None` runs none.
    pub fn library(&self) -> Option<&LibraryPolicy> {
        self.library.as_ref()
    }

    /// The scripts as announced in `register`.
    pub fn infos(&self) -> Vec<ScriptInfo> {
        self.scripts
            .values()
            .map(|s| ScriptInfo {
                name: s.name.clone(),
                description: s.description.clone(),
                params: s.params.clone(),
            })
            .collect()
    }

    /// A script by name.
    pub fn get(&self, name: &str) -> Option<&Script> {
        self.scripts.get(name)
    }

    /// Resolves a script's file now, refusing anything outside the manifest's folder.
    pub fn resolve(&self, script: &Script) -> Result<PathBuf, String> {
        resolve(&self.dir, &script.path)
    }
}

/// The manifest's `library` object, checked: only `allow` and `keys`, each a list of strings
/// within the protocol's limits ([`LibraryPolicy::check`]).
fn library_policy(value: &Value) -> Result<LibraryPolicy, String> {
    let Some(fields) = value.as_object() else {
        return Err(
            "must be an object like {\"allow\": [\"backup-*\"], \"keys\": [\"<base64 key>\"]}"
                .into(),
        );
    };
    if let Some(key) = fields.keys().find(|k| *k != "allow" && *k != "keys") {
        return Err(format!(
            "unknown key {:?} (it takes \"allow\" and \"keys\")",
            truncate(key)
        ));
    }
    let list = |name: &str| -> Result<Vec<String>, String> {
        match fields.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("{name}[{i}] must be a string"))
                })
                .collect(),
            Some(_) => Err(format!("{name} must be a list of strings")),
        }
    };
    let policy = LibraryPolicy {
        allow: list("allow")?,
        keys: list("keys")?,
    };
    policy
        .check()
        .map_err(|why| why.strip_prefix("library.").unwrap_or(&why).to_owned())?;
    Ok(policy)
}

fn validate(dir: &Path, raw: RawScript) -> Result<Script, String> {
    validate_name(&raw.name)?;
    resolve(dir, &raw.path).map_err(|e| format!("script {:?}: {e}", raw.name))?;
    let params = match &raw.params {
        None => None,
        Some(entries) if entries.len() > MAX_SCRIPT_PARAMS => {
            return Err(format!(
                "script {:?}: {} parameters; the limit is {MAX_SCRIPT_PARAMS}",
                raw.name,
                entries.len()
            ));
        }
        Some(entries) => {
            Some(params_of(entries).map_err(|e| format!("script {:?}: {e}", raw.name))?)
        }
    };
    if raw.args.iter().any(|a| a.contains('\0')) {
        return Err(format!("script {:?}: an argument contains NUL", raw.name));
    }
    let description = raw.description.map(|d| fit_description(&raw.name, d));
    Ok(Script {
        name: raw.name,
        path: raw.path,
        description,
        args: raw.args,
        timeout_s: raw.timeout_s.filter(|t| *t > 0),
        params,
    })
}

/// A script's `params`: each a name, or an entry `{"name": …, "secret": true|false}`.
fn params_of(entries: &[Value]) -> Result<Vec<ParamInfo>, String> {
    let mut params: Vec<ParamInfo> = Vec::with_capacity(entries.len());
    for entry in entries {
        let param = match entry {
            Value::String(name) => ParamInfo {
                name: name.clone(),
                secret: false,
            },
            Value::Object(fields) => {
                if let Some(key) = fields.keys().find(|k| *k != "name" && *k != "secret") {
                    return Err(format!(
                        "a parameter entry has an unknown key {:?} (entries take \"name\" and \"secret\")",
                        truncate(key)
                    ));
                }
                let Some(Value::String(name)) = fields.get("name") else {
                    return Err("a parameter entry needs \"name\", a string".into());
                };
                let secret = match fields.get("secret") {
                    None => false,
                    Some(Value::Bool(secret)) => *secret,
                    Some(_) => {
                        return Err(format!(
                            "parameter {:?}: \"secret\" must be true or false",
                            truncate(name)
                        ));
                    }
                };
                ParamInfo {
                    name: name.clone(),
                    secret,
                }
            }
            _ => {
                return Err(
                    "params must list names (\"NAME\") or entries ({\"name\": \"NAME\", \"secret\": true})"
                        .into(),
                );
            }
        };
        validate_param_name(&param.name)?;
        if params.iter().any(|p| p.name == param.name) {
            return Err(format!("parameter {} is listed twice", param.name));
        }
        params.push(param);
    }
    Ok(params)
}

/// Script names: 1–128 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit, not ending
/// with a dot (the protocol's rule, which the server applies to `register` too).
pub fn validate_name(name: &str) -> Result<(), String> {
    check::script_name(name)
}

/// A description as `register` may carry it (see `outpost_protocol::check::prose`): control
/// characters other than tabs and newlines removed, cut to the protocol's limit. The script
/// still runs; only what is announced is trimmed, and the log says so.
fn fit_description(name: &str, description: String) -> String {
    let clean: String = description
        .chars()
        .filter(|c| !check::is_control(*c) || matches!(c, '\t' | '\n'))
        .collect();
    if clean.len() != description.len() {
        tracing::warn!(script = %name, "the script's description holds control characters; they are left out");
    }
    if clean.len() <= MAX_SCRIPT_DESCRIPTION_LEN {
        return clean;
    }
    tracing::warn!(
        script = %name,
        bytes = clean.len(),
        "the script's description is longer than {MAX_SCRIPT_DESCRIPTION_LEN} bytes (the protocol's limit); it is cut"
    );
    let mut end = MAX_SCRIPT_DESCRIPTION_LEN;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_owned()
}

fn resolve(dir: &Path, relative: &str) -> Result<PathBuf, String> {
    if relative.is_empty() || relative.contains('\0') {
        return Err("path is empty or contains NUL".into());
    }
    let rel = Path::new(relative);
    if rel.is_absolute() {
        return Err(format!(
            "path {relative:?} must be relative to the manifest's folder"
        ));
    }
    let full = dir
        .join(rel)
        .canonicalize()
        .map_err(|e| format!("path {relative:?} does not resolve: {e}"))?;
    if !full.starts_with(dir) {
        return Err(format!(
            "path {relative:?} resolves outside the manifest's folder"
        ));
    }
    if !full.is_file() {
        return Err(format!("path {relative:?} is not a regular file"));
    }
    Ok(full)
}

/// Parameter names: `[A-Z0-9_]{1,64}` (the protocol's rule).
pub fn validate_param_name(name: &str) -> Result<(), String> {
    check::param_name(name)
}

/// Checks a request's `params` against the protocol's rules and the script's list, and returns
/// them as environment variables (`OUTPOST_PARAM_<NAME>`, value).
pub fn params_env(
    script: &Script,
    params: Option<&Value>,
) -> Result<Vec<(String, String)>, String> {
    let Some(params) = params else {
        return Ok(Vec::new());
    };
    let Some(map) = params.as_object() else {
        return Err("params must be a JSON object of strings".into());
    };
    let mut env = Vec::with_capacity(map.len());
    for (name, value) in map {
        validate_param_name(name)?;
        if let Some(allowed) = &script.params
            && !allowed.iter().any(|a| a.name == *name)
        {
            return Err(format!(
                "script {:?} does not take parameter {name}; it takes: {}",
                script.name,
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        let Some(value) = value.as_str() else {
            return Err(format!("parameter {name} must be a string"));
        };
        if value.len() > MAX_PARAM_VALUE {
            return Err(format!(
                "parameter {name} is {} bytes; the limit is {MAX_PARAM_VALUE}",
                value.len()
            ));
        }
        if value.contains('\0') {
            return Err(format!("parameter {name} contains NUL"));
        }
        env.push((format!("OUTPOST_PARAM_{name}"), value.to_owned()));
    }
    Ok(env)
}

/// At most 80 characters of a name from the manifest, for an error message.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_manifest(dir: &Path, body: Value) -> PathBuf {
        let path = dir.join("script_manifest.json");
        std::fs::write(&path, body.to_string()).expect("write");
        path
    }

    fn script(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), "#!/bin/sh\necho hi\n").expect("write");
    }

    #[test]
    fn the_original_format_still_loads() {
        let tmp = tempfile::tempdir().expect("tmp");
        script(tmp.path(), "hello_world.py");
        let m = Manifest::load(&write_manifest(
            tmp.path(),
            json!({"scripts": [{"name": "hello", "path": "hello_world.py"}]}),
        ))
        .expect("load");
        let s = m.get("hello").expect("hello");
        assert_eq!(s.args, Vec::<String>::new());
        assert_eq!(s.params, None);
        assert_eq!(m.infos().len(), 1);
    }

    #[test]
    fn missing_file_is_empty_and_bad_json_is_an_error() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("script_manifest.json");
        assert!(
            Manifest::load(&path)
                .expect("missing is fine")
                .infos()
                .is_empty()
        );
        std::fs::write(&path, "{\"scripts\": [").expect("write");
        let err = Manifest::load(&path).expect_err("invalid");
        assert!(err.contains("not a valid manifest"), "{err}");
    }

    #[test]
    fn paths_must_stay_inside_the_folder() {
        let tmp = tempfile::tempdir().expect("tmp");
        let inner = tmp.path().join("scripts");
        std::fs::create_dir(&inner).expect("mkdir");
        script(tmp.path(), "outside.sh");
        script(&inner, "ok.sh");
        std::os::unix::fs::symlink(tmp.path().join("outside.sh"), inner.join("link.sh"))
            .expect("symlink");
        std::fs::create_dir(inner.join("sub")).expect("mkdir");
        let m = Manifest::load(&write_manifest(
            &inner,
            json!({"scripts": [
                {"name": "ok", "path": "ok.sh"},
                {"name": "up", "path": "../outside.sh"},
                {"name": "abs", "path": tmp.path().join("outside.sh")},
                {"name": "link", "path": "link.sh"},
                {"name": "dir", "path": "sub"},
                {"name": "gone", "path": "missing.sh"},
                {"name": "../evil", "path": "ok.sh"},
                {"name": "trailing.", "path": "ok.sh"},
                {"name": "ok", "path": "ok.sh", "description": "duplicate"},
            ]}),
        ))
        .expect("load");
        let names: Vec<_> = m.infos().into_iter().map(|i| i.name).collect();
        assert_eq!(names, vec!["ok".to_owned()]);
        // A file swapped for an escaping symlink after loading is refused at run time.
        let ok = m.get("ok").expect("ok").clone();
        std::fs::remove_file(inner.join("ok.sh")).expect("rm");
        std::os::unix::fs::symlink(tmp.path().join("outside.sh"), inner.join("ok.sh"))
            .expect("symlink");
        assert!(m.resolve(&ok).expect_err("escapes").contains("outside"));
    }

    #[test]
    fn params_are_names_or_entries_marked_secret() {
        let tmp = tempfile::tempdir().expect("tmp");
        script(tmp.path(), "s.sh");
        let m = Manifest::load(&write_manifest(
            tmp.path(),
            json!({"scripts": [
                {"name": "mixed", "path": "s.sh",
                 "params": ["VERSION", {"name": "DB_PASSWORD", "secret": true}, {"name": "USER"}]},
                {"name": "typo", "path": "s.sh", "params": [{"name": "X", "secrte": true}]},
                {"name": "not-bool", "path": "s.sh", "params": [{"name": "X", "secret": "yes"}]},
                {"name": "twice", "path": "s.sh", "params": ["X", {"name": "X", "secret": true}]},
                {"name": "bad-name", "path": "s.sh", "params": [{"name": "x"}]},
                {"name": "number", "path": "s.sh", "params": [5]},
            ]}),
        ))
        .expect("load");
        let infos = m.infos();
        assert_eq!(
            infos.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["mixed"],
            "every broken entry leaves its script out"
        );
        let params = infos[0].params.as_ref().expect("listed");
        let secret: Vec<_> = params.iter().map(|p| (p.name.as_str(), p.secret)).collect();
        assert_eq!(
            secret,
            [("VERSION", false), ("DB_PASSWORD", true), ("USER", false)]
        );
        let mixed = m.get("mixed").expect("mixed");
        assert!(params_env(mixed, Some(&json!({"DB_PASSWORD": "pw", "VERSION": "1"}))).is_ok());
        let err = params_env(mixed, Some(&json!({"OTHER": "x"}))).expect_err("not listed");
        assert!(err.contains("VERSION, DB_PASSWORD, USER"), "{err}");
    }

    #[test]
    fn what_register_would_carry_is_kept_within_the_protocol() {
        let tmp = tempfile::tempdir().expect("tmp");
        script(tmp.path(), "s.sh");
        let mut entries: Vec<Value> = (0..600)
            .map(|i| json!({"name": format!("s{i:03}"), "path": "s.sh"}))
            .collect();
        entries[0]["description"] = json!(format!("{}é", "d".repeat(511)));
        entries[1]["description"] = json!("red \u{1b}[31malert\u{1b}[0m\nsecond line\tend");
        entries[2]["params"] = json!((0..65).map(|i| format!("P{i}")).collect::<Vec<_>>());
        entries[3]["params"] = json!((0..64).map(|i| format!("P{i}")).collect::<Vec<_>>());
        let m = Manifest::load(&write_manifest(tmp.path(), json!({ "scripts": entries })))
            .expect("load");
        let infos = m.infos();
        // The first 512 valid entries are kept; the one with 65 parameters is left out.
        assert_eq!(infos.len(), MAX_SCRIPTS);
        assert!(m.get("s002").is_none());
        assert!(m.get("s003").is_some());
        assert!(m.get("s512").is_some() && m.get("s513").is_none());
        let cut = m
            .get("s000")
            .and_then(|s| s.description.clone())
            .expect("d");
        assert_eq!(cut, "d".repeat(511), "cut at a character boundary");
        let clean = m
            .get("s001")
            .and_then(|s| s.description.clone())
            .expect("d");
        assert_eq!(clean, "red [31malert[0m\nsecond line\tend");
        let data = outpost_protocol::RegisterData {
            agent_id: uuid::Uuid::nil(),
            hostname: "h".into(),
            ip: String::new(),
            version: String::new(),
            os: String::new(),
            arch: String::new(),
            protocol: outpost_protocol::PROTOCOL_VERSION,
            capabilities: Vec::new(),
            tags: Vec::new(),
            scripts: infos,
            update_status: None,
            library: None,
        };
        data.check().expect("a register the server accepts");
        let frame = outpost_protocol::AgentFrame::Register { data }.encode();
        assert!(frame.len() < outpost_protocol::limits::MAX_FRAME_BYTES);
    }

    #[test]
    fn the_library_section_is_checked_and_fails_closed() {
        let tmp = tempfile::tempdir().expect("tmp");
        script(tmp.path(), "s.sh");
        let key = "0QDsxvCdT+oIbW0+ATW5ApjfIO+FOagCfPt4GSj/BdY=";
        // A library and no scripts at all.
        let m = Manifest::load(&write_manifest(
            tmp.path(),
            json!({"library": {"allow": ["backup-*"], "keys": [key]}}),
        ))
        .expect("load");
        let policy = m.library().expect("library");
        assert!(policy.allows("backup-db") && policy.trusts(key));
        assert!(m.infos().is_empty());
        // Allowing nothing is a valid policy that runs nothing.
        let m = Manifest::load(&write_manifest(
            tmp.path(),
            json!({"library": {"allow": [], "keys": [key]}}),
        ))
        .expect("load");
        assert!(!m.library().expect("library").allows("anything"));
        // Each bad one is dropped whole (no library script runs), the scripts stay.
        for bad in [
            json!({"allow": ["*"], "key": [key]}),
            json!({"allow": "*", "keys": [key]}),
            json!({"allow": ["../*"], "keys": [key]}),
            json!({"allow": ["*"], "keys": ["c2hvcnQ="]}),
            json!({"allow": ["*"], "keys": [1]}),
            json!(["*"]),
        ] {
            let m = Manifest::load(&write_manifest(
                tmp.path(),
                json!({"scripts": [{"name": "s", "path": "s.sh"}], "library": bad}),
            ))
            .expect("load");
            assert!(m.library().is_none(), "{bad} was kept");
            assert!(m.get("s").is_some());
        }
        assert_eq!(
            library_policy(&json!({"allow": ["*"], "key": []})).expect_err("refused"),
            "unknown key \"key\" (it takes \"allow\" and \"keys\")"
        );
        assert_eq!(
            library_policy(&json!({"keys": ["c2hvcnQ="]})).expect_err("refused"),
            "keys[0]: 5 bytes, not 32"
        );
    }

    #[test]
    fn names_are_checked() {
        for good in ["hello", "a", "db-backup_2.sh", "X9"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\0b",
            "trailing.",
            ".hidden",
            "-rf",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn params_become_prefixed_env_and_break_nothing() {
        let s = Script {
            name: "s".into(),
            path: "s".into(),
            description: None,
            args: vec![],
            timeout_s: None,
            params: None,
        };
        let hostile = json!({"NAME": "; rm -rf / | $(reboot) `id` \n'\"", "DASH": "-rf"});
        let env = params_env(&s, Some(&hostile)).expect("values are data, not code");
        assert!(env.iter().all(|(k, _)| k.starts_with("OUTPOST_PARAM_")));
        assert!(env.contains(&("OUTPOST_PARAM_DASH".into(), "-rf".into())));
        // PATH, LD_PRELOAD and BASH_ENV can only ever be OUTPOST_PARAM_PATH and so on.
        let env = params_env(
            &s,
            Some(&json!({"PATH": "/tmp", "LD_PRELOAD": "x.so", "BASH_ENV": "x"})),
        )
        .expect("ok");
        let keys: Vec<_> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "OUTPOST_PARAM_BASH_ENV",
                "OUTPOST_PARAM_LD_PRELOAD",
                "OUTPOST_PARAM_PATH"
            ]
        );

        for (bad, why) in [
            (json!({"lower": "x"}), "must match"),
            (json!({"A-B": "x"}), "must match"),
            (json!({"": "x"}), "must match"),
            (json!({"X".repeat(65): "x"}), "must match"),
            (json!({"N": 5}), "must be a string"),
            (json!({"N": "a\u{0}b"}), "NUL"),
            (json!({"N": "x".repeat(MAX_PARAM_VALUE + 1)}), "limit"),
            (json!(["N"]), "object"),
        ] {
            let err = params_env(&s, Some(&bad)).expect_err("refused");
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(params_env(&s, Some(&json!({"N": "x".repeat(MAX_PARAM_VALUE)}))).is_ok());

        let listed = Script {
            params: Some(vec![ParamInfo {
                name: "NAME".into(),
                secret: false,
            }]),
            ..s
        };
        assert!(params_env(&listed, Some(&json!({"NAME": "x"}))).is_ok());
        let err = params_env(&listed, Some(&json!({"OTHER": "x"}))).expect_err("not listed");
        assert!(err.contains("does not take parameter OTHER"), "{err}");
    }
}
