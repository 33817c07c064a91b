//! What a bundle carries: row changes, each naming its table, the row's identity, the
//! operation, versions (clock readings with a counter) and the column values.
//!
//! These are the types the sync engine fills in and reads back. Their serde derives are
//! also the wire encoding of values inside the body (postcard; see SPEC.md "Values"), so
//! the order of variants and fields below is part of the format: append, never reorder.

use serde::{Deserialize, Serialize};

/// A clock reading with a tie-breaking counter. Totally ordered by (wall_us, counter, node).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Wall-clock microseconds since the Unix epoch at the writing node.
    pub wall_us: i64,
    /// Logical counter that breaks ties within one microsecond.
    pub counter: u32,
    /// The node that made the change.
    pub node: String,
}

impl Version {
    /// The version of a row as it stood before capture began at `node`: the oldest of
    /// that node's versions (wall clock and counter zero). A full export
    /// (`ferry export --full`) seals rows that no captured change touched with it, so
    /// that any captured edit, anywhere, is later than it.
    pub fn genesis(node: &str) -> Version {
        Version {
            wall_us: 0,
            counter: 0,
            node: node.to_string(),
        }
    }

    /// Whether this is a [`Version::genesis`]: a row's state from before capture.
    pub fn is_genesis(&self) -> bool {
        self.wall_us == 0 && self.counter == 0
    }
}

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Op {
    /// A new row.
    Insert,
    /// New values for an existing row.
    Update,
    /// The row is gone.
    Delete,
}

impl Op {
    /// Lowercase name, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// A row's identity in uuid space: one part (a uuid or a natural key) or several (a
/// composite key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity(pub Vec<String>);

/// One column value, covering every MariaDB type OpenMRS uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Signed integer columns (tinyint .. bigint).
    Int(i64),
    /// Unsigned integer columns (bigint unsigned included).
    UInt(u64),
    /// FLOAT, bit-exact.
    Float(f32),
    /// DOUBLE, bit-exact.
    Double(f64),
    /// DECIMAL, as MariaDB prints it (e.g. "-12.50").
    Decimal(String),
    /// CHAR/VARCHAR/TEXT (utf8mb4).
    Text(String),
    /// BINARY/VARBINARY/BLOB and friends.
    Bytes(Vec<u8>),
    /// DATE; 0000-00-00 is representable.
    Date { year: u16, month: u8, day: u8 },
    /// DATETIME and TIMESTAMP, with fractional seconds; zero datetimes representable.
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
    },
    /// TIME: -838:59:59.000000 to 838:59:59.000000.
    Time {
        negative: bool,
        hours: u32,
        minutes: u8,
        seconds: u8,
        micros: u32,
    },
    /// A foreign key, given as the referenced row's identity.
    Ref(Identity),
}

/// One row change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The table's name.
    pub table: String,
    /// The row's identity.
    pub identity: Identity,
    /// What happened.
    pub op: Op,
    /// The version this change creates.
    pub version: Version,
    /// The version the change was made on top of, if the row existed.
    pub base_version: Option<Version>,
    /// The node where the change was first made.
    pub origin: String,
    /// The values in the order of the table's column list; empty for Delete.
    pub values: Vec<Value>,
}

/// A borrowed [`Value`]: the same variants in the same order, so it serializes to the
/// same bytes. Export seals rows through it without copying their text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum ValueRef<'a> {
    Null,
    Int(i64),
    UInt(u64),
    Float(f32),
    Double(f64),
    Decimal(&'a str),
    Text(&'a str),
    Bytes(&'a [u8]),
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
    Ref(IdentityRef<'a>),
}

/// A borrowed [`Identity`] (serializes to the same bytes): one part, or several.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IdentityRef<'a> {
    One(&'a str),
    Parts(&'a [&'a str]),
    Owned(&'a [String]),
}

impl IdentityRef<'_> {
    /// How many parts.
    pub fn len(&self) -> usize {
        match self {
            IdentityRef::One(_) => 1,
            IdentityRef::Parts(p) => p.len(),
            IdentityRef::Owned(p) => p.len(),
        }
    }

    /// Whether it has no part.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Serialize for IdentityRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Seq<'b, 'a>(&'b IdentityRef<'a>);
        impl Serialize for Seq<'_, '_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                match self.0 {
                    IdentityRef::One(p) => seq.serialize_element(p)?,
                    IdentityRef::Parts(ps) => {
                        for p in *ps {
                            seq.serialize_element(p)?;
                        }
                    }
                    IdentityRef::Owned(ps) => {
                        for p in *ps {
                            seq.serialize_element(p)?;
                        }
                    }
                }
                seq.end()
            }
        }
        // The same shape as the derived form of `Identity(Vec<String>)`.
        s.serialize_newtype_struct("Identity", &Seq(self))
    }
}

impl Value {
    /// The borrowed form.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Int(*i),
            Value::UInt(u) => ValueRef::UInt(*u),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Double(d) => ValueRef::Double(*d),
            Value::Decimal(s) => ValueRef::Decimal(s),
            Value::Text(s) => ValueRef::Text(s),
            Value::Bytes(b) => ValueRef::Bytes(b),
            Value::Date { year, month, day } => ValueRef::Date {
                year: *year,
                month: *month,
                day: *day,
            },
            Value::DateTime {
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
            Value::Time {
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
            Value::Ref(id) => ValueRef::Ref(IdentityRef::Owned(&id.0)),
        }
    }
}

impl ValueRef<'_> {
    /// The owned form.
    pub fn to_value(&self) -> Value {
        match *self {
            ValueRef::Null => Value::Null,
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::UInt(u) => Value::UInt(u),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Double(d) => Value::Double(d),
            ValueRef::Decimal(s) => Value::Decimal(s.to_string()),
            ValueRef::Text(s) => Value::Text(s.to_string()),
            ValueRef::Bytes(b) => Value::Bytes(b.to_vec()),
            ValueRef::Date { year, month, day } => Value::Date { year, month, day },
            ValueRef::DateTime {
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
            ValueRef::Time {
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
            ValueRef::Ref(id) => Value::Ref(id.to_identity()),
        }
    }
}

impl IdentityRef<'_> {
    /// The owned form.
    pub fn to_identity(&self) -> Identity {
        Identity(match self {
            IdentityRef::One(p) => vec![p.to_string()],
            IdentityRef::Parts(ps) => ps.iter().map(|p| p.to_string()).collect(),
            IdentityRef::Owned(ps) => ps.to_vec(),
        })
    }
}

/// A borrowed [`Change`], for sealing without building one.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRef<'a> {
    pub table: &'a str,
    pub identity: IdentityRef<'a>,
    pub op: Op,
    pub version: &'a Version,
    pub base_version: Option<&'a Version>,
    pub origin: &'a str,
    pub values: &'a [ValueRef<'a>],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(wall_us: i64, counter: u32, node: &str) -> Version {
        Version {
            wall_us,
            counter,
            node: node.into(),
        }
    }

    #[test]
    fn versions_order_by_wall_then_counter_then_node() {
        let mut vs = vec![v(2, 0, "a"), v(1, 5, "b"), v(1, 5, "a"), v(1, 0, "z")];
        vs.sort();
        assert_eq!(
            vs,
            vec![v(1, 0, "z"), v(1, 5, "a"), v(1, 5, "b"), v(2, 0, "a")]
        );
    }

    #[test]
    fn value_wire_encoding_is_pinned() {
        // The variant tags and field encodings are part of SPEC.md; this pins them.
        let enc = |v: &Value| postcard::to_allocvec(v).unwrap();
        assert_eq!(enc(&Value::Null), [0]);
        assert_eq!(enc(&Value::Int(-2)), [1, 3]);
        assert_eq!(enc(&Value::UInt(300)), [2, 0xac, 0x02]);
        assert_eq!(enc(&Value::Float(1.0)), [3, 0, 0, 0x80, 0x3f]);
        assert_eq!(enc(&Value::Double(-0.0)), [4, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(enc(&Value::Decimal("1.5".into())), [5, 3, b'1', b'.', b'5']);
        assert_eq!(enc(&Value::Text("é".into())), [6, 2, 0xc3, 0xa9]);
        assert_eq!(enc(&Value::Bytes(vec![0, 255])), [7, 2, 0, 255]);
        assert_eq!(
            enc(&Value::Date {
                year: 2024,
                month: 2,
                day: 29
            }),
            [8, 0xe8, 0x0f, 2, 29]
        );
        assert_eq!(
            enc(&Value::DateTime {
                year: 0,
                month: 0,
                day: 0,
                hour: 0,
                minute: 0,
                second: 0,
                micros: 0
            }),
            [9, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            enc(&Value::Time {
                negative: true,
                hours: 838,
                minutes: 59,
                seconds: 59,
                micros: 999_999
            }),
            [10, 1, 0xc6, 0x06, 59, 59, 0xbf, 0x84, 0x3d]
        );
        assert_eq!(
            enc(&Value::Ref(Identity(vec!["ab".into()]))),
            [11, 1, 2, b'a', b'b']
        );
    }

    #[test]
    fn borrowed_values_encode_like_owned_ones() {
        let values = vec![
            Value::Null,
            Value::Int(-2),
            Value::UInt(300),
            Value::Float(1.5),
            Value::Double(-0.0),
            Value::Decimal("1.5".into()),
            Value::Text("é".into()),
            Value::Bytes(vec![0, 255, 7]),
            Value::Date {
                year: 2024,
                month: 2,
                day: 29,
            },
            Value::DateTime {
                year: 0,
                month: 0,
                day: 0,
                hour: 1,
                minute: 2,
                second: 3,
                micros: 4,
            },
            Value::Time {
                negative: true,
                hours: 838,
                minutes: 59,
                seconds: 59,
                micros: 999_999,
            },
            Value::Ref(Identity(vec!["ab".into(), "cd".into()])),
        ];
        for v in &values {
            let r = v.as_ref();
            assert_eq!(
                postcard::to_allocvec(&r).unwrap(),
                postcard::to_allocvec(v).unwrap(),
                "{v:?}"
            );
            assert_eq!(&r.to_value(), v);
        }
        let id = Identity(vec!["x".into(), "y".into()]);
        let enc = |i: IdentityRef| postcard::to_allocvec(&i).unwrap();
        let want = postcard::to_allocvec(&id).unwrap();
        assert_eq!(enc(IdentityRef::Parts(&["x", "y"])), want);
        assert_eq!(enc(IdentityRef::Owned(&id.0)), want);
        assert_eq!(
            enc(IdentityRef::One("x")),
            postcard::to_allocvec(&Identity(vec!["x".into()])).unwrap()
        );
    }

    #[test]
    fn doubles_round_trip_bit_exact() {
        for bits in [0x7ff8_0000_0000_0001u64, 0x8000_0000_0000_0000, 1] {
            let d = Value::Double(f64::from_bits(bits));
            let back: Value = postcard::from_bytes(&postcard::to_allocvec(&d).unwrap()).unwrap();
            match back {
                Value::Double(x) => assert_eq!(x.to_bits(), bits),
                other => panic!("got {other:?}"),
            }
        }
    }
}
