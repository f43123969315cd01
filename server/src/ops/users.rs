//! `outpost-server user create`: a user made on the server's host, for the first owner of a
//! fresh install (CONTRACT.md §9), or whenever nobody can sign in to make one.
//!
//! It works on the database directly, like `admin-key rotate`, so it runs whether the server
//! is stopped or running. The password is read from a prompt without echo when stdin is a
//! terminal, or from stdin's first line with `--password-stdin`; with neither (stdin not a
//! terminal, no flag) the user is created without a password and a one-time invite token is
//! printed instead, to be accepted at `POST /api/auth/accept-invite` within 72 hours.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use outpost_core::passwords;
use outpost_store::credentials::{KeyKind, generate_secret, hash_secret};
use outpost_store::domain::Role;
use outpost_store::{DatabaseLocation, NewUser, Store};

/// `outpost-server user …`.
#[derive(Debug, Args)]
#[command(about = "Manage users from the server's host")]
pub struct UserCli {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user: with a password (prompted for on a terminal, or --password-stdin), or,
    /// when stdin is not a terminal and --password-stdin is not given, with a one-time invite
    /// token printed on stdout (valid 72 hours; POST /api/auth/accept-invite).
    #[command(after_help = "\
Examples:
  outpost-server user create --email ada@example.com --role owner
  printf '%s\\n' \"$PASSWORD\" | outpost-server user create --email ada@example.com --role owner --password-stdin
  outpost-server user create --email bob@example.com --role member </dev/null   # prints an invite token")]
    Create(CreateArgs),
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The user's email (unique on the server, case-insensitive).
    #[arg(long)]
    email: String,
    /// The user's role in the tenant.
    #[arg(long, value_parser = ["owner", "admin", "member"])]
    role: String,
    /// The tenant's id; default: the server's default tenant (the one made on first start).
    #[arg(long)]
    tenant: Option<String>,
    /// Read the password from stdin's first line.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Where the server's database is, as the server itself is told (`--data-dir` or
/// `--database-url`): the host commands work on it directly.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// The server's data directory (its SQLite database).
    #[arg(long, env = "OUTPOST_DATA_DIR", default_value = "./outpost-data")]
    data_dir: PathBuf,
    /// Database URL; default: SQLite in --data-dir.
    #[arg(long, env = "OUTPOST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// Opens the server's database (an SQLite file must exist: the server's first start makes
/// it) and brings its schema up to date.
pub async fn open_store(args: &DatabaseArgs) -> anyhow::Result<Store> {
    let location = match &args.database_url {
        Some(url) => DatabaseLocation::Url(url.clone()),
        None => {
            let db = args.data_dir.join("outpost.db");
            anyhow::ensure!(
                db.exists(),
                "{} does not exist: start the server once, or give its --data-dir (or OUTPOST_DATA_DIR)",
                db.display()
            );
            DatabaseLocation::Sqlite(db)
        }
    };
    Store::open(&location)
        .await
        .context("opening the server's database")
}

/// Runs a `user` subcommand; `args` starts with `user`.
pub async fn run(cli: UserCli) -> anyhow::Result<()> {
    match cli.command {
        UserCommand::Create(args) => create(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let role: Role = args.role.parse().map_err(anyhow::Error::msg)?;
    outpost_core::service::users::check_email(&args.email).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let password = if args.password_stdin {
        Some(read_line(false)?)
    } else if std::io::stdin().is_terminal() {
        let first = read_line(true)?;
        passwords::check_new(&first).map_err(anyhow::Error::msg)?;
        eprint!("Again, to confirm: ");
        let again = read_line(true)?;
        anyhow::ensure!(
            first == again,
            "the two passwords differ; nothing was created"
        );
        Some(first)
    } else {
        None
    };
    if let Some(password) = &password {
        passwords::check_new(password).map_err(anyhow::Error::msg)?;
    }
    let store = open_store(&args.database).await?;
    let tenant_id = match args.tenant {
        Some(id) => id,
        None => {
            store
                .default_tenant()
                .await?
                .context("the database has no tenant yet: start the server once, it creates one")?
                .id
        }
    };
    let hash = match &password {
        Some(password) => {
            let password = password.clone();
            Some(
                tokio::task::spawn_blocking(move || passwords::hash_blocking(&password))
                    .await?
                    .map_err(anyhow::Error::msg)?,
            )
        }
        None => None,
    };
    let user = store
        .create_user(NewUser {
            tenant_id: tenant_id.clone(),
            email: args.email.clone(),
            role,
            password_hash: hash,
        })
        .await
        .with_context(|| format!("creating the user in tenant {tenant_id}"))?
        .map_err(|refused| {
            anyhow::anyhow!(
                "{}",
                outpost_core::service::users::user_refused(&args.email, refused)
            )
        })?;
    tracing::info!(user_id = %user.id, tenant_id, role = %role, "created a user from the server's host");
    if password.is_some() {
        println!(
            "Created {} user {} ({}) in tenant {tenant_id}; sign in with `outpost login --email {}`",
            role, user.email, user.id, user.email
        );
        return Ok(());
    }
    let token = generate_secret(KeyKind::Invite);
    let expires_at = chrono::Utc::now() + outpost_core::service::users::INVITE_TTL;
    store
        .create_invite(&tenant_id, &user.id, &hash_secret(&token), expires_at)
        .await?;
    println!(
        "Created {} user {} ({}) in tenant {tenant_id} without a password.",
        role, user.email, user.id
    );
    println!("One-time invite token (valid until {expires_at}; shown once):");
    println!("  {token}");
    println!(
        "Set the password with `outpost users accept-invite` or POST /api/auth/accept-invite."
    );
    Ok(())
}

/// One line of stdin, without its line ending; with `prompt`, asked for without echo.
fn read_line(prompt: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if prompt {
        eprint!("Password (at least {} characters): ", passwords::MIN_LENGTH);
        let _ = std::io::stderr().flush();
        let saved = nix::sys::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet
                .local_flags
                .remove(nix::sys::termios::LocalFlags::ECHO);
            let _ =
                nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &quiet);
        }
        let read = stdin.lock().read_line(&mut line);
        if let Some(saved) = &saved {
            let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, saved);
        }
        eprintln!();
        read.context("reading the password")?;
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
