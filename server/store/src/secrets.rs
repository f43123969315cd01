//! Secret parameters: values a `run` needs that are never shown, logged or stored in the clear.
//!
//! **Which parameters are secret.** An agent's manifest may mark a parameter `secret`; the
//! agent says so in `register` (`scripts[].params[].secret`) and the server keeps it with the
//! agent's scripts. A caller may also force parameters secret with `data.secret_params` (for
//! an agent whose manifest predates the mark, or out of caution). A job is one request sent
//! to many agents, and it is shown once, so a parameter is secret for the whole job when the
//! caller says so or when *any* targeted agent's manifest says so: the safe answer when
//! manifests disagree. The decision is taken when the job is created, from the manifests the
//! agents last announced; a manifest changed later does not unmask or re-mask a stored job.
//!
//! **How they are kept.** The command (each run) stores its `data` with every secret value
//! replaced by [`MASK`] and the masked names listed in `data.secret_params`; the values
//! themselves are sealed together (AES-256-GCM under the master key, bound to the tenant,
//! see [`crate::seal`]) in the command's `sealed_params`. Everything that shows a job or a
//! command (the API, the event stream, webhooks, logs) reads `data` and so shows the mask; the
//! job row holds the masked `data` only. The seal is opened in one place,
//! [`outpost_core::frames::Frames::command`], to build the frame that carries the command to its agent
//! (first sends and resends after a reconnect alike), and never to answer a caller.
//!
//! A copy of the database (a backup, a stolen file) reveals no secret value without the
//! master key. Someone able to *write* to the live database can already send commands of
//! their own, and is not what this protects against.

use std::collections::BTreeSet;

use outpost_protocol::commands;
use serde_json::{Map, Value};

use crate::domain::DomainError;
use crate::seal::MasterKey;

/// What a secret value is shown as.
pub const MASK: &str = "********";

/// The field of a `run`'s `data` that lists the secret parameters: in a request, those the
/// caller forces secret; as stored and shown, every parameter that is masked.
pub const FIELD: &str = "secret_params";

/// The names a request forces secret (`data.secret_params`), checked: only a `run` takes
/// them, as a list of names each given in `data.params` (a misspelt name would leave the real
/// secret in the clear, so it is refused rather than ignored).
pub fn requested(command: &str, data: &Value) -> Result<BTreeSet<String>, DomainError> {
    let Some(list) = data.get(FIELD) else {
        return Ok(BTreeSet::new());
    };
    if command != commands::RUN {
        return Err(DomainError::BadRequest(format!(
            "data.{FIELD}: only a run takes secret parameters"
        )));
    }
    let names = match list {
        Value::Null => return Ok(BTreeSet::new()),
        Value::Array(names) => names,
        _ => {
            return Err(DomainError::BadRequest(format!(
                "data.{FIELD}: must be a list of parameter names"
            )));
        }
    };
    let params = data.get("params").and_then(Value::as_object);
    let mut secret = BTreeSet::new();
    for name in names {
        let Some(name) = name.as_str() else {
            return Err(DomainError::BadRequest(format!(
                "data.{FIELD}: must be a list of parameter names"
            )));
        };
        if !params.is_some_and(|p| p.contains_key(name)) {
            let shown: String = name.chars().take(64).collect();
            return Err(DomainError::BadRequest(format!(
                "data.{FIELD}: {shown:?} is not one of data.params"
            )));
        }
        secret.insert(name.to_owned());
    }
    Ok(secret)
}

/// The parameters an agent's manifest marks secret for `script`, from the agent's stored
/// `scripts` (`[{name, params: [{name, secret}]}]`, as in `register`).
pub fn declared<'a>(scripts: &'a Value, script: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    scripts
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |s| s.get("name").and_then(Value::as_str) == Some(script))
        .filter_map(|s| s.get("params").and_then(Value::as_array))
        .flatten()
        .filter(|p| p.get("secret").and_then(Value::as_bool) == Some(true))
        .filter_map(|p| p.get("name").and_then(Value::as_str))
}

/// The script a `run`'s data names, when it has parameters that could be secret.
pub fn script_with_params<'a>(command: &str, data: &'a Value) -> Option<&'a str> {
    if command != commands::RUN {
        return None;
    }
    data.get("params")
        .and_then(Value::as_object)
        .filter(|p| !p.is_empty())?;
    data.get("script").and_then(Value::as_str)
}

/// What a command's data becomes at rest: the data to store and show (the secret values
/// masked and their names in `data.secret_params`) and the values, sealed. Without secret
/// parameters the data is stored as it came, minus an empty `secret_params`.
pub fn seal(
    master: &MasterKey,
    tenant_id: &str,
    data: &Value,
    secret: &BTreeSet<String>,
) -> (Value, Option<String>) {
    let mut data = data.clone();
    let Some(object) = data.as_object_mut() else {
        return (data, None);
    };
    object.remove(FIELD);
    let mut values = Map::new();
    if let Some(params) = object.get_mut("params").and_then(Value::as_object_mut) {
        for name in secret {
            if let Some(value) = params.get_mut(name) {
                values.insert(name.clone(), std::mem::replace(value, Value::from(MASK)));
            }
        }
    }
    if values.is_empty() {
        return (data, None);
    }
    object.insert(
        FIELD.into(),
        Value::from(values.keys().cloned().collect::<Vec<_>>()),
    );
    let plain = Value::Object(values).to_string();
    let sealed = master.seal(&context(tenant_id), plain.as_bytes());
    (data, Some(sealed))
}

/// Puts the sealed values back into a stored command's data, for the frame to its agent,
/// and drops `secret_params` (the agent needs the values, not the list).
pub fn unseal(
    master: &MasterKey,
    tenant_id: &str,
    data: &mut Value,
    sealed: &str,
) -> Result<(), String> {
    let plain = master.open(&context(tenant_id), sealed)?;
    let values: Map<String, Value> = serde_json::from_slice(&plain)
        .map_err(|_| "the sealed parameters are not a JSON object".to_owned())?;
    let object = data
        .as_object_mut()
        .ok_or("the command's data is not an object")?;
    object.remove(FIELD);
    let params = object
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or("the command's data.params is not an object")?;
    params.extend(values);
    Ok(())
}

/// `data` with every parameter value replaced, for `Debug` output.
pub fn redacted(data: &Value) -> Value {
    let mut data = data.clone();
    if let Some(params) = data.get_mut("params").and_then(Value::as_object_mut) {
        for value in params.values_mut() {
            *value = Value::from("<redacted>");
        }
    }
    data
}

/// What a seal of parameters is bound to: the tenant, and the purpose, so that it cannot be
/// passed off as another kind of sealed value (a webhook secret is bound to the tenant alone).
fn context(tenant_id: &str) -> String {
    format!("{tenant_id}/secret-params")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn values_are_masked_sealed_and_opened_only_with_the_key_and_tenant() {
        let master = MasterKey::parse(&MasterKey::generate()).expect("key");
        let data = json!({"script": "deploy", "params": {"DB_PASSWORD": "hunter2", "VERSION": "1.2"},
                          "secret_params": ["DB_PASSWORD"]});
        let (stored, sealed) = seal(&master, "t1", &data, &names(&["DB_PASSWORD", "ABSENT"]));
        assert_eq!(
            stored,
            json!({"script": "deploy", "params": {"DB_PASSWORD": MASK, "VERSION": "1.2"},
                   "secret_params": ["DB_PASSWORD"]})
        );
        let sealed = sealed.expect("sealed");
        assert!(!sealed.contains("hunter2"));
        let mut frame = stored.clone();
        unseal(&master, "t1", &mut frame, &sealed).expect("open");
        assert_eq!(
            frame,
            json!({"script": "deploy", "params": {"DB_PASSWORD": "hunter2", "VERSION": "1.2"}})
        );
        let mut elsewhere = stored.clone();
        assert!(unseal(&master, "t2", &mut elsewhere, &sealed).is_err());
        let other = MasterKey::parse(&MasterKey::generate()).expect("key");
        assert!(unseal(&other, "t1", &mut elsewhere, &sealed).is_err());
        assert_eq!(
            elsewhere, stored,
            "nothing changes when the seal does not open"
        );
    }

    #[test]
    fn without_secrets_the_data_is_kept_as_it_came() {
        let master = MasterKey::parse(&MasterKey::generate()).expect("key");
        let data = json!({"script": "s", "params": {"A": "x"}, "secret_params": []});
        let (stored, sealed) = seal(&master, "t", &data, &BTreeSet::new());
        assert_eq!(stored, json!({"script": "s", "params": {"A": "x"}}));
        assert!(sealed.is_none());
    }

    #[test]
    fn requests_name_given_parameters_of_a_run() {
        let data = json!({"script": "s", "params": {"A": "x", "B": "y"}, "secret_params": ["B"]});
        assert_eq!(requested("run", &data).expect("ok"), names(&["B"]));
        assert!(
            requested("run", &json!({"script": "s"}))
                .expect("ok")
                .is_empty()
        );
        for (command, data, why) in [
            (
                "run",
                json!({"params": {"A": "x"}, "secret_params": ["a"]}),
                "not one of data.params",
            ),
            (
                "run",
                json!({"params": {"A": "x"}, "secret_params": "A"}),
                "list",
            ),
            (
                "run",
                json!({"params": {"A": "x"}, "secret_params": [1]}),
                "list",
            ),
            ("echo", json!({"secret_params": []}), "only a run"),
        ] {
            let err = requested(command, &data).expect_err("refused").to_string();
            assert!(err.contains(why), "{data}: {err}");
        }
    }

    #[test]
    fn declared_secrets_come_from_the_script_s_own_entry() {
        let scripts = json!([
            {"name": "deploy", "params": [{"name": "VERSION"}, {"name": "DB_PASSWORD", "secret": true}]},
            {"name": "other", "params": [{"name": "TOKEN", "secret": true}]},
            {"name": "old"},
        ]);
        assert_eq!(
            declared(&scripts, "deploy").collect::<Vec<_>>(),
            ["DB_PASSWORD"]
        );
        assert_eq!(declared(&scripts, "old").count(), 0);
        assert_eq!(declared(&json!("junk"), "deploy").count(), 0);
    }
}
