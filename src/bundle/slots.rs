//! Reference slots (format version 2): a reference that names a row the body has
//! named recently travels as that row's slot number instead of its whole identity.
//!
//! Both sides keep the same ring of [`REF_SLOTS`] identities. Walking a change, each
//! value that is a full reference takes the next slot (cyclically, overwriting the
//! oldest), then the change's own identity takes the next one. A value may instead be
//! `RefSlot(k)`: the identity slot `k` holds at that moment. The writer's
//! [`SlotIndex`] finds the slot of an identity by hash; the reader's [`SlotTable`] only
//! replays the ring. Rows written together refer to the same encounters, patients,
//! concepts and users, so most references become a two- or three-byte slot number.

use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};

use super::format::REF_SLOTS;
use super::model::{Identity, IdentityRef, Value, ValueRef};

/// The variant index of `RefSlot` in a version-2 `Value` (after the 12 of version 1).
pub const REF_SLOT_TAG: u32 = 12;

/// A value the body encoder can write: owned or borrowed.
pub trait RefValue: Serialize {
    /// The value, borrowed.
    fn as_value(&self) -> ValueRef<'_>;

    /// The referenced identity, if this value is a reference.
    fn reference(&self) -> Option<IdentityRef<'_>> {
        match self.as_value() {
            ValueRef::Ref(id) => Some(id),
            _ => None,
        }
    }
}

impl RefValue for Value {
    fn as_value(&self) -> ValueRef<'_> {
        self.as_ref()
    }
}

impl RefValue for ValueRef<'_> {
    fn as_value(&self) -> ValueRef<'_> {
        *self
    }
}

/// Calls `f` on each part of a borrowed identity, in order, until it returns false;
/// returns whether it never did.
fn each_part(id: &IdentityRef, mut f: impl FnMut(usize, &str) -> bool) -> bool {
    match id {
        IdentityRef::One(p) => f(0, p),
        IdentityRef::Parts(ps) => ps.iter().enumerate().all(|(i, p)| f(i, p)),
        IdentityRef::Owned(ps) => ps.iter().enumerate().all(|(i, p)| f(i, p)),
    }
}

fn hash_of(id: &IdentityRef) -> u64 {
    let mut h = FxHasher::default();
    each_part(id, |_, p| {
        p.hash(&mut h);
        true
    });
    h.finish()
}

fn holds(slot: &[String], id: &IdentityRef) -> bool {
    slot.len() == id.len() && each_part(id, |i, p| slot[i] == p)
}

/// The writer's side: which slot holds an identity.
#[derive(Debug, Default)]
pub struct SlotIndex {
    ring: Vec<(u64, Vec<String>)>,
    by_hash: FxHashMap<u64, u32>,
    next: usize,
}

impl SlotIndex {
    /// The slot that holds `id`, if any.
    pub fn find(&self, id: &IdentityRef) -> Option<u32> {
        self.find_hashed(hash_of(id), id)
    }

    fn find_hashed(&self, hash: u64, id: &IdentityRef) -> Option<u32> {
        let &k = self.by_hash.get(&hash)?;
        holds(&self.ring[k as usize].1, id).then_some(k)
    }

    /// The slot that holds `id`; if none does, `None`, and `id` goes into the next
    /// slot (what a writer does with each reference).
    pub fn find_or_put(&mut self, id: &IdentityRef) -> Option<u32> {
        let hash = hash_of(id);
        let found = self.find_hashed(hash, id);
        if found.is_none() {
            self.put_hashed(hash, id);
        }
        found
    }

    /// Puts `id` into the next slot.
    pub fn put(&mut self, id: &IdentityRef) {
        self.put_hashed(hash_of(id), id)
    }

    fn put_hashed(&mut self, hash: u64, id: &IdentityRef) {
        let k = self.next % REF_SLOTS;
        self.next += 1;
        if k == self.ring.len() {
            let mut slot = Vec::with_capacity(id.len());
            each_part(id, |_, p| {
                slot.push(p.to_string());
                true
            });
            self.ring.push((hash, slot));
        } else {
            let (old, slot) = &mut self.ring[k];
            if let std::collections::hash_map::Entry::Occupied(e) = self.by_hash.entry(*old) {
                if *e.get() == k as u32 {
                    e.remove();
                }
            }
            *old = hash;
            // Reuse the slot's strings: no allocation once the ring is full.
            slot.truncate(id.len());
            each_part(id, |i, p| {
                match slot.get_mut(i) {
                    Some(s) => {
                        s.clear();
                        s.push_str(p);
                    }
                    None => slot.push(p.to_string()),
                }
                true
            });
        }
        self.by_hash.insert(hash, k as u32);
    }
}

/// The reader's side: the ring replayed.
#[derive(Debug, Default)]
pub struct SlotTable {
    ring: Vec<Identity>,
    next: usize,
}

impl SlotTable {
    /// The identity slot `k` holds; `None` if it was never filled.
    pub fn get(&self, k: u32) -> Option<&Identity> {
        self.ring.get(k as usize)
    }

    /// Puts `id` into the next slot.
    pub fn put(&mut self, id: &Identity) {
        let k = self.next % REF_SLOTS;
        self.next += 1;
        if k == self.ring.len() {
            self.ring.push(id.clone());
        } else {
            self.ring[k].0.clone_from(&id.0);
        }
    }
}

/// A value as a version-2 body holds it: a [`Value`] (the same variants and indices)
/// or a slot number (variant [`REF_SLOT_TAG`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum WireValue {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
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
    Ref(Identity),
    RefSlot(u32),
}

impl WireValue {
    /// The value, or `Err(k)` for a slot number.
    pub fn into_value(self) -> Result<Value, u32> {
        Ok(match self {
            WireValue::Null => Value::Null,
            WireValue::Int(i) => Value::Int(i),
            WireValue::UInt(u) => Value::UInt(u),
            WireValue::Float(f) => Value::Float(f),
            WireValue::Double(d) => Value::Double(d),
            WireValue::Decimal(s) => Value::Decimal(s),
            WireValue::Text(s) => Value::Text(s),
            WireValue::Bytes(b) => Value::Bytes(b),
            WireValue::Date { year, month, day } => Value::Date { year, month, day },
            WireValue::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
            } => Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
            },
            WireValue::Time {
                negative,
                hours,
                minutes,
                seconds,
                micros,
            } => Value::Time {
                negative,
                hours,
                minutes,
                seconds,
                micros,
            },
            WireValue::Ref(id) => Value::Ref(id),
            WireValue::RefSlot(k) => return Err(k),
        })
    }
}

/// A change's values with, per value, the slot to write instead of it (if any);
/// serializes as a `Vec<Value>` would where no slot is given.
pub struct SlottedValues<'a, V> {
    pub values: &'a [V],
    pub slots: &'a [Option<u32>],
}

impl<V: Serialize> Serialize for SlottedValues<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.values.len()))?;
        for (i, v) in self.values.iter().enumerate() {
            match self.slots.get(i).copied().flatten() {
                Some(k) => seq.serialize_element(&Slot(k))?,
                None => seq.serialize_element(v)?,
            }
        }
        seq.end()
    }
}

/// `RefSlot(k)` alone.
struct Slot(u32);

impl Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("Value", REF_SLOT_TAG, "RefSlot", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_table_agree_and_forget_the_oldest() {
        let mut index = SlotIndex::default();
        let mut table = SlotTable::default();
        let id = |i: usize| Identity(vec![format!("u-{i}")]);
        for i in 0..REF_SLOTS + 10 {
            let one = id(i);
            index.put(&IdentityRef::Owned(&one.0));
            table.put(&one);
        }
        // The first ten were overwritten by the last ten.
        assert_eq!(index.find(&IdentityRef::One("u-3")), None);
        let k = index.find(&IdentityRef::One("u-12")).unwrap();
        assert_eq!(k, 12);
        assert_eq!(table.get(k), Some(&id(12)));
        let k = index
            .find(&IdentityRef::One(&format!("u-{}", REF_SLOTS + 3)))
            .unwrap();
        assert_eq!(k, 3);
        assert_eq!(table.get(3), Some(&id(REF_SLOTS + 3)));
        // Composite identities are matched part by part.
        index.put(&IdentityRef::Parts(&["a", "bc"]));
        assert!(index.find(&IdentityRef::Parts(&["ab", "c"])).is_none());
        assert!(index.find(&IdentityRef::Parts(&["a", "bc"])).is_some());
    }

    #[test]
    fn a_slot_serializes_as_variant_twelve() {
        let values = [Value::Int(1), Value::Ref(Identity(vec!["x".into()]))];
        let plain = postcard::to_allocvec(&values.as_slice()).unwrap();
        let same = SlottedValues {
            values: &values,
            slots: &[],
        };
        assert_eq!(postcard::to_allocvec(&same).unwrap(), plain);
        let slotted = SlottedValues {
            values: &values,
            slots: &[None, Some(300)],
        };
        let bytes = postcard::to_allocvec(&slotted).unwrap();
        assert_eq!(bytes, [2, 1, 2, 12, 0xac, 0x02]);
        let back: Vec<WireValue> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back[1], WireValue::RefSlot(300));
        assert_eq!(back[0].clone().into_value(), Ok(Value::Int(1)));
    }
}
