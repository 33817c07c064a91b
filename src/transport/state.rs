//! The node's bundle directories under the state directory: `outbox/<peer>/` (sealed
//! bundles waiting to be carried to, or acknowledged by, that peer), `inbox/` (verified
//! bundles waiting to be applied) and `quarantine/` (refused files, each with a
//! `<name>.reason.txt` beside it; never deleted by ferry).
//!
//! Files appear under a bundle name only through [`super::atomic`] publication,
//! so a reader never sees a partial bundle under its final name.
//!
//! `blocked/<sender>.json` notes why a sender's next bundle, waiting in the inbox,
//! failed to apply ([`BlockedNote`]), so that `ferry status` can say so between
//! imports; the import that applies a bundle of that sender removes it.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::atomic;
use crate::bundle::{verify_header, BundleName, Peers};

/// Errors of the bundle directories and of carrying bundles.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot {action} {path}: {source}\nhint: check that the directory exists, is mounted and writable, and has room")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("this database is behind this node's own record: bundle {recorded} was {what} {peer}, but the database says {found}\nhint: the database was probably restored from a backup, or made anew; nothing was done. If it was restored from a backup, run `ferry rejoin` on this node: it puts the numbers back in step, and {peer} then sends back what the backup lacks. A database made anew needs a new node name instead. See \"A database restored from a backup\" in docs/operations.md")]
    Behind {
        peer: String,
        what: &'static str,
        recorded: u64,
        found: u64,
    },
}

/// Why a sender's next bundle waits in the inbox: the last import tried it and failed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockedNote {
    /// The bundle's sequence number.
    pub seq: u64,
    /// The error it failed with (its hint included).
    pub error: String,
    /// When it first failed with that sequence number (Unix microseconds).
    pub since_us: i64,
}

/// Shorthand for a [`TransportError::Io`].
pub fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TransportError {
    let path = path.to_path_buf();
    move |source| TransportError::Io {
        action,
        path,
        source,
    }
}

/// The bundle directories of one node.
#[derive(Debug, Clone)]
pub struct StateDirs {
    root: PathBuf,
}

impl StateDirs {
    /// The directories under `state_dir` (not created yet).
    pub fn new(state_dir: &Path) -> StateDirs {
        StateDirs {
            root: state_dir.to_path_buf(),
        }
    }

    /// Creates `outbox/`, `inbox/` and `quarantine/` if missing.
    pub fn create(&self) -> Result<(), TransportError> {
        for dir in [self.outbox_root(), self.inbox(), self.quarantine()] {
            fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        }
        Ok(())
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `outbox/`.
    pub fn outbox_root(&self) -> PathBuf {
        self.root.join("outbox")
    }

    /// `outbox/<peer>/`.
    pub fn outbox(&self, peer: &str) -> PathBuf {
        self.outbox_root().join(peer)
    }

    /// `inbox/`.
    pub fn inbox(&self) -> PathBuf {
        self.root.join("inbox")
    }

    /// `quarantine/`.
    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// `blocked/`.
    pub fn blocked_dir(&self) -> PathBuf {
        self.root.join("blocked")
    }

    fn blocked_path(&self, sender: &str) -> PathBuf {
        self.blocked_dir().join(format!("{sender}.json"))
    }

    /// Notes that bundle `seq` of `sender` failed with `error` (the first failure's time
    /// is kept while the same bundle keeps failing).
    pub fn note_blocked(
        &self,
        sender: &str,
        seq: u64,
        error: &str,
        now_us: i64,
    ) -> Result<(), TransportError> {
        let since_us = match self.blocked(sender) {
            Some(old) if old.seq == seq => old.since_us,
            _ => now_us,
        };
        let note = BlockedNote {
            seq,
            error: error.to_string(),
            since_us,
        };
        let dir = self.blocked_dir();
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let path = self.blocked_path(sender);
        let text = serde_json::to_vec_pretty(&note).expect("a note serializes");
        atomic::write_file(&path, |f| f.write_all(&text)).map_err(io_error("write", &path))
    }

    /// The note on `sender`'s blocked bundle, if any (an unreadable note counts as none).
    pub fn blocked(&self, sender: &str) -> Option<BlockedNote> {
        let text = fs::read(self.blocked_path(sender)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes the note on `sender` (a bundle of it applied).
    pub fn clear_blocked(&self, sender: &str) -> Result<(), TransportError> {
        let path = self.blocked_path(sender);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Where the bundle `name` goes in the outbox (the directory is created).
    pub fn outbox_path(&self, name: &BundleName) -> Result<PathBuf, TransportError> {
        let dir = self.outbox(&name.recipient);
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        Ok(dir.join(name.file_name()))
    }

    /// The bundles in `outbox/<peer>/`, in sequence order.
    pub fn outbox_bundles(&self, peer: &str) -> Result<Vec<(BundleName, PathBuf)>, TransportError> {
        list_bundles(&self.outbox(peer))
    }

    /// Every bundle in every `outbox/<peer>/`, by peer then sequence.
    pub fn all_outbox_bundles(&self) -> Result<Vec<(BundleName, PathBuf)>, TransportError> {
        let root = self.outbox_root();
        let mut all = Vec::new();
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(all),
            Err(e) => return Err(io_error("list", &root)(e)),
        };
        let mut peers: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list", &root))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                peers.push(entry.path());
            }
        }
        peers.sort();
        for dir in peers {
            all.extend(list_bundles(&dir)?);
        }
        Ok(all)
    }

    /// The bundles waiting in `inbox/`, ordered by sender, recipient, sequence.
    pub fn inbox_bundles(&self) -> Result<Vec<(BundleName, PathBuf)>, TransportError> {
        list_bundles(&self.inbox())
    }

    /// Deletes from `outbox/<peer>/` every bundle `me` sealed with sequence ≤ `upto`
    /// (the peer has acknowledged them). Bundles relayed for the peer from other senders
    /// share the folder and stay: their numbers belong to other sequences (issue 4).
    /// Returns how many were deleted.
    pub fn acknowledge(&self, me: &str, peer: &str, upto: u64) -> Result<usize, TransportError> {
        let mut n = 0;
        for (name, path) in self.outbox_bundles(peer)? {
            if name.sender == me && name.seq <= upto {
                fs::remove_file(&path).map_err(io_error("delete", &path))?;
                n += 1;
            }
        }
        if n > 0 {
            let dir = self.outbox(peer);
            atomic::sync_dir(&dir).map_err(io_error("sync", &dir))?;
        }
        Ok(n)
    }

    /// Deletes from `outbox/<recipient>/` the bundles relayed there from `sender` that
    /// `recipient` has applied: those whose horizon (the sender's own entry of their
    /// acks) is below `applied`, the horizon of the last bundle from `sender` that
    /// `recipient` applied (its entry in the acks of a bundle from `recipient` to
    /// `sender`, which this relay carried). Horizons grow along a sequence and bundles
    /// apply in order, so each of those came before the last one applied. The one at
    /// `applied` stays (a bundle that did not move the horizon may share it) until a
    /// later one is applied. A relayed bundle whose header does not verify stays.
    /// Without this, a relay kept every bundle it ever relayed (issue 4). Returns the
    /// names deleted.
    pub fn prune_relayed(
        &self,
        recipient: &str,
        sender: &str,
        applied: u64,
        peers: &Peers,
    ) -> Result<Vec<String>, TransportError> {
        let mut gone = Vec::new();
        for (name, path) in self.outbox_bundles(recipient)? {
            if name.sender != sender {
                continue;
            }
            let Ok(v) = verify_header(&path, peers) else {
                continue;
            };
            let horizon = v.header.acks.iter().find(|(n, _)| n == sender);
            if horizon.is_some_and(|&(_, h)| h < applied) {
                fs::remove_file(&path).map_err(io_error("delete", &path))?;
                gone.push(name.file_name());
            }
        }
        if !gone.is_empty() {
            let dir = self.outbox(recipient);
            atomic::sync_dir(&dir).map_err(io_error("sync", &dir))?;
        }
        Ok(gone)
    }

    /// Copies a refused file into `quarantine/` with a `.reason.txt` beside it. A file
    /// already quarantined with the same content is not copied again. Returns the copy.
    pub fn quarantine_file(&self, src: &Path, reason: &str) -> Result<PathBuf, TransportError> {
        let dir = self.quarantine();
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let base = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
        let hash = file_sha256(src).map_err(io_error("read", src))?;
        let mut i = 0;
        let dest = loop {
            let name = if i == 0 {
                base.clone()
            } else {
                format!("{base}.{i}")
            };
            let candidate = dir.join(&name);
            if !candidate.exists() {
                break candidate;
            }
            if file_sha256(&candidate).ok() == Some(hash) {
                return Ok(candidate);
            }
            i += 1;
        };
        copy_atomic(src, &dest)?;
        let mut reason_name = dest.file_name().unwrap_or_default().to_os_string();
        reason_name.push(".reason.txt");
        let reason_path = dest.with_file_name(reason_name);
        let text = format!(
            "{reason}\n\nsource: {}\nsha256: {}\n",
            src.display(),
            hex::encode(hash)
        );
        atomic::write_file(&reason_path, |f| f.write_all(text.as_bytes()))
            .map_err(io_error("write", &reason_path))?;
        Ok(dest)
    }
}

/// The bundle files in `dir` (names that parse as bundle names), sorted by name.
pub fn list_bundles(dir: &Path) -> Result<Vec<(BundleName, PathBuf)>, TransportError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let Some(name) = entry.file_name().to_str().and_then(BundleName::parse) else {
            continue;
        };
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// SHA-256 of a whole file.
pub fn file_sha256(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Copies `src` to `dest` atomically (temp name, fsync, rename, fsync dir).
pub fn copy_atomic(src: &Path, dest: &Path) -> Result<(), TransportError> {
    let mut input = fs::File::open(src).map_err(io_error("read", src))?;
    atomic::write_file(dest, |f| io::copy(&mut input, f).map(|_| ()))
        .map_err(io_error("write", dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_note_keeps_its_first_time_per_bundle_and_goes_when_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = StateDirs::new(dir.path());
        assert_eq!(dirs.blocked("clinic-b"), None);
        dirs.note_blocked("clinic-b", 7, "first\nhint: x", 100)
            .unwrap();
        dirs.note_blocked("clinic-b", 7, "again\nhint: y", 200)
            .unwrap();
        let note = dirs.blocked("clinic-b").unwrap();
        assert_eq!(
            (note.seq, note.since_us, note.error.as_str()),
            (7, 100, "again\nhint: y")
        );
        dirs.note_blocked("clinic-b", 8, "next", 300).unwrap();
        assert_eq!(dirs.blocked("clinic-b").unwrap().since_us, 300);
        assert_eq!(dirs.blocked("clinic-c"), None);
        dirs.clear_blocked("clinic-b").unwrap();
        dirs.clear_blocked("clinic-b").unwrap();
        assert_eq!(dirs.blocked("clinic-b"), None);
    }

    fn name(peer: &str, seq: u64) -> BundleName {
        BundleName {
            sender: "me".into(),
            recipient: peer.into(),
            seq,
        }
    }

    #[test]
    fn acknowledge_deletes_up_to_n_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDirs::new(dir.path());
        s.create().unwrap();
        for seq in 1..=5 {
            fs::write(s.outbox_path(&name("hub", seq)).unwrap(), b"x").unwrap();
        }
        fs::write(s.outbox("hub").join("stray.txt"), b"x").unwrap();
        // A bundle relayed for the hub from another sender, with a number of its own.
        let relayed = BundleName {
            sender: "other".into(),
            recipient: "hub".into(),
            seq: 2,
        };
        fs::write(s.outbox_path(&relayed).unwrap(), b"x").unwrap();
        assert_eq!(s.acknowledge("me", "hub", 3).unwrap(), 3);
        let left: Vec<(String, u64)> = s
            .outbox_bundles("hub")
            .unwrap()
            .iter()
            .map(|(n, _)| (n.sender.clone(), n.seq))
            .collect();
        assert_eq!(
            left,
            vec![("me".into(), 4), ("me".into(), 5), ("other".into(), 2)]
        );
        assert!(s.outbox("hub").join("stray.txt").exists());
        assert_eq!(s.acknowledge("me", "nobody", 3).unwrap(), 0);
    }

    #[test]
    fn quarantine_keeps_reason_and_does_not_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDirs::new(dir.path());
        let src = dir.path().join(name("hub", 1).file_name());
        fs::write(&src, b"junk").unwrap();
        let q = s.quarantine_file(&src, "bad signature").unwrap();
        assert_eq!(s.quarantine_file(&src, "bad signature").unwrap(), q);
        let reason = fs::read_to_string(format!("{}.reason.txt", q.display())).unwrap();
        assert!(reason.starts_with("bad signature"));
        fs::write(&src, b"other junk").unwrap();
        let q2 = s.quarantine_file(&src, "truncated").unwrap();
        assert_ne!(q, q2);
        assert_eq!(fs::read_dir(s.quarantine()).unwrap().count(), 4);
    }
}
