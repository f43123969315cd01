//! Who is calling: a bearer token checked against the store, for users' access tokens,
//! programs' API keys and agents' keys.
//!
//! A user's access token (a JWT, `crate::jwt`) is checked for its signature and expiry, and
//! then the user's row is looked at on every request: a user disabled, deleted or moved to a
//! lower role since the token was issued gets the new state at their next request, and the
//! role the request runs with is the row's, not the token's. A key made through `/api/keys`
//! belongs to a user and is checked the same way: its owner's row is read with it, and the key
//! acts with that row's role and the key's scopes. The rows come through the process's
//! [`KeptCredentials`]: a copy serves for at most a second and never after a change this
//! process made or heard of (`outpost_store::credential_cache`), so the look costs no read of
//! the store on most requests.
//!
//! Both transports (the REST API and the agents' WebSocket and long-poll routes) authenticate
//! here, so a key is refused by the same rules wherever it is used. What an authenticated
//! caller may then do is decided in `crate::service::access`, once; the one rule below it that
//! the hub applies too (which commands an agent key allows, [`key_allows`]) is here, so that
//! both ask the same function.

use chrono::Utc;

use crate::jwt::{JwtError, Signer, looks_like_jwt};
use outpost_store::credential_cache::KeptCredentials;
use outpost_store::credentials::{hash_secret, verify_secret};
use outpost_store::domain::{
    Caller, DomainError, KeyStatus, Principal, Role, Scope, Scopes, UserStatus,
};
use outpost_store::{Store, agent_key};

/// Whether a user who has not verified their email may be the caller (CONTRACT.md §18: with
/// `--require-verified-email` such a user signs in only to verify).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    /// Refused with `email_unverified` (every route but the few that verify).
    Refused,
    /// Let through (the server does not require it, or the route is one that verifies).
    Allowed,
}

/// The refusal of a user (or their key) whose email is not verified yet.
pub fn email_unverified() -> DomainError {
    DomainError::NotAllowed {
        code: "email_unverified",
        message: "this server requires a verified email: enter the code mailed to you \
                  (POST /api/auth/verify {code}; a new one: POST /api/auth/verify/resend)"
            .into(),
    }
}

/// The caller behind a REST request's bearer token: an API key (`opk_…`) or a user's access
/// token (a JWT). Agent keys (`opa_…`) are refused here.
#[tracing::instrument(level = "debug", name = "authenticate", skip_all)]
pub async fn authenticate_api(
    store: &Store,
    kept: &KeptCredentials,
    signer: &Signer,
    token: Option<&str>,
    unverified: Unverified,
) -> Result<Caller, DomainError> {
    let token = token.ok_or_else(|| {
        DomainError::Unauthorized(
            "missing `Authorization: Bearer <API key or access token>` header".into(),
        )
    })?;
    if looks_like_jwt(token) {
        return authenticate_user(store, kept, signer, token, unverified).await;
    }
    if !token.starts_with("opk_") {
        return Err(DomainError::Unauthorized(
            "the bearer token is neither an API key (opk_…) nor an access token".into(),
        ));
    }
    let key = kept
        .api_key_by_hash(store, &hash_secret(token))
        .await?
        .filter(|k| verify_secret(token, &k.key_hash))
        .filter(|k| k.expires_at.is_none_or(|t| t > Utc::now()))
        .filter(|k| k.revoked_at.is_none())
        .ok_or_else(|| DomainError::Unauthorized("unknown, expired or revoked API key".into()))?;
    let scopes = match &key.scopes {
        None => Scopes::ALL,
        Some(list) => Scopes::of(&stored_scopes(&key.id, list)?),
    };
    // A key made through `/api/keys` acts with its owner's role as the owner's row has it
    // now, and stops with its owner (disabled, deleted).
    let role = match &key.owner_user_id {
        None => key.role.parse().map_err(|why| {
            DomainError::Internal(anyhow::anyhow!("API key {}: stored role: {why}", key.id))
        })?,
        Some(owner) => {
            let user = kept
                .user(store, &key.tenant_id, owner)
                .await?
                .filter(|u| u.status == UserStatus::Active)
                .ok_or_else(|| {
                    DomainError::Unauthorized("this API key's user is disabled or deleted".into())
                })?;
            if unverified == Unverified::Refused && user.email_verified_at.is_none() {
                return Err(email_unverified());
            }
            user.role.parse().map_err(|why| {
                DomainError::Internal(anyhow::anyhow!("user {}: stored role: {why}", user.id))
            })?
        }
    };
    Ok(Caller {
        tenant_id: key.tenant_id,
        role,
        scopes,
        principal: Principal::ApiKey {
            key_id: key.id,
            owner: key.owner_user_id,
        },
        label: key.name,
        // Set by authentication, which knows the client's address.
        address: None,
    })
}

/// A key's stored scopes; one the server does not know (written by a later version) is an
/// error rather than dropped, so a key never silently acts with less or more than it lists.
fn stored_scopes(
    key_id: &str,
    list: &outpost_store::StringList,
) -> Result<Vec<Scope>, DomainError> {
    list.iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<_, _>>()
        .map_err(|why| {
            DomainError::Internal(anyhow::anyhow!("API key {key_id}: stored scopes: {why}"))
        })
}

/// The user behind an access token, as their row says now.
async fn authenticate_user(
    store: &Store,
    kept: &KeptCredentials,
    signer: &Signer,
    token: &str,
    unverified: Unverified,
) -> Result<Caller, DomainError> {
    let claims = signer
        .verify(token, Utc::now().timestamp())
        .map_err(|why| {
            DomainError::Unauthorized(match why {
                JwtError::Expired => {
                    "the access token has expired: get a new one with POST /api/auth/refresh".into()
                }
                _ => "invalid access token".into(),
            })
        })?;
    let gone = || DomainError::Unauthorized("the access token's user no longer exists".into());
    let user = kept
        .user(store, &claims.tid, &claims.sub)
        .await?
        .ok_or_else(gone)?;
    if user.status != UserStatus::Active {
        return Err(DomainError::Unauthorized("this user is disabled".into()));
    }
    // A password reset ends every session (CONTRACT.md §18): the refresh tokens are revoked
    // with it, and access tokens issued before it (within their 15 minutes) stop here.
    if user
        .password_changed_at
        .is_some_and(|changed| issued_before(&claims, changed))
    {
        return Err(DomainError::Unauthorized(
            "this session ended when the password was reset: sign in again".into(),
        ));
    }
    if unverified == Unverified::Refused && user.email_verified_at.is_none() {
        return Err(email_unverified());
    }
    let role: Role = user.role.parse().map_err(|why| {
        DomainError::Internal(anyhow::anyhow!("user {}: stored role: {why}", user.id))
    })?;
    Ok(Caller {
        tenant_id: user.tenant_id,
        role,
        scopes: Scopes::ALL,
        principal: Principal::User { user_id: user.id },
        label: user.email,
        address: None,
    })
}

/// Whether the token of `claims` was issued before `instant`. `iat` has whole seconds; within
/// the same second the token's id decides, a UUIDv7 whose first 48 bits are its issue time in
/// milliseconds (a sign-in right after a reset must work, a token from just before it not).
fn issued_before(claims: &crate::jwt::Claims, instant: chrono::DateTime<Utc>) -> bool {
    match claims.iat.cmp(&instant.timestamp()) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => uuid::Uuid::parse_str(&claims.jti)
            .ok()
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                i128::from(secs) * 1000 + i128::from(nanos / 1_000_000)
            })
            // An id that is not a UUIDv7 was not issued by this server: as old as can be.
            .is_none_or(|ms| ms < i128::from(instant.timestamp_millis())),
    }
}

/// Whether an agent key with `permissions` allows `command`. Every send asks this: a new
/// command (`service::access::key_refusal`) and a pending one resent when its agent
/// reconnects (the key's permissions may have changed since it was stored).
pub fn key_allows(permissions: &[String], command: &str) -> bool {
    permissions.iter().any(|p| p == command)
}

/// The agent key behind an agent's bearer token (`opa_…`). Why it was refused is told to the
/// agent in the 401 body, never more.
pub async fn authenticate_agent(
    store: &Store,
    token: Option<&str>,
) -> Result<agent_key::Model, DomainError> {
    let token = token.ok_or_else(|| {
        DomainError::Unauthorized("missing `Authorization: Bearer <agent key>` header".into())
    })?;
    if !token.starts_with("opa_") {
        return Err(DomainError::Unauthorized(
            "the bearer token is not an agent key (opa_…)".into(),
        ));
    }
    let key = store
        .agent_key_by_hash(&hash_secret(token))
        .await?
        .filter(|k| verify_secret(token, &k.key_hash))
        .ok_or_else(|| DomainError::Unauthorized("unknown agent key".into()))?;
    if key.status != KeyStatus::Active {
        // Its own code: the agent retries a disabled key within seconds (it may be enabled
        // again), an unknown one slowly.
        return Err(DomainError::Denied {
            code: outpost_protocol::codes::KEY_DISABLED,
            message: "agent key is disabled".into(),
        });
    }
    if key.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(DomainError::Unauthorized("agent key has expired".into()));
    }
    Ok(key)
}

/// How agents prove who they are (`--agent-auth`, CONTRACT.md §19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AgentAuthMode {
    /// The agent key on every connection; client certificates are not looked at.
    Key,
    /// A client certificate from the server's CA on every connection (the key only enrolls).
    Cert,
    /// A certificate where the agent presents one, else its key; an agent that enrolled must
    /// use its certificate.
    #[default]
    Either,
}

impl AgentAuthMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Cert => "cert",
            Self::Either => "either",
        }
    }
}

/// Who an agent connection is: the key whose permissions and tags apply and, when it came with
/// a certificate, the one agent it may register as.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The agent key (for a certificate, the enrollment key it was issued under).
    pub key: agent_key::Model,
    /// The agent the certificate names.
    pub agent_id: Option<outpost_protocol::AgentId>,
    /// When the certificate expires (the connection is closed then).
    pub cert_expires_at: Option<chrono::DateTime<Utc>>,
}

impl AgentIdentity {
    /// When the connection must be closed: the key's or the certificate's end, the earlier.
    pub fn expires_at(&self) -> Option<chrono::DateTime<Utc>> {
        match (self.key.expires_at, self.cert_expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Authenticates an agent connection by `mode`: `peer_cert` is the SHA-256 (hex) of the client
/// certificate the TLS layer verified against the CA, if one was presented.
pub async fn authenticate_agent_connection(
    store: &Store,
    mode: AgentAuthMode,
    token: Option<&str>,
    peer_cert: Option<&str>,
) -> Result<AgentIdentity, DomainError> {
    match (mode, peer_cert) {
        (AgentAuthMode::Cert | AgentAuthMode::Either, Some(fingerprint)) => {
            authenticate_agent_cert(store, fingerprint).await
        }
        (AgentAuthMode::Cert, None) => Err(DomainError::Unauthorized(
            "this server requires an agent certificate (--agent-auth cert): enroll with POST /agent/v1/enroll and connect with the certificate over TLS"
                .into(),
        )),
        (AgentAuthMode::Key | AgentAuthMode::Either, _) => {
            Ok(AgentIdentity {
                key: authenticate_agent(store, token).await?,
                agent_id: None,
                cert_expires_at: None,
            })
        }
    }
}

/// Authenticates a client certificate by its row in `agent_certs` (the TLS layer checked the
/// signature and dates): not revoked, not expired, and its enrollment key active.
pub async fn authenticate_agent_cert(
    store: &Store,
    fingerprint: &str,
) -> Result<AgentIdentity, DomainError> {
    let cert = store
        .agent_cert(fingerprint)
        .await?
        .ok_or_else(|| DomainError::Unauthorized("unknown client certificate".into()))?;
    if cert.revoked_at.is_some() {
        return Err(DomainError::Denied {
            code: outpost_protocol::codes::CERTIFICATE_REVOKED,
            message: "the client certificate was revoked: its agent was deleted".into(),
        });
    }
    if cert.expires_at <= Utc::now() {
        return Err(DomainError::Unauthorized(
            "the client certificate has expired; enroll again".into(),
        ));
    }
    let agent_id = cert
        .agent_id
        .parse()
        .map_err(|_| DomainError::Unauthorized("unknown client certificate".into()))?;
    let key = store
        .get_agent_key(&cert.tenant_id, &cert.key_id)
        .await?
        .ok_or_else(|| {
            DomainError::Unauthorized(
                "the agent key this certificate was enrolled with was deleted".into(),
            )
        })?;
    if key.status != KeyStatus::Active {
        return Err(DomainError::Denied {
            code: outpost_protocol::codes::KEY_DISABLED,
            message: "the agent key this certificate was enrolled with is disabled".into(),
        });
    }
    if key.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(DomainError::Unauthorized(
            "the agent key this certificate was enrolled with has expired".into(),
        ));
    }
    Ok(AgentIdentity {
        key,
        agent_id: Some(agent_id),
        cert_expires_at: Some(cert.expires_at),
    })
}
