//! The row-level form of `ferry verify`: every row's hash, sorted, so that two nodes can
//! find the rows that differ in O(1) memory.
//!
//! `ferry verify --rows --json` writes JSON Lines: a header line, then one line per row,
//! sorted by (table name, identity parts) in byte order:
//!
//! ```text
//! {"format":"ferry-verify-rows/1","plan_fingerprint":"<hex>","tables":["obs","person",...]}
//! {"table":"obs","identity":["0f6c..."],"hash":"<hex of the row hash>"}
//! ```
//!
//! The row hash is [`super::row_hash`], the one the table digests sum. The database sorts
//! each table (`ORDER BY` the identity parts as `utf8mb4` bytes, `CAST(.. AS BINARY)`,
//! which compares bytes with no padding or case folding, the order of Rust's `String`),
//! so ferry streams one row at a time. `ferry verify --rows --against FILE` streams the
//! local sorted rows and the file's lines through [`RowMerge`], a merge join over groups
//! of equal identity (a uuid without a unique index may repeat: the groups' hash
//! multisets are compared), and prints each differing row as it is found. Both streams'
//! order is checked, so a file that is not sorted is an error, never a wrong answer.
//! Tables verified on one side only are reported as such and their rows skipped.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use super::{readers, row_hash, VerifyError};
use crate::db::DbError;
use crate::export::rows::TableReader;
use crate::schema::{Schema, SyncPlan};

/// The format tag of the rows file's header line.
pub const ROWS_FORMAT: &str = "ferry-verify-rows/1";

/// The first line of a rows file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsHeader {
    /// Always [`ROWS_FORMAT`].
    pub format: String,
    pub plan_fingerprint: String,
    /// The tables whose rows follow, in name order.
    pub tables: Vec<String>,
}

/// One row of a rows file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowLine {
    pub table: String,
    /// The identity's parts (one for a uuid).
    pub identity: Vec<String>,
    /// Hex of the row hash.
    pub hash: String,
}

impl RowLine {
    fn key(&self) -> (&str, &[String]) {
        (&self.table, &self.identity)
    }
}

/// How a row differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowDiffKind {
    /// The row exists here only.
    OnlyHere,
    /// The row exists there only.
    OnlyThere,
    /// Both have the row, with different content.
    Content,
}

/// One row that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowDiff {
    pub table: String,
    pub identity: Vec<String>,
    pub kind: RowDiffKind,
}

/// Totals of a row comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RowsComparison {
    pub rows_here: u64,
    pub rows_there: u64,
    /// Identities that differ (one per identity, however often it repeats).
    pub differing_rows: u64,
    /// Tables verified here only (their rows were not compared).
    pub tables_only_here: Vec<String>,
    /// Tables verified there only.
    pub tables_only_there: Vec<String>,
}

impl RowsComparison {
    /// Whether both sides hold the same rows.
    pub fn equal(&self) -> bool {
        self.differing_rows == 0
            && self.tables_only_here.is_empty()
            && self.tables_only_there.is_empty()
    }
}

/// The sorted SELECT of a table: [`TableReader::select_all`] ordered by the identity
/// parts' bytes.
pub fn sorted_select(reader: &TableReader, arity: usize) -> String {
    let bytes = |e: String| format!("CAST(CONVERT({e} USING utf8mb4) AS BINARY)");
    let order: Vec<String> = if arity == 1 {
        vec![bytes(reader.key_expr().to_string())]
    } else {
        (0..arity)
            .map(|i| {
                bytes(format!(
                    "JSON_UNQUOTE(JSON_EXTRACT({}, '$[{i}]'))",
                    reader.key_expr()
                ))
            })
            .collect()
    };
    format!("{} ORDER BY {}", reader.select_all(), order.join(", "))
}

/// Streams the sorted rows of `tables` (in name order) to `f`, one at a time.
pub async fn for_each_sorted_row<F>(
    conn: &mut Conn,
    database: &str,
    plan: &SyncPlan,
    tables: &[String],
    mut f: F,
) -> Result<u64, VerifyError>
where
    F: FnMut(RowLine) -> Result<(), VerifyError>,
{
    let schema = Schema::read(conn, database).await?;
    let mut n = 0;
    for reader in readers(plan, &schema, tables)? {
        let arity = plan
            .table(&reader.table)
            .and_then(|t| t.synced())
            .map(|s| s.identity.arity())
            .unwrap_or(1);
        let doing = format!("reading table {} in identity order", reader.table);
        let mut result = conn
            .exec_iter(sorted_select(&reader, arity), ())
            .await
            .map_err(DbError::query(doing.clone()))?;
        while let Some(row) = result.next().await.map_err(DbError::query(doing.clone()))? {
            let (_, identity, values) = reader.decode(&row)?;
            let hash = hex::encode(row_hash(&reader.table, &identity, &values));
            f(RowLine {
                table: reader.table.clone(),
                identity: identity.0,
                hash,
            })?;
            n += 1;
        }
    }
    Ok(n)
}

/// Writes the rows file of `tables` under `plan` to `out`; returns the number of rows.
pub async fn write_rows(
    conn: &mut Conn,
    database: &str,
    plan: &SyncPlan,
    tables: &[String],
    out: &mut dyn Write,
) -> Result<u64, VerifyError> {
    let mut names = tables.to_vec();
    names.sort();
    names.dedup();
    let header = RowsHeader {
        format: ROWS_FORMAT.to_string(),
        plan_fingerprint: hex::encode(plan.fingerprint()),
        tables: names.clone(),
    };
    write_json_line(out, &header)?;
    let n = for_each_sorted_row(conn, database, plan, &names, |line| {
        write_json_line(out, &line)
    })
    .await?;
    out.flush().map_err(VerifyError::Output)?;
    Ok(n)
}

fn write_json_line<T: Serialize>(out: &mut dyn Write, v: &T) -> Result<(), VerifyError> {
    serde_json::to_writer(&mut *out, v).map_err(|e| VerifyError::Output(e.into()))?;
    out.write_all(b"\n").map_err(VerifyError::Output)
}

/// A rows file being read: its header, then its lines on demand.
pub struct RowsFile<R> {
    pub header: RowsHeader,
    path: String,
    reader: R,
    line_no: u64,
    buf: String,
}

impl<R: BufRead> RowsFile<R> {
    /// Reads the header line; `path` names the file in messages.
    pub fn open(mut reader: R, path: &str) -> Result<RowsFile<R>, VerifyError> {
        let mut buf = String::new();
        reader
            .read_line(&mut buf)
            .map_err(|source| VerifyError::File {
                path: path.to_string(),
                source,
            })?;
        let header: RowsHeader = serde_json::from_str(buf.trim_end()).map_err(|e| {
            let detail = if buf.trim_start().starts_with('{') && buf.trim() == "{" {
                "it is a summary; compare it without --rows".to_string()
            } else {
                format!("line 1: {e}")
            };
            bad_rows_file(path, detail)
        })?;
        if header.format != ROWS_FORMAT {
            return Err(bad_rows_file(
                path,
                format!("its format is {:?}, not {ROWS_FORMAT:?}", header.format),
            ));
        }
        Ok(RowsFile {
            header,
            path: path.to_string(),
            reader,
            line_no: 1,
            buf,
        })
    }
}

fn bad_rows_file(path: &str, detail: String) -> VerifyError {
    VerifyError::Format {
        path: path.to_string(),
        expected: "`ferry verify --rows --json`",
        command: "ferry verify --rows --json > FILE",
        detail,
    }
}

impl<R: BufRead> Iterator for RowsFile<R> {
    type Item = Result<RowLine, VerifyError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.buf.clear();
        self.line_no += 1;
        match self.reader.read_line(&mut self.buf) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(self.buf.trim_end())
                    .map_err(|e| bad_rows_file(&self.path, format!("line {}: {e}", self.line_no))),
            ),
            Err(source) => Some(Err(VerifyError::File {
                path: self.path.clone(),
                source,
            })),
        }
    }
}

/// A run of lines with one (table, identity): their hashes, sorted.
struct Group {
    table: String,
    identity: Vec<String>,
    hashes: Vec<String>,
}

impl Group {
    fn of(line: RowLine) -> Group {
        Group {
            table: line.table,
            identity: line.identity,
            hashes: vec![line.hash],
        }
    }

    fn key(&self) -> (&str, &[String]) {
        (&self.table, &self.identity)
    }

    fn diff(self, kind: RowDiffKind) -> RowDiff {
        RowDiff {
            table: self.table,
            identity: self.identity,
            kind,
        }
    }
}

/// Groups a sorted line stream, checking the order.
struct Groups<I> {
    lines: I,
    pending: Option<RowLine>,
    side: &'static str,
    count: u64,
}

impl<I: Iterator<Item = Result<RowLine, VerifyError>>> Groups<I> {
    fn next_group(&mut self) -> Result<Option<Group>, VerifyError> {
        let first = match self.pending.take() {
            Some(l) => l,
            None => match self.lines.next().transpose()? {
                Some(l) => {
                    self.count += 1;
                    l
                }
                None => return Ok(None),
            },
        };
        let mut group = Group::of(first);
        while let Some(line) = self.lines.next().transpose()? {
            self.count += 1;
            match line.key().cmp(&group.key()) {
                std::cmp::Ordering::Equal => group.hashes.push(line.hash),
                std::cmp::Ordering::Greater => {
                    self.pending = Some(line);
                    break;
                }
                std::cmp::Ordering::Less => return Err(unsorted(self.side, line)),
            }
        }
        group.hashes.sort();
        Ok(Some(group))
    }
}

fn unsorted(side: &'static str, line: RowLine) -> VerifyError {
    VerifyError::Unsorted {
        side,
        table: line.table,
        identity: line.identity,
    }
}

/// A merge join of the local sorted rows, pushed one at a time, with the other side's
/// sorted lines, pulled as needed. Holds one group of each side at a time.
pub struct RowMerge<I> {
    there: Groups<I>,
    there_next: Option<Group>,
    here: Option<Group>,
    rows_here: u64,
    differing: u64,
}

impl<I: Iterator<Item = Result<RowLine, VerifyError>>> RowMerge<I> {
    /// A merge against `there`, a stream sorted by (table, identity).
    pub fn new(there: I) -> Result<RowMerge<I>, VerifyError> {
        let mut there = Groups {
            lines: there,
            pending: None,
            side: "other node's",
            count: 0,
        };
        let there_next = there.next_group()?;
        Ok(RowMerge {
            there,
            there_next,
            here: None,
            rows_here: 0,
            differing: 0,
        })
    }

    /// Takes the next local row (rows must come sorted); calls `emit` for every row
    /// found to differ so far.
    pub fn push(
        &mut self,
        line: RowLine,
        emit: &mut dyn FnMut(RowDiff) -> Result<(), VerifyError>,
    ) -> Result<(), VerifyError> {
        self.rows_here += 1;
        if let Some(g) = &mut self.here {
            match line.key().cmp(&g.key()) {
                std::cmp::Ordering::Equal => {
                    g.hashes.push(line.hash);
                    return Ok(());
                }
                std::cmp::Ordering::Less => return Err(unsorted("local", line)),
                std::cmp::Ordering::Greater => {}
            }
        }
        if let Some(done) = self.here.replace(Group::of(line)) {
            self.flush(done, emit)?;
        }
        Ok(())
    }

    fn flush(
        &mut self,
        mut here: Group,
        emit: &mut dyn FnMut(RowDiff) -> Result<(), VerifyError>,
    ) -> Result<(), VerifyError> {
        here.hashes.sort();
        loop {
            let Some(there) = self.there_next.take() else {
                self.differing += 1;
                return emit(here.diff(RowDiffKind::OnlyHere));
            };
            match there.key().cmp(&here.key()) {
                std::cmp::Ordering::Less => {
                    self.differing += 1;
                    emit(there.diff(RowDiffKind::OnlyThere))?;
                    self.there_next = self.there.next_group()?;
                }
                std::cmp::Ordering::Equal => {
                    self.there_next = self.there.next_group()?;
                    if there.hashes != here.hashes {
                        self.differing += 1;
                        emit(here.diff(RowDiffKind::Content))?;
                    }
                    return Ok(());
                }
                std::cmp::Ordering::Greater => {
                    self.there_next = Some(there);
                    self.differing += 1;
                    return emit(here.diff(RowDiffKind::OnlyHere));
                }
            }
        }
    }

    /// Ends the local stream: the remaining lines there are rows only there.
    pub fn finish(
        mut self,
        emit: &mut dyn FnMut(RowDiff) -> Result<(), VerifyError>,
    ) -> Result<RowsComparison, VerifyError> {
        if let Some(g) = self.here.take() {
            self.flush(g, emit)?;
        }
        while let Some(there) = self.there_next.take() {
            self.differing += 1;
            emit(there.diff(RowDiffKind::OnlyThere))?;
            self.there_next = self.there.next_group()?;
        }
        Ok(RowsComparison {
            rows_here: self.rows_here,
            rows_there: self.there.count,
            differing_rows: self.differing,
            ..RowsComparison::default()
        })
    }
}

/// Merges two sorted line streams (for tests and tools; the CLI pushes local rows).
pub fn merge(
    here: impl Iterator<Item = Result<RowLine, VerifyError>>,
    there: impl Iterator<Item = Result<RowLine, VerifyError>>,
    emit: &mut dyn FnMut(RowDiff) -> Result<(), VerifyError>,
) -> Result<RowsComparison, VerifyError> {
    let mut m = RowMerge::new(there)?;
    for line in here {
        m.push(line?, emit)?;
    }
    m.finish(emit)
}

/// Compares the local rows of `tables` under `plan` with a rows file, calling `emit` for
/// each row that differs as soon as it is found. Refuses a file made under another plan.
pub async fn diff_rows<R: BufRead>(
    conn: &mut Conn,
    database: &str,
    plan: &SyncPlan,
    tables: &[String],
    there: RowsFile<R>,
    emit: &mut dyn FnMut(RowDiff) -> Result<(), VerifyError>,
) -> Result<RowsComparison, VerifyError> {
    super::check_plans(
        &hex::encode(plan.fingerprint()),
        &there.header.plan_fingerprint,
    )?;
    let here_set: BTreeSet<String> = tables.iter().cloned().collect();
    let there_set: BTreeSet<String> = there.header.tables.iter().cloned().collect();
    let common: Vec<String> = here_set.intersection(&there_set).cloned().collect();
    let keep = common.iter().cloned().collect::<BTreeSet<String>>();
    let there_lines = there.filter(move |l| match l {
        Ok(l) => keep.contains(&l.table),
        Err(_) => true,
    });
    let mut merge = RowMerge::new(there_lines)?;
    for_each_sorted_row(conn, database, plan, &common, |line| merge.push(line, emit)).await?;
    let mut result = merge.finish(emit)?;
    result.tables_only_here = here_set.difference(&there_set).cloned().collect();
    result.tables_only_there = there_set.difference(&here_set).cloned().collect();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(table: &str, id: &[&str], hash: &str) -> RowLine {
        RowLine {
            table: table.into(),
            identity: id.iter().map(|s| s.to_string()).collect(),
            hash: hash.into(),
        }
    }

    fn run(
        here: Vec<RowLine>,
        there: Vec<RowLine>,
    ) -> Result<(Vec<RowDiff>, RowsComparison), VerifyError> {
        let mut diffs = Vec::new();
        let summary = merge(
            here.into_iter().map(Ok),
            there.into_iter().map(Ok),
            &mut |d| {
                diffs.push(d);
                Ok(())
            },
        )?;
        Ok((diffs, summary))
    }

    fn d(table: &str, id: &str, kind: RowDiffKind) -> RowDiff {
        RowDiff {
            table: table.into(),
            identity: vec![id.into()],
            kind,
        }
    }

    #[test]
    fn merge_finds_missing_and_changed_rows() {
        let here = vec![
            line("obs", &["a"], "1"),
            line("obs", &["b"], "2"),
            line("obs", &["d"], "4"),
            line("person", &["p"], "9"),
        ];
        let there = vec![
            line("encounter", &["e"], "0"),
            line("obs", &["a"], "1"),
            line("obs", &["b"], "X"),
            line("obs", &["c"], "3"),
            line("person", &["p"], "9"),
            line("visit", &["v"], "5"),
        ];
        let (diffs, s) = run(here, there).unwrap();
        assert_eq!(
            diffs,
            vec![
                d("encounter", "e", RowDiffKind::OnlyThere),
                d("obs", "b", RowDiffKind::Content),
                d("obs", "c", RowDiffKind::OnlyThere),
                d("obs", "d", RowDiffKind::OnlyHere),
                d("visit", "v", RowDiffKind::OnlyThere),
            ]
        );
        assert_eq!((s.rows_here, s.rows_there, s.differing_rows), (4, 6, 5));
        let same = vec![line("obs", &["a"], "1"), line("obs", &["b"], "2")];
        let (diffs, s) = run(same.clone(), same).unwrap();
        assert!(diffs.is_empty() && s.equal());
    }

    #[test]
    fn merge_compares_repeated_identities_as_multisets() {
        let here = vec![line("users", &["u"], "1"), line("users", &["u"], "2")];
        let swapped = vec![line("users", &["u"], "2"), line("users", &["u"], "1")];
        assert!(run(here.clone(), swapped).unwrap().0.is_empty());
        let fewer = vec![line("users", &["u"], "1")];
        assert_eq!(
            run(here, fewer).unwrap().0,
            vec![d("users", "u", RowDiffKind::Content)]
        );
    }

    #[test]
    fn merge_refuses_unsorted_input() {
        let good = vec![line("obs", &["a"], "1")];
        let bad = vec![line("obs", &["b"], "1"), line("obs", &["a"], "1")];
        assert!(matches!(
            run(good.clone(), bad.clone()),
            Err(VerifyError::Unsorted { .. })
        ));
        assert!(matches!(run(bad, good), Err(VerifyError::Unsorted { .. })));
        // Byte order: 'B' (0x42) sorts before 'a' (0x61), a prefix before its extensions.
        let ordered = vec![
            line("t", &["B"], "1"),
            line("t", &["a"], "1"),
            line("t", &["a", "x"], "1"),
            line("t", &["a\t"], "1"),
            line("t", &["a "], "1"),
        ];
        assert!(run(ordered.clone(), ordered).unwrap().0.is_empty());
    }

    #[test]
    fn rows_file_round_trips_and_rejects_other_files() {
        let mut buf = Vec::new();
        write_json_line(
            &mut buf,
            &RowsHeader {
                format: ROWS_FORMAT.into(),
                plan_fingerprint: "fp".into(),
                tables: vec!["obs".into()],
            },
        )
        .unwrap();
        write_json_line(&mut buf, &line("obs", &["a"], "1")).unwrap();
        let file = RowsFile::open(&buf[..], "f").unwrap();
        assert_eq!(file.header.tables, vec!["obs".to_string()]);
        let lines: Vec<RowLine> = file.map(Result::unwrap).collect();
        assert_eq!(lines, vec![line("obs", &["a"], "1")]);
        let summary = b"{\n  \"format\": \"ferry-verify/1\"\n}\n";
        assert!(matches!(
            RowsFile::open(&summary[..], "f"),
            Err(VerifyError::Format { .. })
        ));
        let mut garbage = buf.clone();
        garbage.extend_from_slice(b"not json\n");
        let results: Vec<_> = RowsFile::open(&garbage[..], "f").unwrap().collect();
        assert!(matches!(
            results.last(),
            Some(Err(VerifyError::Format { .. }))
        ));
    }
}
