//! Schema migrations, applied in order at start-up inside one transaction each.
//!
//! Migrations are plain SQL so that what runs is exactly what is reviewed. Types that differ
//! between SQLite and PostgreSQL are written as placeholders (`{ts}`, `{json}`) and filled in
//! for the backend at hand. A migration, once released, is never edited: add a new one.

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, TransactionTrait};

/// Every migration, oldest first. The index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    // 1: tenants, keys, agents, commands.
    r#"
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at {ts} NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts}
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
CREATE TABLE agent_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    permissions {json} NOT NULL,
    tags {json} NOT NULL,
    status TEXT NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts},
    last_used_at {ts}
);
CREATE INDEX agent_keys_tenant ON agent_keys (tenant_id);
CREATE TABLE agents (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    ip TEXT NOT NULL,
    version TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    protocol INTEGER NOT NULL,
    capabilities {json} NOT NULL,
    agent_tags {json} NOT NULL,
    server_tags {json} NOT NULL,
    scripts {json} NOT NULL,
    first_seen {ts} NOT NULL,
    last_seen {ts} NOT NULL,
    connected_at {ts},
    disconnected_at {ts},
    last_heartbeat {json},
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE commands (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    agent_id TEXT NOT NULL,
    command TEXT NOT NULL,
    data {json} NOT NULL,
    timeout_s INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    delivered_at {ts},
    finished_at {ts},
    success BOOLEAN,
    result {json},
    error_code TEXT,
    error_message TEXT
);
CREATE INDEX commands_agent_state ON commands (tenant_id, agent_id, state);
CREATE INDEX commands_state_expiry ON commands (state, expires_at);
"#,
    // 2: jobs, script runs and their output.
    r#"
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    command TEXT NOT NULL,
    script TEXT,
    data {json} NOT NULL,
    target {json} NOT NULL,
    timeout_s INTEGER NOT NULL,
    ttl_s INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at {ts} NOT NULL,
    finished_at {ts},
    idempotency_key TEXT,
    webhook_url TEXT
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key);
CREATE INDEX jobs_tenant_id ON jobs (tenant_id, id);
ALTER TABLE commands ADD COLUMN job_id TEXT;
ALTER TABLE commands ADD COLUMN started_at {ts};
ALTER TABLE commands ADD COLUMN exit_code INTEGER;
ALTER TABLE commands ADD COLUMN stdout_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN stderr_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN output_truncated BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX commands_job ON commands (job_id);
CREATE TABLE output_chunks (
    id {autoid},
    tenant_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    stream SMALLINT NOT NULL,
    seq BIGINT NOT NULL,
    data {blob} NOT NULL,
    UNIQUE (command_id, stream, seq)
);
"#,
    // 3: job webhooks: the tenant's sealed signing secret, delivery state and every attempt.
    r#"
ALTER TABLE tenants ADD COLUMN webhook_secret TEXT;
ALTER TABLE jobs ADD COLUMN webhook_status TEXT;
CREATE INDEX jobs_webhook_status ON jobs (webhook_status);
CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at {ts} NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_job ON webhook_attempts (tenant_id, job_id);
"#,
    // 4: signed agent/supervisor releases (global: builds of Outpost itself, not tenant data)
    // and the supervisor's last update report on each agent.
    r#"
CREATE TABLE releases (
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    major BIGINT NOT NULL,
    minor BIGINT NOT NULL,
    patch BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    signature TEXT NOT NULL,
    public_key TEXT NOT NULL,
    published_at {ts} NOT NULL,
    PRIMARY KEY (version, target, name)
);
CREATE INDEX releases_latest ON releases (target, name, major, minor, patch);
ALTER TABLE agents ADD COLUMN update_status {json};
"#,
    // 5: a job's runs by state, so that "is any run still open?" is one index seek and
    // counting a job's runs by state never reads the rows (the writer asks after every batch).
    // Expiry only ever looks for pending commands: indexing just those means acks and results
    // no longer move an entry in that index (they take one out, or touch nothing).
    r#"
CREATE INDEX commands_job_state ON commands (tenant_id, job_id, state);
DROP INDEX commands_job;
CREATE INDEX commands_pending_expiry ON commands (expires_at) WHERE state = 'pending';
DROP INDEX commands_state_expiry;
"#,
    // 6: an agent's commands without their state, and an agent's open commands alone. The
    // old (tenant, agent, state) index moved an entry on every ack and result, and since a
    // fan-out's runs belong to as many agents, each of a batch's results dirtied a different
    // page of an index that grows with the whole history. Now acks and results leave the
    // history index alone and delete from the open one, which holds only the commands still
    // owed an answer: a few pages however long the history.
    r#"
CREATE INDEX commands_agent ON commands (tenant_id, agent_id);
CREATE INDEX commands_agent_open ON commands (tenant_id, agent_id) WHERE state IN ('pending', 'delivered', 'running');
DROP INDEX commands_agent_state;
"#,
    // 7: agents in hostname order, the order of a job's runs and of the agent list, without
    // sorting the whole fleet on every job.
    r#"
CREATE INDEX agents_hostname ON agents (tenant_id, hostname, id);
"#,
    // 8: the secret parameters of a run, sealed under the master key (its `data` holds them
    // masked), and release signatures that also cover the file's size (`signed_message_v2`;
    // NULL for releases published before).
    r#"
ALTER TABLE commands ADD COLUMN sealed_params TEXT;
ALTER TABLE releases ADD COLUMN signature_v2 TEXT;
"#,
    // 9: a job's request fingerprint (a keyed hash of what it asked for), so that an
    // idempotency key used again with another request is refused instead of answering the
    // first job; and API keys revoked rather than deleted (`admin-key rotate`, a changed
    // OUTPOST_ADMIN_KEY), so that a revoked owner key given again is recognised and not
    // registered anew.
    r#"
ALTER TABLE jobs ADD COLUMN request_fingerprint TEXT;
ALTER TABLE api_keys ADD COLUMN revoked_at {ts};
"#,
    // 10: several nodes on one database (CONTRACT.md §13). Each server process holds a row of
    // `nodes` under a lease; an agent row names the node holding its connection; `claims`
    // hands work that one node must do (the sweep) to one node at a time; a job's webhook is
    // claimed by the node delivering it, until a deadline after which another may take over.
    // `settings` keeps what every node must agree on (the master key's fingerprint).
    r#"
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at {ts} NOT NULL,
    renewed_at {ts} NOT NULL,
    lease_until {ts} NOT NULL,
    agents BIGINT NOT NULL
);
ALTER TABLE agents ADD COLUMN node_id TEXT;
ALTER TABLE agents ADD COLUMN transport TEXT;
CREATE INDEX agents_node ON agents (node_id) WHERE node_id IS NOT NULL;
CREATE TABLE claims (
    name TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    until {ts} NOT NULL
);
ALTER TABLE jobs ADD COLUMN webhook_claimed_by TEXT;
ALTER TABLE jobs ADD COLUMN webhook_claimed_until {ts};
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    // 11: the sweep looks for jobs left `running` with every run final (a node stopped
    // between storing their last results and settling them): the few running jobs, without
    // reading a year of finished ones.
    r#"
CREATE INDEX jobs_running ON jobs (tenant_id, id) WHERE status = 'running';
"#,
    // 12: the audit log (CONTRACT.md §9): per tenant, rows numbered from 1 (`seq`) and hash-chained
    // (`store::audit`). `detail` is text, not JSON: the hash covers its exact bytes, which a
    // JSONB column would re-encode. `audit_heads` holds each tenant's last row (appends lock
    // it, which serialises them across nodes, and verification finds rows deleted from the
    // end) and the chain's base: the row before the first one kept, which retention (CONTRACT.md
    // §14) raises before deleting the rows up to it. The triggers refuse any UPDATE, and any
    // DELETE of a row above the base.
    r#"
CREATE TABLE audit_log (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    seq BIGINT NOT NULL,
    at {ts} NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_label TEXT NOT NULL,
    address TEXT,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_log_at ON audit_log (tenant_id, at);
CREATE TABLE audit_heads (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    base_seq BIGINT NOT NULL,
    base_hash TEXT NOT NULL
);
-- sqlite: CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: rows are never changed'); END;
-- sqlite: CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log WHEN OLD.seq > COALESCE((SELECT base_seq FROM audit_heads WHERE tenant_id = OLD.tenant_id), 0) BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: only rows up to the chain base may be deleted'); END;
-- postgres: CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF TG_OP = 'DELETE' THEN IF OLD.seq <= COALESCE((SELECT base_seq FROM audit_heads WHERE tenant_id = OLD.tenant_id), 0) THEN RETURN OLD; END IF; END IF; RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP; END $$;
-- postgres: CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
-- postgres: CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
"#,
    // 13: users and their sessions (CONTRACT.md §9). An email is unique across tenants, compared
    // case-insensitively through `email_key` (its lowercase form), so one login finds one
    // user. A user created by invite has no password until the invite is accepted. Refresh
    // tokens and invites are stored as SHA-256 hashes; a refresh token's `family_id` is the
    // login it descends from, revoked whole when a retired token is presented again.
    r#"
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    email TEXT NOT NULL,
    email_key TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    last_login_at {ts}
);
CREATE INDEX users_tenant ON users (tenant_id, created_at);
CREATE TABLE refresh_tokens (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    user_id TEXT NOT NULL,
    family_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    retired_at {ts},
    revoked_at {ts}
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE TABLE invites (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    user_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    used_at {ts}
);
CREATE INDEX invites_user ON invites (user_id);
"#,
    // 14: plan quotas per tenant (CONTRACT.md §9): the most agents, schedules and users it may have;
    // NULL is unlimited. They are checked where a thing is created, in the transaction that
    // creates it (`store::tenants`).
    r#"
ALTER TABLE tenants ADD COLUMN max_agents BIGINT;
ALTER TABLE tenants ADD COLUMN max_schedules BIGINT;
ALTER TABLE tenants ADD COLUMN max_users BIGINT;
"#,
    // 15: scoped API keys (CONTRACT.md §9). A key made through `/api/keys` belongs to a user and
    // lists its scopes; it acts with those scopes and its owner's role as the user's row has
    // it now. Keys made by the server (the bootstrap owner key, `create_api_key`) have no
    // owner and no scopes: they act with their own `role` and every scope, as before.
    r#"
ALTER TABLE api_keys ADD COLUMN owner_user_id TEXT;
ALTER TABLE api_keys ADD COLUMN scopes {json};
CREATE INDEX api_keys_owner ON api_keys (tenant_id, owner_user_id);
"#,
    // 16: schedules (CONTRACT.md §10) and the events they emit (the start of CONTRACT.md §11's table).
    // A schedule stores its next fire (`next_fire_at`, NULL when disabled or when it never
    // fires again), computed by the server, so that a restart or another node goes on where
    // it was; a node claims a due schedule (`claimed_by`/`claimed_until`, the claim rule of
    // docs/ARCHITECTURE.md) before it fires it. A fire's job carries `schedule_id` and
    // `scheduled_for`, unique together, so that even a lapsed claim cannot create a second
    // job for one fire. `data` is stored as shown (secret parameters masked) and the secret
    // values sealed in `sealed_params`, as for commands. `role` is the role of whoever made
    // or last changed the schedule: its fires act with it. An event's `dedup_key` makes an
    // event that a repeated step would emit twice (a fire retried by another node) stored once.
    r#"
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    command TEXT NOT NULL,
    data {json} NOT NULL,
    sealed_params TEXT,
    target {json} NOT NULL,
    timeout_s INTEGER,
    ttl_s INTEGER,
    enabled BOOLEAN NOT NULL,
    missed TEXT NOT NULL,
    concurrency TEXT NOT NULL,
    webhook_url TEXT,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    next_fire_at {ts},
    last_fire_at {ts},
    last_job_id TEXT,
    claimed_by TEXT,
    claimed_until {ts}
);
CREATE UNIQUE INDEX schedules_name ON schedules (tenant_id, name);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE enabled;
ALTER TABLE jobs ADD COLUMN schedule_id TEXT;
ALTER TABLE jobs ADD COLUMN scheduled_for {ts};
ALTER TABLE jobs ADD COLUMN catch_up BOOLEAN;
ALTER TABLE jobs ADD COLUMN note TEXT;
CREATE UNIQUE INDEX jobs_schedule_fire ON jobs (schedule_id, scheduled_for);
CREATE INDEX jobs_schedule ON jobs (tenant_id, schedule_id, id);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    type TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    subject_name TEXT NOT NULL,
    summary TEXT NOT NULL,
    at {ts} NOT NULL,
    detail {json} NOT NULL,
    dedup_key TEXT UNIQUE
);
CREATE INDEX events_tenant ON events (tenant_id, id);
CREATE INDEX events_subject ON events (tenant_id, subject_id, id);
"#,
    // 17: integrations (CONTRACT.md §11) and their outbox. An integration's `config` is stored as
    // shown (secret fields masked) and its secret fields sealed in `sealed_config`. A
    // delivery is one event for one integration, inserted in the event's transaction (the
    // outbox): the worker claims due deliveries (the claim rule, form 2), sends them, and
    // records every attempt. Its id is the Standard Webhooks `webhook-id`: retries keep it.
    // An integration's deliveries go out in order, one at a time (`deliveries_queue`).
    // `event_streaks` counts a subject's failures in a row (`notify_after`, `recovered`).
    r#"
CREATE TABLE integrations (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    config {json} NOT NULL,
    sealed_config TEXT,
    events {json} NOT NULL,
    filter {json},
    enabled BOOLEAN NOT NULL,
    notify_after INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE UNIQUE INDEX integrations_name ON integrations (tenant_id, name);
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    integration_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at {ts} NOT NULL,
    claimed_by TEXT,
    claimed_until {ts},
    created_at {ts} NOT NULL,
    finished_at {ts},
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_queue ON deliveries (integration_id, id) WHERE status = 'pending';
CREATE INDEX deliveries_integration ON deliveries (tenant_id, integration_id, id);
CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    at {ts} NOT NULL,
    status_code INTEGER,
    duration_ms BIGINT NOT NULL,
    response TEXT,
    error TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
CREATE TABLE event_streaks (
    tenant_id TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    failures INTEGER NOT NULL,
    updated_at {ts} NOT NULL,
    PRIMARY KEY (tenant_id, subject_type, subject_id)
);
"#,
    // 18: `agent.offline` is recorded once per disconnect (CONTRACT.md §11): `offline_reported_at`
    // marks an agent whose offline was recorded, and is cleared (with an `agent.online`) when
    // it registers again. Agents already disconnected at the upgrade count as reported: the
    // first sweep after an upgrade does not announce a fleet's history. The partial index
    // keeps the sweep's scan to the agents it may judge.
    r#"
ALTER TABLE agents ADD COLUMN offline_reported_at {ts};
UPDATE agents SET offline_reported_at = disconnected_at
    WHERE disconnected_at IS NOT NULL AND (connected_at IS NULL OR disconnected_at >= connected_at);
CREATE INDEX agents_unreported ON agents (disconnected_at)
    WHERE offline_reported_at IS NULL AND disconnected_at IS NOT NULL;
"#,
    // 19: history retention (CONTRACT.md §14). A tenant's own window in days (NULL: the server's
    // `--retention-days`; 0: keep everything). The cleaner finds what to delete by id, which
    // is time-ordered: a job's old rows by the `jobs_tenant_id` index, an old command sent
    // outside a job by `commands_standalone` (commands of a job are not in it, so a fan-out's
    // runs pay nothing for it, and no state change touches it), an old event's deliveries by
    // `deliveries_event`.
    r#"
ALTER TABLE tenants ADD COLUMN retention_days BIGINT;
CREATE INDEX commands_standalone ON commands (tenant_id, id) WHERE job_id IS NULL;
CREATE INDEX deliveries_event ON deliveries (event_id);
"#,
    // 20: the script library (CONTRACT.md §15). A version's row holds what listing and resolving
    // need (its manifest, files and signature); its bytes sit apart in `library_bundles`, so
    // that listing a library never reads a blob. The version's parts are kept as numbers so
    // that "the newest" is an index order, not a parse of every row. Both tables are the
    // tenant's; retention never touches them. `agents.library` is the agent's `library`
    // policy from its last `register`, read by every node for the early refusal.
    r#"
CREATE TABLE library_scripts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    major BIGINT NOT NULL,
    minor BIGINT NOT NULL,
    patch BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    signer_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    manifest {json} NOT NULL,
    files {json} NOT NULL,
    uploaded_by TEXT NOT NULL,
    created_at {ts} NOT NULL
);
CREATE UNIQUE INDEX library_scripts_version ON library_scripts (tenant_id, name, major, minor, patch);
CREATE UNIQUE INDEX library_scripts_sha256 ON library_scripts (tenant_id, sha256);
CREATE TABLE library_bundles (
    script_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    data {blob} NOT NULL
);
ALTER TABLE agents ADD COLUMN library {json};
"#,
    // 21: the last hour of each agent's heartbeat metrics, for the dashboard's chart (CONTRACT.md
    // §12): at most one sample per agent and minute (the first of the minute; a later
    // heartbeat of the same minute does nothing), deleted after an hour by the sweep, so the
    // table holds at most ~61 rows per agent whatever the agents send.
    r#"
CREATE TABLE agent_metrics (
    tenant_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    minute {ts} NOT NULL,
    cpu DOUBLE PRECISION NOT NULL,
    memory DOUBLE PRECISION NOT NULL,
    disk DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, minute)
);
CREATE INDEX agent_metrics_minute ON agent_metrics (minute);
"#,
    // 22: the audit chain's base is fixed at its genesis (issue 54). Migration 12 let a
    // `DELETE` through for rows at or below `audit_heads.base_seq`, which nothing in the
    // chain vouches for: whoever could write the database raised a base and deleted the
    // oldest rows, and `verify` still passed. Outpost never raises a base (retention keeps
    // the log whole), so the triggers now refuse every `DELETE` of a row; a head is inserted
    // only empty at the genesis, and an update may move its last row forward but never its
    // tenant, never back and never its base; a head is never deleted (or truncated). On
    // SQLite an `INSERT OR REPLACE` deletes the row it replaces without firing delete
    // triggers, so an insert over an existing row is refused too; one over a head can only
    // put an empty head back, which `verify` reports (rows past the head).
    r#"
-- sqlite: DROP TRIGGER IF EXISTS audit_log_no_delete;
-- sqlite: CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: rows are never deleted'); END;
-- sqlite: CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log WHEN EXISTS (SELECT 1 FROM audit_log WHERE tenant_id = NEW.tenant_id AND seq = NEW.seq) BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: a row is never written over'); END;
-- sqlite: CREATE TRIGGER audit_heads_genesis BEFORE INSERT ON audit_heads WHEN NEW.seq IS NOT 0 OR NEW.hash IS NOT '0000000000000000000000000000000000000000000000000000000000000000' OR NEW.base_seq IS NOT 0 OR NEW.base_hash IS NOT '0000000000000000000000000000000000000000000000000000000000000000' BEGIN SELECT RAISE(ABORT, 'audit_heads: a chain starts empty at its genesis; its base never moves'); END;
-- sqlite: CREATE TRIGGER audit_heads_forward BEFORE UPDATE ON audit_heads WHEN NEW.tenant_id IS NOT OLD.tenant_id OR NEW.base_seq IS NOT OLD.base_seq OR NEW.base_hash IS NOT OLD.base_hash OR NEW.seq < OLD.seq BEGIN SELECT RAISE(ABORT, 'audit_heads: a chain''s base never moves and its head only moves forward'); END;
-- sqlite: CREATE TRIGGER audit_heads_no_delete BEFORE DELETE ON audit_heads BEGIN SELECT RAISE(ABORT, 'audit_heads: a chain''s head is never deleted'); END;
-- postgres: CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP; END $$;
-- postgres: CREATE FUNCTION audit_heads_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF TG_OP = 'INSERT' THEN IF NEW.seq = 0 AND NEW.hash = '0000000000000000000000000000000000000000000000000000000000000000' AND NEW.base_seq = 0 AND NEW.base_hash = '0000000000000000000000000000000000000000000000000000000000000000' THEN RETURN NEW; END IF; RAISE EXCEPTION 'audit_heads: a chain starts empty at its genesis; its base never moves'; ELSIF TG_OP = 'UPDATE' THEN IF NEW.tenant_id = OLD.tenant_id AND NEW.base_seq = OLD.base_seq AND NEW.base_hash = OLD.base_hash AND NEW.seq >= OLD.seq THEN RETURN NEW; END IF; RAISE EXCEPTION 'audit_heads: a chain''s base never moves and its head only moves forward'; END IF; RAISE EXCEPTION 'audit_heads: a chain''s head is never deleted (% refused)', TG_OP; END $$;
-- postgres: CREATE TRIGGER audit_heads_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_heads FOR EACH ROW EXECUTE FUNCTION audit_heads_guard();
-- postgres: CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON audit_heads FOR EACH STATEMENT EXECUTE FUNCTION audit_heads_guard();
"#,
    // 23: fleet results (CONTRACT.md §16). A run's digest (its output's fingerprints, first and
    // last line, duration, and the keys of its group) is written once when the run ends, so
    // that a job's summary and groups are `GROUP BY`s on this table and never read output.
    // One index besides the key: every digest row is written while a fan-out's results are
    // (a masked key's and a duration's index cost the writer more than sorting one job's
    // digests costs a summary).
    // A new job is `digested = FALSE` until every run has its digest; the digester finds
    // such jobs on the partial index (a handful at any time). Jobs from before this migration
    // keep `NULL` and are not digested afterwards. `commands.key_id`: the key its agent was
    // bound to when the run was made; a rerun goes only to agents still bound to it.
    // `jobs.rerun_of`: the job a rerun repeats. `commands_job_order`: a page of a job's runs
    // walks the index in id order instead of sorting the job's runs (10,000 of them).
    r#"
CREATE TABLE run_digests (
    command_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    group_key TEXT NOT NULL,
    masked_key TEXT NOT NULL,
    stdout_sha TEXT NOT NULL,
    stderr_sha TEXT NOT NULL,
    masked_sha TEXT NOT NULL,
    first_line TEXT,
    last_line TEXT,
    duration_ms BIGINT
);
CREATE INDEX run_digests_group ON run_digests (tenant_id, job_id, group_key, command_id);
ALTER TABLE jobs ADD COLUMN digested BOOLEAN;
ALTER TABLE jobs ADD COLUMN rerun_of TEXT;
CREATE INDEX jobs_undigested ON jobs (created_at) WHERE digested = FALSE;
ALTER TABLE commands ADD COLUMN key_id TEXT;
CREATE INDEX commands_job_order ON commands (tenant_id, job_id, id);
"#,
    // 24: staged rollouts (CONTRACT.md §17). A rollout's agents are taken at its start, each
    // with its stage (0 the canary, then each wave) and the version it ran. `held` is TRUE
    // while the rollout is active: the partial unique index lets an agent be in one active
    // rollout at a time, whatever node inserts (a second rollout's insert fails, 409).
    // `rollout_agents_stage` is how the engine walks a stage in its random order. A target's
    // desired version is what its last completed rollout reached; `fleet_policies` holds a
    // tenant's `min_agent_version`. Rollouts and desired versions are claimed by the node
    // working them (the claim rule's form 2).
    r#"
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    version TEXT NOT NULL,
    target {json} NOT NULL,
    target_key TEXT NOT NULL,
    canary INTEGER NOT NULL,
    waves {json} NOT NULL,
    max_in_flight INTEGER NOT NULL,
    health {json} NOT NULL,
    state TEXT NOT NULL,
    stage INTEGER NOT NULL,
    agents INTEGER NOT NULL,
    reason TEXT,
    created_by TEXT NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL,
    finished_at {ts},
    claimed_by TEXT,
    claimed_until {ts}
);
CREATE INDEX rollouts_tenant ON rollouts (tenant_id, id);
CREATE INDEX rollouts_active ON rollouts (created_at) WHERE state IN ('running', 'paused', 'halted', 'rolling_back');
CREATE TABLE rollout_agents (
    rollout_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    state TEXT NOT NULL,
    from_version TEXT NOT NULL,
    sent_at {ts},
    soak_from {ts},
    command_id TEXT,
    check_id TEXT,
    reason TEXT,
    updated_at {ts} NOT NULL,
    held BOOLEAN NOT NULL,
    PRIMARY KEY (rollout_id, agent_id)
);
CREATE INDEX rollout_agents_stage ON rollout_agents (rollout_id, stage, seq);
CREATE UNIQUE INDEX rollout_agents_held ON rollout_agents (tenant_id, agent_id) WHERE held;
CREATE TABLE desired_versions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    target_key TEXT NOT NULL,
    target {json} NOT NULL,
    version TEXT NOT NULL,
    rollout_id TEXT NOT NULL,
    max_in_flight INTEGER NOT NULL,
    set_at {ts} NOT NULL,
    claimed_by TEXT,
    claimed_until {ts},
    UNIQUE (tenant_id, target_key)
);
CREATE TABLE fleet_policies (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
    min_agent_version TEXT,
    updated_at {ts} NOT NULL
);
"#,
    // 25: sign-in (CONTRACT.md §18). Mail for people (verification codes, reset links,
    // invites) goes through `mail_outbox`, so that an SMTP relay that is down delays a mail
    // and never fails the request that wrote it; its body is sealed (it carries a code or a
    // link) and dropped once sent. Codes, reset tokens, tickets and recovery codes are stored
    // hashed. A TOTP secret is sealed; `last_step` refuses a code used twice. A login of a
    // user with a second factor holds a `login_tickets` row between its two steps, so that
    // either node may finish it. `oidc_identities` keys SSO users by `(issuer, subject)`, never
    // by email; `oidc_logins` holds a sign-in between the redirect and the callback (the
    // PKCE verifier sealed, the nonce, who links, where a CLI waits). An access token issued
    // before `users.password_changed_at` is refused (a reset ends every session at once).
    r#"
ALTER TABLE users ADD COLUMN email_verified_at {ts};
ALTER TABLE users ADD COLUMN password_changed_at {ts};
ALTER TABLE tenants ADD COLUMN require_totp BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE mail_outbox (
    id TEXT PRIMARY KEY,
    tenant_id TEXT,
    kind TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT,
    created_at {ts} NOT NULL,
    next_at {ts} NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    sent_at {ts},
    failed_at {ts},
    claimed_by TEXT,
    claimed_until {ts}
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_at) WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX mail_outbox_tenant ON mail_outbox (tenant_id, id);
CREATE TABLE email_codes (
    user_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    tries INTEGER NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL
);
CREATE TABLE password_resets (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    used_at {ts}
);
CREATE INDEX password_resets_user ON password_resets (user_id);
CREATE TABLE totp_factors (
    user_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    secret TEXT NOT NULL,
    confirmed_at {ts},
    last_step BIGINT,
    created_at {ts} NOT NULL
);
CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at {ts},
    PRIMARY KEY (user_id, code_hash)
);
CREATE TABLE login_tickets (
    ticket_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    tries INTEGER NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    used_at {ts}
);
CREATE TABLE oidc_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at {ts} NOT NULL,
    last_login_at {ts},
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX oidc_identities_user ON oidc_identities (user_id);
CREATE TABLE oidc_logins (
    state_hash TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    verifier TEXT NOT NULL,
    link_user_id TEXT,
    cli_redirect TEXT,
    handoff_hash TEXT UNIQUE,
    handoff_user_id TEXT,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    used_at {ts}
);
"#,
    // 26: agent identity by certificate (CONTRACT.md §19). `pki_keys` holds the server's CA
    // and its own TLS key, sealed under the master key, one row each, so that every node signs
    // with the same CA and serves the same key (the install line pins it). Every certificate
    // issued to an agent is in `agent_certs`, keyed by the SHA-256 of its DER: a handshake's
    // client certificate is looked up there, so that the row (not the certificate's text)
    // says which tenant, agent and enrollment key it stands for, and whether it was revoked.
    // `public_key` (the SHA-256 of the key's SubjectPublicKeyInfo) refuses one key certified
    // for two agents. An agent deleted after it enrolled is in `revoked_agents` until an admin
    // clears it.
    r#"
CREATE TABLE pki_keys (
    name TEXT PRIMARY KEY,
    certificate TEXT NOT NULL,
    private_key TEXT NOT NULL,
    created_at {ts} NOT NULL
);
CREATE TABLE agent_certs (
    fingerprint TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    serial TEXT NOT NULL,
    certificate TEXT NOT NULL,
    issued_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    revoked_at {ts}
);
CREATE INDEX agent_certs_agent ON agent_certs (tenant_id, agent_id, expires_at);
CREATE INDEX agent_certs_public_key ON agent_certs (public_key);
CREATE TABLE revoked_agents (
    tenant_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    revoked_at {ts} NOT NULL,
    PRIMARY KEY (tenant_id, agent_id)
);
"#,
    // 27: scripts in the dashboard (CONTRACT.md
    // §20). `library_names` holds a script name's switch (a disabled name's runs are refused,
    // its versions kept); a name without a row is enabled. A draft is an unsigned bundle
    // edited in the browser: its row holds what listings need, its bytes sit apart in
    // `library_draft_bundles` (as a version's do), and nothing that resolves or downloads a
    // version ever reads either table, so a draft can neither run nor reach an agent.
    r#"
CREATE TABLE library_names (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at {ts} NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
CREATE TABLE library_drafts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    major BIGINT NOT NULL,
    minor BIGINT NOT NULL,
    patch BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    manifest {json} NOT NULL,
    files {json} NOT NULL,
    base_version TEXT,
    author TEXT NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);
CREATE UNIQUE INDEX library_drafts_version ON library_drafts (tenant_id, name, major, minor, patch);
CREATE TABLE library_draft_bundles (
    draft_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    data {blob} NOT NULL
);
"#,
];

/// The schema version this server brings a database to.
pub(super) fn known_version() -> usize {
    MIGRATIONS.len()
}

/// Brings the schema up to date. Safe to call on every start, by several nodes at once: on
/// PostgreSQL the whole upgrade runs in one transaction that first takes an advisory lock, so
/// a second node starting at the same time waits, then finds the schema current (PostgreSQL's
/// DDL is transactional). SQLite has one writer; `BEGIN IMMEDIATE` serialises there.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    const VERSIONS: &str = "CREATE TABLE IF NOT EXISTS outpost_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)";
    if backend == DatabaseBackend::Postgres {
        // The lock first: PostgreSQL's `CREATE TABLE IF NOT EXISTS` is not safe against
        // itself, and two nodes making the table at once failed on a unique index of its
        // catalogue (`pg_type`).
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        txn.execute_unprepared(VERSIONS).await?;
        let current = current_version(&txn).await?;
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            apply(&txn, index + 1, sql, backend).await?;
        }
        return txn.commit().await;
    }
    // SQLite: each migration in its own write transaction, the version read inside it, so
    // that processes starting together on one file take turns.
    db.execute_unprepared(VERSIONS).await?;
    loop {
        let txn = super::begin_write(db).await?;
        let current = current_version(&txn).await?;
        let Some(sql) = MIGRATIONS.get(current) else {
            return txn.commit().await;
        };
        apply(&txn, current + 1, sql, backend).await?;
        txn.commit().await?;
    }
}

/// The advisory lock key migrations hold on PostgreSQL (any constant; "outpost" in ASCII).
const MIGRATION_LOCK: i64 = 0x006f_7574_706f_7374;
/// The advisory lock key the first start's bootstrap (default tenant, owner key) holds.
pub(super) const BOOTSTRAP_LOCK: i64 = MIGRATION_LOCK + 1;

async fn apply(
    txn: &impl ConnectionTrait,
    version: usize,
    sql: &str,
    backend: DatabaseBackend,
) -> Result<(), DbErr> {
    for statement in statements(&fill(sql, backend)) {
        txn.execute_unprepared(&statement).await?;
    }
    txn.execute_unprepared(&format!(
        "INSERT INTO outpost_schema (version, applied_at) VALUES ({version}, '{}')",
        super::now().to_rfc3339()
    ))
    .await?;
    tracing::info!(version, "applied schema migration");
    Ok(())
}

async fn current_version(db: &impl ConnectionTrait) -> Result<usize, DbErr> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) AS v FROM outpost_schema",
        ))
        .await?;
    let version: i64 = match row {
        Some(row) => row.try_get("", "v")?,
        None => 0,
    };
    if version as usize > MIGRATIONS.len() {
        return Err(DbErr::Custom(format!(
            "the database is at schema version {version}, newer than this server knows ({}): \
             run the newer outpost-server or restore a backup",
            MIGRATIONS.len()
        )));
    }
    Ok(version as usize)
}

/// A migration's statements: each ends with a `;` at the end of a line, so that a statement
/// may hold `;` inside a line (a trigger's body).
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            let statement = current.trim_end().trim_end_matches(';').trim().to_owned();
            if !statement.is_empty() {
                out.push(statement);
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// Fills the placeholders for `backend`, and keeps the lines written for one backend only
/// (`-- sqlite: …`, `-- postgres: …`: where the two need different SQL, as for triggers)
/// for that backend, without their prefix.
fn fill(sql: &str, backend: DatabaseBackend) -> String {
    let postgres = backend == DatabaseBackend::Postgres;
    let sql: String = sql
        .lines()
        .filter_map(|line| {
            if let Some(rest) = line.strip_prefix("-- sqlite: ") {
                (!postgres).then_some(rest)
            } else if let Some(rest) = line.strip_prefix("-- postgres: ") {
                postgres.then_some(rest)
            } else {
                Some(line)
            }
        })
        .fold(String::new(), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        });
    let (ts, json, autoid, blob) = match backend {
        DatabaseBackend::Postgres => ("TIMESTAMPTZ", "JSONB", "BIGSERIAL PRIMARY KEY", "BYTEA"),
        _ => ("TEXT", "TEXT", "INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
    };
    sql.replace("{ts}", ts)
        .replace("{json}", json)
        .replace("{autoid}", autoid)
        .replace("{blob}", blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Released migrations were split on every `;`; the line-end rule must read them the
    /// same, statement for statement.
    #[test]
    fn released_migrations_split_as_before() {
        for backend in [DatabaseBackend::Sqlite, DatabaseBackend::Postgres] {
            for sql in &MIGRATIONS[..11] {
                let text = fill(sql, backend);
                let old: Vec<String> = text
                    .split(';')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                assert_eq!(statements(&text), old);
            }
        }
    }

    #[test]
    fn backend_lines_go_to_their_backend_only() {
        let sql = "CREATE TABLE t (x TEXT);\n-- sqlite: CREATE TRIGGER a BEGIN SELECT 1; END;\n-- postgres: CREATE FUNCTION f() AS $$ BEGIN; END $$;\n";
        let lite = statements(&fill(sql, DatabaseBackend::Sqlite));
        assert_eq!(
            lite,
            [
                "CREATE TABLE t (x TEXT)",
                "CREATE TRIGGER a BEGIN SELECT 1; END"
            ]
        );
        let pg = statements(&fill(sql, DatabaseBackend::Postgres));
        assert_eq!(
            pg,
            [
                "CREATE TABLE t (x TEXT)",
                "CREATE FUNCTION f() AS $$ BEGIN; END $$"
            ]
        );
    }
}
