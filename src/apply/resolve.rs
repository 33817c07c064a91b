//! Resolving identities to local rows: the way back from uuid space.
//!
//! A row's *key values* are the local values of its identity columns: the uuid itself, a
//! natural key's values, or, for subclass and composite tables, the local ids of the
//! referenced rows. [`Resolver::key_values`] computes them (a subclass row's key is its
//! parent's local id, so the parent must be known); [`Resolver::existing`] finds which
//! of those rows exist and their local integer id. Every lookup is one batched query.

use std::collections::HashMap;

use mysql_async::prelude::*;
use mysql_async::{Conn, Value as MyValue};

use crate::bundle::Identity;
use crate::db::{ident, DbError};
use crate::schema::{Identity as Rule, Schema, SyncPlan};

/// Local key values of one row (in the order of the identity's columns).
pub type KeyValues = Vec<MyValue>;

/// Identity → local lookups against the database.
pub struct Resolver<'a> {
    pub plan: &'a SyncPlan,
    pub schema: &'a Schema,
}

/// A found row: its key values and, when the table has one, its integer primary key.
#[derive(Debug, Clone)]
pub struct LocalRow {
    pub key: KeyValues,
    pub local_id: Option<i64>,
}

impl Resolver<'_> {
    fn rule(&self, table: &str) -> Option<&Rule> {
        self.plan
            .table(table)
            .and_then(|t| t.synced())
            .map(|s| &s.identity)
    }

    /// The integer primary key column of `table`, if any.
    pub fn int_pk(&self, table: &str) -> Option<String> {
        let t = self.schema.tables.get(table)?;
        match t.primary_key.as_slice() {
            [pk] if t.column(pk).is_some_and(|c| c.is_integer()) => Some(pk.clone()),
            _ => None,
        }
    }

    /// The key values of each identity; `None` where a referenced row (a subclass row's
    /// parent, a composite key's part) does not exist locally.
    pub async fn key_values(
        &self,
        conn: &mut Conn,
        table: &str,
        ids: &[Identity],
    ) -> Result<Vec<Option<KeyValues>>, DbError> {
        let Some(rule) = self.rule(table).cloned() else {
            return Ok(vec![None; ids.len()]);
        };
        Ok(match rule {
            Rule::Uuid { .. } | Rule::Natural { .. } => ids
                .iter()
                .map(|i| Some(i.0.iter().map(|p| MyValue::from(p.clone())).collect()))
                .collect(),
            Rule::Parent { column, parent } => {
                let fk = &self.schema.tables[table]
                    .fk_on(&column)
                    .expect("parent fk")
                    .ref_columns[0];
                let found = Box::pin(self.ref_values(conn, &parent, fk, ids)).await?;
                found.into_iter().map(|v| v.map(|v| vec![v])).collect()
            }
            Rule::Composite { parts } => {
                let mut columns: Vec<Vec<Option<MyValue>>> = Vec::new();
                for (i, p) in parts.iter().enumerate() {
                    let part_ids: Vec<Identity> = ids
                        .iter()
                        .map(|id| Identity(vec![id.0[i].clone()]))
                        .collect();
                    columns.push(match &p.references {
                        Some(target) => {
                            let fk = &self.schema.tables[table]
                                .fk_on(&p.column)
                                .expect("part fk")
                                .ref_columns[0];
                            Box::pin(self.ref_values(conn, target, fk, &part_ids)).await?
                        }
                        None => part_ids
                            .iter()
                            .map(|i| Some(MyValue::from(i.0[0].clone())))
                            .collect(),
                    });
                }
                (0..ids.len())
                    .map(|row| columns.iter().map(|c| c[row].clone()).collect())
                    .collect()
            }
        })
    }

    /// The local value of `ref_column` of the `table` rows with these identities (what a
    /// foreign key to them holds); `None` where the row does not exist.
    pub async fn ref_values(
        &self,
        conn: &mut Conn,
        table: &str,
        ref_column: &str,
        ids: &[Identity],
    ) -> Result<Vec<Option<MyValue>>, DbError> {
        let rule = self.rule(table).cloned();
        // A reference to a natural key holds the key itself.
        if let Some(Rule::Natural { columns }) = &rule {
            if columns.len() == 1 && columns[0] == ref_column {
                let keys = self.key_values(conn, table, ids).await?;
                let rows = self
                    .existing(
                        conn,
                        table,
                        &keys.iter().flatten().cloned().collect::<Vec<_>>(),
                        false,
                    )
                    .await?;
                return Ok(keys
                    .into_iter()
                    .map(|k| {
                        k.filter(|k| rows.contains_key(&key_text(k)))
                            .map(|k| k[0].clone())
                    })
                    .collect());
            }
        }
        let keys = self.key_values(conn, table, ids).await?;
        let present: Vec<KeyValues> = keys.iter().flatten().cloned().collect();
        let rows = self.existing(conn, table, &present, false).await?;
        let id_cols = rule.as_ref().map(|r| r.columns()).unwrap_or_default();
        let pos = id_cols.iter().position(|c| *c == ref_column);
        let int_pk = self.int_pk(table);
        let mut out = Vec::with_capacity(ids.len());
        for k in keys {
            let v = k
                .and_then(|k| rows.get(&key_text(&k)))
                .and_then(|row| match pos {
                    Some(p) => Some(row.key[p].clone()),
                    None if int_pk.as_deref() == Some(ref_column) => row.local_id.map(MyValue::Int),
                    None => None,
                });
            out.push(v);
        }
        Ok(out)
    }

    /// Which of these keys exist in `table` (by key text), with their local id. With
    /// `lock`, the rows are locked until the transaction ends.
    pub async fn existing(
        &self,
        conn: &mut Conn,
        table: &str,
        keys: &[KeyValues],
        lock: bool,
    ) -> Result<HashMap<String, LocalRow>, DbError> {
        let mut out = HashMap::new();
        let Some(rule) = self.rule(table).cloned() else {
            return Ok(out);
        };
        if keys.is_empty() {
            return Ok(out);
        }
        let cols = rule.columns();
        let int_pk = self.int_pk(table);
        let mut select: Vec<String> = cols.iter().map(|c| format!("t.{}", ident(c))).collect();
        if let Some(pk) = &int_pk {
            select.push(format!("t.{}", ident(pk)));
        }
        for chunk in keys.chunks(500) {
            let tuple = if cols.len() == 1 {
                format!("t.{}", ident(cols[0]))
            } else {
                format!(
                    "({})",
                    cols.iter()
                        .map(|c| format!("t.{}", ident(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let one = if cols.len() == 1 {
                "?".to_string()
            } else {
                format!("({})", vec!["?"; cols.len()].join(", "))
            };
            let sql = format!(
                "SELECT {} FROM {} AS t WHERE {tuple} IN ({}){}",
                select.join(", "),
                ident(table),
                vec![one; chunk.len()].join(", "),
                if lock { " FOR UPDATE" } else { "" }
            );
            let params: Vec<MyValue> = chunk.iter().flatten().cloned().collect();
            let rows: Vec<mysql_async::Row> = conn
                .exec(sql, params)
                .await
                .map_err(DbError::query(format!("looking up {table} rows")))?;
            for row in rows {
                let mut values: Vec<MyValue> = row.unwrap();
                let local_id = if int_pk.is_some() {
                    match values.pop() {
                        Some(MyValue::Int(i)) => Some(i),
                        Some(MyValue::UInt(u)) => Some(u as i64),
                        _ => None,
                    }
                } else {
                    None
                };
                let key: KeyValues = values.into_iter().map(normalize).collect();
                out.insert(key_text(&key), LocalRow { key, local_id });
            }
        }
        Ok(out)
    }
}

/// Integers read back come as Int or UInt and text as Bytes: one form for comparing.
fn normalize(v: MyValue) -> MyValue {
    match v {
        MyValue::UInt(u) if u <= i64::MAX as u64 => MyValue::Int(u as i64),
        other => other,
    }
}

/// A map key for key values, comparing text byte for byte.
///
/// Text compares exactly here, while MariaDB's collations may fold case: a natural key
/// that differs only in case finds no match here and its insert then fails loudly on the
/// unique key, rather than silently merging two rows.
pub fn key_text(k: &KeyValues) -> String {
    let mut s = String::new();
    for v in k {
        match normalize(v.clone()) {
            MyValue::Bytes(b) => s.push_str(&String::from_utf8_lossy(&b)),
            MyValue::Int(i) => s.push_str(&i.to_string()),
            other => s.push_str(&other.as_sql(false)),
        }
        s.push('\u{1f}');
    }
    s
}
