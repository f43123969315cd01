//! The operator commands that share the server's binary: `outpost-server release …`,
//! `admin-key …`, `user …`, `tenant …`, `backup` and `restore`. They run on the server's host
//! against its data directory or database, with or without the server running; each file holds
//! one command's flags and what it does. The server's own flags (`config`) are parsed only when
//! the first argument is none of these names, so `outpost-server --help` stays the server's.

pub mod admin_key;
pub mod backup;
pub mod tenants;
pub mod users;

use clap::{Parser, Subcommand};

/// `outpost-server <command>`.
#[derive(Debug, Parser)]
#[command(name = "outpost-server", about = "Outpost server: operator commands")]
struct Ops {
    #[command(subcommand)]
    command: Command,
}

/// Every operator command, by the name that selects it.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the release signing key and publish signed agent/supervisor builds.
    Release(outpost_core::release::ReleaseCli),
    /// Manage the owner API key of the server's default tenant.
    AdminKey(admin_key::AdminKeyCli),
    /// Manage the server's users from its host (the first owner).
    User(users::UserCli),
    /// Manage tenants and their quotas from the server's host.
    Tenant(tenants::TenantCli),
    /// Copy the server's SQLite database, consistently, while the server runs.
    Backup(backup::BackupCli),
    /// Put a backup in place of a data directory's database (the server stopped).
    Restore(backup::RestoreCli),
}

/// The names that select an operator command rather than the server's own flags.
pub const NAMES: &[&str] = &[
    "release",
    "admin-key",
    "user",
    "tenant",
    "backup",
    "restore",
];

/// Whether `first` (the binary's first argument) names an operator command.
pub fn is_command(first: &std::ffi::OsStr) -> bool {
    first.to_str().is_some_and(|name| NAMES.contains(&name))
}

/// Parses `args` (the binary's arguments without its name) as an operator command and runs it.
pub async fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let ops = Ops::parse_from(std::iter::once("outpost-server".into()).chain(args));
    match ops.command {
        Command::Release(cli) => outpost_core::release::run(cli).await,
        Command::AdminKey(cli) => admin_key::run(cli).await,
        Command::User(cli) => users::run(cli).await,
        Command::Tenant(cli) => tenants::run(cli).await,
        Command::Backup(cli) => backup::backup(cli).await,
        Command::Restore(cli) => backup::restore(cli).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_name_is_a_command() {
        let cmd = Ops::command();
        let names: Vec<_> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(names, NAMES);
        cmd.debug_assert();
    }
}
