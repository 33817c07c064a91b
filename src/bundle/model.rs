//! What a bundle carries: row changes, each naming its table, the row's identity, the
//! operation, hybrid-logical-clock versions and the column values.
//!
//! These are the types the sync engine fills in and reads back. Their serde derives are
//! also the wire encoding of values inside the body (postcard; see SPEC.md "Values"), so
//! the order of variants and fields below is part of the format: append, never reorder.

use serde::{Deserialize, Serialize};

/// A hybrid logical clock reading. Totally ordered by (wall_us, counter, node).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Wall-clock microseconds since the Unix epoch at the writing node.
    pub wall_us: i64,
    /// Logical counter that breaks ties within one microsecond.
    pub counter: u32,
    /// The node that made the change.
    pub node: String,
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
