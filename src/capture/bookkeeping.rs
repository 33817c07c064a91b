//! ferry's bookkeeping tables, all named `ferry_*`, in the OpenMRS database itself so
//! that a change and its log entry commit together.
//!
//! - `ferry_meta`: key/value facts (bookkeeping version, the stored plan and its
//!   fingerprint, the clock offset baked into the triggers).
//! - `ferry_table`: per synced table, whether capture is enabled (the operator's
//!   choice, kept across `setup`), the table's shape at the last setup (for drift), and
//!   the highest id counter export has seen (a truncate sets it back:
//!   [`counters`](super::counters)).
//! - `ferry_change`: the change log. `change_id` is an entry's position: triggers append
//!   local changes (no version: it follows from the entry, see
//!   [`versions`](super::versions)); the importer appends the changes it applied and must
//!   forward, with their origin, version and base and the peer they came through (`via`).
//!   `ferry_change_row` finds a row's entries.
//! - `ferry_row`: per row, the version this node last settled outside the log: versions
//!   the importer applied without logging them, and the latest version of entries pruned
//!   from the log (deleted rows stay as tombstones), each with its position `at_change`.
//! - `ferry_floor`: from which log position local versions must exceed which version
//!   (the greatest one this node has received by then).
//! - `ferry_peer`: per peer, the outgoing and incoming bundle sequence and hash chain,
//!   the export cursor (a log position), the peer's last ack vector, and since when
//!   the peer needs every row back (its database went back in time: [`crate::rejoin`]).
//! - `ferry_applied`: this node's ack vector (per origin, the highest position applied).
//! - `ferry_outbox`: every bundle sealed and not yet acknowledged, with the change-log
//!   horizon it covers and the one before it (a peer acknowledges a bundle that moved
//!   the horizon by acking it, and one that did not by acking a later one; a heartbeat
//!   takes a marker position to move it).
//! - `ferry_ledger`: every bundle applied (sender, seq, hash), written in the bundle's
//!   own transaction: the once-only guarantee.
//! - `ferry_conflict`: every concurrent overwrite and unique collision resolved here,
//!   with both versions (node, clock reading, full values in uuid space as JSON), a
//!   mark when the winner's clock looked skewed, and the operator's resolution.
//! - `ferry_skew`: per node, the largest apparent clock skew seen in received versions.
//!
//! [`MIGRATIONS`] brings an older bookkeeping schema up to date; each step runs once.
//! Steps 11 to 19 replaced stamping (a `seq` and a version written into every entry)
//! with positions and versions that follow from the entries themselves: they renumber
//! the log so that every stamped entry's position is its old `seq` (cursors and ack
//! vectors keep their meaning) and turn the stamping clock into the first floor.

use mysql_async::prelude::*;
use mysql_async::Conn;

use crate::db::DbError;

/// The change log table.
pub const CHANGE_TABLE: &str = "ferry_change";
/// The per-table state table.
pub const TABLE_STATE: &str = "ferry_table";
/// The key/value table.
pub const META_TABLE: &str = "ferry_meta";

const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Bookkeeping schema steps, in order; the version is the number of steps applied.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS ferry_table (\
       table_name VARCHAR(64) NOT NULL PRIMARY KEY,\
       enabled TINYINT(1) NOT NULL DEFAULT 1,\
       shape LONGTEXT NULL,\
       signature CHAR(64) NULL,\
       changed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
    "CREATE TABLE IF NOT EXISTS ferry_change (\
       change_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\
       table_name VARCHAR(64) NOT NULL,\
       row_id BIGINT NULL,\
       row_key VARCHAR(1024) NOT NULL,\
       op CHAR(1) NOT NULL,\
       changed_cols TEXT NULL,\
       wall_us BIGINT NOT NULL,\
       origin VARCHAR(64) NULL)",
    "ALTER TABLE ferry_change \
       ADD COLUMN seq BIGINT UNSIGNED NULL, \
       ADD COLUMN version_wall BIGINT NULL, \
       ADD COLUMN version_counter INT UNSIGNED NULL, \
       ADD COLUMN version_node VARCHAR(64) NULL, \
       ADD COLUMN base_wall BIGINT NULL, \
       ADD COLUMN base_counter INT UNSIGNED NULL, \
       ADD COLUMN base_node VARCHAR(64) NULL, \
       ADD COLUMN origin_seq BIGINT UNSIGNED NULL, \
       ADD COLUMN via VARCHAR(64) NULL, \
       ADD KEY ferry_change_seq (seq)",
    "CREATE TABLE IF NOT EXISTS ferry_row (\
       table_name VARCHAR(64) NOT NULL,\
       row_key VARCHAR(700) NOT NULL,\
       version_wall BIGINT NOT NULL,\
       version_counter INT UNSIGNED NOT NULL,\
       version_node VARCHAR(64) NOT NULL,\
       deleted TINYINT(1) NOT NULL DEFAULT 0,\
       PRIMARY KEY (table_name, row_key))",
    "CREATE TABLE IF NOT EXISTS ferry_peer (\
       peer VARCHAR(64) NOT NULL PRIMARY KEY,\
       out_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,\
       out_hash CHAR(64) NULL,\
       out_cursor BIGINT UNSIGNED NOT NULL DEFAULT 0,\
       out_at BIGINT NULL,\
       in_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,\
       in_hash CHAR(64) NULL,\
       in_at BIGINT NULL,\
       acks LONGTEXT NULL)",
    "CREATE TABLE IF NOT EXISTS ferry_applied (\
       origin VARCHAR(64) NOT NULL PRIMARY KEY,\
       seq BIGINT UNSIGNED NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ferry_ledger (\
       sender VARCHAR(64) NOT NULL,\
       seq BIGINT UNSIGNED NOT NULL,\
       hash CHAR(64) NOT NULL,\
       bundle_id CHAR(32) NOT NULL,\
       changes BIGINT UNSIGNED NOT NULL,\
       applied_us BIGINT NOT NULL,\
       PRIMARY KEY (sender, seq))",
    "CREATE TABLE IF NOT EXISTS ferry_outbox (\
       peer VARCHAR(64) NOT NULL,\
       seq BIGINT UNSIGNED NOT NULL,\
       cursor_seq BIGINT UNSIGNED NOT NULL,\
       changes BIGINT UNSIGNED NOT NULL,\
       bytes BIGINT UNSIGNED NOT NULL,\
       sealed_us BIGINT NOT NULL,\
       PRIMARY KEY (peer, seq))",
    "CREATE TABLE IF NOT EXISTS ferry_conflict (\
       id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\
       table_name VARCHAR(64) NOT NULL,\
       row_key VARCHAR(700) NOT NULL,\
       kind VARCHAR(16) NOT NULL,\
       column_name VARCHAR(64) NULL,\
       winner_wall BIGINT NOT NULL,\
       winner_counter INT UNSIGNED NOT NULL,\
       winner_node VARCHAR(64) NOT NULL,\
       winner_deleted TINYINT(1) NOT NULL,\
       winner_values LONGTEXT NULL,\
       winner_skewed TINYINT(1) NOT NULL DEFAULT 0,\
       loser_wall BIGINT NULL,\
       loser_counter INT UNSIGNED NULL,\
       loser_node VARCHAR(64) NULL,\
       loser_deleted TINYINT(1) NOT NULL,\
       loser_values LONGTEXT NULL,\
       detected_us BIGINT NOT NULL,\
       via VARCHAR(64) NULL,\
       resolved VARCHAR(16) NULL,\
       resolved_us BIGINT NULL,\
       KEY ferry_conflict_row (table_name, row_key(190)))",
    "CREATE TABLE IF NOT EXISTS ferry_skew (\
       node VARCHAR(64) NOT NULL PRIMARY KEY,\
       skew_us BIGINT NOT NULL,\
       version_wall BIGINT NOT NULL,\
       sender VARCHAR(64) NOT NULL,\
       seen_us BIGINT NOT NULL)",
    // 11-14: an entry's new position: its seq when stamped, else the next free one.
    "ALTER TABLE ferry_change ADD COLUMN new_id BIGINT UNSIGNED NULL",
    "UPDATE ferry_change SET new_id = seq WHERE seq IS NOT NULL",
    "SET @ferry_n := (SELECT COALESCE(MAX(seq), 0) FROM ferry_change)",
    "UPDATE ferry_change SET new_id = (@ferry_n := @ferry_n + 1) WHERE seq IS NULL ORDER BY change_id",
    // 15-16: the stamping clock becomes the floor of every entry it did not stamp.
    "CREATE TABLE IF NOT EXISTS ferry_floor (\
       from_change BIGINT UNSIGNED NOT NULL PRIMARY KEY,\
       wall BIGINT NOT NULL,\
       counter INT UNSIGNED NOT NULL)",
    "INSERT IGNORE INTO ferry_floor (from_change, wall, counter) \
       SELECT COALESCE((SELECT MAX(seq) FROM ferry_change), 0), \
       CAST(SUBSTRING_INDEX(value, ',', 1) AS SIGNED), CAST(SUBSTRING_INDEX(value, ',', -1) AS UNSIGNED) \
       FROM ferry_meta WHERE name = 'hlc'",
    // 17: positions are change ids from now on; entries are found by row.
    "ALTER TABLE ferry_change DROP PRIMARY KEY, DROP KEY ferry_change_seq, DROP COLUMN change_id, \
       DROP COLUMN seq, CHANGE COLUMN new_id change_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT FIRST, \
       ADD PRIMARY KEY (change_id), ADD KEY ferry_change_row (table_name, row_key(64))",
    "ALTER TABLE ferry_row ADD COLUMN at_change BIGINT UNSIGNED NOT NULL DEFAULT 0, \
       ADD COLUMN via VARCHAR(64) NULL",
    "DELETE FROM ferry_meta WHERE name IN ('seq', 'hlc')",
    // 20: the export cursor before each outbox bundle, so that a bundle that did not
    // move it (a heartbeat that could not reach its marker) is not taken as
    // acknowledged by the ack of the bundle before it.
    "ALTER TABLE ferry_outbox ADD COLUMN prev_cursor BIGINT UNSIGNED NULL",
    // 21: when the peer's bundles showed that its database went back in time (restored
    // from a backup): its next export is a full one, its own rows included (`rejoin`).
    "ALTER TABLE ferry_peer ADD COLUMN rebuild_us BIGINT NULL",
    // 22: per table, the highest id counter export has seen: one that went back means
    // the table was emptied by TRUNCATE TABLE, which no trigger sees (`counters`).
    "ALTER TABLE ferry_table ADD COLUMN id_counter BIGINT UNSIGNED NULL",
];

/// Creates the bookkeeping tables and applies pending migrations. Idempotent.
pub async fn install(conn: &mut Conn) -> Result<(), DbError> {
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {META_TABLE} (\
           name VARCHAR(64) NOT NULL PRIMARY KEY,\
           value LONGTEXT NOT NULL) {TABLE_OPTIONS}"
    ))
    .await
    .map_err(DbError::query("creating ferry_meta"))?;
    let version: usize = get_meta(conn, "bookkeeping_version")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        let sql = if step.starts_with("CREATE") {
            format!("{step} {TABLE_OPTIONS}")
        } else {
            step.to_string()
        };
        conn.query_drop(sql).await.map_err(DbError::query(format!(
            "applying bookkeeping migration {}",
            i + 1
        )))?;
        set_meta(conn, "bookkeeping_version", &(i + 1).to_string()).await?;
    }
    Ok(())
}

/// Whether ferry's bookkeeping exists in this database.
pub async fn installed(conn: &mut Conn) -> Result<bool, DbError> {
    let n: Option<u64> = conn
        .query_first(format!(
            "SELECT COUNT(*) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{META_TABLE}'"
        ))
        .await
        .map_err(DbError::query("looking for ferry_meta"))?;
    Ok(n.unwrap_or(0) > 0)
}

/// Reads a value from `ferry_meta`.
pub async fn get_meta(conn: &mut Conn, name: &str) -> Result<Option<String>, DbError> {
    conn.exec_first(
        format!("SELECT value FROM {META_TABLE} WHERE name = ?"),
        (name,),
    )
    .await
    .map_err(DbError::query(format!("reading {name} from ferry_meta")))
}

/// Writes a value to `ferry_meta`.
pub async fn set_meta(conn: &mut Conn, name: &str, value: &str) -> Result<(), DbError> {
    conn.exec_drop(
        format!("REPLACE INTO {META_TABLE} (name, value) VALUES (?, ?)"),
        (name, value),
    )
    .await
    .map_err(DbError::query(format!("writing {name} to ferry_meta")))
}

/// Removes a value from `ferry_meta`.
pub async fn delete_meta(conn: &mut Conn, name: &str) -> Result<(), DbError> {
    conn.exec_drop(format!("DELETE FROM {META_TABLE} WHERE name = ?"), (name,))
        .await
        .map_err(DbError::query(format!("removing {name} from ferry_meta")))
}

/// Refuses a node name other than the one `ferry setup` recorded in this database: two
/// configs naming different nodes on one database would seal bundles under both names
/// from one log, and one sequence number could go to both (a gap the recipient waits
/// on forever). A database with no name recorded yet passes.
pub async fn check_node(conn: &mut Conn, node: &str) -> Result<(), super::CaptureError> {
    if !installed(conn).await? {
        return Ok(());
    }
    match get_meta(conn, "node").await? {
        Some(recorded) if recorded != node => Err(super::CaptureError::OtherNode {
            recorded,
            config: node.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Refuses ferry tables from an older release (migrations not applied yet: `ferry
/// setup` applies them), rather than failing later on a missing column. A database
/// without ferry's tables passes.
pub async fn check_current(conn: &mut Conn) -> Result<(), super::CaptureError> {
    if !installed(conn).await? {
        return Ok(());
    }
    let found: usize = get_meta(conn, "bookkeeping_version")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if found < MIGRATIONS.len() {
        return Err(super::CaptureError::Outdated {
            found,
            wanted: MIGRATIONS.len(),
        });
    }
    Ok(())
}

/// Names of every ferry table and trigger in the current database.
pub async fn ferry_objects(conn: &mut Conn) -> Result<(Vec<String>, Vec<String>), DbError> {
    let tables: Vec<String> = conn
        .query(
            "SELECT TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'ferry\\_%' ORDER BY 1",
        )
        .await
        .map_err(DbError::query("listing ferry tables"))?;
    let triggers: Vec<String> = conn
        .query(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'ferry\\_%' ORDER BY 1",
        )
        .await
        .map_err(DbError::query("listing ferry triggers"))?;
    Ok((tables, triggers))
}
