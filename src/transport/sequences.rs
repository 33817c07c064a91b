//! The state directory's own record of bundle numbers: per peer, the last bundle this
//! node sealed for it and the last it applied from it (`sequences.json`).
//!
//! The database holds the same numbers (`ferry_peer`), and they commit with the data.
//! This record is written after each commit, so it is never ahead of a database that
//! has not been touched. A database behind it was restored from a backup or created
//! anew under the same state directory. Exporting from it would seal bundle numbers
//! the peer already holds, with other contents, and the peer would refuse them. Importing
//! into it would wait for bundles the peer has already pruned. Worse, nothing would say
//! why. So export and import check the record first and stop with an error that says
//! what happened ([`TransportError::Behind`]).
//!
//! The record also keeps what `ferry rejoin` needs to put such a database back in step
//! ([`crate::rejoin`]): each last bundle's hash (the next one names it), the log
//! position up to which the last bundle sealed for the peer covered the log, and the
//! database's clock just after each commit (a time the restored database never saw).
//!
//! A missing or unreadable record counts as empty: a node from before this record
//! starts one at its next export or import. Fields added later read as absent.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::atomic;
use super::state::{io_error, StateDirs, TransportError};

/// The record's file name in the state directory.
pub const SEQUENCES_FILE: &str = "sequences.json";

/// One peer's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSequences {
    /// The last bundle sealed for the peer.
    pub sent: u64,
    /// The last bundle from the peer applied here.
    pub applied: u64,
    /// The hash of bundle `sent` (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_hash: Option<String>,
    /// The log position bundle `sent` covered the log up to (the peer's export cursor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_upto: Option<u64>,
    /// The database's clock (as the capture triggers read it, µs) just after bundle
    /// `sent` was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_db_us: Option<i64>,
    /// The hash of bundle `applied` (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_hash: Option<String>,
    /// The database's clock just after bundle `applied` was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_db_us: Option<i64>,
}

/// What the record keeps of one sealed or applied bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub seq: u64,
    pub hash: [u8; 32],
    /// The database's clock just after the commit (µs, as the triggers read it).
    pub db_us: i64,
}

/// The record, per peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequences {
    pub peers: BTreeMap<String, PeerSequences>,
}

fn path(dirs: &StateDirs) -> PathBuf {
    dirs.root().join(SEQUENCES_FILE)
}

impl Sequences {
    /// The record in `dirs` (empty when there is none, or it cannot be read).
    pub fn load(dirs: &StateDirs) -> Sequences {
        std::fs::read(path(dirs))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Checks `peer`'s numbers in the database against the record.
    pub fn check(&self, peer: &str, sent: u64, applied: u64) -> Result<(), TransportError> {
        let Some(r) = self.peers.get(peer) else {
            return Ok(());
        };
        for (found, recorded, what) in [
            (sent, r.sent, "sealed for"),
            (applied, r.applied, "applied from"),
        ] {
            if found < recorded {
                return Err(TransportError::Behind {
                    peer: peer.to_string(),
                    what,
                    recorded,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Records that bundle `b` was sealed for `peer` (committed), covering the log up to
    /// position `upto`.
    pub fn record_sent(
        dirs: &StateDirs,
        peer: &str,
        b: &Committed,
        upto: u64,
    ) -> Result<(), TransportError> {
        Self::update(dirs, peer, |p| {
            if b.seq >= p.sent {
                p.sent = b.seq;
                p.sent_hash = Some(hex::encode(b.hash));
                p.sent_upto = Some(upto);
                p.sent_db_us = Some(b.db_us);
            }
        })
    }

    /// Records that bundles from `peer` up to `b` are applied (committed).
    pub fn record_applied(
        dirs: &StateDirs,
        peer: &str,
        b: &Committed,
    ) -> Result<(), TransportError> {
        Self::update(dirs, peer, |p| {
            if b.seq >= p.applied {
                p.applied = b.seq;
                p.applied_hash = Some(hex::encode(b.hash));
                p.applied_db_us = Some(b.db_us);
            }
        })
    }

    /// Reads, changes and writes the record under an exclusive lock on
    /// `sequences.lock` beside it: export and import run at once (they take different
    /// database locks) and each records here; without it, one could write back the
    /// other's old figures (issue 4, found by review), and a rejoin would then put a
    /// chain back one bundle short.
    fn update(
        dirs: &StateDirs,
        peer: &str,
        f: impl FnOnce(&mut PeerSequences),
    ) -> Result<(), TransportError> {
        let lock_path = path(dirs).with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("open", &lock_path))?;
        // Released when `lock` is closed, at the end of this function or of the process.
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_error("lock", &lock_path)(std::io::Error::last_os_error()));
        }
        let mut s = Sequences::load(dirs);
        let before = s.peers.get(peer).cloned();
        f(s.peers.entry(peer.to_string()).or_default());
        if s.peers.get(peer).cloned() == before {
            return Ok(());
        }
        let p = path(dirs);
        let text = serde_json::to_vec_pretty(&s).expect("the record serializes");
        atomic::write_file(&p, |file| file.write_all(&text)).map_err(io_error("write", &p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 4, found by review): export and import record at once; no
    /// update may write back the other's old figures.
    #[test]
    fn records_made_at_once_by_two_writers_are_both_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = StateDirs::new(dir.path());
        const N: u64 = 200;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for seq in 1..=N {
                    Sequences::record_sent(&dirs, "hub", &committed(seq), seq).unwrap();
                }
            });
            scope.spawn(|| {
                for seq in 1..=N {
                    Sequences::record_applied(&dirs, "hub", &committed(seq)).unwrap();
                }
            });
        });
        let s = Sequences::load(&dirs);
        assert_eq!((s.peers["hub"].sent, s.peers["hub"].applied), (N, N));
    }

    #[test]
    fn a_database_behind_the_record_is_named_and_one_level_or_ahead_passes() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = StateDirs::new(dir.path());
        // No record yet: anything passes.
        Sequences::load(&dirs).check("hub", 0, 0).unwrap();
        Sequences::record_sent(&dirs, "hub", &committed(20), 700).unwrap();
        Sequences::record_applied(&dirs, "hub", &committed(30)).unwrap();
        Sequences::record_sent(&dirs, "hub", &committed(19), 600).unwrap(); // never goes back
        let s = Sequences::load(&dirs);
        assert_eq!(
            s.peers["hub"],
            PeerSequences {
                sent: 20,
                applied: 30,
                sent_hash: Some(hex::encode([20; 32])),
                sent_upto: Some(700),
                sent_db_us: Some(20_000),
                applied_hash: Some(hex::encode([30; 32])),
                applied_db_us: Some(30_000),
            }
        );
        s.check("hub", 20, 30).unwrap();
        s.check("hub", 21, 31).unwrap();
        s.check("spoke", 0, 0).unwrap();
        let e = s.check("hub", 15, 30).unwrap_err().to_string();
        assert!(
            e.contains("bundle 20 was sealed for hub")
                && e.contains("the database says 15")
                && e.contains("hint:"),
            "{e}"
        );
        let e = s.check("hub", 20, 25).unwrap_err().to_string();
        assert!(e.contains("bundle 30 was applied from hub"), "{e}");
    }

    #[test]
    fn an_unreadable_record_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = StateDirs::new(dir.path());
        std::fs::write(dir.path().join(SEQUENCES_FILE), b"{not json").unwrap();
        assert_eq!(Sequences::load(&dirs), Sequences::default());
        Sequences::record_sent(&dirs, "hub", &committed(2), 5).unwrap();
        assert_eq!(Sequences::load(&dirs).peers["hub"].sent, 2);
    }

    #[test]
    fn a_record_from_before_the_rejoin_fields_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = StateDirs::new(dir.path());
        std::fs::write(
            dir.path().join(SEQUENCES_FILE),
            br#"{"peers":{"hub":{"sent":4,"applied":3}}}"#,
        )
        .unwrap();
        let s = Sequences::load(&dirs);
        assert_eq!((s.peers["hub"].sent, s.peers["hub"].applied), (4, 3));
        assert_eq!(s.peers["hub"].sent_hash, None);
    }

    fn committed(seq: u64) -> Committed {
        Committed {
            seq,
            hash: [seq as u8; 32],
            db_us: seq as i64 * 1000,
        }
    }
}
