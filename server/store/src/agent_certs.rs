//! Agent certificates (CONTRACT.md §19): the CA's sealed key, every certificate issued to an
//! agent, and the agents deleted after they enrolled.
//!
//! A client certificate is trusted for what its row here says, not for what its text says: the
//! TLS layer checks that the CA signed it and that it is within its dates, and the row (found
//! by the SHA-256 of the DER) names its tenant, agent and enrollment key, and whether it was
//! revoked. So revoking is one update, seen by every node at the next handshake.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};

use super::{Result, Store, agent, agent_cert, now, pki_key, revoked_agent, tenant};

/// A certificate to record, as the CA issued it.
#[derive(Debug, Clone)]
pub struct NewAgentCert {
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    /// The agent's tenant.
    pub tenant_id: String,
    /// The agent it names.
    pub agent_id: String,
    /// The enrollment key it was issued under.
    pub key_id: String,
    /// Lowercase hex SHA-256 of the certified SubjectPublicKeyInfo.
    pub public_key: String,
    /// Hex serial.
    pub serial: String,
    /// PEM.
    pub certificate: String,
    /// Start of its life as recorded (the certificate's own `notBefore` is earlier, for skew).
    pub issued_at: DateTime<Utc>,
    /// End of its life.
    pub expires_at: DateTime<Utc>,
}

/// What stands in the way of an agent id's enrollment, or of its key authentication where
/// certificates are preferred.
#[derive(Debug, Clone, Default)]
pub struct CertStanding {
    /// Deleted after it enrolled, not cleared since.
    pub revoked: bool,
    /// Its newest certificate that is neither expired nor revoked.
    pub live: Option<agent_cert::Model>,
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// The sealed key and certificate stored under `name`.
    pub async fn pki_key(&self, name: &str) -> Result<Option<pki_key::Model>> {
        Ok(pki_key::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?)
    }

    /// Stores a key and certificate under `name` unless one is there already, and returns the
    /// one stored: two nodes starting at once both end with the first one's.
    pub async fn put_pki_key_once(
        &self,
        name: &str,
        certificate: &str,
        sealed_key: &str,
    ) -> Result<pki_key::Model> {
        pki_key::Entity::insert(pki_key::ActiveModel {
            name: Set(name.to_owned()),
            certificate: Set(certificate.to_owned()),
            private_key: Set(sealed_key.to_owned()),
            created_at: Set(now()),
        })
        .on_conflict_do_nothing_on([pki_key::Column::Name])
        .exec_without_returning(&self.db)
        .await?;
        self.pki_key(name).await?.ok_or_else(|| {
            super::StoreError::Db(sea_orm::DbErr::RecordNotFound(format!("pki key {name}")))
        })
    }

    /// Replaces the certificate stored under `name` (the server's own, re-issued), keeping
    /// its key.
    pub async fn set_pki_certificate(&self, name: &str, certificate: &str) -> Result<()> {
        pki_key::Entity::update_many()
            .col_expr(pki_key::Column::Certificate, Expr::value(certificate))
            .filter(pki_key::Column::Name.eq(name))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Records a certificate just issued.
    pub async fn insert_agent_cert(&self, cert: NewAgentCert) -> Result<agent_cert::Model> {
        let model = agent_cert::ActiveModel {
            fingerprint: Set(cert.fingerprint),
            tenant_id: Set(cert.tenant_id),
            agent_id: Set(cert.agent_id),
            key_id: Set(cert.key_id),
            public_key: Set(cert.public_key),
            serial: Set(cert.serial),
            certificate: Set(cert.certificate),
            issued_at: Set(cert.issued_at),
            expires_at: Set(cert.expires_at),
            revoked_at: Set(None),
        };
        Ok(sea_orm::ActiveModelTrait::insert(model, &self.db).await?)
    }

    /// The certificate whose DER hashes to `fingerprint`.
    pub async fn agent_cert(&self, fingerprint: &str) -> Result<Option<agent_cert::Model>> {
        Ok(agent_cert::Entity::find_by_id(fingerprint.to_owned())
            .one(&self.db)
            .await?)
    }

    /// Any certificate, of any agent, for the key whose SubjectPublicKeyInfo hashes to
    /// `public_key`.
    pub async fn agent_certs_for_public_key(
        &self,
        public_key: &str,
    ) -> Result<Vec<agent_cert::Model>> {
        Ok(agent_cert::Entity::find()
            .filter(agent_cert::Column::PublicKey.eq(public_key))
            .all(&self.db)
            .await?)
    }

    /// Whether the agent was revoked, and its newest live certificate at `at`.
    pub async fn cert_standing(
        &self,
        tenant_id: &str,
        agent_id: &str,
        at: DateTime<Utc>,
    ) -> Result<CertStanding> {
        let revoked =
            revoked_agent::Entity::find_by_id((tenant_id.to_owned(), agent_id.to_owned()))
                .one(&self.db)
                .await?
                .is_some();
        let live = agent_cert::Entity::find()
            .filter(agent_cert::Column::TenantId.eq(tenant_id))
            .filter(agent_cert::Column::AgentId.eq(agent_id))
            .filter(agent_cert::Column::ExpiresAt.gt(at))
            .filter(agent_cert::Column::RevokedAt.is_null())
            .order_by_desc(agent_cert::Column::ExpiresAt)
            .one(&self.db)
            .await?;
        Ok(CertStanding { revoked, live })
    }

    /// Whether the agent was ever issued a certificate.
    pub async fn agent_ever_enrolled(&self, tenant_id: &str, agent_id: &str) -> Result<bool> {
        Ok(agent_cert::Entity::find()
            .filter(agent_cert::Column::TenantId.eq(tenant_id))
            .filter(agent_cert::Column::AgentId.eq(agent_id))
            .count(&self.db)
            .await?
            > 0)
    }

    /// Revokes every certificate of the agent and, if it ever enrolled, refuses its
    /// enrollment until [`unrevoke_agent`](Self::unrevoke_agent). Returns whether it had
    /// enrolled.
    pub async fn revoke_agent_certs(&self, tenant_id: &str, agent_id: &str) -> Result<bool> {
        if !self.agent_ever_enrolled(tenant_id, agent_id).await? {
            return Ok(false);
        }
        let at = now();
        agent_cert::Entity::update_many()
            .col_expr(agent_cert::Column::RevokedAt, Expr::value(Some(at)))
            .filter(agent_cert::Column::TenantId.eq(tenant_id))
            .filter(agent_cert::Column::AgentId.eq(agent_id))
            .filter(agent_cert::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        revoked_agent::Entity::insert(revoked_agent::ActiveModel {
            tenant_id: Set(tenant_id.to_owned()),
            agent_id: Set(agent_id.to_owned()),
            revoked_at: Set(at),
        })
        .on_conflict_do_nothing_on([
            revoked_agent::Column::TenantId,
            revoked_agent::Column::AgentId,
        ])
        .exec_without_returning(&self.db)
        .await?;
        Ok(true)
    }

    /// Lets a revoked agent id enroll again; whether it was revoked.
    pub async fn unrevoke_agent(&self, tenant_id: &str, agent_id: &str) -> Result<bool> {
        let res = revoked_agent::Entity::delete_many()
            .filter(revoked_agent::Column::TenantId.eq(tenant_id))
            .filter(revoked_agent::Column::AgentId.eq(agent_id))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Whether the tenant has no room for one more agent (`max_agents`), for an enrollment of
    /// an id not registered yet; the registration checks again under the tenant's lock.
    pub async fn tenant_at_agent_quota(&self, tenant_id: &str) -> Result<Option<i64>> {
        let Some(max) = tenant::Entity::find_by_id(tenant_id.to_owned())
            .one(&self.db)
            .await?
            .and_then(|t| t.max_agents)
        else {
            return Ok(None);
        };
        let agents = agent::Entity::find()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .count(&self.db)
            .await?;
        Ok((agents >= u64::try_from(max).unwrap_or(0)).then_some(max))
    }
}
