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
//! A missing or unreadable record counts as empty: a node from before this record
//! starts one at its next export or import.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::atomic;
use super::state::{io_error, StateDirs, TransportError};

/// The record's file name in the state directory.
pub const SEQUENCES_FILE: &str = "sequences.json";

/// One peer's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSequences {
    /// The last bundle sealed for the peer.
    pub sent: u64,
    /// The last bundle from the peer applied here.
    pub applied: u64,
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

    /// Records that bundle `seq` was sealed for `peer` (committed).
    pub fn record_sent(dirs: &StateDirs, peer: &str, seq: u64) -> Result<(), TransportError> {
        Self::update(dirs, peer, |p| p.sent = p.sent.max(seq))
    }

    /// Records that bundles from `peer` up to `seq` are applied (committed).
    pub fn record_applied(dirs: &StateDirs, peer: &str, seq: u64) -> Result<(), TransportError> {
        Self::update(dirs, peer, |p| p.applied = p.applied.max(seq))
    }

    fn update(
        dirs: &StateDirs,
        peer: &str,
        f: impl FnOnce(&mut PeerSequences),
    ) -> Result<(), TransportError> {
        let mut s = Sequences::load(dirs);
        let before = s.peers.get(peer).copied();
        f(s.peers.entry(peer.to_string()).or_default());
        if s.peers.get(peer).copied() == before {
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

    #[test]
    fn a_database_behind_the_record_is_named_and_one_level_or_ahead_passes() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = StateDirs::new(dir.path());
        // No record yet: anything passes.
        Sequences::load(&dirs).check("hub", 0, 0).unwrap();
        Sequences::record_sent(&dirs, "hub", 20).unwrap();
        Sequences::record_applied(&dirs, "hub", 30).unwrap();
        Sequences::record_sent(&dirs, "hub", 19).unwrap(); // never goes back
        let s = Sequences::load(&dirs);
        assert_eq!(
            s.peers["hub"],
            PeerSequences {
                sent: 20,
                applied: 30
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
        Sequences::record_sent(&dirs, "hub", 2).unwrap();
        assert_eq!(Sequences::load(&dirs).peers["hub"].sent, 2);
    }
}
