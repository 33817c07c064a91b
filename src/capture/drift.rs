//! Schema drift: how the live schema differs from what the last `ferry setup` saw,
//! and how the installed capture triggers differ from what setup installs.
//!
//! Setup stores each synced table's shape in `ferry_table`. After an OpenMRS upgrade
//! (an ALTER TABLE, a new table) the triggers no longer match the table; `ferry status`
//! reports the drift until `ferry setup` regenerates the plan and the triggers.
//!
//! A table whose shape did not change can still lose its capture: a trigger dropped by
//! hand, a table dropped and made again by an upgrade (its triggers go with it), a
//! database restored from a dump made without triggers. Nothing else would notice, and
//! every change to that table would stay on this node. So drift also names each
//! trigger of a table switched on that is missing, or whose body is not the one this
//! release installs (after an upgrade of ferry that changed them), and each table
//! emptied by `TRUNCATE TABLE` ([`super::counters`]).

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::Serialize;

use super::bookkeeping::TABLE_STATE;
use super::setup::{enabled_tables, installed_clock_offset, installed_triggers, wanted_triggers};
use super::triggers::{Event, TriggerSql};
use super::CaptureError;
use crate::db::DbError;
use crate::schema::{Schema, SyncPlan, Table};

/// One difference between the live schema and the last setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftItem {
    pub table: String,
    pub change: String,
    pub kind: DriftKind,
}

/// What kind of difference a [`DriftItem`] is: what the operator does about it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftKind {
    /// The table's shape changed, or it is new or gone: `ferry setup` on every node.
    Schema,
    /// A capture trigger is missing or not this release's: `ferry setup` here.
    Trigger,
    /// The table was emptied by `TRUNCATE TABLE` ([`super::counters`]): its rows are
    /// still at the peers; deal with them, then `ferry setup` here.
    Truncate,
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
                kind: DriftKind::Schema,
                table: name.clone(),
                change: "table was dropped".into(),
            }),
            Some(new) if new != old => out.push(DriftItem {
                kind: DriftKind::Schema,
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
                kind: DriftKind::Schema,
                table: name.to_string(),
                change: "new table, not captured yet".into(),
            });
        }
    }
    // The triggers of the tables whose shape is as setup left it (the others' are
    // outdated anyway, and setup replaces them). A before-delete trigger also depends on
    // the tables whose keys refer to its table: one of those drifted (a new table with
    // such a key, say) changes what it must log, which is not a loss.
    let drifted: BTreeSet<String> = out.iter().map(|d| d.table.clone()).collect();
    let depends_on_drift = |t: &TriggerSql| {
        drifted.contains(&t.table)
            || (t.event == Event::Cascade
                && drifted.iter().any(|d| {
                    schema
                        .tables
                        .get(d)
                        .is_some_and(|c| c.foreign_keys.iter().any(|fk| fk.ref_table == t.table))
                }))
    };
    let enabled = enabled_tables(conn).await?;
    let offset = installed_clock_offset(conn).await?;
    let installed = installed_triggers(conn).await?;
    // Per table: missing row triggers, a missing before-delete trigger, differing ones.
    let mut missing: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut outdated: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, t) in wanted_triggers(&plan, &schema, &enabled, offset) {
        if depends_on_drift(&t) {
            continue;
        }
        match installed.get(&name) {
            None if t.event == Event::Cascade => missing.entry(t.table).or_default().1.push(name),
            None => missing.entry(t.table).or_default().0.push(name),
            Some((table, body)) if !t.is_installed(table, body) => {
                outdated.entry(t.table).or_default().push(name)
            }
            Some(_) => {}
        }
    }
    for (table, (rows, cascade)) in missing {
        if !rows.is_empty() {
            out.push(DriftItem {
                kind: DriftKind::Trigger,
                change: format!(
                    "{} missing: changes to {table} since {} went missing were not captured",
                    triggers(&rows),
                    if rows.len() == 1 { "it" } else { "they" }
                ),
                table: table.clone(),
            });
        }
        if !cascade.is_empty() {
            out.push(DriftItem {
                kind: DriftKind::Trigger,
                change: format!(
                    "{} missing: rows that a delete of {table} took with it (ON DELETE \
                     CASCADE or SET NULL) since it went missing were not captured",
                    triggers(&cascade)
                ),
                table,
            });
        }
    }
    for (table, names) in outdated {
        out.push(DriftItem {
            kind: DriftKind::Trigger,
            change: format!(
                "{} {} this release of ferry installs",
                triggers(&names),
                if names.len() == 1 {
                    "differs from the one"
                } else {
                    "differ from the ones"
                }
            ),
            table,
        });
    }
    out.extend(super::counters::emptied(conn, database).await?);
    out.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(out)
}

/// The first `max` items as "table: change" lines, then how many more there are (an
/// upgrade of ferry that changes the triggers puts every table in drift).
pub fn summary(items: &[DriftItem], max: usize) -> Vec<String> {
    let mut lines: Vec<String> = items
        .iter()
        .take(max)
        .map(|d| format!("{}: {}", d.table, d.change))
        .collect();
    if items.len() > max {
        lines.push(format!(
            "and {} more (`ferry status --json` lists them all)",
            items.len() - max
        ));
    }
    lines
}

/// "capture trigger N" or "capture triggers N, M".
fn triggers(names: &[String]) -> String {
    let s = if names.len() == 1 { "" } else { "s" };
    format!("capture trigger{s} {}", names.join(", "))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_drift_is_summed_up_after_its_first_items() {
        let items: Vec<DriftItem> = (0..5)
            .map(|i| DriftItem {
                kind: DriftKind::Schema,
                table: format!("t{i}"),
                change: "changed".into(),
            })
            .collect();
        assert_eq!(summary(&items[..2], 3), ["t0: changed", "t1: changed"]);
        assert_eq!(
            summary(&items, 3),
            [
                "t0: changed",
                "t1: changed",
                "t2: changed",
                "and 2 more (`ferry status --json` lists them all)"
            ]
        );
    }
}
