//! Reading changed rows in uuid space at the speed of a dump.
//!
//! [`TableReader`](super::rows::TableReader) lets the server translate every foreign
//! key with a join, which costs a lookup per reference per row: on obs, eleven
//! references make the joins dearer than the scan. [`RowFetcher`] instead selects a
//! table's rows plainly (by local id, a range scan when the ids are dense, which they
//! are for rows written in order) and translates references on the client through
//! [`RefCache`]: per referenced table, the identity of each local key seen recently,
//! fetched in one query per table and batch for the keys it lacks. Rows written
//! together refer to the same few encounters, patients, concepts and users, so nearly
//! every reference is a hit. The cache is cleared when it holds [`CACHE_ENTRIES`], which
//! bounds memory whatever the table sizes.
//!
//! Both readers produce the same identities and values; a test holds them equal on
//! every table of the fixture and of the real OpenMRS dump.

use std::collections::{BTreeMap, HashMap, HashSet};

use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value as MyValue};

use super::rows::{decode_value, is_local_id, RowError};
use crate::bundle::{Identity, Value};
use crate::db::{ident, DbError};
use crate::schema::identity_sql::{parse_identity, referenced_identity, row_identity};
use crate::schema::introspect::Column;
use crate::schema::soft_refs::SoftRefEncoding;
use crate::schema::{Identity as IdentityRule, Schema, SyncPlan};

/// Identities the reference cache holds before it starts over.
pub const CACHE_ENTRIES: usize = 400_000;

/// Largest IN list of one query; shorter lists are padded to a few fixed lengths so
/// that the server keeps a handful of prepared statements.
const IN_SIZES: [usize; 5] = [8, 64, 256, 512, 1000];

/// Errors of fast reading.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Row(#[from] RowError),
}

/// A local key value as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RawKey {
    Int(i64),
    Text(Vec<u8>),
}

impl RawKey {
    fn of(v: &MyValue) -> Option<RawKey> {
        match v {
            MyValue::Int(i) => Some(RawKey::Int(*i)),
            MyValue::UInt(u) => Some(RawKey::Int(*u as i64)),
            MyValue::Bytes(b) => Some(RawKey::Text(b.clone())),
            MyValue::NULL => None,
            other => Some(RawKey::Text(other.as_sql(true).into_bytes())),
        }
    }

    fn param(&self) -> MyValue {
        match self {
            RawKey::Int(i) => MyValue::Int(*i),
            RawKey::Text(b) => MyValue::Bytes(b.clone()),
        }
    }
}

/// Where a reference points: a table and the column the local value matches.
type Target = (String, String);

/// Identities of referenced rows by local key, and attribute types' discriminators.
#[derive(Debug, Default)]
pub struct RefCache {
    refs: HashMap<Target, HashMap<RawKey, Option<String>>>,
    /// (type table, discriminator column) → type row's key → discriminator.
    kinds: HashMap<Target, HashMap<RawKey, Option<String>>>,
    entries: usize,
    /// Lookups answered from the cache, and keys fetched (for the stage log).
    pub hits: u64,
    pub fetched: u64,
}

impl RefCache {
    fn get(&self, target: &Target, key: &RawKey) -> Option<&Option<String>> {
        self.refs.get(target)?.get(key)
    }

    fn make_room(&mut self, more: usize) {
        if self.entries + more > CACHE_ENTRIES {
            self.refs.clear();
            self.kinds.clear();
            self.entries = 0;
        }
    }

    /// Fetches the identities of the `wanted` keys it lacks.
    async fn fill(
        &mut self,
        conn: &mut Conn,
        plan: &SyncPlan,
        schema: &Schema,
        wanted: HashMap<Target, HashSet<RawKey>>,
    ) -> Result<(), DbError> {
        let total: usize = wanted.values().map(|s| s.len()).sum();
        self.make_room(total);
        for ((table, column), keys) in wanted {
            let expr = row_identity(plan, schema, &table, &|c| format!("t.{}", ident(c)))
                .expect("references point at synced tables");
            let sql_for = |n: usize| {
                format!(
                    "SELECT t.{col}, {expr} FROM {} AS t WHERE t.{col} IN ({})",
                    ident(&table),
                    placeholders(n),
                    col = ident(&column)
                )
            };
            let map = self
                .refs
                .entry((table.clone(), column.clone()))
                .or_default();
            let keys: Vec<RawKey> = keys.into_iter().collect();
            for chunk in keys.chunks(IN_SIZES[IN_SIZES.len() - 1]) {
                let rows: Vec<(MyValue, Option<String>)> = conn
                    .exec(sql_for(padded(chunk.len())), padded_params(chunk))
                    .await
                    .map_err(DbError::query(format!(
                        "reading identities of {table} rows"
                    )))?;
                // The server compares text by its collation (case, trailing spaces); a
                // key matches the row it found that way as well as its exact form.
                let mut folded: HashMap<Vec<u8>, Option<String>> = HashMap::new();
                for (k, id) in rows {
                    let id = id.filter(|s| !s.is_empty());
                    if let Some(k) = RawKey::of(&k) {
                        if let RawKey::Text(b) = &k {
                            folded.insert(fold(b), id.clone());
                        }
                        map.insert(k, id);
                    }
                }
                for k in chunk {
                    let found = match k {
                        RawKey::Text(b) => folded.get(&fold(b)).cloned().flatten(),
                        RawKey::Int(_) => None,
                    };
                    map.entry(k.clone()).or_insert(found);
                }
                self.fetched += chunk.len() as u64;
            }
        }
        self.entries += total;
        Ok(())
    }

    /// Fetches the discriminators of the `wanted` type rows it lacks.
    async fn fill_kinds(
        &mut self,
        conn: &mut Conn,
        wanted: HashMap<(Target, String), HashSet<RawKey>>,
    ) -> Result<(), DbError> {
        let total: usize = wanted.values().map(|s| s.len()).sum();
        self.make_room(total);
        for (((table, disc), pk), keys) in wanted {
            let map = self.kinds.entry((table.clone(), disc.clone())).or_default();
            let keys: Vec<RawKey> = keys.into_iter().collect();
            for chunk in keys.chunks(IN_SIZES[IN_SIZES.len() - 1]) {
                let rows: Vec<(MyValue, Option<String>)> = conn
                    .exec(
                        format!(
                            "SELECT {}, {} FROM {} WHERE {} IN ({})",
                            ident(&pk),
                            ident(&disc),
                            ident(&table),
                            ident(&pk),
                            placeholders(padded(chunk.len()))
                        ),
                        padded_params(chunk),
                    )
                    .await
                    .map_err(DbError::query(format!("reading {table} rows")))?;
                for k in chunk {
                    map.entry(k.clone()).or_insert(None);
                }
                for (k, d) in rows {
                    if let Some(k) = RawKey::of(&k) {
                        map.insert(k, d);
                    }
                }
            }
        }
        self.entries += total;
        Ok(())
    }
}

/// Text as a case-insensitive, trailing-space-insensitive collation compares it.
fn fold(b: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(b);
    s.trim_end_matches(' ').to_lowercase().into_bytes()
}

fn placeholders(n: usize) -> String {
    vec!["?"; n.max(1)].join(", ")
}

/// The IN-list length a query of `n` keys uses.
fn padded(n: usize) -> usize {
    IN_SIZES.iter().copied().find(|s| *s >= n).unwrap_or(n)
}

/// The keys as parameters, the last repeated up to the padded length.
fn padded_params(keys: &[RawKey]) -> Vec<MyValue> {
    let mut p: Vec<MyValue> = keys.iter().map(RawKey::param).collect();
    if let Some(last) = p.last().cloned() {
        p.resize(padded(keys.len()), last);
    }
    p
}

/// How a reference's local value becomes an identity.
#[derive(Debug, Clone)]
enum Translate {
    /// The value is the identity (a uuid or natural key referenced directly).
    Itself,
    /// Looked up in the cache.
    Lookup(Target),
}

/// How one carried column is decoded, with its place in the select list.
#[derive(Debug, Clone)]
enum Carried {
    Plain {
        at: usize,
        column: Column,
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
        kind_at: usize,
        kind: Target,
        kind_pk: String,
        /// Discriminator → (target table, its integer key).
        targets: BTreeMap<String, Target>,
    },
}

/// Where a row's identity comes from.
#[derive(Debug, Clone)]
enum Ident {
    /// A column holding it (uuid, single natural key).
    Column(usize),
    /// A subclass row: its parent's identity, through the key column.
    Parent { at: usize, target: Target },
    /// The SQL identity expression, selected as the first column (composite and natural
    /// keys of tables without a local integer id).
    Sql,
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
}

impl RowFetcher {
    /// The fetcher for `table`, or `None` when the table is not synced (or refers to a
    /// table whose identity cannot be referenced).
    pub fn new(plan: &SyncPlan, schema: &Schema, table: &str) -> Option<RowFetcher> {
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
                    target: (parent.clone(), fk.ref_columns[0].clone()),
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
                        Translate::Lookup((r.table.clone(), r.ref_column.clone()))
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
                    targets.insert(class.clone(), (t.clone(), pk.clone()));
                }
                if targets.is_empty() {
                    return None;
                }
                let at = add(col(name));
                let kind_at = add(col(&s.type_column));
                carried.push(Carried::Soft {
                    at,
                    column,
                    kind_at,
                    kind: (s.type_table.clone(), s.discriminator.clone()),
                    kind_pk: type_fk.ref_columns[0].clone(),
                    targets,
                });
            } else {
                carried.push(Carried::Plain {
                    at: add(col(name)),
                    column,
                });
            }
        }
        Some(RowFetcher {
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

    /// Reads the rows with these local ids (ascending); rows that are gone are absent.
    pub async fn by_ids(
        &self,
        conn: &mut Conn,
        cache: &mut RefCache,
        plan: &SyncPlan,
        schema: &Schema,
        ids: &[i64],
    ) -> Result<Vec<FetchedRow>, FetchError> {
        let Some(pk) = &self.row_id else {
            return Ok(Vec::new());
        };
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok(Vec::new());
        };
        let from = format!("FROM {} AS t", ident(&self.table));
        let rows: Vec<Row> = if (last - first) as u128 <= 2 * ids.len() as u128 {
            // Dense: one range scan, then keep the wanted ones.
            let wanted: HashSet<i64> = ids.iter().copied().collect();
            let at = self.row_id_at().expect("row id");
            let all: Vec<Row> = conn
                .exec(
                    format!(
                        "SELECT {} {from} WHERE t.{pk} BETWEEN ? AND ?",
                        self.select,
                        pk = ident(pk)
                    ),
                    (first, last),
                )
                .await
                .map_err(DbError::query(format!("reading {} rows", self.table)))?;
            all.into_iter()
                .filter(|r| int_at(r, at).is_some_and(|i| wanted.contains(&i)))
                .collect()
        } else {
            let keys: Vec<RawKey> = ids.iter().map(|i| RawKey::Int(*i)).collect();
            let mut out = Vec::new();
            for chunk in keys.chunks(IN_SIZES[IN_SIZES.len() - 1]) {
                let found: Vec<Row> = conn
                    .exec(
                        format!(
                            "SELECT {} {from} WHERE t.{} IN ({})",
                            self.select,
                            ident(pk),
                            placeholders(padded(chunk.len()))
                        ),
                        padded_params(chunk),
                    )
                    .await
                    .map_err(DbError::query(format!("reading {} rows", self.table)))?;
                out.extend(found);
            }
            out
        };
        self.decode_all(conn, cache, plan, schema, rows).await
    }

    /// Reads the rows with these identity texts; rows that are gone are absent.
    pub async fn by_keys(
        &self,
        conn: &mut Conn,
        cache: &mut RefCache,
        plan: &SyncPlan,
        schema: &Schema,
        keys: &[&str],
    ) -> Result<Vec<FetchedRow>, FetchError> {
        let mut rows = Vec::new();
        let keys: Vec<RawKey> = keys
            .iter()
            .map(|k| RawKey::Text(k.as_bytes().to_vec()))
            .collect();
        for chunk in keys.chunks(IN_SIZES[IN_SIZES.len() - 1]) {
            let found: Vec<Row> = conn
                .exec(
                    format!(
                        "SELECT {} FROM {} AS t WHERE {} IN ({})",
                        self.select,
                        ident(&self.table),
                        self.key_expr,
                        placeholders(padded(chunk.len()))
                    ),
                    padded_params(chunk),
                )
                .await
                .map_err(DbError::query(format!("reading {} rows", self.table)))?;
            rows.extend(found);
        }
        self.decode_all(conn, cache, plan, schema, rows).await
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
            .exec(
                format!("SELECT {} FROM {} AS t", self.select, ident(&self.table)),
                (),
            )
            .await
            .map_err(DbError::query(format!("reading {} rows", self.table)))?;
        let mut out = Vec::new();
        for chunk in rows.chunks(2000) {
            out.extend(
                self.decode_all(conn, cache, plan, schema, chunk.to_vec())
                    .await?,
            );
        }
        Ok(out)
    }

    /// Fills the cache for the references of `rows`, then decodes them.
    async fn decode_all(
        &self,
        conn: &mut Conn,
        cache: &mut RefCache,
        plan: &SyncPlan,
        schema: &Schema,
        rows: Vec<Row>,
    ) -> Result<Vec<FetchedRow>, FetchError> {
        // 1. Attribute types of soft references.
        let mut kinds: HashMap<(Target, String), HashSet<RawKey>> = HashMap::new();
        for r in &rows {
            for c in &self.carried {
                if let Carried::Soft {
                    kind_at,
                    kind,
                    kind_pk,
                    ..
                } = c
                {
                    if let Some(k) = r.as_ref(*kind_at).and_then(RawKey::of) {
                        let known = cache.kinds.get(kind).is_some_and(|m| m.contains_key(&k));
                        if !known {
                            kinds
                                .entry((kind.clone(), kind_pk.clone()))
                                .or_default()
                                .insert(k);
                        }
                    }
                }
            }
        }
        if !kinds.is_empty() {
            cache.fill_kinds(conn, kinds).await?;
        }
        // 2. Identities of referenced rows.
        let mut wanted: HashMap<Target, HashSet<RawKey>> = HashMap::new();
        let mut want = |cache: &mut RefCache, target: &Target, k: RawKey| {
            if cache.get(target, &k).is_some() {
                cache.hits += 1;
            } else {
                wanted.entry(target.clone()).or_default().insert(k);
            }
        };
        for r in &rows {
            if let Ident::Parent { at, target } = &self.ident {
                if let Some(k) = r.as_ref(*at).and_then(RawKey::of) {
                    want(cache, target, k);
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
                            want(cache, target, k);
                        }
                    }
                    Carried::Soft {
                        at,
                        kind_at,
                        kind,
                        targets,
                        ..
                    } => {
                        if let Some((target, id)) =
                            soft_target(cache, r, *at, *kind_at, kind, targets)
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
        // 3. Decode.
        rows.iter().map(|r| self.decode(cache, r)).collect()
    }

    fn decode(&self, cache: &RefCache, r: &Row) -> Result<FetchedRow, FetchError> {
        let text_at = |i: usize| match r.as_ref(i) {
            Some(MyValue::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(MyValue::NULL) | None => String::new(),
            Some(other) => other.as_sql(true),
        };
        let key = match &self.ident {
            Ident::Column(at) => text_at(*at),
            Ident::Parent { at, target } => r
                .as_ref(*at)
                .and_then(RawKey::of)
                .and_then(|k| cache.get(target, &k).cloned().flatten())
                .unwrap_or_default(),
            Ident::Sql => text_at(0),
        };
        let parts = parse_identity(&key, self.arity)
            .filter(|p| !p.is_empty() && p.iter().all(|s| !s.is_empty()))
            .ok_or_else(|| RowError::BadIdentity {
                table: self.table.clone(),
                key: key.clone(),
            })?;
        let row_id = self.row_id_at().and_then(|at| int_at(r, at));
        let mut values = Vec::with_capacity(self.carried.len());
        for (name, c) in self.columns.iter().zip(&self.carried) {
            values.push(match c {
                Carried::Plain { at, column } => decode_value(&self.table, column, r.as_ref(*at))?,
                Carried::Ref { at, target, how } => {
                    let raw = r.as_ref(*at);
                    match raw.and_then(RawKey::of) {
                        None => Value::Null,
                        Some(k) => {
                            let id = match how {
                                Translate::Itself => Some(match &k {
                                    RawKey::Text(b) => String::from_utf8_lossy(b).into_owned(),
                                    RawKey::Int(i) => i.to_string(),
                                })
                                .filter(|s| !s.is_empty()),
                                Translate::Lookup(t) => cache.get(t, &k).cloned().flatten(),
                            };
                            self.reference(&key, name, target, raw, id)?
                        }
                    }
                }
                Carried::Soft {
                    at,
                    column,
                    kind_at,
                    kind,
                    targets,
                    ..
                } => {
                    let raw = r.as_ref(*at);
                    match soft_target(cache, r, *at, *kind_at, kind, targets) {
                        Some((target, id)) => {
                            let found = cache.get(target, &RawKey::Int(id)).cloned().flatten();
                            self.reference(&key, name, &target.0, raw, found)?
                        }
                        None => decode_value(&self.table, column, raw)?,
                    }
                }
            });
        }
        Ok(FetchedRow {
            row_id,
            key,
            identity: Identity(parts),
            values,
        })
    }

    fn reference(
        &self,
        key: &str,
        column: &str,
        target: &str,
        raw: Option<&MyValue>,
        id: Option<String>,
    ) -> Result<Value, RowError> {
        match id {
            Some(text) => Ok(Value::Ref(Identity(vec![text]))),
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

/// The target and local id of a soft reference, when the attribute type says the value
/// is one and the value is a local id.
fn soft_target<'a>(
    cache: &RefCache,
    r: &Row,
    at: usize,
    kind_at: usize,
    kind: &Target,
    targets: &'a BTreeMap<String, Target>,
) -> Option<(&'a Target, i64)> {
    let raw = r.as_ref(at);
    if !is_local_id(raw) {
        return None;
    }
    let k = r.as_ref(kind_at).and_then(RawKey::of)?;
    let disc = cache.kinds.get(kind)?.get(&k)?.as_ref()?;
    let target = targets.get(disc)?;
    let id = match raw? {
        MyValue::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        MyValue::Int(i) => *i,
        MyValue::UInt(u) => i64::try_from(*u).ok()?,
        _ => return None,
    };
    Some((target, id))
}

fn col(name: &str) -> String {
    format!("t.{}", ident(name))
}

fn int_at(r: &Row, at: usize) -> Option<i64> {
    match r.as_ref(at) {
        Some(MyValue::Int(i)) => Some(*i),
        Some(MyValue::UInt(u)) => Some(*u as i64),
        _ => None,
    }
}
