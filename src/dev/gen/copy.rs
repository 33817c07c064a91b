//! Growing a table fast, for benchmarks and large tests: copies of its own rows, each
//! under a fresh uuid (`INSERT .. SELECT`), where generating that many would take too
//! long. The copies are not realistic clinically (they repeat the rows they copy), but
//! every key and reference in them is valid.

use mysql_async::prelude::*;
use mysql_async::Conn;

use super::GenError;
use crate::db::ident;

/// Rows copied per statement at most.
const STEP: u64 = 50_000;

/// Copies rows of `table` until `add` rows were added: every column but the integer
/// key `key` (auto-increment) and `uuid` (a fresh `UUID()`), at most doubling the
/// table and at most 50,000 rows per statement, newest rows first so that later copies
/// spread over all the originals. Returns the rows added (fewer than `add` only for an
/// empty table, which has nothing to copy).
pub async fn copy_rows(conn: &mut Conn, table: &str, key: &str, add: u64) -> Result<u64, GenError> {
    let n = count(conn, table).await?;
    copy_more(conn, table, key, n, add).await
}

/// [`copy_rows`] until `table` holds at least `target` rows.
pub async fn grow_to(
    conn: &mut Conn,
    table: &str,
    key: &str,
    target: u64,
) -> Result<u64, GenError> {
    let n = count(conn, table).await?;
    copy_more(conn, table, key, n, target.saturating_sub(n)).await
}

/// [`copy_rows`] of a table known to hold `n` rows (counted once: a count scans it).
async fn copy_more(
    conn: &mut Conn,
    table: &str,
    key: &str,
    mut n: u64,
    add: u64,
) -> Result<u64, GenError> {
    let cols: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = ? AND COLUMN_NAME NOT IN (?, 'uuid') ORDER BY ORDINAL_POSITION",
            (table, key),
        )
        .await
        .map_err(GenError::db(format!("reading the columns of {table}")))?;
    let cols = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let mut added = 0;
    while added < add {
        let step = (add - added).min(n).min(STEP);
        if step == 0 {
            break;
        }
        conn.query_drop(format!(
            "INSERT INTO {t} ({cols}, uuid) SELECT {cols}, UUID() FROM {t} \
             ORDER BY {k} DESC LIMIT {step}",
            t = ident(table),
            k = ident(key),
        ))
        .await
        .map_err(GenError::db(format!("copying rows of {table}")))?;
        added += step;
        n += step;
    }
    Ok(added)
}

async fn count(conn: &mut Conn, table: &str) -> Result<u64, GenError> {
    let n: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {}", ident(table)))
        .await
        .map_err(GenError::db(format!("counting the rows of {table}")))?;
    Ok(n.unwrap_or(0))
}
