//! `ferry setup` and `ferry teardown`.
//!
//! Setup reads the schema, derives and stores the plan, records every synced table's
//! shape, and makes the installed triggers exactly the wanted set: missing or outdated
//! ones are created with `CREATE OR REPLACE TRIGGER` (an atomic swap, so no write slips
//! through uncaptured), unwanted ones dropped. Running it twice equals running it once.
//! Teardown drops every `ferry_*` trigger and table and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::Serialize;

use super::bookkeeping::{self, TABLE_STATE};
use super::triggers::{triggers_for, uncaptured_cascades, Event, TriggerSql};
use super::CaptureError;
use crate::db::{ident, DbError};
use crate::schema::{Schema, SyncPlan};

/// What setup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupReport {
    pub synced_tables: usize,
    pub local_tables: usize,
    pub enabled_tables: usize,
    pub triggers_created: usize,
    pub triggers_unchanged: usize,
    pub triggers_dropped: usize,
    /// Row triggers put back on tables whose capture was in place before
    /// ([`CAPTURED_META`]) and that are switched on: the changes made to those tables
    /// while they were gone were not captured ([`super::drift`] named them).
    pub triggers_restored: Vec<String>,
    pub plan_fingerprint: String,
}

/// The meta entry holding the clock offset (µs) baked into the triggers.
pub const CLOCK_OFFSET_META: &str = "clock_offset_us";

/// Installs or refreshes capture in the connected database. `clock_offset_us` shifts
/// the wall time the triggers record (a test setting; 0 in production).
pub async fn setup(
    conn: &mut Conn,
    database: &str,
    clock_offset_us: i64,
) -> Result<SetupReport, CaptureError> {
    bookkeeping::install(conn).await?;
    bookkeeping::set_meta(conn, CLOCK_OFFSET_META, &clock_offset_us.to_string()).await?;
    let schema = Schema::read(conn, database).await?;
    let plan = SyncPlan::derive(&schema);
    bookkeeping::set_meta(conn, "plan", &serde_json::to_string(&plan).expect("plan")).await?;
    let fingerprint = hex::encode(plan.fingerprint());
    bookkeeping::set_meta(conn, "plan_fingerprint", &fingerprint).await?;

    let mut report = SetupReport {
        plan_fingerprint: fingerprint,
        ..Default::default()
    };
    let captured = captured_tables(conn).await?;
    for (name, _) in plan.synced() {
        let table = &schema.tables[name];
        conn.exec_drop(
            format!(
                "INSERT INTO {TABLE_STATE} (table_name, enabled, shape, signature) VALUES (?, 1, ?, ?) \
                 ON DUPLICATE KEY UPDATE shape = VALUES(shape), signature = VALUES(signature)"
            ),
            (name, serde_json::to_string(table).expect("table"), table.signature()),
        )
        .await
        .map_err(DbError::query(format!("recording table {name}")))?;
        report.synced_tables += 1;
    }
    report.local_tables = plan.tables.len() - report.synced_tables;
    let enabled = enabled_tables(conn).await?;

    let switched_on: BTreeSet<String> = switched_on(&plan, &enabled).map(String::from).collect();
    report.enabled_tables = switched_on.len();
    let mut wanted = wanted_triggers(&plan, &schema, &enabled, clock_offset_us);
    for what in uncaptured_cascades(&plan, &schema) {
        tracing::warn!(
            "{what}; MariaDB fires no trigger for rows a cascade changes, so such a delete reaches the peers incomplete"
        );
    }
    for warning in server_warnings(conn).await? {
        tracing::warn!("{warning}");
    }
    let installed = installed_triggers(conn).await?;
    report.triggers_restored = wanted
        .values()
        .filter(|t| {
            Event::ALL.contains(&t.event)
                && captured.contains(&t.table)
                && !installed.contains_key(&t.name)
        })
        .map(|t| t.name.clone())
        .collect();
    for (name, (table, body)) in &installed {
        match wanted.get(name) {
            Some(t) if t.is_installed(table, body) => {
                report.triggers_unchanged += 1;
                wanted.remove(name);
            }
            Some(_) => {}
            None => {
                drop_trigger(conn, name).await?;
                report.triggers_dropped += 1;
            }
        }
    }
    for t in wanted.values() {
        conn.query_drop(t.create_statement())
            .await
            .map_err(DbError::query(format!("creating trigger {}", t.name)))?;
        report.triggers_created += 1;
    }
    record_captured(conn, &switched_on).await?;
    // The operator has dealt with any table emptied by a truncate: counters as they are.
    super::counters::reset(conn, database, None).await?;
    Ok(report)
}

/// The meta entry naming the tables whose capture triggers were last put in place
/// (by a setup that finished, or `ferry tables enable`): a row trigger missing on one
/// of them means capture stopped there, not that it never started.
pub const CAPTURED_META: &str = "captured_tables";

/// The tables of [`CAPTURED_META`] (none before the first setup that finished).
pub async fn captured_tables(conn: &mut Conn) -> Result<BTreeSet<String>, CaptureError> {
    match bookkeeping::get_meta(conn, CAPTURED_META).await? {
        None => Ok(BTreeSet::new()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| CaptureError::Corrupt(format!("{CAPTURED_META}: {e}"))),
    }
}

/// Records the tables of [`CAPTURED_META`].
pub async fn record_captured(
    conn: &mut Conn,
    tables: &BTreeSet<String>,
) -> Result<(), CaptureError> {
    let text = serde_json::to_string(tables).expect("a set of names serializes");
    Ok(bookkeeping::set_meta(conn, CAPTURED_META, &text).await?)
}

/// What in the server's settings works against capture, one sentence each (setup
/// logs them, `ferry status` shows them): `innodb_autoinc_lock_mode` 2, under which
/// the two entries of an identity change can be split ([`super::triggers`]).
pub async fn server_warnings(conn: &mut Conn) -> Result<Vec<String>, DbError> {
    let lock_mode: Option<u32> = conn
        .query_first("SELECT @@innodb_autoinc_lock_mode")
        .await
        .map_err(DbError::query("reading innodb_autoinc_lock_mode"))?;
    Ok(if lock_mode == Some(2) {
        vec![
            "innodb_autoinc_lock_mode is 2: another session's change can come between the two \
              entries of an update that changes a row's uuid, and export then misses the rows \
              that still refer to the old uuid; set it to 1 (MariaDB's default) in the \
              server's configuration"
                .to_string(),
        ]
    } else {
        Vec::new()
    })
}

/// The synced tables switched on (`enabled`, from `ferry_table`).
fn switched_on<'p>(
    plan: &'p SyncPlan,
    enabled: &'p BTreeMap<String, bool>,
) -> impl Iterator<Item = &'p str> + 'p {
    plan.synced()
        .map(|(name, _)| name)
        .filter(|name| enabled.get(*name) == Some(&true))
}

/// The triggers capture wants, by name: those of every synced table switched on
/// (`enabled`, from `ferry_table`).
pub fn wanted_triggers(
    plan: &SyncPlan,
    schema: &Schema,
    enabled: &BTreeMap<String, bool>,
    clock_offset_us: i64,
) -> BTreeMap<String, TriggerSql> {
    switched_on(plan, enabled)
        .flat_map(|name| {
            triggers_for(plan, schema, name, clock_offset_us).expect("synced table has triggers")
        })
        .map(|t| (t.name.clone(), t))
        .collect()
}

/// Installs (or refreshes) the triggers of one table from the stored plan.
pub async fn install_table_triggers(
    conn: &mut Conn,
    plan: &SyncPlan,
    schema: &Schema,
    table: &str,
) -> Result<(), CaptureError> {
    let offset = installed_clock_offset(conn).await?;
    let triggers =
        triggers_for(plan, schema, table, offset).ok_or_else(|| CaptureError::UnknownTable {
            table: table.to_string(),
        })?;
    for t in triggers {
        conn.query_drop(t.create_statement())
            .await
            .map_err(DbError::query(format!("creating trigger {}", t.name)))?;
    }
    Ok(())
}

/// Drops the triggers of one table.
pub async fn drop_table_triggers(conn: &mut Conn, table: &str) -> Result<(), CaptureError> {
    for (name, (t, _)) in installed_triggers(conn).await? {
        if t == table {
            drop_trigger(conn, &name).await?;
        }
    }
    Ok(())
}

/// What teardown removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TeardownReport {
    pub triggers_dropped: Vec<String>,
    pub tables_dropped: Vec<String>,
}

/// Removes every ferry trigger and table.
pub async fn teardown(conn: &mut Conn) -> Result<TeardownReport, CaptureError> {
    let (tables, triggers) = bookkeeping::ferry_objects(conn).await?;
    for t in &triggers {
        drop_trigger(conn, t).await?;
    }
    for t in &tables {
        conn.query_drop(format!("DROP TABLE IF EXISTS {}", ident(t)))
            .await
            .map_err(DbError::query(format!("dropping table {t}")))?;
    }
    Ok(TeardownReport {
        triggers_dropped: triggers,
        tables_dropped: tables,
    })
}

/// The stored plan, or `NotInstalled`.
pub async fn stored_plan(conn: &mut Conn, database: &str) -> Result<SyncPlan, CaptureError> {
    if !bookkeeping::installed(conn).await? {
        return Err(CaptureError::NotInstalled {
            database: database.to_string(),
        });
    }
    let text =
        bookkeeping::get_meta(conn, "plan")
            .await?
            .ok_or_else(|| CaptureError::NotInstalled {
                database: database.to_string(),
            })?;
    serde_json::from_str(&text).map_err(|e| CaptureError::Corrupt(format!("stored plan: {e}")))
}

/// The clock offset (µs) the installed triggers add to the time they record.
pub async fn installed_clock_offset(conn: &mut Conn) -> Result<i64, DbError> {
    Ok(bookkeeping::get_meta(conn, CLOCK_OFFSET_META)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Enabled flag per table from `ferry_table`.
pub async fn enabled_tables(conn: &mut Conn) -> Result<BTreeMap<String, bool>, DbError> {
    let rows: Vec<(String, bool)> = conn
        .query(format!("SELECT table_name, enabled FROM {TABLE_STATE}"))
        .await
        .map_err(DbError::query("reading ferry_table"))?;
    Ok(rows.into_iter().collect())
}

/// ferry's installed triggers: name → (table, body).
pub async fn installed_triggers(
    conn: &mut Conn,
) -> Result<BTreeMap<String, (String, String)>, DbError> {
    let rows: Vec<(String, String, String)> = conn
        .query(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'ferry\\_%'",
        )
        .await
        .map_err(DbError::query("listing triggers"))?;
    Ok(rows.into_iter().map(|(n, t, b)| (n, (t, b))).collect())
}

async fn drop_trigger(conn: &mut Conn, name: &str) -> Result<(), DbError> {
    conn.query_drop(format!("DROP TRIGGER IF EXISTS {}", ident(name)))
        .await
        .map_err(DbError::query(format!("dropping trigger {name}")))
}
