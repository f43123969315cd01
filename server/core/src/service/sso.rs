//! Sign-in through an OpenID Connect provider (CONTRACT.md §18): Microsoft Entra ID, Google,
//! Keycloak, Okta, or any provider with discovery.
//!
//! The flow is the authorization code with PKCE: [`Sso::start`] stores a sign-in in flight
//! (`oidc_logins`: the `state` hashed, the PKCE verifier sealed, the `nonce`), and answers the
//! provider's URL; [`Sso::callback`] takes that row once (a replayed or forged `state` finds
//! none), exchanges the code with our client secret and the verifier, and verifies the ID
//! token (`crate::idtoken`) against the provider's keys.
//!
//! Who the token signs in as is decided here, and never by email alone (an email can be
//! reassigned; the provider's `(issuer, subject)` cannot):
//! - a known identity signs its user in (a disabled user is refused);
//! - a sign-in started by a signed-in user (`link`) links the identity to that user;
//! - an unknown identity whose email is a user's answers 409 `sso_not_linked`: that user signs
//!   in as before and links it;
//! - otherwise the email's domain, mapped by `--oidc-domain`, makes the person a member of that
//!   tenant (its `max_users` respected), or, with `--allow-signup`, a tenant of their own with
//!   them as owner; else the sign-in is refused saying so.
//!
//! The provider is asked lazily: discovery and keys are fetched at the first sign-in and
//! cached, so a provider that is down stops neither the server's start nor password sign-in;
//! its sign-in answers 503 naming the provider. The keys are fetched again when a token names
//! a key we do not have (the provider rotated them), at most once every
//! [`KEY_REFETCH_INTERVAL`], so forged `kid`s cannot make us hammer the provider.
//!
//! A callback ends in a one-time code (hashed, two minutes) that is exchanged for a session
//! ([`Sso::exchange`]): the CLI (`outpost login --sso`, which started with its loopback
//! address) gets it on that address; a browser gets it in a cookie for the dashboard's
//! `/ui/sso/finish`, which sets the dashboard's session. The session's tokens never pass
//! through a URL.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::Core;
use super::audit::Audit;
use super::limits::Limits;
use super::users::{Session, Users};
use crate::idtoken::{self, Expected, JwkSet, TokenError};
use outpost_store::credentials::hash_secret;
use outpost_store::domain::{
    Actor, ActorKind, AuditAction, AuditEvent, AuditTarget, DomainError, Role, UserStatus,
    quota_exceeded,
};
use outpost_store::{NewOidcLogin, SsoIdentity, UserRefused, user};

/// How long a sign-in may take between the redirect and the callback.
pub const LOGIN_TTL: chrono::Duration = chrono::Duration::minutes(10);
/// How long the CLI's handoff code lives.
pub const HANDOFF_TTL: chrono::Duration = chrono::Duration::minutes(2);
/// The least time between two fetches of the provider's keys for an unknown `kid`.
pub const KEY_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// How long discovery and keys are kept before they are fetched again anyway.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);
/// The timeout of one request to the provider.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// The scopes asked for.
pub const SCOPES: &str = "openid email profile";
/// The sealing context of PKCE verifiers.
const VERIFIER_CONTEXT: &str = "oidc pkce verifier";
/// The prefix of the CLI's handoff codes.
const HANDOFF_PREFIX: &str = "oph_";

/// The provider, as the flags configure it.
#[derive(Clone)]
pub struct SsoConfig {
    /// `--oidc-issuer`, without a trailing slash.
    pub issuer: String,
    /// `--oidc-client-id`.
    pub client_id: String,
    /// `--oidc-client-secret` (or its file).
    pub client_secret: String,
    /// `--oidc-name`: the button's label.
    pub name: String,
    /// `--oidc-domain DOMAIN=TENANT`: lower-case domain, tenant name or id.
    pub domains: Vec<(String, String)>,
    /// `<public-url>/api/auth/oidc/callback`.
    pub redirect_uri: String,
}

impl std::fmt::Debug for SsoConfig {
    // By hand: the client secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<set>")
            .field("name", &self.name)
            .field("domains", &self.domains)
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

impl SsoConfig {
    /// Checks the issuer: https, or http on a loopback host (a provider on this machine).
    pub fn check_issuer(issuer: &str) -> Result<String, String> {
        let url = url::Url::parse(issuer)
            .map_err(|e| format!("--oidc-issuer: {issuer:?} is not a URL ({e})"))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(format!(
                    "--oidc-issuer: {issuer:?} must be https (http only for a provider on loopback)"
                ));
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "--oidc-issuer: {issuer:?} must not have a query or fragment"
            ));
        }
        Ok(issuer.trim_end_matches('/').to_owned())
    }

    /// Parses one `--oidc-domain DOMAIN=TENANT`.
    pub fn parse_domain(text: &str) -> Result<(String, String), String> {
        let (domain, tenant) = text.split_once('=').ok_or_else(|| {
            format!("--oidc-domain: {text:?} is not DOMAIN=TENANT (example.com=acme)")
        })?;
        let domain = domain.trim().trim_start_matches('@').to_ascii_lowercase();
        let tenant = tenant.trim();
        if domain.is_empty()
            || tenant.is_empty()
            || domain.contains(['@', '/', ' '])
            || !domain.contains('.')
        {
            return Err(format!(
                "--oidc-domain: {text:?} is not DOMAIN=TENANT (example.com=acme; TENANT a name or id)"
            ));
        }
        Ok((domain, tenant.to_owned()))
    }
}

/// What the provider publishes at `/.well-known/openid-configuration`.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The cache of what was fetched from the provider.
#[derive(Default)]
struct Cached {
    discovery: Option<(Discovery, Instant)>,
    keys: Option<(JwkSet, Instant)>,
}

/// A sign-in started: where to send the browser, and the state to bind it with (a cookie).
#[derive(Debug)]
pub struct Started {
    /// The provider's authorization URL.
    pub url: String,
    /// The `state` (for the browser's cookie).
    pub state: String,
}

/// What a callback ended in.
#[derive(Debug)]
pub enum Finished {
    /// A browser signed in: the one-time code the dashboard exchanges for its session (kept
    /// out of the URL: the callback hands it over in a cookie).
    SignedIn(String),
    /// A signed-in user linked the identity.
    Linked(Box<user::Model>),
    /// A CLI's sign-in: send the browser to this loopback URL (which carries the handoff code).
    Cli(String),
}

/// The OpenID Connect sign-in service; off (every route answers 404) without `--oidc-issuer`.
#[derive(Clone)]
pub struct Sso {
    core: Arc<Core>,
    limits: Limits,
    audit: Audit,
    users: Users,
    config: Option<Arc<SsoConfig>>,
    signup: bool,
    /// Built at the first use (after the process has installed its TLS provider).
    http: Arc<std::sync::OnceLock<reqwest::Client>>,
    cached: Arc<Mutex<Cached>>,
    /// When the keys were last fetched for an unknown `kid`.
    refetched: Arc<Mutex<Option<Instant>>>,
}

fn off() -> DomainError {
    DomainError::NotFound(
        "single sign-on is not configured on this server (it runs without --oidc-issuer)".into(),
    )
}

fn random_token() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `url` is a CLI's loopback address: `http://127.0.0.1:PORT/…`, `localhost` or
/// `[::1]`, with a port, no credentials, no fragment.
pub fn check_cli_redirect(url: &str) -> Result<url::Url, DomainError> {
    let bad = || {
        DomainError::BadRequest(format!(
            "cli: {url:?} is not a loopback address (http://127.0.0.1:PORT/…, http://localhost:PORT/… or http://[::1]:PORT/…)"
        ))
    };
    let parsed = url::Url::parse(url).map_err(|_| bad())?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if parsed.scheme() != "http"
        || !loopback
        || parsed.port().is_none()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.fragment().is_some()
        || url.len() > 512
    {
        return Err(bad());
    }
    Ok(parsed)
}

impl Sso {
    pub(super) fn new(core: Arc<Core>, limits: Limits, audit: Audit, users: Users) -> Self {
        Self {
            core,
            limits,
            audit,
            users,
            config: None,
            signup: false,
            http: Arc::default(),
            cached: Arc::default(),
            refetched: Arc::default(),
        }
    }

    /// The same service with a provider (`--oidc-*`) and signup on or off.
    #[must_use]
    pub fn with_config(mut self, config: Option<SsoConfig>, signup: bool) -> Self {
        self.config = config.map(Arc::new);
        self.signup = signup;
        self
    }

    /// The button's label, when single sign-on is configured.
    pub fn name(&self) -> Option<&str> {
        self.config.as_deref().map(|c| c.name.as_str())
    }

    fn config(&self) -> Result<&SsoConfig, DomainError> {
        self.config.as_deref().ok_or_else(off)
    }

    /// Checks at start that each `--oidc-domain` names one tenant; the first that does not.
    pub async fn check_domains(&self) -> Result<(), String> {
        let Some(config) = self.config.as_deref() else {
            return Ok(());
        };
        for (domain, tenant) in &config.domains {
            let found = self
                .core
                .store
                .tenant_by_name_or_id(tenant)
                .await
                .map_err(|e| e.to_string())?;
            if found.is_none() {
                return Err(format!(
                    "--oidc-domain {domain}={tenant}: no tenant has that id, nor exactly one that name"
                ));
            }
        }
        Ok(())
    }

    fn unreachable(config: &SsoConfig, why: impl std::fmt::Display) -> DomainError {
        DomainError::Unavailable(format!(
            "the sign-in provider {} ({}) cannot be reached right now ({why}); sign in with a password, or try again later",
            config.name, config.issuer
        ))
    }

    fn http(&self, config: &SsoConfig) -> Result<reqwest::Client, DomainError> {
        if let Some(client) = self.http.get() {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Self::unreachable(config, format!("no HTTP client: {e}")))?;
        Ok(self.http.get_or_init(|| client).clone())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        config: &SsoConfig,
        url: &str,
    ) -> Result<T, DomainError> {
        let response = self
            .http(config)?
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| Self::unreachable(config, e))?;
        if !response.status().is_success() {
            return Err(Self::unreachable(
                config,
                format!("{url} answered {}", response.status()),
            ));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Self::unreachable(config, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Self::unreachable(config, format!("{url} is not what was expected: {e}")))
    }

    async fn discovery(&self, config: &SsoConfig) -> Result<Discovery, DomainError> {
        let mut cached = self.cached.lock().await;
        if let Some((found, at)) = &cached.discovery
            && at.elapsed() < CACHE_TTL
        {
            return Ok(found.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", config.issuer);
        let found: Discovery = self.get_json(config, &url).await?;
        if found.issuer.trim_end_matches('/') != config.issuer {
            return Err(Self::unreachable(
                config,
                format!(
                    "its discovery document names the issuer {:?}, not --oidc-issuer",
                    found.issuer
                ),
            ));
        }
        cached.discovery = Some((found.clone(), Instant::now()));
        Ok(found)
    }

    async fn keys(&self, config: &SsoConfig, fresh: bool) -> Result<JwkSet, DomainError> {
        let discovery = self.discovery(config).await?;
        let mut cached = self.cached.lock().await;
        if !fresh
            && let Some((keys, at)) = &cached.keys
            && at.elapsed() < CACHE_TTL
        {
            return Ok(keys.clone());
        }
        let keys: JwkSet = self.get_json(config, &discovery.jwks_uri).await?;
        cached.keys = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    /// `GET /api/auth/oidc/start`: stores the sign-in and answers where to send the browser.
    /// `link` is the signed-in user linking an identity; `cli` the CLI's loopback address.
    #[tracing::instrument(skip_all)]
    pub async fn start(
        &self,
        link: Option<&user::Model>,
        cli: Option<&str>,
        client: IpAddr,
    ) -> Result<Started, DomainError> {
        let config = self.config()?;
        self.limits.auth_attempt(client, None)?;
        let cli = cli.map(check_cli_redirect).transpose()?;
        if link.is_some() && cli.is_some() {
            return Err(DomainError::BadRequest(
                "link and cli: a link is made from the dashboard, not from the CLI".into(),
            ));
        }
        self.core.writable()?;
        let discovery = self.discovery(config).await?;
        let state = random_token();
        let nonce = random_token();
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        self.core
            .store
            .insert_oidc_login(NewOidcLogin {
                state_hash: hash_secret(&state),
                nonce: nonce.clone(),
                verifier_sealed: self.core.master.seal(VERIFIER_CONTEXT, verifier.as_bytes()),
                link_user_id: link.map(|u| u.id.clone()),
                cli_redirect: cli.map(|u| u.to_string()),
                expires_at: Utc::now() + LOGIN_TTL,
            })
            .await?;
        let mut url = url::Url::parse(&discovery.authorization_endpoint).map_err(|e| {
            Self::unreachable(
                config,
                format!("its authorization_endpoint is not a URL: {e}"),
            )
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &config.client_id)
            .append_pair("redirect_uri", &config.redirect_uri)
            .append_pair("scope", SCOPES)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(Started {
            url: url.to_string(),
            state,
        })
    }

    /// `GET /api/auth/oidc/callback`: `state` must equal the browser's cookie (`bound`) and
    /// name a live, unused sign-in; then the code is exchanged and the ID token verified.
    #[tracing::instrument(skip_all)]
    pub async fn callback(
        &self,
        code: Option<&str>,
        state: &str,
        bound: Option<&str>,
        provider_error: Option<&str>,
        client: IpAddr,
    ) -> Result<Finished, DomainError> {
        let config = self.config()?;
        // Not counted as a sign-in attempt: the state (32 random bytes) is checked against the
        // cookie and a stored sign-in before anything else, and only `start` makes those.
        let matches = bound.is_some_and(|b| {
            hash_secret(b).as_bytes() == hash_secret(state).as_bytes() && !state.is_empty()
        });
        if !matches {
            return Err(DomainError::BadRequest(
                "state: the sign-in's state does not match this browser's (its cookie is missing or another sign-in's): start the sign-in again".into(),
            ));
        }
        let Some(login) = self.core.store.take_oidc_login(&hash_secret(state)).await? else {
            return Err(DomainError::BadRequest(
                "state: this sign-in is unknown, expired or already used: start the sign-in again"
                    .into(),
            ));
        };
        if let Some(error) = provider_error {
            return Err(DomainError::Unauthorized(format!(
                "the provider {} did not sign you in ({error})",
                config.name
            )));
        }
        let code = code.filter(|c| !c.is_empty()).ok_or_else(|| {
            DomainError::BadRequest("code: the provider's answer has no code".into())
        })?;
        let verifier = self
            .core
            .master
            .open(VERIFIER_CONTEXT, &login.verifier)
            .map_err(|e| Users::internal(format!("an OIDC verifier cannot be opened: {e}")))?;
        let verifier = String::from_utf8(verifier)
            .map_err(|_| Users::internal("an OIDC verifier is not text".into()))?;
        let id_token = self.exchange_code(config, code, &verifier).await?;
        let claims = self
            .verify(config, &id_token, &login.nonce)
            .await
            .map_err(|e| {
                tracing::warn!(client = %client, error = %e, "an ID token was refused");
                DomainError::Unauthorized(format!("sign-in through {} refused: {e}", config.name))
            })?;
        let identity = SsoIdentity {
            issuer: claims.issuer,
            subject: claims.subject,
            email: claims.email,
        };
        if let Some(user_id) = &login.link_user_id {
            let user = self.link(user_id, &identity, client).await?;
            return Ok(Finished::Linked(Box::new(user)));
        }
        let user = self.resolve(config, &identity, client).await?;
        // The session is made by whoever exchanges the one-time code: the CLI on its
        // loopback, or the dashboard's `/ui/sso/finish` (the API does not set the dashboard's
        // cookie itself).
        let handoff = format!("{HANDOFF_PREFIX}{}", random_token());
        self.core
            .store
            .set_oidc_handoff(
                &login.state_hash,
                &hash_secret(&handoff),
                &user.id,
                Utc::now() + HANDOFF_TTL,
            )
            .await?;
        match login.cli_redirect {
            Some(cli) => {
                let mut url = url::Url::parse(&cli)
                    .map_err(|e| Users::internal(format!("a stored CLI address: {e}")))?;
                url.query_pairs_mut().append_pair("code", &handoff);
                Ok(Finished::Cli(url.to_string()))
            }
            None => Ok(Finished::SignedIn(handoff)),
        }
    }

    /// `POST /api/auth/oidc/exchange` (and the dashboard's `/ui/sso/finish`): a handoff code
    /// for a session, once.
    #[tracing::instrument(skip_all)]
    pub async fn exchange(&self, code: &str, client: IpAddr) -> Result<Session, DomainError> {
        self.config()?;
        // Not counted as a sign-in attempt: a code is 32 random bytes, not guessable, and a
        // browser's sign-in would otherwise count three times.
        let _ = client;
        let refused = || {
            DomainError::Unauthorized(
                "the sign-in code is unknown, expired or already used: run `outpost login --sso` again"
                    .into(),
            )
        };
        if !code.starts_with(HANDOFF_PREFIX) || code.len() > 128 {
            return Err(refused());
        }
        let user_id = self
            .core
            .store
            .take_oidc_handoff(&hash_secret(code))
            .await?
            .ok_or_else(refused)?;
        let user = self
            .core
            .store
            .user_by_id(&user_id)
            .await?
            .filter(|u| u.status == UserStatus::Active)
            .ok_or_else(refused)?;
        self.users.start_session(user).await
    }

    async fn exchange_code(
        &self,
        config: &SsoConfig,
        code: &str,
        verifier: &str,
    ) -> Result<String, DomainError> {
        let discovery = self.discovery(config).await?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &config.redirect_uri)
            .append_pair("code_verifier", verifier)
            .append_pair("client_id", &config.client_id)
            .finish();
        // client_secret_basic (RFC 6749 §2.3.1: each part form-encoded first).
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encode(&config.client_id),
            encode(&config.client_secret)
        ));
        let response = self
            .http(config)?
            .post(&discovery.token_endpoint)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"))
            .body(body)
            .send()
            .await
            .map_err(|e| Self::unreachable(config, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Self::unreachable(config, e))?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: Option<String>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let answer: Option<TokenAnswer> = serde_json::from_slice(&bytes).ok();
        if status.is_server_error() {
            return Err(Self::unreachable(
                config,
                format!("its token endpoint answered {status}"),
            ));
        }
        match answer {
            Some(TokenAnswer {
                id_token: Some(token),
                ..
            }) if status.is_success() => Ok(token),
            Some(TokenAnswer {
                error: Some(error),
                error_description,
                ..
            }) => Err(DomainError::Unauthorized(format!(
                "the provider {} refused the sign-in's code: {error}{}",
                config.name,
                error_description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ))),
            _ => Err(DomainError::Unauthorized(format!(
                "the provider {} answered the code's exchange with {status} and no ID token",
                config.name
            ))),
        }
    }

    async fn verify(
        &self,
        config: &SsoConfig,
        token: &str,
        nonce: &str,
    ) -> Result<idtoken::IdClaims, VerifyError> {
        let discovery = self.discovery(config).await.map_err(VerifyError::Domain)?;
        let expected = Expected {
            issuer: &discovery.issuer,
            client_id: &config.client_id,
            nonce,
            now: Utc::now().timestamp(),
        };
        let keys = self
            .keys(config, false)
            .await
            .map_err(VerifyError::Domain)?;
        match idtoken::verify(token, &keys, &expected) {
            Err(TokenError::UnknownKey) => {
                // The provider may have rotated its keys: fetch them again, not too often.
                let mut last = self.refetched.lock().await;
                if last.is_some_and(|at| at.elapsed() < KEY_REFETCH_INTERVAL) {
                    return Err(VerifyError::Token(TokenError::UnknownKey));
                }
                *last = Some(Instant::now());
                drop(last);
                tracing::info!(kid = ?idtoken::header_kid(token), "an ID token names an unknown key: fetching the provider's keys again");
                let keys = self.keys(config, true).await.map_err(VerifyError::Domain)?;
                idtoken::verify(token, &keys, &expected).map_err(VerifyError::Token)
            }
            other => other.map_err(VerifyError::Token),
        }
    }

    async fn link(
        &self,
        user_id: &str,
        identity: &SsoIdentity,
        client: IpAddr,
    ) -> Result<user::Model, DomainError> {
        let user = self
            .core
            .store
            .user_by_id(user_id)
            .await?
            .filter(|u| u.status == UserStatus::Active)
            .ok_or_else(|| {
                DomainError::Unauthorized(
                    "the user who started this link is gone or disabled".into(),
                )
            })?;
        if let Some(existing) = self
            .core
            .store
            .oidc_identity(&identity.issuer, &identity.subject)
            .await?
        {
            if existing.user_id == user.id {
                return Ok(user);
            }
            return Err(identity_taken());
        }
        if !self.core.store.link_oidc_identity(&user, identity).await? {
            return Err(identity_taken());
        }
        self.audit
            .record(
                &user.tenant_id,
                &actor(&user),
                Some(client),
                AuditEvent::new(AuditAction::UserSsoLink, AuditTarget::User, &user.id).with(
                    serde_json::json!({"issuer": identity.issuer, "subject": identity.subject, "email": identity.email}),
                ),
            )
            .await?;
        Ok(user)
    }

    /// The user a verified identity signs in as (see the module doc), audited.
    async fn resolve(
        &self,
        config: &SsoConfig,
        identity: &SsoIdentity,
        client: IpAddr,
    ) -> Result<user::Model, DomainError> {
        let store = &self.core.store;
        if let Some(known) = store
            .oidc_identity(&identity.issuer, &identity.subject)
            .await?
            && let Some(user) = store.user_by_id(&known.user_id).await?
        {
            if user.status != UserStatus::Active {
                self.refused(&user, "disabled", client).await?;
                return Err(DomainError::Unauthorized(
                    "this account is disabled: ask an owner of its tenant".into(),
                ));
            }
            store
                .touch_oidc_identity(&identity.issuer, &identity.subject, &identity.email)
                .await?;
            return self.signed_in(user, identity, client).await;
        }
        if let Some(user) = store.user_by_email(&identity.email).await? {
            self.refused(&user, "not_linked", client).await?;
            return Err(DomainError::Conflict {
                code: "sso_not_linked",
                message: format!(
                    "{} is already a user's, who signs in another way: sign in as that user and link {} to the account (the dashboard's \"Link {}\", or GET /api/auth/oidc/start?link=1)",
                    identity.email, config.name, config.name
                ),
            });
        }
        self.core.writable()?;
        let domain = identity
            .email
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let mapped = config
            .domains
            .iter()
            .find(|(d, _)| *d == domain)
            .map(|(_, t)| t.clone());
        let address = (!client.is_unspecified()).then(|| client.to_string());
        let user = if let Some(tenant) = mapped {
            let tenant = store.tenant_by_name_or_id(&tenant).await?.ok_or_else(|| {
                Users::internal(format!(
                    "--oidc-domain {domain}={tenant} names no single tenant"
                ))
            })?;
            let user = store
                .create_sso_user(&tenant.id, Role::Member, identity)
                .await?
                .map_err(|refused| sso_user_refused(&identity.email, refused))?;
            self.audit
                .record(
                    &user.tenant_id,
                    &actor(&user),
                    Some(client),
                    AuditEvent::new(AuditAction::UserCreate, AuditTarget::User, &user.id).with(
                        serde_json::json!({"email": user.email, "role": user.role, "sso": true, "issuer": identity.issuer, "subject": identity.subject}),
                    ),
                )
                .await?;
            user
        } else if self.signup {
            let (tenant, owner) = store
                .create_tenant_with_sso_owner(&identity.email, identity, address)
                .await?
                .map_err(|refused| sso_user_refused(&identity.email, refused))?;
            tracing::info!(tenant_id = %tenant.id, user_id = %owner.id, "a tenant signed up through SSO");
            owner
        } else {
            tracing::info!(client = %client, domain = %domain, "an SSO sign-in was refused: no tenant for its domain");
            return Err(DomainError::NotAllowed {
                code: "sso_no_tenant",
                message: format!(
                    "no tenant on this server takes {domain} addresses (--oidc-domain) and signup is off: ask its admin for an invite"
                ),
            });
        };
        self.signed_in(user, identity, client).await
    }

    async fn signed_in(
        &self,
        user: user::Model,
        identity: &SsoIdentity,
        client: IpAddr,
    ) -> Result<user::Model, DomainError> {
        self.core.store.touch_login(&user.id).await?;
        self.audit
            .record(
                &user.tenant_id,
                &actor(&user),
                Some(client),
                AuditEvent::new(AuditAction::AuthSsoLogin, AuditTarget::User, &user.id).with(
                    serde_json::json!({"issuer": identity.issuer, "subject": identity.subject}),
                ),
            )
            .await?;
        Ok(user)
    }

    async fn refused(
        &self,
        user: &user::Model,
        why: &str,
        client: IpAddr,
    ) -> Result<(), DomainError> {
        self.audit
            .record(
                &user.tenant_id,
                &actor(user),
                Some(client),
                AuditEvent::new(AuditAction::AuthSsoRefused, AuditTarget::User, &user.id)
                    .with(serde_json::json!({"reason": why})),
            )
            .await?;
        Ok(())
    }
}

/// Why an ID token could not be verified: the provider could not be asked, or the token is bad.
enum VerifyError {
    Domain(DomainError),
    Token(TokenError),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Domain(e) => e.fmt(f),
            Self::Token(e) => e.fmt(f),
        }
    }
}

fn identity_taken() -> DomainError {
    DomainError::Conflict {
        code: "sso_identity_taken",
        message: "this identity at the provider is already linked to another user".into(),
    }
}

fn sso_user_refused(email: &str, refused: UserRefused) -> DomainError {
    match refused {
        UserRefused::EmailTaken => super::users::email_taken(email),
        UserRefused::OverQuota { max } => quota_exceeded("max_users", max, "users"),
    }
}

fn actor(user: &user::Model) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: user.id.clone(),
        label: user.email.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_except_on_loopback() {
        assert_eq!(
            SsoConfig::check_issuer("https://login.example.com/tenant/v2.0/").as_deref(),
            Ok("https://login.example.com/tenant/v2.0")
        );
        for ok in [
            "http://127.0.0.1:9400",
            "http://localhost:1",
            "http://[::1]:2",
        ] {
            assert!(SsoConfig::check_issuer(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example",
            "ftp://x",
            "nonsense",
            "https://x/?a=b",
        ] {
            let err = SsoConfig::check_issuer(bad).expect_err(bad);
            assert!(err.contains("--oidc-issuer"), "{err}");
        }
    }

    #[test]
    fn domains_parse() {
        assert_eq!(
            SsoConfig::parse_domain("Example.COM=acme"),
            Ok(("example.com".into(), "acme".into()))
        );
        for bad in ["example.com", "=acme", "example.com=", "a@b.c=x", "nodot=x"] {
            assert!(SsoConfig::parse_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_redirects_are_loopback_only() {
        for ok in [
            "http://127.0.0.1:5000/cb",
            "http://localhost:5000/",
            "http://[::1]:5000/x?y=1",
        ] {
            assert!(check_cli_redirect(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:5000/",
            "http://127.0.0.1/",
            "http://evil.example:5000/",
            "http://u:p@127.0.0.1:5000/",
            "http://127.0.0.1:5000/#x",
            "http://10.0.0.1:5000/",
            "javascript:alert(1)",
        ] {
            assert!(check_cli_redirect(bad).is_err(), "{bad}");
        }
    }
}
