//! The body's record stream (the plaintext inside the zstd frame): a sequence of
//! length-prefixed postcard records. A `Table` record declares a table's columns once
//! and a `Node` record a node name once, each taking the next index; `Change` records
//! refer to them by index; one `End` record closes the stream.
//!
//! Framing: `varint(u32 record length) || postcard(Record)`. Records are decoded one at
//! a time into a reused buffer, so memory stays bounded by [`MAX_RECORD_LEN`].
//!
//! Version 2 encodes the same records more tightly: a change's `version.wall_us` is the
//! difference from the previous change's, its `base_version.wall_us` the difference
//! from its own version's, and references may name a reference slot
//! ([`super::slots`]). Version 1 writes every number and reference in full.

use std::io::{self, Read, Write};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::encode::{self, ChangeFields};
use super::error::BundleError;
use super::format::{
    valid_node_name, FORMAT_VERSION, MAX_COLUMNS, MAX_NODES, MAX_RECORD_LEN, MAX_TABLES,
};
use super::model::{Change, ChangeRef, Identity, IdentityRef, Op, Value, Version};
use super::slots::{Lane, RefValue, SlotIndex, SlotTable, WireValue};

/// A version with its node given as a node index (its wall clock as the format
/// version encodes it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct WireVersion {
    pub(super) wall_us: i64,
    pub(super) counter: u32,
    pub(super) node: u32,
}

/// A change as it is encoded (owned, for decoding).
#[derive(Debug, Deserialize)]
struct WireChange {
    table: u32,
    identity: Identity,
    op: Op,
    version: WireVersion,
    base_version: Option<WireVersion>,
    origin: u32,
    values: Vec<WireValue>,
}

/// A body record as it is decoded. Variant order is the wire tag.
#[derive(Debug, Deserialize)]
enum Record {
    Table { name: String, columns: Vec<String> },
    Node { name: String },
    Change(WireChange),
    End { changes: u64 },
}

/// Borrowed twin of [`WireChange`] (with a borrowed identity and a sequence of values);
/// serializes to the same bytes.
#[derive(Serialize)]
struct WireChangeRef<'a, VS: Serialize> {
    table: u32,
    identity: IdentityRef<'a>,
    op: Op,
    version: WireVersion,
    base_version: Option<WireVersion>,
    origin: u32,
    values: VS,
}

/// Borrowed twin of [`Record`]; serializes to the same bytes.
#[derive(Serialize)]
enum RecordRef<'a, VS: Serialize = &'a [Value]> {
    Table {
        name: &'a str,
        columns: &'a [String],
    },
    Node {
        name: &'a str,
    },
    /// Written by [`encode::change`] instead (the same bytes, which a test holds).
    #[cfg_attr(not(test), allow(dead_code))]
    Change(WireChangeRef<'a, VS>),
    End {
        changes: u64,
    },
}

/// A record whose change (if any) holds owned values.
type PlainRecord<'a> = RecordRef<'a, &'a [Value]>;

/// Writes records into `inner` (the compressor).
pub struct BodyEncoder<W: Write> {
    inner: W,
    version: u16,
    /// Declared tables and nodes by name (looked up for every change: FxHash).
    tables: FxHashMap<String, (u32, usize, Vec<String>)>,
    nodes: FxHashMap<String, u32>,
    scratch: Vec<u8>,
    changes: u64,
    /// Version 2: the previous change's wall clock, the slots, and per value its slot.
    prev_wall_us: i64,
    slot_index: SlotIndex,
    /// Per declared table (by index), per column: what its references remember.
    lanes: Vec<Vec<Lane>>,
    slot_scratch: Vec<Option<u32>>,
    /// Bytes of serialized records so far (for the serialize share of the benchmark).
    pub plain_len: u64,
}

impl<W: Write> BodyEncoder<W> {
    /// An encoder writing to `inner` in the newest format version.
    pub fn new(inner: W) -> BodyEncoder<W> {
        BodyEncoder::for_version(inner, FORMAT_VERSION)
    }

    /// An encoder writing format `version` (1 or 2; the caller checked it).
    pub fn for_version(inner: W, version: u16) -> BodyEncoder<W> {
        BodyEncoder {
            inner,
            version,
            tables: FxHashMap::default(),
            nodes: FxHashMap::default(),
            scratch: Vec::with_capacity(1024),
            changes: 0,
            prev_wall_us: 0,
            slot_index: SlotIndex::default(),
            lanes: Vec::new(),
            slot_scratch: Vec::new(),
            plain_len: 0,
        }
    }

    fn emit<VS: Serialize>(&mut self, record: &RecordRef<VS>) -> Result<(), BundleError> {
        self.emit_with(|body| {
            postcard::to_extend(record, body).map_err(|e| BundleError::InvalidParams {
                why: format!("record does not serialize: {e}"),
            })
        })
    }

    /// Frames the record `fill` writes into the (cleared) scratch buffer and writes it.
    fn emit_with(
        &mut self,
        fill: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, BundleError>,
    ) -> Result<(), BundleError> {
        self.scratch.clear();
        let body = fill(std::mem::take(&mut self.scratch))?;
        if body.len() > MAX_RECORD_LEN as usize {
            return Err(BundleError::InvalidParams {
                why: format!(
                    "a record of {} bytes exceeds the limit of {MAX_RECORD_LEN}",
                    body.len()
                ),
            });
        }
        let mut len = [0u8; 5];
        let prefix = varint(body.len() as u32, &mut len);
        let io = |e| BundleError::Io {
            path: "<bundle body>".into(),
            source: e,
        };
        self.inner.write_all(prefix).map_err(io)?;
        self.inner.write_all(&body).map_err(io)?;
        self.plain_len += (prefix.len() + body.len()) as u64;
        self.scratch = body;
        Ok(())
    }

    /// Declares a table's columns; must come before the table's first change. Declaring
    /// the same table again with the same columns does nothing.
    pub fn declare_table(&mut self, name: &str, columns: &[String]) -> Result<(), BundleError> {
        if let Some((_, _, cols)) = self.tables.get(name) {
            if cols.as_slice() == columns {
                return Ok(());
            }
            return Err(BundleError::InvalidParams {
                why: format!("table {name} declared twice with different columns"),
            });
        }
        if self.tables.len() >= MAX_TABLES || columns.len() > MAX_COLUMNS {
            return Err(BundleError::InvalidParams {
                why: format!("more than {MAX_TABLES} tables or {MAX_COLUMNS} columns"),
            });
        }
        self.emit(&PlainRecord::Table { name, columns })?;
        let index = self.tables.len() as u32;
        self.tables
            .insert(name.to_string(), (index, columns.len(), columns.to_vec()));
        self.lanes.push(vec![Lane::default(); columns.len()]);
        Ok(())
    }

    fn node(&mut self, name: &str) -> Result<u32, BundleError> {
        if let Some(&i) = self.nodes.get(name) {
            return Ok(i);
        }
        if !valid_node_name(name) || self.nodes.len() >= MAX_NODES {
            return Err(BundleError::InvalidParams {
                why: format!("node name {name:?} is invalid or one too many"),
            });
        }
        self.emit(&PlainRecord::Node { name })?;
        let i = self.nodes.len() as u32;
        self.nodes.insert(name.to_string(), i);
        Ok(i)
    }

    fn wire_version(&mut self, v: &Version, wall_us: i64) -> Result<WireVersion, BundleError> {
        Ok(WireVersion {
            wall_us,
            counter: v.counter,
            node: self.node(&v.node)?,
        })
    }

    /// Appends one change.
    pub fn push(&mut self, change: &Change) -> Result<(), BundleError> {
        self.push_wire(
            &change.table,
            change.op,
            &change.version,
            change.base_version.as_ref(),
            &change.origin,
            IdentityRef::Owned(&change.identity.0),
            &change.values,
        )
    }

    /// Appends one change given by reference; the same bytes as [`BodyEncoder::push`] of
    /// the owned change.
    pub fn push_ref(&mut self, change: &ChangeRef) -> Result<(), BundleError> {
        self.push_wire(
            change.table,
            change.op,
            change.version,
            change.base_version,
            change.origin,
            change.identity,
            change.values,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn push_wire<V: RefValue>(
        &mut self,
        table_name: &str,
        op: Op,
        version: &Version,
        base: Option<&Version>,
        origin: &str,
        identity: IdentityRef,
        values: &[V],
    ) -> Result<(), BundleError> {
        let (table, ncols) = match self.tables.get(table_name) {
            Some((i, n, _)) => (*i, *n),
            None => {
                return Err(BundleError::UndeclaredTable {
                    table: table_name.to_string(),
                })
            }
        };
        let expected = if op == Op::Delete { 0 } else { ncols };
        if values.len() != expected {
            return Err(BundleError::ValueCount {
                table: table_name.to_string(),
                expected,
                got: values.len(),
            });
        }
        if identity.is_empty() {
            return Err(BundleError::InvalidParams {
                why: format!("a change to {table_name} has an empty identity"),
            });
        }
        let v2 = self.version >= 2;
        let (wall, base_wall) = if v2 {
            let wall = version.wall_us.wrapping_sub(self.prev_wall_us);
            self.prev_wall_us = version.wall_us;
            (wall, base.map(|b| b.wall_us.wrapping_sub(version.wall_us)))
        } else {
            (version.wall_us, base.map(|b| b.wall_us))
        };
        let wire_version = self.wire_version(version, wall)?;
        let base_version = match (base, base_wall) {
            (Some(b), Some(w)) => Some(self.wire_version(b, w)?),
            _ => None,
        };
        let origin = self.node(origin)?;
        let mut slots = std::mem::take(&mut self.slot_scratch);
        slots.clear();
        if v2 {
            let lanes = &mut self.lanes[table as usize];
            for (v, lane) in values.iter().zip(lanes.iter_mut()) {
                let slot = v
                    .reference()
                    .and_then(|id| self.slot_index.find_or_put_in(lane, &id));
                slots.push(slot);
            }
            self.slot_index.put(&identity);
        }
        let fields = ChangeFields {
            table,
            identity,
            op,
            version: wire_version,
            base_version,
            origin,
            values,
            slots: &slots,
        };
        let emitted = self.emit_with(|mut body| {
            encode::change(&mut body, &fields);
            Ok(body)
        });
        self.slot_scratch = slots;
        emitted?;
        self.changes += 1;
        Ok(())
    }

    /// Changes pushed so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The writer records go to.
    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Writes the `End` record; returns the inner writer and the stream's length.
    pub fn finish(mut self) -> Result<(W, u64), BundleError> {
        let changes = self.changes;
        self.emit(&PlainRecord::End { changes })?;
        Ok((self.inner, self.plain_len))
    }
}

/// Encodes `n` as a LEB128 varint into `buf`; returns the used prefix.
fn varint(mut n: u32, buf: &mut [u8; 5]) -> &[u8] {
    let mut i = 0;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf[i] = byte;
            return &buf[..=i];
        }
        buf[i] = byte | 0x80;
        i += 1;
    }
}

/// Reads records from the decompressed body and rebuilds changes.
pub struct BodyDecoder<R: Read> {
    inner: R,
    file: String,
    version: u16,
    tables: Vec<(String, Vec<String>)>,
    nodes: Vec<String>,
    buf: Vec<u8>,
    changes: u64,
    ended: bool,
    /// Version 2: the previous change's wall clock and the reference slots.
    prev_wall_us: i64,
    slots: SlotTable,
}

impl<R: Read> BodyDecoder<R> {
    /// A decoder over the decompressed record stream of the newest format version.
    pub fn new(inner: R, file: &str) -> BodyDecoder<R> {
        BodyDecoder::for_version(inner, file, FORMAT_VERSION)
    }

    /// A decoder over a record stream of format `version` (one the header check
    /// accepted).
    pub fn for_version(inner: R, file: &str, version: u16) -> BodyDecoder<R> {
        BodyDecoder {
            inner,
            file: file.to_string(),
            version,
            tables: Vec::new(),
            nodes: Vec::new(),
            buf: Vec::new(),
            changes: 0,
            ended: false,
            prev_wall_us: 0,
            slots: SlotTable::default(),
        }
    }

    fn corrupt(&self, why: impl Into<String>) -> BundleError {
        BundleError::Corrupt {
            file: self.file.clone(),
            why: why.into(),
        }
    }

    /// The tables declared so far: name and columns.
    pub fn tables(&self) -> &[(String, Vec<String>)] {
        &self.tables
    }

    /// The count the `End` record stated, once it has been read.
    pub fn ended_with(&self) -> Option<u64> {
        self.ended.then_some(self.changes)
    }

    /// The inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn read_len(&mut self) -> Result<u32, BundleError> {
        let mut n: u32 = 0;
        for i in 0..5 {
            let mut b = [0u8; 1];
            self.inner
                .read_exact(&mut b)
                .map_err(|e| stream_error(&self.file, e, "body ends before its End record"))?;
            let part = (b[0] & 0x7f) as u32;
            if i == 4 && b[0] > 0x0f {
                return Err(self.corrupt("record length overflows"));
            }
            n |= part << (7 * i);
            if b[0] & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.corrupt("record length overflows"))
    }

    /// The next change; `Ok(None)` once the `End` record was read and matched the count.
    pub fn next_change(&mut self) -> Result<Option<Change>, BundleError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let len = self.read_len()?;
            if len > MAX_RECORD_LEN {
                return Err(self.corrupt(format!("record of {len} bytes over the limit")));
            }
            // Grow the buffer only as bytes arrive, so a stated length costs nothing
            // until the data is really there.
            self.buf.clear();
            let got = (&mut self.inner)
                .take(len as u64)
                .read_to_end(&mut self.buf)
                .map_err(|e| stream_error(&self.file, e, "body ends inside a record"))?;
            if got < len as usize {
                return Err(self.corrupt("body ends inside a record"));
            }
            let (record, rest): (Record, &[u8]) = postcard::take_from_bytes(&self.buf)
                .map_err(|e| self.corrupt(format!("undecodable record: {e}")))?;
            if !rest.is_empty() {
                return Err(self.corrupt("bytes after a record"));
            }
            match record {
                Record::Table { name, columns } => {
                    if self.tables.len() >= MAX_TABLES || columns.len() > MAX_COLUMNS {
                        return Err(self.corrupt("too many tables or columns"));
                    }
                    self.tables.push((name, columns));
                }
                Record::Node { name } => {
                    if self.nodes.len() >= MAX_NODES || !valid_node_name(&name) {
                        return Err(self.corrupt("invalid or too many node names"));
                    }
                    self.nodes.push(name);
                }
                Record::Change(w) => return self.rebuild(w).map(Some),
                Record::End { changes } => {
                    if changes != self.changes {
                        return Err(self.corrupt(format!(
                            "End record counts {changes} changes, the body holds {}",
                            self.changes
                        )));
                    }
                    self.ended = true;
                }
            }
        }
    }

    fn node(&self, i: u32) -> Result<String, BundleError> {
        self.nodes
            .get(i as usize)
            .cloned()
            .ok_or_else(|| self.corrupt(format!("undeclared node index {i}")))
    }

    fn version(&self, v: WireVersion, wall_us: i64) -> Result<Version, BundleError> {
        Ok(Version {
            wall_us,
            counter: v.counter,
            node: self.node(v.node)?,
        })
    }

    fn rebuild(&mut self, w: WireChange) -> Result<Change, BundleError> {
        let (table, columns) = self
            .tables
            .get(w.table as usize)
            .ok_or_else(|| self.corrupt(format!("undeclared table index {}", w.table)))?;
        let expected = if w.op == Op::Delete { 0 } else { columns.len() };
        if w.values.len() != expected || w.identity.0.is_empty() {
            return Err(self.corrupt(format!("a change to {table} has the wrong shape")));
        }
        let table = table.clone();
        let v2 = self.version >= 2;
        let (wall, base_wall) = if v2 {
            let wall = self.prev_wall_us.wrapping_add(w.version.wall_us);
            (
                wall,
                w.base_version
                    .as_ref()
                    .map(|b| wall.wrapping_add(b.wall_us)),
            )
        } else {
            (
                w.version.wall_us,
                w.base_version.as_ref().map(|b| b.wall_us),
            )
        };
        let version = self.version(w.version, wall)?;
        let base_version = match (w.base_version, base_wall) {
            (Some(b), Some(bw)) => Some(self.version(b, bw)?),
            _ => None,
        };
        let origin = self.node(w.origin)?;
        let mut values = Vec::with_capacity(w.values.len());
        for v in w.values {
            let value = match v.into_value() {
                Ok(value) => {
                    if let (true, Value::Ref(id)) = (v2, &value) {
                        // A full reference takes the next slot; a slot reference does not.
                        self.slots.put(id);
                    }
                    value
                }
                Err(k) if v2 => match self.slots.get(k) {
                    Some(id) => Value::Ref(id.clone()),
                    None => {
                        return Err(self.corrupt(format!(
                            "a change to {table} names reference slot {k}, which is empty"
                        )))
                    }
                },
                Err(_) => {
                    return Err(self.corrupt(format!(
                    "a change to {table} names a reference slot, which version {} does not have",
                    self.version
                )))
                }
            };
            values.push(value);
        }
        if v2 {
            self.slots.put(&w.identity);
            self.prev_wall_us = wall;
        }
        let change = Change {
            table,
            identity: w.identity,
            op: w.op,
            version,
            base_version,
            origin,
            values,
        };
        self.changes += 1;
        Ok(change)
    }
}

/// Turns an error from the decryptor/decompressor chain back into a [`BundleError`].
pub fn stream_error(file: &str, e: io::Error, context: &str) -> BundleError {
    if e.get_ref().is_some_and(|inner| inner.is::<BundleError>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<BundleError>().expect("checked above");
    }
    BundleError::Corrupt {
        file: file.to_string(),
        why: format!("{context}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(table: &str, op: Op, values: Vec<Value>) -> Change {
        Change {
            table: table.into(),
            identity: Identity(vec!["u-1".into()]),
            op,
            version: Version {
                wall_us: 5,
                counter: 1,
                node: "clinic-a".into(),
            },
            base_version: Some(Version {
                wall_us: 4,
                counter: 0,
                node: "hub".into(),
            }),
            origin: "clinic-a".into(),
            values,
        }
    }

    #[test]
    fn round_trip_with_dictionaries() {
        let mut enc = BodyEncoder::new(Vec::new());
        enc.declare_table("obs", &["a".into(), "b".into()]).unwrap();
        enc.declare_table("obs", &["a".into(), "b".into()]).unwrap();
        let c1 = change("obs", Op::Insert, vec![Value::Int(1), Value::Null]);
        let c2 = change("obs", Op::Delete, vec![]);
        enc.push(&c1).unwrap();
        enc.push(&c2).unwrap();
        let (bytes, len) = enc.finish().unwrap();
        assert_eq!(len, bytes.len() as u64);
        let mut dec = BodyDecoder::new(&bytes[..], "f");
        assert_eq!(dec.next_change().unwrap(), Some(c1));
        assert_eq!(dec.next_change().unwrap(), Some(c2));
        assert_eq!(dec.next_change().unwrap(), None);
        assert_eq!(dec.ended_with(), Some(2));
    }

    #[test]
    fn borrowed_changes_encode_like_owned_ones() {
        let owned = |e: &mut BodyEncoder<Vec<u8>>, c: &Change| e.push(c).unwrap();
        let borrowed = |e: &mut BodyEncoder<Vec<u8>>, c: &Change| {
            let values: Vec<crate::bundle::ValueRef> = c.values.iter().map(Value::as_ref).collect();
            e.push_ref(&ChangeRef {
                table: &c.table,
                identity: crate::bundle::IdentityRef::Owned(&c.identity.0),
                op: c.op,
                version: &c.version,
                base_version: c.base_version.as_ref(),
                origin: &c.origin,
                values: &values,
            })
            .unwrap()
        };
        let mut c = change(
            "obs",
            Op::Update,
            vec![
                Value::Text("x".into()),
                Value::Ref(Identity(vec!["r-1".into()])),
            ],
        );
        let mut a = BodyEncoder::new(Vec::new());
        let mut b = BodyEncoder::new(Vec::new());
        for e in [&mut a, &mut b] {
            e.declare_table("obs", &["a".into(), "b".into()]).unwrap();
        }
        owned(&mut a, &c);
        borrowed(&mut b, &c);
        c.base_version = None;
        c.origin = "hub".into();
        owned(&mut a, &c);
        borrowed(&mut b, &c);
        assert_eq!(a.finish().unwrap().0, b.finish().unwrap().0);
    }

    #[test]
    fn writer_refuses_caller_mistakes() {
        let mut enc = BodyEncoder::new(Vec::new());
        let e = enc.push(&change("obs", Op::Delete, vec![])).unwrap_err();
        assert!(e.to_string().contains("not declared"), "{e}");
        enc.declare_table("obs", &["a".into()]).unwrap();
        let e = enc.push(&change("obs", Op::Insert, vec![])).unwrap_err();
        assert!(
            e.to_string()
                .contains("has 0 values but the table declares 1"),
            "{e}"
        );
    }

    #[test]
    fn decoder_refuses_missing_end_and_bad_indices() {
        let mut enc = BodyEncoder::new(Vec::new());
        enc.declare_table("t", &[]).unwrap();
        enc.push(&change("t", Op::Delete, vec![])).unwrap();
        let (bytes, len) = enc.finish().unwrap();
        assert_eq!(len, bytes.len() as u64);
        let cut = &bytes[..bytes.len() - 3];
        let mut dec = BodyDecoder::new(cut, "f");
        dec.next_change().unwrap();
        let e = dec.next_change().unwrap_err();
        assert!(e.to_string().contains("before its End record"), "{e}");
        // A change that names table 7, which was never declared.
        let rec: PlainRecord = RecordRef::Change(WireChangeRef {
            table: 7,
            identity: IdentityRef::One("x"),
            op: Op::Delete,
            version: WireVersion {
                wall_us: 0,
                counter: 0,
                node: 0,
            },
            base_version: None,
            origin: 0,
            values: &[],
        });
        let body = postcard::to_allocvec(&rec).unwrap();
        let mut bytes = vec![body.len() as u8];
        bytes.extend_from_slice(&body);
        let e = BodyDecoder::new(&bytes[..], "f").next_change().unwrap_err();
        assert!(e.to_string().contains("undeclared table index 7"), "{e}");
    }

    fn reference(s: &str) -> Value {
        Value::Ref(Identity(vec![s.into()]))
    }

    #[test]
    fn version_2_refers_back_to_slots_and_reads_back_the_same() {
        let cols = ["person".to_string(), "concept".into(), "group".into()];
        let mut changes = Vec::new();
        for i in 0..50 {
            let mut c = change(
                "obs",
                Op::Insert,
                vec![
                    reference("patient-1"),
                    reference(&format!("concept-{}", i % 3)),
                    // The previous change's own identity.
                    if i == 0 {
                        Value::Null
                    } else {
                        reference(&format!("obs-{}", i - 1))
                    },
                ],
            );
            c.identity = Identity(vec![format!("obs-{i}")]);
            c.version.wall_us = 1_700_000_000_000_000 + i * 1000 - (i % 7) * 5000;
            changes.push(c);
        }
        let encode = |version: u16| {
            let mut enc = BodyEncoder::for_version(Vec::new(), version);
            enc.declare_table("obs", &cols).unwrap();
            for c in &changes {
                enc.push(c).unwrap();
            }
            enc.finish().unwrap().0
        };
        let (v1, v2) = (encode(1), encode(2));
        for (version, bytes) in [(1, &v1), (2, &v2)] {
            let mut dec = BodyDecoder::for_version(&bytes[..], "f", version);
            for c in &changes {
                assert_eq!(dec.next_change().unwrap().as_ref(), Some(c), "v{version}");
            }
            assert_eq!(dec.next_change().unwrap(), None);
        }
        // Every reference but the first of each identity is a slot, every clock a
        // small difference.
        assert!(
            v2.len() * 3 < v1.len() * 2,
            "v1 {} v2 {}",
            v1.len(),
            v2.len()
        );
        // Read with the other version's rules, neither gives the changes back.
        let wrong = BodyDecoder::for_version(&v2[..], "f", 1).next_change();
        assert!(wrong.is_err() || wrong.unwrap().as_ref() != Some(&changes[0]));
    }

    #[test]
    fn decoder_refuses_an_empty_slot_and_a_slot_in_version_1() {
        let slot = Value::Null;
        let mut enc = BodyEncoder::for_version(Vec::new(), 1);
        enc.declare_table("t", &["c".into()]).unwrap();
        enc.push(&change("t", Op::Insert, vec![slot])).unwrap();
        let (mut bytes, _) = enc.finish().unwrap();
        // The single value, Null (tag 0), is the last byte of the change record (the
        // one before End); make it RefSlot(5) (tag 12, then 5), fixing up its length.
        let mut starts = vec![0];
        while *starts.last().unwrap() < bytes.len() {
            let at = *starts.last().unwrap();
            starts.push(at + 1 + bytes[at] as usize);
        }
        let change_at = starts[starts.len() - 3];
        let value_at = change_at + bytes[change_at] as usize;
        assert_eq!(bytes[value_at], 0);
        bytes.splice(value_at..=value_at, [12, 5]);
        bytes[change_at] += 1;
        for (version, phrase) in [
            (1, "names a reference slot, which version 1 does not have"),
            (2, "names reference slot 5, which is empty"),
        ] {
            let e = BodyDecoder::for_version(&bytes[..], "f", version)
                .next_change()
                .unwrap_err();
            assert!(e.to_string().contains(phrase), "{e}");
        }
    }

    /// The hand encoder writes what postcard writes for the same change, for every kind
    /// of value, slot and number size.
    #[test]
    fn hand_encoded_changes_are_postcards_bytes() {
        use crate::bundle::slots::SlottedValues;
        use crate::bundle::ValueRef;
        let parts = ["a".to_string(), "é😀".to_string()];
        let mut n: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            n
        };
        let edge_i = [0, 1, -1, 63, -64, 64, i64::MIN, i64::MAX, 1 << 40];
        let edge_u = [0, 127, 128, 16_383, 16_384, u64::MAX];
        for round in 0..400 {
            let r = next();
            let text = "x".repeat((r % 300) as usize);
            let bytes = vec![0xffu8; (r % 7) as usize];
            let values = [
                ValueRef::Null,
                ValueRef::Int(edge_i[round % edge_i.len()] ^ (r as i64 >> (r % 64))),
                ValueRef::UInt(edge_u[round % edge_u.len()] >> (r % 64)),
                ValueRef::Float(f32::from_bits(r as u32)),
                ValueRef::Double(f64::from_bits(r)),
                ValueRef::Decimal("-12.50"),
                ValueRef::Text(&text),
                ValueRef::Bytes(&bytes),
                ValueRef::Date {
                    year: r as u16,
                    month: 12,
                    day: 31,
                },
                ValueRef::DateTime {
                    year: (r >> 16) as u16,
                    month: 0,
                    day: 0,
                    hour: 23,
                    minute: 59,
                    second: 58,
                    micros: (r >> 32) as u32 % 1_000_000,
                },
                ValueRef::Time {
                    negative: r & 1 == 1,
                    hours: (r >> 8) as u32,
                    minutes: 1,
                    seconds: 2,
                    micros: 999_999,
                },
                ValueRef::Ref(IdentityRef::One("7b6c-uuid")),
                ValueRef::Ref(IdentityRef::Owned(&parts)),
                ValueRef::Ref(IdentityRef::Parts(&["k", ""])),
            ];
            let slots: Vec<Option<u32>> = (0..values.len())
                .map(|i| (next() % 3 == 0).then(|| (next() >> (i + 20)) as u32))
                .collect();
            let stamp = |x: u64| WireVersion {
                wall_us: x as i64 >> (x % 64),
                counter: (x >> 40) as u32,
                node: (x % 300) as u32,
            };
            let (version, base) = (stamp(next()), stamp(next()));
            let base = (round % 2 == 0).then_some(base);
            let identity = if round % 3 == 0 {
                IdentityRef::Parts(&["p", "q-ü"])
            } else {
                IdentityRef::One("9f0e1d2c-3b4a-5968-7786-95a4b3c2d1e0")
            };
            let op = [Op::Insert, Op::Update, Op::Delete][round % 3];
            let (table, origin) = ((r % 70_000) as u32, (r % 5) as u32);
            let mut hand = Vec::new();
            encode::change(
                &mut hand,
                &ChangeFields {
                    table,
                    identity,
                    op,
                    version,
                    base_version: base,
                    origin,
                    values: &values,
                    slots: &slots,
                },
            );
            let serde = postcard::to_allocvec(&RecordRef::Change(WireChangeRef {
                table,
                identity,
                op,
                version,
                base_version: base,
                origin,
                values: SlottedValues {
                    values: &values,
                    slots: &slots,
                },
            }))
            .unwrap();
            assert_eq!(hand, serde, "round {round}");
        }
    }

    #[test]
    fn varints() {
        let mut b = [0u8; 5];
        assert_eq!(varint(0, &mut b), [0]);
        assert_eq!(varint(300, &mut b), [0xac, 0x02]);
        assert_eq!(varint(u32::MAX, &mut b), [0xff, 0xff, 0xff, 0xff, 0x0f]);
    }
}
