//! Webhook state: the tenant's signing secret (sealed), pending deliveries and attempts.

use super::now;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use sea_orm::{ConnectionTrait, TransactionTrait};

use super::{Result, Store, StoreError, job, new_id, tenant, webhook_attempt};
use crate::seal::MasterKey;

/// One recorded delivery attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Its number, from 1.
    pub attempt: i32,
    /// HTTP status, when the receiver answered.
    pub status_code: Option<i32>,
    /// What went wrong, when it did.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// The tenant's webhook signing secret, created on first use.
    pub async fn webhook_secret(&self, tenant_id: &str, master: &MasterKey) -> Result<String> {
        let tenant = tenant::Entity::find_by_id(tenant_id.to_owned())
            .one(&self.db)
            .await?
            .ok_or_else(|| StoreError::Config(format!("no tenant {tenant_id}")))?;
        if let Some(sealed) = &tenant.webhook_secret {
            let plain = master.open(tenant_id, sealed).map_err(StoreError::Config)?;
            return String::from_utf8(plain)
                .map_err(|_| StoreError::Config("webhook secret is not UTF-8".into()));
        }
        self.rotate_webhook_secret(tenant_id, master).await
    }

    /// Replaces the tenant's webhook signing secret; returns the new one.
    pub async fn rotate_webhook_secret(
        &self,
        tenant_id: &str,
        master: &MasterKey,
    ) -> Result<String> {
        let secret = format!("whsec_{}", &MasterKey::generate()[..48]);
        tenant::Entity::update_many()
            .col_expr(
                tenant::Column::WebhookSecret,
                Expr::value(master.seal(tenant_id, secret.as_bytes())),
            )
            .filter(tenant::Column::Id.eq(tenant_id))
            .exec(&self.db)
            .await?;
        Ok(secret)
    }

    /// Records one attempt.
    pub async fn record_webhook_attempt(
        &self,
        tenant_id: &str,
        job_id: &str,
        url: &str,
        attempt: Attempt,
    ) -> Result<()> {
        webhook_attempt::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(tenant_id.to_owned()),
            job_id: Set(job_id.to_owned()),
            url: Set(url.to_owned()),
            attempt: Set(attempt.attempt),
            at: Set(now()),
            status_code: Set(attempt.status_code),
            error: Set(attempt.error),
            duration_ms: Set(attempt.duration_ms),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// Sets a job's webhook state.
    pub async fn set_webhook_status(
        &self,
        tenant_id: &str,
        job_id: &str,
        status: &str,
    ) -> Result<()> {
        job::Entity::update_many()
            .col_expr(job::Column::WebhookStatus, Expr::value(status))
            .filter(job::Column::TenantId.eq(tenant_id))
            .filter(job::Column::Id.eq(job_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// A job's delivery attempts, in order.
    pub async fn webhook_attempts(
        &self,
        tenant_id: &str,
        job_id: &str,
    ) -> Result<Vec<webhook_attempt::Model>> {
        Ok(webhook_attempt::Entity::find()
            .filter(webhook_attempt::Column::TenantId.eq(tenant_id))
            .filter(webhook_attempt::Column::JobId.eq(job_id))
            .order_by_asc(webhook_attempt::Column::Id)
            .all(&self.db)
            .await?)
    }
}
