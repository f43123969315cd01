//! Enrollment and renewal of agent certificates (CONTRACT.md §19): who may get a certificate
//! for which agent id, and when.
//!
//! The agent key becomes an enrollment key: it may get a certificate for an agent id once,
//! for a key the agent generated (the CSR proves it holds it). The rules below make a copied
//! enrollment key worth as little as possible once the fleet has enrolled:
//! - an agent id bound to another key (its first registration or enrollment bound it) is
//!   refused (`agent_id_taken`), as registration refuses it;
//! - an agent that holds a live certificate is not issued another one by enrollment
//!   (`already_enrolled`): only renewal over mTLS with that certificate renews it, so a copied
//!   key cannot take over an enrolled agent. An enrollment repeated with the same public key (a
//!   retry whose answer was lost, or a replay) gets the same certificate back, which is worth
//!   nothing without the private key; nothing new is issued;
//! - a public key certified for one agent is refused for any other (`csr_reused`);
//! - an agent deleted after it enrolled is refused (`agent_revoked`) until an admin clears it;
//! - a new agent id counts against the tenant's `max_agents`, and each key may enroll
//!   [`ENROLLMENTS_PER_MINUTE`] times a minute.
//!
//! A lost agent state (its key gone) waits for its certificate to expire, or an admin deletes
//! the agent and clears it, after which it enrolls as new.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use outpost_protocol::{AgentId, codes};

use crate::access::AgentIdentity;
use crate::pki::{AgentCa, Issued};
use crate::service::limits::{Limiter, MAX_KEYS};
use outpost_store::domain::DomainError;
use outpost_store::{NewAgentCert, Store, agent_key};

/// Enrollments and renewals a minute per enrollment key: 15,000 agents of one key enroll in five
/// minutes, and a stolen key cannot issue faster than the CA signs comfortably.
pub const ENROLLMENTS_PER_MINUTE: u32 = 3_000;

/// A certificate handed to an agent.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The agent's certificate, PEM.
    pub certificate: String,
    /// The CA's certificate, PEM.
    pub ca: String,
    /// When the certificate expires.
    pub expires_at: DateTime<Utc>,
}

/// Issues and renews agent certificates.
#[derive(Clone)]
pub struct Enrollment {
    store: Store,
    ca: Arc<AgentCa>,
    per_key: Arc<Limiter>,
    per_minute: u32,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

fn bad_csr(err: crate::pki::CsrRefused) -> DomainError {
    DomainError::Invalid {
        code: "bad_csr",
        message: err.0,
    }
}

impl Enrollment {
    /// Enrollment against `ca`, recording in `store`.
    pub fn new(store: Store, ca: Arc<AgentCa>) -> Self {
        Self::limited(store, ca, ENROLLMENTS_PER_MINUTE)
    }

    /// [`Enrollment::new`] with another limit per key than [`ENROLLMENTS_PER_MINUTE`]: a test
    /// of the limit needs one that no refill within the test can reach (at 3,000 a minute, a
    /// new allowance comes every 20 ms, less than a busy machine takes between two requests).
    pub fn limited(store: Store, ca: Arc<AgentCa>, per_minute: u32) -> Self {
        Self {
            store,
            ca,
            per_key: Arc::new(Limiter::new(per_minute, MAX_KEYS)),
            per_minute,
        }
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<AgentCa> {
        &self.ca
    }

    fn charge(&self, key_id: &str) -> Result<(), DomainError> {
        self.per_key.check(key_id, Instant::now()).map_err(|wait| {
            let retry_after_s = wait.as_secs().max(1);
            DomainError::RateLimited {
                message: format!(
                    "enrollments: {} a minute per agent key; try again in {retry_after_s} s",
                    self.per_minute
                ),
                retry_after_s,
            }
        })
    }

    /// `POST /agent/v1/enroll`: a certificate for `agent_id` under the enrollment key `key`.
    pub async fn enroll(
        &self,
        key: &agent_key::Model,
        agent_id: AgentId,
        csr: &str,
    ) -> Result<Enrolled, DomainError> {
        self.charge(&key.id)?;
        let tenant = key.tenant_id.as_str();
        let agent = agent_id.to_string();
        let now = Utc::now();
        let checked = self.ca.check_csr(csr, tenant, &agent).map_err(bad_csr)?;
        let standing = self.store.cert_standing(tenant, &agent, now).await?;
        if standing.revoked {
            return Err(DomainError::NotAllowed {
                code: codes::AGENT_REVOKED,
                message: format!(
                    "agent {agent} was deleted after it enrolled; an admin must clear it (POST /api/agents/{agent}/unrevoke) before it enrolls again"
                ),
            });
        }
        let existing = self.store.get_agent(tenant, &agent).await?;
        match &existing {
            Some(row) if row.key_id != key.id => {
                return Err(DomainError::Conflict {
                    code: codes::AGENT_ID_TAKEN,
                    message: format!("agent {agent} is bound to another agent key"),
                });
            }
            Some(_) => {}
            None => {
                if let Some(max) = self.store.tenant_at_agent_quota(tenant).await? {
                    return Err(outpost_store::domain::quota_exceeded(
                        "max_agents",
                        max,
                        "agents",
                    ));
                }
            }
        }
        let same_key = self
            .store
            .agent_certs_for_public_key(&checked.public_key)
            .await?;
        if same_key
            .iter()
            .any(|c| c.tenant_id != tenant || c.agent_id != agent)
        {
            return Err(DomainError::Conflict {
                code: "csr_reused",
                message: "csr: this public key was certified for another agent; generate a new key"
                    .into(),
            });
        }
        if let Some(live) = standing.live {
            if live.public_key == checked.public_key && live.key_id == key.id {
                // The same request again: the same answer, nothing new issued.
                return Ok(Enrolled {
                    certificate: live.certificate,
                    ca: self.ca.pem().to_owned(),
                    expires_at: live.expires_at,
                });
            }
            return Err(DomainError::Conflict {
                code: codes::ALREADY_ENROLLED,
                message: format!(
                    "agent {agent} already holds a certificate valid until {}; it renews it over mTLS (POST /agent/v1/renew). To enroll it again, delete the agent and clear it (POST /api/agents/{agent}/unrevoke)",
                    live.expires_at.to_rfc3339()
                ),
            });
        }
        let issued = self
            .ca
            .issue_agent(checked, tenant, &agent, now)
            .map_err(DomainError::Internal)?;
        self.record(tenant, &agent, &key.id, issued).await
    }

    /// `POST /agent/v1/renew`: a new certificate for the agent a live certificate names.
    pub async fn renew(
        &self,
        identity: &AgentIdentity,
        csr: &str,
    ) -> Result<Enrolled, DomainError> {
        let Some(agent_id) = identity.agent_id else {
            return Err(DomainError::Unauthorized(
                "renewal needs the agent's current certificate (mutual TLS); an agent without one enrolls (POST /agent/v1/enroll)"
                    .into(),
            ));
        };
        let key = &identity.key;
        self.charge(&key.id)?;
        let tenant = key.tenant_id.as_str();
        let agent = agent_id.to_string();
        let checked = self.ca.check_csr(csr, tenant, &agent).map_err(bad_csr)?;
        let same_key = self
            .store
            .agent_certs_for_public_key(&checked.public_key)
            .await?;
        if same_key
            .iter()
            .any(|c| c.tenant_id != tenant || c.agent_id != agent)
        {
            return Err(DomainError::Conflict {
                code: "csr_reused",
                message: "csr: this public key was certified for another agent; generate a new key"
                    .into(),
            });
        }
        let issued = self
            .ca
            .issue_agent(checked, tenant, &agent, Utc::now())
            .map_err(DomainError::Internal)?;
        self.record(tenant, &agent, &key.id, issued).await
    }

    async fn record(
        &self,
        tenant: &str,
        agent: &str,
        key_id: &str,
        issued: Issued,
    ) -> Result<Enrolled, DomainError> {
        let expires_at = issued.expires_at;
        let certificate = issued.certificate.clone();
        self.store
            .insert_agent_cert(NewAgentCert {
                fingerprint: issued.fingerprint,
                tenant_id: tenant.to_owned(),
                agent_id: agent.to_owned(),
                key_id: key_id.to_owned(),
                public_key: issued.public_key,
                serial: issued.serial,
                certificate: issued.certificate,
                issued_at: issued.issued_at,
                expires_at,
            })
            .await?;
        tracing::info!(tenant_id = %tenant, agent_id = %agent, key_id = %key_id, expires_at = %expires_at, "agent certificate issued");
        Ok(Enrolled {
            certificate,
            ca: self.ca.pem().to_owned(),
            expires_at,
        })
    }
}
