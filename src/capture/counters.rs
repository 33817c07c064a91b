//! Noticing `TRUNCATE TABLE`, the one statement capture cannot see.
//!
//! MariaDB fires no trigger for `TRUNCATE TABLE`: the rows go from this node and stay
//! at the peers, and nothing in the change log says so. What a truncate does leave is
//! the table's id counter: it starts again from 1. Nothing else a clinic does moves an
//! InnoDB `AUTO_INCREMENT` back (MariaDB keeps it across restarts since 10.2; deletes
//! and `ALTER TABLE … AUTO_INCREMENT` never take it below the highest id present), so
//! `ferry_table.id_counter` remembers, per table switched on, the highest counter
//! export has seen ([`record`]), and a live counter below it is drift ([`emptied`]):
//! `ferry status` names it and export refuses, until the operator has dealt with the
//! rows and `ferry setup` (or `ferry tables enable`) takes the counters as they are
//! ([`reset`]). A database restored from a backup brings its own record with it.
//!
//! What it cannot see: a truncate whose table got back above its recorded counter
//! before the next export (a small table refilled at once), a table without an
//! auto-increment key, and the rows' contents (`ferry verify` compares those).

use std::collections::BTreeMap;

use mysql_async::prelude::*;
use mysql_async::Conn;

use super::bookkeeping::TABLE_STATE;
use super::drift::{DriftItem, DriftKind};
use crate::db::DbError;

/// The live `AUTO_INCREMENT` of every table of `database` that has one.
async fn live(conn: &mut Conn, database: &str) -> Result<BTreeMap<String, u64>, DbError> {
    let rows: Vec<(String, u64)> = conn
        .exec(
            "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ? AND AUTO_INCREMENT IS NOT NULL",
            (database,),
        )
        .await
        .map_err(DbError::query("reading the tables' id counters"))?;
    Ok(rows.into_iter().collect())
}

/// The recorded counter of every table switched on that has one.
async fn recorded(conn: &mut Conn) -> Result<BTreeMap<String, u64>, DbError> {
    let rows: Vec<(String, u64)> = conn
        .query(format!(
            "SELECT table_name, id_counter FROM {TABLE_STATE} \
             WHERE enabled = 1 AND id_counter IS NOT NULL"
        ))
        .await
        .map_err(DbError::query("reading the recorded id counters"))?;
    Ok(rows.into_iter().collect())
}

/// What the operator does about a table [`emptied`]: the hint of export's refusal and of
/// `ferry status`.
pub const EMPTIED_HINT: &str = "a table emptied by TRUNCATE TABLE still has its rows at the \
    peers: if they should go everywhere, empty it the same way on every node; if not, put \
    them back from a backup (see \"When something is wrong\" in docs/operations.md). Then \
    run `ferry setup` on this node: it takes the id counters as they are";

/// The tables switched on whose id counter went back below the recorded one, as drift.
pub async fn emptied(conn: &mut Conn, database: &str) -> Result<Vec<DriftItem>, DbError> {
    let live = live(conn, database).await?;
    Ok(recorded(conn)
        .await?
        .into_iter()
        .filter_map(|(table, was)| {
            let now = *live.get(&table)?;
            (now < was).then(|| DriftItem {
                change: format!(
                    "emptied by TRUNCATE TABLE, which no trigger sees (its id counter went back \
                     from {was} to {now}): the rows it held are still at the peers"
                ),
                table,
                kind: DriftKind::Truncate,
            })
        })
        .collect())
}

/// Raises each recorded counter to the live one where that is higher (never lowers
/// one: a truncate between [`emptied`] and this stays visible). Tables switched off are
/// left alone. Export calls it once its checks passed.
pub async fn record(conn: &mut Conn, database: &str) -> Result<(), DbError> {
    let live = live(conn, database).await?;
    let enabled: Vec<(String, Option<u64>)> = conn
        .query(format!(
            "SELECT table_name, id_counter FROM {TABLE_STATE} WHERE enabled = 1"
        ))
        .await
        .map_err(DbError::query("reading the recorded id counters"))?;
    let grown: Vec<(String, u64)> = enabled
        .into_iter()
        .filter_map(|(t, was)| {
            let now = *live.get(&t)?;
            (!matches!(was, Some(w) if now <= w)).then_some((t, now))
        })
        .collect();
    for (table, now) in grown {
        conn.exec_drop(
            format!(
                "UPDATE {TABLE_STATE} SET id_counter = GREATEST(COALESCE(id_counter, 0), ?) \
                 WHERE table_name = ?"
            ),
            (now, table),
        )
        .await
        .map_err(DbError::query("recording the tables' id counters"))?;
    }
    Ok(())
}

/// Takes the live counters as they are, for every table or one (setup, switching a
/// table on, a rejoin after a restore: the operator has dealt with what went before).
pub async fn reset(conn: &mut Conn, database: &str, table: Option<&str>) -> Result<(), DbError> {
    let live = live(conn, database).await?;
    let names: Vec<String> = match table {
        Some(t) => vec![t.to_string()],
        None => conn
            .query(format!("SELECT table_name FROM {TABLE_STATE}"))
            .await
            .map_err(DbError::query("reading the recorded id counters"))?,
    };
    for name in names {
        conn.exec_drop(
            format!("UPDATE {TABLE_STATE} SET id_counter = ? WHERE table_name = ?"),
            (live.get(&name).copied(), &name),
        )
        .await
        .map_err(DbError::query("recording the tables' id counters"))?;
    }
    Ok(())
}
