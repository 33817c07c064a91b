//! Versions without stamping: every change's version, and every row's current one,
//! follow from what is already stored.
//!
//! A version is (wall µs, counter, node), totally ordered ([`Version`]); the greater
//! version of a row wins everywhere. Three rules make versions respect causality without
//! ever writing to a log entry after its trigger did:
//! - **A local change's version follows from its entry**: its wall time (recorded by the
//!   trigger at the moment of the write) and its position (`change_id`), read against
//!   the floor in force at that position ([`local_version`]). Every reader computes the
//!   same version from the same entry, so nothing needs stamping.
//! - **Floors carry what this node has seen.** When an import receives versions greater
//!   than the current floor, it records a new floor from a marker entry it appends to
//!   the log ([`raise_floor`]): every local change written after the import committed
//!   has a later position, so its version is greater than everything the import
//!   brought, whatever the wall clocks say (a clinic a year behind still overwrites the
//!   value it was shown). The marker also holds the log's write lock until the import
//!   commits, so no export reads a later entry's version before the floor exists.
//! - **A row's current version** is the later, by position, of its latest log entry and
//!   its `ferry_row` record ([`heads`]): the importer records there the versions it
//!   applies without logging them (at the position after the last one handed out, so
//!   an entry written later, which may take that very position, wins the tie), and
//!   pruning folds there the latest version of the entries it deletes.
//!
//! Positions order a row's history, not versions: a wall clock stepping back can give a
//! later edit a smaller version, and the apply rules treat an edit on top of the local
//! version as a fast-forward whatever its version.

use std::collections::HashMap;

use mysql_async::prelude::*;
use mysql_async::{Conn, Row, Value as MyValue};
use serde::{Deserialize, Serialize};

use crate::bundle::{Op, Version};
use crate::db::{push_bytes_literal, DbError};

/// The operation letter of a marker entry: no row change, only a position (its table
/// name is empty, so export, pruning and status pass over it). A version floor starts
/// at one ([`raise_floor`]); a heartbeat takes one ([`mark_position`]).
pub const MARKER: &str = "F";

/// From position `from` on, local versions exceed (`wall_us`, `counter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    pub from: u64,
    pub wall_us: i64,
    pub counter: u32,
}

/// Every floor of this node, by position.
#[derive(Debug, Clone, Default)]
pub struct Floors {
    list: Vec<Floor>,
}

impl Floors {
    /// Reads the floors.
    pub async fn load(conn: &mut Conn) -> Result<Floors, DbError> {
        let rows: Vec<(u64, i64, u32)> = conn
            .query("SELECT from_change, wall, counter FROM ferry_floor ORDER BY from_change")
            .await
            .map_err(DbError::query("reading the version floors"))?;
        Ok(Floors {
            list: rows
                .into_iter()
                .map(|(from, wall_us, counter)| Floor {
                    from,
                    wall_us,
                    counter,
                })
                .collect(),
        })
    }

    /// Floors from a list (tests).
    pub fn from_list(mut list: Vec<Floor>) -> Floors {
        list.sort_by_key(|f| f.from);
        Floors { list }
    }

    /// The floor in force at `position`: the one with the greatest `from` below it.
    pub fn at(&self, position: u64) -> Option<&Floor> {
        let i = self.list.partition_point(|f| f.from < position);
        i.checked_sub(1).map(|i| &self.list[i])
    }

    /// The newest floor.
    pub fn latest(&self) -> Option<&Floor> {
        self.list.last()
    }

    /// The version of the local change at `position` written at `wall_us` by `node`.
    pub fn local_version(&self, position: u64, wall_us: i64, node: &str) -> Version {
        local_version(self.at(position), position, wall_us, node)
    }

    /// The wall time and counter of that version (its node is this node's).
    pub fn local_stamp(&self, position: u64, wall_us: i64) -> (i64, u32) {
        local_stamp(self.at(position), position, wall_us)
    }
}

/// A local change's version: its wall time when that is past the floor (the low bits of
/// its position break ties within a microsecond), else the floor's reading with a
/// counter that grows with the position.
pub fn local_version(floor: Option<&Floor>, position: u64, wall_us: i64, node: &str) -> Version {
    let (wall_us, counter) = local_stamp(floor, position, wall_us);
    Version {
        wall_us,
        counter,
        node: node.to_string(),
    }
}

/// The wall time and counter of [`local_version`].
pub fn local_stamp(floor: Option<&Floor>, position: u64, wall_us: i64) -> (i64, u32) {
    match floor {
        Some(f) if wall_us <= f.wall_us => {
            let steps = position.saturating_sub(f.from).min(u32::MAX as u64) as u32;
            (f.wall_us, f.counter.saturating_add(steps))
        }
        _ => (wall_us, position as u32),
    }
}

/// The greatest log position handed out so far (to an entry that may since have been
/// pruned, or rolled back): the auto-increment counter, not the greatest entry left.
pub async fn last_position(conn: &mut Conn) -> Result<u64, DbError> {
    let next: Option<Option<u64>> = conn
        .query_first(
            "SELECT AUTO_INCREMENT FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ferry_change'",
        )
        .await
        .map_err(DbError::query("reading the log's last position"))?;
    Ok(next.flatten().unwrap_or(1).saturating_sub(1))
}

/// Takes a log position with a marker entry (autocommit). A heartbeat does, so that it
/// moves the export horizon like any other bundle: the peer's ack of that horizon then
/// proves the heartbeat applied, and it leaves the outbox. Without its own position, a
/// heartbeat could only leave with the ack of a later bundle that moved the horizon, so
/// an idle node's heartbeats piled up (issue 4).
pub async fn mark_position(conn: &mut Conn, wall_us: i64) -> Result<(), DbError> {
    conn.exec_drop(
        "INSERT INTO ferry_change (table_name, row_key, op, wall_us) VALUES ('', '', ?, ?)",
        (MARKER, wall_us),
    )
    .await
    .map_err(DbError::query("marking a position in the change log"))
}

/// After an import saw versions up to `seen`: makes later local versions greater, by a
/// marker entry (whose position starts the new floor) and a floor record. Inside the
/// import's transaction; nothing happens when the newest floor is already as high.
pub async fn raise_floor(conn: &mut Conn, seen: &Version) -> Result<(), DbError> {
    let latest: Option<(u64, i64, u32)> = conn
        .query_first(
            "SELECT from_change, wall, counter FROM ferry_floor \
             ORDER BY from_change DESC LIMIT 1 FOR UPDATE",
        )
        .await
        .map_err(DbError::query("reading the newest version floor"))?;
    if let Some((_, w, c)) = latest {
        if (w, c) >= (seen.wall_us, seen.counter) {
            return Ok(());
        }
    }
    conn.exec_drop(
        "INSERT INTO ferry_change (table_name, row_key, op, wall_us, version_wall, version_counter) \
         VALUES ('', '', ?, ?, ?, ?)",
        (MARKER, seen.wall_us, seen.wall_us, seen.counter),
    )
    .await
    .map_err(DbError::query("marking the version floor"))?;
    let marker = conn.last_insert_id().unwrap_or(0);
    let from = marker.max(latest.map(|l| l.0).unwrap_or(0));
    conn.exec_drop(
        "INSERT INTO ferry_floor (from_change, wall, counter) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE wall = VALUES(wall), counter = VALUES(counter)",
        (from, seen.wall_us, seen.counter),
    )
    .await
    .map_err(DbError::query("recording the version floor"))
}

/// One change-log entry, as export, import and pruning read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its position.
    pub change_id: u64,
    pub table: String,
    pub row_id: Option<i64>,
    pub row_key: String,
    /// `I`, `U`, `D` (or `F` for a marker entry: [`MARKER`]).
    pub op: String,
    pub wall_us: i64,
    /// The node the change came from; `None` for a local change.
    pub origin: Option<String>,
    /// Stored for forwarded changes (and changes stamped before stamping went away).
    pub version: Option<Version>,
    pub base: Option<Version>,
    /// The peer a forwarded change came through.
    pub via: Option<String>,
}

impl LogEntry {
    /// The columns [`LogEntry::from_row`] reads, in order.
    pub const COLUMNS: &'static str =
        "change_id, table_name, row_id, row_key, op, wall_us, origin, \
        version_wall, version_counter, version_node, base_wall, base_counter, base_node, via";

    /// Decodes a row selected with [`LogEntry::COLUMNS`].
    pub fn from_row(mut row: Row) -> LogEntry {
        fn take<T: mysql_async::prelude::FromValue>(row: &mut Row, i: usize) -> T {
            row.take(i).expect("selected with LogEntry::COLUMNS")
        }
        LogEntry {
            change_id: take(&mut row, 0),
            table: take(&mut row, 1),
            row_id: take(&mut row, 2),
            row_key: take(&mut row, 3),
            op: take(&mut row, 4),
            wall_us: take(&mut row, 5),
            origin: take(&mut row, 6),
            version: version_from(take(&mut row, 7), take(&mut row, 8), take(&mut row, 9)),
            base: version_from(take(&mut row, 10), take(&mut row, 11), take(&mut row, 12)),
            via: take(&mut row, 13),
        }
    }

    /// The change's version: stored, or (a local change) computed from the entry.
    pub fn version(&self, floors: &Floors, me: &str) -> Version {
        match &self.version {
            Some(v) => v.clone(),
            None => floors.local_version(self.change_id, self.wall_us, me),
        }
    }

    /// The node the change was first made at.
    pub fn origin_or<'a>(&'a self, me: &'a str) -> &'a str {
        self.origin.as_deref().unwrap_or(me)
    }

    /// Whether the change was made here.
    pub fn is_local(&self) -> bool {
        self.origin.is_none()
    }

    pub fn op(&self) -> Op {
        match self.op.as_str() {
            "I" => Op::Insert,
            "D" => Op::Delete,
            _ => Op::Update,
        }
    }
}

/// A row's latest state at this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub version: Version,
    pub deleted: bool,
    /// Where in the log's order it happened.
    pub position: u64,
    /// The node the version was first made at (`None`: here).
    pub origin: Option<String>,
    /// The peer it came through, when it was imported.
    pub via: Option<String>,
}

/// The latest state of each of `keys` (identity texts) of `table`: the later of its
/// latest log entry (at or below `upto` when given) and its `ferry_row` record. Rows
/// with neither are absent.
pub async fn heads(
    conn: &mut Conn,
    floors: &Floors,
    me: &str,
    table: &str,
    keys: &[&str],
    upto: Option<u64>,
) -> Result<HashMap<String, Head>, DbError> {
    heads_where(conn, floors, me, table, keys, upto, &|_| true).await
}

/// [`heads`], reading `ferry_row` records only for the keys `may_have_record` allows
/// (the others are known to have none).
pub async fn heads_where(
    conn: &mut Conn,
    floors: &Floors,
    me: &str,
    table: &str,
    keys: &[&str],
    upto: Option<u64>,
    may_have_record: &(dyn Fn(&str) -> bool + Sync),
) -> Result<HashMap<String, Head>, DbError> {
    let mut out: HashMap<String, Head> = HashMap::new();
    let mut ks: Vec<&str> = keys.to_vec();
    ks.sort_unstable();
    ks.dedup();
    // A table without log entries (a fresh node, or one whose log was pruned) needs no
    // probe of the log per key: one look at the index answers for all of them. Likewise
    // a table without `ferry_row` records (every row's history still in the log).
    let logged = !ks.is_empty() && has_rows_of(conn, "ferry_change", table).await?;
    let recorded = !ks.is_empty() && has_rows_of(conn, "ferry_row", table).await?;
    for chunk in ks.chunks(1000) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let rows: Vec<Row> = if !logged {
            Vec::new()
        } else {
            let mut params: Vec<MyValue> = vec![table.into()];
            params.extend(chunk.iter().map(|k| MyValue::from(*k)));
            let bound = match upto {
                Some(u) => {
                    params.push(u.into());
                    " AND change_id <= ?"
                }
                None => "",
            };
            conn.exec(
                format!(
                    "SELECT {} FROM ferry_change FORCE INDEX (ferry_change_row) \
                     WHERE table_name = ? AND row_key IN ({marks}){bound}",
                    LogEntry::COLUMNS
                ),
                params,
            )
            .await
            .map_err(DbError::query("reading rows' latest log entries"))?
        };
        for r in rows {
            let e = LogEntry::from_row(r);
            if out
                .get(&e.row_key)
                .is_some_and(|h| h.position >= e.change_id)
            {
                continue;
            }
            let head = Head {
                version: e.version(floors, me),
                deleted: e.op == "D",
                position: e.change_id,
                origin: e.origin.clone(),
                via: e.via.clone(),
            };
            out.insert(e.row_key, head);
        }
        if !recorded {
            continue;
        }
        let probed: Vec<&str> = chunk
            .iter()
            .copied()
            .filter(|k| may_have_record(k))
            .collect();
        if probed.is_empty() {
            continue;
        }
        let mut params: Vec<MyValue> = vec![table.into()];
        params.extend(probed.iter().map(|k| MyValue::from(*k)));
        let settled: Vec<Row> = conn
            .exec(
                format!(
                    "SELECT row_key, {SETTLED_COLUMNS} FROM ferry_row \
                     WHERE table_name = ? AND row_key IN ({})",
                    vec!["?"; probed.len()].join(", ")
                ),
                params,
            )
            .await
            .map_err(DbError::query("reading row versions"))?;
        for mut r in settled {
            let key: String = r.take(0).expect("row_key");
            let head = settled_head(r, 1, me);
            if out.get(&key).is_some_and(|h| h.position >= head.position) {
                continue;
            }
            out.insert(key, head);
        }
    }
    Ok(out)
}

/// Whether ferry's bookkeeping table `bookkeeping` (`ferry_change` or `ferry_row`)
/// holds anything of `table` (one look at the index both have on `table_name` first).
async fn has_rows_of(conn: &mut Conn, bookkeeping: &str, table: &str) -> Result<bool, DbError> {
    let found: Option<u8> = conn
        .exec_first(
            format!("SELECT 1 FROM {bookkeeping} WHERE table_name = ? LIMIT 1"),
            (table,),
        )
        .await
        .map_err(DbError::query(format!("looking in {bookkeeping}")))?;
    Ok(found.is_some())
}

/// The `ferry_row` columns [`settled_head`] reads.
const SETTLED_COLUMNS: &str =
    "version_wall, version_counter, version_node, deleted, at_change, via";

/// A `ferry_row` record as a head, its [`SETTLED_COLUMNS`] starting at column `at`.
fn settled_head(mut r: Row, at: usize, me: &str) -> Head {
    let node: String = r.take(at + 2).expect("version_node");
    Head {
        origin: (node != me).then(|| node.clone()),
        version: Version {
            wall_us: r.take(at).expect("version_wall"),
            counter: r.take(at + 1).expect("version_counter"),
            node,
        },
        deleted: r.take(at + 3).expect("deleted"),
        position: r.take(at + 4).expect("at_change"),
        via: r.take(at + 5).expect("via"),
    }
}

/// The head of every row this node has a version of (for diagnostics and tests: it
/// holds them all in memory).
pub async fn all_heads(
    conn: &mut Conn,
    me: &str,
) -> Result<std::collections::BTreeMap<(String, String), Head>, DbError> {
    let floors = Floors::load(conn).await?;
    let mut out: std::collections::BTreeMap<(String, String), Head> = Default::default();
    let settled: Vec<Row> = conn
        .query(format!(
            "SELECT table_name, row_key, {SETTLED_COLUMNS} FROM ferry_row"
        ))
        .await
        .map_err(DbError::query("reading row versions"))?;
    for mut r in settled {
        let table: String = r.take(0).expect("table_name");
        let key: String = r.take(1).expect("row_key");
        out.insert((table, key), settled_head(r, 2, me));
    }
    let rows: Vec<Row> = conn
        .query(format!(
            "SELECT {} FROM ferry_change WHERE op <> '{MARKER}' ORDER BY change_id",
            LogEntry::COLUMNS
        ))
        .await
        .map_err(DbError::query("reading the change log"))?;
    for r in rows {
        let e = LogEntry::from_row(r);
        let k = (e.table.clone(), e.row_key.clone());
        if out.get(&k).is_some_and(|h| h.position > e.change_id) {
            continue;
        }
        out.insert(
            k,
            Head {
                version: e.version(&floors, me),
                deleted: e.op == "D",
                position: e.change_id,
                origin: e.origin.clone(),
                via: e.via.clone(),
            },
        );
    }
    Ok(out)
}

/// A row's settled version, as `ferry_row` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub table: String,
    pub row_key: String,
    pub version: Version,
    pub deleted: bool,
    /// Its position: a later record of the row never yields to an earlier one.
    pub at: u64,
    pub via: Option<String>,
}

/// Records settled versions in `ferry_row` (a row keeps the one with the later position).
/// The statements are written as text straight from the records (one per 1000 rows).
pub async fn settle(conn: &mut Conn, rows: &[Settle]) -> Result<(), DbError> {
    use std::io::Write;
    // Every assignment tests the old position, so at_change goes last.
    let later = "VALUES(at_change) >= at_change";
    let update = format!(
        " ON DUPLICATE KEY UPDATE \
         version_wall = IF({later}, VALUES(version_wall), version_wall), \
         version_counter = IF({later}, VALUES(version_counter), version_counter), \
         version_node = IF({later}, VALUES(version_node), version_node), \
         deleted = IF({later}, VALUES(deleted), deleted), \
         via = IF({later}, VALUES(via), via), \
         at_change = GREATEST(at_change, VALUES(at_change))"
    );
    for chunk in rows.chunks(1000) {
        let mut sql: Vec<u8> = Vec::with_capacity(chunk.len() * 128 + update.len() + 128);
        sql.extend_from_slice(
            b"INSERT INTO ferry_row (table_name, row_key, version_wall, version_counter, \
              version_node, deleted, at_change, via) VALUES ",
        );
        for (n, s) in chunk.iter().enumerate() {
            sql.extend_from_slice(if n == 0 { b"(" } else { b", (" });
            push_bytes_literal(&mut sql, s.table.as_bytes());
            sql.extend_from_slice(b", ");
            push_bytes_literal(&mut sql, s.row_key.as_bytes());
            let _ = write!(sql, ", {}, {}, ", s.version.wall_us, s.version.counter);
            push_bytes_literal(&mut sql, s.version.node.as_bytes());
            let _ = write!(sql, ", {}, {}, ", u8::from(s.deleted), s.at);
            match &s.via {
                Some(v) => push_bytes_literal(&mut sql, v.as_bytes()),
                None => sql.extend_from_slice(b"NULL"),
            }
            sql.push(b')');
        }
        sql.extend_from_slice(update.as_bytes());
        conn.query_drop(sql)
            .await
            .map_err(DbError::query("recording row versions"))?;
    }
    Ok(())
}

/// The NULL-able columns of an optional version.
pub fn version_cols(v: Option<&Version>) -> (MyValue, MyValue, MyValue) {
    match v {
        Some(v) => (v.wall_us.into(), v.counter.into(), v.node.clone().into()),
        None => (MyValue::NULL, MyValue::NULL, MyValue::NULL),
    }
}

/// Reads a version from three columns.
pub fn version_from(
    wall: Option<i64>,
    counter: Option<u32>,
    node: Option<String>,
) -> Option<Version> {
    Some(Version {
        wall_us: wall?,
        counter: counter?,
        node: node?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floors() -> Floors {
        Floors::from_list(vec![
            Floor {
                from: 100,
                wall_us: 5_000,
                counter: 2,
            },
            Floor {
                from: 10,
                wall_us: 1_000,
                counter: 0,
            },
        ])
    }

    #[test]
    fn the_floor_in_force_is_the_last_one_before_the_position() {
        let f = floors();
        assert_eq!(f.at(10), None);
        assert_eq!(f.at(11).map(|f| f.from), Some(10));
        assert_eq!(f.at(100).map(|f| f.from), Some(10));
        assert_eq!(f.at(101).map(|f| f.from), Some(100));
        assert_eq!(f.latest().map(|f| f.from), Some(100));
    }

    #[test]
    fn a_local_version_passes_its_floor_whatever_the_wall_clock() {
        let f = floors();
        // A clock past the floor: its own reading.
        let v = f.local_version(150, 9_000, "a");
        assert_eq!((v.wall_us, v.node.as_str()), (9_000, "a"));
        // A clock behind the floor: the floor's reading, a counter past the floor's.
        let behind = f.local_version(150, 10, "a");
        assert_eq!((behind.wall_us, behind.counter), (5_000, 52));
        assert!((behind.wall_us, behind.counter) > (5_000, 2));
        // Later positions behind the floor keep growing.
        assert!(f.local_version(151, 10, "a") > behind);
        // No floor yet: the wall clock.
        assert_eq!(f.local_version(5, 7, "a").wall_us, 7);
    }

    #[test]
    fn the_same_microsecond_is_ordered_by_position() {
        let f = Floors::default();
        assert!(f.local_version(8, 1_000, "a") > f.local_version(7, 1_000, "a"));
    }
}
