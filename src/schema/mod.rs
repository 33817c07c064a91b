//! Reading the database schema and deriving the sync plan from it, with no per-table
//! configuration: [`introspect`] reads `information_schema` into a [`Schema`], [`plan`]
//! derives a [`SyncPlan`] (identity, references and carried columns of every table, or
//! why it stays node-local), and [`soft_refs`] holds the one small table of OpenMRS
//! references that no foreign key declares.

pub mod identity_sql;
pub mod introspect;
pub mod plan;
pub mod render;
pub mod soft_refs;
pub mod unique_rules;

pub use introspect::{Schema, Table};
pub use plan::{Disposition, Identity, SyncPlan, SyncedTable, TablePlan};
