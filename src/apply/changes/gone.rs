//! The keys of rows whose identity is another row's, once that row was deleted.
//!
//! A subclass row's key is its parent's local id (a patient's is its person's), and a
//! composite key's parts are the local ids of the rows they refer to: both are found
//! through those rows' identities. A bundle applies tables parents first, so when a
//! patient is deleted with its person, the person's delete runs first, and the
//! patient's identity then finds no row: its delete was taken for a tombstone only, the
//! patient row stayed, and the check of deleted rows refused the bundle for good
//! (issue 4 review). So the applier remembers the local ids of the rows it deletes of
//! the tables other rows take their identity from ([`Gone`]), and a later delete in
//! the same run whose key does not resolve finds it there ([`Applier::keys_of_gone`]).

use std::collections::{HashMap, HashSet};

use mysql_async::{Conn, Value as MyValue};

use super::{identity_text, Applier};
use crate::apply::resolve::KeyValues;
use crate::bundle::{Change, Identity, Op};
use crate::db::DbError;
use crate::schema::{Identity as Rule, SyncPlan};

/// Local ids of the rows deleted so far in a run, of the tables whose rows other rows
/// take their identity from, by (table, identity text).
#[derive(Debug, Default)]
pub(crate) struct Gone {
    /// The tables worth remembering (a subclass table's parent, a composite key's
    /// referenced table).
    tables: HashSet<String>,
    ids: HashMap<(String, String), i64>,
}

impl Gone {
    pub fn new(plan: &SyncPlan) -> Gone {
        let mut tables = HashSet::new();
        for (_, s) in plan.synced() {
            match &s.identity {
                Rule::Parent { parent, .. } => {
                    tables.insert(parent.clone());
                }
                Rule::Composite { parts } => {
                    tables.extend(parts.iter().filter_map(|p| p.references.clone()));
                }
                _ => {}
            }
        }
        Gone {
            tables,
            ids: HashMap::new(),
        }
    }

    /// Remembers a deleted row of `table`, when other rows may take their identity
    /// from it.
    pub fn note(&mut self, table: &str, identity: &Identity, local_id: Option<i64>) {
        if let Some(id) = local_id.filter(|_| self.tables.contains(table)) {
            self.ids
                .insert((table.to_string(), identity_text(identity)), id);
        }
    }

    fn get(&self, table: &str, part: &str) -> Option<i64> {
        self.ids
            .get(&(table.to_string(), part.to_string()))
            .copied()
    }
}

impl Applier<'_> {
    /// Fills in the keys of deletes that did not resolve because a row they take
    /// their identity from was deleted earlier in the run (where the key refers to
    /// that row's integer primary key, as OpenMRS's all do).
    pub(super) async fn keys_of_gone(
        &mut self,
        conn: &mut Conn,
        table: &str,
        changes: &[Change],
        keys: &mut [Option<KeyValues>],
    ) -> Result<(), DbError> {
        let Some(rule) = self
            .plan
            .table(table)
            .and_then(|t| t.synced())
            .map(|s| s.identity.clone())
        else {
            return Ok(());
        };
        let resolver = self.resolver();
        for (c, key) in changes.iter().zip(keys.iter_mut()) {
            if key.is_some() || c.op != Op::Delete {
                continue;
            }
            // A part's value: the remembered id of a deleted row, else the row's own.
            let refers_to_pk = |target: &str, column: &str| {
                let fk = self.schema.tables.get(table)?.fk_on(column)?;
                (resolver.int_pk(target).as_deref() == Some(fk.ref_columns[0].as_str()))
                    .then(|| fk.ref_columns[0].clone())
            };
            *key = match &rule {
                Rule::Parent { column, parent } => refers_to_pk(parent, column)
                    .and_then(|_| self.gone.get(parent, &identity_text(&c.identity)))
                    .map(|id| vec![MyValue::Int(id)]),
                Rule::Composite { parts }
                    if parts.len() == c.identity.0.len()
                        && parts.iter().zip(&c.identity.0).any(|(p, part)| {
                            p.references
                                .as_deref()
                                .is_some_and(|t| self.gone.get(t, part).is_some())
                        }) =>
                {
                    let mut values = Vec::new();
                    for (p, part) in parts.iter().zip(&c.identity.0) {
                        let value = match &p.references {
                            None => Some(MyValue::from(part.clone())),
                            Some(target) => match refers_to_pk(target, &p.column) {
                                None => None,
                                Some(pk) => match self.gone.get(target, part) {
                                    Some(id) => Some(MyValue::Int(id)),
                                    None => resolver
                                        .ref_values(
                                            conn,
                                            target,
                                            &pk,
                                            &[Identity(vec![part.clone()])],
                                        )
                                        .await?
                                        .pop()
                                        .flatten(),
                                },
                            },
                        };
                        match value {
                            Some(v) => values.push(v),
                            None => break,
                        }
                    }
                    (values.len() == parts.len()).then_some(values)
                }
                _ => None,
            };
        }
        Ok(())
    }
}
