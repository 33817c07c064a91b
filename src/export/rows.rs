//! Reading rows in uuid space: a table's rows as their identity plus the carried
//! column values, with every foreign key and soft reference given as the referenced
//! row's identity and local integer ids left out.
//!
//! [`TableReader`] builds one SELECT per table. References to tables identified by a
//! uuid or natural key are resolved by LEFT JOINs (cheap on full scans); deeper ones
//! (a reference to a subclass table, a soft reference) by correlated subqueries. The
//! raw value of every reference is selected too, so that a dangling reference is an
//! error naming the row instead of a silent NULL. Values are decoded by column type
//! into [`Value`]s exactly (zero dates, fractional seconds, bit-exact doubles).

use mysql_async::{Row, Value as MyValue};

use crate::bundle::{Identity, Value, ValueRef};
use crate::db::{ident, literal};
use crate::schema::identity_sql::{parse_identity, referenced_identity, row_identity};
use crate::schema::introspect::Column;
use crate::schema::plan::SoftRef;
use crate::schema::soft_refs::SoftRefEncoding;
use crate::schema::{Identity as IdentityRule, Schema, SyncPlan};

/// Errors reading rows in uuid space.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("{table} row {key} refers through {column} to {target} row {value}, which does not exist\nhint: repair the reference in the database (ferry never invents rows)")]
    Dangling {
        table: String,
        key: String,
        column: String,
        target: String,
        value: String,
    },
    #[error("{table} has a row whose identity is empty or malformed ({key:?})\nhint: give the row a uuid, or switch the table off with `ferry tables disable {table}`")]
    BadIdentity { table: String, key: String },
    #[error("{table} row {row_id} was written before the row it takes its identity from (foreign key checks off?), and that row still does not exist\nhint: insert the missing row (for a patient, its person) or delete this one, then export again")]
    NoIdentity { table: String, row_id: i64 },
    #[error("{table}.{column} holds a value ferry cannot read as {data_type}: {detail}")]
    Decode {
        table: String,
        column: String,
        data_type: String,
        detail: String,
    },
}

/// How one carried column is selected and decoded.
#[derive(Debug, Clone)]
enum Carried {
    /// A plain value of the given column type.
    Plain(Column),
    /// A foreign key: raw value at `raw`, identity at `raw + 1`.
    Ref { target: String },
    /// A soft reference by local id: raw value, identity (NULL when the type says the
    /// value is no reference), and the discriminator.
    Soft {
        column: Column,
        targets: Vec<String>,
    },
}

/// Reads one synced table's rows in uuid space.
#[derive(Debug, Clone)]
pub struct TableReader {
    pub table: String,
    /// The carried columns, in plan order (the order of [`Value`]s).
    pub columns: Vec<String>,
    arity: usize,
    carried: Vec<Carried>,
    select: String,
    from: String,
    /// The integer primary key, when the table has one (`ferry_change.row_id`).
    pub row_id: Option<String>,
    key_expr: String,
}

impl TableReader {
    /// The reader for `table`, or `None` when the table is not synced.
    pub fn new(plan: &SyncPlan, schema: &Schema, table: &str) -> Option<TableReader> {
        let synced = plan.table(table)?.synced()?;
        let info = schema.tables.get(table)?;
        let key_expr = row_identity(plan, schema, table, &|c| format!("t.{}", ident(c)))?;
        let mut select = vec![format!("{key_expr} AS ferry_key")];
        let mut joins = Vec::new();
        let mut carried = Vec::new();
        for (i, name) in synced.columns.iter().enumerate() {
            let col = info.column(name)?.clone();
            let raw = format!("t.{}", ident(name));
            if let Some(r) = synced.references.iter().find(|r| &r.column == name) {
                let target = plan.table(&r.table)?.synced()?;
                let expr = match &target.identity {
                    IdentityRule::Uuid { column, .. } if r.ref_column != *column => {
                        let alias = format!("r{i}");
                        joins.push(format!(
                            "LEFT JOIN {} AS {alias} ON {alias}.{} = {raw}",
                            ident(&r.table),
                            ident(&r.ref_column)
                        ));
                        format!("{alias}.{}", ident(column))
                    }
                    _ => referenced_identity(plan, schema, &r.table, &r.ref_column, &raw)?,
                };
                select.push(raw);
                select.push(expr);
                carried.push(Carried::Ref {
                    target: r.table.clone(),
                });
            } else if let Some(s) = synced
                .soft_refs
                .iter()
                .find(|s| &s.column == name && s.encoding == SoftRefEncoding::LocalId)
            {
                let (expr, disc) = soft_ref_exprs(plan, schema, info, s, &raw)?;
                select.push(raw);
                select.push(expr);
                select.push(disc);
                carried.push(Carried::Soft {
                    column: col,
                    targets: s.targets.keys().cloned().collect(),
                });
            } else {
                select.push(raw);
                carried.push(Carried::Plain(col));
            }
        }
        let row_id = match info.primary_key.as_slice() {
            [pk] if info.column(pk).is_some_and(|c| c.is_integer()) => Some(pk.clone()),
            _ => None,
        };
        Some(TableReader {
            table: table.to_string(),
            columns: synced.columns.clone(),
            arity: synced.identity.arity(),
            carried,
            select: select.join(", "),
            from: format!("{} AS t {}", ident(table), joins.join(" ")),
            row_id,
            key_expr,
        })
    }

    /// SELECT of every row (for verify); no particular order.
    pub fn select_all(&self) -> String {
        format!("SELECT {} FROM {}", self.select, self.from)
    }

    /// SELECT of the rows whose integer key is one of `n` placeholders.
    pub fn select_by_row_ids(&self, n: usize) -> Option<String> {
        let pk = self.row_id.as_ref()?;
        Some(format!(
            "SELECT {}, t.{} FROM {} WHERE t.{} IN ({})",
            self.select,
            ident(pk),
            self.from,
            ident(pk),
            placeholders(n)
        ))
    }

    /// SELECT of the rows whose identity text is one of `n` placeholders.
    pub fn select_by_keys(&self, n: usize) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} IN ({})",
            self.select,
            self.from,
            self.key_expr,
            placeholders(n)
        )
    }

    /// The SQL expression of the identity text over alias `t`.
    pub fn key_expr(&self) -> &str {
        &self.key_expr
    }

    /// Decodes one row of one of the SELECTs above into (identity text, identity, values).
    pub fn decode(&self, row: &Row) -> Result<(String, Identity, Vec<Value>), RowError> {
        let key = match row.as_ref(0) {
            Some(MyValue::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let parts = parse_identity(&key, self.arity)
            .filter(|p| !p.is_empty() && p.iter().all(|s| !s.is_empty()))
            .ok_or_else(|| RowError::BadIdentity {
                table: self.table.clone(),
                key: key.clone(),
            })?;
        let mut values = Vec::with_capacity(self.carried.len());
        let mut i = 1;
        for (name, c) in self.columns.iter().zip(&self.carried) {
            match c {
                Carried::Plain(col) => {
                    values.push(decode_value(&self.table, col, row.as_ref(i))?);
                    i += 1;
                }
                Carried::Ref { target } => {
                    let raw = row.as_ref(i);
                    let id = row.as_ref(i + 1);
                    i += 2;
                    values.push(self.reference(&key, name, target, raw, id)?);
                }
                Carried::Soft { column, targets } => {
                    let raw = row.as_ref(i);
                    let id = row.as_ref(i + 1);
                    let disc = match row.as_ref(i + 2) {
                        Some(MyValue::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                        _ => None,
                    };
                    i += 3;
                    let is_ref = disc.as_ref().is_some_and(|d| targets.contains(d));
                    // Only digits can be a local id (the SQL arm tests the same); any
                    // other text ('', 'NULL', a name) is carried as the value it is.
                    if is_ref && is_local_id(raw) {
                        values.push(self.reference(
                            &key,
                            name,
                            disc.as_deref().unwrap_or(""),
                            raw,
                            id,
                        )?);
                    } else {
                        values.push(decode_value(&self.table, column, raw)?);
                    }
                }
            }
        }
        Ok((key, Identity(parts), values))
    }

    fn reference(
        &self,
        key: &str,
        column: &str,
        target: &str,
        raw: Option<&MyValue>,
        id: Option<&MyValue>,
    ) -> Result<Value, RowError> {
        match (raw, id) {
            (None | Some(MyValue::NULL), _) => Ok(Value::Null),
            (Some(_), Some(MyValue::Bytes(b))) if !b.is_empty() => {
                let text = String::from_utf8_lossy(b).into_owned();
                Ok(Value::Ref(Identity(vec![text])))
            }
            (Some(raw), _) => Err(RowError::Dangling {
                table: self.table.clone(),
                key: key.to_string(),
                column: column.to_string(),
                target: target.to_string(),
                value: raw.as_sql(true),
            }),
        }
    }
}

/// Whether a soft reference's raw value can be a local id: a non-empty run of digits.
pub(crate) fn is_local_id(raw: Option<&MyValue>) -> bool {
    match raw {
        Some(MyValue::Bytes(b)) => !b.is_empty() && b.iter().all(u8::is_ascii_digit),
        Some(MyValue::Int(i)) => *i >= 0,
        Some(MyValue::UInt(_)) => true,
        _ => false,
    }
}

fn placeholders(n: usize) -> String {
    vec!["?"; n.max(1)].join(", ")
}

/// The identity expression and the discriminator expression of a by-id soft reference.
fn soft_ref_exprs(
    plan: &SyncPlan,
    schema: &Schema,
    info: &crate::schema::Table,
    s: &SoftRef,
    raw: &str,
) -> Option<(String, String)> {
    let type_fk = info.fk_on(&s.type_column)?;
    let disc = format!(
        "(SELECT {} FROM {} WHERE {} = t.{})",
        ident(&s.discriminator),
        ident(&s.type_table),
        ident(&type_fk.ref_columns[0]),
        ident(&s.type_column)
    );
    let numeric = format!("({raw} REGEXP '^[0-9]+$')");
    let mut arms = Vec::new();
    for (class, table) in &s.targets {
        let target = schema.tables.get(table)?;
        let [pk] = target.primary_key.as_slice() else {
            continue;
        };
        let expr =
            referenced_identity(plan, schema, table, pk, &format!("CAST({raw} AS UNSIGNED)"))?;
        arms.push(format!("WHEN {} THEN {expr}", literal(class)));
    }
    if arms.is_empty() {
        return None;
    }
    Some((
        format!("IF({numeric}, CASE {disc} {} END, NULL)", arms.join(" ")),
        disc,
    ))
}

/// Decodes one plain column value by its MariaDB type.
pub fn decode_value(table: &str, col: &Column, v: Option<&MyValue>) -> Result<Value, RowError> {
    decode_value_ref(table, col, v).map(|v| v.to_value())
}

/// Decodes one plain column value by its MariaDB type, borrowing its text.
pub fn decode_value_ref<'a>(
    table: &str,
    col: &Column,
    v: Option<&'a MyValue>,
) -> Result<ValueRef<'a>, RowError> {
    decode_as(table, col, ColumnKind::of(col), v)
}

/// What decoding a column's values depends on, read from its type once (not per value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnKind {
    unsigned: bool,
    float: bool,
    date: bool,
    decimal: bool,
    binary: bool,
}

impl ColumnKind {
    pub fn of(col: &Column) -> ColumnKind {
        let t = col.data_type.as_str();
        ColumnKind {
            unsigned: col.column_type.contains("unsigned"),
            float: t == "float",
            date: t == "date",
            decimal: t == "decimal",
            binary: is_binary(t),
        }
    }
}

/// [`decode_value_ref`] with the column's kind already read.
pub fn decode_as<'a>(
    table: &str,
    col: &Column,
    kind: ColumnKind,
    v: Option<&'a MyValue>,
) -> Result<ValueRef<'a>, RowError> {
    let err = |detail: String| RowError::Decode {
        table: table.to_string(),
        column: col.name.clone(),
        data_type: col.data_type.clone(),
        detail,
    };
    let v = match v {
        None | Some(MyValue::NULL) => return Ok(ValueRef::Null),
        Some(v) => v,
    };
    Ok(match v {
        MyValue::Int(i) if kind.unsigned => ValueRef::UInt(*i as u64),
        MyValue::Int(i) => ValueRef::Int(*i),
        MyValue::UInt(u) if kind.unsigned => ValueRef::UInt(*u),
        MyValue::UInt(u) => ValueRef::Int(i64::try_from(*u).map_err(|e| err(e.to_string()))?),
        MyValue::Float(f) if kind.float => ValueRef::Float(*f),
        MyValue::Double(d) if kind.float => ValueRef::Float(*d as f32),
        MyValue::Double(d) => ValueRef::Double(*d),
        MyValue::Float(f) => ValueRef::Double(*f as f64),
        MyValue::Date(y, m, d, ..) if kind.date => ValueRef::Date {
            year: *y,
            month: *m,
            day: *d,
        },
        MyValue::Date(y, m, d, h, i, s, us) => ValueRef::DateTime {
            year: *y,
            month: *m,
            day: *d,
            hour: *h,
            minute: *i,
            second: *s,
            micros: *us,
        },
        MyValue::Time(neg, days, h, m, s, us) => ValueRef::Time {
            negative: *neg,
            hours: days * 24 + *h as u32,
            minutes: *m,
            seconds: *s,
            micros: *us,
        },
        MyValue::Bytes(b) if kind.decimal => {
            ValueRef::Decimal(std::str::from_utf8(b).map_err(|e| err(e.to_string()))?)
        }
        MyValue::Bytes(b) if kind.binary => ValueRef::Bytes(b),
        MyValue::Bytes(b) => {
            ValueRef::Text(std::str::from_utf8(b).map_err(|e| err(e.to_string()))?)
        }
        other => return Err(err(format!("unexpected {other:?}"))),
    })
}

fn is_binary(data_type: &str) -> bool {
    matches!(
        data_type,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "bit"
    )
}

/// Encodes a [`Value`] as a parameter for writing it back. The importer translates
/// references to local ids first; a reference left here is one to a natural key, whose
/// identity is the local value itself.
pub fn to_param(v: &Value) -> MyValue {
    match v {
        Value::Null => MyValue::NULL,
        Value::Int(i) => MyValue::Int(*i),
        Value::UInt(u) => MyValue::UInt(*u),
        Value::Float(f) => MyValue::Float(*f),
        Value::Double(d) => MyValue::Double(*d),
        Value::Decimal(s) | Value::Text(s) => MyValue::Bytes(s.as_bytes().to_vec()),
        Value::Bytes(b) => MyValue::Bytes(b.clone()),
        Value::Date { year, month, day } => MyValue::Date(*year, *month, *day, 0, 0, 0, 0),
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
        } => MyValue::Date(*year, *month, *day, *hour, *minute, *second, *micros),
        Value::Time {
            negative,
            hours,
            minutes,
            seconds,
            micros,
        } => MyValue::Time(
            *negative,
            hours / 24,
            (hours % 24) as u8,
            *minutes,
            *seconds,
            *micros,
        ),
        Value::Ref(id) => MyValue::Bytes(id.0.concat().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_digits_are_soft_reference_ids() {
        let b = |s: &str| MyValue::Bytes(s.as_bytes().to_vec());
        assert!(is_local_id(Some(&b("42"))));
        assert!(is_local_id(Some(&MyValue::Int(7))));
        for v in [b(""), b("NULL"), b("4 2"), b("-1"), b("x1"), MyValue::NULL] {
            assert!(!is_local_id(Some(&v)), "{v:?}");
        }
        assert!(!is_local_id(None));
    }
}
