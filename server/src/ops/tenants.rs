//! `outpost-server tenant ls|create|set-quota|set-retention`: tenants, their plan quotas and
//! their history retention, from the server's host (CONTRACT.md §9: quotas are set by the owner of
//! the server; CONTRACT.md §14: retention per tenant).
//!
//! Like `user create` and `admin-key rotate`, these work on the database directly (the same
//! `--data-dir` / `--database-url`), so they run whether the server is stopped or running; a
//! running server sees a changed quota at its next check (quotas are read where things are
//! created, never cached). Changes are recorded in the tenant's audit log (`tenant.create`,
//! `tenant.update`) with the command as the actor.

use anyhow::Context;
use clap::{Args, Subcommand};

use super::users::{DatabaseArgs, open_store};
use outpost_core::service::tenants::{MAX_QUOTA, check_name, check_patch};
use outpost_store::domain::Actor;
use outpost_store::{TenantPatch, TenantUsage};

/// `outpost-server tenant …`.
#[derive(Debug, Args)]
#[command(about = "Manage tenants and their quotas from the server's host")]
pub struct TenantCli {
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// List every tenant with its quotas and usage; the first is the server's own (its owners
    /// are the server's admin).
    Ls(LsArgs),
    /// Create a tenant with an owner API key, printed once.
    #[command(after_help = "\
Example:
  outpost-server tenant create --name acme
  outpost-server user create --tenant <printed id> --email ada@acme.example --role owner")]
    Create(CreateArgs),
    /// Set a tenant's quotas: a number from 0 to 1000000, or `none` for unlimited. A quota
    /// not named is unchanged.
    #[command(after_help = "\
Examples:
  outpost-server tenant set-quota --tenant <id> --max-agents 100 --max-users none
  outpost-server tenant set-quota --tenant <id> --max-schedules 50")]
    SetQuota(SetQuotaArgs),
    /// Set how many days of a tenant's finished history (jobs, runs, output, commands,
    /// events) are kept: a number of days, 0 to keep everything, or `default` for the
    /// server's --retention-days.
    #[command(after_help = "\
Examples:
  outpost-server tenant set-retention --tenant <id> --days 30
  outpost-server tenant set-retention --tenant <id> --days 0         # keep everything
  outpost-server tenant set-retention --tenant <id> --days default   # the server's window")]
    SetRetention(SetRetentionArgs),
}

/// A retention as given: days, or `default` (the server's).
#[derive(Debug, Clone, Copy)]
struct Days(Option<i64>);

fn days(text: &str) -> Result<Days, String> {
    use outpost_core::service::retention::MAX_DAYS;
    if text == "default" {
        return Ok(Days(None));
    }
    match text.parse::<i64>() {
        Ok(n) if (0..=MAX_DAYS).contains(&n) => Ok(Days(Some(n))),
        _ => Err(format!(
            "{text:?}: expected a whole number of days from 0 (keep everything) to {MAX_DAYS}, \
             or `default` for the server's --retention-days"
        )),
    }
}

#[derive(Debug, Args)]
struct SetRetentionArgs {
    /// The tenant's id (`outpost-server tenant ls`).
    #[arg(long)]
    tenant: String,
    /// Days kept; 0 keeps everything; `default`: the server's --retention-days.
    #[arg(long, value_parser = days, value_name = "N|default")]
    days: Days,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// JSON for scripts, instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The tenant's name (1 to 200 characters).
    #[arg(long)]
    name: String,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// A quota as given: a number, or `none` (unlimited).
#[derive(Debug, Clone, Copy)]
struct Quota(Option<i64>);

fn quota(text: &str) -> Result<Quota, String> {
    if matches!(text, "none" | "unlimited") {
        return Ok(Quota(None));
    }
    match text.parse::<i64>() {
        Ok(n) if (0..=MAX_QUOTA).contains(&n) => Ok(Quota(Some(n))),
        _ => Err(format!(
            "{text:?}: expected a whole number from 0 to {MAX_QUOTA}, or `none` for unlimited"
        )),
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("quotas").required(true).multiple(true)
    .args(["max_agents", "max_schedules", "max_users"])))]
struct SetQuotaArgs {
    /// The tenant's id (`outpost-server tenant ls`).
    #[arg(long)]
    tenant: String,
    /// The most agents (a new agent past it is refused; registered ones always reconnect).
    #[arg(long, value_parser = quota, value_name = "N|none")]
    max_agents: Option<Quota>,
    /// The most schedules (enforced when schedules are created).
    #[arg(long, value_parser = quota, value_name = "N|none")]
    max_schedules: Option<Quota>,
    /// The most users, invited ones included.
    #[arg(long, value_parser = quota, value_name = "N|none")]
    max_users: Option<Quota>,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Runs a `tenant` subcommand; `args` starts with `tenant`.
pub async fn run(cli: TenantCli) -> anyhow::Result<()> {
    match cli.command {
        TenantCommand::Ls(args) => ls(args).await,
        TenantCommand::Create(args) => create(args).await,
        TenantCommand::SetQuota(args) => set_quota(args).await,
        TenantCommand::SetRetention(args) => set_retention(args).await,
    }
}

fn limit(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn json_of(t: &TenantUsage, first: bool) -> serde_json::Value {
    serde_json::json!({
        "id": t.tenant.id,
        "name": t.tenant.name,
        "created_at": t.tenant.created_at,
        "server_tenant": first,
        "max_agents": t.tenant.max_agents,
        "max_schedules": t.tenant.max_schedules,
        "max_users": t.tenant.max_users,
        "retention_days": t.tenant.retention_days,
        "usage": {"agents": t.usage.agents, "users": t.usage.users, "schedules": t.usage.schedules},
    })
}

fn retention(days: Option<i64>) -> String {
    match days {
        None => "default".to_owned(),
        Some(0) => "forever".to_owned(),
        Some(n) => format!("{n}d"),
    }
}

async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let store = open_store(&args.database).await?;
    let tenants = store.list_tenants().await?;
    if args.json {
        let rows: Vec<_> = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| json_of(t, i == 0))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<24}  {:>13}  {:>13}  {:>13}  {:>9}",
        "ID", "NAME", "AGENTS/MAX", "USERS/MAX", "SCHEDULES/MAX", "RETENTION"
    );
    for (i, t) in tenants.iter().enumerate() {
        let mut name: String = t.tenant.name.chars().take(22).collect();
        if i == 0 {
            name.push_str(" *");
        }
        println!(
            "{:<36}  {:<24}  {:>13}  {:>13}  {:>13}  {:>9}",
            t.tenant.id,
            name,
            format!("{}/{}", t.usage.agents, limit(t.tenant.max_agents)),
            format!("{}/{}", t.usage.users, limit(t.tenant.max_users)),
            format!("{}/{}", t.usage.schedules, limit(t.tenant.max_schedules)),
            retention(t.tenant.retention_days),
        );
    }
    println!("(* the server's own tenant: its owners are the server's admin; - is unlimited)");
    println!(
        "(retention: days of finished history kept; default: the server's --retention-days; forever: 0)"
    );
    Ok(())
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    check_name("--name", &args.name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = open_store(&args.database).await?;
    anyhow::ensure!(
        store.default_tenant().await?.is_some(),
        "the database has no tenant yet: start the server once, it creates the first one"
    );
    let (id, secret) = store
        .create_tenant_by(
            args.name.trim(),
            None,
            Actor::system("tenant create", "outpost-server tenant create"),
        )
        .await
        .context("creating the tenant")?;
    tracing::info!(tenant_id = %id, "created a tenant from the server's host");
    println!("Created tenant {} ({id}).", args.name.trim());
    println!("Its owner API key (shown once):");
    println!("  {secret}");
    println!(
        "Add its first owner with `outpost-server user create --tenant {id} --email … --role owner`."
    );
    Ok(())
}

async fn set_quota(args: SetQuotaArgs) -> anyhow::Result<()> {
    let patch = TenantPatch {
        name: None,
        max_agents: args.max_agents.map(|q| q.0),
        max_schedules: args.max_schedules.map(|q| q.0),
        max_users: args.max_users.map(|q| q.0),
        retention_days: None,
    };
    check_patch(&patch).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = open_store(&args.database).await?;
    store
        .update_tenant(
            &args.tenant,
            &patch,
            &Actor::system("tenant set-quota", "outpost-server tenant set-quota"),
            None,
        )
        .await?
        .with_context(|| {
            format!(
                "there is no tenant {}: `outpost-server tenant ls` lists them",
                args.tenant
            )
        })?;
    let t = store
        .tenant_with_usage(&args.tenant)
        .await?
        .with_context(|| format!("tenant {} vanished", args.tenant))?;
    println!(
        "Tenant {} ({}): max_agents {} (has {}), max_users {} (has {}), max_schedules {} (has {}).",
        t.tenant.name,
        t.tenant.id,
        limit(t.tenant.max_agents),
        t.usage.agents,
        limit(t.tenant.max_users),
        t.usage.users,
        limit(t.tenant.max_schedules),
        t.usage.schedules,
    );
    Ok(())
}

async fn set_retention(args: SetRetentionArgs) -> anyhow::Result<()> {
    let patch = TenantPatch {
        retention_days: Some(args.days.0),
        ..TenantPatch::default()
    };
    check_patch(&patch).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = open_store(&args.database).await?;
    let tenant = store
        .update_tenant(
            &args.tenant,
            &patch,
            &Actor::system(
                "tenant set-retention",
                "outpost-server tenant set-retention",
            ),
            None,
        )
        .await?
        .with_context(|| {
            format!(
                "there is no tenant {}: `outpost-server tenant ls` lists them",
                args.tenant
            )
        })?;
    let kept = match tenant.retention_days {
        None => "as long as the server's --retention-days says".to_owned(),
        Some(0) => "forever".to_owned(),
        Some(n) => format!("{n} days"),
    };
    println!(
        "Tenant {} ({}): finished history is kept {kept}.",
        tenant.name, tenant.id
    );
    Ok(())
}
