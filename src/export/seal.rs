//! Sealing on a thread of its own, so that encoding, compression and encryption run
//! while the export reads the next rows from the database.
//!
//! [`SealThread`] owns the [`BundleWriter`]; the export sends it batches of changes
//! through a bounded channel (so memory stays bounded when the database is faster than
//! the compressor) and finally asks it to finish the file.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bundle::{BundleError, BundleWriter, Change, Sealed};

/// Batches in flight between the reader and the sealer.
const QUEUE: usize = 4;

enum Message {
    Declare { table: String, columns: Vec<String> },
    Changes(Vec<Change>),
}

/// What sealing did, when the thread is done.
pub struct SealOutcome {
    pub sealed: Sealed,
    /// Time the thread spent encoding, compressing and encrypting.
    pub busy: Duration,
}

/// The sealing thread.
pub struct SealThread {
    tx: Option<SyncSender<Message>>,
    handle: Option<JoinHandle<Result<SealOutcome, BundleError>>>,
}

impl SealThread {
    /// Starts sealing into `writer`; the bundle is finished into `pending`.
    pub fn start(mut writer: BundleWriter, pending: PathBuf) -> SealThread {
        let (tx, rx) = sync_channel::<Message>(QUEUE);
        let handle = std::thread::Builder::new()
            .name("ferry-seal".into())
            .spawn(move || {
                let mut busy = Duration::ZERO;
                for m in rx {
                    let t = Instant::now();
                    match m {
                        Message::Declare { table, columns } => {
                            writer.declare_table(&table, &columns)?
                        }
                        Message::Changes(list) => {
                            for c in &list {
                                writer.push(c)?;
                            }
                        }
                    }
                    busy += t.elapsed();
                }
                let t = Instant::now();
                let sealed = writer.finish(&pending)?;
                busy += t.elapsed();
                Ok(SealOutcome { sealed, busy })
            })
            .expect("spawning the sealing thread");
        SealThread {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn send(&mut self, m: Message) -> Result<(), BundleError> {
        let sent = self.tx.as_ref().map(|tx| tx.send(m).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The thread stopped: its error says why.
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(BundleError::InvalidParams {
                why: "the sealing thread stopped early".into(),
            }),
        }
    }

    /// Declares a table's columns (before its first change).
    pub fn declare(&mut self, table: &str, columns: &[String]) -> Result<(), BundleError> {
        self.send(Message::Declare {
            table: table.to_string(),
            columns: columns.to_vec(),
        })
    }

    /// Queues changes; blocks while the queue is full.
    pub fn push(&mut self, changes: Vec<Change>) -> Result<(), BundleError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.send(Message::Changes(changes))
    }

    fn join(&mut self) -> Result<SealOutcome, BundleError> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(BundleError::InvalidParams {
                    why: "the sealing thread panicked".into(),
                })
            }),
            None => Err(BundleError::InvalidParams {
                why: "the bundle was already finished".into(),
            }),
        }
    }

    /// Finishes the bundle file; returns its hash, length and the thread's busy time.
    pub fn finish(mut self) -> Result<SealOutcome, BundleError> {
        self.join()
    }
}

impl Drop for SealThread {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
