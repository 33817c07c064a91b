//! `ferry verify`: the proof of convergence. Each synced table is digested in uuid
//! space (the representation of [`crate::export::rows::TableReader`]: identity plus
//! carried values, every foreign key and soft reference given as the referenced row's
//! identity, local integer ids left out), so two nodes' digests are equal iff their
//! synced content is equal, whatever local ids each node gave its rows.
//!
//! Row hash: SHA-256 over the postcard encoding of the tuple
//! `("ferry-verify/1", table, identity parts, values)` ([`row_hash`]); values are
//! [`Value`]s, exact (bytes of text, bit patterns of doubles, NULL distinct from '').
//! Table digest: the sum of its row hashes, read as big-endian 256-bit integers, modulo
//! 2^256 ([`Sum256`]). The sum does not depend on row order, so a full scan streams
//! with no ORDER BY and holds one row at a time. The report's `digest` is SHA-256 over
//! the postcard encoding of the plan fingerprint and every table's (name, rows,
//! digest), so one string says whether everything matches.
//!
//! Summary format (`ferry verify --json`, pretty JSON, nothing node-specific so that
//! nodes in sync print identical bytes):
//!
//! ```json
//! { "format": "ferry-verify/1", "plan_fingerprint": "<hex>", "digest": "<hex>",
//!   "tables": [ { "table": "obs", "rows": 1200, "digest": "<hex>" }, ... ] }
//! ```
//!
//! Tables are the synced tables of the plan that are enabled on this node, in name
//! order. The plan is the one `ferry setup` stored, with the `ferry_table` switches;
//! without setup it is derived from the live schema. [`compare`] names the tables that
//! differ; [`check_plans`] refuses to compare reports made under different plans. The
//! row-level form, for finding *which* rows differ in bounded memory, is in [`rows`].
//! docs/verify.md describes both formats for operators.

pub mod rows;

use std::collections::BTreeMap;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::{Identity, Value};
use crate::capture::setup::{enabled_tables, stored_plan};
use crate::capture::CaptureError;
use crate::db::DbError;
use crate::export::rows::{RowError, TableReader};
use crate::schema::{Schema, SyncPlan};

/// The format tag of the summary and the domain of row hashes.
pub const FORMAT: &str = "ferry-verify/1";

/// Errors of `ferry verify`.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Row(#[from] RowError),
    #[error("table {table} cannot be read with the sync plan: a column or a referenced table is missing\nhint: the schema changed since the plan was made; run `ferry setup` again")]
    Unreadable { table: String },
    #[error("the two nodes have different sync plans (here {here}, there {there}), so their content cannot be compared\nhint: bring both nodes to the same OpenMRS version, run `ferry setup` on each, and verify again")]
    PlanMismatch { here: String, there: String },
    #[error("cannot read {path}: {source}\nhint: give --against the file another node's `ferry verify --json` wrote")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a {expected} file ({detail})\nhint: write it on the other node with `{command}`")]
    Format {
        path: String,
        expected: &'static str,
        command: &'static str,
        detail: String,
    },
    #[error("the {side} rows are out of order at {table} {identity:?}\nhint: a rows file must come unmodified from `ferry verify --rows --json`; if it does, report this as a bug (the database sorted differently than ferry expects)")]
    Unsorted {
        side: &'static str,
        table: String,
        identity: Vec<String>,
    },
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error("the nodes differ: {what}\nhint: the output above names what differs; `ferry verify --rows` names the rows")]
    Differ { what: String },
}

/// A sum of 256-bit big-endian integers modulo 2^256: an order-independent multiset
/// digest of row hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum256(pub [u8; 32]);

impl Sum256 {
    /// Adds `h` modulo 2^256.
    pub fn add(&mut self, h: &[u8; 32]) {
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let s = self.0[i] as u16 + h[i] as u16 + carry;
            self.0[i] = s as u8;
            carry = s >> 8;
        }
    }
}

/// The hash of one row in uuid space.
pub fn row_hash(table: &str, identity: &Identity, values: &[Value]) -> [u8; 32] {
    let mut h = Sha256::new();
    postcard::to_io(&(FORMAT, table, &identity.0, values), &mut h).expect("hashing cannot fail");
    h.finalize().into()
}

/// One table's line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDigest {
    pub table: String,
    pub rows: u64,
    /// Hex of the [`Sum256`] of the table's row hashes.
    pub digest: String,
}

/// What `ferry verify --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Always [`FORMAT`].
    pub format: String,
    /// Hex of [`SyncPlan::fingerprint`].
    pub plan_fingerprint: String,
    /// Hex SHA-256 over the plan fingerprint and every table line.
    pub digest: String,
    pub tables: Vec<TableDigest>,
}

impl VerifyReport {
    fn new(plan_fingerprint: String, tables: Vec<TableDigest>) -> VerifyReport {
        let lines: Vec<(&str, u64, &str)> = tables
            .iter()
            .map(|t| (t.table.as_str(), t.rows, t.digest.as_str()))
            .collect();
        let bytes = postcard::to_allocvec(&(FORMAT, &plan_fingerprint, &lines)).expect("encodes");
        VerifyReport {
            format: FORMAT.to_string(),
            digest: hex::encode(Sha256::digest(bytes)),
            plan_fingerprint,
            tables,
        }
    }

    /// Total rows over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// The plan and tables a node verifies.
#[derive(Debug, Clone)]
pub struct Selection {
    pub plan: SyncPlan,
    /// Synced and enabled tables, in name order.
    pub tables: Vec<String>,
    /// Whether the plan is the one `ferry setup` stored (else derived from the schema).
    pub stored: bool,
}

impl Selection {
    /// Hex of the plan fingerprint.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.plan.fingerprint())
    }
}

/// The stored plan and enabled tables when `ferry setup` has run, else the plan derived
/// from the live schema with every synced table.
pub async fn select(conn: &mut Conn, database: &str) -> Result<Selection, VerifyError> {
    let (plan, enabled, stored) = match stored_plan(conn, database).await {
        Ok(plan) => (plan, enabled_tables(conn).await?, true),
        Err(CaptureError::NotInstalled { .. }) => {
            let schema = Schema::read(conn, database).await?;
            (SyncPlan::derive(&schema), BTreeMap::new(), false)
        }
        Err(e) => return Err(e.into()),
    };
    let mut tables: Vec<String> = plan
        .synced()
        .filter(|(t, _)| enabled.get(*t).copied().unwrap_or(true))
        .map(|(t, _)| t.to_string())
        .collect();
    tables.sort();
    Ok(Selection {
        plan,
        tables,
        stored,
    })
}

/// The readers of `tables` (sorted by name), or the first table that cannot be read.
pub(crate) fn readers(
    plan: &SyncPlan,
    schema: &Schema,
    tables: &[String],
) -> Result<Vec<TableReader>, VerifyError> {
    let mut names: Vec<&String> = tables.iter().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|t| {
            TableReader::new(plan, schema, t)
                .ok_or_else(|| VerifyError::Unreadable { table: t.clone() })
        })
        .collect()
}

/// Digests `tables` of the connected database under `plan`, one streamed full scan per
/// table (memory does not grow with the table).
pub async fn digest(
    conn: &mut Conn,
    database: &str,
    plan: &SyncPlan,
    tables: &[String],
) -> Result<VerifyReport, VerifyError> {
    let schema = Schema::read(conn, database).await?;
    let mut lines = Vec::new();
    for reader in readers(plan, &schema, tables)? {
        let doing = format!("reading table {}", reader.table);
        let mut result = conn
            .exec_iter(reader.select_all(), ())
            .await
            .map_err(DbError::query(doing.clone()))?;
        let mut sum = Sum256::default();
        let mut rows = 0u64;
        while let Some(row) = result.next().await.map_err(DbError::query(doing.clone()))? {
            let (_, identity, values) = reader.decode(&row)?;
            sum.add(&row_hash(&reader.table, &identity, &values));
            rows += 1;
        }
        lines.push(TableDigest {
            table: reader.table.clone(),
            rows,
            digest: hex::encode(sum.0),
        });
    }
    Ok(VerifyReport::new(hex::encode(plan.fingerprint()), lines))
}

/// Refuses to compare reports made under different plans.
pub fn check_plans(here: &str, there: &str) -> Result<(), VerifyError> {
    if here == there {
        Ok(())
    } else {
        Err(VerifyError::PlanMismatch {
            here: here.to_string(),
            there: there.to_string(),
        })
    }
}

/// How a table differs between two reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TableDiffKind {
    /// Both verified it; the content differs.
    Content { rows_here: u64, rows_there: u64 },
    /// Verified here only (synced and enabled here, not there).
    OnlyHere,
    /// Verified there only.
    OnlyThere,
}

/// One table that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableDiff {
    pub table: String,
    #[serde(flatten)]
    pub kind: TableDiffKind,
}

/// The tables that differ between `here` and `there`, in name order. Call
/// [`check_plans`] first: under different plans equal digests prove nothing.
pub fn compare(here: &VerifyReport, there: &VerifyReport) -> Vec<TableDiff> {
    let a: BTreeMap<&str, &TableDigest> =
        here.tables.iter().map(|t| (t.table.as_str(), t)).collect();
    let b: BTreeMap<&str, &TableDigest> =
        there.tables.iter().map(|t| (t.table.as_str(), t)).collect();
    let mut names: Vec<&str> = a.keys().chain(b.keys()).copied().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let kind = match (a.get(name), b.get(name)) {
                (Some(x), Some(y)) if x.rows == y.rows && x.digest == y.digest => return None,
                (Some(x), Some(y)) => TableDiffKind::Content {
                    rows_here: x.rows,
                    rows_there: y.rows,
                },
                (Some(_), None) => TableDiffKind::OnlyHere,
                (None, _) => TableDiffKind::OnlyThere,
            };
            Some(TableDiff {
                table: name.to_string(),
                kind,
            })
        })
        .collect()
}

/// Reads a summary file written by `ferry verify --json`.
pub fn read_report(path: &std::path::Path) -> Result<VerifyReport, VerifyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| VerifyError::File {
        path: shown.clone(),
        source,
    })?;
    let bad = |detail: String| VerifyError::Format {
        path: shown.clone(),
        expected: "`ferry verify --json`",
        command: "ferry verify --json > FILE",
        detail,
    };
    if text
        .lines()
        .next()
        .is_some_and(|l| l.contains(rows::ROWS_FORMAT))
    {
        return Err(bad(
            "it holds rows; compare it with `ferry verify --rows --against FILE`".into(),
        ));
    }
    let report: VerifyReport = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if report.format != FORMAT {
        return Err(bad(format!(
            "its format is {:?}, not {FORMAT:?}",
            report.format
        )));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(tables: &[(&str, u64, &str)]) -> VerifyReport {
        VerifyReport::new(
            "fp".into(),
            tables
                .iter()
                .map(|(t, n, d)| TableDigest {
                    table: t.to_string(),
                    rows: *n,
                    digest: d.to_string(),
                })
                .collect(),
        )
    }

    #[test]
    fn sum_is_order_independent_and_wraps() {
        let h = |s: &str| row_hash("t", &Identity(vec![s.into()]), &[Value::Int(1)]);
        let (x, y, z) = (h("a"), h("b"), h("c"));
        let mut s1 = Sum256::default();
        for v in [&x, &y, &z] {
            s1.add(v);
        }
        let mut s2 = Sum256::default();
        for v in [&z, &x, &y] {
            s2.add(v);
        }
        assert_eq!(s1, s2);
        let mut w = Sum256([0xff; 32]);
        let mut one = [0u8; 32];
        one[31] = 1;
        w.add(&one);
        assert_eq!(w, Sum256::default(), "2^256 - 1 + 1 wraps to 0");
        // A duplicated row counts twice.
        let mut d = Sum256::default();
        d.add(&x);
        d.add(&x);
        assert_ne!(d, {
            let mut s = Sum256::default();
            s.add(&x);
            s
        });
    }

    #[test]
    fn row_hash_is_exact() {
        let id = Identity(vec!["u".into()]);
        let h = |v: Value| row_hash("t", &id, &[v]);
        assert_ne!(h(Value::Null), h(Value::Text(String::new())));
        assert_ne!(h(Value::Text("a".into())), h(Value::Text("A".into())));
        assert_ne!(h(Value::Double(0.0)), h(Value::Double(-0.0)));
        assert_ne!(
            h(Value::Ref(Identity(vec!["x".into()]))),
            h(Value::Text("x".into()))
        );
        assert_ne!(
            row_hash("t", &id, &[Value::Int(1)]),
            row_hash("u", &id, &[Value::Int(1)]),
            "the table is part of the row"
        );
    }

    #[test]
    fn compare_names_differing_tables() {
        let a = report(&[("obs", 2, "aa"), ("person", 1, "bb"), ("visit", 0, "cc")]);
        let b = report(&[
            ("encounter", 1, "dd"),
            ("obs", 2, "ab"),
            ("person", 1, "bb"),
        ]);
        let diffs = compare(&a, &b);
        assert_eq!(
            diffs,
            vec![
                TableDiff {
                    table: "encounter".into(),
                    kind: TableDiffKind::OnlyThere
                },
                TableDiff {
                    table: "obs".into(),
                    kind: TableDiffKind::Content {
                        rows_here: 2,
                        rows_there: 2
                    }
                },
                TableDiff {
                    table: "visit".into(),
                    kind: TableDiffKind::OnlyHere
                },
            ]
        );
        assert!(compare(&a, &a.clone()).is_empty());
        assert_ne!(a.digest, b.digest);
        assert!(check_plans("x", "x").is_ok());
        assert!(matches!(
            check_plans("x", "y"),
            Err(VerifyError::PlanMismatch { .. })
        ));
    }
}
