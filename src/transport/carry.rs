//! Carrying bundles by hand: `send` copies outbox bundles onto a carrier directory (a
//! USB stick, a shared folder), `receive` takes the bundles addressed to this node (or
//! to nodes it relays for) off a carrier after verifying them.
//!
//! Both keep the atomic discipline: every file is written under a temporary name,
//! fsynced, checked, then renamed. `send` keeps a ledger (`carried.ledger` in the state
//! directory: one `<file name> <sha256 hex>` line per carried bundle) so a bundle is
//! carried once; `send` with `again` (for a damaged or lost carrier) ignores the ledger
//! and copies every bundle still in the outbox, replacing any copy on the carrier that
//! differs from it. `receive` only considers names that parse as bundle names (temporary
//! files never do) and refuses truncated or otherwise defective files: a copy with the
//! reason goes to quarantine and the original stays on the carrier. On a relay,
//! `receive` also deletes from the outbox the bundles it relayed earlier that a bundle
//! it now relays back shows applied ([`StateDirs::prune_relayed`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::Serialize;

use super::atomic;
use super::state::{copy_atomic, file_sha256, io_error, list_bundles, StateDirs, TransportError};
use crate::bundle::{open_named, verify_named, BundleError, BundleName, Header, NodeKeys, Peers};

/// The ledger's file name in the state directory.
pub const LEDGER_FILE: &str = "carried.ledger";

/// What `send` did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct SendReport {
    /// Bundles copied onto the carrier (including damaged or different copies there
    /// that were replaced).
    pub copied: Vec<String>,
    /// Bundles already carried (in the ledger) or already on the carrier.
    pub skipped: Vec<String>,
}

/// Copies every outbox bundle not yet carried into `dest`. With `again`, the ledger is
/// ignored: every bundle still in the outbox (not yet acknowledged) is copied unless
/// `dest` already holds an identical copy; a damaged or different copy there is
/// replaced atomically. Use it when a carrier was damaged or lost.
pub fn send(
    state: &StateDirs,
    dest: &Path,
    again: bool,
    bar: &ProgressBar,
) -> Result<SendReport, TransportError> {
    let ledger_path = state.root().join(LEDGER_FILE);
    let mut ledger = read_ledger(&ledger_path)?;
    let bundles = state.all_outbox_bundles()?;
    bar.set_length(bundles.len() as u64);
    let mut report = SendReport::default();
    let mut keep = BTreeMap::new();
    for (name, path) in bundles {
        let file = name.file_name();
        // Gone since the listing: acknowledged, and pruned by an import meanwhile (a
        // watcher's import and a send run at once; issue 4, found by review: the send
        // failed).
        let Some(sum) = hash_unless_gone(&path)? else {
            bar.inc(1);
            continue;
        };
        let hash = hex::encode(sum);
        let target = dest.join(&file);
        let carried = !again && ledger.get(&file) == Some(&hash);
        let present = !carried
            && target.is_file()
            && file_sha256(&target).ok().map(hex::encode).as_ref() == Some(&hash);
        if carried || present {
            report.skipped.push(file.clone());
        } else {
            match copy_atomic(&path, &target) {
                Err(TransportError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && !path.exists() =>
                {
                    bar.inc(1);
                    continue; // pruned between the hash and the copy, as above
                }
                other => other?,
            }
            // Read the copy back: cheap media sometimes write something else.
            let written = file_sha256(&target).map_err(io_error("read back", &target))?;
            if hex::encode(written) != hash {
                let _ = fs::remove_file(&target);
                return Err(TransportError::Io {
                    action: "verify the copy at",
                    path: target,
                    source: std::io::Error::other("the copy reads back differently"),
                });
            }
            report.copied.push(file.clone());
        }
        keep.insert(file, hash);
        bar.inc(1);
        // Record progress as we go, so an interrupted run does not copy again.
        if !carried {
            ledger.extend(keep.clone());
            write_ledger(&ledger_path, &ledger)?;
        }
    }
    // Forget bundles that left the outbox (acknowledged), so the ledger stays small.
    if keep != ledger {
        write_ledger(&ledger_path, &keep)?;
    }
    Ok(report)
}

fn read_ledger(path: &Path) -> Result<BTreeMap<String, String>, TransportError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect())
}

fn write_ledger(path: &Path, ledger: &BTreeMap<String, String>) -> Result<(), TransportError> {
    let mut text = String::new();
    for (name, hash) in ledger {
        text.push_str(&format!("{name} {hash}\n"));
    }
    atomic::write_file(path, |f| f.write_all(text.as_bytes())).map_err(io_error("write", path))
}

/// Who this node is, for `receive`.
pub struct Receiver<'a> {
    /// This node's name.
    pub me: &'a str,
    /// Nodes this node relays for.
    pub relay_for: &'a [String],
    /// This node's keys (to decrypt and fully check its own bundles).
    pub keys: &'a NodeKeys,
    /// Known senders.
    pub peers: &'a Peers,
}

/// A refused file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    /// The file's name on the carrier.
    pub file: String,
    /// The defect, e.g. `truncated`.
    pub kind: String,
    /// The full message with its hint.
    pub reason: String,
    /// Where the copy in quarantine is.
    pub quarantined: PathBuf,
}

/// What `receive` did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ReceiveReport {
    /// Bundles for this node, now in the inbox.
    pub received: Vec<String>,
    /// Bundles for nodes this node relays for, now in their outbox.
    pub relayed: Vec<String>,
    /// Bundles already taken before (own ones are removed from the carrier, relayed
    /// ones left on it).
    pub duplicates: Vec<String>,
    /// Bundles for other nodes, left on the carrier.
    pub left: Vec<String>,
    /// Refused files (copied to quarantine, left on the carrier).
    pub refused: Vec<Refused>,
    /// Bundles this node relayed earlier, deleted from its outbox because their
    /// recipient has applied them (see [`StateDirs::prune_relayed`]).
    pub pruned: Vec<String>,
}

/// Takes the bundles in `src` that are addressed to this node (into the inbox) or to a
/// node it relays for (into that node's outbox, still sealed).
pub fn receive(
    state: &StateDirs,
    src: &Path,
    rx: &Receiver,
    bar: &ProgressBar,
) -> Result<ReceiveReport, TransportError> {
    state.create()?;
    let bundles = list_bundles(src)?;
    bar.set_length(bundles.len() as u64);
    let mut report = ReceiveReport::default();
    // Per (sender, recipient) of a relayed bundle: the recipient's entry of its acks,
    // the horizon of the last bundle from the recipient that the sender applied.
    let mut applied: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (name, path) in bundles {
        bar.inc(1);
        let file = name.file_name();
        let own = name.recipient == rx.me;
        let target_dir = if own {
            state.inbox()
        } else if rx.relay_for.contains(&name.recipient) {
            state.outbox(&name.recipient)
        } else {
            report.left.push(file);
            continue;
        };
        fs::create_dir_all(&target_dir).map_err(io_error("create", &target_dir))?;
        let target = target_dir.join(&file);
        if target.exists() {
            let same = file_sha256(&target).ok() == file_sha256(&path).ok();
            if same {
                // Our own copy is safe in the inbox; a relayed one stays on the carrier,
                // which may be on its way to the recipient.
                // Never the inbox copy itself (`ferry receive` given the inbox; issue 4:
                // it deleted the bundles waiting there).
                let itself = fs::canonicalize(&path).ok() == fs::canonicalize(&target).ok();
                if own && !itself {
                    remove_source(&path)?;
                }
                report.duplicates.push(file);
            } else if let Err(e) = check(&path, &file, &name, own, rx) {
                // The carrier's copy is damaged: name the defect, not a conflict
                // (issue 4: a torn copy was reported as tampered with).
                refuse(state, path, file, e, &mut report)?;
            } else {
                let reason = format!(
                    "{file} differs from the bundle of the same name already received\n\
                     hint: one of them was tampered with or re-sealed; compare both with `ferry bundle inspect`"
                );
                let q = state.quarantine_file(&path, &reason)?;
                report.refused.push(Refused {
                    file,
                    kind: "conflict".into(),
                    reason,
                    quarantined: q,
                });
            }
            continue;
        }
        let tmp = atomic::temp_path(&target);
        copy_to_temp(&path, &tmp)?;
        match check(&tmp, &file, &name, own, rx) {
            Ok(header) => {
                atomic::publish(&tmp, &target).map_err(io_error("publish", &target))?;
                remove_source(&path)?;
                if own {
                    report.received.push(file);
                } else {
                    if let Some(&(_, a)) = header.acks.iter().find(|(n, _)| *n == name.recipient) {
                        let seen = applied
                            .entry((name.sender.clone(), name.recipient.clone()))
                            .or_default();
                        *seen = (*seen).max(a);
                    }
                    report.relayed.push(file);
                }
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                refuse(state, path, file, e, &mut report)?;
            }
        }
    }
    // A bundle from X to Y says how far X applied Y's bundles: the ones this node
    // relayed from Y to X up to there can go.
    for ((x, y), upto) in applied {
        let pruned = state.prune_relayed(&x, &y, upto, rx.peers)?;
        report.pruned.extend(pruned);
    }
    Ok(report)
}

fn copy_to_temp(src: &Path, tmp: &Path) -> Result<(), TransportError> {
    let mut input = fs::File::open(src).map_err(io_error("read", src))?;
    let mut out = fs::File::create(tmp).map_err(io_error("write", tmp))?;
    std::io::copy(&mut input, &mut out).map_err(io_error("copy", tmp))?;
    out.sync_all().map_err(io_error("sync", tmp))
}

/// Quarantines a carrier's copy that failed its check, naming the defect; an error
/// that is not the file's (I/O) stops the run.
fn refuse(
    state: &StateDirs,
    path: PathBuf,
    file: String,
    e: BundleError,
    report: &mut ReceiveReport,
) -> Result<(), TransportError> {
    if !e.is_refusal() {
        return Err(TransportError::Io {
            action: "check",
            path,
            source: std::io::Error::other(e.to_string()),
        });
    }
    let reason = e.to_string();
    let quarantined = state.quarantine_file(&path, &reason)?;
    report.refused.push(Refused {
        file,
        kind: e.kind().into(),
        reason,
        quarantined,
    });
    Ok(())
}

/// The file's SHA-256, or `None` when it no longer exists.
fn hash_unless_gone(path: &Path) -> Result<Option<[u8; 32]>, TransportError> {
    match file_sha256(path) {
        Ok(h) => Ok(Some(h)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

/// Removes a bundle taken from the carrier; one already gone was taken by another
/// `receive` running at once (not an error).
fn remove_source(path: &Path) -> Result<(), TransportError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(io_error("remove", path))?,
    }
    if let Some(dir) = path.parent() {
        atomic::sync_dir(dir).map_err(io_error("sync", dir))?;
    }
    Ok(())
}

/// Verifies the copy: the signed header must match the file name; our own bundles are
/// decrypted and read to the end, relayed ones checked without decryption. Returns the
/// header.
fn check(
    tmp: &Path,
    file: &str,
    name: &BundleName,
    own: bool,
    rx: &Receiver,
) -> Result<Header, BundleError> {
    let header = if own {
        let mut reader = open_named(tmp, file, rx.me, rx.keys, rx.peers)?;
        while reader.next_change()?.is_some() {}
        reader.header().clone()
    } else {
        verify_named(tmp, file, rx.peers)?.header
    };
    header.check_named(file, name)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 4, found by review): a bundle pruned from the outbox while
    /// `send` ran, or taken from the carrier by another `receive`, failed the run.
    #[test]
    fn a_bundle_gone_meanwhile_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join("ferry.a.b.0000000000000001.bundle");
        std::fs::write(&here, b"x").unwrap();
        assert!(hash_unless_gone(&here).unwrap().is_some());
        remove_source(&here).unwrap();
        assert!(!here.exists());
        assert_eq!(hash_unless_gone(&here).unwrap(), None);
        remove_source(&here).unwrap();
        // Other failures still fail: a directory cannot be read as a file.
        assert!(hash_unless_gone(dir.path()).is_err());
    }
}
