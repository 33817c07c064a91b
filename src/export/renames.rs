//! Rows given a new uuid here while other rows refer to them.
//!
//! Capture logs an `UPDATE` of a row's uuid as a delete of the old identity and, right
//! after it, an insert of the new one under the same local id: a bundle carries no link
//! between the two. A peer holding rows that refer to the old identity is then asked
//! to delete a row they still refer to: it refuses the bundle when they refer to it by
//! foreign key (and its sequence from this node stops there for good), or is left with
//! a soft reference to nothing. So export refuses such a range first, at the site that
//! made the change, and names the `UPDATE` that undoes it ([`IdentityChange`]). The
//! sorter's placer notes the rows whose identity changed
//! ([`super::sorter::Placer::renamed`]); [`check`] looks at each in the export's snapshot.

use mysql_async::prelude::*;
use mysql_async::Conn;
use rustc_hash::FxHashMap;

use super::ExportError;
use crate::db::{ident, literal, DbError};
use crate::schema::soft_refs::SoftRefEncoding;
use crate::schema::{Identity, Schema, SyncPlan};

/// A row that other rows refer to was given a new uuid here.
#[derive(Debug, thiserror::Error)]
#[error("{table} row {id} was given a new uuid here ({old} became {new}), and {}\nhint: change it back: `UPDATE {table} SET {column_uuid} = {} WHERE {pk} = {id}`, then export again (ferry cannot carry a new uuid of a row that other rows refer to)", self.why(), literal(.old))]
pub struct IdentityChange {
    pub table: String,
    pub pk: String,
    pub id: i64,
    pub column_uuid: String,
    pub old: String,
    pub new: String,
    pub child: String,
    pub column: String,
    /// `child`'s rows take their identity from the row (a subclass row, or a part of a
    /// composite key), rather than refer to it by a key of their own.
    pub takes_identity: bool,
}

impl IdentityChange {
    fn why(&self) -> String {
        let (old, child, column) = (&self.old, &self.child, &self.column);
        if self.takes_identity {
            format!(
                "a {child} row takes its identity from it (by {child}.{column}): capture logs no \
                 change of that row's identity, so the bundle would lose it; none was written"
            )
        } else {
            format!(
                "{child}.{column} refers to it: the bundle would delete {old} at peers whose \
                 rows still refer to it, so none was written"
            )
        }
    }
}

/// Refuses the range when a row noted in `renamed` ((rank, local id) → its first
/// identity in the range) now has another uuid, no row holds the old one any more (so
/// a tombstone of it goes out), and either a row of a synced table takes its identity
/// from the row (a subclass row, a composite key: capture logs no entry for its new
/// identity), or the old one is not a row made here in the range after `cursor`
/// (which the peer does not hold) and another row refers to the row by foreign key or
/// by a soft reference by local id. Tables whose identity is not a uuid
/// column of a row with a local id are not checked. A few lookups per noted row (a soft
/// reference's value column has no index: a scan of that table); a range has few.
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
        let (Some(pk), Identity::Uuid { column: uuid, .. }) = (&synced.local_id, &synced.identity)
        else {
            continue;
        };
        let (t, pk_i, uuid_i) = (ident(table), ident(pk), ident(uuid));
        let query = |e| DbError::query(format!("reading {table} row {id}"))(e);
        let new: Option<String> = fetch
            .exec_first(
                format!("SELECT COALESCE({uuid_i}, '') FROM {t} WHERE {pk_i} = ?"),
                (id,),
            )
            .await
            .map_err(query)?;
        let Some(new) = new.filter(|new| new != old) else {
            continue; // gone since, or back to what it was
        };
        let held: Option<i64> = fetch
            .exec_first(
                // Exactly: a new uuid that differs only in case is another identity.
                format!("SELECT 1 FROM {t} WHERE {uuid_i} = ? AND BINARY {uuid_i} = ? LIMIT 1"),
                (old, old),
            )
            .await
            .map_err(query)?;
        if held.is_some() {
            continue;
        }
        let refused = |child: String, column: String, takes_identity: bool| {
            Err(ExportError::IdentityChanged(Box::new(IdentityChange {
                table: table.clone(),
                pk: pk.clone(),
                id,
                column_uuid: uuid.clone(),
                old: old.clone(),
                new: new.clone(),
                child,
                column,
                takes_identity,
            })))
        };
        // Rows whose identity is made of this row's change identity along with it, and
        // no log entry says so: refused even when the peer never held the old one
        // (issue 4 review: a patient made with its person, the person then given a new
        // uuid in the same range, was lost).
        for (child, column, sql) in taking_identity(plan, schema, table, pk) {
            let takes: Option<i64> = fetch
                .exec_first(sql, (id,))
                .await
                .map_err(DbError::query(format!("reading rows of {child}")))?;
            if takes.is_some() {
                return refused(child, column, true);
            }
        }
        if made_in_range(fetch, table, old, cursor).await? {
            continue;
        }
        for Probe {
            child,
            column,
            sql,
            text,
        } in referring(plan, schema, table, pk)
        {
            let value = if text {
                mysql_async::Value::from(id.to_string())
            } else {
                mysql_async::Value::from(id)
            };
            let refers: Option<i64> =
                fetch
                    .exec_first(sql, (value, id))
                    .await
                    .map_err(DbError::query(format!(
                        "reading rows that refer to {table}"
                    )))?;
            if refers.is_some() {
                return refused(child, column, false);
            }
        }
    }
    Ok(())
}

/// Whether `key`'s first entry after `cursor` is an insert made here: an identity made
/// in the range, which the peer does not hold.
async fn made_in_range(
    fetch: &mut Conn,
    table: &str,
    key: &str,
    cursor: u64,
) -> Result<bool, DbError> {
    let first: Option<(String, Option<String>)> = fetch
        .exec_first(
            "SELECT op, origin FROM ferry_change FORCE INDEX (ferry_change_row) \
             WHERE table_name = ? AND row_key = ? AND change_id > ? ORDER BY change_id LIMIT 1",
            (table, key, cursor),
        )
        .await
        .map_err(DbError::query("reading the change log"))?;
    Ok(matches!(first, Some((op, None)) if op == "I"))
}

/// The synced tables whose rows take their identity from a row of `table` (a subclass
/// table, or a composite key with a part referring to it): per key column, a query
/// that finds such a row of the row whose local id `pk` it binds.
fn taking_identity(
    plan: &SyncPlan,
    schema: &Schema,
    table: &str,
    pk: &str,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (child, s) in plan.synced() {
        let columns: Vec<&str> = match &s.identity {
            Identity::Parent { column, parent } if parent == table => vec![column.as_str()],
            Identity::Composite { parts } => parts
                .iter()
                .filter(|p| p.references.as_deref() == Some(table))
                .map(|p| p.column.as_str())
                .collect(),
            _ => Vec::new(),
        };
        for column in columns {
            let Some(fk) = schema.tables.get(child).and_then(|t| t.fk_on(column)) else {
                continue;
            };
            let sql = format!(
                "SELECT 1 FROM {} WHERE {} = (SELECT {} FROM {} WHERE {} = ?) LIMIT 1",
                ident(child),
                ident(column),
                ident(&fk.ref_columns[0]),
                ident(table),
                ident(pk)
            );
            out.push((child.to_string(), column.to_string(), sql));
        }
    }
    out
}

/// A query that finds a row referring to a given row (binding its local id twice:
/// the value to look for, then the row itself, which may refer to itself).
struct Probe {
    child: String,
    column: String,
    sql: String,
    /// The referring column holds the id as text (a soft reference).
    text: bool,
}

/// The columns that can refer to a row of `table` by its local id `pk`: every
/// single-column foreign key of the schema (as import checks its deletes), and synced
/// soft references by local id whose attribute type names `table`.
fn referring(plan: &SyncPlan, schema: &Schema, table: &str, pk: &str) -> Vec<Probe> {
    // A row's reference to itself goes with it.
    let not_itself = |child: &str, alias: &str| {
        if child == table {
            format!("{alias}{} <> ?", ident(pk))
        } else {
            "? IS NOT NULL".to_string()
        }
    };
    let mut out = Vec::new();
    for (child, column) in schema.referrers(table, pk) {
        let sql = format!(
            "SELECT 1 FROM {} WHERE {} = ? AND {} LIMIT 1",
            ident(&child.name),
            ident(column),
            not_itself(&child.name, "")
        );
        out.push(Probe {
            child: child.name.clone(),
            column: column.to_string(),
            sql,
            text: false,
        });
    }
    for (child, s) in plan.synced() {
        for soft in &s.soft_refs {
            let kinds: Vec<String> = soft
                .targets
                .iter()
                .filter(|(_, t)| *t == table)
                .map(|(kind, _)| literal(kind))
                .collect();
            let type_key = schema.tables.get(child).and_then(|t| {
                t.foreign_keys
                    .iter()
                    .find(|f| f.columns == [soft.type_column.as_str()])
            });
            let Some(type_key) = type_key.map(|f| &f.ref_columns[0]) else {
                continue;
            };
            if kinds.is_empty() || soft.encoding != SoftRefEncoding::LocalId {
                continue;
            }
            // The value column is text: compared with the id as text, in its collation.
            let sql = format!(
                "SELECT 1 FROM {} AS c JOIN {} AS k ON k.{} = c.{} \
                 WHERE c.{} = ? AND {} AND k.{} IN ({}) LIMIT 1",
                ident(child),
                ident(&soft.type_table),
                ident(type_key),
                ident(&soft.type_column),
                ident(&soft.column),
                not_itself(child, "c."),
                ident(&soft.discriminator),
                kinds.join(", ")
            );
            out.push(Probe {
                child: child.to_string(),
                column: soft.column.clone(),
                sql,
                text: true,
            });
        }
    }
    out
}
