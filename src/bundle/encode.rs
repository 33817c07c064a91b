//! Change records written by hand in postcard's encoding.
//!
//! A bundle body is postcard (`bundle-format/SPEC.md`, "Body"), and every record but
//! `Change` is written through serde. `Change` is the one written a million times per
//! bundle, and serde's generic path cost about as much there as decoding the row: each
//! field is a call through the serializer with its result checked. This module
//! writes the same bytes directly: varints (LEB128) for unsigned integers and lengths,
//! zigzag varints for signed ones, single bytes for `u8` and `bool`, little-endian
//! floats, and an enum as its variant index followed by its fields. A test holds it
//! byte for byte equal to postcard's serialization of the same change.

use super::body::WireVersion;
use super::model::{IdentityRef, Op, ValueRef};
use super::slots::{RefValue, REF_SLOT_TAG};

/// The variant index of `Change` among the body's records.
const CHANGE_TAG: u32 = 2;

/// One change record's fields, values given with their slots (`Some(k)` writes
/// `RefSlot(k)` instead of the value).
pub(super) struct ChangeFields<'a, V> {
    pub(super) table: u32,
    pub(super) identity: IdentityRef<'a>,
    pub(super) op: Op,
    pub(super) version: WireVersion,
    pub(super) base_version: Option<WireVersion>,
    pub(super) origin: u32,
    pub(super) values: &'a [V],
    pub(super) slots: &'a [Option<u32>],
}

/// Appends the `Change` record (without its length prefix) to `out`.
pub(super) fn change<V: RefValue>(out: &mut Vec<u8>, c: &ChangeFields<V>) {
    u32v(out, CHANGE_TAG);
    u32v(out, c.table);
    identity(out, &c.identity);
    u32v(out, c.op as u32);
    stamp(out, &c.version);
    match &c.base_version {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            stamp(out, b);
        }
    }
    u32v(out, c.origin);
    u64v(out, c.values.len() as u64);
    for (i, v) in c.values.iter().enumerate() {
        match c.slots.get(i).copied().flatten() {
            Some(k) => {
                u32v(out, REF_SLOT_TAG);
                u32v(out, k);
            }
            None => value(out, &v.as_value()),
        }
    }
}

fn stamp(out: &mut Vec<u8>, s: &WireVersion) {
    i64v(out, s.wall_us);
    u32v(out, s.counter);
    u32v(out, s.node);
}

fn identity(out: &mut Vec<u8>, id: &IdentityRef) {
    u64v(out, id.len() as u64);
    match id {
        IdentityRef::One(p) => text(out, p.as_bytes()),
        IdentityRef::Parts(ps) => ps.iter().for_each(|p| text(out, p.as_bytes())),
        IdentityRef::Owned(ps) => ps.iter().for_each(|p| text(out, p.as_bytes())),
    }
}

/// A value: its variant index (the order of [`ValueRef`]), then its fields.
fn value(out: &mut Vec<u8>, v: &ValueRef) {
    match v {
        ValueRef::Null => out.push(0),
        ValueRef::Int(i) => {
            out.push(1);
            i64v(out, *i);
        }
        ValueRef::UInt(u) => {
            out.push(2);
            u64v(out, *u);
        }
        ValueRef::Float(f) => {
            out.push(3);
            out.extend_from_slice(&f.to_le_bytes());
        }
        ValueRef::Double(d) => {
            out.push(4);
            out.extend_from_slice(&d.to_le_bytes());
        }
        ValueRef::Decimal(s) => {
            out.push(5);
            text(out, s.as_bytes());
        }
        ValueRef::Text(s) => {
            out.push(6);
            text(out, s.as_bytes());
        }
        ValueRef::Bytes(b) => {
            out.push(7);
            text(out, b);
        }
        ValueRef::Date { year, month, day } => {
            out.push(8);
            u64v(out, *year as u64);
            out.push(*month);
            out.push(*day);
        }
        ValueRef::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
        } => {
            out.push(9);
            u64v(out, *year as u64);
            out.extend_from_slice(&[*month, *day, *hour, *minute, *second]);
            u32v(out, *micros);
        }
        ValueRef::Time {
            negative,
            hours,
            minutes,
            seconds,
            micros,
        } => {
            out.push(10);
            out.push(*negative as u8);
            u32v(out, *hours);
            out.push(*minutes);
            out.push(*seconds);
            u32v(out, *micros);
        }
        ValueRef::Ref(id) => {
            out.push(11);
            identity(out, id);
        }
    }
}

/// A string or byte string: its length, then its bytes.
#[inline]
fn text(out: &mut Vec<u8>, b: &[u8]) {
    u64v(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[inline]
fn u32v(out: &mut Vec<u8>, n: u32) {
    u64v(out, n as u64)
}

#[inline]
fn u64v(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[inline]
fn i64v(out: &mut Vec<u8>, n: i64) {
    u64v(out, ((n << 1) ^ (n >> 63)) as u64)
}
