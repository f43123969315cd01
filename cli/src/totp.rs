//! The second step of `outpost login --email` (CONTRACT.md §18): when the server answers
//! `{second_factor, ticket}` instead of a session, ask for the code (`--totp-code`, else a
//! prompt, else stdin's next line) and finish the sign-in; where the tenant requires a factor
//! the account lacks, set one up on the spot (the secret and `otpauth://` URL on stderr, the
//! recovery codes once on stdout).

use serde_json::Value;

use crate::client::Client;
use crate::config::read_secret;
use crate::error::CliError;

/// The session of a login answer, after its second step if it has one.
pub async fn second_step(
    client: &Client,
    answer: Value,
    code: Option<String>,
    from_stdin: bool,
) -> Result<Value, CliError> {
    let Some(kind) = answer.get("second_factor").and_then(Value::as_str) else {
        return Ok(answer);
    };
    let ticket = answer
        .get("ticket")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CliError::Other("the server asked for a second factor without a ticket".into())
        })?
        .to_owned();
    let code = |prompt: &str| match &code {
        Some(code) => Ok(code.clone()),
        None => read_secret(prompt, from_stdin),
    };
    match kind {
        "totp" => {
            let code = code("Code (authenticator or recovery code)")?;
            client
                .anonymous(
                    "/api/auth/login/totp",
                    &serde_json::json!({"ticket": ticket, "code": code}),
                )
                .await
        }
        "totp_setup" => {
            let setup = client
                .anonymous(
                    "/api/auth/login/totp/setup",
                    &serde_json::json!({"ticket": ticket}),
                )
                .await?;
            let text = |key: &str| {
                setup
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            eprintln!(
                "Your tenant requires a second factor. Add this account to an authenticator app:\n  \
                 secret: {}\n  URL:    {}",
                text("secret"),
                text("otpauth_url")
            );
            let code = read_secret("Its current code", from_stdin)?;
            let confirmed = client
                .anonymous(
                    "/api/auth/login/totp/confirm",
                    &serde_json::json!({"ticket": ticket, "code": code}),
                )
                .await?;
            eprintln!("Recovery codes (each signs in once instead of a code; shown only now):");
            for code in confirmed
                .get("recovery_codes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                println!("{code}");
            }
            confirmed
                .get("session")
                .cloned()
                .filter(|s| !s.is_null())
                .ok_or_else(|| CliError::Other("the confirmation answered no session".into()))
        }
        other => Err(CliError::Other(format!(
            "the server asks for a second factor this CLI does not know ({other}): update outpost"
        ))),
    }
}
