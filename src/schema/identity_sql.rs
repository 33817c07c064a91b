//! SQL expressions that compute a row's identity inside the database.
//!
//! Capture triggers use them to record the identity of a changed row in the same
//! transaction as the write (so a deleted row can still be named later), and export
//! uses them to turn foreign keys into identities. A single-part identity is the
//! plain string (a uuid, a natural key); a composite identity is a JSON array of its
//! parts, as MariaDB's `JSON_ARRAY` writes it.

use super::introspect::Schema;
use super::plan::{Identity, SyncPlan};
use crate::db::ident;

/// The identity of a row of `table`, whose columns are read through `row` (for example
/// `|c| format!("NEW.{c}")`). `None` when the table is not synced.
pub fn row_identity(
    plan: &SyncPlan,
    schema: &Schema,
    table: &str,
    row: &dyn Fn(&str) -> String,
) -> Option<String> {
    let synced = plan.table(table)?.synced()?;
    Some(match &synced.identity {
        Identity::Uuid { column, .. } => row(column),
        Identity::Natural { columns } if columns.len() == 1 => row(&columns[0]),
        Identity::Natural { columns } => json_array(columns.iter().map(|c| row(c))),
        Identity::Parent { column, parent } => {
            let fk = schema.tables.get(table)?.fk_on(column)?;
            referenced_identity(plan, schema, parent, &fk.ref_columns[0], &row(column))?
        }
        Identity::Composite { parts } => {
            let mut exprs = Vec::new();
            for p in parts {
                exprs.push(match &p.references {
                    Some(target) => {
                        let fk = schema.tables.get(table)?.fk_on(&p.column)?;
                        referenced_identity(
                            plan,
                            schema,
                            target,
                            &fk.ref_columns[0],
                            &row(&p.column),
                        )?
                    }
                    None => row(&p.column),
                });
            }
            json_array(exprs.into_iter())
        }
    })
}

/// The identity of the row of `table` whose `ref_column` equals the SQL expression
/// `key`: what a foreign key value means in uuid space. Only single-part identities can
/// be referenced (the plan guarantees it for keys).
pub fn referenced_identity(
    plan: &SyncPlan,
    schema: &Schema,
    table: &str,
    ref_column: &str,
    key: &str,
) -> Option<String> {
    let synced = plan.table(table)?.synced()?;
    let lookup = |col: &str| {
        format!(
            "(SELECT {} FROM {} WHERE {} = {key} LIMIT 1)",
            ident(col),
            ident(table),
            ident(ref_column)
        )
    };
    match &synced.identity {
        Identity::Uuid { column, .. } => Some(if ref_column == column {
            key.to_string()
        } else {
            lookup(column)
        }),
        Identity::Natural { columns } if columns.len() == 1 => Some(if ref_column == columns[0] {
            key.to_string()
        } else {
            lookup(&columns[0])
        }),
        Identity::Parent { column, parent } => {
            let fk = schema.tables.get(table)?.fk_on(column)?;
            let own_key = if ref_column == column {
                key.to_string()
            } else {
                lookup(column)
            };
            referenced_identity(plan, schema, parent, &fk.ref_columns[0], &own_key)
        }
        _ => None,
    }
}

fn json_array(parts: impl Iterator<Item = String>) -> String {
    format!("JSON_ARRAY({})", parts.collect::<Vec<_>>().join(", "))
}

/// Splits a stored identity string into its parts, given the identity's arity.
pub fn parse_identity(text: &str, arity: usize) -> Option<Vec<String>> {
    if arity == 1 {
        return Some(vec![text.to_string()]);
    }
    let parts: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
    if parts.len() != arity {
        return None;
    }
    parts
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_identities() {
        assert_eq!(parse_identity("abc", 1), Some(vec!["abc".to_string()]));
        assert_eq!(
            parse_identity(r#"["u-1", "Clerk"]"#, 2),
            Some(vec!["u-1".to_string(), "Clerk".to_string()])
        );
        assert_eq!(parse_identity(r#"["u-1"]"#, 2), None);
        assert_eq!(parse_identity(r#"["u-1", null]"#, 2), None);
    }
}
