//! The wall clock ferry reads, and the offset tests use to fake a wrong one.
//!
//! Versions ([`super::versions`]) take their wall time from the capture triggers, which
//! add the node's configured offset themselves (it is baked into them at `ferry setup`);
//! ferry's own readings (when a bundle was sealed or applied) go through [`WallClock`].

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock ferry uses, shifted by an offset that tests use to fake a node whose
/// clock is wrong (the machine's clock is left alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WallClock {
    pub offset_us: i64,
}

impl WallClock {
    /// Now, in µs since the epoch, shifted.
    pub fn now_us(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        real + self.offset_us
    }
}

/// The database's clock as the capture triggers read it (µs since the epoch, shifted by
/// the node's offset): what a log entry written now would hold as its wall time.
pub async fn db_now_us(
    conn: &mut mysql_async::Conn,
    offset_us: i64,
) -> Result<i64, crate::db::DbError> {
    use mysql_async::prelude::*;
    let now: Option<i64> = conn
        .query_first(format!("SELECT {}", super::triggers::now_us(offset_us)))
        .await
        .map_err(crate::db::DbError::query("reading the database's clock"))?;
    Ok(now.unwrap_or(0))
}
