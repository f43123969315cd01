//! An agent's tags, and which of them a job's target may trust.
//!
//! An agent has tags from three sources:
//! - **declared**: what the agent says of itself in `register` (`OUTPOST_TAGS`). Whoever holds
//!   any agent key of the tenant can declare any tag, so a declared tag proves nothing.
//! - **key**: the tags of the agent key the agent is bound to, given by whoever created the key.
//! - **server**: set on the agent through the API by an operator.
//!
//! Key and server tags are assigned by people with API access; declared tags by the agents
//! themselves. A tag that some agent key of the tenant assigns is **reserved**: a target naming
//! it (`tags: ["fleet=prod"]`, `GET /api/agents?tag=…`) matches only agents that have it from their
//! key or from an operator, never one that merely declares it. Otherwise any agent could claim
//! `fleet=prod` and receive prod's jobs and their parameters. Tags no key assigns (a host's
//! `role=db`, say) keep matching whatever declares them, as before. The three lists stay apart
//! in the store and in the API's view of an agent.

use std::collections::{HashMap, HashSet};

use outpost_store::agent_key;

/// A tenant's agent keys' tags: what [`TagRule::has`] needs to tell trusted tags apart.
#[derive(Debug, Default)]
pub struct TagRule {
    /// Each key's tags, by key id.
    by_key: HashMap<String, Vec<String>>,
    /// Every tag some key assigns.
    reserved: HashSet<String>,
}

impl TagRule {
    /// The rule for a tenant whose agent keys are `keys`.
    pub fn new(keys: &[agent_key::Model]) -> Self {
        let by_key: HashMap<String, Vec<String>> = keys
            .iter()
            .map(|key| (key.id.clone(), key.tags.to_vec()))
            .collect();
        let reserved = by_key.values().flatten().cloned().collect();
        Self { by_key, reserved }
    }

    /// The tags the agent's key gives it.
    pub fn key_tags(&self, key_id: &str) -> &[String] {
        self.by_key
            .get(key_id)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether an agent bound to `key_id`, which declares `declared` and was given `server` by
    /// an operator, has `tag` as far as a target is concerned.
    pub fn has(&self, key_id: &str, declared: &[String], server: &[String], tag: &str) -> bool {
        server.iter().any(|t| t == tag)
            || self.key_tags(key_id).iter().any(|t| t == tag)
            || (!self.reserved.contains(tag) && declared.iter().any(|t| t == tag))
    }

    /// The keys that give `tag`, and whether an agent's own declaration of it counts: what
    /// [`has`](Self::has) asks, as a store filter can (`store::TagMatch`).
    pub fn matching(&self, tag: &str) -> (Vec<String>, bool) {
        let keys = self
            .by_key
            .iter()
            .filter(|(_, tags)| tags.iter().any(|t| t == tag))
            .map(|(key, _)| key.clone())
            .collect();
        (keys, !self.reserved.contains(tag))
    }

    /// Every tag of an agent, once each: declared, then its key's, then the server's.
    pub fn all(&self, key_id: &str, declared: &[String], server: &[String]) -> Vec<String> {
        let mut all: Vec<String> = Vec::with_capacity(declared.len() + server.len());
        for tag in declared.iter().chain(self.key_tags(key_id)).chain(server) {
            if !all.contains(tag) {
                all.push(tag.clone());
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, tags: &[&str]) -> agent_key::Model {
        agent_key::Model {
            id: id.into(),
            tenant_id: "t".into(),
            name: id.into(),
            key_hash: format!("hash-{id}"),
            permissions: ["ping"].into_iter().collect(),
            tags: tags.iter().collect(),
            status: "active".into(),
            created_at: chrono::Utc::now(),
            expires_at: None,
            last_used_at: None,
        }
    }

    fn list(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| (*t).to_owned()).collect()
    }

    /// A tag some key assigns matches only agents given it by their key or an operator; a tag
    /// no key assigns matches whatever declares it.
    #[test]
    fn a_key_s_tag_is_trusted_only_from_a_key_or_an_operator() {
        let rule = TagRule::new(&[key("prod", &["fleet=prod"]), key("lab", &["fleet=lab"])]);
        let claims = list(&["fleet=prod", "role=db"]);
        // An agent of the lab key claiming prod's tag does not have it...
        assert!(!rule.has("lab", &claims, &[], "fleet=prod"));
        // ...nor does an agent whose key was deleted,
        assert!(!rule.has("gone", &claims, &[], "fleet=prod"));
        // but its own key's tag, an operator's tag and an unreserved declared tag count.
        assert!(rule.has("lab", &claims, &[], "fleet=lab"));
        assert!(rule.has("lab", &claims, &list(&["fleet=prod"]), "fleet=prod"));
        assert!(rule.has("lab", &claims, &[], "role=db"));
        assert!(rule.has("prod", &[], &[], "fleet=prod"));
        assert!(!rule.has("prod", &[], &[], "role=db"));
        assert_eq!(rule.matching("fleet=prod"), (list(&["prod"]), false));
        assert_eq!(rule.matching("role=db"), (Vec::new(), true));
        assert_eq!(
            rule.all("lab", &claims, &list(&["fleet=lab", "extra"])),
            list(&["fleet=prod", "role=db", "fleet=lab", "extra"])
        );
    }
}
