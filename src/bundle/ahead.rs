//! Reading a bundle's changes ahead, on a thread of its own.
//!
//! Importing alternates between ferry's work (decrypting, decompressing and decoding the
//! body, then building statements) and the server's (running them). [`ReadAhead`] takes
//! the first part off the importing task: a thread runs the [`BundleReader`] and hands
//! over changes in batches through a bounded channel, so the next changes are decoded
//! while the server applies the last ones, and memory stays at a few batches whatever
//! the bundle's size. Errors arrive in order, after the changes read before them; a
//! reader whose consumer goes away stops at its next batch.

use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::error::BundleError;
use super::model::Change;
use super::reader::BundleReader;

/// Changes per batch handed over.
pub const BATCH: usize = 256;

/// Batches decoded ahead at most.
pub const DEPTH: usize = 8;

/// A bundle's changes, decoded on a thread of their own.
pub struct ReadAhead {
    batches: mpsc::Receiver<Result<Vec<Change>, BundleError>>,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts reading `reader`'s changes (its header was checked already).
    pub fn start(mut reader: BundleReader) -> ReadAhead {
        let (tx, rx) = mpsc::channel(DEPTH);
        let thread = std::thread::spawn(move || loop {
            let mut batch = Vec::with_capacity(BATCH);
            let outcome = loop {
                match reader.next_change() {
                    Ok(Some(c)) => {
                        batch.push(c);
                        if batch.len() == BATCH {
                            break Ok(false);
                        }
                    }
                    Ok(None) => break Ok(true),
                    Err(e) => break Err(e),
                }
            };
            let last = !matches!(outcome, Ok(false));
            if !batch.is_empty() && tx.blocking_send(Ok(batch)).is_err() {
                return; // the consumer went away
            }
            if let Err(e) = outcome {
                let _ = tx.blocking_send(Err(e));
            }
            if last {
                return;
            }
        });
        ReadAhead {
            batches: rx,
            thread: Some(thread),
        }
    }

    /// The next batch of changes; `Ok(None)` once the whole bundle was read and
    /// verified.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Change>>, BundleError> {
        match self.batches.recv().await {
            Some(batch) => batch.map(Some),
            None => {
                if let Some(t) = self.thread.take() {
                    if let Err(panic) = t.join() {
                        std::panic::resume_unwind(panic); // a bug in the reader
                    }
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{open, BundleMeta, BundleWriter};
    use crate::dev::bundle_synth::{fixed_keys, fixed_peers, obs_change, obs_columns};
    use rand::SeedableRng;

    fn sealed(n: u64) -> (tempfile::TempDir, std::path::PathBuf, Vec<Change>) {
        let dir = tempfile::tempdir().unwrap();
        let meta = BundleMeta::new("clinic-a", "hub", 1, [0; 32]);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut w = BundleWriter::new(
            dir.path(),
            &fixed_keys("clinic-a"),
            &fixed_keys("hub").public(),
            meta,
            &mut rng,
        )
        .unwrap();
        w.declare_table("obs", &obs_columns()).unwrap();
        let changes: Vec<_> = (0..n).map(|i| obs_change("clinic-a", i)).collect();
        for c in &changes {
            w.push(c).unwrap();
        }
        let path = dir.path().join("b.bundle");
        w.finish(&path).unwrap();
        (dir, path, changes)
    }

    fn read_all(path: &std::path::Path) -> Result<Vec<Change>, BundleError> {
        let peers = fixed_peers(&["clinic-a"]);
        let reader = open(path, "hub", &fixed_keys("hub"), &peers)?;
        // (The bundle vectors' test holds its errors equal to the plain reader's.)
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut ahead = ReadAhead::start(reader);
            let mut out = Vec::new();
            while let Some(batch) = ahead.next_batch().await? {
                assert!(batch.len() <= BATCH);
                out.extend(batch);
            }
            Ok(out)
        })
    }

    #[test]
    fn every_change_arrives_in_order() {
        for n in [0, 1, BATCH as u64, BATCH as u64 * 3 + 7] {
            let (_dir, path, changes) = sealed(n);
            assert_eq!(read_all(&path).unwrap(), changes, "{n} changes");
        }
    }
}
