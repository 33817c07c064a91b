//! Stamping: giving each captured local change its place in commit order and its version.
//!
//! Triggers number changes with an auto-increment `change_id`, but two transactions can
//! commit in the other order than they drew their ids, so an exporter that remembered
//! "sent up to id N" could skip a change that commits later with a smaller id. Stamping
//! closes that gap: under one lock (the `seq` and `hlc` rows of `ferry_meta`, held until
//! the caller's transaction ends) it reads the committed, unstamped local changes and
//! gives each the next `seq` (which therefore follows commit order), a version from the
//! hybrid logical clock, and as base version the row's previous version, which it then
//! records in `ferry_row`. Export and import both stamp first, inside their own
//! transaction, so a local edit is always versioned before remote versions are merged.

use std::collections::HashMap;

use mysql_async::prelude::*;
use mysql_async::{Conn, Value as MyValue};

use super::clock::{Hlc, WallClock};
use crate::bundle::Version;
use crate::db::{values_sql, DbError};

/// How many changes one round reads.
const BATCH: usize = 2000;

/// The stamping lock and the counters it protects, for the length of a transaction.
#[derive(Debug)]
pub struct Stamp {
    pub hlc: Hlc,
    /// The last `seq` given out.
    pub seq: u64,
    pub node: String,
    pub clock: WallClock,
}

impl Stamp {
    /// Takes the lock (inside the caller's transaction) and reads the counters.
    pub async fn lock(conn: &mut Conn, node: &str, clock: WallClock) -> Result<Stamp, DbError> {
        conn.query_drop(
            "INSERT IGNORE INTO ferry_meta (name, value) VALUES ('hlc', '0,0'), ('seq', '0')",
        )
        .await
        .map_err(DbError::query("initialising the clock"))?;
        let rows: Vec<(String, String)> = conn
            .query("SELECT name, value FROM ferry_meta WHERE name IN ('hlc', 'seq') FOR UPDATE")
            .await
            .map_err(DbError::query("taking the stamping lock"))?;
        let mut stamp = Stamp {
            hlc: Hlc::default(),
            seq: 0,
            node: node.to_string(),
            clock,
        };
        for (name, value) in rows {
            match name.as_str() {
                "hlc" => stamp.hlc = Hlc::parse(&value).unwrap_or_default(),
                _ => stamp.seq = value.parse().unwrap_or(0),
            }
        }
        Ok(stamp)
    }

    /// Writes the counters back (the lock is released when the transaction ends).
    pub async fn save(&self, conn: &mut Conn) -> Result<(), DbError> {
        conn.exec_drop(
            "UPDATE ferry_meta SET value = CASE name WHEN 'hlc' THEN ? ELSE ? END \
             WHERE name IN ('hlc', 'seq')",
            (self.hlc.to_text(), self.seq.to_string()),
        )
        .await
        .map_err(DbError::query("saving the clock"))
    }

    /// The next sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Stamps every committed, unstamped local change. Returns how many.
    pub async fn stamp_pending(&mut self, conn: &mut Conn) -> Result<u64, DbError> {
        // Start at the first unstamped entry (the seq index finds it), then walk the
        // primary key: each round reads the next batch in id order, never re-sorting
        // what earlier rounds left behind.
        let first: Option<Option<u64>> = conn
            .query_first("SELECT MIN(change_id) FROM ferry_change WHERE seq IS NULL")
            .await
            .map_err(DbError::query("finding unstamped changes"))?;
        let Some(Some(first)) = first else {
            return Ok(0);
        };
        let mut after = first - 1;
        let mut total = 0u64;
        loop {
            let rows: Vec<(u64, String, String, String, i64)> = conn
                .exec(
                    "SELECT change_id, table_name, row_key, op, wall_us \
                     FROM ferry_change FORCE INDEX (PRIMARY) \
                     WHERE change_id > ? AND seq IS NULL ORDER BY change_id LIMIT ?",
                    (after, BATCH as u64),
                )
                .await
                .map_err(DbError::query("reading unstamped changes"))?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            total += rows.len() as u64;
            let keys: Vec<(String, String)> =
                rows.iter().map(|r| (r.1.clone(), r.2.clone())).collect();
            let mut current = row_versions(conn, &keys).await?;
            let mut change_rows = Vec::with_capacity(rows.len());
            let mut finals: HashMap<(String, String), (Version, bool)> = HashMap::new();
            for (change_id, table, key, op, wall_us) in rows {
                let k = (table.clone(), key.clone());
                let base = current.get(&k).map(|(v, _)| v.clone());
                let version = self.hlc.tick(self.clock.shift(wall_us), &self.node);
                let deleted = op == "D";
                current.insert(k.clone(), (version.clone(), deleted));
                finals.insert(k, (version.clone(), deleted));
                let seq = self.next_seq();
                let (bw, bc, bn) = version_cols(base.as_ref());
                change_rows.push(vec![
                    change_id.into(),
                    table.into(),
                    key.into(),
                    op.into(),
                    wall_us.into(),
                    seq.into(),
                    version.wall_us.into(),
                    version.counter.into(),
                    version.node.into(),
                    bw,
                    bc,
                    bn,
                ]);
            }
            conn.query_drop(format!(
                "INSERT INTO ferry_change (change_id, table_name, row_key, op, wall_us, seq, \
                 version_wall, version_counter, version_node, base_wall, base_counter, base_node) \
                 VALUES {} ON DUPLICATE KEY UPDATE seq = VALUES(seq), \
                 version_wall = VALUES(version_wall), version_counter = VALUES(version_counter), \
                 version_node = VALUES(version_node), base_wall = VALUES(base_wall), \
                 base_counter = VALUES(base_counter), base_node = VALUES(base_node)",
                values_sql(&change_rows)
            ))
            .await
            .map_err(DbError::query("stamping changes"))?;
            let updates: Vec<_> = finals.into_iter().collect();
            set_row_versions(conn, &updates).await?;
        }
        Ok(total)
    }
}

/// A row (table, identity text) with its version and tombstone flag.
pub type RowVersion = ((String, String), (Version, bool));

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

/// Current versions (and tombstone flags) of the given rows. One query per table and
/// chunk, `table_name = ? AND row_key IN (...)`, so that the primary key serves it (a
/// row-constructor `IN` would scan the whole table).
pub async fn row_versions(
    conn: &mut Conn,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), (Version, bool)>, DbError> {
    let mut by_table: HashMap<&str, Vec<&str>> = HashMap::new();
    for (t, k) in keys {
        by_table.entry(t.as_str()).or_default().push(k.as_str());
    }
    let mut out = HashMap::new();
    for (table, mut ks) in by_table {
        ks.sort_unstable();
        ks.dedup();
        for chunk in ks.chunks(1000) {
            let params: Vec<MyValue> = std::iter::once(MyValue::from(table))
                .chain(chunk.iter().map(|k| MyValue::from(*k)))
                .collect();
            let rows: Vec<(String, i64, u32, String, bool)> = conn
                .exec(
                    format!(
                        "SELECT row_key, version_wall, version_counter, version_node, deleted \
                         FROM ferry_row WHERE table_name = ? AND row_key IN ({})",
                        vec!["?"; chunk.len()].join(", ")
                    ),
                    params,
                )
                .await
                .map_err(DbError::query("reading row versions"))?;
            for (k, w, c, n, d) in rows {
                out.insert(
                    (table.to_string(), k),
                    (
                        Version {
                            wall_us: w,
                            counter: c,
                            node: n,
                        },
                        d,
                    ),
                );
            }
        }
    }
    Ok(out)
}

/// Records rows' current versions (and whether they are tombstones).
pub async fn set_row_versions(conn: &mut Conn, rows: &[RowVersion]) -> Result<(), DbError> {
    for chunk in rows.chunks(1000) {
        let values: Vec<Vec<MyValue>> = chunk
            .iter()
            .map(|((t, k), (v, d))| {
                vec![
                    t.clone().into(),
                    k.clone().into(),
                    v.wall_us.into(),
                    v.counter.into(),
                    v.node.clone().into(),
                    (*d).into(),
                ]
            })
            .collect();
        if values.is_empty() {
            continue;
        }
        conn.query_drop(format!(
            "INSERT INTO ferry_row (table_name, row_key, version_wall, version_counter, version_node, deleted) \
             VALUES {} ON DUPLICATE KEY UPDATE version_wall = VALUES(version_wall), \
             version_counter = VALUES(version_counter), version_node = VALUES(version_node), \
             deleted = VALUES(deleted)",
            values_sql(&values)
        ))
        .await
        .map_err(DbError::query("recording row versions"))?;
    }
    Ok(())
}
