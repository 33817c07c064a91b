//! Trigger capture: every row change of a synced table is recorded in `ferry_change`,
//! in the same transaction as the write, with no change to OpenMRS.
//!
//! [`setup`] installs the bookkeeping tables ([`bookkeeping`]) and the triggers
//! ([`triggers`]) from the plan, idempotently; [`teardown`](setup::teardown) removes
//! them; [`tables`] switches capture per table; [`drift`] notices when the schema has
//! changed since the last setup.

pub mod bookkeeping;
pub mod clock;
pub mod counters;
pub mod drift;
pub mod setup;
pub mod tables;
pub mod triggers;
pub mod versions;

use crate::db::DbError;

/// The session variable ferry's importer sets (to the node its changes came from)
/// while it writes. Triggers record nothing while it is set: imported changes are never
/// taken for local ones, and the importer logs them itself for forwarding.
pub const ORIGIN_VARIABLE: &str = "@ferry_origin";

/// Errors of the capture layer.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("ferry is not set up in database {database}\nhint: run `ferry setup` first")]
    NotInstalled { database: String },
    #[error("there is no table named {table}\nhint: `ferry tables` lists the tables ferry knows")]
    UnknownTable { table: String },
    #[error("table {table} stays node-local: {reason}\nhint: `ferry plan` explains what ferry does with every table")]
    LocalTable { table: String, reason: String },
    #[error("table {table} has changed since the last setup\nhint: run `ferry setup` to regenerate the plan and triggers (the table stays {state} until then)")]
    Drifted { table: String, state: &'static str },
    #[error("ferry's bookkeeping is damaged: {0}\nhint: run `ferry setup` to repair it")]
    Corrupt(String),
    #[error("ferry's tables in this database are from an older release of ferry (step {found} of {wanted})\nhint: run `ferry setup`: it brings them up to date and changes no data. A database restored from a backup older than the last upgrade needs it too (before `ferry rejoin`, which runs it itself)")]
    Outdated { found: usize, wanted: usize },
    #[error("this database is node {recorded}'s, but the config names node {config}\nhint: nothing was done; a database belongs to one node, whose bundle numbers it keeps. Use {recorded}'s config with it, or point this config at its own database")]
    OtherNode { recorded: String, config: String },
}
