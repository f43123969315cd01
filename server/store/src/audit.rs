//! The audit log's rows: appended one at a time per tenant, hash-chained, listed and verified.
//!
//! Each tenant has one chain. A row's `seq` is one more than the row before it (from 1), its
//! `prev_hash` is that row's `hash` (64 zeros for the first), and its `hash` is the SHA-256 of
//! [`canonical`]: every field of the row, `prev_hash` included, each prefixed with its length,
//! so that no two different rows encode alike. Changing, removing or reordering a row
//! therefore breaks the chain at that row, which [`Store::verify_audit`] finds.
//!
//! Appends are serialised per tenant by the tenant's `audit_heads` row: an append first upserts
//! it (`INSERT … ON CONFLICT DO UPDATE … RETURNING`), which on PostgreSQL takes the row's lock
//! until the transaction ends (so two nodes appending for one tenant take turns, and the second
//! reads the first's head once it commits), and on SQLite happens inside a `BEGIN IMMEDIATE`
//! transaction, which already holds the database's one write lock. The head also records the
//! last row, so rows deleted from the end are noticed too. A command's row may skip the read
//! and extend the head this process last wrote ([`AuditHeads`]): the head then moves only from
//! exactly that `seq` and hash, and otherwise the append is made again from the head read.
//!
//! The head also has a base (`base_seq`, `base_hash`), where the walk starts. It stays at the
//! genesis (row 0, [`GENESIS`]): Outpost keeps every tenant's log whole, so nothing would
//! vouch for a raised base, and a base raised around the server would let the rows below it be
//! deleted with the chain still verifying. The triggers (migration 22) refuse any move of a
//! base, any delete of a row or a head and any move of a head back; [`Store::verify_audit`]
//! reports a base found moved, and rows past the head, as a broken chain.
//!
//! An append made inside a transaction that changes something (a job, a key) commits or rolls
//! back with it: the change and its record are never one without the other. Such an append is
//! made last, just before the commit, so that the head's lock is held briefly and always after
//! the transaction's other locks (no lock-order cycle).
//!
//! The chain is tamper-evident, not tamper-proof: whoever can write the database can rewrite
//! a tenant's chain from a row onwards, hashes included. Keep the head hash that
//! `GET /api/audit/verify` answers somewhere else to notice that (docs/OPERATIONS.md).

use chrono::{DateTime, Utc};
use ring::digest;
use sea_orm::sea_query::{Expr, LikeExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionSession, TransactionTrait,
};

use super::{Result, Store, StoreError, audit_entry, audit_head, now};
use crate::domain::{Actor, AuditEvent};

/// The `prev_hash` of a chain's first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per query while verifying.
const VERIFY_PAGE: u64 = 1000;

/// What to append: who, from where, and the event.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// The tenant whose chain it goes to.
    pub tenant_id: String,
    /// Who did it.
    pub actor: Actor,
    /// From which client address, if over the network.
    pub address: Option<String>,
    /// What, to what, and a little detail (never a secret).
    pub event: AuditEvent,
}

/// Filters of a listing, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Rows whose actor id or label is this.
    pub actor: Option<String>,
    /// Rows of this action, or of every action of this kind (`agent_key` for
    /// `agent_key.*`).
    pub action: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// Only rows with a smaller `seq` (the cursor).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: u64,
}

/// What [`Store::verify_audit`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Every row from the base to the head chains.
    Intact {
        /// Rows checked.
        count: u64,
        /// The last row's `seq` (0: none).
        head_seq: i64,
        /// The last row's hash (to keep elsewhere and compare later).
        head_hash: String,
    },
    /// The first row that does not chain.
    Broken {
        /// Rows checked and found sound before it.
        count: u64,
        /// Its `seq` (for a missing row, the `seq` that is missing).
        seq: i64,
        /// Why.
        reason: String,
    },
}

/// The bytes a row's hash covers: a version tag, then every field (the tenant, `seq`, the time
/// to the microsecond, the actor's kind, id and label, the address, the action, the target's
/// type and id, the detail's text and `prev_hash`), each as a 4-byte big-endian length and its
/// UTF-8 bytes; an absent address has the length `0xffffffff` and no bytes.
pub fn canonical(row: &audit_entry::Model) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + row.detail.len());
    let mut field = |value: Option<&str>| match value {
        Some(text) => {
            let len = u32::try_from(text.len()).unwrap_or(u32::MAX - 1);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&text.as_bytes()[..len as usize]);
        }
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
    };
    field(Some("outpost-audit-v1"));
    field(Some(&row.tenant_id));
    field(Some(&row.seq.to_string()));
    field(Some(&timestamp(row.at)));
    field(Some(&row.actor_kind));
    field(Some(&row.actor_id));
    field(Some(&row.actor_label));
    field(row.address.as_deref());
    field(Some(&row.action));
    field(Some(&row.target_type));
    field(Some(&row.target_id));
    field(Some(&row.detail));
    field(Some(&row.prev_hash));
    out
}

/// The hash a row must carry: SHA-256 of [`canonical`], in lowercase hex.
pub fn row_hash(row: &audit_entry::Model) -> String {
    hex::encode(digest::digest(&digest::SHA256, &canonical(row)))
}

/// `record` as the row after (`seq`, `prev_hash`) in its tenant's chain, hashed.
pub(crate) fn chained_row(
    record: &AuditRecord,
    seq: i64,
    prev_hash: String,
    at: DateTime<Utc>,
) -> Result<audit_entry::Model> {
    let detail = serde_json::to_string(&record.event.detail)
        .map_err(|e| StoreError::Config(format!("audit detail: {e}")))?;
    let mut row = audit_entry::Model {
        tenant_id: record.tenant_id.clone(),
        seq: seq + 1,
        at,
        actor_kind: record.actor.kind.as_str().to_owned(),
        actor_id: record.actor.id.clone(),
        actor_label: record.actor.label.clone(),
        address: record.address.clone(),
        action: record.event.action.as_str().to_owned(),
        target_type: record.event.target.as_str().to_owned(),
        target_id: record.event.target_id.clone(),
        detail,
        prev_hash,
        hash: String::new(),
    };
    row.hash = row_hash(&row);
    Ok(row)
}

/// Each tenant's chain head (`seq`, `hash`) as this process last extended it: a guess that
/// saves reading the head before an append, never trusted. An append made with it moves the
/// head only from exactly that `seq` and hash, inside the write transaction (`UPDATE …
/// WHERE seq = ? AND hash = ?`); when that changes no row (another process, another path or
/// a rolled-back transaction moved the head), the append is made again from the head read.
/// One entry per tenant that appended through it.
#[derive(Debug, Default)]
pub struct AuditHeads {
    heads: std::sync::Mutex<std::collections::HashMap<String, (i64, String)>>,
}

impl AuditHeads {
    /// The head last seen for `tenant_id`.
    pub(crate) fn get(&self, tenant_id: &str) -> Option<(i64, String)> {
        self.lock().get(tenant_id).cloned()
    }

    /// `row` is now its tenant's head (set inside the transaction that appended it, while it
    /// still holds the write lock, so that the next append reads it).
    pub(crate) fn set(&self, row: &audit_entry::Model) {
        self.lock()
            .insert(row.tenant_id.clone(), (row.seq, row.hash.clone()));
    }

    /// Forgets `tenant_id`'s head: the guess was wrong.
    pub(crate) fn forget(&self, tenant_id: &str) {
        self.lock().remove(tenant_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (i64, String)>> {
        // A guess: what a panicking holder left is as good as any.
        self.heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A time as hashed: RFC 3339, UTC, to the microsecond (what both databases keep).
fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Appends `record` to its tenant's chain in a write transaction of its own (a savepoint
    /// when this handle is a transaction already). Returns the row.
    pub async fn append_audit(&self, record: &AuditRecord) -> Result<audit_entry::Model> {
        let txn = self.begin_write().await?;
        let row = txn.append_audit_now(record).await?;
        txn.db.commit().await?;
        Ok(row)
    }

    /// Appends `record` on this handle as it is: call it on a transaction's handle (see
    /// [`Store::begin`]), last, just before the commit, so that the change and its record
    /// commit together.
    pub async fn append_audit_now(&self, record: &AuditRecord) -> Result<audit_entry::Model> {
        self.append_audits_now(std::slice::from_ref(record))
            .await?
            .pop()
            .ok_or_else(|| StoreError::Config("an audit record was not appended".into()))
    }

    /// [`Store::append_audit_now`] for many records at once (a batch of schedules' fires):
    /// per tenant one read of the chain's head, one insert of its rows, one update of the
    /// head, in the caller's transaction. The rows chain exactly as appended one by one; they
    /// are answered by tenant, each tenant's in the order given.
    pub async fn append_audits_now(
        &self,
        records: &[AuditRecord],
    ) -> Result<Vec<audit_entry::Model>> {
        let backend = self.db.get_database_backend();
        let mark = |n: usize| match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        };
        let mut appended = Vec::with_capacity(records.len());
        let mut tenants: Vec<&str> = records.iter().map(|r| r.tenant_id.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        for tenant in tenants {
            let sql = format!(
                "INSERT INTO audit_heads (tenant_id, seq, hash, base_seq, base_hash) \
                 VALUES ({}, 0, '{GENESIS}', 0, '{GENESIS}') \
                 ON CONFLICT (tenant_id) DO UPDATE SET tenant_id = excluded.tenant_id \
                 RETURNING seq, hash",
                mark(1)
            );
            let head = self
                .db
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    sql,
                    [tenant.into()],
                ))
                .await?
                .ok_or_else(|| StoreError::Config(format!("no audit head for tenant {tenant}")))?;
            let mut seq: i64 = head.try_get_by_index(0)?;
            let mut hash: String = head.try_get_by_index(1)?;
            let at = now();
            let mut rows = Vec::new();
            for record in records.iter().filter(|r| r.tenant_id == tenant) {
                let row = chained_row(record, seq, hash, at)?;
                seq = row.seq;
                hash = row.hash.clone();
                rows.push(audit_entry::ActiveModel::from(row.clone()));
                appended.push(row);
            }
            // 13 values a row: well under SQLite's 32,766 and PostgreSQL's 65,535 per statement.
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                let chunk: Vec<_> = rows.by_ref().take(1000).collect();
                audit_entry::Entity::insert_many(chunk)
                    .exec_without_returning(&self.db)
                    .await?;
            }
            audit_head::Entity::update_many()
                .col_expr(audit_head::Column::Seq, Expr::value(seq))
                .col_expr(audit_head::Column::Hash, Expr::value(hash))
                .filter(audit_head::Column::TenantId.eq(tenant))
                .exec(&self.db)
                .await?;
        }
        Ok(appended)
    }

    /// A tenant's rows matching `filter`, newest first.
    pub async fn list_audit(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
    ) -> Result<Vec<audit_entry::Model>> {
        let mut query =
            audit_entry::Entity::find().filter(audit_entry::Column::TenantId.eq(tenant_id));
        if let Some(actor) = &filter.actor {
            query = query.filter(
                Condition::any()
                    .add(audit_entry::Column::ActorId.eq(actor))
                    .add(audit_entry::Column::ActorLabel.eq(actor)),
            );
        }
        if let Some(action) = &filter.action {
            let mut pattern = String::with_capacity(action.len() + 2);
            for c in action.chars() {
                if matches!(c, '%' | '_' | '\\') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
            pattern.push_str(".%");
            query = query.filter(
                Condition::any()
                    .add(audit_entry::Column::Action.eq(action))
                    .add(audit_entry::Column::Action.like(LikeExpr::new(pattern).escape('\\'))),
            );
        }
        if let Some(since) = filter.since {
            query = query.filter(audit_entry::Column::At.gte(since));
        }
        if let Some(until) = filter.until {
            query = query.filter(audit_entry::Column::At.lt(until));
        }
        if let Some(before) = filter.before {
            query = query.filter(audit_entry::Column::Seq.lt(before));
        }
        Ok(query
            .order_by_desc(audit_entry::Column::Seq)
            .limit(filter.limit)
            .all(&self.db)
            .await?)
    }

    /// Walks a tenant's chain from its base to its head and says whether every row chains,
    /// or which is the first that does not and why. Rows appended while it walks are left
    /// for the next check (it stops at the head it read first).
    pub async fn verify_audit(&self, tenant_id: &str) -> Result<ChainCheck> {
        let Some(head) = audit_head::Entity::find_by_id(tenant_id.to_owned())
            .one(&self.db)
            .await?
        else {
            // Nothing appended yet; a row without a head was written around the server.
            let stray = audit_entry::Entity::find()
                .filter(audit_entry::Column::TenantId.eq(tenant_id))
                .order_by_asc(audit_entry::Column::Seq)
                .one(&self.db)
                .await?;
            return Ok(match stray {
                None => ChainCheck::Intact {
                    count: 0,
                    head_seq: 0,
                    head_hash: GENESIS.to_owned(),
                },
                Some(row) => ChainCheck::Broken {
                    count: 0,
                    seq: row.seq,
                    reason: format!("row {} exists but the chain has no head", row.seq),
                },
            });
        };
        if let Some((seq, reason)) = moved_base(&head) {
            return Ok(ChainCheck::Broken {
                count: 0,
                seq,
                reason,
            });
        }
        let mut expected_seq = head.base_seq + 1;
        let mut prev_hash = head.base_hash.clone();
        let mut count = 0u64;
        loop {
            let page = audit_entry::Entity::find()
                .filter(audit_entry::Column::TenantId.eq(tenant_id))
                .filter(audit_entry::Column::Seq.gte(expected_seq))
                .filter(audit_entry::Column::Seq.lte(head.seq))
                .order_by_asc(audit_entry::Column::Seq)
                .limit(VERIFY_PAGE)
                .all(&self.db)
                .await?;
            let full = page.len() as u64 == VERIFY_PAGE;
            for row in page {
                if let Some(broken) = check_row(&row, expected_seq, &prev_hash) {
                    return Ok(ChainCheck::Broken {
                        count,
                        seq: broken.0,
                        reason: broken.1,
                    });
                }
                count += 1;
                expected_seq = row.seq + 1;
                prev_hash = row.hash;
            }
            if !full {
                break;
            }
        }
        if expected_seq <= head.seq {
            let reason = if expected_seq == head.seq {
                format!(
                    "row {expected_seq} is missing: the chain's head is row {}",
                    head.seq
                )
            } else {
                format!(
                    "rows {expected_seq} to {} are missing: the chain's head is row {}",
                    head.seq, head.seq
                )
            };
            return Ok(ChainCheck::Broken {
                count,
                seq: expected_seq,
                reason,
            });
        }
        if prev_hash != head.hash {
            return Ok(ChainCheck::Broken {
                count: count.saturating_sub(1),
                seq: head.seq,
                reason: format!(
                    "row {}'s hash is not the one the chain's head recorded",
                    head.seq
                ),
            });
        }
        if let Some((seq, reason)) = self.past_the_head(tenant_id, head.seq).await? {
            return Ok(ChainCheck::Broken { count, seq, reason });
        }
        Ok(ChainCheck::Intact {
            count,
            head_seq: head.seq,
            head_hash: head.hash,
        })
    }

    /// A row of the tenant's past the head `head_seq` that the head, read again, does not
    /// cover either: the head was moved back (on SQLite an `INSERT OR REPLACE` of it can put
    /// an empty one back, hiding every row from a check that stops at the head). A row
    /// appended since the head was first read is covered by the head read now, since a row
    /// and its head's move commit together.
    async fn past_the_head(&self, tenant_id: &str, head_seq: i64) -> Result<Option<(i64, String)>> {
        let Some(row) = audit_entry::Entity::find()
            .filter(audit_entry::Column::TenantId.eq(tenant_id))
            .filter(audit_entry::Column::Seq.gt(head_seq))
            .order_by_desc(audit_entry::Column::Seq)
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let now = audit_head::Entity::find_by_id(tenant_id.to_owned())
            .one(&self.db)
            .await?
            .map_or(0, |head| head.seq);
        Ok((row.seq > now).then(|| {
            (
                now + 1,
                format!(
                    "row {} exists past the chain's head (row {now}): the head was moved back",
                    row.seq
                ),
            )
        }))
    }
}

/// Where and how a head's base left the genesis, if it did. Outpost never moves a base (no
/// checkpoint exists that could vouch for one, and retention keeps the log whole), and the
/// triggers refuse a move since migration 22; a base found moved was written around the
/// server, typically to let the rows up to it be deleted unnoticed.
fn moved_base(head: &audit_head::Model) -> Option<(i64, String)> {
    if head.base_seq == 0 && head.base_hash == GENESIS {
        return None;
    }
    Some(if head.base_seq > 0 {
        (
            head.base_seq,
            format!(
                "the chain's base was moved to row {} without a checkpoint: Outpost never \
                 moves it, so rows 1 to {} are outside the check and may have been deleted",
                head.base_seq, head.base_seq
            ),
        )
    } else {
        (
            1,
            format!(
                "the chain's base was changed to row {} with hash {:?} without a checkpoint: \
                 Outpost never moves it from row 0 and the genesis hash",
                head.base_seq,
                // Written around the server: any text, so only as much as a hash needs.
                head.base_hash.chars().take(64).collect::<String>()
            ),
        )
    })
}

/// Why `row` does not continue a chain whose next row is `expected_seq` after a row hashed
/// `prev_hash`, with the `seq` to report; `None` when it does.
fn check_row(
    row: &audit_entry::Model,
    expected_seq: i64,
    prev_hash: &str,
) -> Option<(i64, String)> {
    if row.seq != expected_seq {
        let missing = if row.seq == expected_seq + 1 {
            format!("row {expected_seq} is missing")
        } else {
            format!("rows {expected_seq} to {} are missing", row.seq - 1)
        };
        return Some((
            expected_seq,
            format!("{missing}: the chain goes on at row {}", row.seq),
        ));
    }
    if row.prev_hash != prev_hash {
        return Some((
            row.seq,
            format!(
                "row {}'s prev_hash is not row {}'s hash: a row before it was replaced",
                row.seq,
                row.seq - 1
            ),
        ));
    }
    if row_hash(row) != row.hash {
        return Some((
            row.seq,
            format!(
                "row {}'s contents do not match its hash: it was changed after it was written",
                row.seq
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> audit_entry::Model {
        audit_entry::Model {
            tenant_id: "t".into(),
            seq: 1,
            at: chrono::DateTime::UNIX_EPOCH,
            actor_kind: "api_key".into(),
            actor_id: "k".into(),
            actor_label: "owner".into(),
            address: None,
            action: "job.trigger".into(),
            target_type: "job".into(),
            target_id: "j".into(),
            detail: "{}".into(),
            prev_hash: GENESIS.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = row_hash(&row());
        type Change = Box<dyn Fn(&mut audit_entry::Model)>;
        let changes: Vec<Change> = vec![
            Box::new(|r| r.tenant_id = "u".into()),
            Box::new(|r| r.seq = 2),
            Box::new(|r| r.at += chrono::Duration::microseconds(1)),
            Box::new(|r| r.actor_kind = "user".into()),
            Box::new(|r| r.actor_id = "l".into()),
            Box::new(|r| r.actor_label = "other".into()),
            Box::new(|r| r.address = Some(String::new())),
            Box::new(|r| r.action = "job.cancel".into()),
            Box::new(|r| r.target_type = "agent".into()),
            Box::new(|r| r.target_id = "x".into()),
            Box::new(|r| r.detail = "{\"a\":1}".into()),
            Box::new(|r| r.prev_hash = "1".repeat(64)),
        ];
        for change in changes {
            let mut r = row();
            change(&mut r);
            assert_ne!(row_hash(&r), base);
        }
        // Hashing ignores the stored hash itself.
        let mut r = row();
        r.hash = "anything".into();
        assert_eq!(row_hash(&r), base);
    }

    #[test]
    fn a_base_other_than_the_genesis_is_reported_where_it_is() {
        let mut head = audit_head::Model {
            tenant_id: "t".into(),
            seq: 6,
            hash: "h".into(),
            base_seq: 0,
            base_hash: GENESIS.into(),
        };
        assert_eq!(moved_base(&head), None);
        head.base_seq = 3;
        let (seq, why) = moved_base(&head).expect("raised");
        assert_eq!(seq, 3);
        assert!(why.contains("moved to row 3 without a checkpoint"), "{why}");
        head.base_seq = 0;
        head.base_hash = "1".repeat(100);
        let (seq, why) = moved_base(&head).expect("rehashed");
        assert_eq!(seq, 1);
        assert!(
            why.contains(&"1".repeat(64)) && !why.contains(&"1".repeat(65)),
            "{why}"
        );
    }

    #[test]
    fn fields_cannot_slide_into_each_other() {
        let mut a = row();
        a.actor_id = "ab".into();
        a.actor_label = "c".into();
        let mut b = row();
        b.actor_id = "a".into();
        b.actor_label = "bc".into();
        assert_ne!(row_hash(&a), row_hash(&b));
    }

    #[test]
    fn a_row_is_checked_for_place_link_and_contents() {
        let mut r = row();
        r.hash = row_hash(&r);
        assert_eq!(check_row(&r, 1, GENESIS), None);
        assert_eq!(check_row(&r, 1, &"1".repeat(64)).map(|b| b.0), Some(1));
        let (seq, why) = check_row(&r, 0, GENESIS).expect("gap");
        assert_eq!(seq, 0);
        assert!(why.contains("row 0 is missing"), "{why}");
        r.action = "job.cancel".into();
        let (seq, why) = check_row(&r, 1, GENESIS).expect("edited");
        assert_eq!(seq, 1);
        assert!(why.contains("changed"), "{why}");
    }
}
