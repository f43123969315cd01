//! Mail to people about their accounts (CONTRACT.md §18): email verification codes, password
//! reset links and mailed invites, and the worker that sends them.
//!
//! Every mail is written to the outbox first (`mail_outbox`, its body sealed: it carries a code
//! or a link) and sent by a worker, so that a relay that is down or slow never fails or slows
//! the request that asked for it: the mail is tried again with a growing delay until the code
//! or link it carries has expired, and an admin reads what failed (`GET /api/mail`). A mail is
//! claimed by one node at a time, as integrations' deliveries are.
//!
//! Links are built from `--public-url` only, never from a request's `Host` (which an attacker
//! chooses: a reset link pointing at their server would hand them the token).
//!
//! A password reset answers the same whatever the email: the lookup, the token and the mail
//! happen after the answer, in a task of their own, so neither the answer nor its timing says
//! whether the email is a user's. Codes are 6 digits, stored as a keyed fingerprint (HMAC under
//! the master key: a plain hash of a 6-digit code is reversed by trying a million), compared in
//! constant time, 5 tries each.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use super::Core;
use super::audit::Audit;
use super::limits::Limits;
use crate::mail::Mailer;
use crate::passwords;
use outpost_store::credentials::{KeyKind, generate_secret, hash_secret};
use outpost_store::domain::{
    Actor, ActorKind, AuditAction, AuditEvent, AuditTarget, Caller, DomainError, Principal,
    UserStatus,
};
use outpost_store::{CodeCheck, MailOutcome, MailState, NewMail, mail_outbox, user};

/// How long a verification code can be entered.
pub const CODE_TTL: Duration = Duration::minutes(10);
/// Wrong tries a code takes before it is void.
pub const CODE_TRIES: i32 = 5;
/// How long a reset link works.
pub const RESET_TTL: Duration = Duration::hours(1);
/// How long an invite works (as `users::INVITE_TTL`).
const INVITE_TTL: Duration = Duration::hours(72);
/// Mails one pass of the worker claims.
const BATCH: u64 = 16;
/// The first retry's delay; each next one doubles, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::seconds(15);
/// The longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::minutes(10);
/// The longest the worker sleeps without looking (another node may have queued mail).
const IDLE: StdDuration = StdDuration::from_secs(30);
/// How long sent and failed mails are listed before the sweep deletes them.
const KEPT: Duration = Duration::days(30);
/// The longest page of `GET /api/mail`.
pub const MAX_PAGE: u64 = 200;

/// The relay, where links point, and the worker's bell.
pub struct MailSettings {
    /// `--smtp-url`, `--smtp-from`.
    pub mailer: Mailer,
    /// `--public-url`, without a trailing `/`.
    pub public_url: String,
    /// Rung when a mail is queued.
    pub wake: Arc<Notify>,
}

impl MailSettings {
    /// Settings for `mailer`, with links under `public_url`.
    pub fn new(mailer: Mailer, public_url: &str) -> Self {
        Self {
            mailer,
            public_url: public_url.trim_end_matches('/').to_owned(),
            wake: Arc::new(Notify::new()),
        }
    }
}

/// What a mail is, which decides how long it is worth sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Verify,
    Reset,
    Invite,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Reset => "reset",
            Self::Invite => "invite",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "verify" => Some(Self::Verify),
            "reset" => Some(Self::Reset),
            "invite" => Some(Self::Invite),
            _ => None,
        }
    }

    /// After this long the code or link inside has expired: sending it is pointless.
    fn lifetime(self) -> Duration {
        match self {
            Self::Verify => CODE_TTL,
            Self::Reset => RESET_TTL,
            Self::Invite => INVITE_TTL,
        }
    }
}

/// A mail's parts, as sealed in the outbox.
#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    text: String,
    html: String,
}

/// The seal's context of a mail's body: bound to its recipient, so a body cannot be moved to
/// another row unnoticed.
fn seal_context(recipient: &str) -> String {
    format!("mail_outbox:{recipient}")
}

/// Mail to people. Cheap to clone.
#[derive(Clone)]
pub struct AccountMail {
    core: Arc<Core>,
    limits: Limits,
    audit: Audit,
}

fn user_actor(user: &user::Model) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: user.id.clone(),
        label: user.email.clone(),
    }
}

fn event(action: AuditAction, user_id: &str) -> AuditEvent {
    AuditEvent::new(action, AuditTarget::User, user_id).with(serde_json::json!({}))
}

/// A uniformly drawn 6-digit code.
fn new_code() -> String {
    let rng = SystemRandom::new();
    loop {
        let mut bytes = [0u8; 4];
        rng.fill(&mut bytes)
            .expect("the operating system's random source failed");
        let n = u32::from_le_bytes(bytes);
        // Below the largest multiple of 10^6 that fits, so every code is as likely.
        if n < 4_294_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

/// Paragraphs for a plain text part, each wrapped at 72 columns (a link stays whole on its
/// line), separated by blank lines.
fn plain(paragraphs: &[&str]) -> String {
    let mut out = String::new();
    for paragraph in paragraphs {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > 72 {
                out.push_str(&line);
                out.push('\n');
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(&line);
        out.push_str("\n\n");
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// `text` safe inside HTML text and attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML part: one paragraph per line of `lines`, the link (if any) as a button-like
/// anchor. Everything is escaped.
fn html(lines: &[&str], link: Option<(&str, &str)>) -> String {
    let mut out = String::from(
        "<!doctype html><html><body style=\"font-family:sans-serif;line-height:1.5\">",
    );
    for line in lines {
        out.push_str("<p>");
        out.push_str(&escape_html(line));
        out.push_str("</p>");
    }
    if let Some((label, url)) = link {
        out.push_str(&format!(
            "<p><a href=\"{}\">{}</a></p>",
            escape_html(url),
            escape_html(label)
        ));
    }
    out.push_str("<p style=\"color:#666\">Outpost</p></body></html>");
    out
}

impl AccountMail {
    pub(super) fn new(core: Arc<Core>, limits: Limits, audit: Audit) -> Self {
        Self {
            core,
            limits,
            audit,
        }
    }

    /// Whether the server sends mail (`--smtp-url`).
    pub fn enabled(&self) -> bool {
        self.core.mail.is_some()
    }

    /// Whether users must verify their email (`--require-verified-email`).
    pub fn verification_required(&self) -> bool {
        self.core.require_verified_email
    }

    fn settings(&self) -> Result<&MailSettings, DomainError> {
        self.core
            .mail
            .as_deref()
            .ok_or_else(|| DomainError::NotAllowed {
                code: "mail_disabled",
                message: "this server sends no mail (it runs without --smtp-url)".into(),
            })
    }

    /// Writes a mail to the outbox and wakes the worker.
    async fn queue(
        &self,
        kind: Kind,
        user: &user::Model,
        subject: &str,
        body: Body,
    ) -> Result<(), DomainError> {
        let settings = self.settings()?;
        let plain = serde_json::to_vec(&body).map_err(|err| DomainError::Internal(err.into()))?;
        self.core
            .store
            .queue_mail(NewMail {
                tenant_id: Some(user.tenant_id.clone()),
                kind: kind.as_str(),
                recipient: user.email.clone(),
                subject: subject.to_owned(),
                sealed_body: self.core.master.seal(&seal_context(&user.email), &plain),
            })
            .await?;
        settings.wake.notify_one();
        Ok(())
    }

    /// The keyed fingerprint of `code` for `user_id`.
    fn code_fingerprint(&self, user_id: &str, code: &str) -> String {
        self.core
            .master
            .fingerprint(&format!("email-code:{user_id}"), code.as_bytes())
    }

    /// Mails `user` a new verification code (replacing any earlier one).
    pub(super) async fn send_code(&self, user: &user::Model) -> Result<(), DomainError> {
        self.settings()?;
        let code = new_code();
        self.core
            .store
            .put_email_code(
                user,
                &self.code_fingerprint(&user.id, &code),
                Utc::now() + CODE_TTL,
            )
            .await?;
        let minutes = CODE_TTL.num_minutes();
        let lines = [
            "Your Outpost verification code is:".to_owned(),
            code.clone(),
            format!(
                "Enter it where you signed in. It works for {minutes} minutes. If you did not \
                 ask for it, ignore this mail."
            ),
        ];
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        self.queue(
            Kind::Verify,
            user,
            "[Outpost] Your verification code",
            Body {
                text: plain(&refs),
                html: html(&refs, None),
            },
        )
        .await
    }

    /// After a password sign-in: mails a code to a user who must verify and has none that
    /// still works (so that signing in is enough to get one).
    pub(super) async fn after_sign_in(&self, user: &user::Model) -> Result<(), DomainError> {
        if !self.core.require_verified_email
            || user.email_verified_at.is_some()
            || self.core.mail.is_none()
            || self
                .core
                .store
                .has_live_email_code(&user.id, CODE_TRIES)
                .await?
        {
            return Ok(());
        }
        if self.limits.resend_attempt(&user.id).is_err() {
            return Ok(());
        }
        self.send_code(user).await
    }

    /// The user behind `caller`, which only a user's session is.
    async fn caller_user(&self, caller: &Caller) -> Result<user::Model, DomainError> {
        let Principal::User { user_id } = &caller.principal else {
            return Err(DomainError::Forbidden(
                "only a user's session verifies an email (not an API key)".into(),
            ));
        };
        self.core
            .store
            .get_user(&caller.tenant_id, user_id)
            .await?
            .ok_or_else(|| DomainError::Unauthorized("the user no longer exists".into()))
    }

    /// `POST /api/auth/verify/resend`: a new code by mail.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn resend(&self, caller: &Caller) -> Result<Duration, DomainError> {
        let user = self.caller_user(caller).await?;
        if user.email_verified_at.is_some() {
            return Err(DomainError::Conflict {
                code: "already_verified",
                message: format!("{} is verified already", user.email),
            });
        }
        self.settings()?;
        self.core.writable()?;
        self.limits.resend_attempt(&user.id)?;
        self.send_code(&user).await?;
        Ok(CODE_TTL)
    }

    /// `POST /api/auth/verify {code}`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn verify(&self, caller: &Caller, code: &str) -> Result<user::Model, DomainError> {
        let user = self.caller_user(caller).await?;
        if user.email_verified_at.is_some() {
            return Ok(user);
        }
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DomainError::BadRequest(
                "code: the 6 digits mailed to you".into(),
            ));
        }
        self.core.writable()?;
        let expected = self.code_fingerprint(&user.id, &code);
        let check = self
            .core
            .store
            .check_email_code(&user.tenant_id, &user.id, CODE_TRIES, |stored| {
                stored.as_bytes().ct_eq(expected.as_bytes()).into()
            })
            .await?;
        match check {
            CodeCheck::Verified => {
                self.audit
                    .record(
                        &user.tenant_id,
                        &caller.actor(),
                        caller.address,
                        event(AuditAction::UserEmailVerify, &user.id),
                    )
                    .await?;
                self.core
                    .store
                    .get_user(&user.tenant_id, &user.id)
                    .await?
                    .ok_or_else(|| DomainError::Unauthorized("the user no longer exists".into()))
            }
            CodeCheck::Wrong { left } if left > 0 => Err(DomainError::Invalid {
                code: "wrong_code",
                message: format!(
                    "code: not the one mailed to you ({left} {} left)",
                    if left == 1 { "try" } else { "tries" }
                ),
            }),
            CodeCheck::Wrong { .. } | CodeCheck::NoCode => Err(DomainError::Invalid {
                code: "no_code",
                message: format!(
                    "code: no code can be entered now (none was sent, it is older than {} \
                     minutes, or it was tried {CODE_TRIES} times): ask for a new one with \
                     POST /api/auth/verify/resend",
                    CODE_TTL.num_minutes()
                ),
            }),
        }
    }

    /// `POST /api/auth/password-reset {email}`: answers at once, the same for any email; a
    /// user with a password gets a link by mail.
    #[tracing::instrument(skip_all)]
    pub async fn request_reset(&self, email: &str, client: IpAddr) -> Result<(), DomainError> {
        self.limits.reset_attempt(client, Some(email))?;
        if self.core.mail.is_none() {
            tracing::warn!(
                "a password reset was asked for, but this server sends no mail (--smtp-url)"
            );
            return Ok(());
        }
        let this = self.clone();
        let email = email.trim().to_owned();
        tokio::spawn(async move {
            if let Err(err) = this.mail_reset(&email, client).await {
                tracing::warn!(error = %err, "a password reset link could not be queued");
            }
        });
        Ok(())
    }

    async fn mail_reset(&self, email: &str, client: IpAddr) -> Result<(), DomainError> {
        if email.chars().count() > 254 {
            return Ok(());
        }
        let Some(user) = self.core.store.user_by_email(email).await? else {
            tracing::info!(client = %client, "a password reset for an unknown email: nothing sent");
            return Ok(());
        };
        // Active users with a password: an invited user accepts their invite, and a user
        // who signs in through their identity provider has no password here to reset.
        if user.status != UserStatus::Active || user.password_hash.is_none() {
            return Ok(());
        }
        let settings = self.settings()?;
        let token = generate_secret(KeyKind::Reset);
        self.core
            .store
            .create_password_reset(&user, &hash_secret(&token), Utc::now() + RESET_TTL)
            .await?;
        let link = format!("{}/ui/reset?token={token}", settings.public_url);
        let intro = format!(
            "Someone (you, we hope) asked to reset the Outpost password of {}.",
            user.email
        );
        let text = plain(&[
            &link,
            &intro,
            "Open the link above within an hour to choose a new password; it works once, and \
             using it signs you out everywhere. If you did not ask for it, ignore this mail: \
             your password stays as it is.",
        ]);
        let body = Body {
            text,
            html: html(
                &[
                    &intro,
                    "Open the link below within an hour to choose a new password; it works \
                     once, and using it signs you out everywhere.",
                    "If you did not ask for it, ignore this mail: your password stays as it is.",
                ],
                Some(("Choose a new password", &link)),
            ),
        };
        self.queue(Kind::Reset, &user, "[Outpost] Reset your password", body)
            .await?;
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(&user),
                Some(client),
                event(AuditAction::UserPasswordResetRequest, &user.id),
            )
            .await?;
        Ok(())
    }

    /// `POST /api/auth/password-reset/confirm {token, password}`: the new password; every
    /// session of the user ends.
    #[tracing::instrument(skip_all)]
    pub async fn confirm_reset(
        &self,
        token: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<user::Model, DomainError> {
        self.limits.reset_attempt(client, None)?;
        let refused = || {
            DomainError::Unauthorized(
                "the reset link is unknown, expired or already used: ask for a new one".into(),
            )
        };
        if !token.starts_with(KeyKind::Reset.prefix()) {
            return Err(refused());
        }
        let hash = hash_secret(token);
        let user = self
            .core
            .store
            .password_reset_user(&hash)
            .await?
            .ok_or_else(refused)?;
        self.limits.reset_attempt_for(&user.email)?;
        passwords::check_new(password).map_err(DomainError::BadRequest)?;
        self.core.writable()?;
        let password_hash = self
            .core
            .passwords
            .hash(password)
            .await
            .map_err(|why| DomainError::Internal(anyhow::anyhow!(why)))?;
        let user = self
            .core
            .store
            .use_password_reset(&hash, &password_hash)
            .await?
            .ok_or_else(refused)?;
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(&user),
                Some(client),
                event(AuditAction::UserPasswordReset, &user.id),
            )
            .await?;
        Ok(user)
    }

    /// Mails `user` their invite (`POST /api/users` when the server sends mail).
    pub(super) async fn mail_invite(
        &self,
        user: &user::Model,
        inviter: &str,
        token: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let settings = self.settings()?;
        let link = format!("{}/ui/invite?token={token}", settings.public_url);
        let until = expires_at.format("%Y-%m-%d %H:%M UTC");
        let intro = format!("{inviter} invited you to Outpost as {}.", user.email);
        let choose =
            format!("Open the link to choose your password. It works once, until {until}.");
        let body = Body {
            text: plain(&[
                &link,
                &intro,
                &choose,
                &format!("Or, with the outpost CLI: outpost users accept-invite {token}"),
            ]),
            html: html(&[&intro, &choose], Some(("Choose your password", &link))),
        };
        self.queue(Kind::Invite, user, "[Outpost] You are invited", body)
            .await
    }

    /// `GET /api/mail`: the caller's tenant's mails, newest first (owners and admins); at
    /// most one more than a page, so the caller sees whether another follows.
    pub async fn list(
        &self,
        caller: &Caller,
        state: Option<MailState>,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<mail_outbox::Model>, DomainError> {
        super::access::Access::require(caller, super::access::Action::ReadAudit)?;
        Ok(self
            .core
            .store
            .list_mail(
                &caller.tenant_id,
                state,
                before,
                limit.clamp(1, MAX_PAGE + 1),
            )
            .await?)
    }

    /// The worker: sends due mail until the server stops. Does nothing on a server without
    /// SMTP.
    pub async fn run(self) {
        let Some(settings) = self.core.mail.clone() else {
            return;
        };
        let mut swept = Utc::now() - Duration::hours(1);
        loop {
            let now = Utc::now();
            if now - swept >= Duration::hours(1) {
                swept = now;
                self.sweep(now).await;
            }
            let sleep = match self.pass(&settings).await {
                Ok(true) => StdDuration::ZERO,
                Ok(false) => self.until_due().await,
                Err(err) => {
                    tracing::warn!(error = %err, "the mail outbox could not be read; trying again");
                    StdDuration::from_secs(5)
                }
            };
            if sleep.is_zero() {
                if self.core.shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = self.core.shutdown.cancelled() => return,
                () = settings.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn sweep(&self, now: DateTime<Utc>) {
        match self.core.store.delete_old_mail(now - KEPT).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "old mail deleted from the outbox"),
            Err(err) => tracing::warn!(error = %err, "old mail could not be deleted"),
        }
        if let Err(err) = self.core.store.delete_expired_signin().await {
            tracing::warn!(error = %err, "expired codes and reset links could not be deleted");
        }
    }

    /// How long to sleep before the next mail is due (at most [`IDLE`]).
    async fn until_due(&self) -> StdDuration {
        match self.core.store.next_mail_due().await {
            Ok(Some(at)) => (at - Utc::now())
                .to_std()
                .unwrap_or(StdDuration::ZERO)
                .clamp(StdDuration::from_millis(50), IDLE),
            _ => IDLE,
        }
    }

    /// One batch; `true` when it was full (there may be more).
    async fn pass(&self, settings: &MailSettings) -> Result<bool, DomainError> {
        let now = Utc::now();
        let mails = self
            .core
            .store
            .claim_mail(&self.core.node, now, BATCH)
            .await?;
        let full = mails.len() as u64 == BATCH;
        for mail in mails {
            let outcome = self.attempt(settings, &mail).await;
            match &outcome {
                MailOutcome::Sent => {
                    tracing::info!(mail_id = %mail.id, kind = %mail.kind, "mail sent");
                }
                MailOutcome::Retry { error, next_at } => tracing::warn!(
                    mail_id = %mail.id, kind = %mail.kind, error = %error, next_at = %next_at,
                    "mail not sent; trying again later"
                ),
                MailOutcome::Failed { error } => tracing::warn!(
                    mail_id = %mail.id, kind = %mail.kind, error = %error,
                    "mail given up"
                ),
            }
            self.core
                .store
                .finish_mail(&mail.id, &self.core.node, outcome)
                .await?;
        }
        Ok(full)
    }

    async fn attempt(&self, settings: &MailSettings, mail: &mail_outbox::Model) -> MailOutcome {
        let now = Utc::now();
        let kind = Kind::parse(&mail.kind).unwrap_or(Kind::Verify);
        if now >= mail.created_at + kind.lifetime() {
            return MailOutcome::Failed {
                error: format!(
                    "given up after {} attempts: what it carries has expired{}",
                    mail.attempts,
                    mail.last_error
                        .as_deref()
                        .map(|e| format!(" (last: {e})"))
                        .unwrap_or_default()
                ),
            };
        }
        let Some(sealed) = &mail.body else {
            return MailOutcome::Failed {
                error: "the mail has no body".into(),
            };
        };
        let body = match self
            .core
            .master
            .open(&seal_context(&mail.recipient), sealed)
            .map_err(|why| why.to_string())
            .and_then(|plain| serde_json::from_slice::<Body>(&plain).map_err(|e| e.to_string()))
        {
            Ok(body) => body,
            Err(why) => {
                return MailOutcome::Failed {
                    error: format!("the mail's body cannot be opened: {why}"),
                };
            }
        };
        match settings
            .mailer
            .send_alternative(&mail.recipient, &mail.subject, &body.text, &body.html)
            .await
        {
            Ok(_) => MailOutcome::Sent,
            Err(refused) if refused.transient => {
                let delay = FIRST_RETRY_DELAY
                    .checked_mul(1 << mail.attempts.clamp(0, 10))
                    .unwrap_or(MAX_RETRY_DELAY)
                    .min(MAX_RETRY_DELAY);
                MailOutcome::Retry {
                    error: refused.error,
                    next_at: now + delay,
                }
            }
            Err(refused) => MailOutcome::Failed {
                error: refused.error,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..1000 {
            let code = new_code();
            assert_eq!(code.len(), 6, "{code}");
            assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        }
    }

    #[test]
    fn plain_text_is_wrapped_and_links_stay_whole() {
        let link = format!(
            "https://outpost.example.com/ui/reset?token=opw_{}",
            "x".repeat(43)
        );
        let text = plain(&[&link, &"word ".repeat(40)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], link);
        assert_eq!(lines[1], "");
        assert!(lines[2..].iter().all(|l| l.len() <= 72), "{text}");
        assert!(text.ends_with("word\n"), "{text:?}");
    }

    #[test]
    fn the_html_part_escapes_what_it_shows() {
        let out = html(
            &["<script>alert(1)</script> & \"x\""],
            Some(("go", "https://h/ui/reset?token=a&b=\"c\"")),
        );
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;"), "{out}");
        assert!(out.contains("token=a&amp;b=&quot;c&quot;"), "{out}");
    }
}
