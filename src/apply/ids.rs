//! The importer's memory of identities: which local row each identity is.
//!
//! Translating a bundle back to local ids costs a lookup per reference: an obs names
//! its patient, encounter, concepts, location and creator. [`IdCache`] remembers, per
//! referenced table and column, the local value of each identity it has looked up or
//! written itself, so that consecutive rows (which share their encounter, patient and
//! concepts) and rows referring to rows the same import inserted (parents come first)
//! need no query at all. Only found rows are remembered (a row missing now may come
//! later in the bundle), rows the import deletes are forgotten, and each target keeps
//! two generations of at most [`GENERATION`] identities, so memory stays bounded
//! whatever the backlog. The cache lives for one import run.

use std::collections::HashMap;

use mysql_async::{Conn, Value as MyValue};
use rustc_hash::{FxHashMap, FxHashSet};

use super::resolve::Resolver;
use crate::bundle::Identity;
use crate::db::DbError;

/// Identities of one target in one generation.
pub const GENERATION: usize = 50_000;

/// Two generations of one target's identities.
#[derive(Debug, Default)]
struct Generations {
    new: FxHashMap<String, MyValue>,
    old: FxHashMap<String, MyValue>,
}

impl Generations {
    fn get(&self, k: &str) -> Option<&MyValue> {
        self.new.get(k).or_else(|| self.old.get(k))
    }

    fn insert(&mut self, k: String, v: MyValue) {
        if self.new.len() >= GENERATION {
            // The older generation goes; its table, already grown, takes the new one
            // (no rehashing, no fresh pages).
            std::mem::swap(&mut self.old, &mut self.new);
            self.new.clear();
        }
        self.new.insert(k, v);
    }

    fn remove(&mut self, k: &str) {
        self.new.remove(k);
        self.old.remove(k);
    }
}

/// Identity → local value, per (table, referenced column).
#[derive(Debug, Default)]
pub struct IdCache {
    ids: HashMap<(String, String), usize>,
    tables: Vec<String>,
    maps: Vec<Generations>,
    /// References answered from the cache, and identities looked up (stage log).
    pub hits: u64,
    pub fetched: u64,
}

impl IdCache {
    fn target(&mut self, table: &str, column: &str) -> usize {
        if let Some(&i) = self.ids.get(&(table.to_string(), column.to_string())) {
            return i;
        }
        let i = self.maps.len();
        self.ids.insert((table.to_string(), column.to_string()), i);
        self.tables.push(table.to_string());
        self.maps.push(Generations::default());
        i
    }

    /// Remembers that the `table` row `identity` holds `value` in `column`.
    pub fn learn(&mut self, table: &str, column: &str, identity: &str, value: MyValue) {
        let t = self.target(table, column);
        self.maps[t].insert(identity.to_string(), value);
    }

    /// Forgets a `table` row (it was deleted).
    pub fn forget(&mut self, table: &str, identity: &str) {
        for (i, t) in self.tables.iter().enumerate() {
            if t == table {
                self.maps[i].remove(identity);
            }
        }
    }

    /// The local value of `ref_column` of the `table` rows with these identities
    /// (single-part, as references are); `None` where the row does not exist. What the
    /// cache lacks is looked up in one batch of distinct identities.
    pub async fn resolve(
        &mut self,
        conn: &mut Conn,
        resolver: &Resolver<'_>,
        table: &str,
        ref_column: &str,
        ids: &[&Identity],
    ) -> Result<Vec<Option<MyValue>>, DbError> {
        let t = self.target(table, ref_column);
        let mut missing: Vec<Identity> = Vec::new();
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        for id in ids {
            let k = key(id);
            if self.maps[t].get(k).is_some() {
                self.hits += 1;
            } else if seen.insert(k) {
                missing.push((*id).clone());
            }
        }
        if !missing.is_empty() {
            self.fetched += missing.len() as u64;
            let found = resolver
                .ref_values(conn, table, ref_column, &missing)
                .await?;
            for (id, v) in missing.iter().zip(found) {
                if let Some(v) = v {
                    self.maps[t].insert(key(id).to_string(), v);
                }
            }
        }
        Ok(ids
            .iter()
            .map(|id| self.maps[t].get(key(id)).cloned())
            .collect())
    }
}

/// The cache key of a (single-part) identity.
fn key(id: &Identity) -> &str {
    id.0.first().map(String::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_keep_recent_identities_within_bounds() {
        let mut g = Generations::default();
        for i in 0..(GENERATION * 2 + 10) {
            g.insert(i.to_string(), MyValue::Int(i as i64));
        }
        assert!(g.new.len() + g.old.len() <= GENERATION * 2);
        assert_eq!(
            g.get(&(GENERATION * 2 + 9).to_string()),
            Some(&MyValue::Int((GENERATION * 2 + 9) as i64))
        );
        assert_eq!(g.get("0"), None);
    }

    #[test]
    fn forgotten_rows_are_looked_up_again() {
        let mut c = IdCache::default();
        c.learn("person", "person_id", "u-1", MyValue::Int(7));
        c.learn("person", "uuid", "u-1", MyValue::from("u-1"));
        c.forget("person", "u-1");
        let t = c.target("person", "person_id");
        assert!(c.maps[t].get("u-1").is_none());
        let t = c.target("person", "uuid");
        assert!(c.maps[t].get("u-1").is_none());
    }
}
