//! `ferry tables`: the sync state of every table, and the per-table switch.
//!
//! The operator's choice lives in `ferry_table.enabled` and survives `ferry setup`.
//! Disabling a table drops its triggers (no cost, no capture); enabling it installs
//! them again from the stored plan, provided the table has not drifted.

use std::collections::BTreeMap;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::Serialize;

use super::bookkeeping::{CHANGE_TABLE, TABLE_STATE};
use super::setup::{
    captured_tables, drop_table_triggers, enabled_tables, install_table_triggers, record_captured,
    stored_plan,
};
use super::CaptureError;
use crate::db::DbError;
use crate::schema::{Disposition, Schema};

/// A table's sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableState {
    /// Synced and captured.
    Enabled,
    /// Synced by the plan, switched off by the operator.
    Disabled,
    /// Stays on this node (see `detail`).
    Local,
}

/// One row of `ferry tables`.
#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub table: String,
    pub state: TableState,
    /// The identity for synced tables; the reason for local ones.
    pub detail: String,
    /// Change log entries waiting for this table.
    pub pending_changes: u64,
}

/// Lists every table of the stored plan with its state.
pub async fn list(conn: &mut Conn, database: &str) -> Result<Vec<TableInfo>, CaptureError> {
    let plan = stored_plan(conn, database).await?;
    let enabled = enabled_tables(conn).await?;
    let pending: BTreeMap<String, u64> = conn
        .query::<(String, u64), _>(format!(
            "SELECT table_name, COUNT(*) FROM {CHANGE_TABLE} GROUP BY table_name"
        ))
        .await
        .map_err(DbError::query("counting pending changes"))?
        .into_iter()
        .collect();
    Ok(plan
        .tables
        .iter()
        .map(|t| {
            let (state, detail) = match &t.disposition {
                Disposition::Synced(s) => (
                    if enabled.get(&t.table).copied().unwrap_or(true) {
                        TableState::Enabled
                    } else {
                        TableState::Disabled
                    },
                    s.identity.describe(),
                ),
                Disposition::Local { reason } => (TableState::Local, reason.clone()),
            };
            TableInfo {
                table: t.table.clone(),
                state,
                detail,
                pending_changes: pending.get(&t.table).copied().unwrap_or(0),
            }
        })
        .collect())
}

/// Switches capture of `table` on or off. Returns whether anything changed.
pub async fn set_enabled(
    conn: &mut Conn,
    database: &str,
    table: &str,
    enable: bool,
) -> Result<bool, CaptureError> {
    let plan = stored_plan(conn, database).await?;
    let entry = plan
        .table(table)
        .ok_or_else(|| CaptureError::UnknownTable {
            table: table.to_string(),
        })?;
    if let Disposition::Local { reason } = &entry.disposition {
        return Err(CaptureError::LocalTable {
            table: table.to_string(),
            reason: reason.clone(),
        });
    }
    let was = enabled_tables(conn)
        .await?
        .get(table)
        .copied()
        .unwrap_or(true);
    conn.exec_drop(
        format!("UPDATE {TABLE_STATE} SET enabled = ?, changed_at = NOW(6) WHERE table_name = ?"),
        (enable, table),
    )
    .await
    .map_err(DbError::query(format!("switching table {table}")))?;
    let mut captured = captured_tables(conn).await?;
    if !enable {
        drop_table_triggers(conn, table).await?;
        captured.remove(table);
        record_captured(conn, &captured).await?;
        return Ok(was);
    }
    let schema = Schema::read(conn, database).await?;
    let stored: Option<String> = conn
        .exec_first(
            format!("SELECT signature FROM {TABLE_STATE} WHERE table_name = ?"),
            (table,),
        )
        .await
        .map_err(DbError::query(format!("reading the shape of {table}")))?;
    let live = schema.tables.get(table).map(|t| t.signature());
    if live.is_none() || live != stored {
        return Err(CaptureError::Drifted {
            table: table.to_string(),
            state: "uncaptured",
        });
    }
    install_table_triggers(conn, &plan, &schema, table).await?;
    // What happened while it was off is not captured, a truncate included.
    super::counters::reset(conn, database, Some(table)).await?;
    captured.insert(table.to_string());
    record_captured(conn, &captured).await?;
    Ok(!was)
}
