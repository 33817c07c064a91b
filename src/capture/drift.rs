//! Schema drift: how the live schema differs from what the last `ferry setup` saw.
//!
//! Setup stores each synced table's shape in `ferry_table`. After an OpenMRS upgrade
//! (an ALTER TABLE, a new table) the triggers no longer match the table; `ferry status`
//! reports the drift until `ferry setup` regenerates the plan and the triggers.

use std::collections::BTreeMap;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::Serialize;

use super::bookkeeping::TABLE_STATE;
use super::CaptureError;
use crate::db::DbError;
use crate::schema::{Schema, SyncPlan, Table};

/// One difference between the live schema and the last setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftItem {
    pub table: String,
    pub change: String,
}

/// Compares the live schema with the shapes stored at the last setup.
pub async fn detect(conn: &mut Conn, database: &str) -> Result<Vec<DriftItem>, CaptureError> {
    let schema = Schema::read(conn, database).await?;
    let stored: Vec<(String, Option<String>)> = conn
        .query(format!(
            "SELECT table_name, shape FROM {TABLE_STATE} ORDER BY table_name"
        ))
        .await
        .map_err(DbError::query("reading stored table shapes"))?;
    let mut known: BTreeMap<String, Table> = BTreeMap::new();
    for (name, shape) in stored {
        if let Some(shape) = shape {
            let t: Table = serde_json::from_str(&shape)
                .map_err(|e| CaptureError::Corrupt(format!("stored shape of {name}: {e}")))?;
            known.insert(name, t);
        }
    }
    let mut out = Vec::new();
    for (name, old) in &known {
        match schema.tables.get(name) {
            None => out.push(DriftItem {
                table: name.clone(),
                change: "table was dropped".into(),
            }),
            Some(new) if new != old => out.push(DriftItem {
                table: name.clone(),
                change: describe(old, new),
            }),
            Some(_) => {}
        }
    }
    let plan = SyncPlan::derive(&schema);
    for (name, _) in plan.synced() {
        if !known.contains_key(name) {
            out.push(DriftItem {
                table: name.to_string(),
                change: "new table, not captured yet".into(),
            });
        }
    }
    Ok(out)
}

/// A short description of how a table's shape changed.
pub fn describe(old: &Table, new: &Table) -> String {
    let mut parts = Vec::new();
    for c in &new.columns {
        match old.column(&c.name) {
            None => parts.push(format!("column {} added", c.name)),
            Some(o) if o != c => parts.push(format!(
                "column {} changed from {} to {}",
                c.name, o.column_type, c.column_type
            )),
            Some(_) => {}
        }
    }
    for c in &old.columns {
        if new.column(&c.name).is_none() {
            parts.push(format!("column {} removed", c.name));
        }
    }
    if old.primary_key != new.primary_key {
        parts.push("primary key changed".into());
    }
    if old.unique_keys != new.unique_keys {
        parts.push("unique keys changed".into());
    }
    if old.foreign_keys != new.foreign_keys {
        parts.push("foreign keys changed".into());
    }
    if parts.is_empty() {
        parts.push("column order changed".into());
    }
    parts.join(", ")
}
