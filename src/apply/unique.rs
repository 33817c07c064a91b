//! Unique collisions: two rows with one value in a column that must not repeat.
//!
//! Two sites can each create a row with the same value in a unique non-identity column:
//! a unique index the database declares (`users.email`, `location_attribute_type.name`)
//! or one OpenMRS only means ([`crate::schema::unique_rules`]: `users.system_id`,
//! `users.username`). Such a collision never fails a bundle. One rule decides it, the
//! same on every node: the row whose current version is later gets its value suffixed
//! with `-<node of that version>`, cut so that the result fits the column. When the
//! incoming row is the later one its value is suffixed before it is written; when the
//! local row is later (the earlier row arrived second here) the local row is updated,
//! in the importer's session so that no trigger captures it: every node makes the same
//! rename by itself. Either way the collision is recorded in `ferry_conflict`.

use std::collections::HashMap;

use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value as MyValue};

use super::changes::identity_text;
use super::conflict::{values_json, Kind, NewConflict, Side};
use super::ImportError;
use crate::bundle::{Change, Version};
use crate::capture::versions::{heads, Floors};
use crate::db::{ident, DbError};
use crate::export::rows::TableReader;
use crate::schema::unique_rules::declared_unique;
use crate::schema::{SyncedTable, Table};

/// A column whose values must not repeat.
#[derive(Debug, Clone)]
pub struct UniqueColumn {
    /// Position among the synced columns (and in a change's values).
    pub idx: usize,
    pub column: String,
    /// The column's length in characters, when it has one.
    pub max_chars: Option<usize>,
}

/// The single-column unique indexes and declared unique columns of a synced table,
/// identity columns left out (the identity decides which row a change is).
pub fn unique_columns(table: &str, synced: &SyncedTable, info: &Table) -> Vec<UniqueColumn> {
    let identity = synced.identity.columns();
    let mut out = Vec::new();
    for (idx, column) in synced.columns.iter().enumerate() {
        if identity.contains(&column.as_str())
            || synced.references.iter().any(|r| &r.column == column)
        {
            continue;
        }
        let indexed = info
            .unique_keys
            .iter()
            .any(|k| k.columns.len() == 1 && &k.columns[0] == column);
        if !indexed && !declared_unique(table, column) {
            continue;
        }
        let max_chars = info.column(column).and_then(|c| length_of(&c.column_type));
        out.push(UniqueColumn {
            idx,
            column: column.clone(),
            max_chars,
        });
    }
    out
}

/// `varchar(50)` → 50.
fn length_of(column_type: &str) -> Option<usize> {
    let (_, rest) = column_type.split_once('(')?;
    rest.split(')').next()?.trim().parse().ok()
}

/// `value` suffixed with `-node`, cut (by characters) to fit `max_chars`.
pub fn suffixed(value: &str, node: &str, max_chars: Option<usize>) -> String {
    let suffix = format!("-{node}");
    let keep = match max_chars {
        Some(m) => m.saturating_sub(suffix.chars().count()),
        None => usize::MAX,
    };
    let head: String = value.chars().take(keep).collect();
    format!("{head}{suffix}")
}

/// The version of a row with no recorded version (data loaded before capture): before all.
fn loaded() -> Version {
    Version {
        wall_us: 0,
        counter: 0,
        node: String::new(),
    }
}

fn text_of(v: &MyValue) -> Option<String> {
    match v {
        MyValue::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        MyValue::NULL => None,
        other => Some(other.as_sql(true)),
    }
}

/// What one chunk's unique check needs.
pub struct Check<'a> {
    pub table: &'a str,
    pub columns: &'a [UniqueColumn],
    pub reader: &'a TableReader,
    pub changes: &'a [Change],
    pub via: &'a str,
    pub floors: &'a Floors,
    pub me: &'a str,
}

impl Check<'_> {
    /// Resolves every collision of the rows about to be written (`writes`, with their
    /// translated values): suffixes incoming values or renames local rows. Returns the
    /// conflicts to record, and the writes that give up a value another write of the
    /// chunk takes, with the column (their values are parked first: see
    /// `Applier::park`).
    ///
    /// A row holding a value that the same chunk writes with another value is no
    /// collision: after the chunk it no longer holds it (issue 4 review: a value moved
    /// from one row to another in one bundle was suffixed at the receiver only).
    pub async fn resolve(
        &self,
        conn: &mut Conn,
        writes: &[usize],
        translated: &mut HashMap<usize, Vec<MyValue>>,
    ) -> Result<(Vec<NewConflict>, Vec<(usize, usize)>), ImportError> {
        let mut out = Vec::new();
        let mut releasing = Vec::new();
        let written: HashMap<String, usize> = writes
            .iter()
            .map(|&i| (identity_text(&self.changes[i].identity), i))
            .collect();
        for u in self.columns {
            let mut wanted: Vec<(usize, String)> = Vec::new();
            for &i in writes {
                if let Some(t) = text_of(&translated[&i][u.idx]).filter(|t| !t.is_empty()) {
                    wanted.push((i, t));
                }
            }
            if wanted.is_empty() {
                continue;
            }
            let found = self
                .holders(conn, u, wanted.iter().map(|w| w.1.clone()).collect())
                .await?;
            if found.is_empty() {
                continue;
            }
            let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
            let versions = heads(conn, self.floors, self.me, self.table, &keys, None).await?;
            for (i, value) in wanted {
                let c = &self.changes[i];
                let mine = identity_text(&c.identity);
                let fold = value.to_lowercase();
                // The holder gives the value up in this chunk (its new value differs).
                let released = |k: &str| {
                    written.get(k).is_some_and(|&j| {
                        !matches!(text_of(&translated[&j][u.idx]), Some(t) if t.to_lowercase() == fold)
                    })
                };
                let mut holders = found
                    .iter()
                    .filter(|(k, v)| *k != mine && v.to_lowercase() == fold);
                let Some((other_key, other_value)) = holders
                    .find(|(k, _)| {
                        if released(k) {
                            releasing.push((written[k.as_str()], u.idx));
                            false
                        } else {
                            true
                        }
                    })
                    .cloned()
                else {
                    continue;
                };
                let other_version = versions
                    .get(&other_key)
                    .map(|h| h.version.clone())
                    .unwrap_or_else(loaded);
                let other_values = self.read(conn, &other_key).await?;
                let incoming = Side {
                    version: c.version.clone(),
                    deleted: false,
                    values: Some(values_json(&self.reader.columns, &c.values)),
                };
                let other = Side {
                    version: other_version.clone(),
                    deleted: false,
                    values: other_values,
                };
                if c.version > other_version {
                    let new = self
                        .free_value(conn, u, &value, &c.version.node, &mine)
                        .await?;
                    translated.get_mut(&i).expect("row")[u.idx] = MyValue::from(new);
                    out.push(self.conflict(mine, u, other, incoming));
                } else {
                    let new = self
                        .free_value(conn, u, &other_value, &other_version.node, &other_key)
                        .await?;
                    conn.exec_drop(
                        format!(
                            "UPDATE {} AS t SET t.{} = ? WHERE {} = ?",
                            ident(self.table),
                            ident(&u.column),
                            self.reader.key_expr()
                        ),
                        (new, other_key.clone()),
                    )
                    .await
                    .map_err(DbError::query(format!(
                        "renaming a colliding {}.{}",
                        self.table, u.column
                    )))?;
                    out.push(self.conflict(other_key, u, incoming, other));
                }
            }
        }
        Ok((out, releasing))
    }

    fn conflict(&self, key: String, u: &UniqueColumn, winner: Side, loser: Side) -> NewConflict {
        NewConflict {
            table: self.table.to_string(),
            row_key: key,
            kind: Kind::Unique,
            column: Some(u.column.clone()),
            winner,
            winner_skewed: false,
            loser,
            via: self.via.to_string(),
        }
    }

    /// Rows (identity text, value) holding any of `values` in the column.
    async fn holders(
        &self,
        conn: &mut Conn,
        u: &UniqueColumn,
        values: Vec<String>,
    ) -> Result<Vec<(String, String)>, ImportError> {
        let mut out = Vec::new();
        for chunk in values.chunks(200) {
            let rows: Vec<(String, String)> = conn
                .exec(
                    format!(
                        "SELECT {}, t.{} FROM {} AS t WHERE t.{} IN ({})",
                        self.reader.key_expr(),
                        ident(&u.column),
                        ident(self.table),
                        ident(&u.column),
                        vec!["?"; chunk.len()].join(", ")
                    ),
                    chunk.to_vec(),
                )
                .await
                .map_err(DbError::query(format!(
                    "looking for {}.{} collisions",
                    self.table, u.column
                )))?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// `value` suffixed with `-node` (again, while another row holds the result).
    async fn free_value(
        &self,
        conn: &mut Conn,
        u: &UniqueColumn,
        value: &str,
        node: &str,
        owner: &str,
    ) -> Result<String, ImportError> {
        let mut candidate = suffixed(value, node, u.max_chars);
        for _ in 0..8 {
            let taken = self.holders(conn, u, vec![candidate.clone()]).await?;
            if taken.iter().all(|(k, _)| k == owner) {
                break;
            }
            candidate = suffixed(&candidate, node, u.max_chars);
        }
        Ok(candidate)
    }

    /// A row's values in uuid space, by identity text.
    async fn read(
        &self,
        conn: &mut Conn,
        key: &str,
    ) -> Result<Option<serde_json::Value>, ImportError> {
        read_values(conn, self.reader, &[key.to_string()])
            .await
            .map(|mut m| m.remove(key))
    }
}

/// Reads rows in uuid space by identity text, as JSON values by column.
pub async fn read_values(
    conn: &mut Conn,
    reader: &TableReader,
    keys: &[String],
) -> Result<HashMap<String, serde_json::Value>, ImportError> {
    let mut out = HashMap::new();
    for chunk in keys.chunks(200) {
        if chunk.is_empty() {
            continue;
        }
        let rows: Vec<Row> = conn
            .exec(reader.select_by_keys(chunk.len()), chunk.to_vec())
            .await
            .map_err(DbError::query(format!("reading {} rows", reader.table)))?;
        for r in rows {
            let (k, _, values) = reader.decode(&r)?;
            out.insert(k, values_json(&reader.columns, &values));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_fits_the_column() {
        assert_eq!(suffixed("5-3", "spoke-2", Some(50)), "5-3-spoke-2");
        assert_eq!(suffixed("abcdefgh", "n1", Some(6)), "abc-n1");
        assert_eq!(length_of("varchar(50)"), Some(50));
        assert_eq!(length_of("int(11)"), Some(11));
        assert_eq!(length_of("text"), None);
    }
}
