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

use rustc_hash::FxHasher;
use serde::{Deserialize, Serialize};

use super::format::REF_SLOTS;
use super::model::{Identity, IdentityRef, Value, ValueRef};

/// The variant index of `RefSlot` in a version-2 `Value` (after the 12 of version 1).
pub const REF_SLOT_TAG: u32 = 12;

/// A value the body encoder can write: owned or borrowed.
pub trait RefValue {
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

/// What [`SlotIndex::find_or_put_in`] remembers of one column: the last identity it
/// saw there, its slot, and the count of puts before which that slot still holds it.
#[derive(Debug, Default, Clone)]
pub struct Lane {
    id: String,
    slot: u32,
    until: usize,
}

/// log2 of the positions of [`SlotIndex`]'s index: 16 per slot of the ring, 4 MiB.
const INDEX_BITS: u32 = 20;

/// The writer's side: which slot holds an identity.
///
/// The index is direct-mapped: the position the identity's hash picks holds the last
/// slot put there, plus one (0: none), and a find checks that the slot still holds the
/// identity. A put only stores (no old entry is looked up to be removed: a slot the
/// ring has since overwritten fails the check), which halves the cache misses of a
/// put on a ring too large for the cache. Two live identities whose hashes pick the
/// same position cost the older its entry: it then travels once more in full (rare:
/// 16 positions per slot; a test counts 19 in 43,823 finds), which the format allows
/// (writers choose when to name a slot).
#[derive(Debug)]
pub struct SlotIndex {
    ring: Vec<(u64, Vec<String>)>,
    index: Vec<u32>,
    next: usize,
}

impl Default for SlotIndex {
    fn default() -> SlotIndex {
        SlotIndex {
            ring: Vec::new(),
            index: vec![0; 1 << INDEX_BITS],
            next: 0,
        }
    }
}

/// The index position of a hash (its high bits: FxHash mixes them best).
fn position(hash: u64) -> usize {
    (hash >> (64 - INDEX_BITS)) as usize
}

impl SlotIndex {
    /// The slot that holds `id`, if any.
    pub fn find(&self, id: &IdentityRef) -> Option<u32> {
        self.find_hashed(hash_of(id), id)
    }

    fn find_hashed(&self, hash: u64, id: &IdentityRef) -> Option<u32> {
        let k = self.index[position(hash)].checked_sub(1)?;
        let (held, slot) = &self.ring[k as usize];
        (*held == hash && holds(slot, id)).then_some(k)
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

    /// [`SlotIndex::find_or_put`] for a value of one column (its `lane`), which
    /// remembers the last identity it saw and its slot: consecutive rows mostly refer
    /// to the same patient, encounter, concept and user, and then the answer needs no
    /// hashing. A remembered slot is used only while the ring has not come round to it
    /// again, so it still holds that identity; it may be an older slot than the one
    /// `find` would give (when the identity was put again since), which the reader
    /// resolves the same way.
    pub fn find_or_put_in(&mut self, lane: &mut Lane, id: &IdentityRef) -> Option<u32> {
        let one = match id {
            IdentityRef::One(p) => Some(*p),
            IdentityRef::Parts([p]) => Some(*p),
            IdentityRef::Owned([p]) => Some(p.as_str()),
            _ => None,
        };
        if let Some(p) = one {
            if self.next < lane.until && lane.id == p {
                return Some(lane.slot);
            }
        }
        let found = self.find_or_put(id);
        let k = found.unwrap_or(((self.next - 1) % REF_SLOTS) as u32);
        if let Some(p) = one {
            // The put that will overwrite slot k next: the first counter value from
            // `next` on that falls on k.
            let turn = (k as usize + REF_SLOTS - self.next % REF_SLOTS) % REF_SLOTS;
            lane.until = self.next + turn + 1;
            lane.slot = k;
            lane.id.clear();
            lane.id.push_str(p);
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
            let (held, slot) = &mut self.ring[k];
            *held = hash;
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
        self.index[position(hash)] = k as u32 + 1;
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

    /// The index may forget a live identity (two hashes at one position): the writer
    /// then writes it in full and puts it again, and the reader, replaying the ring,
    /// still resolves every slot the writer names to the identity the writer meant.
    #[test]
    fn a_forgotten_identity_travels_in_full_and_both_sides_still_agree() {
        let mut index = SlotIndex::default();
        let mut table = SlotTable::default();
        let (mut named, mut live) = (0, 0);
        // Each identity's put, counted: the ring holds it for REF_SLOTS puts.
        let mut put_at = std::collections::HashMap::new();
        let mut puts: usize = 0;
        for i in 0..3 * REF_SLOTS {
            // Every third reference repeats one of the last 1000 identities.
            let text = if i % 3 == 0 && i > 0 {
                format!("u-{}", i - 1 - (i * 7919) % i.min(1000))
            } else {
                format!("u-{i}")
            };
            let id = IdentityRef::One(&text);
            let in_ring = put_at.get(&text).is_some_and(|&at| puts - at < REF_SLOTS);
            match index.find_or_put(&id) {
                Some(k) => {
                    named += 1;
                    assert_eq!(table.get(k), Some(&Identity(vec![text.clone()])));
                }
                None => {
                    table.put(&Identity(vec![text.clone()]));
                    put_at.insert(text, puts);
                    puts += 1;
                }
            }
            live += usize::from(in_ring);
        }
        // Forgetting is rare: nearly every identity the ring holds is named by slot.
        assert!(named * 100 >= live * 95, "{named} of {live}");
    }

    /// Long identities and composite ones are matched as exactly as short ones, also
    /// after a long one's slot is taken by a short one and back.
    #[test]
    fn long_and_short_identities_share_the_ring() {
        let mut index = SlotIndex::default();
        let long = "x".repeat(200);
        let longer = format!("{long}y");
        index.put(&IdentityRef::One(&long));
        index.put(&IdentityRef::Parts(&["a", ""]));
        assert_eq!(index.find(&IdentityRef::One(&long)), Some(0));
        assert_eq!(index.find(&IdentityRef::One(&longer)), None);
        assert_eq!(index.find(&IdentityRef::Parts(&["a", ""])), Some(1));
        assert_eq!(index.find(&IdentityRef::One("a")), None);
        for i in 2..REF_SLOTS {
            index.put(&IdentityRef::One(&format!("u-{i}")));
        }
        // Slot 0 goes to a short identity, then slot 0 of the next turn to a long one.
        index.put(&IdentityRef::One("short"));
        assert_eq!(index.find(&IdentityRef::One(&long)), None);
        assert_eq!(index.find(&IdentityRef::One("short")), Some(0));
        for i in 1..REF_SLOTS {
            index.put(&IdentityRef::One(&format!("v-{i}")));
        }
        index.put(&IdentityRef::Parts(&[&longer, "z"]));
        assert_eq!(index.find(&IdentityRef::One("short")), None);
        assert_eq!(index.find(&IdentityRef::Parts(&[&longer, "z"])), Some(0));
        assert_eq!(index.find(&IdentityRef::Parts(&[&longer])), None);
    }

    /// Remembered slots always name what the reader's ring holds, across wraps of the
    /// ring, repeated identities and identities put again.
    #[test]
    fn lanes_name_only_slots_that_still_hold_their_identity() {
        let mut index = SlotIndex::default();
        let mut table = SlotTable::default();
        let mut lanes = vec![Lane::default(); 3];
        let mut n: u64 = 7;
        let mut hits = 0;
        for change in 0..(REF_SLOTS as u64 * 3) {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for (c, lane) in lanes.iter_mut().enumerate() {
                // Runs of one value per column, from pools of several sizes.
                let pool = [3, 5_000, 200_000][c];
                let id = Identity(vec![format!("c{c}-{}", (n >> 33) % pool)]);
                let r = IdentityRef::Owned(&id.0);
                match index.find_or_put_in(lane, &r) {
                    Some(k) => {
                        hits += 1;
                        assert_eq!(table.get(k), Some(&id), "change {change} column {c}");
                    }
                    None => table.put(&id),
                }
            }
            let own = Identity(vec![format!("own-{}", change % 70_000)]);
            index.put(&IdentityRef::Owned(&own.0));
            table.put(&own);
        }
        assert!(hits > REF_SLOTS, "{hits} hits");
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
