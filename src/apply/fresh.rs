//! Tables new to `ferry_row`: where a row's settled version can only be one this run
//! settled itself, so looking for the others is wasted work.
//!
//! Before applying a change, the importer reads the row's head: its newest log entry
//! and its `ferry_row` record ([`crate::capture::versions::heads`]). On a node taking
//! in another site's history (a new hub, a spoke catching up) nearly every row is new,
//! and the `ferry_row` probe, a thousand index lookups per chunk, finds nothing: at 1M
//! changes it cost 6.0 of 69 s (`make bench`, 2026-12-03; 0.7 s with this).
//!
//! [`FreshTables`] keeps that probe for the keys that can have a record. A table is
//! fresh when, at its first chunk in the run, it has no `ferry_row` record at all. Only
//! the importer writes such records (settling applied versions, and pruning the log
//! after an import), and imports hold the import lock ([`super::import`]), so inside
//! one run a fresh table's records are exactly the ones this run settled. Their keys'
//! hashes are kept; a key whose hash is not among them has no record. A hash that two
//! keys share only costs a probe. After a failed transaction, and once the run has
//! settled more than [`MAX_REMEMBERED`] keys, every key is probed again as before: the
//! memory stays bounded (about 50 MB).
//!
//! [`FreshTables::new`]`(false)` (the default) makes nothing fresh: an [`Applier`]
//! outside an import (an operator restoring a conflict's loser) probes every key.
//!
//! [`Applier`]: super::changes::Applier

use std::hash::{Hash, Hasher};

use mysql_async::prelude::*;
use mysql_async::Conn;
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

use crate::db::DbError;

/// Settled keys remembered per run (16 bytes or so each) before fresh tables are given up.
pub const MAX_REMEMBERED: usize = 2_000_000;

/// Which tables of this run are fresh, and the keys the run settled in them.
#[derive(Debug, Default)]
pub struct FreshTables {
    /// Whether any table may be fresh (inside an import, the memory bound not hit).
    enabled: bool,
    /// Per table seen in this run: whether it is fresh.
    tables: FxHashMap<String, bool>,
    /// Hashes of (table, row key) settled in fresh tables in this run.
    settled: FxHashSet<u64>,
}

impl FreshTables {
    /// Fresh tables are looked for only when `enabled` (by an import, which holds the
    /// import lock).
    pub fn new(enabled: bool) -> FreshTables {
        FreshTables {
            enabled,
            ..Default::default()
        }
    }

    /// Finds out, at the table's first chunk in the run, whether `table` is fresh.
    pub async fn learn(&mut self, conn: &mut Conn, table: &str) -> Result<(), DbError> {
        if !self.enabled || self.tables.contains_key(table) {
            return Ok(());
        }
        let any: Option<u8> = conn
            .exec_first(
                "SELECT 1 FROM ferry_row WHERE table_name = ? LIMIT 1",
                (table,),
            )
            .await
            .map_err(DbError::query("looking for row versions"))?;
        self.tables.insert(table.to_string(), any.is_none());
        Ok(())
    }

    /// Whether `table` is known to be fresh.
    fn is_fresh(&self, table: &str) -> bool {
        self.enabled && self.tables.get(table).copied().unwrap_or(false)
    }

    /// Whether the row `key` of `table` may have a `ferry_row` record.
    pub fn may_have_record(&self, table: &str, key: &str) -> bool {
        !self.is_fresh(table) || self.settled.contains(&hash(table, key))
    }

    /// Notes that this run settled the version of row `key` of `table`.
    pub fn settled(&mut self, table: &str, key: &str) {
        if !self.is_fresh(table) {
            return;
        }
        if self.settled.len() >= MAX_REMEMBERED {
            // Past the bound: forget it all, and probe every key again.
            *self = FreshTables::new(false);
            return;
        }
        self.settled.insert(hash(table, key));
    }
}

fn hash(table: &str, key: &str) -> u64 {
    let mut h = FxHasher::default();
    table.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(table: &str, fresh: bool) -> FreshTables {
        let mut f = FreshTables::new(true);
        f.tables.insert(table.to_string(), fresh);
        f
    }

    #[test]
    fn a_fresh_table_has_records_only_for_what_the_run_settled() {
        let mut f = with("person", true);
        assert!(!f.may_have_record("person", "a"));
        f.settled("person", "a");
        assert!(f.may_have_record("person", "a"));
        assert!(!f.may_have_record("person", "b"));
    }

    #[test]
    fn tables_not_fresh_unknown_or_unlocked_are_always_probed() {
        let f = with("person", false);
        assert!(f.may_have_record("person", "a"));
        assert!(f.may_have_record("obs", "a"), "a table not asked about yet");
        let mut off = FreshTables::new(false);
        off.tables.insert("person".into(), true);
        assert!(off.may_have_record("person", "a"));
    }

    #[test]
    fn past_the_memory_bound_every_key_is_probed_again() {
        let mut f = with("obs", true);
        f.settled.extend(0..MAX_REMEMBERED as u64);
        f.settled("obs", "late");
        assert!(f.may_have_record("obs", "never-settled"));
        assert!(f.settled.is_empty());
    }
}
