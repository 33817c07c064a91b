//! Coalescing a row's entries into the one change a bundle carries, and sealing them.
//!
//! The sorted log range holds each row's entries together, oldest first. For a peer P,
//! a row's history is: what P is known to hold, then what it has not seen. P holds
//! every entry already sent to it (at or below its cursor) and every version it made
//! or sent itself (an entry whose origin or `via` is P, or a `ferry_row` record that
//! came through P). The change sealed for the row is the last unseen entry's op and
//! version, on the base of the first unseen one: what that change was made on. A row
//! whose last entries all came from P is not sent at all.
//!
//! A forwarded change carries the base its maker gave it. A local change was made on
//! what came before it here: the entry from P just before it in the range, or else the
//! row's head before the range, looked up ([`heads`]) only where one can exist: for a
//! local update or delete. A local insert starts a row (its base is none).

use std::collections::HashMap;
use std::time::Instant;

use mysql_async::Conn;

use super::fetch::{FetchedRow, RefCache, RowFetcher};
use super::seal::{SealOutcome, SealThread};
use super::sorter::{SortError, Sorted};
use super::{ExportError, Stages};
use crate::bundle::{Change, Identity, Op, Version};
use crate::capture::versions::{heads, Floors, LogEntry};
use crate::schema::identity_sql::parse_identity;
use crate::schema::{Schema, SyncPlan};

/// Rows read and sealed per batch.
pub const BATCH: usize = 1000;

/// One row's entries in the range, as far as the peer is concerned.
#[derive(Debug, Clone)]
struct Group {
    table: String,
    key: String,
    row_id: Option<i64>,
    /// The first and last entries the peer has not seen.
    first: LogEntry,
    last: LogEntry,
    /// The latest version in the range the peer holds (it came from the peer).
    known: Option<Version>,
}

impl Group {
    /// Whether the base must be looked up before the range.
    fn needs_lookup(&self) -> bool {
        self.known.is_none() && self.first.is_local() && self.first.op != "I"
    }
}

/// A row's entries gathered so far.
struct Acc {
    table: String,
    key: String,
    row_id: Option<i64>,
    known: Option<Version>,
    /// The first and last entries the peer has not seen.
    unseen: Option<(LogEntry, LogEntry)>,
}

impl Acc {
    /// The row's group, unless the peer has seen all of it.
    fn group(self) -> Option<Group> {
        let (first, last) = self.unseen?;
        Some(Group {
            table: self.table,
            key: self.key,
            row_id: self.row_id,
            first,
            last,
            known: self.known,
        })
    }
}

/// Seals groups into a bundle for one peer.
pub struct Sealer<'a> {
    plan: &'a SyncPlan,
    schema: &'a Schema,
    floors: &'a Floors,
    me: String,
    peer: String,
    cursor: u64,
    seal: SealThread,
    fetchers: HashMap<String, Option<RowFetcher>>,
    declared: std::collections::HashSet<String>,
    cache: RefCache,
    stages: Stages,
    changes: u64,
}

impl<'a> Sealer<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: &'a SyncPlan,
        schema: &'a Schema,
        floors: &'a Floors,
        me: &str,
        peer: &str,
        cursor: u64,
        seal: SealThread,
    ) -> Sealer<'a> {
        Sealer {
            plan,
            schema,
            floors,
            me: me.to_string(),
            peer: peer.to_string(),
            cursor,
            seal,
            fetchers: HashMap::new(),
            declared: Default::default(),
            cache: RefCache::default(),
            stages: Stages::default(),
            changes: 0,
        }
    }

    fn came_from_peer(&self, e: &LogEntry) -> bool {
        e.origin.as_deref() == Some(self.peer.as_str()) || e.via.as_deref() == Some(&self.peer)
    }

    /// Seals every row of the sorted range; returns the changes sealed.
    pub async fn seal(&mut self, fetch: &mut Conn, sorted: Sorted) -> Result<u64, ExportError> {
        let mut batch: Vec<Group> = Vec::new();
        let mut row: Option<Acc> = None;
        for item in sorted {
            let (_, e) = item.map_err(|e: SortError| ExportError::Sort(e))?;
            if !row
                .as_ref()
                .is_some_and(|r| r.table == e.table && r.key == e.row_key)
            {
                if let Some(g) = row.take().and_then(Acc::group) {
                    self.queue(fetch, &mut batch, g).await?;
                }
                row = Some(Acc {
                    table: e.table.clone(),
                    key: e.row_key.clone(),
                    row_id: e.row_id,
                    known: None,
                    unseen: None,
                });
            }
            let r = row.as_mut().expect("a row");
            if e.row_id.is_some() {
                r.row_id = e.row_id;
            }
            if self.came_from_peer(&e) {
                r.known = Some(e.version(self.floors, &self.me));
                r.unseen = None;
            } else {
                match r.unseen.as_mut() {
                    Some((_, last)) => *last = e,
                    None => r.unseen = Some((e.clone(), e)),
                }
            }
        }
        if let Some(g) = row.take().and_then(Acc::group) {
            self.queue(fetch, &mut batch, g).await?;
        }
        self.flush(fetch, &mut batch).await?;
        Ok(self.changes)
    }

    async fn queue(
        &mut self,
        fetch: &mut Conn,
        batch: &mut Vec<Group>,
        g: Group,
    ) -> Result<(), ExportError> {
        if batch.first().is_some_and(|b| b.table != g.table) || batch.len() >= BATCH {
            self.flush(fetch, batch).await?;
        }
        batch.push(g);
        Ok(())
    }

    /// Stage timings so far.
    pub fn stages(&self) -> Stages {
        let mut s = self.stages;
        s.cache_hits = self.cache.hits;
        s.cache_fetched = self.cache.fetched;
        s
    }

    /// Finishes the bundle file.
    pub fn finish(self) -> Result<SealOutcome, ExportError> {
        Ok(self.seal.finish()?)
    }

    fn fetcher(&mut self, table: &str) -> Option<RowFetcher> {
        self.fetchers
            .entry(table.to_string())
            .or_insert_with(|| RowFetcher::new(self.plan, self.schema, table))
            .clone()
    }

    /// Reads the rows of a batch (one table) and seals their changes.
    async fn flush(&mut self, fetch: &mut Conn, batch: &mut Vec<Group>) -> Result<(), ExportError> {
        let Some(table) = batch.first().map(|g| g.table.clone()) else {
            return Ok(());
        };
        let groups = std::mem::take(batch);
        let Some(fetcher) = self.fetcher(&table) else {
            return Ok(()); // the table is no longer synced
        };
        let started = Instant::now();
        if self.declared.insert(table.clone()) {
            self.seal.declare(&table, &fetcher.columns)?;
        }
        let arity = self
            .plan
            .table(&table)
            .and_then(|t| t.synced())
            .map(|s| s.identity.arity())
            .unwrap_or(1);

        // 1. The base of rows whose history before the range matters.
        let lookup: Vec<&str> = groups
            .iter()
            .filter(|g| g.needs_lookup())
            .map(|g| g.key.as_str())
            .collect();
        let found = if lookup.is_empty() {
            HashMap::new()
        } else {
            self.stages.lookups += lookup.len() as u64;
            heads(
                fetch,
                self.floors,
                &self.me,
                &table,
                &lookup,
                Some(self.cursor),
            )
            .await?
        };

        // 2. The rows' values, for every row that was not deleted.
        let live: Vec<&Group> = groups.iter().filter(|g| g.last.op != "D").collect();
        let mut rows: HashMap<String, FetchedRow> = HashMap::new();
        if !live.is_empty() {
            let fetched = if fetcher.row_id.is_some() && live.iter().all(|g| g.row_id.is_some()) {
                let mut ids: Vec<i64> = live.iter().filter_map(|g| g.row_id).collect();
                ids.sort_unstable();
                ids.dedup();
                fetcher
                    .by_ids(fetch, &mut self.cache, self.plan, self.schema, &ids)
                    .await?
            } else {
                let keys: Vec<&str> = live.iter().map(|g| g.key.as_str()).collect();
                fetcher
                    .by_keys(fetch, &mut self.cache, self.plan, self.schema, &keys)
                    .await?
            };
            for r in fetched {
                rows.insert(r.key.clone(), r);
            }
        }

        // 3. The changes.
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            // The base is what the first unseen change was made on: a forwarded change
            // says so itself; a local one was made on what came before it here.
            let mut base = if g.first.is_local() {
                g.known.clone()
            } else {
                g.first.base.clone()
            };
            if let Some(h) = found.get(&g.key) {
                let known_to_peer = h.position <= self.cursor
                    || h.via.as_deref() == Some(self.peer.as_str())
                    || h.origin.as_deref() == Some(self.peer.as_str());
                if h.position <= g.first.change_id || known_to_peer {
                    base = Some(h.version.clone());
                }
                if known_to_peer && h.position >= g.last.change_id {
                    // The peer's own version came after all of these entries.
                    continue;
                }
            }
            let version = g.last.version(self.floors, &self.me);
            let origin = g.last.origin_or(&self.me).to_string();
            let change = if g.last.op == "D" {
                let parts = parse_identity(&g.key, arity).ok_or_else(|| ExportError::BadEntry {
                    table: g.table.clone(),
                    key: g.key.clone(),
                })?;
                Change {
                    table: g.table,
                    identity: Identity(parts),
                    op: Op::Delete,
                    version,
                    base_version: base,
                    origin,
                    values: Vec::new(),
                }
            } else {
                // A row that is gone (or now has another identity) changed again
                // after the horizon; its next entries travel in the next bundle.
                let Some(row) = rows.get(&g.key) else {
                    continue;
                };
                if g.row_id.is_some() && row.row_id.is_some() && row.row_id != g.row_id {
                    continue;
                }
                Change {
                    table: g.table,
                    identity: row.identity.clone(),
                    op: if base.is_none() {
                        Op::Insert
                    } else {
                        Op::Update
                    },
                    version,
                    base_version: base,
                    origin,
                    values: row.values.clone(),
                }
            };
            out.push(change);
        }
        self.changes += out.len() as u64;
        self.stages.fetching += started.elapsed();
        self.seal.push(out)?;
        Ok(())
    }
}
