//! Rows that took a new identity here while other rows refer to them.
//!
//! Capture logs a row whose identity changed (an `UPDATE` of its uuid by direct SQL, or
//! its local id taken again by a new row) as a delete of the old identity and an insert
//! of the new one: a bundle carries no link between the two. A peer holding rows that
//! refer to the old identity would be asked to delete a row they still refer to, and
//! refuses the bundle; its sequence from this node would stop there for good. So export
//! refuses such a range first, at the site that made the change, and names the
//! `UPDATE` that undoes it ([`IdentityChange`]). The sorter's placer notes where a local
//! id took another identity ([`super::sorter::Placer::renamed`]); [`check`] looks at
//! each in the export's snapshot.

use mysql_async::prelude::*;
use mysql_async::Conn;
use rustc_hash::FxHashMap;

use super::ExportError;
use crate::db::{ident, literal, DbError};
use crate::schema::soft_refs::SoftRefEncoding;
use crate::schema::{Identity, Schema, SyncPlan};

/// A row that other rows refer to took another identity here.
#[derive(Debug, thiserror::Error)]
#[error("{table} row {id} changed its identity here from {old} to {new}, and {child}.{column} refers to it: a peer holding the rows that refer to {old} would refuse the bundle, so none was written\nhint: {undo}, then export again (ferry cannot carry a new identity of a row that other rows refer to)")]
pub struct IdentityChange {
    pub table: String,
    pub id: i64,
    pub old: String,
    pub new: String,
    pub child: String,
    pub column: String,
    /// How to change it back.
    pub undo: String,
}

/// Refuses the range when a row noted in `renamed` ((rank, local id) → the identity
/// first deleted there) now has another identity, one the peer may hold (it was not
/// made in the range after `cursor`), and a synced row refers to it by foreign key or
/// by a soft reference by local id. A row back to its first identity, or gone since,
/// passes. A few indexed lookups per noted row; a range has few of them.
pub async fn check(
    fetch: &mut Conn,
    plan: &SyncPlan,
    schema: &Schema,
    tables: &[String],
    cursor: u64,
    renamed: &FxHashMap<(u32, i64), String>,
) -> Result<(), ExportError> {
    let mut renamed: Vec<(&(u32, i64), &String)> = renamed.iter().collect();
    renamed.sort();
    for (&(rank, id), old) in renamed {
        let table = &tables[rank as usize];
        let Some(synced) = plan.table(table).and_then(|t| t.synced()) else {
            continue;
        };
        let Some(pk) = &synced.local_id else {
            continue;
        };
        let Some(expr) = crate::schema::identity_sql::row_identity(plan, schema, table, &|c| {
            format!("t.{}", ident(c))
        }) else {
            continue;
        };
        let sql = format!(
            "SELECT {expr} FROM {} AS t WHERE t.{} = ?",
            ident(table),
            ident(pk)
        );
        let new: Option<Option<String>> = fetch
            .exec_first(sql, (id,))
            .await
            .map_err(DbError::query(format!("reading {table} row {id}")))?;
        let Some(Some(new)) = new else {
            continue; // gone since
        };
        if new == *old || made_in_range(fetch, table, old, cursor).await? {
            continue;
        }
        for (child, column, probe) in referring(plan, schema, table, pk) {
            let refers: Option<i64> =
                fetch
                    .exec_first(probe, (id,))
                    .await
                    .map_err(DbError::query(format!(
                        "reading rows that refer to {table}"
                    )))?;
            if refers.is_none() {
                continue;
            }
            let undo = match &synced.identity {
                Identity::Uuid { column, .. } => format!(
                    "change it back: `UPDATE {table} SET {column} = {} WHERE {pk} = {id}`",
                    literal(old)
                ),
                _ => format!("change its key columns back to {old}"),
            };
            return Err(ExportError::IdentityChanged(Box::new(IdentityChange {
                table: table.clone(),
                id,
                old: old.clone(),
                new,
                child,
                column,
                undo,
            })));
        }
    }
    Ok(())
}

/// Whether `key`'s first entry after `cursor` is an insert: an identity made in the
/// range, which the peer does not hold.
async fn made_in_range(
    fetch: &mut Conn,
    table: &str,
    key: &str,
    cursor: u64,
) -> Result<bool, DbError> {
    let first: Option<String> = fetch
        .exec_first(
            "SELECT op FROM ferry_change FORCE INDEX (ferry_change_row) \
             WHERE table_name = ? AND row_key = ? AND change_id > ? ORDER BY change_id LIMIT 1",
            (table, key, cursor),
        )
        .await
        .map_err(DbError::query("reading the change log"))?;
    Ok(first.as_deref() == Some("I"))
}

/// The synced columns that can refer to a row of `table` by its local id `pk`, as
/// (table, column, a query that finds one row referring to the id bound to it): foreign
/// keys, and soft references by local id whose attribute type names `table`.
fn referring(
    plan: &SyncPlan,
    schema: &Schema,
    table: &str,
    pk: &str,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (child, s) in plan.synced() {
        for r in &s.references {
            if r.table == table && r.ref_column == pk {
                let probe = format!(
                    "SELECT 1 FROM {} WHERE {} = ? LIMIT 1",
                    ident(child),
                    ident(&r.column)
                );
                out.push((child.to_string(), r.column.clone(), probe));
            }
        }
        for soft in &s.soft_refs {
            let kinds: Vec<String> = soft
                .targets
                .iter()
                .filter(|(_, t)| *t == table)
                .map(|(kind, _)| literal(kind))
                .collect();
            let type_key = schema
                .tables
                .get(child)
                .and_then(|t| {
                    t.foreign_keys
                        .iter()
                        .find(|f| f.columns == [soft.type_column.as_str()])
                })
                .map(|f| &f.ref_columns[0]);
            let Some(type_key) = type_key else {
                continue;
            };
            if kinds.is_empty() || soft.encoding != SoftRefEncoding::LocalId {
                continue;
            }
            let probe = format!(
                "SELECT 1 FROM {} AS c JOIN {} AS k ON k.{} = c.{} \
                 WHERE c.{} = CAST(? AS CHAR) AND k.{} IN ({}) LIMIT 1",
                ident(child),
                ident(&soft.type_table),
                ident(type_key),
                ident(&soft.type_column),
                ident(&soft.column),
                ident(&soft.discriminator),
                kinds.join(", ")
            );
            out.push((child.to_string(), soft.column.clone(), probe));
        }
    }
    out
}
