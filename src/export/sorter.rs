//! Sorting the log range into bundle order with bounded memory.
//!
//! The log is read in position order, but a bundle carries changes table by table
//! (parents first) and, within a table, row by row in local id order (the order rows
//! were written, which compresses like a dump) with each row's entries adjacent for
//! coalescing. A row is an identity, and an identity can change local id within the
//! range: deleted and made again (same uuid, new id). [`Placer`] keeps each identity's
//! entries together: an identity deleted in the range sorts, from then on, where its
//! deleted entries did; and of the identities that held one local id in turn (an
//! identity change is a delete of the old one and an insert of the new), each sorts
//! after the ones deleted there before it, so a tombstone precedes what replaced it.
//! Only deletes are remembered (a 64-bit hash of the identity each), not every row;
//! two identities whose hashes collide could still be split as before (odds 2^-64 a
//! pair). A row whose identity changed (a delete, then at once an insert of the same
//! local id) is noted in [`Placer::renamed`] for export's check.
//! [`Sorter`] sorts compact entries ([`Item`]) by that order in memory, up
//! to [`RUN_ENTRIES`] at a time; a larger range spills sorted runs to temporary files
//! and merges them (with the last run, still in memory), so a month's backlog sorts in
//! the same memory as an hour's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::bundle::Version;
use crate::capture::versions::{Floors, LogEntry};

/// Entries held in memory before a sorted run is spilled to disk.
pub const RUN_ENTRIES: usize = 250_000;

/// A log entry as the sort holds it: what sealing needs, in few bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The table's rank in bundle order.
    pub rank: u32,
    /// Among identities sorted at the same local id, this one's turn ([`Placer`]).
    pub turn: u32,
    /// The row's local id when the entry was written: the row read for the change.
    pub row_id: Option<i64>,
    /// The local id the entry sorts at: `row_id` (`i64::MAX` when none), or where its
    /// identity's entries sort when it had another local id earlier in the range.
    pub at: i64,
    pub row_key: String,
    /// Its position.
    pub change_id: u64,
    /// `I`, `U` or `D`.
    pub op: u8,
    pub wall_us: i64,
    /// What a forwarded change carries (none for a local one).
    pub stored: Option<Box<Stored>>,
}

/// The fields of a forwarded entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub origin: Option<String>,
    pub version: Option<Version>,
    pub base: Option<Version>,
    pub via: Option<String>,
}

impl Item {
    /// The compact form of `e`, its table ranked `rank`.
    pub fn of(rank: u32, e: LogEntry) -> Item {
        let stored = (e.origin.is_some() || e.version.is_some() || e.via.is_some()).then(|| {
            Box::new(Stored {
                origin: e.origin,
                version: e.version,
                base: e.base,
                via: e.via,
            })
        });
        Item {
            rank,
            turn: 0,
            row_id: e.row_id,
            at: e.row_id.unwrap_or(i64::MAX),
            row_key: e.row_key,
            change_id: e.change_id,
            op: e.op.as_bytes().first().copied().unwrap_or(b'U'),
            wall_us: e.wall_us,
            stored,
        }
    }

    fn key(&self) -> (u32, i64, u32, &str, u64) {
        (self.rank, self.at, self.turn, &self.row_key, self.change_id)
    }

    /// The change's version: stored, or (a local change) computed from the entry.
    pub fn version(&self, floors: &Floors, me: &str) -> Version {
        match self.stored_version() {
            Some(v) => v.clone(),
            None => floors.local_version(self.change_id, self.wall_us, me),
        }
    }

    /// The version a forwarded change carries; `None` for a local change (its version
    /// follows from the entry: [`Item::version`]).
    pub fn stored_version(&self) -> Option<&Version> {
        self.stored.as_ref().and_then(|s| s.version.as_ref())
    }

    /// The node the change came from; `None` for a local change.
    pub fn origin(&self) -> Option<&str> {
        self.stored.as_ref().and_then(|s| s.origin.as_deref())
    }

    /// The peer a forwarded change came through.
    pub fn via(&self) -> Option<&str> {
        self.stored.as_ref().and_then(|s| s.via.as_deref())
    }

    /// The base a forwarded change carries.
    pub fn base(&self) -> Option<&Version> {
        self.stored.as_ref().and_then(|s| s.base.as_ref())
    }

    pub fn is_local(&self) -> bool {
        self.origin().is_none()
    }
}

/// Places entries, read in position order, so that each identity's entries sort
/// together (see the module's documentation). Its memory grows with the deletes in the
/// range, not with its entries: deletes are rare.
#[derive(Debug, Default)]
pub struct Placer {
    /// Identities deleted so far, by a 64-bit hash of (rank, identity): where their
    /// entries sort.
    deleted: FxHashMap<u64, (i64, u32)>,
    /// (rank, local id) where identities were deleted: how many.
    vacated: FxHashMap<(u32, i64), u32>,
    /// The entry placed last, when it was a delete at a local id: (rank, id, identity).
    last_delete: Option<(u32, i64, String)>,
    /// (rank, local id) of rows whose identity changed (an `UPDATE` of the identity,
    /// which capture logs as a delete and, right after it, an insert of the same local
    /// id under another identity: one statement, so nothing comes between them, see
    /// [`crate::capture::triggers`]), with the first identity they had in the range:
    /// what [`super::renames::check`] looks at.
    pub renamed: FxHashMap<(u32, i64), String>,
}

impl Placer {
    /// Sets where `item` sorts (`at`, `turn`); items must come in position order.
    pub fn place(&mut self, item: &mut Item) {
        let delete = item.op == b'D';
        let hash = (delete || !self.deleted.is_empty()).then(|| identity_hash(item));
        let (at, turn) = hash
            .and_then(|h| self.deleted.get(&h).copied())
            .unwrap_or_else(|| match item.row_id {
                Some(id) => (id, self.vacated.get(&(item.rank, id)).copied().unwrap_or(0)),
                None => (i64::MAX, 0),
            });
        item.at = at;
        item.turn = turn;
        if let Some((rank, id, old)) = self.last_delete.take() {
            let same_row = (item.rank, item.row_id) == (rank, Some(id));
            if item.op == b'I' && same_row && item.is_local() && old != item.row_key {
                self.renamed.entry((rank, id)).or_insert(old);
            }
        }
        if let Some(h) = hash.filter(|_| delete) {
            self.deleted.insert(h, (at, turn));
            if let Some(id) = item.row_id {
                *self.vacated.entry((item.rank, id)).or_default() += 1;
                self.last_delete = Some((item.rank, id, item.row_key.clone()));
            }
        }
    }
}

fn identity_hash(item: &Item) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: well spread, and the same in every run.
    let mut h = std::hash::DefaultHasher::new();
    item.rank.hash(&mut h);
    item.row_key.hash(&mut h);
    h.finish()
}

/// Errors of the spill files.
#[derive(Debug, thiserror::Error)]
#[error("cannot sort the change log in {dir}: {detail}\nhint: make sure the state directory has free space")]
pub struct SortError {
    pub dir: String,
    pub detail: String,
}

/// Sorts items.
pub struct Sorter {
    dir: std::path::PathBuf,
    mem: Vec<Item>,
    runs: Vec<File>,
    limit: usize,
}

impl Sorter {
    /// A sorter spilling into `dir` (temporary files, removed when dropped).
    pub fn new(dir: &Path) -> Sorter {
        Sorter::with_limit(dir, RUN_ENTRIES)
    }

    /// A sorter holding at most `limit` entries in memory.
    pub fn with_limit(dir: &Path, limit: usize) -> Sorter {
        Sorter {
            dir: dir.to_path_buf(),
            mem: Vec::new(),
            runs: Vec::new(),
            limit: limit.max(1),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> SortError {
        SortError {
            dir: self.dir.display().to_string(),
            detail: e.to_string(),
        }
    }

    /// Adds an entry.
    pub fn push(&mut self, item: Item) -> Result<(), SortError> {
        if self.mem.capacity() == 0 {
            self.mem.reserve(self.limit.min(16_384));
        }
        self.mem.push(item);
        if self.mem.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    fn sort_mem(&mut self) {
        // Mostly in order already (rows are written in id order): the sort is quick.
        self.mem.sort_by(|a, b| a.key().cmp(&b.key()));
    }

    fn spill(&mut self) -> Result<(), SortError> {
        self.sort_mem();
        let file = tempfile::tempfile_in(&self.dir).map_err(|e| self.err(e))?;
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        let mut buf = Vec::new();
        let items = std::mem::take(&mut self.mem);
        for item in &items {
            buf.clear();
            buf = postcard::to_extend(item, buf).map_err(|e| self.err(e))?;
            w.write_all(&(buf.len() as u32).to_le_bytes())
                .and_then(|_| w.write_all(&buf))
                .map_err(|e| self.err(e))?;
        }
        self.mem = items;
        self.mem.clear();
        let mut file = w.into_inner().map_err(|e| self.err(e.error()))?;
        file.rewind().map_err(|e| self.err(e))?;
        self.runs.push(file);
        Ok(())
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.runs.is_empty()
    }

    /// Everything pushed, in bundle order.
    pub fn finish(mut self) -> Result<Sorted, SortError> {
        if self.runs.is_empty() {
            self.sort_mem();
            return Ok(Sorted(Source::Memory(
                std::mem::take(&mut self.mem).into_iter(),
            )));
        }
        // The last run merges from memory: it is not written only to be read back.
        self.sort_mem();
        let dir = self.dir.display().to_string();
        let mut readers: Vec<Run> = self
            .runs
            .drain(..)
            .map(|f| Run::File(BufReader::with_capacity(256 * 1024, f)))
            .collect();
        readers.push(Run::Memory(std::mem::take(&mut self.mem).into_iter()));
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(item) = r.next(&dir)? {
                heap.push(Reverse(Head(i, item)));
            }
        }
        Ok(Sorted(Source::Merge { readers, heap, dir }))
    }
}

/// A heap element: the run it came from, the item.
struct Head(usize, Item);

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        (self.1.key(), self.0) == (o.1.key(), o.0)
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.1.key(), self.0).cmp(&(o.1.key(), o.0))
    }
}

fn read_item(r: &mut BufReader<File>, dir: &str) -> Result<Option<Item>, SortError> {
    let err = |e: &dyn std::fmt::Display| SortError {
        dir: dir.to_string(),
        detail: e.to_string(),
    };
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(err(&e)),
    }
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut buf).map_err(|e| err(&e))?;
    postcard::from_bytes(&buf).map(Some).map_err(|e| err(&e))
}

/// One sorted run being merged: spilled to a file, or the last one, still in memory.
enum Run {
    File(BufReader<File>),
    Memory(std::vec::IntoIter<Item>),
}

impl Run {
    fn next(&mut self, dir: &str) -> Result<Option<Item>, SortError> {
        match self {
            Run::File(r) => read_item(r, dir),
            Run::Memory(it) => Ok(it.next()),
        }
    }
}

/// The sorted entries.
pub struct Sorted(Source);

enum Source {
    Memory(std::vec::IntoIter<Item>),
    Merge {
        readers: Vec<Run>,
        heap: BinaryHeap<Reverse<Head>>,
        dir: String,
    },
}

impl Iterator for Sorted {
    type Item = Result<Item, SortError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Source::Memory(it) => it.next().map(Ok),
            Source::Merge { readers, heap, dir } => {
                let Reverse(Head(i, item)) = heap.pop()?;
                match readers[i].next(dir) {
                    Ok(Some(next)) => heap.push(Reverse(Head(i, next))),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                Some(Ok(item))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(rank: u32, change_id: u64, row_id: Option<i64>, key: &str) -> Item {
        Item {
            rank,
            turn: 0,
            row_id,
            at: row_id.unwrap_or(i64::MAX),
            row_key: key.into(),
            change_id,
            op: b'U',
            wall_us: change_id as i64,
            stored: None,
        }
    }

    fn sorted(limit: usize, items: &[Item]) -> Vec<(u32, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::with_limit(dir.path(), limit);
        for i in items {
            s.push(i.clone()).unwrap();
        }
        s.finish()
            .unwrap()
            .map(|i| i.map(|i| (i.rank, i.change_id)).unwrap())
            .collect()
    }

    #[test]
    fn sorts_by_rank_then_row_then_position_in_memory_and_spilled() {
        let items = vec![
            item(1, 1, Some(5), "e"),
            item(0, 2, Some(9), "a"),
            item(1, 3, Some(2), "b"),
            item(0, 4, None, "z"),
            item(0, 5, Some(9), "a"),
            item(0, 6, None, "y"),
            item(1, 7, Some(5), "e"),
        ];
        let want = vec![(0, 2), (0, 5), (0, 6), (0, 4), (1, 3), (1, 1), (1, 7)];
        assert_eq!(sorted(1000, &items), want);
        for limit in 1..4 {
            assert_eq!(sorted(limit, &items), want, "runs of {limit}");
        }
    }

    #[test]
    fn many_runs_merge_in_order() {
        let items: Vec<Item> = (0..5000u64)
            .map(|i| item((i % 3) as u32, i, Some(((i * 7919) % 1000) as i64), "k"))
            .collect();
        let got = sorted(97, &items);
        assert_eq!(got.len(), 5000);
        let mut want: Vec<(u32, i64, u64)> = items
            .iter()
            .map(|i| (i.rank, i.row_id.unwrap(), i.change_id))
            .collect();
        want.sort();
        let want: Vec<(u32, u64)> = want.into_iter().map(|(r, _, c)| (r, c)).collect();
        assert_eq!(got, want);
    }

    /// (change_id, row_id, key, op) in position order, placed, then sorted.
    fn placed(limit: usize, log: &[(u64, i64, &str, u8)]) -> Vec<(u64, Option<i64>)> {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::with_limit(dir.path(), limit);
        let mut p = Placer::default();
        for &(at, row, key, op) in log {
            let mut i = item(0, at, Some(row), key);
            i.op = op;
            p.place(&mut i);
            s.push(i).unwrap();
        }
        s.finish()
            .unwrap()
            .map(|i| i.map(|i| (i.change_id, i.row_id)).unwrap())
            .collect()
    }

    #[test]
    fn an_identity_made_again_under_a_new_id_sorts_with_its_earlier_entries() {
        // Issue 4: x (id 3) deleted and made again (id 5) after y (id 4) changed.
        let log = [
            (1, 4, "y", b'U'),
            (2, 3, "x", b'D'),
            (3, 5, "x", b'I'),
            (4, 5, "x", b'U'),
            (5, 6, "z", b'I'),
        ];
        for limit in [1, 2, 1000] {
            assert_eq!(
                placed(limit, &log),
                [
                    (2, Some(3)),
                    (3, Some(5)),
                    (4, Some(5)),
                    (1, Some(4)),
                    (5, Some(6))
                ],
                "runs of {limit}"
            );
        }
    }

    #[test]
    fn a_tombstone_sorts_before_the_identity_that_replaced_it_at_its_id() {
        // Row 7 changes identity "m" to "a", and back; "a" sorts after "m" anyway.
        let log = [
            (1, 7, "m", b'U'),
            (2, 7, "m", b'D'),
            (3, 7, "a", b'I'),
            (4, 7, "a", b'D'),
            (5, 7, "m", b'I'),
            (6, 7, "q", b'U'),
        ];
        let got: Vec<u64> = placed(1000, &log).into_iter().map(|(c, _)| c).collect();
        // "m" (all of it), then "a", then "q": each identity once, in turn.
        assert_eq!(got, [1, 2, 5, 3, 4, 6]);
    }

    #[test]
    fn the_placer_notes_where_a_local_id_took_another_identity() {
        let mut p = Placer::default();
        let log: [(u64, i64, &str, u8); 10] = [
            (1, 7, "m", b'D'),
            (2, 7, "a", b'I'), // row 7: "m" became "a"
            (3, 8, "x", b'D'),
            (4, 9, "x", b'I'), // "x" made again under another id: no change of identity
            (5, 7, "a", b'D'),
            (6, 7, "b", b'I'), // and then "b": still noted with the first, "m"
            (7, 11, "y", b'D'),
            (8, 12, "z", b'U'),
            (9, 11, "w", b'I'), // id 11 taken again, not right after: not noted
            (10, 10, "n", b'I'),
        ];
        for (at, row, key, op) in log {
            let mut i = item(0, at, Some(row), key);
            i.op = op;
            p.place(&mut i);
        }
        assert_eq!(p.renamed.len(), 1, "{:?}", p.renamed);
        assert_eq!(p.renamed[&(0, 7)], "m");
    }

    fn entry(origin: Option<&str>, version: Option<Version>, op: &str) -> LogEntry {
        LogEntry {
            change_id: 3,
            table: "t".into(),
            row_id: None,
            row_key: "k".into(),
            op: op.into(),
            wall_us: 77,
            origin: origin.map(String::from),
            version,
            base: None,
            via: origin.map(|_| "hub".to_string()),
        }
    }

    #[test]
    fn forwarded_entries_keep_what_they_carry_and_local_ones_compute_it() {
        let v = Version {
            wall_us: 9,
            counter: 1,
            node: "b".into(),
        };
        let i = Item::of(0, entry(Some("b"), Some(v.clone()), "D"));
        assert_eq!((i.op, i.origin(), i.via()), (b'D', Some("b"), Some("hub")));
        assert_eq!(i.version(&Floors::default(), "a"), v);
        let local = Item::of(0, entry(None, None, "I"));
        assert!(local.stored.is_none() && local.is_local());
        assert_eq!(local.version(&Floors::default(), "a").wall_us, 77);
    }
}
