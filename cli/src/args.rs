//! The command line: every command, flag and help text. Each command's help ends with
//! examples, because that is what people read first.

use clap::{Args, Parser, Subcommand, ValueEnum};

const MAIN_AFTER: &str = "\
Configuration (flags win over the environment, which wins over the config file):
  --url / OUTPOST_URL      the server, default http://127.0.0.1:8080
  --token / OUTPOST_TOKEN  an API key (opk_…)
  OUTPOST_CA_CERT          a PEM file of a CA to trust (for a server with its own CA)
  `outpost login` stores the URL and token in $XDG_CONFIG_HOME/outpost/config.toml (mode 0600).

Exit status:
  0    everything asked for succeeded
  1    the server refused the request, or a run of a fan-out failed
  2    bad usage
  69   the server could not be reached
  77   no token, or the server refused it
  N    `run` on a single agent: the script's own exit code
  124  `run` on a single agent: the run timed out
  125  `run` on a single agent: it ended without an exit code (cancelled, expired, lost, refused)

Examples:
  outpost login --url https://outpost.example.com
  outpost agents ls --status online
  outpost run disk-usage --on tag:web --follow
  outpost jobs ls --status failed --since 1d";

/// The `outpost` controller CLI.
#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Drive an Outpost fleet: agents, script runs, jobs and keys",
    after_help = MAIN_AFTER,
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The server's URL [env: OUTPOST_URL; default: from `outpost login`, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "OUTPOST_URL", hide_env = true)]
    pub url: Option<String>,
    /// API key (opk_…) or access token [env: OUTPOST_TOKEN; default: from `outpost login`].
    #[arg(
        long,
        global = true,
        env = "OUTPOST_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the server's JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign in with email and password, or store an API key; saved in the config file.
    #[command(after_help = "\
With --email: the password is prompted for without echo on a terminal, or read from stdin's
first line (--password-stdin, or whenever stdin is not a terminal). The session's refresh
token is saved; the CLI gets a new access token by itself when the old one expires (15 min)
or the server refuses it, and the session lasts while it is used at least once a week.

Without --email: an API key (opk_…) from --token, OUTPOST_TOKEN, or stdin (prompted for,
without echo, on a terminal), checked against the server before it is saved.

The file is $XDG_CONFIG_HOME/outpost/config.toml (else ~/.config/outpost/config.toml), mode 0600.
OUTPOST_TOKEN or --token, when set, is used instead of a saved session.

Examples:
  outpost login --url https://outpost.example.com --email ada@example.com
  printf '%s\\n' \"$PASSWORD\" | outpost login --email ada@example.com --password-stdin
  outpost login --email ada@example.com --totp-code 123456
  outpost login --url https://outpost.example.com < admin.key")]
    Login(LoginArgs),
    /// Sign out: end the saved session on the server and remove the config file.
    #[command(after_help = "Example:\n  outpost logout")]
    Logout,
    /// List and inspect agents.
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost agents ls --status online\n  outpost agents show web-1"
    )]
    Agents(AgentsCommand),
    /// Ping an agent and show the round trip.
    #[command(after_help = "\
AGENT is an agent id, a unique start or end of one (ids shown as web/1a2b3c4d end so), or a\nhostname.

Examples:
  outpost ping web-1
  outpost ping 9f3e2a1b")]
    Ping(PingArgs),
    /// Run a manifest script on one agent, a tag's agents or all of them.
    #[command(after_help = RUN_AFTER)]
    Run(RunArgs),
    /// Job history, results, output and cancelling.
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost jobs ls --status failed --since 1d\n  outpost jobs show JOB\n  outpost jobs logs JOB --follow\n  outpost jobs cancel JOB"
    )]
    Jobs(JobsCommand),
    /// Schedules: jobs created at the instants of a cron expression, in a time zone.
    #[command(
        subcommand,
        after_help = "SCHEDULE is a schedule's id or its name (names are unique in a tenant).\n\nExamples:\n  outpost schedules create nightly-backup --cron '30 2 * * *' --tz Europe/Paris --tag db --script backup\n  outpost schedules ls\n  outpost schedules preview --cron '0 9 * * MON-FRI' --tz America/New_York -n 5\n  outpost schedules disable nightly-backup\n  outpost jobs ls --schedule nightly-backup"
    )]
    Schedules(SchedulesCommand),
    /// Events the server recorded: schedule fires missed or skipped, …; listed or followed live.
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost events ls\n  outpost events ls --type schedule.missed --subject nightly-backup\n  outpost events follow --type schedule"
    )]
    Events(EventsCommand),
    /// Integrations: where events are sent (webhook, Slack, Discord, Teams, PagerDuty,
    /// Datadog, Splunk, email).
    #[command(
        subcommand,
        after_help = "INTEGRATION is an integration's id or its name.\n\nExamples:\n  outpost integrations create ops-slack --kind slack --endpoint https://hooks.slack.com/services/T/B/X --event job.failed --event job.recovered\n  outpost integrations test ops-slack\n  outpost integrations deliveries ops-slack\n  outpost integrations rm ops-slack"
    )]
    Integrations(IntegrationsCommand),
    /// The tenant's users: list, invite, change role, disable, remove.
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost users ls\n  outpost users invite bob@example.com --role member\n  outpost users set-role bob@example.com admin\n  outpost users disable bob@example.com"
    )]
    Users(UsersCommand),
    /// Manage keys.
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost keys agent create web --tag web\n  outpost keys agent ls"
    )]
    Keys(KeysCommand),
    /// Read the audit log (who changed or triggered what) and check its hash chain.
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost audit ls --action agent_key --since 1d\n  outpost audit verify"
    )]
    Audit(AuditCommand),
    /// The script library: signed bundles kept on the server, run on agents whose manifests
    /// allow them.
    #[command(subcommand, after_help = SCRIPTS_AFTER)]
    Scripts(ScriptsCommand),
    /// Staged rollouts of an agent version (canary, waves, a health gate) and the fleet's
    /// minimum version.
    #[command(subcommand, after_help = ROLLOUTS_AFTER)]
    Rollouts(RolloutsCommand),
    /// Print a shell completion script.
    #[command(after_help = "\
Commands and flags complete from the script alone. In bash, zsh and fish, agent names and ids
(ping, agents show|rm|tag, run --on, jobs ls --agent), recent job ids (jobs
show|logs|cancel), schedule names (schedules show|edit|enable|disable|rm|run, jobs ls
--schedule) and recent rollout ids (rollouts show|pause|resume|abort|rollback) are asked of
the server as you type, with the URL and token of `outpost login` or OUTPOST_URL/OUTPOST_TOKEN;
with no answer within 2 s nothing is offered.

Examples:
  outpost completions bash > ~/.local/share/bash-completion/completions/outpost
  outpost completions zsh > \"${fpath[1]}/_outpost\"
  outpost completions fish > ~/.config/fish/completions/outpost.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Completion candidates from the server, one a line (run by the completion scripts).
    #[command(
        name = "__complete",
        hide = true,
        after_help = "Example:\n  outpost __complete agents"
    )]
    Complete {
        /// What to list.
        #[arg(value_enum)]
        what: CompleteWhat,
    },
}

/// What `outpost __complete` lists.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompleteWhat {
    /// Agent ids and unique hostnames.
    Agents,
    /// Agents, `all` and `tag:T` for every tag (`run --on`).
    Targets,
    /// The newest job ids.
    Jobs,
    /// Schedule names.
    Schedules,
    /// The library's script names.
    Scripts,
    /// The newest rollout ids.
    Rollouts,
}

const RUN_AFTER: &str = "\
Targets: --on AGENT (an id, a unique start or end of one, or a hostname), --on tag:T, --on all. Repeat --on
to add targets; several tag: targets select the agents having all of those tags.

Without --follow the command waits for every run to finish, then prints the output (prefixed
by agent when there are several). With --follow the output is printed live, each line prefixed
by its agent; fan-outs show a done/failed/pending line on a terminal. Ctrl-C stops watching;
the job keeps running (`outpost jobs cancel JOB` stops it). A run for an offline agent waits
for it to come back, up to --ttl (an hour by default); it then ends as expired.

Exit status: one agent: the script's exit code (124 timed out, 125 no exit code);
several agents: 0 if every run succeeded, else 1.

Examples:
  outpost run disk-usage --on web-1
  outpost run deploy --on tag:web --param VERSION=1.4.2 --timeout 300 --follow
  outpost run uptime --on all --json";

/// What to print instead of clap's "required arguments were not provided" when `run` lacks
/// `--on`: what `--on` takes, with an example, rather than a usage line to decode.
pub fn missing_on(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::MissingRequiredArgument {
        return None;
    }
    let missing: Vec<String> = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::Strings(names)) => names.clone(),
        Some(ContextValue::String(name)) => vec![name.clone()],
        _ => return None,
    };
    if !missing.iter().any(|m| m.starts_with("--on")) {
        return None;
    }
    let script = if missing.iter().any(|m| m.contains("SCRIPT")) {
        "error: `outpost run` needs the script's name and --on, to say where to run it:"
    } else {
        "error: `outpost run` needs --on, to say where to run the script:"
    };
    Some(format!(
        "{script}
  --on AGENT   one agent: its id, a unique start or end of one, or its hostname
  --on tag:T   every agent with the tag T (several tag: targets: the agents with all of them)
  --on all     every agent
`outpost agents ls` lists agents and their tags.

Example:
  outpost run disk-usage --on all"
    ))
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Sign in as this user (email and password) instead of saving an API key.
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from stdin's first line.
    #[arg(long, requires = "email")]
    pub password_stdin: bool,
    /// The second-factor code (TOTP, or a recovery code), when the account has one; without
    /// it the CLI asks (or reads stdin's next line).
    #[arg(long, requires = "email", value_name = "CODE")]
    pub totp_code: Option<String>,
    /// Sign in through the server's single sign-on provider, in a browser: prints the URL to
    /// open (and opens it when it can), and waits on 127.0.0.1 for the browser to come back.
    #[arg(long, conflicts_with = "email")]
    pub sso: bool,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List the tenant's users (owners and admins).
    #[command(after_help = "Examples:\n  outpost users ls\n  outpost users ls --json")]
    Ls,
    /// Create a user and print their one-time invite token (owners).
    #[command(after_help = "\
The invite token is printed once, on stdout; the user sets a password with it within 72 hours
(`outpost users accept-invite`), then signs in with `outpost login --email`.

Examples:
  outpost users invite bob@example.com --role member
  outpost users invite ada@example.com --role admin --json | jq -r .invite_token")]
    Invite {
        /// The user's email.
        email: String,
        /// Their role.
        #[arg(long, value_parser = ["owner", "admin", "member"], default_value = "member")]
        role: String,
    },
    /// Change a user's role (owners); it applies from the user's next request.
    #[command(
        after_help = "USER is a user id or email.\n\nExample:\n  outpost users set-role bob@example.com admin"
    )]
    SetRole {
        /// User id or email.
        user: String,
        /// The new role.
        #[arg(value_parser = ["owner", "admin", "member"])]
        role: String,
    },
    /// Disable a user (owners): their sessions end and their next request is refused.
    #[command(after_help = "Example:\n  outpost users disable bob@example.com")]
    Disable {
        /// User id or email.
        user: String,
    },
    /// Enable a disabled user again (owners); they sign in anew.
    #[command(after_help = "Example:\n  outpost users enable bob@example.com")]
    Enable {
        /// User id or email.
        user: String,
    },
    /// Delete a user (owners).
    #[command(after_help = "Example:\n  outpost users rm bob@example.com")]
    Rm {
        /// User id or email.
        user: String,
    },
    /// Set your password with an invite token (no sign-in needed).
    #[command(after_help = "\
The password is prompted for without echo on a terminal, or read from stdin's first line.

Example:
  outpost users accept-invite opi_… && outpost login --email bob@example.com")]
    AcceptInvite {
        /// The invite token (opi_…).
        token: String,
        /// Read the password from stdin's first line.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents with status, last heartbeat, metrics, version and tags.
    #[command(after_help = "\
Examples:
  outpost agents ls
  outpost agents ls --status offline
  outpost agents ls --tag web --json")]
    Ls {
        /// Only agents with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only `online` or `offline` agents.
        #[arg(long, value_parser = ["online", "offline"])]
        status: Option<String>,
    },
    /// Show one agent in full.
    #[command(after_help = "\
AGENT is an agent id, a unique start or end of one (ids shown as web/1a2b3c4d end so), or a\nhostname.

Examples:
  outpost agents show web-1
  outpost agents show 0199a3c2-… --json")]
    Show {
        /// Agent id, a unique start or end of one, or hostname.
        agent: String,
    },
    /// Forget an agent: the server drops it and its open runs end as lost.
    #[command(after_help = "\
For an agent that was uninstalled (it stays listed offline otherwise). Its open runs end as
lost; its id is free again for any key. An agent still installed that connects again is
registered anew; one that enrolled for a certificate has its certificates revoked and may not
enroll again until `outpost agents unrevoke ID`. AGENT is an agent id, a unique start or end of
one, or a hostname.

Examples:
  outpost agents rm web-1
  outpost agents ls --status offline --json | jq -r '.[].agent_id' | xargs -n1 outpost agents rm")]
    Rm {
        /// Agent id, a unique start or end of one, or hostname.
        agent: String,
    },
    /// Let an agent deleted after it enrolled for a certificate enroll again.
    #[command(after_help = "\
Deleting an agent that enrolled revokes its certificates and refuses its enrollment
(agent_revoked) until an admin runs this. AGENT is the agent's full id (a deleted agent is no
longer listed).

Examples:
  outpost agents unrevoke 0199a3c2-5b7e-7c3a-9d41-2f0e6a1b8c90")]
    Unrevoke {
        /// The agent's id.
        id: String,
    },
    /// Add or remove an agent's server-side tags.
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost agents tag add web-1 canary\n  outpost agents tag rm web-1 canary"
    )]
    Tag(TagCommand),
}

#[derive(Debug, Subcommand)]
pub enum TagCommand {
    /// Give an agent tags, kept by the server (jobs can target them: --on tag:T).
    #[command(after_help = "\
An agent's tags come from three places: the agent itself (OUTPOST_TAGS), its key
(`outpost keys agent create --tag`), and the server, which these commands change. A tag that
some agent key assigns counts in a target only from a key or the server, never from an agent
declaring it. Adding a tag the agent already has from the server changes nothing.

Examples:
  outpost agents tag add web-1 canary
  outpost agents tag add 1a2b3c4d role=db backup")]
    Add {
        /// Agent id, a unique start or end of one, or hostname.
        agent: String,
        /// Tags to add.
        #[arg(required = true, value_name = "TAG")]
        tags: Vec<String>,
    },
    /// Remove server-side tags from an agent.
    #[command(after_help = "\
Only the server's tags can be removed here; a tag the agent declares (OUTPOST_TAGS) or gets
from its key stays, and the command says so.

Examples:
  outpost agents tag rm web-1 canary")]
    Rm {
        /// Agent id, a unique start or end of one, or hostname.
        agent: String,
        /// Tags to remove.
        #[arg(required = true, value_name = "TAG")]
        tags: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Agent id, a unique start or end of one, or hostname.
    pub agent: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 10)]
    pub timeout: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The script's name in the agents' manifests.
    pub script: String,
    /// Where: AGENT, tag:T or all (repeatable).
    #[arg(long = "on", required = true, value_name = "AGENT|tag:T|all")]
    pub on: Vec<String>,
    /// A parameter for the script, K=V (repeatable).
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// A secret parameter, K=V (repeatable): sent like --param, then kept sealed by the
    /// server and shown as ******** everywhere.
    #[arg(long = "secret", value_name = "K=V")]
    pub secrets: Vec<String>,
    /// A secret parameter read from a file, K=PATH (repeatable; one trailing newline is
    /// dropped), so the value stays out of shell history and `ps`.
    #[arg(long = "secret-file", value_name = "K=PATH")]
    pub secret_files: Vec<String>,
    /// Seconds each run may take (the server's default is 60).
    #[arg(long, value_name = "S")]
    pub timeout: Option<u32>,
    /// Seconds a run waits for an agent that is offline (the server's default is 3600).
    #[arg(long, value_name = "S")]
    pub ttl: Option<u32>,
    /// Print the output live as it arrives.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    #[command(after_help = "\
--since and --until take RFC 3339 times (2026-11-21T08:00:00Z) or ages (30m, 6h, 2d).
When there are more jobs than --limit, the command prints the --cursor for the next page.

Examples:
  outpost jobs ls
  outpost jobs ls --status failed --since 1d
  outpost jobs ls --script deploy --agent web-1 --limit 20
  outpost jobs ls --schedule nightly-backup
  outpost jobs ls --json | jq -r '.jobs[].job_id'")]
    Ls(JobsLsArgs),
    /// Show a job as one answer: counts, durations and the groups of runs with the same
    /// result and output.
    #[command(after_help = "\
JOB is a job id, or a unique start or end of one: the last 8 characters are the handy short
form (ids start with their creation time, so jobs of the same minute share their start).
A job of up to 50 runs also lists its runs; `outpost jobs runs` lists any job's, filtered.

Examples:
  outpost jobs show 9c1e7f20
  outpost jobs show 9c1e7f20 --mask-numbers
  outpost jobs show 0199a3d4-…
  outpost jobs show 0199a3d4-… --json | jq '.runs[] | {agent_id, exit_code}'")]
    Show {
        /// Job id, or a unique start or end of one.
        job: String,
        /// Group outputs that differ only in digits (41% and 63% are one group).
        #[arg(long)]
        mask_numbers: bool,
    },
    /// Print a job's output (all runs, or one).
    #[command(after_help = "\
Without --follow the stored output is printed: one run's as it is, several runs' line by line
prefixed by agent. With --follow the output is streamed until the job ends (stdout lines to
stdout, stderr lines to stderr).

Examples:
  outpost jobs logs 0199a3d4-…
  outpost jobs logs 0199a3d4-… --run web-1 --stream stderr
  outpost jobs logs 0199a3d4-… --follow")]
    Logs(JobsLogsArgs),
    /// Cancel a job's runs that have not finished.
    #[command(after_help = "Example:\n  outpost jobs cancel 0199a3d4-…")]
    Cancel {
        /// Job id, or a unique start or end of one.
        job: String,
    },
    /// List a job's runs by host, filtered and paged (no output: see `jobs logs`).
    #[command(after_help = "\
GROUP is a key from `outpost jobs show` (runs with the same result and output). When there are
more runs than --limit, the command prints the --cursor for the next page.

Examples:
  outpost jobs runs 9c1e7f20 --status failed
  outpost jobs runs 9c1e7f20 --exit-code 2 --host web-
  outpost jobs runs 9c1e7f20 --group 3f0c9a1b22d4e5f6
  outpost jobs runs 9c1e7f20 --json | jq -r '.items[].hostname'")]
    Runs(JobsRunsArgs),
    /// Run a job again on the agents of some of its runs: the failed ones, by default.
    #[command(after_help = "\
The new job has the same command and parameters (secret ones carried over without being shown;
a library script runs the version the original ran). Runs whose agent is gone, or is bound to
another key now, are not repeated and are listed. Without --follow the command waits for the
new job and prints its summary; the exit status is that of `outpost run`.

Examples:
  outpost jobs rerun 9c1e7f20 --failed
  outpost jobs rerun 9c1e7f20 --not-succeeded --follow
  outpost jobs rerun 9c1e7f20 --run 0199a3d4-… --run 0199a3d5-…")]
    Rerun(JobsRerunArgs),
}

#[derive(Debug, Args)]
pub struct JobsRunsArgs {
    /// Job id, or a unique start or end of one.
    pub job: String,
    /// Runs in this state (succeeded, failed, timed_out, cancelled, expired, lost, pending,
    /// delivered, running), or not_succeeded.
    #[arg(long)]
    pub status: Option<String>,
    /// Runs that ended with this exit code.
    #[arg(long)]
    pub exit_code: Option<i32>,
    /// Runs of this group (a key printed by `outpost jobs show`).
    #[arg(long)]
    pub group: Option<String>,
    /// GROUP is a key of `outpost jobs show --mask-numbers`.
    #[arg(long)]
    pub mask_numbers: bool,
    /// Runs of agents whose host name contains this.
    #[arg(long, value_name = "TEXT")]
    pub host: Option<String>,
    /// Runs of agents with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Runs per page, 1–200.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Start after this cursor (printed by the previous page).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
#[group(id = "which", multiple = false)]
pub struct JobsRerunArgs {
    /// Job id, or a unique start or end of one.
    pub job: String,
    /// The runs that failed (the default).
    #[arg(long, group = "which")]
    pub failed: bool,
    /// Every finished run that did not succeed (failed, timed out, cancelled, expired, lost).
    #[arg(long, group = "which")]
    pub not_succeeded: bool,
    /// Every run.
    #[arg(long, group = "which")]
    pub all: bool,
    /// These runs (run ids; repeat the flag).
    #[arg(long = "run", value_name = "RUN", group = "which")]
    pub runs: Vec<String>,
    /// Stream the new job's output until it ends.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// List schedules by name: cron, zone, next fire, the last job's status.
    #[command(after_help = "\
NEXT is the next fire in the schedule's own time zone, and how far off it is; a disabled
schedule has none. When there are more schedules than --limit, the command prints the --cursor
for the next page.

Examples:
  outpost schedules ls
  outpost schedules ls --disabled
  outpost schedules ls --json | jq -r '.schedules[] | [.name, .next_fire_at] | @tsv'")]
    Ls(SchedulesLsArgs),
    /// Show every field of a schedule, its next and last fire and its last job.
    #[command(after_help = "\
SCHEDULE is a schedule's id or its name.

Examples:
  outpost schedules show nightly-backup
  outpost schedules show nightly-backup --json | jq .next_fire_at")]
    Show {
        /// Schedule id or name.
        schedule: String,
    },
    /// Create a schedule: what to run, where, and when.
    #[command(after_help = SCHEDULE_CREATE_AFTER)]
    Create(ScheduleCreateArgs),
    /// Change a schedule: only the flags given change.
    #[command(after_help = SCHEDULE_EDIT_AFTER)]
    Edit(ScheduleEditArgs),
    /// Enable a paused schedule; it fires next at its first instant after now.
    #[command(after_help = "\
Fires that fell while the schedule was disabled are not run or counted as missed.

Example:
  outpost schedules enable nightly-backup")]
    Enable {
        /// Schedule id or name.
        schedule: String,
    },
    /// Pause a schedule without deleting it.
    #[command(after_help = "Example:\n  outpost schedules disable nightly-backup")]
    Disable {
        /// Schedule id or name.
        schedule: String,
    },
    /// Delete a schedule; the jobs it created stay in the history.
    #[command(after_help = "Example:\n  outpost schedules rm nightly-backup")]
    Rm {
        /// Schedule id or name.
        schedule: String,
    },
    /// Create the schedule's job now, outside its cron.
    #[command(after_help = "\
Without --wait or --follow the job's id is printed and the command returns at once. With --wait
it waits for the job, prints its output and exits as `outpost run` does (one agent: the
script's exit code); --follow prints the output live.

Examples:
  outpost schedules run nightly-backup
  outpost schedules run nightly-backup --wait
  outpost schedules run nightly-backup --follow")]
    Run(ScheduleRunArgs),
    /// The next fires of a cron expression in a time zone, without creating anything.
    #[command(after_help = "\
Prints each fire in UTC and in the zone's local time, as the server computes them (daylight
saving included: a local time that does not exist fires at the end of the gap, one that occurs
twice fires once).

Examples:
  outpost schedules preview --cron '30 2 * * *' --tz America/New_York
  outpost schedules preview --cron '@every 90m' -n 3
  outpost schedules preview --cron '0 9 * * MON-FRI' --tz Europe/Paris --from 2026-03-27T00:00:00Z -n 5")]
    Preview(SchedulePreviewArgs),
}

const SCHEDULE_CREATE_AFTER: &str = "\
CRON: 5 fields (minute hour day-of-month month day-of-week; lists, ranges, steps, JAN-DEC,
SUN-SAT), @hourly, @daily, @weekly, @monthly, @yearly, or @every 30s|5m|2h|1d (at least 10 s).
It is read in --tz (an IANA name such as Europe/Paris; UTC by default).

Where: --agent AGENT (an id, a unique start or end of one, or a hostname; repeatable),
--tag T (repeatable: the agents with all of the tags, looked up at each fire) or --all.
What: --script NAME with --param K=V (and --secret K=V, --secret-file K=PATH: kept sealed, as
for `outpost run`), or --command CMD (ping, info, echo, …) with --data JSON.
--missed: fires missed while the server was down: skip (the default; an event counts them)
or run_once (one catch-up job). --concurrency: when the previous job still runs at the next
fire: allow (the default), forbid (skip this fire) or replace (cancel it, start the new one).

Examples:
  outpost schedules create nightly-backup --cron '30 2 * * *' --tz Europe/Paris --tag db --script backup
  outpost schedules create disk-check --cron '@every 15m' --all --script disk-usage --param LIMIT=90 --concurrency forbid
  outpost schedules create heartbeat --cron '*/5 * * * *' --agent web-1 --command ping --disabled";

const SCHEDULE_EDIT_AFTER: &str = "\
SCHEDULE is a schedule's id or its name. Only the flags given are sent; the rest stays.
Any of --agent, --tag, --all replaces the whole target. --param, --secret and --secret-file
replace all of the script's parameters (the script stays unless --script is given); a schedule
with secret parameters needs them given again to change its target, command or times (the
server keeps them sealed and cannot show them back). --no-webhook, --no-timeout and
--no-ttl clear the value (back to the server's default).

Examples:
  outpost schedules edit nightly-backup --cron '0 3 * * *'
  outpost schedules edit nightly-backup --tag db --tag eu --param KEEP=7
  outpost schedules edit nightly-backup --name nightly-db-backup --no-webhook";

#[derive(Debug, Args)]
pub struct SchedulesLsArgs {
    /// Only enabled schedules.
    #[arg(long, conflicts_with = "disabled")]
    pub enabled: bool,
    /// Only disabled (paused) schedules.
    #[arg(long)]
    pub disabled: bool,
    /// Schedules per page, 1–200.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Start after this cursor (printed by the previous page).
    #[arg(long)]
    pub cursor: Option<String>,
}

/// What a schedule's jobs do and where, and how it fires: the flags `create` and `edit`
/// share (`create` makes a target and a script or command required).
#[derive(Debug, Args, Default)]
pub struct ScheduleFields {
    /// The cron expression's time zone: an IANA name such as Europe/Paris (default UTC).
    #[arg(long = "tz", value_name = "ZONE")]
    pub timezone: Option<String>,
    /// Run on this agent: id, unique start or end of one, or hostname (repeatable).
    #[arg(long = "agent", value_name = "AGENT")]
    pub agents: Vec<String>,
    /// Run on the agents with this tag (repeatable: the agents with all of them).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Run on every agent.
    #[arg(long, conflicts_with_all = ["agents", "tags"])]
    pub all: bool,
    /// The manifest script each job runs.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["command", "data"])]
    pub script: Option<String>,
    /// A parameter for the script, K=V (repeatable).
    #[arg(long = "param", value_name = "K=V", conflicts_with_all = ["command", "data"])]
    pub params: Vec<String>,
    /// A secret parameter, K=V (repeatable): kept sealed by the server, shown as ********.
    #[arg(long = "secret", value_name = "K=V", conflicts_with_all = ["command", "data"])]
    pub secrets: Vec<String>,
    /// A secret parameter read from a file, K=PATH (repeatable; one trailing newline is
    /// dropped).
    #[arg(long = "secret-file", value_name = "K=PATH", conflicts_with_all = ["command", "data"])]
    pub secret_files: Vec<String>,
    /// A command other than a script: ping, info, echo, …
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// The command's data, as JSON.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Seconds each run may take (the server's default is 60).
    #[arg(long, value_name = "S")]
    pub timeout: Option<u32>,
    /// Seconds a run waits for an agent that is offline (the server's default is 3600).
    #[arg(long, value_name = "S")]
    pub ttl: Option<u32>,
    /// Fires missed while the server was down: skip them, or run one catch-up job.
    #[arg(long, value_enum)]
    pub missed: Option<Missed>,
    /// When the previous job still runs at a fire: allow, forbid (skip the fire) or replace.
    #[arg(long, value_enum)]
    pub concurrency: Option<Concurrency>,
    /// A URL each job of the schedule posts its result to (as `POST /api/jobs`'s webhook_url).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
}

/// `--missed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Missed {
    /// Skip them; a `schedule.missed` event says how many.
    Skip,
    /// One catch-up job, however many were missed.
    #[value(name = "run_once")]
    RunOnce,
}

impl Missed {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::RunOnce => "run_once",
        }
    }
}

/// `--concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Concurrency {
    /// Start the new job anyway.
    Allow,
    /// Skip this fire (a `schedule.skipped` event says so).
    Forbid,
    /// Cancel the running job, then start the new one.
    Replace,
}

impl Concurrency {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Forbid => "forbid",
            Self::Replace => "replace",
        }
    }
}

#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("target").args(["agents", "tags", "all"]).required(true).multiple(true)),
    group(clap::ArgGroup::new("action").args(["script", "command"]).required(true)),
)]
pub struct ScheduleCreateArgs {
    /// A unique name: 1–100 characters of A-Z a-z 0-9 . _ -
    pub name: String,
    /// When: a cron expression (see below).
    #[arg(long)]
    pub cron: String,
    #[command(flatten)]
    pub fields: ScheduleFields,
    /// Create it paused (`outpost schedules enable` starts it).
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct ScheduleEditArgs {
    /// Schedule id or name.
    pub schedule: String,
    /// A new name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// A new cron expression.
    #[arg(long)]
    pub cron: Option<String>,
    #[command(flatten)]
    pub fields: ScheduleFields,
    /// Remove the webhook.
    #[arg(long, conflicts_with = "webhook")]
    pub no_webhook: bool,
    /// Back to the server's default run timeout.
    #[arg(long, conflicts_with = "timeout")]
    pub no_timeout: bool,
    /// Back to the server's default time to wait for an offline agent.
    #[arg(long, conflicts_with = "ttl")]
    pub no_ttl: bool,
    /// Enable it (as `outpost schedules enable`).
    #[arg(long, conflicts_with = "disabled")]
    pub enabled: bool,
    /// Pause it (as `outpost schedules disable`).
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct ScheduleRunArgs {
    /// Schedule id or name.
    pub schedule: String,
    /// Wait for the job, print its output and exit with its status, as `outpost run`.
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,
    /// Print the output live as it arrives, as `outpost run --follow`.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct SchedulePreviewArgs {
    /// The cron expression.
    #[arg(long)]
    pub cron: String,
    /// Its time zone, an IANA name (default UTC).
    #[arg(long = "tz", value_name = "ZONE")]
    pub timezone: Option<String>,
    /// Fires after this instant (RFC 3339; default now).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// How many fires, 1–100.
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub count: u32,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, filtered by type and subject.
    #[command(after_help = "\
Types recorded now: schedule.missed (fires missed while the server was down: how many, the
first and last, the policy) and schedule.skipped (a fire skipped because the previous job still
ran, with --concurrency forbid). --subject takes the id of what the event is about; a schedule's
name works too. When there are more events than --limit, the command prints the --cursor for
the next page.

Examples:
  outpost events ls
  outpost events ls --type schedule.missed --subject nightly-backup
  outpost events ls --json | jq '.events[].detail'")]
    Ls(EventsLsArgs),
    /// Print events as the server records them, until Ctrl-C.
    #[command(after_help = "\
One line per event, as `events ls` shows it (TIME TYPE SUBJECT SUMMARY); with --json, each
event's JSON (as `events ls --json` shows one) on a line of its own. Only events recorded after
the command starts are printed. --type takes a type (schedule.missed) or a kind (schedule: every
schedule.* type); --subject takes the id of what the events are about (or a schedule's name).

A dropped connection is opened again, resuming after the last event printed (Last-Event-ID), so
no event is printed twice or lost. Ctrl-C ends it (exit status 0).

Examples:
  outpost events follow
  outpost events follow --type schedule --subject nightly-backup
  outpost events follow --json | jq -r 'select(.type == \"schedule.missed\") | .summary'")]
    Follow(EventsFollowArgs),
}

#[derive(Debug, Args)]
pub struct EventsLsArgs {
    /// Events of this type (schedule.missed, schedule.skipped, …).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Events about this subject: its id (or a schedule's name).
    #[arg(long, value_name = "ID")]
    pub subject: Option<String>,
    /// Events per page, 1–200.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Start after this cursor (printed by the previous page).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct EventsFollowArgs {
    /// Events of this type (schedule.missed), or of every type of a kind (schedule).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Events about this subject: its id (or a schedule's name).
    #[arg(long, value_name = "ID")]
    pub subject: Option<String>,
}

const ROLLOUTS_AFTER: &str = "\
A rollout takes the agents of a target (--tag T…, or --all) to one version: canary agents
first, then waves by percentage of the rest, at most --max-in-flight percent of the target
updating at once. Each stage waits for its agents to be healthy (back online at the version
within --online-within, no rollback for --soak, optionally --check-script succeeding) before
the next starts; a stage that misses --min-healthy halts the rollout until a person resumes,
aborts or rolls it back. ROLLOUT is a rollout's id (`outpost rollouts ls`).

Examples:
  outpost rollouts start 1.4.0 --tag web --canary 2 --waves 10,40,50
  outpost rollouts ls
  outpost rollouts show 0199b3c4-… --agents --state failed
  outpost rollouts resume 0199b3c4-…
  outpost rollouts rollback 0199b3c4-…
  outpost rollouts policy --min-version 1.3.0";

/// States of an agent in a rollout (`show --state`), as the API names them.
pub const ROLLOUT_AGENT_STATES: [&str; 12] = [
    "pending",
    "updating",
    "soaking",
    "checking",
    "healthy",
    "failed",
    "skipped",
    "ahead",
    "revert_pending",
    "reverting",
    "reverted",
    "revert_failed",
];

#[derive(Debug, Subcommand)]
pub enum RolloutsCommand {
    /// Start a rollout of an agent version over a target (owners and admins).
    #[command(after_help = "\
VERSION is MAJOR.MINOR.PATCH: a published release (or the build the server ships). The target
is --tag T (repeatable: the agents with all of the tags) or --all. Left out, the server uses:
--canary 1, --waves 100, --max-in-flight 10, --online-within 300, --soak 120,
--min-healthy 100, no check script. --waves lists each wave's share of the non-canary agents in
percent; the server refuses waves that do not sum to 100. An agent already in another active
rollout makes the server refuse the whole rollout (rollout_conflict).

Examples:
  outpost rollouts start 1.4.0 --tag web
  outpost rollouts start 1.4.0 --all --canary 3 --waves 10,40,50 --max-in-flight 5
  outpost rollouts start 1.4.0 --tag db --tag eu --soak 600 --min-healthy 95 --check-script db-health")]
    Start(RolloutStartArgs),
    /// List rollouts, newest first: state and progress.
    #[command(after_help = "\
PROGRESS is the agents done (healthy, skipped, or already ahead of the version) out of the
rollout's agents. When there are more rollouts than --limit, the command prints the --before
for the next page.

Examples:
  outpost rollouts ls
  outpost rollouts ls --limit 5
  outpost rollouts ls --json | jq -r '.rollouts[] | [.id, .version, .state] | @tsv'")]
    Ls(RolloutsLsArgs),
    /// Show a rollout: its state, its settings and each stage's agents by state.
    #[command(after_help = "\
--agents adds a table of the rollout's agents (every page of them), by hostname; --stage and
--state keep some of them (and imply --agents). Stage 0 is the canary, 1 the first wave.
With --json: the rollout as the API gives it, or with --agents {\"rollout\": …, \"agents\": […]}.

Examples:
  outpost rollouts show 0199b3c4-…
  outpost rollouts show 0199b3c4-… --agents
  outpost rollouts show 0199b3c4-… --stage 0 --state failed
  outpost rollouts show 0199b3c4-… --agents --json | jq -r '.agents[] | [.hostname, .state] | @tsv'")]
    Show(RolloutShowArgs),
    /// Pause a running rollout: nothing new is sent; agents on their way are still watched.
    #[command(after_help = "Example:\n  outpost rollouts pause 0199b3c4-…")]
    Pause {
        /// Rollout id.
        rollout: String,
    },
    /// Resume a paused or halted rollout (from halted, the failed agents of its stage are
    /// tried again).
    #[command(after_help = "Example:\n  outpost rollouts resume 0199b3c4-…")]
    Resume {
        /// Rollout id.
        rollout: String,
    },
    /// Stop a rollout for good; its agents keep the version they have.
    #[command(after_help = "Example:\n  outpost rollouts abort 0199b3c4-…")]
    Abort {
        /// Rollout id.
        rollout: String,
    },
    /// Send every agent the rollout updated back to the version it had (owners).
    #[command(after_help = "\
A rollback is a downgrade: the command asks for confirmation on the terminal unless --yes is
given, and refuses without --yes when stdin is not a terminal. The server refuses it
(release_missing) when a version the agents go back to is no longer published.

Examples:
  outpost rollouts rollback 0199b3c4-…
  outpost rollouts rollback 0199b3c4-… --yes")]
    Rollback {
        /// Rollout id.
        rollout: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// The fleet's minimum agent version, the agents below it and each target's desired
    /// version; --min-version or --clear changes the minimum (owners).
    #[command(after_help = "\
An update or a rollout to a version below the minimum is refused. The desired versions are
what each target's last completed rollout reached.

Examples:
  outpost rollouts policy
  outpost rollouts policy --min-version 1.3.0
  outpost rollouts policy --clear")]
    Policy(RolloutPolicyArgs),
}

/// `--waves`: each wave's percentage, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waves(pub Vec<u32>);

/// `--waves 10,40,50`: integers separated by commas (their sum is the server's to check).
pub fn parse_waves(text: &str) -> Result<Waves, String> {
    let mut waves = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        match part.parse::<u32>() {
            Ok(n) => waves.push(n),
            Err(_) => {
                return Err(format!(
                    "{part:?} is not a whole number; give each wave's percentage separated by commas, such as 10,40,50"
                ));
            }
        }
    }
    Ok(Waves(waves))
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").args(["tags", "all"]).required(true)))]
pub struct RolloutStartArgs {
    /// The agent version, MAJOR.MINOR.PATCH.
    pub version: String,
    /// The agents with this tag (repeatable: the agents with all of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Every agent.
    #[arg(long)]
    pub all: bool,
    /// Canary agents, chosen at random among the target (server default 1).
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// Each wave's percentage of the other agents, separated by commas (server default 100).
    #[arg(long, value_name = "PCT,…", value_parser = parse_waves)]
    pub waves: Option<Waves>,
    /// Most agents updating at once, in percent of the target (server default 10).
    #[arg(long, value_name = "PCT")]
    pub max_in_flight: Option<u32>,
    /// Seconds an updated agent has to come back online at the version (server default 300).
    #[arg(long, value_name = "SECS")]
    pub online_within: Option<u32>,
    /// Seconds it must then run without rolling back (server default 120).
    #[arg(long, value_name = "SECS")]
    pub soak: Option<u32>,
    /// Percent of a stage's agents that must be healthy for the next to start (server
    /// default 100).
    #[arg(long, value_name = "PCT")]
    pub min_healthy: Option<u32>,
    /// A script that must then succeed on each agent (its manifest's, or the library's).
    #[arg(long, value_name = "NAME")]
    pub check_script: Option<String>,
}

#[derive(Debug, Args)]
pub struct RolloutsLsArgs {
    /// Rollouts per page, 1–100.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Start after this cursor (printed by the previous page).
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
}

#[derive(Debug, Args)]
pub struct RolloutShowArgs {
    /// Rollout id.
    pub rollout: String,
    /// Also list its agents: hostname, stage, state, versions, reason.
    #[arg(long)]
    pub agents: bool,
    /// Only the agents of this stage (0 the canary, 1 the first wave, …); implies --agents.
    #[arg(long, value_name = "N")]
    pub stage: Option<u32>,
    /// Only the agents in this state; implies --agents.
    #[arg(long, value_name = "STATE", value_parser = ROLLOUT_AGENT_STATES)]
    pub state: Option<String>,
}

#[derive(Debug, Args)]
pub struct RolloutPolicyArgs {
    /// Set the oldest agent version the fleet accepts (MAJOR.MINOR.PATCH).
    #[arg(long, value_name = "VERSION")]
    pub min_version: Option<String>,
    /// Remove the minimum.
    #[arg(long, conflicts_with = "min_version")]
    pub clear: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List the audit log, newest first (owners and admins).
    #[command(after_help = "\
--since and --until take RFC 3339 times (2026-11-21T08:00:00Z) or ages (30m, 6h, 2d).
--action takes an action (job.trigger) or a kind of them (agent_key: every agent_key.*).
--actor takes an actor's id or label (an API key's id or name).
When there are more rows than --limit, the command prints the --cursor for the next page.

Examples:
  outpost audit ls
  outpost audit ls --action job.trigger --since 6h
  outpost audit ls --actor ci --limit 20
  outpost audit ls --json | jq -r '.entries[] | [.id, .action, .actor.label] | @tsv'")]
    Ls(AuditLsArgs),
    /// Check the audit log's hash chain; exits 1 when it is broken.
    #[command(after_help = "\
Prints the number of rows checked and the last row's hash (keep it elsewhere: a later check
passes through it), or the first broken row and why.

Examples:
  outpost audit verify
  outpost audit verify --json")]
    Verify,
}

#[derive(Debug, Args)]
pub struct AuditLsArgs {
    /// Rows of this actor (its id or label).
    #[arg(long)]
    pub actor: Option<String>,
    /// Rows of this action, or of every action of a kind (agent_key).
    #[arg(long)]
    pub action: Option<String>,
    /// Recorded at or after (RFC 3339 or an age such as 6h).
    #[arg(long)]
    pub since: Option<String>,
    /// Recorded before (RFC 3339 or an age such as 6h).
    #[arg(long)]
    pub until: Option<String>,
    /// Rows per page, 1–200.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Start after this cursor (printed by the previous page).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobsLsArgs {
    /// Jobs with a run on this agent (id, unique start or end of one, or hostname).
    #[arg(long)]
    pub agent: Option<String>,
    /// `run` jobs of this script.
    #[arg(long)]
    pub script: Option<String>,
    /// Jobs a schedule created (its id or name).
    #[arg(long, value_name = "SCHEDULE")]
    pub schedule: Option<String>,
    /// Jobs of this command (run, ping, info, echo, …).
    #[arg(long)]
    pub command: Option<String>,
    /// running, succeeded, failed or cancelled.
    #[arg(long, value_parser = ["running", "succeeded", "failed", "cancelled"])]
    pub status: Option<String>,
    /// Created at or after (RFC 3339 or an age such as 6h).
    #[arg(long)]
    pub since: Option<String>,
    /// Created before (RFC 3339 or an age such as 6h).
    #[arg(long)]
    pub until: Option<String>,
    /// Jobs per page, 1–200.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Start after this cursor (printed by the previous page).
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobsLogsArgs {
    /// Job id, or a unique start or end of one.
    pub job: String,
    /// Only this run: a run id or agent id (or a unique start or end of one) or hostname.
    #[arg(long)]
    pub run: Option<String>,
    /// Which output.
    #[arg(long, value_enum, default_value_t = Stream::Both)]
    pub stream: Stream,
    /// Stream the output until the job ends.
    #[arg(long, short)]
    pub follow: bool,
}

/// Output streams to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Both, in the order they arrived.
    Both,
}

impl Stream {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Both => "both",
        }
    }

    /// Whether a chunk of `stream` is selected.
    pub fn wants(self, stream: &str) -> bool {
        self == Self::Both || self.as_str() == stream
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Keys agents connect with (opa_…).
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost keys agent create web --tag web\n  outpost keys agent ls\n  outpost keys agent disable web\n  outpost keys agent regenerate web"
    )]
    Agent(AgentKeysCommand),
    /// API keys for programs (opk_…): scoped, expiring, yours.
    #[command(
        subcommand,
        after_help = "Examples:\n  outpost keys api create ci --scope jobs:run --scope jobs:read\n  outpost keys api ls\n  outpost keys api rm ci"
    )]
    Api(ApiKeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create an API key for yourself and print its secret (shown this once).
    #[command(after_help = "\
Scopes: agents:read, agents:write, jobs:read, jobs:run, schedules:read, schedules:write,
integrations:write, keys:write, users:write, audit:read, metrics:read, scripts:write, or *
for all. The key
acts with its scopes and your role together, and stops working when you are disabled or
deleted. It expires at the latest after the server's --max-key-days (365 by default, also
the default expiry).

Examples:
  outpost keys api create ci --scope jobs:run --scope jobs:read
  outpost keys api create backup-check --scope jobs:read --expires-at 2027-01-01T00:00:00Z
  outpost keys api create deploy --scope '*' --json | jq -r .secret")]
    Create {
        /// A name for people.
        name: String,
        /// A scope the key holds (repeatable; at least one).
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// When the key stops working (RFC 3339).
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// List your API keys (an owner: everyone's), never their secrets.
    #[command(after_help = "Examples:\n  outpost keys api ls\n  outpost keys api ls --json")]
    Ls,
    /// Revoke an API key at once.
    #[command(after_help = "Examples:\n  outpost keys api rm ci\n  outpost keys api rm 01J…")]
    Rm {
        /// Key id or name.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentKeysCommand {
    /// Create an agent key and print its secret (shown this once).
    #[command(after_help = "\
Permissions are the commands agents using the key may be sent (ping, info, echo, run,
restart, update, redeploy); the server's default is ping, info, echo and run.

Examples:
  outpost keys agent create web --tag web --tag prod
  outpost keys agent create ops --permission run --permission restart --expires-at 2027-01-01T00:00:00Z
  outpost keys agent create ci --json | jq -r .secret")]
    Create {
        /// A name for people.
        name: String,
        /// A command agents with this key may be sent (repeatable).
        #[arg(long = "permission", value_name = "P")]
        permissions: Vec<String>,
        /// A tag every agent using this key gets (repeatable).
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// When the key stops working (RFC 3339).
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// List agent keys (never their secrets).
    #[command(after_help = "Examples:\n  outpost keys agent ls\n  outpost keys agent ls --json")]
    Ls,
    /// Disable a key; agents connected with it are disconnected at once.
    #[command(
        after_help = "KEY is a key id or a unique key name.\n\nExample:\n  outpost keys agent disable web"
    )]
    Disable {
        /// Key id or name.
        key: String,
    },
    /// Enable a disabled key again.
    #[command(after_help = "Example:\n  outpost keys agent enable web")]
    Enable {
        /// Key id or name.
        key: String,
    },
    /// Delete a key; agents connected with it are disconnected.
    #[command(after_help = "Example:\n  outpost keys agent rm web")]
    Rm {
        /// Key id or name.
        key: String,
    },
    /// Give a key a new secret; the old one stops working at once.
    #[command(after_help = "\
Agents connected with the old secret are disconnected; give them the new one.

Example:
  outpost keys agent regenerate web")]
    Regenerate {
        /// Key id or name.
        key: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command, down to the leaves, shows examples in its help.
    #[test]
    fn every_command_has_examples() {
        fn walk(cmd: &mut clap::Command, path: &str, missing: &mut Vec<String>) {
            let name = format!("{path} {}", cmd.get_name());
            let help = cmd.render_help().to_string();
            if !help.contains("Example") {
                missing.push(name.clone());
            }
            for sub in cmd.get_subcommands_mut() {
                if sub.get_name() != "help" {
                    walk(sub, &name, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&mut Cli::command(), "", &mut missing);
        assert!(
            missing.is_empty(),
            "no examples in the help of: {missing:?}"
        );
    }

    /// An on/off flag with an environment twin takes 1/0, true/false, yes/no from the
    /// variable, as in the server, agent and supervisor (clap's default takes only
    /// true/false). The CLI has none today (`--json` and `--follow` have no variable); this
    /// keeps a future one in line.
    #[test]
    fn boolean_variables_take_1_0_true_false_yes_no() {
        fn walk(cmd: &clap::Command, bad: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_env().is_none() || !matches!(arg.get_action(), clap::ArgAction::SetTrue)
                {
                    continue;
                }
                let values: Vec<_> = arg
                    .get_value_parser()
                    .possible_values()
                    .into_iter()
                    .flatten()
                    .collect();
                if !["1", "0", "yes", "no", "true", "false"]
                    .iter()
                    .all(|w| values.iter().any(|v| v.matches(w, true)))
                {
                    bad.push(format!("{} --{}", cmd.get_name(), arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, bad);
            }
        }
        let mut bad = Vec::new();
        walk(&Cli::command(), &mut bad);
        assert!(bad.is_empty(), "use BoolishValueParser for: {bad:?}");
    }
}

#[derive(Debug, Subcommand)]
pub enum IntegrationsCommand {
    /// List the tenant's integrations.
    #[command(
        after_help = "Examples:\n  outpost integrations ls\n  outpost integrations ls --json | jq '.integrations[].name'"
    )]
    Ls,
    /// Show one integration (secret fields are shown as `…`).
    #[command(after_help = "Examples:\n  outpost integrations show ops-slack")]
    Show {
        /// Its id or name.
        integration: String,
    },
    /// Make an integration.
    #[command(after_help = "\
Config by kind: webhook --endpoint URL [--secret whsec_…]; slack, discord, teams --endpoint;
pagerduty --routing-key [--endpoint]; datadog --api-key (--site datadoghq.eu | --endpoint);
splunk --endpoint --hec-token;
email --to (repeatable). --config '{…}' gives the whole config as JSON instead.
--event takes a type (job.failed, job.succeeded, job.recovered, agent.online, agent.offline,
agent.updated, agent.update_rolled_back, schedule.missed, schedule.skipped), a kind (job, agent,
schedule) or '*'.

Examples:
  outpost integrations create ops-slack --kind slack --endpoint https://hooks.slack.com/services/T/B/X --event job.failed --event job.recovered
  outpost integrations create pd --kind pagerduty --routing-key R0123 --event job --notify-after 2 --tag db
  outpost integrations create hook --kind webhook --endpoint https://example.com/outpost --event '*'")]
    Create(Box<IntegrationCreateArgs>),
    /// Pause an integration (events recorded meanwhile are not sent to it later).
    #[command(after_help = "Examples:\n  outpost integrations disable ops-slack")]
    Disable {
        /// Its id or name.
        integration: String,
    },
    /// Resume a paused integration.
    #[command(after_help = "Examples:\n  outpost integrations enable ops-slack")]
    Enable {
        /// Its id or name.
        integration: String,
    },
    /// Send a test event now and print the provider's answer; exit status 1 when it refused.
    #[command(after_help = "Examples:\n  outpost integrations test ops-slack")]
    Test {
        /// Its id or name.
        integration: String,
    },
    /// The delivery log: every event sent (or to send) and every attempt.
    #[command(
        after_help = "Examples:\n  outpost integrations deliveries ops-slack\n  outpost integrations deliveries ops-slack --json | jq '.deliveries[0].attempt_log'"
    )]
    Deliveries {
        /// Its id or name.
        integration: String,
        /// Deliveries per page, 1–200.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Start after this cursor (printed by the previous page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Delete an integration and its delivery log.
    #[command(after_help = "Examples:\n  outpost integrations rm ops-slack")]
    Rm {
        /// Its id or name.
        integration: String,
    },
}

#[derive(Debug, Args)]
pub struct IntegrationCreateArgs {
    /// Unique in the tenant.
    pub name: String,
    /// webhook, slack, discord, teams, pagerduty, datadog, splunk or email.
    #[arg(long)]
    pub kind: String,
    /// The provider's URL (webhook, slack, discord, teams, splunk; pagerduty and datadog: to
    /// override the default endpoint). Not `--url`: that is the Outpost server's.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// A webhook's signing secret (whsec_…; made for you when left out).
    #[arg(long)]
    pub secret: Option<String>,
    /// PagerDuty's integration (routing) key.
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Datadog's API key.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Datadog's site (datadoghq.com, datadoghq.eu, …).
    #[arg(long)]
    pub site: Option<String>,
    /// Splunk's HEC token (not `--token`: that is your Outpost token).
    #[arg(long, value_name = "TOKEN")]
    pub hec_token: Option<String>,
    /// Email recipients (repeatable).
    #[arg(long)]
    pub to: Vec<String>,
    /// The whole config as JSON (instead of the flags above).
    #[arg(long, value_name = "JSON")]
    pub config: Option<String>,
    /// Event types or kinds to send (repeatable; at least one).
    #[arg(long = "event", required = true)]
    pub events: Vec<String>,
    /// Only events whose job targets (or agent has) all these tags (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only events of this script.
    #[arg(long)]
    pub script: Option<String>,
    /// Only events of this schedule (its id).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Send a failure only from the N-th in a row of the same subject.
    #[arg(long)]
    pub notify_after: Option<i32>,
    /// Make it paused.
    #[arg(long)]
    pub disabled: bool,
}

const SCRIPTS_AFTER: &str = "\
A bundle is a tar.gz holding outpost-bundle.json (name, version, entrypoint, ...) and its files.
You sign it on your own machine; the server stores it and never holds the private key. An agent
runs it only if its manifest's \"library\" allows the name and pins your public key.

Examples:
  outpost scripts keygen --out ~/.outpost/library.key
  outpost scripts pack ./backup-db --out backup-db-1.0.0.tar.gz
  outpost scripts sign backup-db-1.0.0.tar.gz --key ~/.outpost/library.key
  outpost scripts upload backup-db-1.0.0.tar.gz
  outpost scripts ls
  outpost scripts show backup-db
  outpost run backup-db@1.0.0 --on tag:db
  outpost scripts rm backup-db 1.0.0";

#[derive(Debug, Subcommand)]
pub enum ScriptsCommand {
    /// Make an Ed25519 signing key: the private key in FILE (mode 0600), the public key in
    /// FILE.pub (what agents' manifests pin in library.keys).
    #[command(after_help = "Example:\n  outpost scripts keygen --out ~/.outpost/library.key")]
    Keygen {
        /// Where to write the private key (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Pack a folder into a bundle (tar.gz), refusing symlinks and anything but files and
    /// folders; the folder must hold outpost-bundle.json.
    #[command(
        after_help = "Example:\n  outpost scripts pack ./backup-db --out backup-db-1.0.0.tar.gz"
    )]
    Pack {
        /// The folder.
        dir: std::path::PathBuf,
        /// The bundle to write.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Check a bundle and sign it: writes BUNDLE.sig. With --draft, sign a draft saved in the
    /// dashboard instead: download it, show its diff against the newest signed version (checked
    /// against your key first), ask, sign and upload the signature, which makes it a version.
    #[command(
        after_help = "The diff is printed even with --yes. The answer is read from standard input, a terminal\nor not; the end of input answers no. If the draft changes on the server after it was\ndownloaded, the server refuses the signature (draft_changed) and nothing is stored.\n\nExamples:\n  outpost scripts sign backup-db-1.0.0.tar.gz --key ~/.outpost/library.key\n  outpost scripts sign --draft backup-db@1.1.0 --key ~/.outpost/library.key"
    )]
    Sign {
        /// The bundle (tar.gz).
        #[arg(required_unless_present = "draft", conflicts_with = "draft")]
        bundle: Option<std::path::PathBuf>,
        /// A draft to sign, NAME@VERSION (`outpost scripts drafts` lists them).
        #[arg(long, value_name = "NAME@VERSION")]
        draft: Option<String>,
        /// The private key file of `outpost scripts keygen`.
        #[arg(long, value_name = "FILE")]
        key: std::path::PathBuf,
        /// Sign the draft without asking (its diff is still printed).
        #[arg(long, short = 'y', requires = "draft")]
        yes: bool,
    },
    /// List the drafts saved in the dashboard, waiting for a signature.
    #[command(after_help = "Example:\n  outpost scripts drafts")]
    Drafts,
    /// Upload a signed bundle with its signature (BUNDLE.sig unless --signature).
    #[command(after_help = "Example:\n  outpost scripts upload backup-db-1.0.0.tar.gz")]
    Upload {
        /// The bundle (tar.gz).
        bundle: std::path::PathBuf,
        /// The signature file (default: BUNDLE.sig).
        #[arg(long, value_name = "FILE")]
        signature: Option<std::path::PathBuf>,
    },
    /// List the library: each script with its newest version.
    #[command(after_help = "Example:\n  outpost scripts ls")]
    Ls,
    /// Every version of a script: hash, signer, parameters, files.
    #[command(after_help = "Example:\n  outpost scripts show backup-db")]
    Show {
        /// The script's name.
        name: String,
    },
    /// Delete one version of a script.
    #[command(after_help = "Example:\n  outpost scripts rm backup-db 1.0.0")]
    Rm {
        /// The script's name.
        name: String,
        /// Its version (MAJOR.MINOR.PATCH).
        version: String,
    },
}
