//! Reading a database's tables, columns and keys from `information_schema`.
//!
//! The result, [`Schema`], is plain data: everything the plan derivation and the trigger
//! generator need, and nothing that depends on the server beyond the schema itself.
//! ferry's own `ferry_*` tables are left out.

use std::collections::BTreeMap;

use mysql_async::prelude::*;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// Prefix of every table and trigger ferry creates.
pub const FERRY_PREFIX: &str = "ferry_";

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// `DATA_TYPE`, lowercase: int, varchar, datetime, ...
    pub data_type: String,
    /// `COLUMN_TYPE`: int(11), varchar(255), tinyint(1), ...
    pub column_type: String,
    pub nullable: bool,
    pub auto_increment: bool,
}

impl Column {
    /// Whether the column holds text compared by a collation (where `'a' = 'A'` may hold).
    pub fn is_text(&self) -> bool {
        matches!(
            self.data_type.as_str(),
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        )
    }

    /// Whether the column holds an integer.
    pub fn is_integer(&self) -> bool {
        matches!(
            self.data_type.as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
        )
    }
}

/// A foreign key declared on a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKey {
    pub name: String,
    pub columns: Vec<String>,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
    /// What deleting a referenced row does to the referring rows, when it changes
    /// them (`None`: the delete is refused while rows refer). Left out of the stored
    /// shape when `None`, so that shapes recorded before it was read stay equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<OnDelete>,
}

/// A foreign key's `ON DELETE` action that changes the referring rows. MariaDB fires
/// no trigger for the rows it changes, so capture logs them itself
/// ([`crate::capture::triggers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnDelete {
    /// `CASCADE`: the referring rows are deleted too.
    Cascade,
    /// `SET NULL`: the referring column is set to NULL.
    SetNull,
}

impl OnDelete {
    /// The action named by information_schema's `DELETE_RULE`, if it changes rows.
    pub fn from_rule(rule: &str) -> Option<OnDelete> {
        match rule {
            "CASCADE" => Some(OnDelete::Cascade),
            "SET NULL" => Some(OnDelete::SetNull),
            _ => None,
        }
    }
}

/// A unique index (other than the primary key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniqueKey {
    pub name: String,
    pub columns: Vec<String>,
}

/// One base table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// Primary key columns in key order; empty when the table has none.
    pub primary_key: Vec<String>,
    pub unique_keys: Vec<UniqueKey>,
    pub foreign_keys: Vec<ForeignKey>,
}

impl Table {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The single-column foreign key on `column`, if one exists.
    pub fn fk_on(&self, column: &str) -> Option<&ForeignKey> {
        self.foreign_keys
            .iter()
            .find(|fk| fk.columns.len() == 1 && fk.columns[0] == column)
    }

    /// Whether a unique index (or the primary key) consists of exactly `columns`.
    pub fn has_unique(&self, columns: &[&str]) -> bool {
        let same = |cols: &[String]| {
            cols.len() == columns.len() && cols.iter().zip(columns).all(|(a, b)| a == b)
        };
        same(&self.primary_key) || self.unique_keys.iter().any(|u| same(&u.columns))
    }

    /// A digest of the table's shape (columns, types, keys): what schema drift compares.
    pub fn signature(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).expect("table serializes");
        hex::encode(Sha256::digest(json))
    }
}

/// All base tables of one database, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub tables: BTreeMap<String, Table>,
}

impl Schema {
    /// Reads the schema of `database` (ferry's own tables excluded).
    pub async fn read(conn: &mut Conn, database: &str) -> Result<Schema, DbError> {
        let mut tables: BTreeMap<String, Table> = BTreeMap::new();

        let names: Vec<String> = conn
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (database,),
            )
            .await
            .map_err(DbError::query("reading the list of tables"))?;
        for name in names {
            if name.starts_with(FERRY_PREFIX) {
                continue;
            }
            tables.insert(
                name.clone(),
                Table {
                    name,
                    columns: Vec::new(),
                    primary_key: Vec::new(),
                    unique_keys: Vec::new(),
                    foreign_keys: Vec::new(),
                },
            );
        }

        let columns: Vec<(String, String, String, String, String, String)> = conn
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, IS_NULLABLE, EXTRA \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? \
                 ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (database,),
            )
            .await
            .map_err(DbError::query("reading columns"))?;
        for (table, name, data_type, column_type, nullable, extra) in columns {
            if let Some(t) = tables.get_mut(&table) {
                t.columns.push(Column {
                    name,
                    data_type,
                    column_type,
                    nullable: nullable == "YES",
                    auto_increment: extra.to_ascii_lowercase().contains("auto_increment"),
                });
            }
        }

        let indexes: Vec<(String, String, String)> = conn
            .exec(
                "SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND NON_UNIQUE = 0 \
                 ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
                (database,),
            )
            .await
            .map_err(DbError::query("reading indexes"))?;
        for (table, index, column) in indexes {
            let Some(t) = tables.get_mut(&table) else {
                continue;
            };
            if index == "PRIMARY" {
                t.primary_key.push(column);
            } else if let Some(u) = t.unique_keys.iter_mut().find(|u| u.name == index) {
                u.columns.push(column);
            } else {
                t.unique_keys.push(UniqueKey {
                    name: index,
                    columns: vec![column],
                });
            }
        }

        let fks: Vec<(String, String, String, String, String)> = conn
            .exec(
                "SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_NAME, \
                 REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND REFERENCED_TABLE_NAME IS NOT NULL \
                 AND REFERENCED_TABLE_SCHEMA = TABLE_SCHEMA \
                 ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION",
                (database,),
            )
            .await
            .map_err(DbError::query("reading foreign keys"))?;
        // Asked apart: joined to the query above, it scans every database's tables.
        let rules: BTreeMap<(String, String), OnDelete> = conn
            .exec::<(String, String, String), _, _>(
                "SELECT TABLE_NAME, CONSTRAINT_NAME, DELETE_RULE \
                 FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ?",
                (database,),
            )
            .await
            .map_err(DbError::query("reading foreign keys' delete rules"))?
            .into_iter()
            .filter_map(|(t, n, rule)| OnDelete::from_rule(&rule).map(|a| ((t, n), a)))
            .collect();
        for (table, name, column, ref_table, ref_column) in fks {
            let Some(t) = tables.get_mut(&table) else {
                continue;
            };
            if let Some(fk) = t.foreign_keys.iter_mut().find(|f| f.name == name) {
                fk.columns.push(column);
                fk.ref_columns.push(ref_column);
            } else {
                let on_delete = rules.get(&(table.clone(), name.clone())).copied();
                t.foreign_keys.push(ForeignKey {
                    name,
                    columns: vec![column],
                    ref_table,
                    ref_columns: vec![ref_column],
                    on_delete,
                });
            }
        }
        Ok(Schema { tables })
    }

    /// The columns of `table` that single-column foreign keys refer to, each once, in
    /// order: the values a delete of its rows must not leave referred to.
    pub fn referenced_columns(&self, table: &str) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .tables
            .values()
            .flat_map(|t| &t.foreign_keys)
            .filter(|fk| fk.ref_table == table && fk.columns.len() == 1)
            .map(|fk| fk.ref_columns[0].as_str())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The columns that refer to `table`.`column` by a single-column foreign key, as
    /// (referring table, its column): what must hold no value of a row that goes away.
    /// Export's identity check and import's delete check ask the same question.
    pub fn referrers<'a>(
        &'a self,
        table: &'a str,
        column: &'a str,
    ) -> impl Iterator<Item = (&'a Table, &'a str)> + 'a {
        self.tables.values().flat_map(move |child| {
            child.foreign_keys.iter().filter_map(move |fk| {
                match (fk.columns.as_slice(), fk.ref_columns.as_slice()) {
                    ([own], [to]) if fk.ref_table == table && to == column => {
                        Some((child, own.as_str()))
                    }
                    _ => None,
                }
            })
        })
    }
}
