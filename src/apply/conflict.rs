//! Deciding between an incoming change and the local row, and recording what lost.
//!
//! A row's current version is its head ([`crate::capture::versions::heads`]). An
//! incoming change whose base version equals that version was made on top of what this
//! node holds: a plain fast-forward that records nothing, whatever its version (a wall
//! clock that stepped back can make a later edit's version smaller). One whose base
//! differs was made without seeing the local version: the two are concurrent, and the
//! greater version wins, so every node ends with the same row whatever order bundles
//! arrive in; the losing version (its full values in uuid space, node, clock reading)
//! and the winner go to `ferry_conflict` on the node where the overwrite happened, so
//! that an operator can restore the loser (`ferry conflicts`). Deletes are versions like
//! any other (their rows stay as tombstones). A row inserted again over its tombstone
//! by a greater version is a fast-forward too (an insert names no base), and so is any
//! change over a row's *genesis* version (its state before capture, which a full export
//! brought: [`Version::genesis`]). An equal version is the same change arriving again
//! and does nothing. A genesis version that loses to the same values is no conflict:
//! nothing is recorded (a captured version that loses is recorded even then).

use mysql_async::prelude::*;
use mysql_async::{Conn, Value as MyValue};
use serde_json::{Map, Value as Json};

use crate::bundle::{Value, Version};
use crate::db::{values_sql, DbError};

/// What to do with one incoming change, given the row's local version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The row is new here, or the change builds on the local version: apply, record nothing.
    FastForward,
    /// Concurrent and greater: apply, record the local version as the loser.
    WinsConcurrent,
    /// Concurrent and smaller: skip, record the incoming change as the loser.
    LosesConcurrent,
    /// The same version again, or an older one this node already built on: skip.
    Stale,
}

/// Decides an incoming change (`version` on top of `base`) against the local version
/// (and whether the local row is a tombstone).
pub fn decide(
    version: &Version,
    base: Option<&Version>,
    local: Option<(&Version, bool)>,
) -> Decision {
    use std::cmp::Ordering::*;
    let Some((local, tombstone)) = local else {
        return Decision::FastForward;
    };
    // A change that names no base was made on a row with no version there: on top of
    // a tombstone (a re-insert), or of a row as it stood before capture (a genesis
    // version, which a full export brought).
    let on_top = base == Some(local)
        || (base.is_none() && (tombstone || (local.is_genesis() && !version.is_genesis())));
    match (version.cmp(local), on_top) {
        (Equal, _) => Decision::Stale,
        (Greater, true) => Decision::FastForward,
        (Greater, false) => Decision::WinsConcurrent,
        // Made on top of the local version, yet smaller: the maker's clock stepped
        // back. A re-insert over a tombstone is not on top of it, though.
        (Less, true) if base.is_some() => Decision::FastForward,
        (Less, _) => Decision::LosesConcurrent,
    }
}

/// One side of a conflict.
#[derive(Debug, Clone)]
pub struct Side {
    pub version: Version,
    pub deleted: bool,
    /// The row's values by column (uuid space, exact), when it exists.
    pub values: Option<Json>,
}

/// What kind of conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Two concurrent versions of one row.
    Concurrent,
    /// Two rows with one value in a unique column; the later one's value was suffixed.
    Unique,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Concurrent => "concurrent",
            Kind::Unique => "unique",
        }
    }
}

/// A conflict to record.
#[derive(Debug, Clone)]
pub struct NewConflict {
    pub table: String,
    pub row_key: String,
    pub kind: Kind,
    /// For unique collisions: the column.
    pub column: Option<String>,
    pub winner: Side,
    pub winner_skewed: bool,
    pub loser: Side,
    /// The peer the bundle came from.
    pub via: String,
}

/// Values by column name, each in its exact serde form (restorable).
pub fn values_json(columns: &[String], values: &[Value]) -> Json {
    let mut m = Map::new();
    for (c, v) in columns.iter().zip(values) {
        m.insert(
            c.clone(),
            serde_json::to_value(v).unwrap_or(Json::String(format!("{v:?}"))),
        );
    }
    Json::Object(m)
}

/// Reads values back from [`values_json`] in `columns` order.
pub fn values_from_json(columns: &[String], json: &Json) -> Option<Vec<Value>> {
    let m = json.as_object()?;
    columns
        .iter()
        .map(|c| serde_json::from_value(m.get(c)?.clone()).ok())
        .collect()
}

/// Writes conflicts to `ferry_conflict`.
pub async fn record(conn: &mut Conn, now_us: i64, list: &[NewConflict]) -> Result<(), DbError> {
    for chunk in list.chunks(200) {
        let rows: Vec<Vec<MyValue>> = chunk
            .iter()
            .map(|c| {
                let text = |v: &Option<Json>| match v {
                    Some(j) => MyValue::from(j.to_string()),
                    None => MyValue::NULL,
                };
                vec![
                    c.table.clone().into(),
                    c.row_key.clone().into(),
                    c.kind.as_str().into(),
                    c.column.clone().map(MyValue::from).unwrap_or(MyValue::NULL),
                    c.winner.version.wall_us.into(),
                    c.winner.version.counter.into(),
                    c.winner.version.node.clone().into(),
                    c.winner.deleted.into(),
                    text(&c.winner.values),
                    c.winner_skewed.into(),
                    c.loser.version.wall_us.into(),
                    c.loser.version.counter.into(),
                    c.loser.version.node.clone().into(),
                    c.loser.deleted.into(),
                    text(&c.loser.values),
                    now_us.into(),
                    c.via.clone().into(),
                ]
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        conn.query_drop(format!(
            "INSERT INTO ferry_conflict (table_name, row_key, kind, column_name, winner_wall, \
             winner_counter, winner_node, winner_deleted, winner_values, winner_skewed, \
             loser_wall, loser_counter, loser_node, loser_deleted, loser_values, detected_us, via) \
             VALUES {}",
            values_sql(&rows)
        ))
        .await
        .map_err(DbError::query("recording conflicts"))?;
    }
    Ok(())
}

/// Remembers the largest apparent skew of `node`'s clock.
pub async fn record_skew(
    conn: &mut Conn,
    node: &str,
    skew_us: i64,
    version_wall: i64,
    sender: &str,
    now_us: i64,
) -> Result<(), DbError> {
    conn.exec_drop(
        "INSERT INTO ferry_skew (node, skew_us, version_wall, sender, seen_us) VALUES (?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE version_wall = IF(VALUES(skew_us) >= skew_us, VALUES(version_wall), version_wall), \
         sender = IF(VALUES(skew_us) >= skew_us, VALUES(sender), sender), \
         skew_us = GREATEST(skew_us, VALUES(skew_us)), seen_us = VALUES(seen_us)",
        (node, skew_us, version_wall, sender, now_us),
    )
    .await
    .map_err(DbError::query("recording clock skew"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(w: i64, n: &str) -> Version {
        Version {
            wall_us: w,
            counter: 0,
            node: n.into(),
        }
    }

    #[test]
    fn base_equal_to_local_is_a_fast_forward_and_anything_else_is_concurrent() {
        let local = v(10, "a");
        let live = Some((&local, false));
        assert_eq!(decide(&v(5, "b"), None, None), Decision::FastForward);
        assert_eq!(
            decide(&v(20, "b"), Some(&local), live),
            Decision::FastForward
        );
        assert_eq!(
            decide(&v(20, "b"), Some(&v(1, "c")), live),
            Decision::WinsConcurrent
        );
        assert_eq!(decide(&v(20, "b"), None, live), Decision::WinsConcurrent);
        assert_eq!(
            decide(&v(5, "b"), Some(&v(1, "c")), live),
            Decision::LosesConcurrent
        );
        assert_eq!(decide(&local, Some(&v(1, "c")), live), Decision::Stale);
        // Same wall time: the node breaks the tie, identically everywhere.
        assert_eq!(
            decide(&v(10, "b"), Some(&v(1, "c")), live),
            Decision::WinsConcurrent
        );
    }

    #[test]
    fn an_edit_on_top_of_the_local_version_applies_even_when_its_clock_stepped_back() {
        let local = v(10, "a");
        assert_eq!(
            decide(&v(7, "a"), Some(&local), Some((&local, false))),
            Decision::FastForward
        );
    }

    #[test]
    fn a_change_with_no_base_builds_on_a_genesis_version_and_two_geneses_are_concurrent() {
        let genesis = Version::genesis("hub");
        let held = Some((&genesis, false));
        // An edit made where the row had no version builds on the row before capture.
        assert_eq!(decide(&v(20, "spoke"), None, held), Decision::FastForward);
        assert_eq!(
            decide(&v(20, "spoke"), Some(&genesis), held),
            Decision::FastForward
        );
        // The same full export again does nothing.
        assert_eq!(decide(&genesis, None, held), Decision::Stale);
        // Two nodes' rows before capture: the greater node name wins, everywhere alike.
        let other = Version::genesis("zulu");
        assert_eq!(decide(&other, None, held), Decision::WinsConcurrent);
        assert_eq!(
            decide(&genesis, None, Some((&other, false))),
            Decision::LosesConcurrent
        );
        // A captured version is never built on by a genesis one.
        let live = v(10, "a");
        assert_eq!(
            decide(&genesis, None, Some((&live, false))),
            Decision::LosesConcurrent
        );
    }

    #[test]
    fn a_greater_insert_over_a_tombstone_is_a_fast_forward() {
        let gone = v(10, "a");
        let tomb = Some((&gone, true));
        assert_eq!(decide(&v(20, "a"), None, tomb), Decision::FastForward);
        assert_eq!(decide(&v(5, "b"), None, tomb), Decision::LosesConcurrent);
        // Against a live row an insert is concurrent.
        assert_eq!(
            decide(&v(20, "a"), None, Some((&gone, false))),
            Decision::WinsConcurrent
        );
    }

    #[test]
    fn values_round_trip_through_json() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let vals = vec![Value::Text("x".into()), Value::Int(3)];
        let j = values_json(&cols, &vals);
        assert_eq!(values_from_json(&cols, &j), Some(vals));
    }
}
