//! The store's tests, one binary (linking is the slow part): each module is one subject's
//! tests, on SQLite and, with `OUTPOST_TEST_BACKEND=postgres` and `OUTPOST_TEST_POSTGRES`
//! (`export OUTPOST_TEST_POSTGRES=$(scripts/postgres.sh start DIR)`), on PostgreSQL.

mod common;

mod audit;
mod digests;
mod jobs;
mod library;
mod nodes;
mod presence;
mod rollouts;
mod schedules;
mod tenants;
mod totp;
mod users;
mod writer;
