//! The reference cache: identities of referenced rows by local key.
//!
//! [`RowFetcher`](super::fetch::RowFetcher) translates each reference of each row it
//! reads through [`RefCache`]: per referenced table (a target), the identity of each
//! local key seen recently, fetched in one query per target and batch for the keys it
//! lacks, and, for soft references, the discriminators of attribute types. Per target
//! the cache keeps two generations of at most [`CACHE_ENTRIES`] identities each (the
//! older is dropped when the newer fills up), so memory stays bounded whatever the
//! table sizes while recent rows stay known.

use std::collections::HashMap;

use mysql_async::prelude::*;
use mysql_async::{Conn, Value as MyValue};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::db::{ident, DbError};
use crate::schema::identity_sql::row_identity;
use crate::schema::{Schema, SyncPlan};

/// Identities of one referenced table in one generation of the cache (about 11 MB a
/// generation when full; only the big tables ever fill it). At 1M changes of the
/// clinical workload, 50,000 let 54k identities be fetched again, 200,000 only 12k but
/// with 146 MB peak RSS; this is the middle.
pub const CACHE_ENTRIES: usize = 100_000;

/// Largest IN list of one query; shorter lists are padded to a few fixed lengths so
/// that the server keeps a handful of prepared statements.
pub(super) const IN_SIZES: [usize; 5] = [8, 64, 256, 512, 1000];

/// A local key value as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RawKey {
    Int(i64),
    Text(Vec<u8>),
}

impl RawKey {
    pub(super) fn of(v: &MyValue) -> Option<RawKey> {
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

/// A target (table, column) registered in a [`RefCache`] (so that a lookup hashes a number, not
/// two names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetId(usize);

/// Identities by local key (hashed with FxHash: these keys are the database's own ids,
/// and the map is hit for every reference of every row).
type KeyMap = FxHashMap<RawKey, Option<String>>;

/// Two generations of one target's identities.
#[derive(Debug, Default)]
struct Generations {
    new: KeyMap,
    old: KeyMap,
}

impl Generations {
    fn get(&self, k: &RawKey) -> Option<&Option<String>> {
        self.new.get(k).or_else(|| self.old.get(k))
    }

    fn insert(&mut self, k: RawKey, v: Option<String>) {
        self.make_room();
        self.new.insert(k, v);
    }

    /// Remembers `k` in the newer generation unless it holds it already (one probe);
    /// `identity` is made only when it is remembered.
    fn learn(&mut self, k: RawKey, identity: impl FnOnce() -> Option<String>) {
        self.make_room();
        if let std::collections::hash_map::Entry::Vacant(e) = self.new.entry(k) {
            e.insert(identity());
        }
    }

    /// Drops the older generation when the newer is full; its table, already grown,
    /// takes the new one (no rehashing, no fresh pages).
    fn make_room(&mut self) {
        if self.new.len() >= CACHE_ENTRIES {
            std::mem::swap(&mut self.old, &mut self.new);
            self.new.clear();
        }
    }

    fn contains(&self, k: &RawKey) -> bool {
        self.new.contains_key(k) || self.old.contains_key(k)
    }
}

/// Identities of referenced rows by local key, and attribute types' discriminators.
#[derive(Debug, Default)]
pub struct RefCache {
    targets: Vec<Target>,
    ids: HashMap<Target, TargetId>,
    /// Per target: local key → identity.
    refs: Vec<Generations>,
    /// Per (type table, discriminator column): type row's key → discriminator.
    kinds: Vec<Generations>,
    /// Lookups answered from the cache, and keys fetched (for the stage log).
    pub hits: u64,
    pub fetched: u64,
    /// Queries that fetched keys, and the time spent waiting for them.
    pub queries: u64,
    pub waited: std::time::Duration,
}

impl RefCache {
    /// The id of `(table, column)`, registering it.
    pub fn target(&mut self, table: &str, column: &str) -> TargetId {
        let key = (table.to_string(), column.to_string());
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = TargetId(self.targets.len());
        self.targets.push(key.clone());
        self.refs.push(Generations::default());
        self.kinds.push(Generations::default());
        self.ids.insert(key, id);
        id
    }

    pub(super) fn get(&self, target: TargetId, key: &RawKey) -> Option<&Option<String>> {
        self.refs[target.0].get(key)
    }

    /// Whether the newer generation of `target` holds `key` (a key only the older one
    /// holds is worth remembering again, since the older goes first).
    pub(super) fn knows_recent(&self, target: TargetId, key: &RawKey) -> bool {
        self.refs[target.0].new.contains_key(key)
    }

    /// Remembers the identity of `key` in `target` unless the newer generation holds it
    /// (a key only the older one holds is worth remembering again, since the older goes
    /// first); `identity` is made only then.
    pub(super) fn learn(
        &mut self,
        target: TargetId,
        key: RawKey,
        identity: impl FnOnce() -> Option<String>,
    ) {
        self.refs[target.0].learn(key, identity);
    }

    pub(super) fn kind(&self, target: TargetId, key: &RawKey) -> Option<&Option<String>> {
        self.kinds[target.0].get(key)
    }

    /// Fetches the identities of the `wanted` keys it lacks.
    pub(super) async fn fill(
        &mut self,
        conn: &mut Conn,
        plan: &SyncPlan,
        schema: &Schema,
        wanted: FxHashMap<TargetId, FxHashSet<RawKey>>,
    ) -> Result<(), DbError> {
        for (id, keys) in wanted {
            let (table, column) = self.targets[id.0].clone();
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
            let keys: Vec<RawKey> = keys.into_iter().collect();
            for chunk in keys.chunks(IN_SIZES[IN_SIZES.len() - 1]) {
                let asked = std::time::Instant::now();
                let rows: Vec<(MyValue, Option<String>)> = conn
                    .exec(sql_for(padded(chunk.len())), padded_params(chunk))
                    .await
                    .map_err(DbError::query(format!(
                        "reading identities of {table} rows"
                    )))?;
                self.queries += 1;
                self.waited += asked.elapsed();
                let map = &mut self.refs[id.0];
                // The server compares text by its collation (case, trailing spaces); a
                // key matches the row it found that way as well as its exact form.
                let mut folded: HashMap<Vec<u8>, Option<String>> = HashMap::new();
                for (k, found) in rows {
                    let found = found.filter(|s| !s.is_empty());
                    if let Some(k) = RawKey::of(&k) {
                        if let RawKey::Text(b) = &k {
                            folded.insert(fold(b), found.clone());
                        }
                        map.insert(k, found);
                    }
                }
                for k in chunk {
                    if !map.contains(k) {
                        let found = match k {
                            RawKey::Text(b) => folded.get(&fold(b)).cloned().flatten(),
                            RawKey::Int(_) => None,
                        };
                        map.insert(k.clone(), found);
                    }
                }
                self.fetched += chunk.len() as u64;
            }
        }
        Ok(())
    }

    /// Fetches the discriminators of the `wanted` type rows it lacks; each kind target
    /// comes with its type table's key column.
    pub(super) async fn fill_kinds(
        &mut self,
        conn: &mut Conn,
        wanted: FxHashMap<TargetId, (String, FxHashSet<RawKey>)>,
    ) -> Result<(), DbError> {
        for (id, (pk, keys)) in wanted {
            let (table, disc) = self.targets[id.0].clone();
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
                let map = &mut self.kinds[id.0];
                for (k, d) in rows {
                    if let Some(k) = RawKey::of(&k) {
                        map.insert(k, d);
                    }
                }
                for k in chunk {
                    if !map.contains(k) {
                        map.insert(k.clone(), None);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Text as a case-insensitive, trailing-space-insensitive collation compares it.
fn fold(b: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(b);
    s.trim_end_matches(' ').to_lowercase().into_bytes()
}

pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n.max(1)].join(", ")
}

/// The IN-list length a query of `n` keys uses.
pub(super) fn padded(n: usize) -> usize {
    IN_SIZES.iter().copied().find(|s| *s >= n).unwrap_or(n)
}

/// The keys as parameters, the last repeated up to the padded length.
pub(super) fn padded_params(keys: &[RawKey]) -> Vec<MyValue> {
    let mut p: Vec<MyValue> = keys.iter().map(RawKey::param).collect();
    if let Some(last) = p.last().cloned() {
        p.resize(padded(keys.len()), last);
    }
    p
}
