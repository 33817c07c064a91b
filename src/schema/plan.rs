//! The sync plan: what ferry does with every table, derived from the schema alone.
//!
//! For each table the plan says how a row is known across servers (its [`Identity`]),
//! which columns travel, which of them refer to other rows (foreign keys and OpenMRS's
//! soft references) and so travel as the referenced row's identity, or why the table
//! stays node-local. The derivation takes the first rule that applies:
//!
//! 1. Liquibase's bookkeeping tables stay local: each server migrates itself.
//! 2. A table without a primary key stays local: its rows cannot be told apart.
//! 3. A primary key of text columns that are not foreign keys is a natural key
//!    (`global_property.property`, `role.role`, `privilege.privilege`), even when a uuid
//!    column exists: two servers that create the same property mean the same row.
//! 4. A `uuid` column is the identity, with or without a unique index.
//! 5. A primary key that is a foreign key to a table with an identity makes a subclass
//!    table: its rows take the parent's identity (`patient` → `person`).
//! 6. A composite primary key whose parts are foreign keys (to tables with a single-part
//!    identity) or plain non-generated columns is a composite identity (`user_role`).
//! 7. Anything else stays local, with the reason.
//!
//! A synced table whose foreign key points at a local table becomes local too (its rows
//! could not be resolved elsewhere); this repeats until nothing changes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::introspect::{Schema, Table};
use super::soft_refs::{self, SoftRefEncoding};

/// Tables that always stay node-local, with the reason.
pub const ALWAYS_LOCAL: &[(&str, &str)] = &[
    (
        "liquibasechangelog",
        "liquibase migration history belongs to each server",
    ),
    (
        "liquibasechangeloglock",
        "liquibase migration lock belongs to each server",
    ),
];

/// How a row of a table is known on every server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Identity {
    /// The `uuid` column. `unique_index` is false where OpenMRS declares none (users, allergy, ...).
    Uuid { column: String, unique_index: bool },
    /// A natural primary key of plain columns.
    Natural { columns: Vec<String> },
    /// A subclass table: the primary key `column` is a foreign key to `parent`, whose
    /// identity the row shares.
    Parent { column: String, parent: String },
    /// A composite primary key; each part is a plain value or a reference.
    Composite { parts: Vec<KeyPart> },
}

/// One part of a composite identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPart {
    pub column: String,
    /// The table this part refers to; `None` for a plain value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<String>,
}

impl Identity {
    /// The table's columns the identity is made of.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Identity::Uuid { column, .. } | Identity::Parent { column, .. } => vec![column],
            Identity::Natural { columns } => columns.iter().map(String::as_str).collect(),
            Identity::Composite { parts } => parts.iter().map(|p| p.column.as_str()).collect(),
        }
    }

    /// How many strings make one identity value.
    pub fn arity(&self) -> usize {
        match self {
            Identity::Uuid { .. } | Identity::Parent { .. } => 1,
            Identity::Natural { columns } => columns.len(),
            Identity::Composite { parts } => parts.len(),
        }
    }

    /// A short human description.
    pub fn describe(&self) -> String {
        match self {
            Identity::Uuid {
                column,
                unique_index: true,
            } => column.to_string(),
            Identity::Uuid { column, .. } => format!("{column} (no unique index)"),
            Identity::Natural { columns } => format!("natural key ({})", columns.join(", ")),
            Identity::Parent { column, parent } => format!("parent {parent} via {column}"),
            Identity::Composite { parts } => format!(
                "composite ({})",
                parts
                    .iter()
                    .map(|p| match &p.references {
                        Some(t) => format!("{}→{t}", p.column),
                        None => p.column.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A column that refers to another row by a declared foreign key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub column: String,
    pub table: String,
    /// The referenced column (usually the referenced table's primary key).
    pub ref_column: String,
}

/// A column that refers to another row without a foreign key (see [`soft_refs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftRef {
    pub column: String,
    pub type_column: String,
    pub type_table: String,
    pub discriminator: String,
    pub encoding: SoftRefEncoding,
    /// Discriminator value → referenced table (only synced tables present in the schema).
    pub targets: BTreeMap<String, String>,
}

/// The plan for a synced table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedTable {
    pub identity: Identity,
    /// The local integer primary key, which never travels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_id: Option<String>,
    /// The columns that travel, in this order (identity and local id excluded).
    pub columns: Vec<String>,
    pub references: Vec<Reference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub soft_refs: Vec<SoftRef>,
}

/// What ferry does with one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "sync", rename_all = "snake_case")]
pub enum Disposition {
    Synced(SyncedTable),
    Local { reason: String },
}

/// One table's entry in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePlan {
    pub table: String,
    #[serde(flatten)]
    pub disposition: Disposition,
}

impl TablePlan {
    /// The synced-table plan, if the table is synced.
    pub fn synced(&self) -> Option<&SyncedTable> {
        match &self.disposition {
            Disposition::Synced(s) => Some(s),
            Disposition::Local { .. } => None,
        }
    }
}

/// The plan for a whole database, tables in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPlan {
    pub tables: Vec<TablePlan>,
}

impl SyncPlan {
    /// Derives the plan from a schema.
    pub fn derive(schema: &Schema) -> SyncPlan {
        let mut identities: BTreeMap<String, Result<Identity, String>> = BTreeMap::new();
        for name in schema.tables.keys() {
            let mut visiting = BTreeSet::new();
            let id = identity_of(schema, name, &mut identities, &mut visiting);
            identities.insert(name.clone(), id);
        }

        // Build synced tables, then demote tables that refer to local ones until stable.
        let mut dispositions: BTreeMap<String, Disposition> = BTreeMap::new();
        for (name, id) in &identities {
            let table = &schema.tables[name];
            let d = match id {
                Ok(identity) => match synced_table(schema, table, identity.clone()) {
                    Ok(s) => Disposition::Synced(s),
                    Err(reason) => Disposition::Local { reason },
                },
                Err(reason) => Disposition::Local {
                    reason: reason.clone(),
                },
            };
            dispositions.insert(name.clone(), d);
        }
        loop {
            let mut demote: Vec<(String, String)> = Vec::new();
            for (name, d) in &dispositions {
                let Disposition::Synced(s) = d else { continue };
                let mut refs: Vec<(&str, &str)> = s
                    .references
                    .iter()
                    .map(|r| (r.column.as_str(), r.table.as_str()))
                    .collect();
                if let Identity::Parent { column, parent } = &s.identity {
                    refs.push((column, parent));
                }
                if let Identity::Composite { parts } = &s.identity {
                    refs.extend(
                        parts.iter().filter_map(|p| {
                            p.references.as_deref().map(|t| (p.column.as_str(), t))
                        }),
                    );
                }
                for (column, target) in refs {
                    if !matches!(dispositions.get(target), Some(Disposition::Synced(_))) {
                        demote.push((
                            name.clone(),
                            format!("column {column} refers to node-local table {target}"),
                        ));
                        break;
                    }
                }
            }
            if demote.is_empty() {
                break;
            }
            for (name, reason) in demote {
                dispositions.insert(name, Disposition::Local { reason });
            }
        }

        // Soft references only to synced targets.
        let synced: BTreeSet<String> = dispositions
            .iter()
            .filter(|(_, d)| matches!(d, Disposition::Synced(_)))
            .map(|(n, _)| n.clone())
            .collect();
        for (name, d) in dispositions.iter_mut() {
            if let Disposition::Synced(s) = d {
                s.soft_refs = soft_refs_of(schema, &schema.tables[name], &synced);
            }
        }

        SyncPlan {
            tables: dispositions
                .into_iter()
                .map(|(table, disposition)| TablePlan { table, disposition })
                .collect(),
        }
    }

    /// The plan entry for `table`.
    pub fn table(&self, table: &str) -> Option<&TablePlan> {
        self.tables
            .binary_search_by(|t| t.table.as_str().cmp(table))
            .ok()
            .map(|i| &self.tables[i])
    }

    /// The synced tables.
    pub fn synced(&self) -> impl Iterator<Item = (&str, &SyncedTable)> {
        self.tables
            .iter()
            .filter_map(|t| t.synced().map(|s| (t.table.as_str(), s)))
    }

    /// The synced tables in an order where every table comes after the tables it refers
    /// to (cycles, such as users ↔ person, are broken by name order). Export writes
    /// changes in this order so that import rarely meets a reference to a row it has not
    /// seen yet.
    pub fn apply_order(&self) -> Vec<String> {
        let synced: BTreeMap<&str, &SyncedTable> = self.synced().collect();
        let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (name, s) in &synced {
            let mut d: BTreeSet<&str> = s.references.iter().map(|r| r.table.as_str()).collect();
            match &s.identity {
                Identity::Parent { parent, .. } => {
                    d.insert(parent);
                }
                Identity::Composite { parts } => {
                    d.extend(parts.iter().filter_map(|p| p.references.as_deref()));
                }
                _ => {}
            }
            d.remove(name);
            d.retain(|t| synced.contains_key(t));
            deps.insert(name, d);
        }
        let mut order = Vec::new();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        while done.len() < deps.len() {
            let ready: Vec<&str> = deps
                .iter()
                .filter(|(n, d)| !done.contains(*n) && d.iter().all(|x| done.contains(x)))
                .map(|(n, _)| *n)
                .collect();
            let next = if ready.is_empty() {
                // A cycle: take the table with the fewest unmet dependencies and, among
                // those, the one most other waiting tables refer to.
                let waiting_on = |t: &str| {
                    deps.iter()
                        .filter(|(n, d)| !done.contains(*n) && d.contains(t))
                        .count()
                };
                let (n, _) = deps
                    .iter()
                    .filter(|(n, _)| !done.contains(*n))
                    .min_by_key(|(n, d)| {
                        (
                            d.iter().filter(|x| !done.contains(*x)).count(),
                            std::cmp::Reverse(waiting_on(n)),
                            **n,
                        )
                    })
                    .expect("tables left");
                vec![*n]
            } else {
                ready
            };
            for n in next {
                done.insert(n);
                order.push(n.to_string());
            }
        }
        order
    }

    /// SHA-256 over the canonical JSON of the plan: equal on two nodes iff they would
    /// read each other's bundles the same way.
    pub fn fingerprint(&self) -> [u8; 32] {
        let json = serde_json::to_vec(self).expect("plan serializes");
        Sha256::digest(json).into()
    }
}

fn identity_of(
    schema: &Schema,
    name: &str,
    memo: &mut BTreeMap<String, Result<Identity, String>>,
    visiting: &mut BTreeSet<String>,
) -> Result<Identity, String> {
    if let Some(done) = memo.get(name) {
        return done.clone();
    }
    if let Some((_, reason)) = ALWAYS_LOCAL.iter().find(|(t, _)| *t == name) {
        return Err(reason.to_string());
    }
    let Some(table) = schema.tables.get(name) else {
        return Err(format!("table {name} does not exist"));
    };
    if !visiting.insert(name.to_string()) {
        return Err("its identity depends on itself".to_string());
    }
    let result = derive_identity(schema, table, memo, visiting);
    visiting.remove(name);
    result
}

fn derive_identity(
    schema: &Schema,
    table: &Table,
    memo: &mut BTreeMap<String, Result<Identity, String>>,
    visiting: &mut BTreeSet<String>,
) -> Result<Identity, String> {
    let pk = &table.primary_key;
    if pk.is_empty() {
        return Err("no primary key: its rows cannot be told apart across servers".into());
    }
    let is_plain_text =
        |c: &str| table.fk_on(c).is_none() && table.column(c).is_some_and(|col| col.is_text());
    // Rule 3: natural text key.
    if pk.iter().all(|c| is_plain_text(c)) {
        return Ok(Identity::Natural {
            columns: pk.clone(),
        });
    }
    // Rule 4: uuid.
    if table.column("uuid").is_some() {
        return Ok(Identity::Uuid {
            column: "uuid".into(),
            unique_index: table.has_unique(&["uuid"]),
        });
    }
    // Rule 5: subclass table.
    if pk.len() == 1 {
        if let Some(fk) = table.fk_on(&pk[0]) {
            let parent = identity_of(schema, &fk.ref_table, memo, visiting).map_err(|why| {
                format!(
                    "its key refers to {} which has no identity ({why})",
                    fk.ref_table
                )
            })?;
            if parent.arity() != 1 {
                return Err(format!(
                    "its key refers to {} whose identity has several parts",
                    fk.ref_table
                ));
            }
            return Ok(Identity::Parent {
                column: pk[0].clone(),
                parent: fk.ref_table.clone(),
            });
        }
    }
    // Rule 6: composite key.
    if pk.len() > 1 {
        let mut parts = Vec::new();
        for c in pk {
            let column = table
                .column(c)
                .ok_or_else(|| format!("key column {c} is missing"))?;
            match table.fk_on(c) {
                Some(fk) => {
                    let target =
                        identity_of(schema, &fk.ref_table, memo, visiting).map_err(|why| {
                            format!(
                                "key column {c} refers to {} which has no identity ({why})",
                                fk.ref_table
                            )
                        })?;
                    if target.arity() != 1 {
                        return Err(format!(
                            "key column {c} refers to {} whose identity has several parts",
                            fk.ref_table
                        ));
                    }
                    parts.push(KeyPart {
                        column: c.clone(),
                        references: Some(fk.ref_table.clone()),
                    });
                }
                None if column.auto_increment => {
                    return Err(format!("key column {c} is generated locally"));
                }
                None => parts.push(KeyPart {
                    column: c.clone(),
                    references: None,
                }),
            }
        }
        return Ok(Identity::Composite { parts });
    }
    Err(
        "no uuid column, natural key or composite key: rows cannot be matched across servers"
            .into(),
    )
}

fn synced_table(schema: &Schema, table: &Table, identity: Identity) -> Result<SyncedTable, String> {
    let id_cols = identity.columns();
    let local_id = match (&identity, table.primary_key.as_slice()) {
        (Identity::Uuid { .. }, [pk]) if table.column(pk).is_some_and(|c| c.is_integer()) => {
            Some(pk.clone())
        }
        _ => None,
    };
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| c.name.clone())
        .filter(|c| !id_cols.contains(&c.as_str()) && Some(c) != local_id.as_ref())
        .collect();
    let mut references = Vec::new();
    for fk in &table.foreign_keys {
        if fk.columns.len() != 1 {
            if fk.columns.iter().any(|c| columns.contains(c)) {
                return Err(format!(
                    "foreign key {} has several columns, which ferry cannot translate",
                    fk.name
                ));
            }
            continue;
        }
        let column = &fk.columns[0];
        let target_pk = schema
            .tables
            .get(&fk.ref_table)
            .map(|t| t.primary_key.clone());
        if target_pk.as_deref() != Some(std::slice::from_ref(&fk.ref_columns[0])) {
            return Err(format!(
                "foreign key {} refers to {}.{}, which is not that table's primary key",
                fk.name, fk.ref_table, fk.ref_columns[0]
            ));
        }
        if !columns.contains(column) {
            continue; // part of the identity or the local id
        }
        references.push(Reference {
            column: column.clone(),
            table: fk.ref_table.clone(),
            ref_column: fk.ref_columns[0].clone(),
        });
    }
    references.sort_by(|a, b| a.column.cmp(&b.column));
    Ok(SyncedTable {
        identity,
        local_id,
        columns,
        references,
        soft_refs: Vec::new(),
    })
}

fn soft_refs_of(schema: &Schema, table: &Table, synced: &BTreeSet<String>) -> Vec<SoftRef> {
    let mut out = Vec::new();
    for rule in soft_refs::rules_for(&table.name) {
        let (Some(_), Some(fk)) = (
            table.column(rule.value_column),
            table.fk_on(rule.type_column),
        ) else {
            continue;
        };
        let Some(type_table) = schema.tables.get(&fk.ref_table) else {
            continue;
        };
        if type_table.column(rule.discriminator).is_none() {
            continue;
        }
        let targets: BTreeMap<String, String> = rule
            .targets
            .iter()
            .filter(|(_, t)| synced.contains(*t))
            .map(|(k, t)| (k.to_string(), t.to_string()))
            .collect();
        if targets.is_empty() {
            continue;
        }
        out.push(SoftRef {
            column: rule.value_column.to_string(),
            type_column: rule.type_column.to_string(),
            type_table: type_table.name.clone(),
            discriminator: rule.discriminator.to_string(),
            encoding: rule.encoding,
            targets,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::introspect::{Column, ForeignKey};

    fn col(name: &str, ty: &str, ai: bool) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            column_type: ty.into(),
            nullable: false,
            auto_increment: ai,
        }
    }

    fn fk(col: &str, table: &str, ref_col: &str) -> ForeignKey {
        ForeignKey {
            name: format!("fk_{col}"),
            columns: vec![col.into()],
            ref_table: table.into(),
            ref_columns: vec![ref_col.into()],
            on_delete: None,
        }
    }

    fn schema(tables: Vec<Table>) -> Schema {
        Schema {
            tables: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
        }
    }

    fn table(name: &str, columns: Vec<Column>, pk: &[&str], fks: Vec<ForeignKey>) -> Table {
        Table {
            name: name.into(),
            columns,
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            unique_keys: vec![],
            foreign_keys: fks,
        }
    }

    #[test]
    fn referrers_are_the_single_column_foreign_keys_to_one_column() {
        let composite = ForeignKey {
            name: "fk_pair".into(),
            columns: vec!["a".into(), "b".into()],
            ref_table: "location".into(),
            ref_columns: vec!["location_id".into(), "uuid".into()],
            on_delete: None,
        };
        let s = schema(vec![
            table(
                "location",
                vec![col("location_id", "int", true)],
                &["location_id"],
                vec![fk("parent_location", "location", "location_id"), composite],
            ),
            table(
                "encounter",
                vec![
                    col("encounter_id", "int", true),
                    col("location_id", "int", false),
                ],
                &["encounter_id"],
                vec![
                    fk("location_id", "location", "location_id"),
                    fk("creator", "users", "user_id"),
                ],
            ),
            table(
                "visit",
                vec![col("location_uuid", "char", false)],
                &[],
                vec![fk("location_uuid", "location", "uuid")],
            ),
        ]);
        let found: Vec<(&str, &str)> = s
            .referrers("location", "location_id")
            .map(|(t, c)| (t.name.as_str(), c))
            .collect();
        // The table itself counts; the composite key and other targets do not.
        assert_eq!(
            found,
            [
                ("encounter", "location_id"),
                ("location", "parent_location")
            ]
        );
        assert_eq!(s.referrers("location", "uuid").count(), 1);
        assert_eq!(s.referrers("users", "location_id").count(), 0);
        assert_eq!(s.referenced_columns("location"), ["location_id", "uuid"]);
    }

    #[test]
    fn derives_each_kind_of_identity() {
        let s = schema(vec![
            table(
                "person",
                vec![col("person_id", "int", true), col("uuid", "char", false)],
                &["person_id"],
                vec![],
            ),
            table(
                "patient",
                vec![
                    col("patient_id", "int", false),
                    col("creator", "int", false),
                ],
                &["patient_id"],
                vec![
                    fk("patient_id", "person", "person_id"),
                    fk("creator", "person", "person_id"),
                ],
            ),
            table(
                "role",
                vec![col("role", "varchar", false), col("uuid", "char", false)],
                &["role"],
                vec![],
            ),
            table(
                "person_role",
                vec![
                    col("person_id", "int", false),
                    col("role", "varchar", false),
                ],
                &["person_id", "role"],
                vec![
                    fk("person_id", "person", "person_id"),
                    fk("role", "role", "role"),
                ],
            ),
            table("nokey", vec![col("a", "int", false)], &[], vec![]),
            table("plain", vec![col("id", "int", true)], &["id"], vec![]),
            table(
                "refers_plain",
                vec![
                    col("id", "int", true),
                    col("uuid", "char", false),
                    col("p", "int", false),
                ],
                &["id"],
                vec![fk("p", "plain", "id")],
            ),
        ]);
        let plan = SyncPlan::derive(&s);
        let id = |t: &str| plan.table(t).unwrap().synced().map(|s| s.identity.clone());
        assert_eq!(
            id("person"),
            Some(Identity::Uuid {
                column: "uuid".into(),
                unique_index: false
            })
        );
        assert_eq!(
            id("patient"),
            Some(Identity::Parent {
                column: "patient_id".into(),
                parent: "person".into()
            })
        );
        assert_eq!(
            id("role"),
            Some(Identity::Natural {
                columns: vec!["role".into()]
            })
        );
        assert!(
            matches!(id("person_role"), Some(Identity::Composite { parts }) if parts.len() == 2)
        );
        assert!(id("nokey").is_none());
        assert!(id("plain").is_none());
        // Refers to a local table: demoted with a reason naming it.
        match &plan.table("refers_plain").unwrap().disposition {
            Disposition::Local { reason } => assert!(reason.contains("plain"), "{reason}"),
            d => panic!("expected local, got {d:?}"),
        }
        let patient = plan.table("patient").unwrap().synced().unwrap();
        assert_eq!(patient.columns, vec!["creator".to_string()]);
        assert_eq!(patient.references[0].table, "person");
        let person = plan.table("person").unwrap().synced().unwrap();
        assert_eq!(person.local_id.as_deref(), Some("person_id"));
        assert!(person.columns.is_empty());
    }

    #[test]
    fn apply_order_puts_referenced_tables_first() {
        let s = schema(vec![
            table(
                "users",
                vec![
                    col("user_id", "int", true),
                    col("uuid", "char", false),
                    col("person_id", "int", false),
                ],
                &["user_id"],
                vec![fk("person_id", "person", "person_id")],
            ),
            table(
                "person",
                vec![
                    col("person_id", "int", true),
                    col("uuid", "char", false),
                    col("creator", "int", false),
                ],
                &["person_id"],
                vec![fk("creator", "users", "user_id")],
            ),
            table(
                "patient",
                vec![col("patient_id", "int", false)],
                &["patient_id"],
                vec![fk("patient_id", "person", "person_id")],
            ),
        ]);
        let order = SyncPlan::derive(&s).apply_order();
        let pos = |t: &str| order.iter().position(|x| x == t).unwrap();
        assert_eq!(order.len(), 3);
        assert!(pos("person") < pos("patient"));
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let t = table(
            "x",
            vec![col("id", "int", true), col("uuid", "char", false)],
            &["id"],
            vec![],
        );
        let a = SyncPlan::derive(&schema(vec![t.clone()]));
        let b = SyncPlan::derive(&schema(vec![t.clone()]));
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut t2 = t;
        t2.columns.push(col("extra", "int", false));
        let c = SyncPlan::derive(&schema(vec![t2]));
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
