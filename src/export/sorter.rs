//! Sorting the log range into bundle order with bounded memory.
//!
//! The log is read in position order, but a bundle carries changes table by table
//! (parents first) and, within a table, row by row in local id order (the order rows
//! were written, which compresses like a dump) with each row's entries adjacent for
//! coalescing. [`Sorter`] sorts entries by ([`Key`]) in memory up to [`RUN_ENTRIES`]
//! at a time; a larger range spills sorted runs to temporary files and merges them, so a
//! month's backlog sorts in the same memory as an hour's.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::capture::versions::LogEntry;

/// Entries held in memory before a sorted run is spilled to disk.
pub const RUN_ENTRIES: usize = 200_000;

/// The bundle order of an entry: table rank, local id (rows without one last), identity
/// text, position.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub rank: u32,
    pub row_id: i64,
    pub row_key: String,
    pub change_id: u64,
}

impl Key {
    pub fn of(rank: u32, e: &LogEntry) -> Key {
        Key {
            rank,
            row_id: e.row_id.unwrap_or(i64::MAX),
            row_key: e.row_key.clone(),
            change_id: e.change_id,
        }
    }
}

/// Errors of the spill files.
#[derive(Debug, thiserror::Error)]
#[error("cannot sort the change log in {dir}: {detail}\nhint: make sure the state directory has free space")]
pub struct SortError {
    pub dir: String,
    pub detail: String,
}

/// Sorts (rank, entry) pairs.
pub struct Sorter {
    dir: std::path::PathBuf,
    mem: Vec<(u32, LogEntry)>,
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

    /// Adds an entry of the table ranked `rank`.
    pub fn push(&mut self, rank: u32, entry: LogEntry) -> Result<(), SortError> {
        self.mem.push((rank, entry));
        if self.mem.len() >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    fn sort_mem(&mut self) {
        self.mem.sort_by(|a, b| {
            (
                a.0,
                a.1.row_id.unwrap_or(i64::MAX),
                &a.1.row_key,
                a.1.change_id,
            )
                .cmp(&(
                    b.0,
                    b.1.row_id.unwrap_or(i64::MAX),
                    &b.1.row_key,
                    b.1.change_id,
                ))
        });
    }

    fn spill(&mut self) -> Result<(), SortError> {
        self.sort_mem();
        let file = tempfile::tempfile_in(&self.dir).map_err(|e| self.err(e))?;
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        let mut buf = Vec::new();
        for item in self.mem.drain(..) {
            buf.clear();
            buf = postcard::to_extend(&item, buf).map_err(|e| SortError {
                dir: String::new(),
                detail: e.to_string(),
            })?;
            w.write_all(&(buf.len() as u32).to_le_bytes())
                .and_then(|_| w.write_all(&buf))
                .map_err(|e| SortError {
                    dir: String::new(),
                    detail: e.to_string(),
                })?;
        }
        let mut file = w.into_inner().map_err(|e| self.err(e.error()))?;
        use std::io::Seek;
        file.rewind().map_err(|e| self.err(e))?;
        self.runs.push(file);
        Ok(())
    }

    /// Entries pushed so far (in memory and spilled).
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.runs.is_empty()
    }

    /// Everything pushed, in [`Key`] order.
    pub fn finish(mut self) -> Result<Sorted, SortError> {
        if self.runs.is_empty() {
            self.sort_mem();
            return Ok(Sorted(Source::Memory(
                std::mem::take(&mut self.mem).into_iter(),
            )));
        }
        if !self.mem.is_empty() {
            self.spill()?;
        }
        let dir = self.dir.display().to_string();
        let mut readers: Vec<BufReader<File>> = self
            .runs
            .drain(..)
            .map(|f| BufReader::with_capacity(256 * 1024, f))
            .collect();
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(item) = read_item(r, &dir)? {
                heap.push(Reverse(Head(Key::of(item.0, &item.1), i, item)));
            }
        }
        Ok(Sorted(Source::Merge { readers, heap, dir }))
    }
}

/// A heap element: the key, the run it came from, the item.
struct Head(Key, usize, (u32, LogEntry));

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        (&self.0, self.1) == (&o.0, o.1)
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
        (&self.0, self.1).cmp(&(&o.0, o.1))
    }
}

fn read_item(r: &mut BufReader<File>, dir: &str) -> Result<Option<(u32, LogEntry)>, SortError> {
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

/// The sorted entries.
pub struct Sorted(Source);

enum Source {
    Memory(std::vec::IntoIter<(u32, LogEntry)>),
    Merge {
        readers: Vec<BufReader<File>>,
        heap: BinaryHeap<Reverse<Head>>,
        dir: String,
    },
}

impl Iterator for Sorted {
    type Item = Result<(u32, LogEntry), SortError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Source::Memory(it) => it.next().map(Ok),
            Source::Merge { readers, heap, dir } => {
                let Reverse(Head(_, i, item)) = heap.pop()?;
                match read_item(&mut readers[i], dir) {
                    Ok(Some(next)) => heap.push(Reverse(Head(Key::of(next.0, &next.1), i, next))),
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

    fn entry(change_id: u64, row_id: Option<i64>, key: &str) -> LogEntry {
        LogEntry {
            change_id,
            table: "t".into(),
            row_id,
            row_key: key.into(),
            op: "U".into(),
            wall_us: change_id as i64,
            origin: None,
            version: None,
            base: None,
            via: None,
        }
    }

    fn sorted(limit: usize, items: &[(u32, LogEntry)]) -> Vec<(u32, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::with_limit(dir.path(), limit);
        for (r, e) in items {
            s.push(*r, e.clone()).unwrap();
        }
        s.finish()
            .unwrap()
            .map(|i| i.map(|(r, e)| (r, e.change_id)).unwrap())
            .collect()
    }

    #[test]
    fn sorts_by_rank_then_row_then_position_in_memory_and_spilled() {
        let items: Vec<(u32, LogEntry)> = vec![
            (1, entry(1, Some(5), "e")),
            (0, entry(2, Some(9), "a")),
            (1, entry(3, Some(2), "b")),
            (0, entry(4, None, "z")),
            (0, entry(5, Some(9), "a")),
            (0, entry(6, None, "y")),
            (1, entry(7, Some(5), "e")),
        ];
        let want = vec![(0, 2), (0, 5), (0, 6), (0, 4), (1, 3), (1, 1), (1, 7)];
        assert_eq!(sorted(1000, &items), want);
        for limit in 1..4 {
            assert_eq!(sorted(limit, &items), want, "runs of {limit}");
        }
    }

    #[test]
    fn many_runs_merge_in_order() {
        let items: Vec<(u32, LogEntry)> = (0..5000u64)
            .map(|i| {
                (
                    (i % 3) as u32,
                    entry(i, Some(((i * 7919) % 1000) as i64), "k"),
                )
            })
            .collect();
        let got = sorted(97, &items);
        assert_eq!(got.len(), 5000);
        let mut want: Vec<(u32, i64, u64)> = items
            .iter()
            .map(|(r, e)| (*r, e.row_id.unwrap(), e.change_id))
            .collect();
        want.sort();
        let want: Vec<(u32, u64)> = want.into_iter().map(|(r, _, c)| (r, c)).collect();
        assert_eq!(got, want);
    }
}
