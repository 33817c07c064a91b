//! Sealing on a thread of its own: the caller hands changes over in owned batches.
//!
//! Export spends about as long encoding changes (reference slots, serialization,
//! feeding zstd) as it does reading and translating them. [`SealingThread`] owns a
//! [`BundleWriter`] on a thread of its own, so that one core translates the next batch
//! while the other encodes this one. A [`ChangeBatch`] holds its changes' text in one
//! buffer (no allocation per value), and the thread sends emptied batches back for
//! reuse, so that the hand-over costs a copy of the bytes, not fresh pages. The bundle
//! is byte for byte the one [`BundleWriter::push_ref`] would write, change by change.

use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::model::{ChangeRef, IdentityRef, Op, ValueRef, Version};
use super::writer::{BundleWriter, Sealed};
use super::BundleError;

/// Batches in flight between the caller and the thread (each about a thousand
/// changes): enough to ride out a slow batch, few enough to keep memory small.
const DEPTH: usize = 4;

/// A value as a batch holds it: text and bytes as ranges of the batch's buffer.
#[derive(Debug, Clone)]
enum Held {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Decimal(Range<u32>),
    Text(Range<u32>),
    Bytes(Range<u32>),
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
    },
    Time {
        negative: bool,
        hours: u32,
        minutes: u8,
        seconds: u8,
        micros: u32,
    },
    /// A reference: a range of the batch's identity parts.
    Ref(Range<u32>),
}

/// One change of a batch.
#[derive(Debug, Clone)]
struct Entry {
    table: u32,
    /// The change's identity: a range of `parts`.
    identity: Range<u32>,
    op: Op,
    version: Version,
    base: Option<Version>,
    origin: u32,
    values: Range<u32>,
}

/// Changes owned in a few flat buffers, to hand to a [`SealingThread`].
#[derive(Debug, Default)]
pub struct ChangeBatch {
    bytes: Vec<u8>,
    /// Identity parts (of changes and of references), as ranges of `bytes`.
    parts: Vec<Range<u32>>,
    values: Vec<Held>,
    entries: Vec<Entry>,
    /// Table and node names the entries name by index.
    names: Vec<String>,
}

impl ChangeBatch {
    /// How many changes it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.parts.clear();
        self.values.clear();
        self.entries.clear();
        self.names.clear();
    }

    fn text(&mut self, s: &[u8]) -> Range<u32> {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(s);
        start..self.bytes.len() as u32
    }

    fn name(&mut self, name: &str) -> u32 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name.to_string());
                (self.names.len() - 1) as u32
            }
        }
    }

    fn identity(&mut self, id: &IdentityRef) -> Range<u32> {
        let start = self.parts.len() as u32;
        let part = |b: &mut ChangeBatch, p: &str| {
            let r = b.text(p.as_bytes());
            b.parts.push(r);
        };
        match id {
            IdentityRef::One(p) => part(self, p),
            IdentityRef::Parts(ps) => ps.iter().for_each(|p| part(self, p)),
            IdentityRef::Owned(ps) => ps.iter().for_each(|p| part(self, p)),
        }
        start..self.parts.len() as u32
    }

    /// Copies a change in.
    pub fn push(&mut self, c: &ChangeRef) {
        let table = self.name(c.table);
        let origin = self.name(c.origin);
        let identity = self.identity(&c.identity);
        let start = self.values.len() as u32;
        for v in c.values {
            let held = match v {
                ValueRef::Null => Held::Null,
                ValueRef::Int(i) => Held::Int(*i),
                ValueRef::UInt(u) => Held::UInt(*u),
                ValueRef::Float(f) => Held::Float(*f),
                ValueRef::Double(d) => Held::Double(*d),
                ValueRef::Decimal(s) => Held::Decimal(self.text(s.as_bytes())),
                ValueRef::Text(s) => Held::Text(self.text(s.as_bytes())),
                ValueRef::Bytes(b) => Held::Bytes(self.text(b)),
                ValueRef::Date { year, month, day } => Held::Date {
                    year: *year,
                    month: *month,
                    day: *day,
                },
                ValueRef::DateTime {
                    year,
                    month,
                    day,
                    hour,
                    minute,
                    second,
                    micros,
                } => Held::DateTime {
                    year: *year,
                    month: *month,
                    day: *day,
                    hour: *hour,
                    minute: *minute,
                    second: *second,
                    micros: *micros,
                },
                ValueRef::Time {
                    negative,
                    hours,
                    minutes,
                    seconds,
                    micros,
                } => Held::Time {
                    negative: *negative,
                    hours: *hours,
                    minutes: *minutes,
                    seconds: *seconds,
                    micros: *micros,
                },
                ValueRef::Ref(id) => Held::Ref(self.identity(id)),
            };
            self.values.push(held);
        }
        self.entries.push(Entry {
            table,
            identity,
            op: c.op,
            version: c.version.clone(),
            base: c.base_version.cloned(),
            origin,
            values: start..self.values.len() as u32,
        });
    }

    fn str_at(&self, r: &Range<u32>) -> &str {
        // Only whole `&str`s are copied in, so every range is valid UTF-8.
        std::str::from_utf8(&self.bytes[r.start as usize..r.end as usize]).expect("utf-8 text")
    }

    /// Calls `f` on each change, in order, as the borrowed change it was.
    fn each(
        &self,
        mut f: impl FnMut(&ChangeRef) -> Result<(), BundleError>,
    ) -> Result<(), BundleError> {
        // Every part as text, once per batch: identities and references borrow them.
        let parts: Vec<&str> = self.parts.iter().map(|p| self.str_at(p)).collect();
        let identity = |r: &Range<u32>| match r.len() {
            1 => IdentityRef::One(parts[r.start as usize]),
            _ => IdentityRef::Parts(&parts[r.start as usize..r.end as usize]),
        };
        let mut values: Vec<ValueRef> = Vec::new();
        for e in &self.entries {
            values.clear();
            for v in &self.values[e.values.start as usize..e.values.end as usize] {
                values.push(match v {
                    Held::Null => ValueRef::Null,
                    Held::Int(i) => ValueRef::Int(*i),
                    Held::UInt(u) => ValueRef::UInt(*u),
                    Held::Float(x) => ValueRef::Float(*x),
                    Held::Double(d) => ValueRef::Double(*d),
                    Held::Decimal(r) => ValueRef::Decimal(self.str_at(r)),
                    Held::Text(r) => ValueRef::Text(self.str_at(r)),
                    Held::Bytes(r) => {
                        ValueRef::Bytes(&self.bytes[r.start as usize..r.end as usize])
                    }
                    Held::Date { year, month, day } => ValueRef::Date {
                        year: *year,
                        month: *month,
                        day: *day,
                    },
                    Held::DateTime {
                        year,
                        month,
                        day,
                        hour,
                        minute,
                        second,
                        micros,
                    } => ValueRef::DateTime {
                        year: *year,
                        month: *month,
                        day: *day,
                        hour: *hour,
                        minute: *minute,
                        second: *second,
                        micros: *micros,
                    },
                    Held::Time {
                        negative,
                        hours,
                        minutes,
                        seconds,
                        micros,
                    } => ValueRef::Time {
                        negative: *negative,
                        hours: *hours,
                        minutes: *minutes,
                        seconds: *seconds,
                        micros: *micros,
                    },
                    Held::Ref(r) => ValueRef::Ref(identity(r)),
                });
            }
            f(&ChangeRef {
                table: &self.names[e.table as usize],
                identity: identity(&e.identity),
                op: e.op,
                version: &e.version,
                base_version: e.base.as_ref(),
                origin: &self.names[e.origin as usize],
                values: &values,
            })?;
        }
        Ok(())
    }
}

/// What the caller sends the thread.
enum Message {
    Declare(String, Vec<String>),
    Changes(ChangeBatch),
}

/// A [`BundleWriter`] on a thread of its own.
pub struct SealingThread {
    to: Option<SyncSender<Message>>,
    spare: Receiver<ChangeBatch>,
    handle: Option<JoinHandle<Result<BundleWriter, BundleError>>>,
}

impl SealingThread {
    /// Moves `writer` to a new thread.
    pub fn start(mut writer: BundleWriter) -> Result<SealingThread, BundleError> {
        let (to, from) = sync_channel::<Message>(DEPTH);
        let (give_back, spare) = sync_channel::<ChangeBatch>(DEPTH + 2);
        let handle = std::thread::Builder::new()
            .name("ferry-seal".into())
            .spawn(move || {
                for m in from {
                    match m {
                        Message::Declare(t, cols) => writer.declare_table(&t, &cols)?,
                        Message::Changes(mut b) => {
                            b.each(|c| writer.push_ref(c))?;
                            b.clear();
                            let _ = give_back.try_send(b);
                        }
                    }
                }
                Ok(writer)
            })
            .map_err(|e| BundleError::Io {
                path: "<sealing thread>".into(),
                source: e,
            })?;
        Ok(SealingThread {
            to: Some(to),
            spare,
            handle: Some(handle),
        })
    }

    /// An empty batch (one the thread is done with, when there is one).
    pub fn batch(&self) -> ChangeBatch {
        self.spare.try_recv().unwrap_or_default()
    }

    /// Declares a table (see [`BundleWriter::declare_table`]).
    pub fn declare_table(&mut self, name: &str, columns: &[String]) -> Result<(), BundleError> {
        self.send_message(Message::Declare(name.to_string(), columns.to_vec()))
    }

    /// Hands a batch over; waits while [`DEPTH`] batches are in flight.
    pub fn send(&mut self, batch: ChangeBatch) -> Result<(), BundleError> {
        self.send_message(Message::Changes(batch))
    }

    fn send_message(&mut self, m: Message) -> Result<(), BundleError> {
        let sent = self.to.as_ref().map(|to| to.send(m).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The thread stopped: its error says why.
        Err(self
            .join()
            .err()
            .unwrap_or_else(|| BundleError::InvalidParams {
                why: "the sealing thread stopped".into(),
            }))
    }

    fn join(&mut self) -> Result<BundleWriter, BundleError> {
        self.to = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => Err(BundleError::InvalidParams {
                why: "the sealing thread panicked".into(),
            }),
        }
    }

    /// Waits for every batch to be sealed, then finishes the bundle file at `path`.
    pub fn finish(mut self, path: &Path) -> Result<Sealed, BundleError> {
        self.join()?.finish(path)
    }
}

impl Drop for SealingThread {
    fn drop(&mut self) {
        self.to = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
