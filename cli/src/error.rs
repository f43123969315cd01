//! What can go wrong, how it is shown, and which exit status it gives.
//!
//! Every failure is one line on stderr starting with `error:`; errors from the server keep its
//! machine-readable code (`error: not_found: no agent …`). Nothing ever prints a backtrace.

/// Exit statuses. A single-agent `run` passes its script's exit code through instead (so a
/// script's own 1, 2, 69 or 77 reaches the caller unchanged); these are what the CLI itself uses.
pub mod exit {
    /// Something asked for failed: the server refused the request, a fan-out had a failed run.
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage (clap's own status).
    pub const USAGE: u8 = 2;
    /// A single-agent run timed out (as GNU `timeout` does).
    pub const TIMED_OUT: u8 = 124;
    /// A single-agent run ended without an exit code: cancelled, expired, lost, refused, killed
    /// by a signal.
    pub const NO_EXIT_CODE: u8 = 125;
    /// The server could not be reached (sysexits' EX_UNAVAILABLE).
    pub const UNREACHABLE: u8 = 69;
    /// No token, or the server refused it (sysexits' EX_NOPERM).
    pub const AUTH: u8 = 77;
}

/// A failure of the CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server answered with an error.
    #[error("{code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's machine-readable code.
        code: String,
        /// Its message.
        message: String,
        /// The server's URL, for hints.
        url: String,
    },
    /// No connection to the server.
    #[error("cannot reach the Outpost server at {url}: {cause}")]
    Unreachable {
        /// What was tried.
        url: String,
        /// Why it failed.
        cause: String,
    },
    /// No token configured.
    #[error(
        "no API token: run `outpost login`, set OUTPOST_TOKEN, or pass --token (the server writes its owner key to <data-dir>/admin.key at first start)"
    )]
    NoToken,
    /// Bad input given to the CLI, found before asking the server.
    #[error("{0}")]
    Usage(String),
    /// Anything else (local files, a malformed answer).
    #[error("{0}")]
    Other(String),
    /// An error and what to do about it, printed as a `hint:` line after it.
    #[error("{error}")]
    Hinted {
        /// The error (its exit status is the status).
        error: Box<CliError>,
        /// What to do.
        hint: String,
    },
}

impl CliError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Api { status: 401, .. } | Self::NoToken => exit::AUTH,
            Self::Api { .. } | Self::Other(_) => exit::FAILURE,
            Self::Unreachable { .. } => exit::UNREACHABLE,
            Self::Usage(_) => exit::USAGE,
            Self::Hinted { error, .. } => error.exit_code(),
        }
    }

    /// This error with a hint.
    pub fn with_hint(self, hint: String) -> Self {
        Self::Hinted {
            error: Box::new(self),
            hint,
        }
    }

    /// Prints the error (and a hint where one helps) on stderr, with control characters
    /// escaped: a server's message may quote what an agent said.
    pub fn report(&self) {
        eprintln!("error: {}", crate::output::escape(&self.to_string()));
        self.hints();
    }

    fn hints(&self) {
        match self {
            Self::Api {
                status: 401, url, ..
            } => eprintln!(
                "hint: {url} refused the token; run `outpost login`, or check OUTPOST_TOKEN / --token"
            ),
            Self::Hinted { error, hint } => {
                error.hints();
                eprintln!("hint: {}", crate::output::escape(hint));
            }
            _ => {}
        }
    }

    /// A local "not found", shaped like the server's.
    pub fn not_found(message: String) -> Self {
        Self::Api {
            status: 404,
            code: "not_found".into(),
            message,
            url: String::new(),
        }
    }
}
