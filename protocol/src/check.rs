//! What a frame's fields may hold beyond their JSON shape: the bounds of [`limits`] and the
//! characters that names, tags and host facts may contain.
//!
//! The server applies these to everything an agent or an API caller sends, and the agent to
//! what it is about to send, so that a well-configured agent is never refused and a hostile
//! one cannot store what it likes (a hundred thousand tags, a hostname holding terminal escape
//! sequences that a later `outpost agents ls` would print). Each check answers an error that
//! names the field and the limit, e.g. `tags: 100000 tags; the limit is 64`.
//!
//! "Control characters" here are Unicode's (C0, DEL, C1: where terminal escapes live) and the
//! bidirectional formatting characters that reorder how a line is displayed ("Trojan Source"):
//! neither has a place in a name, a tag or a host fact. Free text (a script's description, an
//! update's reason) may hold tabs and newlines, nothing else of the kind.

use serde_json::Value;

use crate::limits::{
    MAX_ARCH_LEN, MAX_CAPABILITIES, MAX_CAPABILITY_LEN, MAX_HOSTNAME_LEN, MAX_IP_LEN, MAX_OS_LEN,
    MAX_PARAM_NAME, MAX_PARAM_VALUE, MAX_REGISTER_PARAMS, MAX_SCRIPT_DESCRIPTION_LEN,
    MAX_SCRIPT_NAME_LEN, MAX_SCRIPT_PARAMS, MAX_SCRIPTS, MAX_TAG_LEN, MAX_TAGS,
    MAX_UPDATE_FIELD_LEN, MAX_UPDATE_REASON_LEN, MAX_VERSION_LEN,
};
use crate::release::UpdateStatus;
use crate::{RegisterData, ScriptInfo};

/// Whether `c` is a control character: Unicode's `Cc` (C0, DEL, C1) or a bidirectional
/// formatting character (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069).
pub fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// A one-line text field: at most `max` bytes, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    length(field, value, max)?;
    match value.chars().find(|c| is_control(*c)) {
        Some(c) => Err(format!(
            "{field}: control character U+{:04X} is not allowed",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// Free text: at most `max` bytes; tabs and newlines allowed, no other control characters.
pub fn prose(field: &str, value: &str, max: usize) -> Result<(), String> {
    length(field, value, max)?;
    match value
        .chars()
        .find(|c| is_control(*c) && !matches!(c, '\t' | '\n'))
    {
        Some(c) => Err(format!(
            "{field}: control character U+{:04X} is not allowed (only tabs and newlines are)",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

fn length(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field}: {} bytes; the limit is {max}",
            value.len()
        ));
    }
    Ok(())
}

pub(crate) fn count(field: &str, what: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{field}: {n} {what}; the limit is {max}"));
    }
    Ok(())
}

/// A tag: 1 to [`MAX_TAG_LEN`] bytes, no commas (tags are given comma-separated) and no
/// control characters.
pub fn tag(field: &str, tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err(format!("{field}: a tag cannot be empty"));
    }
    text(field, tag, MAX_TAG_LEN)?;
    if tag.contains(',') {
        return Err(format!("{field}: tag {tag:?} contains a comma"));
    }
    Ok(())
}

/// A list of tags: at most [`MAX_TAGS`], each as [`tag`] says.
pub fn tags(field: &str, tags: &[String]) -> Result<(), String> {
    count(field, "tags", tags.len(), MAX_TAGS)?;
    for (i, t) in tags.iter().enumerate() {
        tag(&format!("{field}[{i}]"), t)?;
    }
    Ok(())
}

/// A script name: 1 to [`MAX_SCRIPT_NAME_LEN`] of `A-Z a-z 0-9 . _ -`, starting with a letter
/// or digit and not ending with a dot (so never a path, a hidden file or an option).
pub fn script_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SCRIPT_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "script name {:?} must be 1 to {MAX_SCRIPT_NAME_LEN} letters, digits, '.', '_' or '-', start with a letter or digit and not end with '.'",
            shorten(name)
        ))
    }
}

/// A parameter name: `[A-Z0-9_]{1,64}`.
pub fn param_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PARAM_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "parameter name {:?} must match [A-Z0-9_]{{1,{MAX_PARAM_NAME}}}",
            shorten(name)
        ))
    }
}

/// A parameter's value: a string of at most [`MAX_PARAM_VALUE`] bytes without NUL (it becomes
/// an environment variable).
pub fn param_value(name: &str, value: &Value) -> Result<(), String> {
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
    Ok(())
}

/// Everything a `register` carries, against [`crate::limits`]. The error names the first
/// field found out of bounds.
pub fn register(data: &RegisterData) -> Result<(), String> {
    text("hostname", &data.hostname, MAX_HOSTNAME_LEN)?;
    text("ip", &data.ip, MAX_IP_LEN)?;
    text("version", &data.version, MAX_VERSION_LEN)?;
    text("os", &data.os, MAX_OS_LEN)?;
    text("arch", &data.arch, MAX_ARCH_LEN)?;
    count(
        "capabilities",
        "capabilities",
        data.capabilities.len(),
        MAX_CAPABILITIES,
    )?;
    for (i, capability) in data.capabilities.iter().enumerate() {
        text(
            &format!("capabilities[{i}]"),
            capability,
            MAX_CAPABILITY_LEN,
        )?;
    }
    tags("tags", &data.tags)?;
    count("scripts", "scripts", data.scripts.len(), MAX_SCRIPTS)?;
    for (i, script) in data.scripts.iter().enumerate() {
        self::script(&format!("scripts[{i}]"), script)?;
    }
    let params: usize = data
        .scripts
        .iter()
        .map(|s| s.params.as_ref().map_or(0, Vec::len))
        .sum();
    count(
        "scripts[].params",
        "parameters in all",
        params,
        MAX_REGISTER_PARAMS,
    )?;
    if let Some(update) = &data.update_status {
        update_status(update)?;
    }
    if let Some(library) = &data.library {
        library.check()?;
    }
    Ok(())
}

/// The supervisor's report a `register` may carry.
pub fn update_status(update: &UpdateStatus) -> Result<(), String> {
    text("update_status.status", &update.status, MAX_UPDATE_FIELD_LEN)?;
    for (field, value) in [("from", &update.from), ("to", &update.to)] {
        if let Some(value) = value {
            text(
                &format!("update_status.{field}"),
                value,
                MAX_UPDATE_FIELD_LEN,
            )?;
        }
    }
    if let Some(reason) = &update.reason {
        prose("update_status.reason", reason, MAX_UPDATE_REASON_LEN)?;
    }
    Ok(())
}

/// One script of a `register`: its name, description and parameters (at most
/// [`MAX_SCRIPT_PARAMS`], each named by the rule, none twice).
pub fn script(field: &str, script: &ScriptInfo) -> Result<(), String> {
    script_name(&script.name).map_err(|why| format!("{field}.name: {why}"))?;
    if let Some(description) = &script.description {
        prose(
            &format!("{field}.description"),
            description,
            MAX_SCRIPT_DESCRIPTION_LEN,
        )?;
    }
    if let Some(params) = &script.params {
        let field = format!("{field}.params");
        count(&field, "parameters", params.len(), MAX_SCRIPT_PARAMS)?;
        for (i, param) in params.iter().enumerate() {
            param_name(&param.name).map_err(|why| format!("{field}[{i}]: {why}"))?;
            if params[..i].iter().any(|p| p.name == param.name) {
                return Err(format!("{field}[{i}]: {} is listed twice", param.name));
            }
        }
    }
    Ok(())
}

/// Keeps an attacker-chosen value from bloating an error message.
pub(crate) fn shorten(s: &str) -> String {
    const KEEP: usize = 64;
    if s.chars().count() <= KEEP {
        return s.to_owned();
    }
    let mut short: String = s.chars().take(KEEP).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> RegisterData {
        RegisterData {
            agent_id: uuid::Uuid::nil(),
            hostname: "web-1".into(),
            ip: "192.168.1.100".into(),
            version: "1.0.0".into(),
            os: "Linux 6.1.0".into(),
            arch: "x86_64".into(),
            protocol: crate::PROTOCOL_VERSION,
            capabilities: vec!["ping".into(), "run".into()],
            tags: vec!["prod".into(), "role=db".into()],
            scripts: vec![ScriptInfo {
                name: "hello".into(),
                description: Some("Say hello.\nTwice.".into()),
                params: Some(vec![crate::ParamInfo {
                    name: "NAME".into(),
                    secret: true,
                }]),
            }],
            update_status: None,
            library: None,
        }
    }

    fn refused(change: impl FnOnce(&mut RegisterData)) -> String {
        let mut d = data();
        change(&mut d);
        register(&d).expect_err("refused")
    }

    #[test]
    fn a_usual_register_passes_and_each_bound_is_named() {
        register(&data()).expect("ok");
        let tags = refused(|d| d.tags = (0..100_000).map(|i| format!("t{i}")).collect());
        assert_eq!(tags, "tags: 100000 tags; the limit is 64");
        let scripts = refused(|d| {
            d.scripts = (0..20_000)
                .map(|i| ScriptInfo {
                    name: format!("s{i}"),
                    description: None,
                    params: None,
                })
                .collect();
        });
        assert_eq!(scripts, "scripts: 20000 scripts; the limit is 512");
        let host = refused(|d| d.hostname = "h".repeat(256));
        assert_eq!(host, "hostname: 256 bytes; the limit is 255");
        assert!(refused(|d| d.os = "o".repeat(257)).starts_with("os: 257 bytes"));
        assert!(refused(|d| d.ip = "1".repeat(65)).starts_with("ip: "));
        assert!(refused(|d| d.version = "1".repeat(65)).starts_with("version: "));
        assert!(refused(|d| d.arch = "a".repeat(65)).starts_with("arch: "));
        assert!(refused(|d| d.capabilities = vec!["x".into(); 65]).starts_with("capabilities: 65"));
        assert!(
            refused(|d| d.capabilities[1] = "c".repeat(65))
                .starts_with("capabilities[1]: 65 bytes")
        );
        assert!(refused(|d| d.tags[1] = "t".repeat(129)).starts_with("tags[1]: 129 bytes"));
        assert!(refused(|d| d.tags[0] = String::new()).starts_with("tags[0]: a tag cannot"));
        assert!(refused(|d| d.tags[0] = "a,b".into()).contains("comma"));
        assert!(
            refused(|d| d.scripts[0].description = Some("d".repeat(513)))
                .starts_with("scripts[0].description: 513 bytes; the limit is 512")
        );
        assert!(refused(|d| d.scripts[0].name = "../x".into()).starts_with("scripts[0].name: "));
        let param = |name: &str| crate::ParamInfo {
            name: name.into(),
            secret: false,
        };
        assert!(
            refused(|d| d.scripts[0].params = Some(vec![param("lower")]))
                .starts_with("scripts[0].params[0]: parameter name")
        );
        assert!(
            refused(|d| d.scripts[0].params = Some(vec![param("A"), param("A")]))
                .starts_with("scripts[0].params[1]: A is listed twice")
        );
        assert!(
            refused(|d| d.scripts[0].params = Some(vec![param("A"); 65]))
                .starts_with("scripts[0].params: 65 parameters; the limit is 64")
        );
        let over = refused(|d| {
            d.scripts = (0..33)
                .map(|i| ScriptInfo {
                    name: format!("s{i}"),
                    description: None,
                    params: Some((0..64).map(|p| param(&format!("P{p}"))).collect()),
                })
                .collect();
        });
        assert_eq!(
            over,
            "scripts[].params: 2112 parameters in all; the limit is 2048"
        );
        let update = |reason: &str| crate::release::UpdateStatus {
            status: "failed".into(),
            from: None,
            to: Some("1.2.3".into()),
            reason: Some(reason.to_owned()),
            at: chrono::Utc::now(),
        };
        let mut d = data();
        d.update_status = Some(Box::new(update("download failed:\n\ttimeout")));
        register(&d).expect("a reason may have lines");
        d.update_status = Some(Box::new(update(&"r".repeat(2049))));
        assert!(
            register(&d)
                .expect_err("long")
                .starts_with("update_status.reason: 2049")
        );
    }

    #[test]
    fn a_register_at_every_limit_fits_in_a_frame() {
        use crate::limits::*;
        // Quotes are escaped in JSON: the worst case for text that may hold them.
        let worst = |n: usize| "\"".repeat(n);
        let d = RegisterData {
            agent_id: uuid::Uuid::nil(),
            hostname: worst(MAX_HOSTNAME_LEN),
            ip: worst(MAX_IP_LEN),
            version: worst(MAX_VERSION_LEN),
            os: worst(MAX_OS_LEN),
            arch: worst(MAX_ARCH_LEN),
            protocol: crate::PROTOCOL_VERSION,
            capabilities: vec![worst(MAX_CAPABILITY_LEN); MAX_CAPABILITIES],
            tags: vec![worst(MAX_TAG_LEN); MAX_TAGS],
            scripts: vec![
                ScriptInfo {
                    name: "s".repeat(MAX_SCRIPT_NAME_LEN),
                    description: Some("\n".repeat(MAX_SCRIPT_DESCRIPTION_LEN)),
                    // Spread so that the scripts hold the register's whole budget.
                    params: Some(
                        (0..MAX_REGISTER_PARAMS / MAX_SCRIPTS)
                            .map(|i| crate::ParamInfo {
                                name: format!("{:_>width$}", i, width = MAX_PARAM_NAME),
                                secret: true,
                            })
                            .collect()
                    ),
                };
                MAX_SCRIPTS
            ],
            update_status: Some(Box::new(crate::release::UpdateStatus {
                status: worst(MAX_UPDATE_FIELD_LEN),
                from: Some(worst(MAX_UPDATE_FIELD_LEN)),
                to: Some(worst(MAX_UPDATE_FIELD_LEN)),
                reason: Some("\n".repeat(MAX_UPDATE_REASON_LEN)),
                at: chrono::Utc::now(),
            })),
            library: Some(crate::bundle::LibraryPolicy {
                allow: vec![
                    "*".repeat(MAX_SCRIPT_NAME_LEN);
                    crate::bundle::limits::MAX_ALLOW_PATTERNS
                ],
                keys: vec![
                    "0QDsxvCdT+oIbW0+ATW5ApjfIO+FOagCfPt4GSj/BdY=".into();
                    crate::bundle::limits::MAX_KEYS
                ],
            }),
        };
        register(&d).expect("at the limits, not past them");
        let encoded = crate::AgentFrame::Register { data: d }.encode();
        assert!(
            encoded.len() < MAX_FRAME_BYTES,
            "{} bytes; a frame holds {MAX_FRAME_BYTES}",
            encoded.len()
        );
    }

    #[test]
    fn control_characters_are_refused_where_they_make_no_sense() {
        for bad in [
            "web\u{1b}]0;pwned\u{7}",
            "a\0b",
            "line\nbreak",
            "del\u{7f}",
            "csi\u{9b}2J",
            "evil\u{202e}gnp.exe",
        ] {
            let host = refused(|d| d.hostname = bad.into());
            assert!(host.starts_with("hostname: control character U+"), "{host}");
            assert!(refused(|d| d.tags[0] = bad.into()).starts_with("tags[0]: control"));
            assert!(refused(|d| d.version = bad.into()).starts_with("version: control"));
        }
        let esc = refused(|d| d.hostname = "x\u{1b}[2J".into());
        assert_eq!(esc, "hostname: control character U+001B is not allowed");
        // Descriptions keep their tabs and newlines, not escapes.
        let desc = refused(|d| d.scripts[0].description = Some("a\u{1b}[31mred".into()));
        assert!(desc.starts_with("scripts[0].description: control character U+001B"));
        // Non-ASCII text is fine.
        let mut d = data();
        d.hostname = "hôte-école".into();
        d.tags = vec!["équipe=données".into()];
        register(&d).expect("unicode is not control");
    }

    #[test]
    fn names_and_params() {
        for good in ["hello", "a", "db-backup_2.sh", "X9", &"x".repeat(128)] {
            assert!(script_name(good).is_ok(), "{good}");
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
            assert!(script_name(bad).is_err(), "{bad:?}");
        }
        assert!(param_name("NAME_2").is_ok());
        for bad in ["", "lower", "A-B", &"X".repeat(65)] {
            assert!(param_name(bad).is_err(), "{bad:?}");
        }
        assert!(param_value("N", &Value::from("x".repeat(MAX_PARAM_VALUE))).is_ok());
        assert!(param_value("N", &Value::from("x".repeat(MAX_PARAM_VALUE + 1))).is_err());
        assert!(param_value("N", &Value::from("a\0b")).is_err());
        assert!(param_value("N", &Value::from(5)).is_err());
        // A long hostile name is shortened in the message.
        assert!(script_name(&"/".repeat(10_000)).expect_err("bad").len() < 300);
    }
}
