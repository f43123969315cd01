//! The server's SMTP sender, for `email` integrations (CONTRACT.md §11: "when SMTP is configured").
//!
//! One relay, the operator's (`--smtp-url`), never an address from a request: the only things
//! a tenant chooses are the recipients, which `providers` checked to be plain addresses, and
//! the message, whose subject `providers::render_email` made one line. lettre builds and
//! encodes the message (headers, MIME, dot-stuffing) and speaks SMTP, over rustls with ring
//! when the URL asks for TLS (`smtps://`, or `smtp://…?tls=required` for STARTTLS). The relay's
//! answer is classified as SMTP defines it: a 5xx refuses the message for good, a 4xx or a
//! connection that failed is tried again later.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::providers::Email;

/// The whole of one SMTP conversation, at most (as an HTTP attempt's 10 s).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A relay and the sender's address.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The relay without its credentials, for messages.
    relay: String,
}

/// What the relay said about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The SMTP reply code (250).
    pub code: Option<i32>,
    /// The reply's text.
    pub answer: String,
}

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The SMTP reply code, when the relay answered.
    pub code: Option<i32>,
    /// What went wrong, for the delivery log.
    pub error: String,
    /// Worth trying again (a 4xx, a connection or TLS failure, a timeout); a 5xx or a message
    /// that cannot be built is not.
    pub transient: bool,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("relay", &self.relay)
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl Mailer {
    /// A sender through the relay at `url` (`smtp://`, `smtps://`, with `user:password@` and
    /// `?tls=required` as lettre reads them), as `from` (an address, or `Name <address>`).
    /// The error names the flag and never holds the password.
    pub fn new(url: &str, from: &str) -> Result<Self, String> {
        let relay = redact(url);
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|err| format!("--smtp-url {relay}: {err}"))?
            .timeout(Some(TIMEOUT))
            .build();
        let from: Mailbox = from
            .parse()
            .map_err(|err| format!("--smtp-from {from:?}: not an email address ({err})"))?;
        Ok(Self {
            transport,
            from,
            relay,
        })
    }

    /// The relay, without credentials.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// Sends one message to its recipients, in one SMTP transaction.
    pub async fn send(&self, email: &Email) -> Result<Sent, Refused> {
        let refused = |error: String| Refused {
            code: None,
            error,
            transient: false,
        };
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(email.subject.clone());
        for to in &email.to {
            let mailbox: Mailbox = to
                .parse()
                .map_err(|err| refused(format!("recipient {to:?}: {err}")))?;
            builder = builder.to(mailbox);
        }
        let message = builder
            .header(ContentType::TEXT_PLAIN)
            .body(email.text.clone())
            .map_err(|err| refused(format!("cannot build the message: {err}")))?;
        self.deliver(message).await
    }

    /// Sends one message to one person, with a plain text part and an HTML part (mail about
    /// their account, CONTRACT.md §18): clients show the HTML, the text part is what a text
    /// client or a filter reads, with the same links.
    pub async fn send_alternative(
        &self,
        to: &str,
        subject: &str,
        text: &str,
        html: &str,
    ) -> Result<Sent, Refused> {
        let refused = |error: String| Refused {
            code: None,
            error,
            transient: false,
        };
        let mailbox: Mailbox = to
            .parse()
            .map_err(|err| refused(format!("recipient {to:?}: {err}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(mailbox)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(
                text.to_owned(),
                html.to_owned(),
            ))
            .map_err(|err| refused(format!("cannot build the message: {err}")))?;
        self.deliver(message).await
    }

    async fn deliver(&self, message: Message) -> Result<Sent, Refused> {
        let sending = tokio::time::timeout(TIMEOUT, self.transport.send(message)).await;
        let answer = match sending {
            Ok(answer) => answer,
            Err(_) => {
                return Err(Refused {
                    code: None,
                    error: format!(
                        "no answer from {} within {} s",
                        self.relay,
                        TIMEOUT.as_secs()
                    ),
                    transient: true,
                });
            }
        };
        match answer {
            Ok(response) => Ok(Sent {
                code: response.code().to_string().parse().ok(),
                answer: response.message().collect::<Vec<_>>().join(" "),
            }),
            Err(err) => Err(Refused {
                code: err.status().and_then(|c| c.to_string().parse().ok()),
                transient: !err.is_permanent(),
                error: format!("{}: {err}", self.relay),
            }),
        }
    }
}

/// `url` without its password (and user), for logs and errors.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if !parsed.username().is_empty() || parsed.password().is_some() {
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
            }
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_s_credentials_are_never_shown() {
        let mailer = Mailer::new(
            "smtps://ops%40example.com:hunter2@smtp.example.com:465",
            "Outpost <outpost@example.com>",
        )
        .expect("mailer");
        assert_eq!(mailer.relay(), "smtps://smtp.example.com:465");
        assert!(!format!("{mailer:?}").contains("hunter2"));
        let err = Mailer::new("ftp://user:hunter2@host", "a@b.example").expect_err("scheme");
        assert!(err.starts_with("--smtp-url ftp://host"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_bad_sender_is_refused_naming_the_flag() {
        let err = Mailer::new("smtp://127.0.0.1:25", "not an address").expect_err("from");
        assert!(err.starts_with("--smtp-from"), "{err}");
    }

    #[tokio::test]
    async fn a_relay_that_is_not_there_is_worth_trying_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let mailer = Mailer::new(&format!("smtp://127.0.0.1:{port}"), "outpost@example.com")
            .expect("mailer");
        let email = Email {
            to: vec!["ops@example.com".into()],
            subject: "[Outpost] a test".into(),
            text: "hello".into(),
        };
        let refused = mailer.send(&email).await.expect_err("nobody listens");
        assert!(refused.transient, "{refused:?}");
        assert_eq!(refused.code, None);
    }
}
