//! The node's sync state, kept in its own database beside the data it describes so that
//! it commits (or rolls back) with it: per-peer bundle chains and cursors
//! (`ferry_peer`), this node's ack vector (`ferry_applied`), and the ledger of applied
//! bundles (`ferry_ledger`).
//!
//! Ack vectors say, per origin node, the highest log position (at that origin) whose
//! effect a node holds. A change in the log may be deleted once every peer that must
//! receive it holds it: see [`prune`].

use std::collections::BTreeMap;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::Serialize;

use crate::capture::bookkeeping::{delete_meta, get_meta, set_meta};
use crate::capture::versions::{settle, Floors, LogEntry, Settle, MARKER};
use crate::db::DbError;
use crate::transport::sequences::Sequences;
use crate::transport::state::BlockedNote;

/// What this node knows of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerState {
    pub peer: String,
    /// Sequence number of the last bundle sealed for the peer.
    pub out_seq: u64,
    /// Hash of that bundle (the next one's `prev_hash`).
    #[serde(skip)]
    pub out_hash: [u8; 32],
    /// The log position up to which everything was exported to the peer.
    pub out_cursor: u64,
    /// When the last bundle was sealed (µs).
    pub out_at: Option<i64>,
    /// Sequence number of the last bundle applied from the peer.
    pub in_seq: u64,
    #[serde(skip)]
    pub in_hash: [u8; 32],
    /// When the last bundle from the peer was applied (µs).
    pub in_at: Option<i64>,
    /// The peer's ack vector, as its last applied bundle stated it.
    pub acks: BTreeMap<String, u64>,
    /// Since when the peer needs every row again, its own included: its bundles showed
    /// that its database went back in time ([`crate::rejoin`]). The next export to it
    /// is a full one.
    pub rebuild_us: Option<i64>,
}

fn hash_from(text: Option<String>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(t) = text {
        if let Ok(b) = hex::decode(t) {
            if b.len() == 32 {
                out.copy_from_slice(&b);
            }
        }
    }
    out
}

type PeerRow = (
    u64,
    Option<String>,
    u64,
    Option<i64>,
    u64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// Reads a peer's state, creating it if new. With `lock`, the row stays locked until
/// the transaction ends (export and import of one peer never interleave).
pub async fn peer(conn: &mut Conn, name: &str, lock: bool) -> Result<PeerState, DbError> {
    conn.exec_drop("INSERT IGNORE INTO ferry_peer (peer) VALUES (?)", (name,))
        .await
        .map_err(DbError::query(format!("registering peer {name}")))?;
    let row: Option<PeerRow> = conn
        .exec_first(
            format!(
                "SELECT out_seq, out_hash, out_cursor, out_at, in_seq, in_hash, in_at, acks, rebuild_us \
                 FROM ferry_peer WHERE peer = ?{}",
                if lock { " FOR UPDATE" } else { "" }
            ),
            (name,),
        )
        .await
        .map_err(DbError::query(format!("reading peer {name}")))?;
    let (out_seq, out_hash, out_cursor, out_at, in_seq, in_hash, in_at, acks, rebuild_us) =
        row.unwrap_or_default();
    Ok(PeerState {
        peer: name.to_string(),
        out_seq,
        out_hash: hash_from(out_hash),
        out_cursor,
        out_at,
        in_seq,
        in_hash: hash_from(in_hash),
        in_at,
        acks: parse_acks(acks),
        rebuild_us,
    })
}

/// Every peer this node has state for.
pub async fn peers(conn: &mut Conn) -> Result<Vec<PeerState>, DbError> {
    let names: Vec<String> = conn
        .query("SELECT peer FROM ferry_peer ORDER BY peer")
        .await
        .map_err(DbError::query("listing peers"))?;
    let mut out = Vec::new();
    for n in names {
        out.push(peer(conn, &n, false).await?);
    }
    Ok(out)
}

/// Records a sealed bundle for a peer.
pub async fn record_out(
    conn: &mut Conn,
    peer: &str,
    seq: u64,
    hash: &[u8; 32],
    cursor: u64,
    at_us: i64,
) -> Result<(), DbError> {
    conn.exec_drop(
        "UPDATE ferry_peer SET out_seq = ?, out_hash = ?, out_cursor = ?, out_at = ? WHERE peer = ?",
        (seq, hex::encode(hash), cursor, at_us, peer),
    )
    .await
    .map_err(DbError::query(format!("recording the bundle for {peer}")))
}

/// A peer's ack vector as `ferry_peer.acks` stores it (JSON; empty when unset).
fn parse_acks(stored: Option<String>) -> BTreeMap<String, u64> {
    stored
        .and_then(|a| serde_json::from_str(&a).ok())
        .unwrap_or_default()
}

/// Records an applied bundle from a peer, with the peer's ack vector merged into the
/// one recorded before (the greater claim per origin): what a node holds never goes
/// back, and a bundle may claim less than an earlier one, or leave an origin out
/// ([`applied_upto`]).
pub async fn record_in(
    conn: &mut Conn,
    peer: &str,
    seq: u64,
    hash: &[u8; 32],
    at_us: i64,
    acks: &BTreeMap<String, u64>,
) -> Result<(), DbError> {
    let stored: Option<Option<String>> = conn
        .exec_first("SELECT acks FROM ferry_peer WHERE peer = ?", (peer,))
        .await
        .map_err(DbError::query(format!("reading the acks of {peer}")))?;
    let mut merged = parse_acks(stored.flatten());
    for (origin, seq) in acks {
        let held = merged.entry(origin.clone()).or_default();
        *held = (*held).max(*seq);
    }
    let acks = &merged;
    conn.exec_drop(
        "UPDATE ferry_peer SET in_seq = ?, in_hash = ?, in_at = ?, acks = ? WHERE peer = ?",
        (
            seq,
            hex::encode(hash),
            at_us,
            serde_json::to_string(acks).expect("acks"),
            peer,
        ),
    )
    .await
    .map_err(DbError::query(format!("recording the bundle from {peer}")))
}

/// This node's ack vector (without its own entry, which is its stamped `seq`).
pub async fn applied(conn: &mut Conn) -> Result<BTreeMap<String, u64>, DbError> {
    let rows: Vec<(String, u64)> = conn
        .query("SELECT origin, seq FROM ferry_applied")
        .await
        .map_err(DbError::query("reading the ack vector"))?;
    Ok(rows.into_iter().collect())
}

/// The ack vector a bundle sealed from the log range (`cursor`, `horizon`] may claim,
/// read inside the export's snapshot (without this node's own entry).
///
/// `ferry_applied` in the snapshot can be ahead of the range: an import that committed
/// after the horizon was taken (or, without the barrier, after a gap the range stops
/// at, which can also split one import's entries across the horizon) raised it, but
/// its forwarded entries are not all in the bundle. Claiming that raise would tell the
/// recipient it holds changes it was never sent (issue 4). Every such import left
/// entries above the horizon, visible in the snapshot, tagged with their origin and
/// the claim it raised (`origin_seq`, one tag per import). For each such origin the
/// claim falls back to what the range itself proves: the greatest tag among its
/// entries in the range below the smallest tag above the horizon (every change of that
/// origin up to it was applied here, and logged, within the range or before it). An
/// origin with no such entry is left out, which claims nothing new: the recipient keeps
/// the greatest claim it had ([`merge_applied`], [`record_in`]).
pub async fn applied_upto(
    conn: &mut Conn,
    cursor: u64,
    horizon: u64,
) -> Result<BTreeMap<String, u64>, DbError> {
    let mut acks = applied(conn).await?;
    let ahead: Vec<(String, u64)> = conn
        .exec(
            "SELECT origin, MIN(origin_seq) FROM ferry_change \
             WHERE change_id > ? AND origin IS NOT NULL AND origin_seq IS NOT NULL \
             GROUP BY origin",
            (horizon,),
        )
        .await
        .map_err(DbError::query("reading the log past the export horizon"))?;
    for (origin, first_ahead) in ahead {
        let held: Option<u64> = conn
            .exec_first(
                "SELECT MAX(origin_seq) FROM ferry_change \
                 WHERE change_id > ? AND change_id <= ? AND origin = ? AND origin_seq < ?",
                (cursor, horizon, &origin, first_ahead),
            )
            .await
            .map_err(DbError::query("reading the log's forwarded entries"))?
            .flatten();
        match (held, acks.get(&origin).copied()) {
            (Some(h), Some(a)) => {
                acks.insert(origin, h.min(a));
            }
            _ => {
                acks.remove(&origin);
            }
        }
    }
    Ok(acks)
}

/// Raises this node's ack vector to at least `acks` (ignoring its own entry).
pub async fn merge_applied(
    conn: &mut Conn,
    me: &str,
    acks: &BTreeMap<String, u64>,
) -> Result<(), DbError> {
    for (origin, seq) in acks {
        if origin == me {
            continue;
        }
        conn.exec_drop(
            "INSERT INTO ferry_applied (origin, seq) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE seq = GREATEST(seq, VALUES(seq))",
            (origin, seq),
        )
        .await
        .map_err(DbError::query("raising the ack vector"))?;
    }
    Ok(())
}

/// The ledger's hash for (sender, seq), if that bundle was applied.
pub async fn ledger_hash(
    conn: &mut Conn,
    sender: &str,
    seq: u64,
) -> Result<Option<String>, DbError> {
    conn.exec_first(
        "SELECT hash FROM ferry_ledger WHERE sender = ? AND seq = ?",
        (sender, seq),
    )
    .await
    .map_err(DbError::query("reading the ledger"))
}

/// Writes a ledger entry (inside the bundle's transaction).
pub async fn ledger_put(
    conn: &mut Conn,
    sender: &str,
    seq: u64,
    hash: &[u8; 32],
    bundle_id: &[u8; 16],
    changes: u64,
    at_us: i64,
) -> Result<(), DbError> {
    conn.exec_drop(
        "INSERT INTO ferry_ledger (sender, seq, hash, bundle_id, changes, applied_us) \
         VALUES (?, ?, ?, ?, ?, ?)",
        (
            sender,
            seq,
            hex::encode(hash),
            hex::encode(bundle_id),
            changes,
            at_us,
        ),
    )
    .await
    .map_err(DbError::query("writing the ledger"))
}

/// The condition (on a `ferry_outbox` row; parameters: the peer's ack of this node's
/// positions, twice) under which the peer has applied that bundle. The peer's ack is the
/// horizon of the last bundle from here it applied, and bundles apply in order. So a
/// bundle whose horizon is below the ack was applied, and so was the one that moved the
/// horizon to the ack. A bundle that did not move the horizon with the ack's horizon
/// was not necessarily applied: it waits for the ack of a later bundle, instead of
/// leaving the outbox before it was ever carried (issue 4). A heartbeat takes a log
/// position of its own to move the horizon ([`crate::capture::versions::mark_position`]);
/// only when the export could not reach it (a transaction open on the log) does it
/// wait like that. Rows from before `prev_cursor` existed count as having moved the
/// horizon.
pub const ACKNOWLEDGED_BUNDLE: &str = "(cursor_seq < ? OR (cursor_seq = ? \
     AND (prev_cursor IS NULL OR prev_cursor < cursor_seq)))";

/// The condition under which a change-log entry no longer needs to go to `peer`, given
/// the peer's ack vector: it originated there, came from there, or the peer holds it.
/// `seq` is the SQL expression of the entry's own sequence number.
///
/// The condition is never NULL (`<=>`, `IFNULL`): `NOT` of it must hold for every entry
/// still owed to the peer. With `=`, a local entry (origin and via NULL) made the whole
/// condition NULL, and `ferry status` counted no unacknowledged local changes (issue 4).
///
/// An entry of this node's own origin that came back through a peer (a full export to
/// a node that rejoined after a restore, `crate::rejoin`) is held like a local one: by
/// its position, once the peer acknowledged a bundle that covered it.
fn done_for(me: &str, peer: &str, acks: &BTreeMap<String, u64>, seq: &str) -> String {
    let q = crate::db::literal;
    let mine = acks.get(me).copied().unwrap_or(0);
    let mut arms = String::new();
    for (origin, seq) in acks {
        if origin != me {
            arms.push_str(&format!(" WHEN {} THEN {seq}", q(origin)));
        }
    }
    let forwarded = if arms.is_empty() {
        "FALSE".to_string()
    } else {
        format!("IFNULL(origin_seq <= CASE origin{arms} ELSE 0 END, FALSE)")
    };
    format!(
        "(((origin IS NULL OR origin <=> {me}) AND {seq} <= {mine}) OR origin <=> {p} \
         OR via <=> {p} OR (origin IS NOT NULL AND {forwarded}))",
        p = q(peer),
        me = q(me)
    )
}

/// What pruning needs to know of one peer: its name, its ack vector, and the export
/// cursor (the log position up to which it was sent everything).
pub type PeerAcks = (String, BTreeMap<String, u64>, u64);

/// Entries folded per round while pruning.
const PRUNE_BATCH: usize = 5000;

/// The `ferry_meta` entry holding the highest position pruning ever deleted.
const PRUNED_UPTO: &str = "pruned_upto";

/// The `ferry_meta` entry (per peer) holding the position up to which the log was
/// already pruned when the peer's first export after it ran ([`note_missed`]).
fn missed_key(peer: &str) -> String {
    format!("missed_before:{peer}")
}

/// Forgets what [`note_missed`] noted for `peer`: a full export gave it every row.
pub async fn clear_missed(conn: &mut Conn, peer: &str) -> Result<(), DbError> {
    delete_meta(conn, &missed_key(peer)).await
}

/// The highest log position pruning has deleted (0 when it never did).
pub async fn pruned_upto(conn: &mut Conn) -> Result<u64, DbError> {
    Ok(get_meta(conn, PRUNED_UPTO)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Pruning never passes the export cursor of a configured peer, so a peer whose cursor
/// is below what was pruned became a peer afterwards (added, or removed and added
/// again): the changes pruned before never reach it. Notes that for status, once, and
/// returns the position (`None` when the peer missed nothing).
pub async fn note_missed(
    conn: &mut Conn,
    peer: &str,
    out_cursor: u64,
) -> Result<Option<u64>, DbError> {
    let upto = pruned_upto(conn).await?;
    if out_cursor >= upto {
        return Ok(None);
    }
    if get_meta(conn, &missed_key(peer)).await?.is_none() {
        set_meta(conn, &missed_key(peer), &upto.to_string()).await?;
    }
    Ok(Some(upto))
}

/// What [`note_missed`] noted for `peer`.
pub async fn missed_before(conn: &mut Conn, peer: &str) -> Result<Option<u64>, DbError> {
    Ok(get_meta(conn, &missed_key(peer))
        .await?
        .and_then(|v| v.parse().ok()))
}

/// Deletes change-log entries every configured peer holds, after folding each row's
/// latest pruned version into `ferry_row` (so the row's history keeps its head), and the
/// version floors no remaining entry needs. Never goes past any peer's export cursor.
/// Returns how many entries went.
pub async fn prune(conn: &mut Conn, me: &str, peers: &[PeerAcks]) -> Result<u64, DbError> {
    if peers.is_empty() {
        return Ok(0); // with no peer, nothing has been delivered: keep everything
    }
    let below = peers.iter().map(|p| p.2).min().unwrap_or(0);
    let conds: Vec<String> = peers
        .iter()
        .map(|(p, acks, _)| done_for(me, p, acks, "change_id"))
        .collect();
    let cond = format!("change_id <= {below} AND {}", conds.join(" AND "));
    let floors = Floors::load(conn).await?;
    let mut after = 0u64;
    let mut pruned = 0;
    loop {
        let rows: Vec<mysql_async::Row> = conn
            .exec(
                format!(
                    "SELECT {} FROM ferry_change WHERE {cond} AND change_id > ? \
                     ORDER BY change_id LIMIT {PRUNE_BATCH}",
                    LogEntry::COLUMNS
                ),
                (after,),
            )
            .await
            .map_err(DbError::query("reading the change log to prune"))?;
        let Some(last) = rows.len().checked_sub(1) else {
            break;
        };
        let entries: Vec<LogEntry> = rows.into_iter().map(LogEntry::from_row).collect();
        after = entries[last].change_id;
        let settled: Vec<Settle> = entries
            .iter()
            .filter(|e| e.op != MARKER)
            .map(|e| Settle {
                table: e.table.clone(),
                row_key: e.row_key.clone(),
                version: e.version(&floors, me),
                deleted: e.op == "D",
                at: e.change_id,
                via: e.via.clone(),
            })
            .collect();
        settle(conn, &settled).await?;
        // By position, not by the range: a range delete locks the entry after its end,
        // which an open transaction may still hold (a capture trigger's entry), and
        // then waits for that transaction; pruning must not wait for OpenMRS (issue 4).
        // The LIMIT keeps the plan on the primary key: for a list covering most of the
        // table MariaDB scans it whole, and waits on the same entry.
        let ids: Vec<String> = entries.iter().map(|e| e.change_id.to_string()).collect();
        conn.query_drop(format!(
            "DELETE FROM ferry_change WHERE change_id IN ({}) LIMIT {}",
            ids.join(","),
            ids.len()
        ))
        .await
        .map_err(DbError::query("pruning the change log"))?;
        pruned += conn.affected_rows();
        if entries.len() < PRUNE_BATCH {
            break;
        }
    }
    if pruned > 0 && after > pruned_upto(conn).await? {
        set_meta(conn, PRUNED_UPTO, &after.to_string()).await?;
    }
    // Floors before the one in force at the oldest remaining entry are done with.
    let oldest: Option<Option<u64>> = conn
        .query_first("SELECT MIN(change_id) FROM ferry_change")
        .await
        .map_err(DbError::query("reading the oldest log entry"))?;
    let keep = match oldest.flatten() {
        Some(o) => floors.at(o).map(|f| f.from),
        None => floors.latest().map(|f| f.from),
    };
    if let Some(keep) = keep {
        conn.exec_drop("DELETE FROM ferry_floor WHERE from_change < ?", (keep,))
            .await
            .map_err(DbError::query("pruning the version floors"))?;
    }
    Ok(pruned)
}

/// Entries of the change log not yet held by `peer`.
pub async fn pending_for(
    conn: &mut Conn,
    me: &str,
    peer: &str,
    acks: &BTreeMap<String, u64>,
) -> Result<(u64, Option<i64>), DbError> {
    let row: Option<(u64, Option<i64>)> = conn
        .query_first(format!(
            "SELECT COUNT(*), MIN(wall_us) FROM ferry_change WHERE op <> '{MARKER}' AND NOT {}",
            done_for(me, peer, acks, "change_id")
        ))
        .await
        .map_err(DbError::query("counting unacknowledged changes"))?;
    Ok(row.unwrap_or((0, None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_condition_names_every_origin() {
        let acks: BTreeMap<String, u64> = [("hub".to_string(), 7), ("a".to_string(), 3)]
            .into_iter()
            .collect();
        let c = done_for("a", "hub", &acks, "change_id");
        assert!(c.contains("change_id <= 3"), "{c}");
        assert!(c.contains("WHEN 'hub' THEN 7"), "{c}");
        assert!(!c.contains("WHEN 'a'"), "{c}");
        assert!(c.contains("via <=> 'hub'"), "{c}");
        assert!(c.contains("origin <=> 'hub'"), "{c}");
        assert!(
            c.contains("(origin IS NULL OR origin <=> 'a') AND change_id <= 3"),
            "{c}"
        );
    }
}

/// One peer's line in `ferry status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub peer: String,
    pub last_sent_seq: u64,
    pub last_sent_us: Option<i64>,
    pub last_received_seq: u64,
    pub last_received_us: Option<i64>,
    /// Bundles sealed for the peer and not yet acknowledged.
    pub unacknowledged_bundles: u64,
    /// Changes the peer does not hold yet, and the age of the oldest (seconds).
    pub unacknowledged_changes: u64,
    pub oldest_unacknowledged_s: Option<i64>,
    /// Bundles from the peer waiting in the inbox for a missing one.
    pub held_bundles: Vec<u64>,
    /// The bundle they wait for, when some are held.
    pub waiting_for: Option<u64>,
    /// The peer's next bundle when it is in the inbox and the last import failed to
    /// apply it: its number, the error and since when.
    pub blocked: Option<BlockedNote>,
    /// When the database's bundle numbers for the peer are behind the state
    /// directory's record (a database restored from a backup): the error export and
    /// import stop with.
    pub behind_record: Option<String>,
    /// When the peer became a peer after the log was pruned up to this position: the
    /// changes up to it never reach it ([`note_missed`]).
    pub missed_before: Option<u64>,
    /// Since when the peer needs every row: its database went back in time (restored
    /// from a backup). The next export sends every row.
    pub rebuild_since_us: Option<i64>,
    /// This node rejoined after a restore from a backup and waits for the peer to send
    /// every row: `to_ask` (the next bundle for the peer asks) or `asked`.
    pub rejoining: Option<&'static str>,
}

/// The status of every configured peer.
pub async fn peer_status(
    conn: &mut Conn,
    me: &str,
    peers: &[String],
    inbox: &[crate::bundle::BundleName],
    notes: &BTreeMap<String, BlockedNote>,
    record: &Sequences,
    now_us: i64,
) -> Result<Vec<PeerStatus>, DbError> {
    let mut out = Vec::new();
    let rejoin = crate::rejoin::Rejoin::load(conn).await?;
    for p in peers {
        let ps = peer(conn, p, false).await?;
        let (changes, oldest) = pending_for(conn, me, p, &ps.acks).await?;
        let bundles: Option<u64> = conn
            .exec_first("SELECT COUNT(*) FROM ferry_outbox WHERE peer = ?", (p,))
            .await
            .map_err(DbError::query("counting unacknowledged bundles"))?;
        let held: Vec<u64> = inbox
            .iter()
            .filter(|n| &n.sender == p && n.recipient == me && n.seq > ps.in_seq + 1)
            .map(|n| n.seq)
            .collect();
        let next_waiting = inbox
            .iter()
            .any(|n| &n.sender == p && n.recipient == me && n.seq == ps.in_seq + 1);
        out.push(PeerStatus {
            peer: p.clone(),
            last_sent_seq: ps.out_seq,
            last_sent_us: ps.out_at,
            last_received_seq: ps.in_seq,
            last_received_us: ps.in_at,
            unacknowledged_bundles: bundles.unwrap_or(0),
            unacknowledged_changes: changes,
            oldest_unacknowledged_s: oldest.map(|us| (now_us - us).max(0) / 1_000_000),
            waiting_for: (!held.is_empty() && !next_waiting).then_some(ps.in_seq + 1),
            held_bundles: held,
            blocked: notes
                .get(p)
                .filter(|n| next_waiting && n.seq == ps.in_seq + 1)
                .cloned(),
            behind_record: record
                .check(p, ps.out_seq, ps.in_seq)
                .err()
                .map(|e| e.to_string()),
            missed_before: missed_before(conn, p).await?,
            rebuild_since_us: ps.rebuild_us,
            rejoining: rejoin.as_ref().and_then(|r| match r.peers.get(p.as_str()) {
                Some(w) if w.asked_at.is_some() => Some("asked"),
                Some(_) => Some("to_ask"),
                None => None,
            }),
        });
    }
    Ok(out)
}
