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

/// Where a remembered identity's text lies in its generation's arena; `len` is
/// [`Span::ABSENT`] for a key known to match no row.
#[derive(Debug, Clone, Copy)]
struct Span {
    at: u32,
    len: u32,
}

impl Span {
    const ABSENT: u32 = u32::MAX;
    /// In [`IntKeys`]'s window: no key here.
    const NONE: u32 = u32::MAX - 1;
}

/// How far past the end of [`IntKeys`]'s window a key may lie and still extend it.
const WINDOW_GAP: i64 = 64;

/// Integer keys of one generation: a window indexed by the key itself for keys that
/// come nearly in order (rows learned in id order, and the references to them), a hash
/// map for the rest. Learning a million obs in id order then costs an append each,
/// not a probe of a map larger than the cache. The window grows by at most
/// [`WINDOW_GAP`] per key and never past twice [`CACHE_ENTRIES`] places.
#[derive(Debug, Default)]
struct IntKeys {
    base: i64,
    window: Vec<Span>,
    in_window: usize,
    rest: FxHashMap<i64, Span>,
}

impl IntKeys {
    fn len(&self) -> usize {
        self.in_window + self.rest.len()
    }

    /// The place of `k` in the window, if the window covers it.
    fn place_of(&self, k: i64) -> Option<usize> {
        let off = k.checked_sub(self.base)?;
        (off >= 0 && (off as u64) < self.window.len() as u64).then_some(off as usize)
    }

    fn get(&self, k: i64) -> Option<Span> {
        if let Some(at) = self.place_of(k) {
            let s = self.window[at];
            if s.len != Span::NONE {
                return Some(s);
            }
        }
        if self.rest.is_empty() {
            return None;
        }
        self.rest.get(&k).copied()
    }

    fn insert(&mut self, k: i64, span: Span) {
        if self.window.is_empty() {
            self.base = k;
        }
        let end = self.base.saturating_add(self.window.len() as i64);
        let fits = k >= end
            && k - end < WINDOW_GAP
            && self.window.len() + ((k - end) as usize) < 2 * CACHE_ENTRIES;
        if fits {
            let none = Span {
                at: 0,
                len: Span::NONE,
            };
            self.window.resize((k - self.base) as usize, none);
            self.window.push(span);
            self.in_window += 1;
        } else if let Some(at) = self.place_of(k) {
            if self.window[at].len == Span::NONE {
                self.in_window += 1;
            }
            self.window[at] = span;
        } else {
            self.rest.insert(k, span);
            return;
        }
        if !self.rest.is_empty() {
            self.rest.remove(&k);
        }
    }

    fn clear(&mut self) {
        self.window.clear();
        self.in_window = 0;
        self.rest.clear();
    }
}

/// Identities by local key, one generation of one target (hashed with FxHash: these
/// keys are the database's own ids, and the map is hit for every reference of every
/// row). Integer keys, nearly all of them, have a map of their own; the identity texts
/// lie end to end in one arena, so remembering an identity allocates nothing once the
/// generation has grown, and dropping a generation frees no string one by one.
#[derive(Debug, Default)]
struct KeyMap {
    ints: IntKeys,
    texts: FxHashMap<Vec<u8>, Span>,
    arena: String,
}

impl KeyMap {
    fn len(&self) -> usize {
        self.ints.len() + self.texts.len()
    }

    fn span(&self, k: &RawKey) -> Option<Span> {
        match k {
            RawKey::Int(i) => self.ints.get(*i),
            RawKey::Text(b) => self.texts.get(b).copied(),
        }
    }

    fn text(&self, s: Span) -> Option<&str> {
        (s.len != Span::ABSENT).then(|| &self.arena[s.at as usize..(s.at + s.len) as usize])
    }

    fn get(&self, k: &RawKey) -> Option<Option<&str>> {
        self.span(k).map(|s| self.text(s))
    }

    fn contains(&self, k: &RawKey) -> bool {
        self.span(k).is_some()
    }

    fn insert(&mut self, k: RawKey, v: Option<&str>) {
        let span = place(&mut self.arena, v);
        match k {
            RawKey::Int(i) => self.ints.insert(i, span),
            RawKey::Text(b) => {
                self.texts.insert(b, span);
            }
        }
    }

    /// Remembers `k` unless it is held already (one probe).
    fn learn(&mut self, k: RawKey, v: &str) {
        use std::collections::hash_map::Entry;
        match k {
            RawKey::Int(i) => {
                if self.ints.get(i).is_none() {
                    let span = place(&mut self.arena, Some(v));
                    self.ints.insert(i, span);
                }
            }
            RawKey::Text(b) => {
                if let Entry::Vacant(e) = self.texts.entry(b) {
                    e.insert(place(&mut self.arena, Some(v)));
                }
            }
        }
    }

    /// Forgets everything; the maps and the arena keep their capacity.
    fn clear(&mut self) {
        self.ints.clear();
        self.texts.clear();
        self.arena.clear();
    }
}

/// Appends `v` to `arena`; where it lies.
fn place(arena: &mut String, v: Option<&str>) -> Span {
    match v {
        Some(t) => {
            let at = arena.len() as u32;
            arena.push_str(t);
            Span {
                at,
                len: t.len() as u32,
            }
        }
        None => Span {
            at: 0,
            len: Span::ABSENT,
        },
    }
}

/// Arena bytes a generation may hold before it is dropped like a full one (identities
/// are short: a uuid is 36 bytes; this bounds a table of long natural keys).
const ARENA_BYTES: usize = 64 << 20;

/// Two generations of one target's identities.
#[derive(Debug, Default)]
struct Generations {
    new: KeyMap,
    old: KeyMap,
}

impl Generations {
    fn get(&self, k: &RawKey) -> Option<Option<&str>> {
        self.new.get(k).or_else(|| self.old.get(k))
    }

    fn insert(&mut self, k: RawKey, v: Option<&str>) {
        self.make_room();
        self.new.insert(k, v);
    }

    /// Remembers `k` in the newer generation unless it holds it already (one probe).
    fn learn(&mut self, k: RawKey, identity: &str) {
        self.make_room();
        self.new.learn(k, identity);
    }

    /// Drops the older generation when the newer is full; its maps and arena, already
    /// grown, take the new one (no rehashing, no fresh pages).
    fn make_room(&mut self) {
        if self.new.len() >= CACHE_ENTRIES || self.new.arena.len() >= ARENA_BYTES {
            std::mem::swap(&mut self.old, &mut self.new);
            self.new.clear();
        }
    }

    fn contains(&self, k: &RawKey) -> bool {
        self.new.contains(k) || self.old.contains(k)
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

    /// The identity of `key` in `target`: `Some(None)` for a key known to match no
    /// row, `None` when the cache does not know.
    pub(super) fn get(&self, target: TargetId, key: &RawKey) -> Option<Option<&str>> {
        self.refs[target.0].get(key)
    }

    /// Whether the newer generation of `target` holds `key` (a key only the older one
    /// holds is worth remembering again, since the older goes first).
    pub(super) fn knows_recent(&self, target: TargetId, key: &RawKey) -> bool {
        self.refs[target.0].new.contains(key)
    }

    /// Remembers the identity of `key` in `target` unless the newer generation holds it
    /// (a key only the older one holds is worth remembering again, since the older goes
    /// first).
    pub(super) fn learn(&mut self, target: TargetId, key: RawKey, identity: &str) {
        self.refs[target.0].learn(key, identity);
    }

    pub(super) fn kind(&self, target: TargetId, key: &RawKey) -> Option<Option<&str>> {
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
                        map.insert(k, found.as_deref());
                    }
                }
                for k in chunk {
                    if !map.contains(k) {
                        let found = match k {
                            RawKey::Text(b) => folded.get(&fold(b)).and_then(|f| f.as_deref()),
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
                        map.insert(k, d.as_deref());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys in order go to the window, keys far off or behind it to the map; a key
    /// the map holds that the window comes to cover is found, and moves on an insert.
    #[test]
    fn int_keys_in_a_window_and_a_map_answer_alike() {
        let span = |at| Span { at, len: 1 };
        let mut keys = IntKeys::default();
        keys.insert(100, span(0));
        keys.insert(101, span(1));
        keys.insert(110, span(2)); // a gap inside WINDOW_GAP: the window grows
        keys.insert(50, span(3)); // behind the window: the map
        keys.insert(1_000, span(4)); // far past it: the map
        assert_eq!((keys.window.len(), keys.rest.len(), keys.len()), (11, 2, 5));
        for (k, at) in [(100, 0), (101, 1), (110, 2), (50, 3), (1_000, 4)] {
            assert_eq!(keys.get(k).map(|s| s.at), Some(at), "key {k}");
        }
        for k in [99, 102, 109, 111, 999] {
            assert!(keys.get(k).is_none(), "key {k}");
        }
        // The window comes to cover 1,000 (in steps within the gap): the map still
        // answers, until an insert of 1,000 moves it into the window.
        for k in (160..=1_060).step_by(50) {
            keys.insert(k, span(9));
        }
        assert_eq!(keys.get(1_000).map(|s| s.at), Some(4));
        keys.insert(1_000, span(5));
        assert_eq!(keys.get(1_000).map(|s| s.at), Some(5));
        assert_eq!(keys.rest.len(), 1);
        assert_eq!(keys.len(), 4 + 19 + 1);
        keys.clear();
        assert!(keys.get(100).is_none() && keys.get(50).is_none() && keys.len() == 0);
        // Growth stops at twice CACHE_ENTRIES places: the rest goes to the map.
        for k in 0..(2 * CACHE_ENTRIES as i64 + 10) {
            keys.insert(k * 2, span(0));
        }
        assert!(keys.window.len() <= 2 * CACHE_ENTRIES);
        assert!(keys.get(4 * CACHE_ENTRIES as i64 + 18).is_some());
    }

    #[test]
    fn a_generation_tells_known_absent_and_unknown_apart_and_learns_once() {
        let mut g = Generations::default();
        g.insert(RawKey::Int(1), Some("uuid-1"));
        g.insert(RawKey::Int(2), None);
        g.insert(RawKey::Text(b"code".to_vec()), Some("uuid-c"));
        assert_eq!(g.get(&RawKey::Int(1)), Some(Some("uuid-1")));
        assert_eq!(g.get(&RawKey::Int(2)), Some(None));
        assert_eq!(g.get(&RawKey::Int(3)), None);
        assert_eq!(g.get(&RawKey::Text(b"code".to_vec())), Some(Some("uuid-c")));
        // Learning keeps what is held, and adds what is not.
        g.learn(RawKey::Int(1), "other");
        g.learn(RawKey::Int(3), "uuid-3");
        assert_eq!(g.get(&RawKey::Int(1)), Some(Some("uuid-1")));
        assert_eq!(g.get(&RawKey::Int(3)), Some(Some("uuid-3")));
    }

    #[test]
    fn a_full_generation_becomes_the_older_and_the_one_before_it_goes() {
        let mut g = Generations::default();
        for i in 0..CACHE_ENTRIES as i64 {
            g.learn(RawKey::Int(i), &format!("id-{i}"));
        }
        // The next key starts a new generation; the full one is still read.
        g.learn(RawKey::Int(-1), "id-new");
        assert_eq!(g.get(&RawKey::Int(7)), Some(Some("id-7")));
        assert!(!g.new.contains(&RawKey::Int(7)));
        assert_eq!(g.get(&RawKey::Int(-1)), Some(Some("id-new")));
        // Once the new one fills up too, the first generation is gone.
        for i in 0..CACHE_ENTRIES as i64 {
            g.learn(RawKey::Int(1_000_000 + i), &format!("later-{i}"));
        }
        assert_eq!(g.get(&RawKey::Int(7)), None);
        assert_eq!(g.get(&RawKey::Int(-1)), Some(Some("id-new")));
        assert_eq!(
            g.get(&RawKey::Int(1_000_000 + CACHE_ENTRIES as i64 - 1)),
            Some(Some(format!("later-{}", CACHE_ENTRIES - 1).as_str()))
        );
    }
}
