//! Shell completion: the static scripts clap_complete writes (commands, flags, fixed values),
//! plus agent names and job ids asked of the server as the user types.
//!
//! Why not clap_complete's own dynamic completion: it is behind its `unstable-dynamic`
//! feature, whose interface may change in any release, and it changes how the completion is
//! installed (`COMPLETE=bash outpost`). Instead each shell's static script gets a few lines of
//! its own language that, where an AGENT, JOB, SCHEDULE or ROLLOUT is expected (`ping`, `agents
//! show|rm`, `agents tag add|rm`, `jobs show|logs|cancel|runs|rerun`, `run --on`, `jobs ls --agent`,
//! `schedules show|edit|enable|disable|rm|run`, `jobs ls --schedule`,
//! `rollouts show|pause|resume|abort|rollback`), run the hidden
//! `outpost __complete agents|targets|jobs|schedules|rollouts`, which prints one candidate a line.
//!
//! `__complete` is quick and quiet: it uses the configured URL and token, gives up after
//! [`TIMEOUT`], and prints nothing at all on any failure (a shell cannot show an error while
//! completing). Agents choose their hostnames, and a candidate ends up on a command line, so
//! only names made of `A-Z a-z 0-9 . _ - : =` are offered: nothing a shell would expand or
//! split (bash's `compgen -W` would run a `$(…)` in a word, which is why the bash glue reads
//! candidates with `read` instead). Ids are always offered; hostnames shared by several
//! agents are not (they would be refused as ambiguous).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::args::{CompleteWhat, Global};
use crate::client::Client;

/// How long a completion may wait for the server.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Jobs offered: the newest.
const JOBS: u32 = 50;
/// Rollouts offered: the newest.
const ROLLOUTS: u32 = 50;

/// Whether a word can go on a command line as it is.
fn plain(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 128
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'='))
}

/// `outpost __complete WHAT`: candidates on stdout, one a line; nothing on any failure.
pub async fn candidates(global: &Global, what: CompleteWhat) {
    let Ok(client) = Client::from_config(global) else {
        return;
    };
    let words = match what {
        CompleteWhat::Agents => agents(&client, false).await,
        CompleteWhat::Targets => agents(&client, true).await,
        CompleteWhat::Jobs => jobs(&client).await,
        CompleteWhat::Schedules => schedules(&client).await,
        CompleteWhat::Scripts => scripts(&client).await,
        CompleteWhat::Rollouts => rollouts(&client).await,
    };
    let mut out = String::new();
    for word in words.into_iter().filter(|w| plain(w)) {
        out.push_str(&word);
        out.push('\n');
    }
    crate::output::print_stdout(out.as_bytes());
}

async fn agents(client: &Client, targets: bool) -> Vec<String> {
    let Ok(list) = client
        .json_within(Method::GET, "/api/agents", &[], None, TIMEOUT)
        .await
    else {
        return Vec::new();
    };
    let all = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut tags = BTreeSet::new();
    for agent in all {
        if let Some(host) = agent.get("hostname").and_then(Value::as_str) {
            *hosts.entry(host).or_default() += 1;
        }
        for tag in agent
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            tags.insert(format!("tag:{tag}"));
        }
    }
    let mut words: Vec<String> = hosts
        .into_iter()
        .filter(|(_, n)| *n == 1)
        .map(|(h, _)| h.to_owned())
        .collect();
    words.extend(
        all.iter()
            .filter_map(|a| a.get("agent_id").and_then(Value::as_str))
            .map(str::to_owned),
    );
    if targets {
        words.push("all".into());
        words.extend(tags);
    }
    words
}

async fn jobs(client: &Client) -> Vec<String> {
    let query = [("limit", JOBS.to_string())];
    field_of_each(client, "/api/jobs", &query, "jobs", "job_id").await
}

/// Schedule names (the first page, ordered by name).
async fn schedules(client: &Client) -> Vec<String> {
    let query = [("limit", "200".to_owned())];
    field_of_each(client, "/api/schedules", &query, "schedules", "name").await
}

/// The library's script names.
async fn scripts(client: &Client) -> Vec<String> {
    field_of_each(client, "/api/scripts", &[], "scripts", "name").await
}

/// The newest rollouts' ids.
async fn rollouts(client: &Client) -> Vec<String> {
    let query = [("limit", ROLLOUTS.to_string())];
    field_of_each(client, "/api/rollouts", &query, "rollouts", "id").await
}

/// `field` of each item of the list `key` that GET `path` answers; nothing when the server
/// does not answer in time (completion must never hang a shell).
async fn field_of_each(
    client: &Client,
    path: &str,
    query: &[(&str, String)],
    key: &str,
    field: &str,
) -> Vec<String> {
    let Ok(page) = client
        .json_within(Method::GET, path, query, None, TIMEOUT)
        .await
    else {
        return Vec::new();
    };
    page.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| item.get(field).and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// The completion script for `shell`: clap_complete's, with the dynamic parts added.
pub fn script(shell: clap_complete::Shell, cmd: &mut clap::Command) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, cmd, "outpost", &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    match shell {
        clap_complete::Shell::Bash => format!("{text}\n{BASH}"),
        clap_complete::Shell::Zsh => zsh(&text),
        clap_complete::Shell::Fish => format!("{text}\n{FISH}"),
        _ => text,
    }
}

/// Bash: a wrapper around clap's `_outpost` that answers where an agent or a job is expected.
/// Candidates are read line by line (never through `compgen -W`, which expands `$(…)`).
/// `--on` offers agents and `all`: a `tag:T` word would be split at the colon by bash's
/// COMP_WORDBREAKS.
const BASH: &str = r#"# Agents and jobs, asked of the server as you type (`outpost __complete`).
_outpost_dynamic() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" what="" word i
    local -a pos=()
    (( COMP_CWORD > 0 )) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            --url|--token|--on|--param|--secret|--secret-file|--timeout|--ttl|--agent|--script|--command|--status|--since|--until|--limit|--cursor|--run|--stream|--tag|--permission|--expires-at|--schedule|--cron|--tz|--data|--missed|--concurrency|--webhook|--name|--from|--count|-n|--type|--subject|--scope|--role|--action|--actor|--email|--out|--key|--signature|--canary|--waves|--max-in-flight|--online-within|--soak|--min-healthy|--check-script|--before|--stage|--state|--min-version) (( i++ )) ;;
            -*) ;;
            *) pos+=("$word") ;;
        esac
    done
    case "$prev" in
        --on|--agent) what=agents ;;
        --schedule|--subject) what=schedules ;;
    esac
    if [[ -z "$what" && "$cur" != -* ]]; then
        case "${pos[*]}" in
            "ping"|"agents show"|"agents rm"|"agents tag add"|"agents tag rm") what=agents ;;
            "jobs show"|"jobs logs"|"jobs cancel"|"jobs runs"|"jobs rerun") what=jobs ;;
            "schedules show"|"schedules edit"|"schedules enable"|"schedules disable"|"schedules rm"|"schedules run") what=schedules ;;
            "scripts show"|"scripts rm") what=scripts ;;
            "rollouts show"|"rollouts pause"|"rollouts resume"|"rollouts abort"|"rollouts rollback") what=rollouts ;;
        esac
    fi
    if [[ -z "$what" ]]; then
        _outpost "$@"
        return
    fi
    COMPREPLY=()
    local line
    while IFS= read -r line; do
        [[ "$line" == "$cur"* ]] && COMPREPLY+=("$line")
    done < <(outpost __complete "$what" 2>/dev/null; [[ "$prev" == --on ]] && echo all)
}
complete -F _outpost_dynamic -o bashdefault -o default outpost
"#;

/// Fish: more candidates for the places that take an agent or a job.
const FISH: &str = r#"# Agents and jobs, asked of the server as you type (`outpost __complete`).
complete -c outpost -n "__fish_outpost_using_subcommand ping" -f -a "(outpost __complete agents)"
complete -c outpost -n "__fish_outpost_using_subcommand agents; and __fish_seen_subcommand_from show rm add" -f -a "(outpost __complete agents)"
complete -c outpost -n "__fish_outpost_using_subcommand jobs; and __fish_seen_subcommand_from show logs cancel runs rerun" -f -a "(outpost __complete jobs)"
complete -c outpost -n "__fish_outpost_using_subcommand run" -l on -f -r -a "(outpost __complete targets)"
complete -c outpost -n "__fish_outpost_using_subcommand jobs; and __fish_seen_subcommand_from ls" -l agent -f -r -a "(outpost __complete agents)"
complete -c outpost -n "__fish_outpost_using_subcommand jobs; and __fish_seen_subcommand_from ls" -l schedule -f -r -a "(outpost __complete schedules)"
complete -c outpost -n "__fish_outpost_using_subcommand schedules; and __fish_seen_subcommand_from show edit enable disable rm run" -f -a "(outpost __complete schedules)"
complete -c outpost -n "__fish_outpost_using_subcommand schedules; and __fish_seen_subcommand_from create edit" -l agent -f -r -a "(outpost __complete agents)"
complete -c outpost -n "__fish_outpost_using_subcommand scripts; and __fish_seen_subcommand_from show rm" -f -a "(outpost __complete scripts)"
complete -c outpost -n "__fish_outpost_using_subcommand rollouts; and __fish_seen_subcommand_from show pause resume abort rollback" -f -a "(outpost __complete rollouts)"
"#;

/// Zsh: clap writes `_default` as the action of every free value; the agent and job ones
/// become functions that ask the server.
fn zsh(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1024);
    for line in text.split_inclusive('\n') {
        let action = if line.starts_with("':agent -- ") {
            Some("_outpost_agents")
        } else if line.starts_with("':job -- ") {
            Some("_outpost_jobs")
        } else if line.starts_with("'*--on=") {
            Some("_outpost_targets")
        } else if line.starts_with("'--agent=") {
            Some("_outpost_agents")
        } else if line.starts_with("':schedule -- ") || line.starts_with("'--schedule=") {
            Some("_outpost_schedules")
        } else if line.starts_with("':rollout -- ") {
            Some("_outpost_rollouts")
        } else {
            None
        };
        match action {
            Some(action) if line.contains(":_default'") => {
                // A colon in a value name ends zsh's message field: `tag:T` must be escaped.
                let line = line.replace("|tag:T|", "|tag\\:T|");
                out.push_str(&line.replacen(":_default'", &format!(":{action}'"), 1));
            }
            _ => out.push_str(line),
        }
    }
    let glue = r#"# Agents and jobs, asked of the server as you type (`outpost __complete`).
_outpost_agents() { local -a c; c=(${(f)"$(outpost __complete agents 2>/dev/null)"}); compadd -a c }
_outpost_targets() { local -a c; c=(${(f)"$(outpost __complete targets 2>/dev/null)"}); compadd -a c }
_outpost_jobs() { local -a c; c=(${(f)"$(outpost __complete jobs 2>/dev/null)"}); compadd -a c }
_outpost_schedules() { local -a c; c=(${(f)"$(outpost __complete schedules 2>/dev/null)"}); compadd -a c }
_outpost_rollouts() { local -a c; c=(${(f)"$(outpost __complete rollouts 2>/dev/null)"}); compadd -a c }

"#;
    match out.rfind("if [ \"$funcstack[1]\" = \"_outpost\" ]") {
        Some(at) => {
            out.insert_str(at, glue);
            out
        }
        None => out + glue,
    }
}
