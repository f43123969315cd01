//! Nodes, their leases and claims: what several server processes on one PostgreSQL need to
//! share (see `outpost_web::cluster` for who calls what, and docs/ARCHITECTURE.md, "Several nodes",
//! for the claim rule).
//!
//! Every step that only one node may take is a conditional statement whose affected-row
//! count says who took it: a dead node's row is deleted by exactly one live node (which then
//! releases its agents), a claim row is updated by exactly one node while it is free, and a
//! job's webhook is claimed with `FOR UPDATE SKIP LOCKED`, so that nodes asking at once get
//! different jobs instead of waiting on each other's rows.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Set, Statement,
};

use super::{Result, Store, agent, claim, command, delivery, job, mail_outbox, node, now, state};

/// An agent connected to another node, as this node learns it from the store.
#[derive(Debug, Clone)]
pub struct RemoteAgent {
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// The key it registered with.
    pub key_id: String,
    /// The node holding it.
    pub node_id: String,
    /// When it connected there.
    pub connected_at: Option<DateTime<Utc>>,
    /// How (`websocket`, `http`).
    pub transport: Option<String>,
}

impl Store {
    /// Adds this node's row.
    pub async fn register_node(&self, row: node::Model) -> Result<()> {
        node::ActiveModel::from(row).insert(&self.db).await?;
        Ok(())
    }

    /// The database's clock, which every node's lease is measured by: nodes' own clocks may
    /// disagree (a host without NTP), and a node running ahead by more than a lease's slack
    /// would otherwise take every live node for dead at each renewal (scripts/faults.sh,
    /// `clock-skew`). PostgreSQL's `clock_timestamp()`; on SQLite, with its single node, this
    /// process's clock.
    pub async fn database_now(&self) -> Result<DateTime<Utc>> {
        let backend = self.db.get_database_backend();
        if backend != DbBackend::Postgres {
            return Ok(now());
        }
        let row = self
            .db
            .query_one_raw(Statement::from_string(backend, "SELECT clock_timestamp()"))
            .await?;
        let at: Option<DateTime<Utc>> = match row {
            Some(row) => row.try_get_by_index(0)?,
            None => None,
        };
        use chrono::SubsecRound;
        Ok(at.map_or_else(now, |at| at.trunc_subsecs(6)))
    }

    /// Renews this node's lease (renewed at `at`, by [`Store::database_now`]) until `until`,
    /// with its agent count. Returns `false` when its row is gone: another node took it for
    /// dead (its lease ran out while this one could not reach the database) and released its
    /// agents; the caller registers again.
    pub async fn renew_node(
        &self,
        id: &str,
        agents: i64,
        at: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let res = node::Entity::update_many()
            .col_expr(node::Column::RenewedAt, Expr::value(at))
            .col_expr(node::Column::LeaseUntil, Expr::value(until))
            .col_expr(node::Column::Agents, Expr::value(agents))
            .filter(node::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Every node row, live or not yet taken over, by name.
    pub async fn list_nodes(&self) -> Result<Vec<node::Model>> {
        Ok(node::Entity::find()
            .order_by_asc(node::Column::Name)
            .order_by_asc(node::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Takes over the nodes whose lease ran out before `now`: deletes each row (one node wins
    /// each) and releases that node's agents (no node holds them now), disconnected when that
    /// node was last known alive, its last renewal: a whole cluster restarted is then judged
    /// like a restarted single server (`store::presence`, the sweep's restart grace). Returns
    /// the ids it took over.
    pub async fn take_over_dead_nodes(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
        let dead = node::Entity::find()
            .filter(node::Column::LeaseUntil.lt(now))
            .all(&self.db)
            .await?;
        let mut taken = Vec::new();
        for row in dead {
            let txn = super::begin_write(&self.db).await?;
            let deleted = node::Entity::delete_many()
                .filter(node::Column::Id.eq(&row.id))
                .filter(node::Column::LeaseUntil.lt(now))
                .exec(&txn)
                .await?;
            if deleted.rows_affected == 1 {
                agent::Entity::update_many()
                    .col_expr(agent::Column::NodeId, Expr::value(Option::<String>::None))
                    .col_expr(agent::Column::DisconnectedAt, Expr::value(row.renewed_at))
                    .filter(agent::Column::NodeId.eq(&row.id))
                    .exec(&txn)
                    .await?;
                release_sends(&txn, &row.id).await?;
                taken.push(row.id);
            }
            txn.commit().await?;
        }
        if !taken.is_empty() {
            crate::credential_cache::agents_changed();
        }
        Ok(taken)
    }

    /// At the start of a server that is the only one (SQLite, node `node_id`): lets go of the
    /// sends a previous process of it claimed and did not finish (it was killed between
    /// sending and recording), so that they go out again now rather than when the claim
    /// lapses. Returns how many.
    pub async fn release_sends_at_start(&self, node_id: &str) -> Result<u64> {
        let txn = super::begin_write(&self.db).await?;
        let released = release_sends(&txn, node_id).await?;
        txn.commit().await?;
        Ok(released)
    }

    /// Removes this node's row and releases its agents, at a clean shutdown.
    pub async fn remove_node(&self, id: &str) -> Result<()> {
        let txn = super::begin_write(&self.db).await?;
        node::Entity::delete_many()
            .filter(node::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        agent::Entity::update_many()
            .col_expr(agent::Column::NodeId, Expr::value(Option::<String>::None))
            .col_expr(agent::Column::DisconnectedAt, Expr::value(now()))
            .filter(agent::Column::NodeId.eq(id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        crate::credential_cache::agents_changed();
        Ok(())
    }

    /// The agents other nodes hold.
    pub async fn remote_agents(&self, own_node: &str) -> Result<Vec<RemoteAgent>> {
        type Row = (
            String,
            String,
            String,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<String>,
        );
        let rows: Vec<Row> = agent::Entity::find()
            .select_only()
            .columns([
                agent::Column::TenantId,
                agent::Column::Id,
                agent::Column::KeyId,
                agent::Column::NodeId,
                agent::Column::ConnectedAt,
                agent::Column::Transport,
            ])
            .filter(agent::Column::NodeId.is_not_null())
            .filter(agent::Column::NodeId.ne(own_node))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(
                |(tenant_id, agent_id, key_id, node_id, connected_at, transport)| {
                    Some(RemoteAgent {
                        tenant_id,
                        agent_id,
                        key_id,
                        node_id: node_id?,
                        connected_at,
                        transport,
                    })
                },
            )
            .collect())
    }

    /// Takes, or keeps, the claim `name` for `node_id` until `until`; returns whether this
    /// node holds it. A claim is free once its holder's deadline passed, so a node that dies
    /// holding one delays the work by at most one deadline.
    pub async fn try_claim(&self, name: &str, node_id: &str, until: DateTime<Utc>) -> Result<bool> {
        let now = now();
        let inserted = claim::Entity::insert(claim::ActiveModel {
            name: Set(name.to_owned()),
            node_id: Set(node_id.to_owned()),
            until: Set(until),
        })
        .on_conflict(
            OnConflict::column(claim::Column::Name)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        if inserted == 1 {
            return Ok(true);
        }
        let taken = claim::Entity::update_many()
            .col_expr(claim::Column::NodeId, Expr::value(node_id))
            .col_expr(claim::Column::Until, Expr::value(until))
            .filter(claim::Column::Name.eq(name))
            .filter(
                Condition::any()
                    .add(claim::Column::NodeId.eq(node_id))
                    .add(claim::Column::Until.lt(now)),
            )
            .exec(&self.db)
            .await?;
        Ok(taken.rows_affected == 1)
    }

    /// Commands by id, whatever their tenant (ids come from another node's notification).
    pub async fn commands_by_ids(&self, ids: &[String]) -> Result<Vec<command::Model>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(command::Entity::find()
            .filter(command::Column::Id.is_in(ids.iter().cloned()))
            .all(&self.db)
            .await?)
    }

    /// Claims up to `limit` finished jobs whose webhook is still to be delivered, oldest
    /// first, for `node_id` until `until`: those nobody claimed, whose claim ran out, or
    /// that this node holds already. On PostgreSQL, `FOR UPDATE SKIP LOCKED` makes nodes
    /// asking at once take different jobs.
    pub async fn claim_webhooks(
        &self,
        node_id: &str,
        until: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<job::Model>> {
        let ids = self
            .claim_ids(
                &super::ClaimSpec {
                    table: "jobs",
                    by: "webhook_claimed_by",
                    until: "webhook_claimed_until",
                    due: "webhook_status = 'pending'",
                    reclaim_own: true,
                    order: "id",
                },
                node_id,
                until,
                now(),
                limit,
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(job::Entity::find()
            .filter(job::Column::Id.is_in(ids))
            .order_by_asc(job::Column::Id)
            .all(&self.db)
            .await?)
    }
}

/// Lets go of `node_id`'s claims on what is sent at least once, each with an id its receiver
/// deduplicates by (integration deliveries, mail, job webhooks): the claims of a node that
/// died. Their claims run for a minute or more (longer than any one attempt), so without
/// this a send the dead node had begun would wait that long. Should the node be only paused
/// and resume, its attempt's record is refused (it no longer holds the claim) and the send
/// is made again: twice, never lost. Schedules and rollouts are not released here: their
/// claims are short, and their steps are not sends.
async fn release_sends<C: ConnectionTrait>(db: &C, node_id: &str) -> Result<u64> {
    let none = || Expr::value(Option::<String>::None);
    let never = || Expr::value(Option::<DateTime<Utc>>::None);
    let deliveries = delivery::Entity::update_many()
        .col_expr(delivery::Column::ClaimedBy, none())
        .col_expr(delivery::Column::ClaimedUntil, never())
        .filter(delivery::Column::ClaimedBy.eq(node_id))
        .exec(db)
        .await?;
    let mail = mail_outbox::Entity::update_many()
        .col_expr(mail_outbox::Column::ClaimedBy, none())
        .col_expr(mail_outbox::Column::ClaimedUntil, never())
        .filter(mail_outbox::Column::ClaimedBy.eq(node_id))
        .exec(db)
        .await?;
    let webhooks = job::Entity::update_many()
        .col_expr(job::Column::WebhookClaimedBy, none())
        .col_expr(job::Column::WebhookClaimedUntil, never())
        .filter(job::Column::WebhookClaimedBy.eq(node_id))
        .exec(db)
        .await?;
    Ok(deliveries.rows_affected + mail.rows_affected + webhooks.rows_affected)
}

impl Store {
    /// The pending commands of the agents `node_id` holds: what it re-reads after its
    /// listening connection was down, when notifications about them may have been lost.
    pub async fn pending_for_node(&self, node_id: &str) -> Result<Vec<command::Model>> {
        let held = agent::Entity::find()
            .select_only()
            .column(agent::Column::TenantId)
            .column(agent::Column::Id)
            .filter(agent::Column::NodeId.eq(node_id))
            .into_query();
        Ok(command::Entity::find()
            .filter(Expr::cust(state::OPEN_SQL))
            .filter(command::Column::State.eq(state::PENDING))
            .filter(
                Expr::tuple([
                    Expr::col(command::Column::TenantId),
                    Expr::col(command::Column::AgentId),
                ])
                .in_subquery(held),
            )
            .all(&self.db)
            .await?)
    }

    /// The ids and agents of one job's pending runs: what a node reads when told that a job
    /// was created elsewhere, to keep the runs of the agents it holds and read those by id
    /// ([`Store::commands_by_ids`]). Two narrow reads on keys, not a join of the job's runs
    /// with the node's agents: a job is new when this runs, so PostgreSQL's statistics do
    /// not know its runs yet, and a join planned on them probed the agents' table once per
    /// run, or worse (figures: docs/BENCHMARKS.md, "The fan-out to 30,000 agents on three
    /// nodes"). This costs the job's size, whatever the fleet's.
    pub async fn pending_runs_of_job(
        &self,
        tenant_id: &str,
        job_id: &str,
    ) -> Result<Vec<(String, String)>> {
        Ok(command::Entity::find()
            .select_only()
            .column(command::Column::Id)
            .column(command::Column::AgentId)
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id))
            .filter(command::Column::State.eq(state::PENDING))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Records `node_id` as the holder of these agents again, where no node holds them: after
    /// this node's lease lapsed (the database was out of reach) another node released them,
    /// though their connections stayed here.
    ///
    /// In key order, as the writer records heartbeats, so that the two do not deadlock on
    /// the agents' rows; a chunk that loses a conflict anyway is tried again, since a failed
    /// chunk would leave its agents held by no node while they are connected here.
    pub async fn hold_agents(&self, node_id: &str, agents: &[(String, String)]) -> Result<()> {
        let mut agents: Vec<&(String, String)> = agents.iter().collect();
        agents.sort_unstable();
        for chunk in agents.chunks(512) {
            let mut conflicts = 0;
            loop {
                match self.hold_chunk(node_id, chunk).await {
                    Err(err) if err.is_conflict() && conflicts < 3 => conflicts += 1,
                    held => break held?,
                }
            }
            crate::credential_cache::agents_changed();
        }
        Ok(())
    }

    async fn hold_chunk(&self, node_id: &str, chunk: &[&(String, String)]) -> Result<()> {
        let txn = super::begin_write(&self.db).await?;
        for (tenant_id, agent_id) in chunk {
            agent::Entity::update_many()
                .col_expr(agent::Column::NodeId, Expr::value(node_id))
                .filter(agent::Column::TenantId.eq(tenant_id))
                .filter(agent::Column::Id.eq(agent_id))
                .filter(agent::Column::NodeId.is_null())
                .exec(&txn)
                .await?;
        }
        Ok(txn.commit().await?)
    }
}

impl Store {
    /// Records `fingerprint` as the master key's on first use; afterwards, whether the given
    /// one is the recorded one. Secrets sealed by one node must open on every other, and after
    /// a restart: a server started with another key would store secrets nobody else can read
    /// and fail to send the ones stored before.
    pub async fn check_master_key(&self, fingerprint: &str) -> Result<bool> {
        let backend = self.db.get_database_backend();
        let (insert, select) = match backend {
            DbBackend::Postgres => (
                "INSERT INTO settings (name, value) VALUES ('master_key', $1) ON CONFLICT (name) DO NOTHING",
                "SELECT value FROM settings WHERE name = 'master_key'",
            ),
            _ => (
                "INSERT INTO settings (name, value) VALUES ('master_key', ?) ON CONFLICT (name) DO NOTHING",
                "SELECT value FROM settings WHERE name = 'master_key'",
            ),
        };
        self.db
            .execute_raw(Statement::from_sql_and_values(
                backend,
                insert,
                [fingerprint.into()],
            ))
            .await?;
        let row = self
            .db
            .query_one_raw(Statement::from_string(backend, select))
            .await?;
        let recorded: Option<String> = match row {
            Some(row) => row.try_get_by_index(0)?,
            None => None,
        };
        Ok(recorded.as_deref() == Some(fingerprint))
    }
}
