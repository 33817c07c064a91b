//! Bringing a node whose database went back in time into step again: `ferry rejoin`.
//!
//! A database restored from a backup is behind the state directory's record
//! ([`Sequences`]): the bundles this node sealed and applied since the backup are gone
//! from it, and export and import refuse it. The record keeps what is needed to go on:
//!
//! - **The bundle chains.** Each peer's last bundle sealed and applied, with its hash,
//!   go back into `ferry_peer`, so the next bundle each way carries on the sequence the
//!   peer holds. A copy of a bundle applied before the restore that arrives again is a
//!   duplicate ([`Rejoin::lost`]).
//! - **Log positions.** The peers know this node's log positions up to the last
//!   bundle's horizon (`sent_upto`): their ack vectors name them, and a change at a
//!   position they claim would never be sent on. Entries made since the restore took
//!   positions from the backup's counter, maybe below that. They are told apart from
//!   the backup's by their wall time: the record holds the database's clock just after
//!   each commit the backup lacks, and every entry of the backup was written before
//!   that, every entry since the restore after it. They move, in their order, after
//!   every position the peers know ([`Rejoin::boundary`]), and the counter with them.
//! - **The rows the backup lacks.** What this node applied from a peer, and what it
//!   sent a peer, after the backup is no longer here, but the peer holds it. The first
//!   bundle sealed for such a peer after the rejoin says so: its entry for the peer is
//!   0, which no other bundle states (an entry that would be 0 is left out). The peer
//!   then sends every row with its next export, this node's own rows too
//!   (`ferry_peer.rebuild_us`). A bundle from the peer that acknowledges that
//!   first bundle comes after it: the rejoin with that peer is complete.
//! - **No false conflicts.** Until a peer has answered, a row whose version here is
//!   from the backup and was sent to that peer before the failure (its head at or
//!   below [`RejoinPeer::seen_upto`]) takes a greater version from the peer as a
//!   fast-forward: the peer made it after seeing ours, or recorded the conflict where
//!   the two met. A row changed here since then takes its backup version, arriving
//!   again in the answer, as stale.
//!
//! What no node holds is lost: changes made here after the backup that no bundle
//! carried before the failure. The report says so; docs/operations.md tells the
//! operator what to check.

use std::collections::BTreeMap;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::capture::bookkeeping::{check_node, delete_meta, get_meta, set_meta};
use crate::capture::clock::db_now_us;
use crate::capture::versions::{last_position, MARKER};
use crate::capture::CaptureError;
use crate::db::{release_lock, take_lock, DbError};
use crate::export::{begin, finish};
use crate::node::NodeContext;
use crate::state;
use crate::transport::sequences::Sequences;

/// The `ferry_meta` entry that holds a rejoin still in progress.
pub const REJOIN_META: &str = "rejoin";

/// Errors of `ferry rejoin`.
#[derive(Debug, thiserror::Error)]
pub enum RejoinError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("this database is not behind this node's record: there is nothing to rejoin\nhint: `ferry rejoin` is for a database restored from a backup (export and import say so); export and import work as they are")]
    NotBehind,
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error("another ferry export or import is running on this database\nhint: wait for it to finish, then run `ferry rejoin` again")]
    Busy,
    #[error("the state directory's record of {peer} lacks what rejoin needs (the {what}): it was written by a ferry from before `ferry rejoin`\nhint: nothing was changed. Put the database back as it was before the restore if you can; else set this node up anew under a new name (see \"A database restored from a backup\" in docs/operations.md)")]
    Unrecorded { peer: String, what: &'static str },
    #[error("the database's clock reads {now} UTC, not later than when this node last sealed or applied a bundle ({last} UTC)\nhint: nothing was changed. Set this machine's clock right (and the database server's), then run `ferry rejoin` again")]
    ClockBehind { now: String, last: String },
    #[error("cannot tell the changes made since the restore from those in the backup: log entry {position} was written at {written} UTC, out of order with the entries around it\nhint: nothing was changed. The database's clock was probably wrong for a while after the restore. Ask for help before syncing this node (see \"A database restored from a backup\" in docs/operations.md)")]
    Unclear { position: u64, written: String },
}

/// A rejoin in progress, as `ferry_meta` keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejoin {
    /// When it ran (µs).
    pub at_us: i64,
    /// Every entry of the backup is at or below this log position; the entries made
    /// since the restore, and every later one, are above it.
    pub boundary: u64,
    /// The peers that hold what the backup lacks, until each has sent every row.
    pub peers: BTreeMap<String, RejoinPeer>,
    /// Per peer, the bundles from it applied before the failure and lost with the
    /// restore (first, last): a copy arriving again, even long after, is a duplicate.
    #[serde(default)]
    pub lost: BTreeMap<String, (u64, u64)>,
}

/// One peer of a rejoin in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinPeer {
    /// The log position up to which this node had sent the peer everything before the
    /// failure: a row whose version here is from there was seen by the peer.
    #[serde(default)]
    pub seen_upto: u64,
    /// The horizon of the first bundle sealed for the peer after the rejoin, which
    /// asked it for every row (`None` until it is sealed).
    pub asked_at: Option<u64>,
}

impl Rejoin {
    /// The rejoin in progress, if any.
    pub async fn load(conn: &mut Conn) -> Result<Option<Rejoin>, DbError> {
        Ok(get_meta(conn, REJOIN_META)
            .await?
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// The same, locked until the transaction ends: export and import both change it.
    async fn load_for_update(conn: &mut Conn) -> Result<Option<Rejoin>, DbError> {
        let v: Option<String> = conn
            .exec_first(
                "SELECT value FROM ferry_meta WHERE name = ? FOR UPDATE",
                (REJOIN_META,),
            )
            .await
            .map_err(DbError::query("reading the rejoin in progress"))?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    async fn store(&self, conn: &mut Conn) -> Result<(), DbError> {
        if self.peers.is_empty() && self.lost.is_empty() {
            delete_meta(conn, REJOIN_META).await
        } else {
            set_meta(
                conn,
                REJOIN_META,
                &serde_json::to_string(self).expect("json"),
            )
            .await
        }
    }

    /// Whether bundle `seq` from `peer` was applied before the failure (lost with the
    /// restore, and arriving again).
    pub fn lost(&self, peer: &str, seq: u64) -> bool {
        self.lost
            .get(peer)
            .is_some_and(|&(first, last)| (first..=last).contains(&seq))
    }

    /// While `peer` has not sent every row: the log position at or below which a
    /// row's version here is from the backup and was seen by the peer.
    pub fn seen_by(&self, peer: &str) -> Option<u64> {
        self.peers.get(peer).map(|p| p.seen_upto)
    }

    /// Whether the next bundle sealed for `peer` must ask it for every row.
    pub fn asks(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.asked_at.is_none())
    }
}

/// Export's part, in the transaction that records a bundle sealed for `peer` up to
/// `horizon`: notes that it asked the peer for every row.
pub async fn note_asked(conn: &mut Conn, peer: &str, horizon: u64) -> Result<(), DbError> {
    let Some(mut r) = Rejoin::load_for_update(conn).await? else {
        return Ok(());
    };
    if let Some(p) = r.peers.get_mut(peer) {
        if p.asked_at.is_none() {
            p.asked_at = Some(horizon);
            r.store(conn).await?;
        }
    }
    Ok(())
}

/// Import's part, in the transaction of a bundle from `peer` that acknowledges this
/// node's positions up to `acked`: once that covers the bundle that asked, the peer
/// has sent every row, and the rejoin with it is complete. Returns whether it was.
pub async fn note_answered(conn: &mut Conn, peer: &str, acked: u64) -> Result<bool, DbError> {
    let Some(mut r) = Rejoin::load_for_update(conn).await? else {
        return Ok(false);
    };
    let done = r
        .peers
        .get(peer)
        .and_then(|p| p.asked_at)
        .is_some_and(|asked| acked >= asked);
    if done {
        r.peers.remove(peer);
        r.store(conn).await?;
    }
    Ok(done)
}

/// What `ferry rejoin` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RejoinReport {
    pub peers: Vec<PeerRejoin>,
    /// Log entries made since the restore, moved after the positions the peers know.
    pub moved_entries: u64,
    /// Their first position before, and after.
    pub moved_from: Option<u64>,
    pub moved_to: Option<u64>,
    /// The log position at or below which every row's version is from the backup.
    pub boundary: u64,
}

/// One peer's numbers, as the database had them and as the record put them back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerRejoin {
    pub peer: String,
    /// Whether its next bundle asks it for every row (a peer no longer configured gets
    /// its numbers back, and nothing is sealed for it).
    pub asked: bool,
    /// Bundles sealed for the peer: (the database said, the record says).
    pub sealed: (u64, u64),
    /// Bundles applied from the peer: (the database said, the record says).
    pub applied: (u64, u64),
}

/// Puts a database restored from a backup back in step with this node's record.
pub async fn rejoin(node: &NodeContext) -> Result<RejoinReport, RejoinError> {
    let mut conn = node.db.connect().await?;
    check_node(&mut conn, node.name()).await?;
    // A backup from before the last upgrade of ferry: its tables first.
    crate::capture::bookkeeping::install(&mut conn).await?;
    // The triggers' clock offset is the config's (else `ferry setup` first).
    crate::export::check_clock(&mut conn, node).await?;
    if !take_lock(&mut conn, crate::export::EXPORT_LOCK, 0).await? {
        return Err(RejoinError::Busy);
    }
    if !take_lock(&mut conn, crate::apply::IMPORT_LOCK, 0).await? {
        release_lock(&mut conn, crate::export::EXPORT_LOCK).await;
        return Err(RejoinError::Busy);
    }
    let result = run(&mut conn, node).await;
    release_lock(&mut conn, crate::apply::IMPORT_LOCK).await;
    release_lock(&mut conn, crate::export::EXPORT_LOCK).await;
    result
}

async fn run(conn: &mut Conn, node: &NodeContext) -> Result<RejoinReport, RejoinError> {
    let record = Sequences::load(&node.dirs);
    let mut report = RejoinReport::default();
    // The commits the backup lacks happened after it was taken: the latest of them is
    // a time every entry of the backup precedes.
    let mut after_backup_us: Option<i64> = None;
    // Every log position a peer may know of: up to the last bundle sealed for it.
    let mut known_upto = 0u64;
    let mut behind = Vec::new();
    // The backup's last export: entries after its horizon were written after it.
    let mut last_export = Backup::default();
    for (peer, rec) in &record.peers {
        let ps = state::peer(conn, peer, false).await?;
        known_upto = known_upto.max(ps.out_cursor);
        if ps.out_cursor > last_export.horizon {
            last_export = Backup {
                horizon: ps.out_cursor,
                sealed_us: ps.out_at.unwrap_or(0),
            };
        }
        let sealed = ps.out_seq < rec.sent;
        let applied = ps.in_seq < rec.applied;
        let missing = |what| RejoinError::Unrecorded {
            peer: peer.clone(),
            what,
        };
        if sealed {
            rec.sent_hash
                .as_ref()
                .ok_or(missing("hash of the last bundle sealed"))?;
            known_upto = known_upto.max(rec.sent_upto.ok_or(missing("last export horizon"))?);
            let at = rec.sent_db_us.ok_or(missing("time of the last export"))?;
            after_backup_us = Some(after_backup_us.map_or(at, |t| t.max(at)));
        } else if let Some(upto) = rec.sent_upto {
            known_upto = known_upto.max(upto);
        }
        if applied {
            rec.applied_hash
                .as_ref()
                .ok_or(missing("hash of the last bundle applied"))?;
            let at = rec
                .applied_db_us
                .ok_or(missing("time of the last import"))?;
            after_backup_us = Some(after_backup_us.map_or(at, |t| t.max(at)));
        }
        if sealed || applied {
            behind.push((peer.clone(), ps, rec.clone()));
        }
    }
    let Some(after_backup_us) = after_backup_us else {
        return Err(RejoinError::NotBehind);
    };
    let now_us = db_now_us(conn, node.clock.offset_us).await?;
    if now_us <= after_backup_us {
        return Err(RejoinError::ClockBehind {
            now: utc(conn, now_us).await?,
            last: utc(conn, after_backup_us).await?,
        });
    }

    // The log: entries since the restore move after every position a peer knows.
    // Nothing writes to the log meanwhile (OpenMRS's writes wait a moment).
    conn.query_drop("LOCK TABLES ferry_change WRITE")
        .await
        .map_err(DbError::query("locking the change log"))?;
    let moved = move_entries(conn, after_backup_us, &last_export, known_upto, &mut report).await;
    let unlocked = conn.query_drop("UNLOCK TABLES").await;
    moved?;
    unlocked.map_err(DbError::query("unlocking the change log"))?;

    // The chains, and the rejoin in progress.
    begin(conn).await?;
    let stored = async {
        let mut rejoin = Rejoin::load_for_update(conn).await?.unwrap_or_default();
        rejoin.at_us = node.clock.now_us();
        rejoin.boundary = rejoin.boundary.max(report.boundary);
        for (peer, ps, rec) in &behind {
            state::peer(conn, peer, true).await?;
            if ps.out_seq < rec.sent {
                conn.exec_drop(
                    "UPDATE ferry_peer SET out_seq = ?, out_hash = ?, \
                     out_cursor = GREATEST(out_cursor, ?) WHERE peer = ?",
                    (rec.sent, &rec.sent_hash, rec.sent_upto.unwrap_or(0), peer),
                )
                .await
                .map_err(DbError::query(format!("restoring the chain to {peer}")))?;
            }
            // A peer no longer configured gets its numbers back (it may be added again)
            // but is not asked: no bundle goes to it.
            let entry = RejoinPeer {
                seen_upto: ps.out_cursor.max(rec.sent_upto.unwrap_or(0)),
                asked_at: None,
            };
            if ps.in_seq < rec.applied {
                conn.exec_drop(
                    "UPDATE ferry_peer SET in_seq = ?, in_hash = ? WHERE peer = ?",
                    (rec.applied, &rec.applied_hash, peer),
                )
                .await
                .map_err(DbError::query(format!("restoring the chain from {peer}")))?;
                let first = rejoin
                    .lost
                    .get(peer)
                    .map_or(ps.in_seq + 1, |l| l.0.min(ps.in_seq + 1));
                rejoin.lost.insert(peer.clone(), (first, rec.applied));
            }
            let asked = node.config.peer(peer).is_some();
            if asked {
                rejoin.peers.insert(peer.clone(), entry);
            }
            report.peers.push(PeerRejoin {
                peer: peer.clone(),
                asked,
                sealed: (ps.out_seq, rec.sent.max(ps.out_seq)),
                applied: (ps.in_seq, rec.applied.max(ps.in_seq)),
            });
        }
        rejoin.store(conn).await?;
        Ok::<(), RejoinError>(())
    }
    .await;
    finish(conn, stored).await?;
    tracing::warn!(
        peers = report.peers.len(),
        moved = report.moved_entries,
        boundary = report.boundary,
        "rejoined after a restore from a backup"
    );
    Ok(report)
}

/// The last bundle the backup itself records as sealed: its horizon, and when.
#[derive(Debug, Default)]
struct Backup {
    horizon: u64,
    sealed_us: i64,
}

/// How much earlier than the backup's last export an entry after that export's
/// horizon may say it was written (the export took its horizon, then its clock
/// reading; the database's and ferry's clocks may differ a little).
const CLOCK_SLACK_US: i64 = 10 * 60 * 1_000_000;

/// Under the log's write lock: finds the entries written since the restore (local
/// entries after `after_backup_us`, and everything after the first of them) and moves
/// them, in order, after `known_upto` and after every position of the backup.
async fn move_entries(
    conn: &mut Conn,
    after_backup_us: i64,
    backup: &Backup,
    known_upto: u64,
    report: &mut RejoinReport,
) -> Result<(), RejoinError> {
    // Markers take ferry's clock, not the database's: they are left out of the test.
    let first: Option<Option<u64>> = conn
        .exec_first(
            format!(
                "SELECT MIN(change_id) FROM ferry_change \
                 WHERE origin IS NULL AND op <> '{MARKER}' AND wall_us > ?"
            ),
            (after_backup_us,),
        )
        .await
        .map_err(DbError::query("finding the entries made since the restore"))?;
    let first = first.flatten();
    // An entry of the backup after its last export's horizon was written after that
    // export; one that says it was written well before was written since the restore
    // by a clock that was behind (and set right later). It cannot be told apart.
    let early: Option<(u64, i64)> = conn
        .exec_first(
            format!(
                "SELECT change_id, wall_us FROM ferry_change WHERE change_id > ? \
                 AND change_id < ? AND origin IS NULL AND op <> '{MARKER}' AND wall_us < ? \
                 ORDER BY change_id LIMIT 1"
            ),
            (
                backup.horizon,
                first.unwrap_or(u64::MAX),
                backup.sealed_us.saturating_sub(CLOCK_SLACK_US),
            ),
        )
        .await
        .map_err(DbError::query("checking the entries of the backup"))?;
    if let Some((position, wall_us)) = early {
        let written = utc(conn, wall_us).await?;
        return Err(RejoinError::Unclear { position, written });
    }
    let Some(first) = first else {
        // Nothing written since the restore: new entries start after every known one
        // (and after the counter, where a version settled outside the log sits).
        report.boundary = known_upto.max(last_position(conn).await?) + 1;
        set_counter(conn, report.boundary + 1).await?;
        return Ok(());
    };
    // Since the restore no import ran (refused), so every entry from `first` on is
    // local and later than the backup; anything else means a clock that jumped.
    let odd: Option<(u64, i64)> = conn
        .exec_first(
            format!(
                "SELECT change_id, wall_us FROM ferry_change WHERE change_id > ? \
                 AND (origin IS NOT NULL OR (op <> '{MARKER}' AND wall_us <= ?)) \
                 ORDER BY change_id LIMIT 1"
            ),
            (first, after_backup_us),
        )
        .await
        .map_err(DbError::query(
            "checking the entries made since the restore",
        ))?;
    if let Some((position, wall_us)) = odd {
        let written = utc(conn, wall_us).await?;
        return Err(RejoinError::Unclear { position, written });
    }
    let (count, last): (u64, u64) = conn
        .exec_first(
            "SELECT COUNT(*), COALESCE(MAX(change_id), 0) FROM ferry_change WHERE change_id >= ?",
            (first,),
        )
        .await
        .map_err(DbError::query(
            "counting the entries made since the restore",
        ))?
        .unwrap_or((0, 0));
    // A version settled outside the log just before the backup sits at the counter the
    // backup held, which is at most `first`.
    report.boundary = known_upto.max(first - 1) + 1;
    let shift = report.boundary + 1 - first;
    conn.exec_drop(
        "UPDATE ferry_change SET change_id = change_id + ? WHERE change_id >= ? \
         ORDER BY change_id DESC",
        (shift, first),
    )
    .await
    .map_err(DbError::query("moving the entries made since the restore"))?;
    set_counter(conn, last + shift + 1).await?;
    report.moved_entries = count;
    report.moved_from = Some(first);
    report.moved_to = Some(first + shift);
    Ok(())
}

/// A clock reading (µs since the epoch) as a UTC date and time, for a message.
async fn utc(conn: &mut Conn, us: i64) -> Result<String, DbError> {
    let text: Option<String> = conn
        .exec_first(
            "SELECT DATE_FORMAT(TIMESTAMP '1970-01-01 00:00:00' + INTERVAL ? MICROSECOND, '%Y-%m-%d %H:%i:%s')",
            (us,),
        )
        .await
        .map_err(DbError::query("formatting a time"))?;
    Ok(text.unwrap_or_else(|| format!("{us} µs")))
}

async fn set_counter(conn: &mut Conn, next: u64) -> Result<(), DbError> {
    conn.query_drop(format!("ALTER TABLE ferry_change AUTO_INCREMENT = {next}"))
        .await
        .map_err(DbError::query("moving the log's counter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejoin_knows_lost_bundles_and_whom_it_asks() {
        let mut r = Rejoin::default();
        r.peers.insert(
            "hub".into(),
            RejoinPeer {
                seen_upto: 70,
                asked_at: None,
            },
        );
        r.lost.insert("hub".into(), (4, 6));
        assert!(r.lost("hub", 4) && r.lost("hub", 6));
        assert!(!r.lost("hub", 3) && !r.lost("hub", 7) && !r.lost("spoke", 5));
        assert!(r.asks("hub") && !r.asks("spoke"));
        assert_eq!((r.seen_by("hub"), r.seen_by("spoke")), (Some(70), None));
        r.peers.get_mut("hub").unwrap().asked_at = Some(90);
        assert!(!r.asks("hub"));
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Rejoin>(&text).unwrap(), r);
        // The hub answered: its lost bundles are still known.
        r.peers.remove("hub");
        assert!(r.lost("hub", 5) && r.seen_by("hub").is_none());
    }
}
