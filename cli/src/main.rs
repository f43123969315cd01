//! `outpost`: the controller CLI. It talks only to the server's REST API, never to a database,
//! so everything it does can also be done with curl, and it works against any server the user
//! can reach over HTTP(S).
//!
//! `main` stays thin: parse the arguments, run the command on a single-threaded runtime, print
//! an error as `error: <code>: <message>` and turn the outcome into an exit status (see
//! [`error::exit`] for the table).

mod agents;
mod args;
mod audit;
mod client;
mod complete;
mod config;
mod drafts;
mod error;
mod events;
mod follow;
mod integrations;
mod jobs;
mod keys;
mod output;
mod results;
mod rollouts;
mod schedules;
mod scripts;
mod sso;
mod totp;
mod users;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use args::{Cli, Command};
use error::CliError;

fn main() -> ExitCode {
    // One rustls provider for the whole process: ring (reqwest is built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start: {err}");
            return ExitCode::from(error::exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            err.report();
            ExitCode::from(err.exit_code())
        }
    }
}

/// The command line, or the process ends with clap's message (status 2, or 0 for --help).
///
/// Two of clap's messages are replaced. A usage line shows the arguments given, and clap
/// counts `OUTPOST_URL`/`OUTPOST_TOKEN` from the environment as given: `outpost run hello`
/// printed `Usage: outpost run --on <…> --url <URL> --token <TOKEN> <SCRIPT>`, as if those were
/// required. Errors are therefore rendered by a copy of the command line without those
/// variables. And `run` without `--on` says what `--on` takes.
fn parse() -> Cli {
    let err = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(err) => err,
    };
    if !err.use_stderr() {
        // --help, --version.
        err.exit();
    }
    let without_env = Cli::command()
        .mut_arg("url", |a| a.env(None))
        .mut_arg("token", |a| a.env(None));
    let err = match without_env.try_get_matches_from(std::env::args_os()) {
        Err(plain) if plain.kind() == err.kind() => plain,
        _ => err,
    };
    if let Some(message) = args::missing_on(&err) {
        eprintln!("{message}");
        std::process::exit(i32::from(error::exit::USAGE));
    }
    err.exit()
}

/// Runs one command; `Ok` carries the exit status when the command itself decides it (a run's
/// exit code, a fan-out with a failure).
async fn run(cli: Cli) -> Result<u8, CliError> {
    let global = cli.global;
    match cli.command {
        Command::Login(args) => config::login(&global, args).await.map(|()| 0),
        Command::Logout => config::logout().await.map(|()| 0),
        Command::Completions { shell } => {
            let script = complete::script(shell, &mut Cli::command());
            output::print_stdout(script.as_bytes());
            Ok(0)
        }
        Command::Complete { what } => {
            complete::candidates(&global, what).await;
            Ok(0)
        }
        Command::Agents(cmd) => {
            let client = client::Client::from_config(&global)?;
            agents::run(&client, &global, cmd).await.map(|()| 0)
        }
        Command::Ping(args) => {
            let client = client::Client::from_config(&global)?;
            agents::ping(&client, &global, args).await.map(|()| 0)
        }
        Command::Run(args) => {
            let client = client::Client::from_config(&global)?;
            jobs::run_script(&client, &global, args).await
        }
        Command::Jobs(cmd) => {
            let client = client::Client::from_config(&global)?;
            jobs::run(&client, &global, cmd).await
        }
        Command::Schedules(cmd) => {
            let client = client::Client::from_config(&global)?;
            schedules::run(&client, &global, cmd).await
        }
        Command::Events(cmd) => {
            let client = client::Client::from_config(&global)?;
            events::run(&client, &global, cmd).await
        }
        Command::Integrations(cmd) => {
            let client = client::Client::from_config(&global)?;
            integrations::run(&client, &global, cmd).await
        }
        Command::Audit(cmd) => {
            let client = client::Client::from_config(&global)?;
            audit::run(&client, &global, cmd).await
        }
        Command::Users(cmd) => {
            if let args::UsersCommand::AcceptInvite {
                token,
                password_stdin,
            } = cmd
            {
                return users::accept_invite(&global, &token, password_stdin)
                    .await
                    .map(|()| 0);
            }
            let client = client::Client::from_config(&global)?;
            users::run(&client, &global, cmd).await.map(|()| 0)
        }
        Command::Scripts(cmd) => scripts::run(&global, cmd).await.map(|()| 0),
        Command::Rollouts(cmd) => {
            let client = client::Client::from_config(&global)?;
            rollouts::run(&client, &global, cmd).await
        }
        Command::Keys(cmd) => {
            let client = client::Client::from_config(&global)?;
            keys::run(&client, &global, cmd).await.map(|()| 0)
        }
    }
}
