//! Writing a chunk's new rows, and the checks at the end of a bundle.
//!
//! New rows go in as multi-row inserts of text literals, as a dump's reload does; the
//! local ids they got are learnt without asking where the server hands them out in
//! order. At the end of the bundle (or of the run of bundles applied together) the
//! placeholders of forward references are filled in (or the bundle fails, naming the
//! row), save those of rows a later change of the run wrote again, and no remaining row
//! may refer to a row the bundle deleted.

use std::collections::{BTreeMap, HashMap, HashSet};

use mysql_async::prelude::*;
use mysql_async::{Conn, Value as MyValue};

use super::{
    key_condition, param_len, value_text, Applier, Fixup, MAX_PLACEHOLDERS, MAX_STATEMENT_BYTES,
};
use crate::apply::resolve::{key_text, KeyValues, LocalRow};
use crate::apply::{ImportError, MissingReference};
use crate::bundle::{Change, Identity};
use crate::db::{ident, push_literal, DbError};
use crate::schema::plan::SyncedTable;
use crate::schema::{Identity as Rule, Table};

/// A chunk's rows as the insert steps read them.
#[derive(Clone, Copy)]
pub(super) struct Writes<'c> {
    pub table: &'c str,
    pub synced: &'c SyncedTable,
    pub info: &'c Table,
    /// The values to write by change index, references translated.
    pub translated: &'c HashMap<usize, Vec<MyValue>>,
    pub changes: &'c [Change],
    /// The identity texts by change index.
    pub row_keys: &'c [String],
}

/// The local ids of rows inserted, and where a presumed insert was refused (the index
/// of its statement's first row, and the duplicate-key error).
type Refusable = (HashMap<usize, i64>, Option<(usize, mysql_async::Error)>);

/// Whether the server refused a write for a duplicate key (ER_DUP_ENTRY).
fn is_duplicate(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1062)
}

impl<'a> Applier<'a> {
    /// Inserts new rows, many per statement; returns the local id each got (by change
    /// index) where it is known without asking: from the auto-increment counter (when
    /// the server hands out consecutive ids), the key ferry chose, or the parent's id.
    /// The identities are remembered for later references.
    pub(super) async fn insert_rows(
        &mut self,
        conn: &mut Conn,
        w: &Writes<'_>,
        inserts: &[(usize, KeyValues)],
    ) -> Result<HashMap<usize, i64>, ImportError> {
        let (ids, _) = self.insert_statements(conn, w, inserts, false).await?;
        Ok(ids)
    }

    /// Inserts rows presumed new, not looked up before (see `Applier::may_presume`).
    /// A row that exists after all (one older than capture, which has no version)
    /// makes its statement fail on the identity's unique index, and a failed statement
    /// changes nothing: from that statement on, the rows are looked up (locked) and
    /// the ones found are updated instead, the others inserted. The table's rows are
    /// looked up for the rest of the run. A row found that has a version now was
    /// written here while this import ran: the bundle fails and stays in the inbox.
    pub(super) async fn insert_presumed(
        &mut self,
        conn: &mut Conn,
        w: &Writes<'_>,
        inserts: &[(usize, KeyValues)],
        existing: &mut HashMap<String, LocalRow>,
    ) -> Result<HashMap<usize, i64>, ImportError> {
        let (mut ids, refused) = self.insert_statements(conn, w, inserts, true).await?;
        let Writes {
            table,
            synced,
            translated,
            changes,
            row_keys,
            ..
        } = *w;
        let Some((from, duplicate)) = refused else {
            return Ok(ids);
        };
        self.probed.insert(table.to_string());
        let rest = &inserts[from..];
        let keys: Vec<KeyValues> = rest.iter().map(|(_, k)| k.clone()).collect();
        let found = self.resolver().existing(conn, table, &keys, true).await?;
        // Each row of the rest with the local row found for it, if any.
        let rows: Vec<(usize, &KeyValues, Option<&LocalRow>)> = rest
            .iter()
            .map(|(i, k)| (*i, k, found.get(&key_text(k))))
            .collect();
        let found_keys: Vec<&str> = rows
            .iter()
            .filter(|(_, _, row)| row.is_some())
            .map(|(i, _, _)| row_keys[*i].as_str())
            .collect();
        if let Some(k) = self
            .versions_of(conn, table, &found_keys)
            .await?
            .keys()
            .next()
        {
            let row = rows
                .iter()
                .find(|(i, _, _)| &row_keys[*i] == k)
                .map(|(i, _, _)| &changes[*i].identity)
                .expect("a row of the chunk");
            return Err(self.write_error(table, row, duplicate));
        }
        tracing::info!(
            table,
            found = found.len(),
            "rows presumed new exist here (made before capture): updating them, and looking up this table's rows for the rest of the import"
        );
        let mut new = Vec::with_capacity(rest.len());
        for (i, key, row) in rows {
            match row {
                Some(row) => {
                    self.update_row(conn, table, synced, &translated[&i], key, &changes[i])
                        .await?;
                    self.stats.updated += 1;
                    existing.insert(key_text(key), row.clone());
                }
                None => new.push((i, key.clone())),
            }
        }
        let more = self.insert_rows(conn, w, &new).await?;
        ids.extend(more);
        Ok(ids)
    }

    /// Updates one existing row (by its key) to the translated values of a change (the
    /// caller counts it).
    pub(super) async fn update_row(
        &mut self,
        conn: &mut Conn,
        table: &str,
        synced: &SyncedTable,
        values: &[MyValue],
        key: &KeyValues,
        change: &Change,
    ) -> Result<(), ImportError> {
        if synced.columns.is_empty() {
            // Every column is the identity (role_privilege): the row found is the row.
            return Ok(());
        }
        let sets = synced
            .columns
            .iter()
            .map(|c| format!("{} = ?", ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let cond = key_condition(&synced.identity);
        let mut params = values.to_vec();
        params.extend(key.iter().cloned());
        conn.exec_drop(
            format!("UPDATE {} SET {sets} WHERE {cond}", ident(table)),
            params,
        )
        .await
        .map_err(|e| self.write_error(table, &change.identity, e))?;
        Ok(())
    }

    /// The insert statements of [`Applier::insert_rows`]; with `presumed`, a statement
    /// refused for a duplicate key ends them, and its first row and the error are
    /// returned beside the ids of the rows inserted before it.
    async fn insert_statements(
        &mut self,
        conn: &mut Conn,
        w: &Writes<'_>,
        inserts: &[(usize, KeyValues)],
        presumed: bool,
    ) -> Result<Refusable, ImportError> {
        let Writes {
            table,
            synced,
            info,
            translated,
            changes,
            row_keys,
        } = *w;
        let id_cols = synced.identity.columns();
        let mut cols: Vec<String> = id_cols.iter().map(|c| c.to_string()).collect();
        cols.extend(synced.columns.iter().cloned());
        let pk = self.resolver().int_pk(table);
        // A local integer key without auto-increment gets the next free value.
        let manual_id = synced
            .local_id
            .as_ref()
            .filter(|pk| info.column(pk).is_some_and(|c| !c.auto_increment));
        let auto_id = pk
            .as_ref()
            .is_some_and(|pk| info.column(pk).is_some_and(|c| c.auto_increment));
        // A subclass row's key is its parent's id, which it is inserted with.
        let key_is_id = matches!(synced.identity, Rule::Parent { .. });
        let mut next_id: i64 = 0;
        if let Some(pk) = manual_id {
            cols.push(pk.clone());
            let max: Option<Option<i64>> = conn
                .query_first(format!("SELECT MAX({}) FROM {}", ident(pk), ident(table)))
                .await
                .map_err(DbError::query(format!("reading the largest {table} id")))?;
            next_id = max.flatten().unwrap_or(0);
        }
        let col_sql = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let mut ids: HashMap<usize, i64> = HashMap::new();
        let mut start = 0;
        while start < inserts.len() {
            // As many rows as fit the statement limits (placeholders, bytes).
            let mut end = start;
            let mut bytes = 0usize;
            while end < inserts.len()
                && (end - start + 1) * cols.len() <= MAX_PLACEHOLDERS
                && (end == start || bytes < MAX_STATEMENT_BYTES)
            {
                bytes += translated[&inserts[end].0]
                    .iter()
                    .map(param_len)
                    .sum::<usize>();
                end += 1;
            }
            let chunk = &inserts[start..end];
            // Sent as text with literals, as a dump's reload is: the server parses one
            // statement instead of binding tens of thousands of parameters.
            let mut sql: Vec<u8> = Vec::with_capacity(bytes + chunk.len() * cols.len() * 4 + 256);
            sql.extend_from_slice(
                format!("INSERT INTO {} ({col_sql}) VALUES ", ident(table)).as_bytes(),
            );
            let mut chosen = Vec::with_capacity(chunk.len());
            for (n, (i, key)) in chunk.iter().enumerate() {
                sql.extend_from_slice(if n == 0 { b"(" } else { b", (" });
                let id = manual_id.is_some().then(|| {
                    next_id += 1;
                    chosen.push(next_id);
                    MyValue::Int(next_id)
                });
                for (j, v) in key
                    .iter()
                    .chain(translated[i].iter())
                    .chain(id.iter())
                    .enumerate()
                {
                    if j > 0 {
                        sql.extend_from_slice(b", ");
                    }
                    push_literal(&mut sql, v);
                }
                sql.push(b')');
            }
            match conn.query_drop(sql).await {
                Ok(()) => {}
                Err(e) if presumed && is_duplicate(&e) => return Ok((ids, Some((start, e)))),
                Err(e) => return Err(self.write_error(table, &changes[chunk[0].0].identity, e)),
            }

            let first = conn.last_insert_id().unwrap_or(0) as i64;
            for (j, (i, key)) in chunk.iter().enumerate() {
                let id = if manual_id.is_some() {
                    Some(chosen[j])
                } else if auto_id && self.consecutive_ids && first > 0 {
                    Some(first + j as i64)
                } else if key_is_id {
                    match key.first() {
                        Some(MyValue::Int(v)) => Some(*v),
                        Some(MyValue::UInt(v)) => Some(*v as i64),
                        _ => None,
                    }
                } else {
                    None
                };
                if let (Some(id), Some(pk)) = (id, &pk) {
                    ids.insert(*i, id);
                    if synced.identity.arity() == 1 {
                        self.ids.learn(table, pk, &row_keys[*i], MyValue::Int(id));
                    }
                }
            }
            self.stats.inserted += chunk.len() as u64;
            start = end;
        }
        Ok((ids, None))
    }

    /// Forgets the references left to fill in for these rows of `table`, which a later
    /// change of the run writes (or deletes) again, so that they do not overwrite it.
    pub(super) fn drop_fixups<'k>(
        &mut self,
        table: &str,
        rows: impl Iterator<Item = &'k KeyValues>,
    ) {
        if self.fixup_rows.is_empty() {
            return;
        }
        let mut gone = HashSet::new();
        for k in rows {
            let row = (table.to_string(), key_text(k));
            if self.fixup_rows.remove(&row) {
                gone.insert(row.1);
            }
        }
        if !gone.is_empty() {
            self.fixups
                .retain(|f| f.table != table || !gone.contains(&key_text(&f.key)));
        }
    }

    /// Fills in the references that pointed forward in the bundle, now that every row
    /// is in: one statement per table, column and 500 rows where the row's key is one
    /// column (`UPDATE .. SET c = CASE key WHEN .. END`), else one per row.
    pub(super) async fn apply_fixups(&mut self, conn: &mut Conn) -> Result<(), ImportError> {
        let fixups = std::mem::take(&mut self.fixups);
        self.fixup_rows.clear();
        let resolver = self.resolver();
        let mut by_target: BTreeMap<(String, String, String, String), Vec<Fixup>> = BTreeMap::new();
        let mut missing: Option<MissingReference> = None;
        for f in fixups {
            by_target
                .entry((
                    f.table.clone(),
                    f.column.clone(),
                    f.target.clone(),
                    f.ref_column.clone(),
                ))
                .or_default()
                .push(f);
        }
        for ((table, column, target, ref_column), list) in by_target {
            let (synced, _) = self.table(&table)?;
            let soft = synced.soft_refs.iter().any(|s| s.column == column);
            let key_cols = synced.identity.columns();
            for chunk in list.chunks(500) {
                let ids: Vec<&Identity> = chunk.iter().map(|f| &f.identity).collect();
                let found = self
                    .ids
                    .resolve(conn, &resolver, &target, &ref_column, &ids)
                    .await?;
                let mut pairs: Vec<(&Fixup, MyValue)> = Vec::with_capacity(chunk.len());
                for (f, v) in chunk.iter().zip(found) {
                    let Some(v) = v else {
                        // Every missing reference is named, not only the first: the
                        // operator fixes them at the sender in one go.
                        let identity = f.identity.0.join(", ");
                        missing
                            .get_or_insert_with(|| MissingReference {
                                table: f.table.clone(),
                                row: f.row.0.join(", "),
                                column: f.column.clone(),
                                target: f.target.clone(),
                                identity: identity.clone(),
                                sender: self.sender.clone(),
                                also: Default::default(),
                                deleted_here: false,
                            })
                            .also_missing(&f.target, identity);
                        continue;
                    };
                    let v = if soft {
                        MyValue::from(value_text(&v))
                    } else {
                        v
                    };
                    pairs.push((f, v));
                }
                if missing.is_some() {
                    continue; // nothing of the bundle applies: only look for more
                }
                let doing = || DbError::query(format!("filling in {table}.{column}"));
                if let [key] = key_cols.as_slice() {
                    let mut params: Vec<MyValue> = Vec::with_capacity(pairs.len() * 3);
                    for (f, v) in &pairs {
                        params.push(f.key[0].clone());
                        params.push(v.clone());
                    }
                    params.extend(pairs.iter().map(|(f, _)| f.key[0].clone()));
                    conn.exec_drop(
                        format!(
                            "UPDATE {} SET {col} = CASE {key} {} ELSE {col} END WHERE {key} IN ({})",
                            ident(&table),
                            vec!["WHEN ? THEN ?"; pairs.len()].join(" "),
                            vec!["?"; pairs.len()].join(", "),
                            col = ident(&column),
                            key = ident(key),
                        ),
                        params,
                    )
                    .await
                    .map_err(doing())?;
                } else {
                    let cond = key_condition(&synced.identity);
                    for (f, v) in pairs {
                        let mut params = vec![v];
                        params.extend(f.key.iter().cloned());
                        conn.exec_drop(
                            format!(
                                "UPDATE {} SET {} = ? WHERE {cond}",
                                ident(&table),
                                ident(&column)
                            ),
                            params,
                        )
                        .await
                        .map_err(doing())?;
                    }
                }
            }
        }
        match missing {
            Some(mut m) => {
                m.deleted_here = deleted_here(conn, &m.target, &m.identity).await?;
                Err(ImportError::MissingReference(Box::new(m)))
            }
            None => Ok(()),
        }
    }

    /// Notes, before rows are deleted, what they hold in every column that a
    /// (single-column) foreign key of any table refers to: the local id, an identity
    /// column (a natural key such as `role.role`) or another column, read here. The
    /// values are checked at the end of the bundle by [`Applier::check_deletes`].
    pub(super) async fn note_deletes(
        &mut self,
        conn: &mut Conn,
        table: &str,
        synced: &SyncedTable,
        deletes: &[(usize, KeyValues, Option<i64>)],
    ) -> Result<(), ImportError> {
        if deletes.is_empty() {
            return Ok(());
        }
        let schema = self.schema;
        let referenced = schema.referenced_columns(table);
        let id_cols = synced.identity.columns();
        let int_pk = self.resolver().int_pk(table);
        // Columns whose values are not known without reading the rows.
        let mut read: Vec<&str> = Vec::new();
        for column in referenced {
            let known: Option<Vec<MyValue>> = match id_cols.iter().position(|c| *c == column) {
                Some(p) => Some(deletes.iter().map(|(_, k, _)| k[p].clone()).collect()),
                None if int_pk.as_deref() == Some(column) => deletes
                    .iter()
                    .map(|(_, _, id)| id.map(MyValue::Int))
                    .collect(),
                None => None,
            };
            match known {
                Some(values) => self
                    .deleted
                    .entry((table.to_string(), column.to_string()))
                    .or_default()
                    .extend(values),
                None => read.push(column),
            }
        }
        if read.is_empty() {
            return Ok(());
        }
        let tuple = match id_cols.as_slice() {
            [one] => ident(one),
            many => format!(
                "({})",
                many.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")
            ),
        };
        let one = match id_cols.len() {
            1 => "?".to_string(),
            n => format!("({})", vec!["?"; n].join(", ")),
        };
        let select = read.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        for chunk in deletes.chunks(500) {
            let rows: Vec<mysql_async::Row> = conn
                .exec(
                    format!(
                        "SELECT {select} FROM {} WHERE {tuple} IN ({})",
                        ident(table),
                        vec![one.as_str(); chunk.len()].join(", ")
                    ),
                    chunk
                        .iter()
                        .flat_map(|(_, k, _)| k.iter().cloned())
                        .collect::<Vec<_>>(),
                )
                .await
                .map_err(DbError::query(format!(
                    "reading the {table} rows to delete"
                )))?;
            for row in rows {
                let values: Vec<MyValue> = row.unwrap();
                for (column, v) in read.iter().zip(values) {
                    if v != MyValue::NULL {
                        self.deleted
                            .entry((table.to_string(), column.to_string()))
                            .or_default()
                            .push(v);
                    }
                }
            }
        }
        Ok(())
    }

    /// No remaining row may refer to a row this bundle deleted: for each foreign key to
    /// a column whose deleted values were noted ([`Applier::note_deletes`]), no row of
    /// the referring table may hold one of them unless a row with that value exists
    /// again (a natural key deleted and made anew).
    pub(super) async fn check_deletes(&mut self, conn: &mut Conn) -> Result<(), ImportError> {
        let deleted = std::mem::take(&mut self.deleted);
        for ((table, column), values) in deleted {
            for (child, fk_column) in self.schema.referrers(&table, &column) {
                for chunk in values.chunks(500) {
                    let example: Option<mysql_async::Value> = conn
                        .exec_first(
                            format!(
                                "SELECT c.{col} FROM {} AS c WHERE c.{col} IN ({}) \
                                 AND NOT EXISTS (SELECT 1 FROM {} AS p WHERE p.{} = c.{col}) \
                                 LIMIT 1",
                                ident(&child.name),
                                vec!["?"; chunk.len()].join(", "),
                                ident(&table),
                                ident(&column),
                                col = ident(fk_column),
                            ),
                            chunk.to_vec(),
                        )
                        .await
                        .map_err(DbError::query("checking references to deleted rows"))?;
                    if let Some(example) = example {
                        return Err(ImportError::StillReferenced {
                            table: table.clone(),
                            child: child.name.clone(),
                            column: fk_column.to_string(),
                            example: example.as_sql(false),
                            sender: self.sender.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether the row of `table` with identity text `key` was deleted here: a tombstone in
/// `ferry_row`, or a delete in the log.
async fn deleted_here(conn: &mut Conn, table: &str, key: &str) -> Result<bool, DbError> {
    let found: Option<i64> = conn
        .exec_first(
            "SELECT 1 FROM ferry_row WHERE table_name = ? AND row_key = ? AND deleted = 1 \
             UNION ALL SELECT 1 FROM ferry_change FORCE INDEX (ferry_change_row) \
             WHERE table_name = ? AND row_key = ? AND op = 'D' LIMIT 1",
            (table, key, table, key),
        )
        .await
        .map_err(DbError::query("reading the deleted rows"))?;
    Ok(found.is_some())
}
