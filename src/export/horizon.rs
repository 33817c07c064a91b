//! The export horizon: the log position up to which no entry can still appear.
//!
//! Triggers take positions (`change_id`) when they write, but transactions commit in
//! any order: an exporter that went "up to the greatest position it sees" could pass
//! over an entry of a transaction still open, which then commits below the cursor and
//! is never sent. [`barrier`] closes that gap without writing anything: it takes a
//! read lock on the log table for an instant. MariaDB grants it only once no open
//! transaction has written to the log (a writer keeps its metadata lock until it
//! commits), so at that moment every position up to the greatest one is final. Waiting
//! for it never holds writers back (a pending read lock does not queue them), and it is
//! held only while the greatest position is read.
//!
//! When the lock cannot be had within [`LOCK_WAIT_S`] (a long transaction is open, or
//! a busy server never pauses), the export goes up to the end of the unbroken run of
//! positions after its cursor instead ([`contiguous_end`]): positions are handed out
//! once each, so where every position of a run is visible, nothing more can appear in
//! it. A gap (an open or rolled-back transaction) stops the run until a later barrier
//! settles it.

use mysql_async::prelude::*;
use mysql_async::Conn;

use crate::capture::versions::last_position;
use crate::db::DbError;

/// Seconds to wait for the log's read lock before falling back to the unbroken run.
pub const LOCK_WAIT_S: u32 = 2;

/// MariaDB's "lock wait timeout exceeded".
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

/// The last position handed out, taken when no transaction holds unfinished log
/// entries; `None` when the lock did not come in time.
pub async fn barrier(conn: &mut Conn) -> Result<Option<u64>, DbError> {
    conn.query_drop(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_S}"))
        .await
        .map_err(DbError::query("setting the lock wait"))?;
    let locked = conn.query_drop("LOCK TABLES ferry_change READ").await;
    let result = match locked {
        Err(mysql_async::Error::Server(e)) if e.code == ER_LOCK_WAIT_TIMEOUT => Ok(None),
        Err(e) => Err(DbError::Query {
            doing: "waiting for open transactions on the change log".into(),
            source: e,
        }),
        Ok(()) => {
            // Every position handed out so far is final now (entries rolled back left
            // gaps that nothing will fill).
            let last = last_position(conn).await;
            let unlocked = conn.query_drop("UNLOCK TABLES").await;
            let last = last?;
            unlocked.map_err(DbError::query("releasing the change log"))?;
            Ok(Some(last))
        }
    };
    conn.query_drop("SET SESSION lock_wait_timeout = DEFAULT")
        .await
        .map_err(DbError::query("resetting the lock wait"))?;
    result
}

/// Follows positions as they stream by in order, after `cursor`: the end of their
/// unbroken run so far.
#[derive(Debug, Clone, Copy)]
pub struct Contiguous {
    pub end: u64,
    pub broken: bool,
}

impl Contiguous {
    pub fn after(cursor: u64) -> Contiguous {
        Contiguous {
            end: cursor,
            broken: false,
        }
    }

    /// Takes the next position seen; false once the run is broken (by this one or before).
    pub fn take(&mut self, position: u64) -> bool {
        if !self.broken && position == self.end + 1 {
            self.end = position;
            true
        } else {
            self.broken = true;
            false
        }
    }
}

/// The end of the unbroken run of positions in `positions` (ascending) after `cursor`.
pub fn contiguous_end(cursor: u64, positions: impl IntoIterator<Item = u64>) -> u64 {
    let mut c = Contiguous::after(cursor);
    for p in positions {
        if !c.take(p) {
            break;
        }
    }
    c.end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_stops_at_the_first_gap() {
        assert_eq!(contiguous_end(10, [11, 12, 13]), 13);
        assert_eq!(contiguous_end(10, [11, 13, 14]), 11);
        assert_eq!(contiguous_end(10, [12]), 10);
        assert_eq!(contiguous_end(10, []), 10);
    }
}
