//! Coalescing a row's entries into the one change a bundle carries, and sealing them.
//!
//! The sorted log range holds each row's entries together, oldest first (a row is an
//! identity: entries under an earlier local id included, [`super::sorter::Placer`]),
//! so each row forms one group; its values are read by the local id of its latest
//! entry. For a peer P, a row's history is: what P is known to hold, then what it has
//! not seen. P holds
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

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use mysql_async::prelude::*;
use mysql_async::{Conn, Row};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc::Sender;

use super::fetch::{Reads, Recall, RowFetcher};
use super::refs::RefCache;
use super::sorter::{Item, SortError, Sorted};
use super::{ExportError, Stages};
use crate::bundle::{BundleWriter, ChangeRef, IdentityRef, Op, Sealed, Version};
use crate::capture::versions::{heads, Floors, Head};
use crate::db::DbError;
use crate::schema::identity_sql::parse_identity;
use crate::schema::{Schema, SyncPlan};

/// Rows read and sealed per batch.
pub const BATCH: usize = 1000;

/// One row's entries in the range, as far as the peer is concerned.
#[derive(Debug, Clone)]
struct Group {
    rank: u32,
    key: String,
    row_id: Option<i64>,
    /// The first entry the peer has not seen, and the last if there are more.
    first: Item,
    later: Option<Item>,
    /// The latest version in the range the peer holds (it came from the peer).
    known: Option<Version>,
}

impl Group {
    /// The last entry the peer has not seen.
    fn last(&self) -> &Item {
        self.later.as_ref().unwrap_or(&self.first)
    }

    /// Whether the base must be looked up before the range.
    fn needs_lookup(&self) -> bool {
        self.known.is_none() && self.first.is_local() && self.first.op != b'I'
    }
}

/// Whether an entry's identity text was unknown when the trigger logged it: empty (a
/// subclass row written before its parent, foreign key checks off) or a composite key
/// with a part null (a `user_role` written before its user; an empty text part is a
/// value, refused where identities are checked). Such an entry names
/// its row by local id only; the row's identity is the one it has when it is read.
pub fn identity_unknown(key: &str) -> bool {
    key.is_empty()
        || (key.starts_with('[')
            && serde_json::from_str::<Vec<serde_json::Value>>(key)
                .is_ok_and(|parts| parts.iter().any(|p| p.is_null())))
}

/// A batch waiting for its rows.
struct Batch {
    table: String,
    groups: Vec<Group>,
    /// Rows' heads before the range, where looked up.
    found: HashMap<String, Head>,
}

/// Rows being read on a rows connection (which comes back with them).
type Inflight = tokio::task::JoinHandle<(Conn, Result<Vec<Row>, DbError>)>;

/// A row's entries gathered so far.
struct Acc {
    rank: u32,
    key: String,
    row_id: Option<i64>,
    known: Option<Version>,
    /// The first entry the peer has not seen, and the last if there are more.
    first: Option<Item>,
    later: Option<Item>,
}

impl Acc {
    /// The row's group, unless the peer has seen all of it.
    fn group(self) -> Option<Group> {
        Some(Group {
            rank: self.rank,
            key: self.key,
            row_id: self.row_id,
            first: self.first?,
            later: self.later,
            known: self.known,
        })
    }
}

/// Batches grouped ahead of sealing (each at most [`BATCH`] rows of one table).
const GROUPED_AHEAD: usize = 4;

/// Groups the sorted entries into rows, as far as the peer is concerned, and the rows
/// into batches: rows of one table, at most [`BATCH`] of them.
struct Grouper {
    floors: Floors,
    me: String,
    peer: String,
}

impl Grouper {
    fn came_from_peer(&self, e: &Item) -> bool {
        e.origin() == Some(self.peer.as_str()) || e.via() == Some(self.peer.as_str())
    }

    /// Sends each batch as it fills; stops at the first error (sent on) or when the
    /// receiver is gone.
    fn run(self, sorted: Sorted, tx: &Sender<Result<Vec<Group>, SortError>>) {
        let mut batch: Vec<Group> = Vec::new();
        let mut row: Option<Acc> = None;
        let send = |batch: &mut Vec<Group>| {
            batch.is_empty() || tx.blocking_send(Ok(std::mem::take(batch))).is_ok()
        };
        // Adds a row's group to the batch, sending the batch first when the group is
        // of another table or the batch is full; false when sealing has stopped.
        let add = |batch: &mut Vec<Group>, g: Group| {
            let full = batch.first().is_some_and(|b| b.rank != g.rank) || batch.len() >= BATCH;
            if full && !send(batch) {
                return false;
            }
            batch.push(g);
            true
        };
        for item in sorted {
            let mut e = match item {
                Ok(e) => e,
                Err(err) => {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            };
            // Entries logged with an unknown identity sort just before the row's later
            // ones (same local id, and the empty or partial key sorts first): they
            // are one row's, under the identity the later ones name.
            let same_row = |r: &Acc| {
                r.rank == e.rank
                    && (r.key == e.row_key
                        || (r.row_id.is_some()
                            && r.row_id == e.row_id
                            && identity_unknown(&r.key)
                            && !identity_unknown(&e.row_key)))
            };
            if row.as_ref().is_some_and(same_row) {
                let r = row.as_mut().expect("a row");
                if r.key != e.row_key {
                    r.key = std::mem::take(&mut e.row_key);
                }
            } else {
                if let Some(g) = row.take().and_then(Acc::group) {
                    if !add(&mut batch, g) {
                        return;
                    }
                }
                // The row's key moves to its group (entries are not asked for it again).
                row = Some(Acc {
                    rank: e.rank,
                    key: std::mem::take(&mut e.row_key),
                    row_id: e.row_id,
                    known: None,
                    first: None,
                    later: None,
                });
            }
            let r = row.as_mut().expect("a row");
            if e.row_id.is_some() {
                r.row_id = e.row_id;
            }
            if self.came_from_peer(&e) {
                r.known = Some(e.version(&self.floors, &self.me));
                r.first = None;
                r.later = None;
            } else if r.first.is_none() {
                r.first = Some(e);
            } else {
                r.later = Some(e);
            }
        }
        if let Some(g) = row.take().and_then(Acc::group) {
            if !add(&mut batch, g) {
                return;
            }
        }
        send(&mut batch);
    }
}

/// Seals groups into a bundle for one peer.
pub struct Sealer<'a> {
    plan: &'a SyncPlan,
    schema: &'a Schema,
    /// Table names by rank.
    tables: &'a [String],
    floors: &'a Floors,
    me: String,
    /// The version of the local change being sealed (this node's; the stamp changes).
    stamp: Version,
    peer: String,
    cursor: u64,
    /// Sealing every row at its head (`seal_full`), not the log range's changes.
    full: bool,
    /// A full export that seals the rows whose head the peer made or sent too: its
    /// database went back in time and lost them ([`crate::rejoin`]).
    pub include_peer_rows: bool,
    /// The version of a row no captured change touched, for a full export.
    genesis: Version,
    writer: BundleWriter,
    /// Connections rows are read on while earlier batches are sealed (free ones), and
    /// the batches being read, oldest first: as many as there are connections.
    rows_conns: Vec<Conn>,
    inflight: std::collections::VecDeque<(Batch, Inflight)>,
    fetchers: HashMap<String, Option<RowFetcher>>,
    declared: std::collections::HashSet<String>,
    cache: RefCache,
    stages: Stages,
    changes: u64,
    /// Where sealed batches' rows and groups go to be freed, on a thread of their own
    /// (a row frees an allocation per value, a group its key: work sealing need not
    /// wait for).
    freer: std::sync::mpsc::SyncSender<(Vec<Row>, Vec<Group>)>,
}

impl<'a> Sealer<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: &'a SyncPlan,
        schema: &'a Schema,
        tables: &'a [String],
        floors: &'a Floors,
        me: &str,
        peer: &str,
        cursor: u64,
        writer: BundleWriter,
        rows_conns: Vec<Conn>,
    ) -> Sealer<'a> {
        Sealer {
            plan,
            schema,
            tables,
            floors,
            me: me.to_string(),
            stamp: Version {
                wall_us: 0,
                counter: 0,
                node: me.to_string(),
            },
            peer: peer.to_string(),
            cursor,
            full: false,
            include_peer_rows: false,
            genesis: Version::genesis(me),
            writer,
            rows_conns,
            inflight: Default::default(),
            fetchers: HashMap::new(),
            declared: Default::default(),
            cache: RefCache::default(),
            stages: Stages::default(),
            changes: 0,
            freer: freer(),
        }
    }

    /// Seals every row of the sorted range; returns the changes sealed. The entries
    /// are grouped into rows and batches on a thread of their own (`Grouper`),
    /// up to `GROUPED_AHEAD` batches ahead of sealing.
    pub async fn seal(&mut self, fetch: &mut Conn, sorted: Sorted) -> Result<u64, ExportError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(GROUPED_AHEAD);
        let grouper = Grouper {
            floors: self.floors.clone(),
            me: self.me.clone(),
            peer: self.peer.clone(),
        };
        // Should sealing stop early, the channel closes and the grouper stops too.
        let grouping = tokio::task::spawn_blocking(move || grouper.run(sorted, &tx));
        while let Some(batch) = rx.recv().await {
            let mut batch = batch.map_err(ExportError::Sort)?;
            self.flush(fetch, &mut batch).await?;
        }
        if let Err(e) = grouping.await {
            std::panic::resume_unwind(e.into_panic());
        }
        self.drain(fetch).await?;
        Ok(self.changes)
    }

    /// Seals every row of every synced table, in bundle order, as it stands in the
    /// snapshot of `fetch` (which holds the horizon): a full export. Each row goes at
    /// its head, or at this node's genesis version when no captured change touched
    /// it, with no base; rows deleted here go as tombstones, and rows last written by
    /// the peer are left out. A head past the horizon is sent as such, and its entry
    /// then arrives again in the next bundle, where it is stale. The rows' keys are
    /// read in the snapshot a batch at a time (by local id; a table without one,
    /// which in OpenMRS is a small association table, at once), their values as they
    /// are now, as in any export (a row changed since travels again in the next
    /// bundle). Of a table sync is switched off for (`enabled` false), only the rows
    /// the range's entries name go, the same way: changes captured before the switch-off
    /// travel in a full export as in any other (issue 4 review: the cursor moves past
    /// them all the same).
    pub async fn seal_full(
        &mut self,
        fetch: &mut Conn,
        enabled: &BTreeMap<String, bool>,
        range: Sorted,
    ) -> Result<u64, ExportError> {
        self.full = true;
        let mut range = range.peekable();
        for (rank, table) in self.tables.iter().enumerate() {
            if !enabled.get(table).copied().unwrap_or(true) {
                self.seal_range_rows(fetch, rank, &mut range).await?;
                continue;
            }
            if !self.fetchers.contains_key(table) {
                let f = RowFetcher::new(self.plan, self.schema, table, &mut self.cache);
                self.fetchers.insert(table.clone(), f);
            }
            let Some((scan, paged)) = self.fetchers[table].as_ref().map(|f| f.scan_keys(BATCH))
            else {
                continue;
            };
            // Tombstones first: the rows deleted here since capture began, so that a
            // peer that holds them deletes them too.
            let gone: Vec<String> = fetch
                .exec(
                    "SELECT row_key FROM ferry_change WHERE table_name = ? AND op = 'D' \
                     UNION SELECT row_key FROM ferry_row WHERE table_name = ? AND deleted = 1",
                    (table, table),
                )
                .await
                .map_err(DbError::query(format!(
                    "reading the deleted rows of {table}"
                )))?;
            for chunk in gone.chunks(BATCH) {
                let mut batch: Vec<Group> = chunk
                    .iter()
                    .map(|key| full_group(rank, None, key.clone(), b'D'))
                    .collect();
                self.flush(fetch, &mut batch).await?;
            }
            drop(gone);
            let mut after = i64::MIN;
            loop {
                let params: Vec<mysql_async::Value> = if paged {
                    vec![after.into()]
                } else {
                    Vec::new()
                };
                let keys: Vec<(Option<i64>, Option<String>)> = fetch
                    .exec(scan.as_str(), params)
                    .await
                    .map_err(DbError::query(format!("reading the keys of {table}")))?;
                let done = !paged || keys.len() < BATCH;
                after = keys.last().and_then(|k| k.0).unwrap_or(after);
                let mut groups = keys
                    .into_iter()
                    // A row whose identity is unreadable is not synced.
                    .filter_map(|(row_id, key)| Some(full_group(rank, row_id, key?, b'U')))
                    .peekable();
                while groups.peek().is_some() {
                    let mut batch: Vec<Group> = groups.by_ref().take(BATCH).collect();
                    self.flush(fetch, &mut batch).await?;
                }
                if done {
                    break;
                }
            }
        }
        self.drain(fetch).await?;
        Ok(self.changes)
    }

    /// In a full export, seals the rows of table `rank` that the range's entries name
    /// (each once, a tombstone where its last entry is a delete), skipping the entries
    /// of the tables before it.
    async fn seal_range_rows(
        &mut self,
        fetch: &mut Conn,
        rank: usize,
        range: &mut std::iter::Peekable<Sorted>,
    ) -> Result<(), ExportError> {
        let mut batch: Vec<Group> = Vec::new();
        let mut last: Option<(String, Option<i64>, u8)> = None;
        loop {
            // The entries of the tables before it: their full scans cover them.
            while range
                .next_if(|e| matches!(e, Ok(e) if (e.rank as usize) < rank))
                .is_some()
            {}
            let item = match range.next_if(|e| !matches!(e, Ok(e) if e.rank as usize > rank)) {
                Some(Ok(e)) => Some(e),
                Some(Err(e)) => return Err(ExportError::Sort(e)),
                None => None,
            };
            let same = matches!((&item, &last), (Some(e), Some((k, ..))) if *k == e.row_key);
            if !same {
                if let Some((key, row_id, op)) = last.take() {
                    let op = if op == b'D' { b'D' } else { b'U' };
                    batch.push(full_group(rank, row_id, key, op));
                    if batch.len() >= BATCH {
                        self.flush(fetch, &mut batch).await?;
                    }
                }
            }
            let Some(e) = item else { break };
            match &mut last {
                Some((_, row_id, op)) if same => {
                    if e.row_id.is_some() {
                        *row_id = e.row_id;
                    }
                    *op = e.op;
                }
                _ => last = Some((e.row_key, e.row_id, e.op)),
            }
        }
        if !batch.is_empty() {
            self.flush(fetch, &mut batch).await?;
        }
        Ok(())
    }

    /// Stage timings so far.
    pub fn stages(&self) -> Stages {
        let mut s = self.stages;
        s.cache_hits = self.cache.hits;
        s.cache_fetched = self.cache.fetched;
        s.cache_queries = self.cache.queries;
        s.cache_waited = self.cache.waited;
        s
    }

    /// Finishes the bundle file at `pending`.
    pub fn finish(self, pending: &std::path::Path) -> Result<Sealed, ExportError> {
        Ok(self.writer.finish(pending)?)
    }

    /// Takes a batch of groups (one table): looks up the bases it needs, starts reading
    /// its rows on a free rows connection, and, when none was free, first seals the
    /// oldest batch in flight.
    async fn flush(&mut self, fetch: &mut Conn, batch: &mut Vec<Group>) -> Result<(), ExportError> {
        let Some(table) = batch.first().map(|g| self.tables[g.rank as usize].clone()) else {
            return Ok(());
        };
        let groups = std::mem::take(batch);
        if !self.fetchers.contains_key(&table) {
            let f = RowFetcher::new(self.plan, self.schema, &table, &mut self.cache);
            self.fetchers.insert(table.clone(), f);
        }
        let Some(fetcher) = self.fetchers[&table].as_ref() else {
            return Ok(()); // the table is no longer synced
        };
        let started = Instant::now();
        if self.declared.insert(table.clone()) {
            self.writer.declare_table(&table, &fetcher.columns)?;
        }
        // The base of rows whose history before the range matters.
        let lookup: Vec<&str> = groups
            .iter()
            .filter(|g| g.needs_lookup())
            .map(|g| g.key.as_str())
            .collect();
        let found = if lookup.is_empty() {
            HashMap::new()
        } else {
            self.stages.lookups += lookup.len() as u64;
            // A full export takes each row's head in the snapshot, whatever its
            // position: bounding it would cost a scan of the log per batch.
            let upto = (!self.full).then_some(self.cursor);
            heads(fetch, self.floors, &self.me, &table, &lookup, upto).await?
        };
        // The rows' values, for every row that was not deleted.
        let live: Vec<&Group> = groups.iter().filter(|g| g.last().op != b'D').collect();
        let reads = if live.is_empty() {
            Reads::default()
        } else if fetcher.row_id.is_some() && live.iter().all(|g| g.row_id.is_some()) {
            let mut ids: Vec<i64> = live.iter().filter_map(|g| g.row_id).collect();
            ids.sort_unstable();
            ids.dedup();
            fetcher.by_ids(&ids)
        } else {
            let keys: Vec<&str> = live.iter().map(|g| g.key.as_str()).collect();
            fetcher.by_keys(&keys)
        };
        let this = Batch {
            table,
            groups,
            found,
        };
        // With every connection busy, the oldest batch's rows are waited for and that
        // batch is sealed while this one is read on its connection.
        let previous = if self.rows_conns.is_empty() {
            self.collect().await?
        } else {
            None
        };
        match self.rows_conns.pop() {
            Some(mut conn) => {
                let handle = tokio::spawn(async move {
                    let rows = reads.run(&mut conn).await;
                    (conn, rows)
                });
                self.inflight.push_back((this, handle));
                self.stages.fetching += started.elapsed();
                if let Some((batch, rows)) = previous {
                    self.seal_batch(fetch, batch, rows).await?;
                }
            }
            None => {
                let reading = Instant::now();
                let rows = reads.run(fetch).await?;
                self.stages.reading += reading.elapsed();
                self.stages.fetching += started.elapsed();
                self.seal_batch(fetch, this, rows).await?;
            }
        }
        Ok(())
    }

    /// Waits for the rows of the oldest batch in flight, if any (its connection
    /// returns to the free ones).
    async fn collect(&mut self) -> Result<Option<(Batch, Vec<Row>)>, ExportError> {
        let Some((batch, handle)) = self.inflight.pop_front() else {
            return Ok(None);
        };
        let waiting = Instant::now();
        let (conn, rows) = handle.await.map_err(|e| {
            ExportError::Db(DbError::Query {
                doing: "reading rows".into(),
                source: mysql_async::Error::Other(e.to_string().into()),
            })
        })?;
        self.stages.reading += waiting.elapsed();
        self.rows_conns.push(conn);
        Ok(Some((batch, rows?)))
    }

    /// Seals the batches still in flight, oldest first.
    async fn drain(&mut self, fetch: &mut Conn) -> Result<(), ExportError> {
        while let Some((batch, rows)) = self.collect().await? {
            self.seal_batch(fetch, batch, rows).await?;
        }
        Ok(())
    }

    /// Seals a batch whose rows were read.
    async fn seal_batch(
        &mut self,
        fetch: &mut Conn,
        batch: Batch,
        fetched: Vec<Row>,
    ) -> Result<(), ExportError> {
        let table = batch.table.clone();
        let (missed, found) = self.seal_rows(fetch, batch, fetched, false).await?;
        if missed.is_empty() {
            return Ok(());
        }
        // Rows not found by their local id under their identity: a row whose key moved
        // with a cascade (`ON UPDATE CASCADE` of `person_id` moves the patient, and
        // fires no trigger), or one gone or renamed after the horizon (found by
        // identity as it is now, or not at all: then its later entries say what became
        // of it). Issue 4: such rows were skipped, and the moved ones never travelled.
        let Some(fetcher) = self.fetchers.get(&table).and_then(Option::as_ref) else {
            return Ok(());
        };
        let keys: Vec<&str> = missed.iter().map(|g| g.key.as_str()).collect();
        let reading = Instant::now();
        let rows = fetcher.by_keys(&keys).run(fetch).await?;
        self.stages.reading += reading.elapsed();
        let again = Batch {
            table,
            groups: missed,
            found,
        };
        self.seal_rows(fetch, again, rows, true).await?;
        Ok(())
    }

    /// Seals a batch whose rows were read: matched by local id and identity, or by
    /// identity alone (`by_identity`). Returns the groups whose rows were not found by
    /// local id, with their heads, for a look by identity.
    async fn seal_rows(
        &mut self,
        fetch: &mut Conn,
        batch: Batch,
        fetched: Vec<Row>,
        by_identity: bool,
    ) -> Result<(Vec<Group>, HashMap<String, Head>), ExportError> {
        let started = Instant::now();
        let Batch {
            table,
            groups,
            found,
        } = batch;
        let Some(fetcher) = self.fetchers.get(&table).and_then(Option::as_ref) else {
            return Ok(Default::default());
        };
        let mut misses: Vec<usize> = Vec::new();
        let arity = self
            .plan
            .table(&table)
            .and_then(|t| t.synced())
            .map(|s| s.identity.arity())
            .unwrap_or(1);
        // Sealing decodes each row with the cache as it is (the rows' own identities
        // learned first), and prepares the rest of the batch only at the first row
        // whose references the cache does not know yet (rows written together nearly
        // always refer to rows sealed just before). A subclass row's identity is its
        // parent's, needed before the rows can be matched: those batches are
        // prepared first.
        let preparing = Instant::now();
        let mut prepared = fetcher.keys_need_cache();
        if prepared {
            fetcher
                .prepare(fetch, &mut self.cache, self.plan, self.schema, &fetched)
                .await?;
        } else {
            fetcher.learn(&mut self.cache, &fetched);
        }
        self.stages.preparing += preparing.elapsed();
        // Rows by local id where the table has one (the identity is checked below),
        // else by identity (which may borrow the cache, so it is made on each pass).
        let by_id: FxHashMap<i64, &Row> = fetched
            .iter()
            .filter_map(|r| fetcher.row_id_of(r).map(|id| (id, r)))
            .collect();
        let mut from = 0;
        loop {
            let cache = &self.cache;
            // Per pass (the cache does not change during one): the values of the row
            // being sealed, and the references recalled from the rows before it.
            let mut values = Vec::new();
            let mut recall = Recall::default();
            let by_key: HashMap<std::borrow::Cow<str>, &Row> =
                if fetcher.row_id.is_none() || by_identity {
                    fetched
                        .iter()
                        .map(|r| (fetcher.key_of(cache, r), r))
                        .collect()
                } else {
                    HashMap::new()
                };

            // 3. The changes, from the first not sealed yet; `Some(at)` when the
            // cache lacks what the change at `at` needs.
            let mut missed = None;
            for (at, g) in groups.iter().enumerate().skip(from) {
                let (base, version, origin) = if self.full {
                    // A full export seals each row at its head (a genesis version when
                    // no captured change touched it), as a new row: the peer may hold
                    // anything, or nothing, of its history.
                    let tombstone = g.first.op == b'D';
                    match found.get(&g.key) {
                        Some(h)
                            if !self.include_peer_rows
                                && (h.origin.as_deref() == Some(self.peer.as_str())
                                    || h.via.as_deref() == Some(self.peer.as_str())) =>
                        {
                            continue; // the peer's own version
                        }
                        // A live row that is a tombstone at the horizon, or the other
                        // way round, changed since: it travels in the next bundle.
                        Some(h) if h.deleted != tombstone => continue,
                        Some(h) => (None, &h.version, h.origin.as_deref().unwrap_or(&self.me)),
                        None if tombstone => continue,
                        None => (None, &self.genesis, self.me.as_str()),
                    }
                } else {
                    // The base is what the first unseen change was made on: a forwarded change
                    // says so itself; a local one was made on what came before it here.
                    let mut base = if g.first.is_local() {
                        g.known.as_ref()
                    } else {
                        g.first.base()
                    };
                    if let Some(h) = found.get(&g.key) {
                        let known_to_peer = h.position <= self.cursor
                            || h.via.as_deref() == Some(self.peer.as_str())
                            || h.origin.as_deref() == Some(self.peer.as_str());
                        if h.position <= g.first.change_id || known_to_peer {
                            base = Some(&h.version);
                        }
                        if known_to_peer && h.position >= g.last().change_id {
                            // The peer's own version came after all of these entries.
                            continue;
                        }
                    }
                    // A local change's version is this node's: its stamp goes into a
                    // version kept for the purpose (no node name copied per change).
                    let last = g.last();
                    let version = match last.stored_version() {
                        Some(v) => v,
                        None => {
                            let (wall_us, counter) =
                                self.floors.local_stamp(last.change_id, last.wall_us);
                            self.stamp.wall_us = wall_us;
                            self.stamp.counter = counter;
                            &self.stamp
                        }
                    };
                    let origin = last.origin().unwrap_or(&self.me);
                    (base, version, origin)
                };
                if g.last().op == b'D' {
                    let parts =
                        parse_identity(&g.key, arity).ok_or_else(|| ExportError::BadEntry {
                            table: table.clone(),
                            key: g.key.clone(),
                        })?;
                    self.writer.push_ref(&ChangeRef {
                        table: &table,
                        identity: IdentityRef::Owned(&parts),
                        op: Op::Delete,
                        version,
                        base_version: base,
                        origin,
                        values: &[],
                    })?;
                } else {
                    // A row logged with an unknown identity is the one at its local id,
                    // under the identity it has now.
                    let unknown = identity_unknown(&g.key);
                    let row = match g.row_id {
                        Some(id) if fetcher.row_id.is_some() && !by_identity => by_id
                            .get(&id)
                            .filter(|r| unknown || fetcher.key_of(cache, r) == g.key.as_str()),
                        _ => by_key.get(g.key.as_str()),
                    };
                    let Some(row) = row else {
                        if unknown && g.row_id.is_none() {
                            // No local id to find it by: it travels once it is logged
                            // again with its identity (operations.md, Known problems).
                            tracing::warn!(
                                table = %table,
                                key = %g.key,
                                "a row logged without its identity is left out; change it again so that it is logged with it"
                            );
                        } else if !unknown && !by_identity && g.row_id.is_some() {
                            misses.push(at);
                        }
                        // Else a row that is gone (or now has another identity) changed
                        // again after the horizon; its next entries travel in the next
                        // bundle.
                        continue;
                    };
                    // The row's identity text: the group's key (matched above), or the
                    // row's own for one logged without it.
                    let current;
                    let key = if unknown {
                        current = fetcher.key_of(cache, row);
                        if identity_unknown(&current) {
                            // Taken from another row that is missing, or a column
                            // that is empty (a uuid never given).
                            let from_another = fetcher.keys_need_cache() || arity > 1;
                            return Err(if from_another {
                                super::rows::RowError::NoIdentity {
                                    table: table.clone(),
                                    row_id: g.row_id.unwrap_or_default(),
                                }
                            } else {
                                super::rows::RowError::BadIdentity {
                                    table: table.clone(),
                                    key: current.into_owned(),
                                }
                            }
                            .into());
                        }
                        current.as_ref()
                    } else {
                        g.key.as_str()
                    };
                    if !fetcher.decode_values(
                        cache,
                        row,
                        prepared,
                        key,
                        &mut recall,
                        &mut values,
                    )? {
                        missed = Some(at);
                        break;
                    }
                    let parts: Vec<std::borrow::Cow<str>>;
                    let refs: Vec<&str>;
                    let identity = if arity == 1 && !key.is_empty() {
                        IdentityRef::One(key)
                    } else {
                        parts = fetcher.parts(key)?;
                        refs = parts.iter().map(|p| p.as_ref()).collect();
                        IdentityRef::Parts(&refs)
                    };
                    self.writer.push_ref(&ChangeRef {
                        table: &table,
                        identity,
                        op: if base.is_none() {
                            Op::Insert
                        } else {
                            Op::Update
                        },
                        version,
                        base_version: base,
                        origin,
                        values: &values,
                    })?;
                }
                self.changes += 1;
            }
            match missed {
                None => break,
                Some(at) => {
                    from = at;
                    let preparing = Instant::now();
                    fetcher
                        .prepare(fetch, &mut self.cache, self.plan, self.schema, &fetched)
                        .await?;
                    self.stages.preparing += preparing.elapsed();
                    prepared = true;
                }
            }
        }
        self.stages.fetching += started.elapsed();
        misses.dedup();
        let missed: Vec<Group> = misses.iter().map(|&i| groups[i].clone()).collect();
        let missed_found = missed
            .iter()
            .filter_map(|g| found.get(&g.key).map(|h| (g.key.clone(), h.clone())))
            .collect();
        // Should the thread be gone, the rows are freed here.
        let _ = self.freer.send((fetched, groups));
        Ok((missed, missed_found))
    }
}

/// A row of a full export: `op` `U` for a live row, `D` for a tombstone.
fn full_group(rank: usize, row_id: Option<i64>, key: String, op: u8) -> Group {
    Group {
        rank: rank as u32,
        key,
        row_id,
        first: Item {
            rank: rank as u32,
            turn: 0,
            row_id,
            at: row_id.unwrap_or(i64::MAX),
            row_key: String::new(),
            change_id: 0,
            op,
            wall_us: 0,
            stored: None,
        },
        later: None,
        known: None,
    }
}

/// A thread that frees what it is sent, until the sender is dropped (a few batches
/// may wait for it: memory stays bounded).
fn freer<T: Send + 'static>() -> std::sync::mpsc::SyncSender<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<T>(2);
    std::thread::spawn(move || rx.into_iter().for_each(drop));
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::sorter::Sorter;

    fn item(rank: u32, row: i64, change_id: u64) -> Item {
        Item {
            rank,
            turn: 0,
            row_id: Some(row),
            at: row,
            row_key: format!("key-{rank}-{row}"),
            change_id,
            op: b'U',
            wall_us: change_id as i64,
            stored: None,
        }
    }

    /// The sorted entries of `items`, spilled in runs of 700.
    fn sorted(dir: &std::path::Path, items: Vec<Item>) -> Sorted {
        let mut s = Sorter::with_limit(dir, 700);
        for i in items {
            s.push(i).unwrap();
        }
        s.finish().unwrap()
    }

    fn grouper() -> Grouper {
        Grouper {
            floors: Floors::default(),
            me: "a".into(),
            peer: "b".into(),
        }
    }

    #[test]
    fn the_grouper_sends_rows_of_one_table_at_most_a_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        // 2,500 rows of table 0 with two entries each, then 10 rows of table 1.
        let mut items = Vec::new();
        let mut at = 0;
        for round in 0..2 {
            for row in 0..2500 {
                at += 1;
                items.push(item(0, row, at + round));
            }
        }
        for row in 0..10 {
            at += 1;
            items.push(item(1, row, at + 10));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(GROUPED_AHEAD);
        let s = sorted(dir.path(), items);
        let thread = std::thread::spawn(move || grouper().run(s, &tx));
        let mut batches = Vec::new();
        while let Some(b) = rx.blocking_recv() {
            batches.push(b.unwrap());
        }
        thread.join().unwrap();
        let shape: Vec<(u32, usize)> = batches.iter().map(|b| (b[0].rank, b.len())).collect();
        assert_eq!(shape, [(0, 1000), (0, 1000), (0, 500), (1, 10)]);
        let rows: Vec<&Group> = batches.iter().flatten().collect();
        for (i, g) in rows.iter().take(2500).enumerate() {
            assert_eq!(g.row_id, Some(i as i64));
            assert_eq!(g.key, format!("key-0-{i}"));
            // Both entries of the row, oldest first.
            assert!(g.later.as_ref().unwrap().change_id > g.first.change_id);
        }
        assert!(batches
            .iter()
            .all(|b| b.iter().all(|g| g.rank == b[0].rank)));
    }

    #[test]
    fn the_grouper_stops_when_sealing_stops() {
        let dir = tempfile::tempdir().unwrap();
        let items = (0..20_000).map(|r| item(0, r, r as u64 + 1)).collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel(GROUPED_AHEAD);
        let s = sorted(dir.path(), items);
        let thread = std::thread::spawn(move || grouper().run(s, &tx));
        assert_eq!(rx.blocking_recv().unwrap().unwrap().len(), BATCH);
        // Sealing failed: the receiver goes, and the grouper, blocked on a full
        // channel, ends instead of waiting forever.
        drop(rx);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            thread.join().unwrap();
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the grouper ended");
    }
}
