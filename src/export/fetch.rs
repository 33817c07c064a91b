//! Reading changed rows in uuid space at the speed of a dump.
//!
//! [`TableReader`](super::rows::TableReader) lets the server translate every foreign
//! key with a join, which costs a lookup per reference per row: on obs, eleven
//! references make the joins dearer than the scan. [`RowFetcher`] instead selects a
//! table's rows plainly (by local id, a range scan when the ids are dense, which they
//! are for rows written in order) and translates references on the client through the
//! reference cache ([`super::refs`]), which fetches, per referenced table and batch, the
//! identities of the keys it lacks. Rows written together refer to the same few
//! encounters, patients, concepts and users, so nearly every reference is a hit. The
//! rows sealed teach the cache their own identities too: parents are sealed before
//! their children, so an obs finds its encounter, patient and group already known.
//!
//! Both readers produce the same identities and values; a test holds them equal on
//! every table of the fixture and of the real OpenMRS dump.

use std::collections::BTreeMap;

use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value as MyValue};
use rustc_hash::{FxHashMap, FxHashSet};

use std::borrow::Cow;

use super::refs::{padded, padded_params, placeholders, RawKey, RefCache, TargetId, IN_SIZES};
use super::rows::{decode_as, is_local_id, ColumnKind, RowError};
use crate::bundle::{Identity, IdentityRef, Value, ValueRef};
use crate::db::{ident, DbError};
use crate::schema::identity_sql::{parse_identity, referenced_identity, row_identity};
use crate::schema::introspect::Column;
use crate::schema::soft_refs::SoftRefEncoding;
use crate::schema::{Identity as IdentityRule, Schema, SyncPlan};

/// Errors of fast reading.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Row(#[from] RowError),
}

/// The queries that read some rows of a table (they need no cache, so they can run on
/// a connection of their own while earlier rows are sealed).
#[derive(Debug, Clone, Default)]
pub struct Reads {
    queries: Vec<(String, Vec<MyValue>)>,
    /// For a range scan: the column of the local id and the ids to keep.
    keep: Option<(usize, FxHashSet<i64>)>,
    what: String,
}

impl Reads {
    /// Runs the queries; returns the rows wanted.
    pub async fn run(self, conn: &mut Conn) -> Result<Vec<Row>, DbError> {
        let mut out = Vec::new();
        for (sql, params) in self.queries {
            let rows: Vec<Row> = conn
                .exec(sql, params)
                .await
                .map_err(DbError::query(self.what.clone()))?;
            match &self.keep {
                Some((at, ids)) => out.extend(
                    rows.into_iter()
                        .filter(|r| int_at(r, *at).is_some_and(|i| ids.contains(&i))),
                ),
                None => out.extend(rows),
            }
        }
        Ok(out)
    }
}

/// How a reference's local value becomes an identity.
#[derive(Debug, Clone)]
enum Translate {
    /// The value is the identity (a uuid or natural key referenced directly).
    Itself,
    /// Looked up in the cache.
    Lookup(TargetId),
}

/// How one carried column is decoded, with its place in the select list.
#[derive(Debug, Clone)]
enum Carried {
    Plain {
        at: usize,
        column: Column,
        kind: ColumnKind,
    },
    Ref {
        at: usize,
        target: String,
        how: Translate,
    },
    /// A soft reference by local id: the attribute type (at `kind_at`) names the table.
    Soft {
        at: usize,
        column: Column,
        /// How the value decodes when it is not a reference.
        plain: ColumnKind,
        kind_at: usize,
        kind: TargetId,
        kind_pk: String,
        /// Discriminator → (target table, the target of its integer key).
        targets: BTreeMap<String, (String, TargetId)>,
    },
}

/// Where a row's identity comes from.
#[derive(Debug, Clone)]
enum Ident {
    /// A column holding it (uuid, single natural key).
    Column(usize),
    /// A subclass row: its parent's identity, through the key column.
    Parent { at: usize, target: TargetId },
    /// The SQL identity expression, selected as the first column (composite and natural
    /// keys of tables without a local integer id).
    Sql,
}

/// One row decoded, borrowing from the row and the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRef<'a> {
    pub row_id: Option<i64>,
    pub key: Cow<'a, str>,
    pub parts: Vec<Cow<'a, str>>,
    pub values: Vec<ValueRef<'a>>,
}

impl RowRef<'_> {
    /// The owned form.
    pub fn to_owned(&self) -> FetchedRow {
        FetchedRow {
            row_id: self.row_id,
            key: self.key.to_string(),
            identity: Identity(self.parts.iter().map(|p| p.to_string()).collect()),
            values: self.values.iter().map(ValueRef::to_value).collect(),
        }
    }
}

/// What decoding remembers from one row to the next while the cache does not change
/// (one pass over a batch): per carried column, the last local id it looked up and the
/// answer. Rows written together refer to the same patient, encounter and user, so
/// most references are answered without hashing.
#[derive(Debug, Default)]
pub struct Recall<'a> {
    last: Vec<Option<(i64, Option<&'a str>)>>,
}

impl<'a> Recall<'a> {
    fn get(&self, column: usize, raw: &MyValue) -> Option<Option<&'a str>> {
        let key = local_int(raw)?;
        match self.last.get(column) {
            Some(Some((k, id))) if *k == key => Some(*id),
            _ => None,
        }
    }

    fn put(&mut self, column: usize, raw: &MyValue, id: Option<&'a str>) {
        let Some(key) = local_int(raw) else {
            return;
        };
        if self.last.len() <= column {
            self.last.resize(column + 1, None);
        }
        self.last[column] = Some((key, id));
    }
}

/// An integer key as [`RawKey::Int`] holds it.
fn local_int(raw: &MyValue) -> Option<i64> {
    match raw {
        MyValue::Int(i) => Some(*i),
        MyValue::UInt(u) => Some(*u as i64),
        _ => None,
    }
}

/// One row read: its local id, identity (text and parts) and carried values.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedRow {
    pub row_id: Option<i64>,
    pub key: String,
    pub identity: Identity,
    pub values: Vec<Value>,
}

/// Reads one synced table's rows in uuid space, references translated on the client.
#[derive(Debug, Clone)]
pub struct RowFetcher {
    pub table: String,
    /// The carried columns, in plan order.
    pub columns: Vec<String>,
    /// The integer primary key (`ferry_change.row_id`), when the table has one.
    pub row_id: Option<String>,
    arity: usize,
    ident: Ident,
    carried: Vec<Carried>,
    select: String,
    key_expr: String,
    /// This table as a reference target by its local id: what the rows read here
    /// teach the cache (single-part identities only).
    learns: Option<TargetId>,
}

impl RowFetcher {
    /// The fetcher for `table`, or `None` when the table is not synced (or refers to a
    /// table whose identity cannot be referenced).
    pub fn new(
        plan: &SyncPlan,
        schema: &Schema,
        table: &str,
        cache: &mut RefCache,
    ) -> Option<RowFetcher> {
        let synced = plan.table(table)?.synced()?;
        let info = schema.tables.get(table)?;
        let key_expr = row_identity(plan, schema, table, &|c| format!("t.{}", ident(c)))?;
        let row_id = match info.primary_key.as_slice() {
            [pk] if info.column(pk).is_some_and(|c| c.is_integer()) => Some(pk.clone()),
            _ => None,
        };
        let mut select: Vec<String> = Vec::new();
        let mut add = |expr: String| {
            select.push(expr);
            select.len() - 1
        };
        let ident_src = match (&row_id, &synced.identity) {
            (Some(_), IdentityRule::Uuid { column, .. }) => Ident::Column(add(col(column))),
            (Some(_), IdentityRule::Natural { columns }) if columns.len() == 1 => {
                Ident::Column(add(col(&columns[0])))
            }
            (Some(_), IdentityRule::Parent { column, parent }) => {
                let fk = info.fk_on(column)?;
                referenced_identity(plan, schema, parent, &fk.ref_columns[0], "x")?;
                Ident::Parent {
                    at: add(col(column)),
                    target: cache.target(parent, &fk.ref_columns[0]),
                }
            }
            _ => {
                add(key_expr.clone());
                Ident::Sql
            }
        };
        if let Some(pk) = &row_id {
            add(col(pk));
        }
        let mut carried = Vec::new();
        for name in &synced.columns {
            let column = info.column(name)?.clone();
            if let Some(r) = synced.references.iter().find(|r| &r.column == name) {
                let target = plan.table(&r.table)?.synced()?;
                let how = match &target.identity {
                    IdentityRule::Uuid { column, .. } if *column == r.ref_column => {
                        Translate::Itself
                    }
                    IdentityRule::Natural { columns }
                        if columns.len() == 1 && columns[0] == r.ref_column =>
                    {
                        Translate::Itself
                    }
                    _ => {
                        referenced_identity(plan, schema, &r.table, &r.ref_column, "x")?;
                        Translate::Lookup(cache.target(&r.table, &r.ref_column))
                    }
                };
                carried.push(Carried::Ref {
                    at: add(col(name)),
                    target: r.table.clone(),
                    how,
                });
            } else if let Some(s) = synced
                .soft_refs
                .iter()
                .find(|s| &s.column == name && s.encoding == SoftRefEncoding::LocalId)
            {
                let type_fk = info.fk_on(&s.type_column)?;
                let mut targets = BTreeMap::new();
                for (class, t) in &s.targets {
                    let target = schema.tables.get(t)?;
                    let [pk] = target.primary_key.as_slice() else {
                        continue;
                    };
                    referenced_identity(plan, schema, t, pk, "x")?;
                    targets.insert(class.clone(), (t.clone(), cache.target(t, pk)));
                }
                if targets.is_empty() {
                    return None;
                }
                let at = add(col(name));
                let kind_at = add(col(&s.type_column));
                carried.push(Carried::Soft {
                    at,
                    plain: ColumnKind::of(&column),
                    column,
                    kind_at,
                    kind: cache.target(&s.type_table, &s.discriminator),
                    kind_pk: type_fk.ref_columns[0].clone(),
                    targets,
                });
            } else {
                carried.push(Carried::Plain {
                    at: add(col(name)),
                    kind: ColumnKind::of(&column),
                    column,
                });
            }
        }
        let learns = match (&row_id, synced.identity.arity()) {
            (Some(pk), 1) => Some(cache.target(table, pk)),
            _ => None,
        };
        Some(RowFetcher {
            learns,
            table: table.to_string(),
            columns: synced.columns.clone(),
            row_id,
            arity: synced.identity.arity(),
            ident: ident_src,
            carried,
            select: select.join(", "),
            key_expr,
        })
    }

    fn row_id_at(&self) -> Option<usize> {
        // The identity source is the first column, the key the second.
        self.row_id.as_ref().map(|_| 1)
    }

    /// The queries that read the rows with these local ids (ascending): one range scan
    /// when the ids are dense, else IN lists.
    pub fn by_ids(&self, ids: &[i64]) -> Reads {
        let mut reads = Reads::default();
        let (Some(pk), Some(&first), Some(&last)) = (&self.row_id, ids.first(), ids.last()) else {
            return reads;
        };
        let from = format!("FROM {} AS t", ident(&self.table));
        if (last - first) as u128 <= 2 * ids.len() as u128 {
            reads.keep = Some((1, ids.iter().copied().collect()));
            reads.queries.push((
                format!(
                    "SELECT {} {from} WHERE t.{pk} BETWEEN ? AND ?",
                    self.select,
                    pk = ident(pk)
                ),
                vec![first.into(), last.into()],
            ));
        } else {
            let keys: Vec<RawKey> = ids.iter().map(|i| RawKey::Int(*i)).collect();
            for chunk in keys.chunks(IN_SIZES[IN_SIZES.len() - 1]) {
                reads.queries.push((
                    format!(
                        "SELECT {} {from} WHERE t.{} IN ({})",
                        self.select,
                        ident(pk),
                        placeholders(padded(chunk.len()))
                    ),
                    padded_params(chunk),
                ));
            }
        }
        reads.what = format!("reading {} rows", self.table);
        reads
    }

    /// The queries that read the rows with these identity texts.
    pub fn by_keys(&self, keys: &[&str]) -> Reads {
        let mut reads = Reads {
            what: format!("reading {} rows", self.table),
            ..Default::default()
        };
        let keys: Vec<RawKey> = keys
            .iter()
            .map(|k| RawKey::Text(k.as_bytes().to_vec()))
            .collect();
        for chunk in keys.chunks(IN_SIZES[IN_SIZES.len() - 1]) {
            reads.queries.push((
                format!(
                    "SELECT {} FROM {} AS t WHERE {} IN ({})",
                    self.select,
                    ident(&self.table),
                    self.key_expr,
                    placeholders(padded(chunk.len()))
                ),
                padded_params(chunk),
            ));
        }
        reads
    }

    /// The query that reads the (local id, identity text) of rows in local id order,
    /// up to `limit` after the local id it takes as its parameter; for a table without
    /// a local id (no parameter), of every row, the local id NULL. The flag says which.
    pub fn scan_keys(&self, limit: usize) -> (String, bool) {
        let from = ident(&self.table);
        match &self.row_id {
            Some(pk) => (
                format!(
                    "SELECT t.{pk}, {key} FROM {from} AS t WHERE t.{pk} > ? ORDER BY t.{pk} LIMIT {limit}",
                    pk = ident(pk),
                    key = self.key_expr
                ),
                true,
            ),
            None => (format!("SELECT NULL, {} FROM {from} AS t", self.key_expr), false),
        }
    }

    /// The query that reads every row of the table, as this fetcher decodes them.
    pub fn select_all(&self) -> String {
        format!("SELECT {} FROM {} AS t", self.select, ident(&self.table))
    }

    /// Every row of the table, in no particular order (for tests and verify-like scans).
    pub async fn all(
        &self,
        conn: &mut Conn,
        cache: &mut RefCache,
        plan: &SyncPlan,
        schema: &Schema,
    ) -> Result<Vec<FetchedRow>, FetchError> {
        let rows: Vec<Row> = conn
            .exec(self.select_all(), ())
            .await
            .map_err(DbError::query(format!("reading {} rows", self.table)))?;
        let mut out = Vec::new();
        for chunk in rows.chunks(2000) {
            self.prepare(conn, cache, plan, schema, chunk).await?;
            for r in chunk {
                out.push(self.decode(cache, r)?.to_owned());
            }
        }
        Ok(out)
    }

    /// Fills the cache with what the references of `rows` need (before
    /// [`RowFetcher::decode`]).
    pub async fn prepare(
        &self,
        conn: &mut Conn,
        cache: &mut RefCache,
        plan: &SyncPlan,
        schema: &Schema,
        rows: &[Row],
    ) -> Result<(), FetchError> {
        // 1. Attribute types of soft references.
        let mut kinds: FxHashMap<TargetId, (String, FxHashSet<RawKey>)> = FxHashMap::default();
        for r in rows {
            for c in &self.carried {
                if let Carried::Soft {
                    kind_at,
                    kind,
                    kind_pk,
                    ..
                } = c
                {
                    if let Some(k) = r.as_ref(*kind_at).and_then(RawKey::of) {
                        if cache.kind(*kind, &k).is_none() {
                            kinds
                                .entry(*kind)
                                .or_insert_with(|| (kind_pk.clone(), FxHashSet::default()))
                                .1
                                .insert(k);
                        }
                    }
                }
            }
        }
        if !kinds.is_empty() {
            cache.fill_kinds(conn, kinds).await?;
        }
        // 2. Identities of referenced rows (this batch's own rows first: obs refer to
        // their groups, often in the same batch).
        self.learn(cache, rows);
        let mut wanted: FxHashMap<TargetId, FxHashSet<RawKey>> = FxHashMap::default();
        let mut want = |cache: &mut RefCache, target: TargetId, k: RawKey| {
            if cache.get(target, &k).is_some() {
                cache.hits += 1;
            } else {
                wanted.entry(target).or_default().insert(k);
            }
        };
        for r in rows {
            if let Ident::Parent { at, target } = &self.ident {
                if let Some(k) = r.as_ref(*at).and_then(RawKey::of) {
                    want(cache, *target, k);
                }
            }
            for c in &self.carried {
                match c {
                    Carried::Ref {
                        at,
                        how: Translate::Lookup(target),
                        ..
                    } => {
                        if let Some(k) = r.as_ref(*at).and_then(RawKey::of) {
                            want(cache, *target, k);
                        }
                    }
                    Carried::Soft {
                        at,
                        kind_at,
                        kind,
                        targets,
                        ..
                    } => {
                        if let Some((_, target, id)) =
                            soft_target(cache, r, *at, *kind_at, *kind, targets)
                        {
                            want(cache, target, RawKey::Int(id));
                        }
                    }
                    _ => {}
                }
            }
        }
        if !wanted.is_empty() {
            cache.fill(conn, plan, schema, wanted).await?;
        }
        self.learn(cache, rows);
        Ok(())
    }

    /// Teaches the cache the identities of `rows`, by local id: rows sealed later in the
    /// same bundle refer to them (parents come first, and obs to their groups).
    pub fn learn(&self, cache: &mut RefCache, rows: &[Row]) {
        let Some(target) = self.learns else {
            return;
        };
        for r in rows {
            let Some(id) = self.row_id_of(r) else {
                continue;
            };
            let k = RawKey::Int(id);
            let key = match &self.ident {
                Ident::Column(at) => text_at(r, *at),
                Ident::Sql => text_at(r, 0),
                // A subclass row's identity is its parent's, read from the cache: copied
                // out of it only when the row is not known yet.
                Ident::Parent { .. } if cache.knows_recent(target, &k) => continue,
                Ident::Parent { .. } => Cow::Owned(self.key_of(cache, r).into_owned()),
            };
            if key.is_empty() {
                continue;
            }
            cache.learn(target, k, &key);
        }
    }

    /// The local id of a row read by this fetcher.
    pub fn row_id_of(&self, r: &Row) -> Option<i64> {
        self.row_id_at().and_then(|at| int_at(r, at))
    }

    /// The identity text of a row read by this fetcher (its references prepared).
    pub fn key_of<'a>(&self, cache: &'a RefCache, r: &'a Row) -> Cow<'a, str> {
        match &self.ident {
            Ident::Column(at) => text_at(r, *at),
            Ident::Parent { at, target } => r
                .as_ref(*at)
                .and_then(RawKey::of)
                .and_then(|k| cache.get(*target, &k))
                .flatten()
                .map(Cow::Borrowed)
                .unwrap_or_default(),
            Ident::Sql => text_at(r, 0),
        }
    }

    /// Decodes a row read by this fetcher, borrowing from it and from the cache (its
    /// references prepared: what the cache lacks counts as absent).
    pub fn decode<'a>(&self, cache: &'a RefCache, r: &'a Row) -> Result<RowRef<'a>, FetchError> {
        let key = self.key_of(cache, r);
        let mut values = Vec::with_capacity(self.carried.len());
        self.decode_values(cache, r, true, &key, &mut Recall::default(), &mut values)?;
        // One part is the text itself; several are parsed (owned).
        let parts = self
            .parts(&key)?
            .into_iter()
            .map(|p| match p {
                Cow::Borrowed(_) => key.clone(),
                owned => Cow::Owned(owned.into_owned()),
            })
            .collect();
        Ok(RowRef {
            row_id: self.row_id_of(r),
            key,
            parts,
            values,
        })
    }

    /// Whether [`RowFetcher::key_of`] needs the cache (a subclass row's identity is its
    /// parent's): then the rows must be prepared before they are matched to entries.
    pub fn keys_need_cache(&self) -> bool {
        matches!(self.ident, Ident::Parent { .. })
    }

    /// The parts of identity text `key` (one part: the text itself); an error when
    /// one is empty or the text does not parse.
    pub fn parts<'k>(&self, key: &'k str) -> Result<Vec<Cow<'k, str>>, FetchError> {
        let parts: Vec<Cow<'k, str>> = if self.arity == 1 {
            vec![Cow::Borrowed(key)]
        } else {
            parse_identity(key, self.arity)
                .unwrap_or_default()
                .into_iter()
                .map(Cow::Owned)
                .collect()
        };
        if parts.is_empty() || parts.iter().any(|p| p.is_empty()) {
            return Err(RowError::BadIdentity {
                table: self.table.clone(),
                key: key.to_string(),
            }
            .into());
        }
        Ok(parts)
    }

    /// Decodes the carried values of row `r`, whose identity text is `key`, into
    /// `values` (cleared first). With `strict`, a lookup the cache cannot answer counts
    /// as a missing row; else the answer is false when the cache lacks something the
    /// row needs (an identity or an attribute type's discriminator): then
    /// [`RowFetcher::prepare`] the rows and decode again. Sealing decodes this way
    /// first, so that the references of rows whose targets are all known are looked up
    /// once, not twice. `recall` must be new whenever the cache has changed.
    pub fn decode_values<'a>(
        &self,
        cache: &'a RefCache,
        r: &'a Row,
        strict: bool,
        key: &str,
        recall: &mut Recall<'a>,
        values: &mut Vec<ValueRef<'a>>,
    ) -> Result<bool, FetchError> {
        values.clear();
        if let (false, Ident::Parent { at, target }) = (strict, &self.ident) {
            if let Some(k) = r.as_ref(*at).and_then(RawKey::of) {
                if cache.get(*target, &k).is_none() {
                    return Ok(false);
                }
            }
        }
        for (i, (name, c)) in self.columns.iter().zip(&self.carried).enumerate() {
            values.push(match c {
                Carried::Plain { at, column, kind } => {
                    decode_as(&self.table, column, *kind, r.as_ref(*at))?
                }
                Carried::Ref { at, target, how } => {
                    let raw = r.as_ref(*at);
                    match raw {
                        None | Some(MyValue::NULL) => ValueRef::Null,
                        Some(v) => {
                            let id: Option<&'a str> = match how {
                                Translate::Itself => match v {
                                    MyValue::Bytes(b) => std::str::from_utf8(b).ok(),
                                    _ => None,
                                }
                                .filter(|s| !s.is_empty()),
                                Translate::Lookup(t) => match recall.get(i, v) {
                                    Some(id) => id,
                                    None => {
                                        let found = RawKey::of(v).and_then(|k| cache.get(*t, &k));
                                        let Some(id) = answer(found, strict) else {
                                            return Ok(false);
                                        };
                                        recall.put(i, v, id);
                                        id
                                    }
                                },
                            };
                            self.reference(key, name, target, raw, id)?
                        }
                    }
                }
                Carried::Soft {
                    at,
                    column,
                    plain,
                    kind_at,
                    kind,
                    targets,
                    ..
                } => {
                    let raw = r.as_ref(*at);
                    if !strict
                        && is_local_id(raw)
                        && r.as_ref(*kind_at)
                            .and_then(RawKey::of)
                            .is_some_and(|k| cache.kind(*kind, &k).is_none())
                    {
                        return Ok(false);
                    }
                    match soft_target(cache, r, *at, *kind_at, *kind, targets) {
                        Some((table, target, id)) => {
                            let found = cache.get(target, &RawKey::Int(id));
                            let Some(found) = answer(found, strict) else {
                                return Ok(false);
                            };
                            self.reference(key, name, table, raw, found)?
                        }
                        None => decode_as(&self.table, column, *plain, raw)?,
                    }
                }
            });
        }
        Ok(true)
    }

    fn reference<'a>(
        &self,
        key: &str,
        column: &str,
        target: &str,
        raw: Option<&MyValue>,
        id: Option<&'a str>,
    ) -> Result<ValueRef<'a>, RowError> {
        match id {
            Some(text) => Ok(ValueRef::Ref(IdentityRef::One(text))),
            None => Err(RowError::Dangling {
                table: self.table.clone(),
                key: key.to_string(),
                column: column.to_string(),
                target: target.to_string(),
                value: raw.map(|v| v.as_sql(true)).unwrap_or_default(),
            }),
        }
    }
}

/// The cache's answer for a reference: the identity, or `Some(None)` for a row known
/// absent; `None` when the cache does not know and the decode is not strict (a strict
/// decode takes the unknown as absent).
fn answer(found: Option<Option<&str>>, strict: bool) -> Option<Option<&str>> {
    match found {
        Some(id) => Some(id),
        None if strict => Some(None),
        None => None,
    }
}

/// The target table, its target and the local id of a soft reference, when the
/// attribute type says the value is one and the value is a local id.
fn soft_target<'a>(
    cache: &RefCache,
    r: &Row,
    at: usize,
    kind_at: usize,
    kind: TargetId,
    targets: &'a BTreeMap<String, (String, TargetId)>,
) -> Option<(&'a str, TargetId, i64)> {
    let raw = r.as_ref(at);
    if !is_local_id(raw) {
        return None;
    }
    let k = r.as_ref(kind_at).and_then(RawKey::of)?;
    let disc = cache.kind(kind, &k)??;
    let (table, target) = targets.get(disc)?;
    let id = match raw? {
        MyValue::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        MyValue::Int(i) => *i,
        MyValue::UInt(u) => i64::try_from(*u).ok()?,
        _ => return None,
    };
    Some((table, *target, id))
}

fn col(name: &str) -> String {
    format!("t.{}", ident(name))
}

fn text_at(r: &Row, at: usize) -> Cow<'_, str> {
    match r.as_ref(at) {
        // Valid UTF-8 (nearly always) is checked by the fast validator.
        Some(MyValue::Bytes(b)) => match std::str::from_utf8(b) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(b),
        },
        Some(MyValue::NULL) | None => Cow::Borrowed(""),
        Some(other) => Cow::Owned(other.as_sql(true)),
    }
}

fn int_at(r: &Row, at: usize) -> Option<i64> {
    match r.as_ref(at) {
        Some(MyValue::Int(i)) => Some(*i),
        Some(MyValue::UInt(u)) => Some(*u as i64),
        _ => None,
    }
}
