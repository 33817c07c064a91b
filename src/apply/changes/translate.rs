//! Translating a chunk's references back to local ids before its rows are written.
//!
//! Every foreign key and soft reference travels as the referenced row's identity; here
//! each becomes the local key of that row, found through the id cache or one query per
//! referenced table. A reference to a row that comes later in the same bundle (a cycle,
//! a self-reference) is written as a placeholder and recorded as a fixup for the end;
//! a later change of the run that writes the row again drops it (`drop_fixups`).

use std::collections::{BTreeMap, HashMap};

use mysql_async::prelude::*;
use mysql_async::{Conn, Value as MyValue};

use super::{value_text, Applier, Fixup};
use crate::apply::resolve::{key_text, KeyValues};
use crate::apply::ImportError;
use crate::bundle::{Change, Identity, Value};
use crate::db::{ident, DbError};
use crate::export::rows::to_param;
use crate::schema::plan::{SoftRef, SyncedTable};
use crate::schema::soft_refs::SoftRefEncoding;
use crate::schema::Table;
use rustc_hash::FxHashMap;

impl<'a> Applier<'a> {
    /// Values ready to write for each row in `writes`, references translated. The
    /// values are moved out of the changes (no copy of their text) unless
    /// `keep_values` (a later step still reads them).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn translate(
        &mut self,
        conn: &mut Conn,
        table: &str,
        synced: &SyncedTable,
        info: &Table,
        changes: &mut [Change],
        writes: &[usize],
        keys: &[Option<KeyValues>],
        keep_values: bool,
    ) -> Result<HashMap<usize, Vec<MyValue>>, ImportError> {
        let resolver = self.resolver();
        // Translated references by (change, column).
        let mut refs: FxHashMap<(usize, usize), MyValue> = FxHashMap::default();
        for (col_idx, column) in synced.columns.iter().enumerate() {
            let fk = synced.references.iter().find(|r| &r.column == column);
            let soft = synced
                .soft_refs
                .iter()
                .find(|s| &s.column == column && s.encoding == SoftRefEncoding::LocalId);
            if fk.is_none() && soft.is_none() {
                continue;
            }
            // Which target table each row's reference goes to.
            let mut by_target: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
            let disc = match soft {
                Some(s) => {
                    self.discriminators(conn, s, synced, changes, writes)
                        .await?
                }
                None => HashMap::new(),
            };
            for &i in writes {
                let Value::Ref(_) = &changes[i].values[col_idx] else {
                    continue;
                };
                let target = match (fk, soft) {
                    (Some(r), _) => (r.table.clone(), r.ref_column.clone()),
                    (None, Some(s)) => {
                        let Some(t) = disc.get(&i).and_then(|d| s.targets.get(d)) else {
                            return Err(ImportError::BadChange {
                                table: table.to_string(),
                                why: format!(
                                    "{column} holds a reference but its attribute type names no referenced table"
                                ),
                            });
                        };
                        let pk = resolver.int_pk(t).unwrap_or_default();
                        (t.clone(), pk)
                    }
                    _ => unreachable!("checked above"),
                };
                by_target.entry(target).or_default().push(i);
            }
            for ((target, ref_column), rows) in by_target {
                let id_refs: Vec<&Identity> = rows
                    .iter()
                    .map(|&i| match &changes[i].values[col_idx] {
                        Value::Ref(id) => id,
                        _ => unreachable!("filtered"),
                    })
                    .collect();
                let found = self
                    .ids
                    .resolve(conn, &resolver, &target, &ref_column, &id_refs)
                    .await?;
                let nullable = info.column(column).is_some_and(|c| c.nullable);
                for ((&i, &id), v) in rows.iter().zip(&id_refs).zip(found) {
                    let value = match v {
                        Some(v) if soft.is_some() => MyValue::from(value_text(&v)),
                        Some(v) => v,
                        None => {
                            let Some(key) = keys[i].clone() else {
                                return Err(self.missing_parent(
                                    table,
                                    synced,
                                    &changes[i].identity,
                                ));
                            };
                            self.fixup_rows.insert((table.to_string(), key_text(&key)));
                            self.fixups.push(Fixup {
                                table: table.to_string(),
                                key,
                                column: column.clone(),
                                target: target.clone(),
                                ref_column: ref_column.clone(),
                                identity: id.clone(),
                                row: changes[i].identity.clone(),
                            });
                            if soft.is_some() {
                                MyValue::from("")
                            } else if nullable {
                                MyValue::NULL
                            } else {
                                MyValue::Int(0)
                            }
                        }
                    };
                    refs.insert((i, col_idx), value);
                }
            }
        }
        let mut out: HashMap<usize, Vec<MyValue>> = HashMap::with_capacity(writes.len());
        for &i in writes {
            let values = if keep_values {
                changes[i].values.clone()
            } else {
                std::mem::take(&mut changes[i].values)
            };
            let row = values
                .into_iter()
                .enumerate()
                .map(|(c, v)| match v {
                    Value::Ref(_) => refs.remove(&(i, c)).unwrap_or_else(|| to_param(&v)),
                    other => into_param(other),
                })
                .collect();
            out.insert(i, row);
        }
        Ok(out)
    }

    /// The attribute type's discriminator for each row with a by-id soft reference,
    /// read from the type row the change names.
    async fn discriminators(
        &self,
        conn: &mut Conn,
        s: &SoftRef,
        synced: &SyncedTable,
        changes: &[Change],
        writes: &[usize],
    ) -> Result<HashMap<usize, String>, ImportError> {
        let mut out = HashMap::new();
        let Some(type_idx) = synced.columns.iter().position(|c| c == &s.type_column) else {
            return Ok(out);
        };
        let resolver = self.resolver();
        let Some(type_pk) = resolver.int_pk(&s.type_table) else {
            return Ok(out);
        };
        let rows: Vec<(usize, Identity)> = writes
            .iter()
            .filter_map(|&i| match &changes[i].values[type_idx] {
                Value::Ref(id) => Some((i, id.clone())),
                _ => None,
            })
            .collect();
        let ids: Vec<Identity> = rows.iter().map(|(_, id)| id.clone()).collect();
        let pks = resolver
            .ref_values(conn, &s.type_table, &type_pk, &ids)
            .await?;
        let mut cache: HashMap<String, Option<String>> = HashMap::new();
        for ((i, _), pk) in rows.iter().zip(pks) {
            let Some(pk) = pk else { continue };
            let k = value_text(&pk);
            if !cache.contains_key(&k) {
                let d: Option<Option<String>> = conn
                    .exec_first(
                        format!(
                            "SELECT {} FROM {} WHERE {} = ?",
                            ident(&s.discriminator),
                            ident(&s.type_table),
                            ident(&type_pk)
                        ),
                        (pk.clone(),),
                    )
                    .await
                    .map_err(DbError::query("reading an attribute type"))?;
                cache.insert(k.clone(), d.flatten());
            }
            if let Some(Some(d)) = cache.get(&k) {
                out.insert(*i, d.clone());
            }
        }
        Ok(out)
    }
}

/// A value as a statement parameter, its text or bytes moved, not copied.
fn into_param(v: Value) -> MyValue {
    match v {
        Value::Decimal(s) | Value::Text(s) => MyValue::Bytes(s.into_bytes()),
        Value::Bytes(b) => MyValue::Bytes(b),
        other => to_param(&other),
    }
}
