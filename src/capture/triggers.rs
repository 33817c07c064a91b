//! The capture triggers: their names and the SQL that creates them.
//!
//! Every synced, enabled table gets three AFTER triggers (insert, update, delete). Each
//! appends one row to `ferry_change` in the writing transaction: the table, the local
//! integer key when there is one, the row's identity (computed from the row, so a
//! deleted row can still be named), the operation, for updates the changed columns, the
//! wall time in microseconds. Writes made by ferry's importer (whose session sets
//! `@ferry_origin` to the node the changes came from) record nothing here: the
//! importer logs them itself, with their origin, version and path, for forwarding. An
//! update that changes no column records nothing; an update that changes the identity
//! records a delete of the old identity and an insert of the new one, in one statement:
//! with InnoDB's `innodb_autoinc_lock_mode` at 0 or 1 (1 is MariaDB's default; setup
//! warns of 2) a statement's rows take consecutive positions, so no other session's
//! entry comes between the two, and export knows them as one row's new identity
//! ([`crate::export::sorter::Placer`]).
//!
//! MariaDB fires no trigger for the rows a foreign key's `ON DELETE CASCADE` or `SET
//! NULL` changes (OpenMRS has one: a user deleted takes the users it changed with it),
//! and import writes with foreign key checks off, so a peer's own cascade does not run
//! either. A table such keys refer to gets a fourth trigger, before delete, that logs
//! those rows as the cascade will leave them: a delete of each row it will delete, an
//! update of each row it will set to NULL. It follows a table's cascade to itself to
//! every level, and the actions of other tables' keys on every row that removes; a
//! cascade into another table is followed one level (setup warns of a schema where
//! that misses rows: [`uncaptured_cascades`]; OpenMRS has none). A `DELETE IGNORE`
//! whose row is refused keeps the entries its trigger logged: it is not supported. The
//! trigger logs rows of a table switched off too, when a cascade reaches them; they
//! travel like what was captured before the table was switched off.

use sha2::{Digest, Sha256};

use super::bookkeeping::CHANGE_TABLE;
use super::ORIGIN_VARIABLE;
use crate::db::{ident, literal};
use crate::schema::identity_sql::row_identity;
use crate::schema::introspect::OnDelete;
use crate::schema::{Schema, SyncPlan, Table};

/// The trigger events: after each write, and before a delete that cascades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Insert,
    Update,
    Delete,
    /// Before a delete of a row that foreign keys with an `ON DELETE` action refer to.
    Cascade,
}

impl Event {
    /// The events every synced table has a trigger for.
    pub const ALL: [Event; 3] = [Event::Insert, Event::Update, Event::Delete];

    fn suffix(self) -> &'static str {
        match self {
            Event::Insert => "ai",
            Event::Update => "au",
            Event::Delete => "ad",
            Event::Cascade => "bd",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Event::Insert => "AFTER INSERT",
            Event::Update => "AFTER UPDATE",
            Event::Delete => "AFTER DELETE",
            Event::Cascade => "BEFORE DELETE",
        }
    }
}

/// The name of ferry's trigger for `event` on `table` (at most 64 characters).
pub fn trigger_name(table: &str, event: Event) -> String {
    let name = format!("ferry_{table}_{}", event.suffix());
    if name.len() <= 64 {
        return name;
    }
    let hash = hex::encode(&Sha256::digest(table.as_bytes())[..4]);
    let mut head: String = table.chars().take(64 - 6 - 1 - 8 - 3).collect();
    while format!("ferry_{head}_{hash}_{}", event.suffix()).len() > 64 {
        head.pop();
    }
    format!("ferry_{head}_{hash}_{}", event.suffix())
}

/// A trigger ready to be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSql {
    pub name: String,
    pub table: String,
    pub event: Event,
    /// The body (`BEGIN ... END`), as information_schema reports it back.
    pub body: String,
}

impl TriggerSql {
    /// Whether the trigger installed on `table` with `body` (as the server gives it
    /// back) is this one.
    pub fn is_installed(&self, table: &str, body: &str) -> bool {
        self.table == table && self.body.trim() == body.trim()
    }

    /// The statement that creates or atomically replaces the trigger.
    pub fn create_statement(&self) -> String {
        format!(
            "CREATE OR REPLACE TRIGGER {} {} ON {} FOR EACH ROW {}",
            ident(&self.name),
            self.event.sql(),
            ident(&self.table),
            self.body
        )
    }
}

/// The triggers for a synced table (three, or four where deletes cascade); `None` when
/// the table is not synced.
pub fn triggers_for(
    plan: &SyncPlan,
    schema: &Schema,
    table: &str,
    clock_offset_us: i64,
) -> Option<Vec<TriggerSql>> {
    let info = schema.tables.get(table)?;
    let synced = plan.table(table)?.synced()?;
    let key_of = |row: &'static str| {
        let expr = row_identity(plan, schema, table, &|c| format!("{row}.{}", ident(c)))?;
        Some(format!("COALESCE({expr}, '')"))
    };
    let (new_key, old_key) = (key_of("NEW")?, key_of("OLD")?);
    let row_id = |row: &str| local_id(info, row);
    let entry = |op: &str, row: &str, key: &str, cols: &str| {
        format!(
            "({}, {}, {key}, '{op}', {cols}, {})",
            literal(table),
            row_id(row),
            now_us(clock_offset_us)
        )
    };
    // One statement per write: its entries take consecutive positions (below).
    let insert = |entries: &[String]| {
        format!(
            "INSERT INTO {CHANGE_TABLE} (table_name, row_id, row_key, op, changed_cols, wall_us) \
             VALUES {}",
            entries.join(", ")
        )
    };
    // Text is compared as bytes so that a change of case or trailing spaces counts.
    let differs = |c: &str| {
        let col = info.column(c).expect("plan columns exist");
        if col.is_text() {
            format!("NOT (BINARY OLD.{0} <=> BINARY NEW.{0})", ident(c))
        } else {
            format!("NOT (OLD.{0} <=> NEW.{0})", ident(c))
        }
    };
    let changed_list = info
        .columns
        .iter()
        .map(|c| format!("IF({}, {}, NULL)", differs(&c.name), literal(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let identity_changed = synced
        .identity
        .columns()
        .iter()
        .map(|c| differs(c))
        .collect::<Vec<_>>()
        .join(" OR ");

    let mut out = Vec::new();
    for event in Event::ALL {
        // The importer's session is tested first, so that its writes cost next to
        // nothing here.
        let body = match event {
            Event::Insert => format!(
                "IF {ORIGIN_VARIABLE} IS NULL THEN {}; END IF",
                insert(&[entry("I", "NEW", &new_key, "NULL")])
            ),
            Event::Delete => format!(
                "IF {ORIGIN_VARIABLE} IS NULL THEN {}; END IF",
                insert(&[entry("D", "OLD", &old_key, "NULL")])
            ),
            Event::Update => format!(
                "BEGIN DECLARE ferry_cols TEXT; IF {ORIGIN_VARIABLE} IS NULL THEN \
                 SET ferry_cols = CONCAT_WS(',', {changed_list}); \
                 IF {identity_changed} THEN {}; \
                 ELSEIF ferry_cols <> '' THEN {}; END IF; END IF; END",
                insert(&[
                    entry("D", "OLD", &old_key, "NULL"),
                    entry("I", "NEW", &new_key, "NULL")
                ]),
                insert(&[entry("U", "NEW", &new_key, "ferry_cols")]),
            ),
            Event::Cascade => continue, // not in `ALL`: below, where deletes cascade
        };
        out.push(TriggerSql {
            name: trigger_name(table, event),
            table: table.to_string(),
            event,
            body,
        });
    }
    if let Some(body) = cascade_body(plan, schema, table, clock_offset_us) {
        out.push(TriggerSql {
            name: trigger_name(table, Event::Cascade),
            table: table.to_string(),
            event: Event::Cascade,
            body,
        });
    }
    Some(out)
}

/// A single-column foreign key of a synced table with an `ON DELETE` action.
struct Action<'a> {
    child: &'a Table,
    column: &'a str,
    /// The referenced column.
    to: &'a str,
    action: OnDelete,
}

/// The keys with an `ON DELETE` action that refer to `table`, of synced tables.
fn actions_on<'a>(plan: &SyncPlan, schema: &'a Schema, table: &str) -> Vec<Action<'a>> {
    let mut out = Vec::new();
    for child in schema.tables.values() {
        if plan.table(&child.name).and_then(|t| t.synced()).is_none() {
            continue;
        }
        for fk in &child.foreign_keys {
            if let (Some(action), [column], [to]) = (
                fk.on_delete,
                fk.columns.as_slice(),
                fk.ref_columns.as_slice(),
            ) {
                if fk.ref_table == table {
                    out.push(Action {
                        child,
                        column,
                        to,
                        action,
                    });
                }
            }
        }
    }
    out
}

/// The column through which `table` cascades to itself (what the recursive query
/// follows): the referenced column of every key by which it does, when they all name
/// the same one.
fn self_cascade<'a>(table: &str, actions: &[Action<'a>]) -> Option<&'a str> {
    let mut tos = actions
        .iter()
        .filter(|a| a.child.name == table && a.action == OnDelete::Cascade)
        .map(|a| a.to);
    let first = tos.next()?;
    tos.all(|t| t == first).then_some(first)
}

/// The body of `table`'s before-delete trigger: the rows that the `ON DELETE` actions
/// of keys referring to `table` will change, logged as they leave them. `None` when no
/// such key exists. Rows set to NULL are logged first, deletes after, so that a row
/// both set to NULL and deleted ends as deleted (export goes by a row's last entry).
fn cascade_body(
    plan: &SyncPlan,
    schema: &Schema,
    table: &str,
    clock_offset_us: i64,
) -> Option<String> {
    let actions = actions_on(plan, schema, table);
    if actions.is_empty() {
        return None;
    }
    let t = ident(table);
    let through = self_cascade(table, &actions);
    // The values of column `to` of every row the delete removes from `table`: the row
    // itself and, where the table cascades to itself, every row that cascade reaches.
    let gone = |to: &str| -> String {
        let to = ident(to);
        let Some(r) = through.map(ident) else {
            return format!("(OLD.{to})");
        };
        let joins = actions
            .iter()
            .filter(|a| a.child.name == table && a.action == OnDelete::Cascade)
            .map(|a| format!("ferry_y.{} = ferry_gone.k", ident(a.column)))
            .collect::<Vec<_>>()
            .join(" OR ");
        let all = format!(
            "WITH RECURSIVE ferry_gone (k) AS (SELECT OLD.{r} UNION \
             SELECT ferry_y.{r} FROM {t} AS ferry_y JOIN ferry_gone ON {joins}) \
             SELECT k FROM ferry_gone"
        );
        if to == r {
            format!("({all})")
        } else {
            format!("(SELECT ferry_z.{to} FROM {t} AS ferry_z WHERE ferry_z.{r} IN ({all}))")
        }
    };
    let log = |child: &Table, op: &str, cols: String, rows: String| -> Option<String> {
        let key = row_identity(plan, schema, &child.name, &|c| {
            format!("ferry_x.{}", ident(c))
        })?;
        Some(format!(
            "INSERT INTO {CHANGE_TABLE} (table_name, row_id, row_key, op, changed_cols, wall_us) \
             SELECT {}, {}, COALESCE({key}, ''), '{op}', {cols}, {} FROM {} AS ferry_x WHERE {rows}",
            literal(&child.name),
            local_id(child, "ferry_x"),
            now_us(clock_offset_us),
            ident(&child.name),
        ))
    };
    let mut set_null = Vec::new();
    let mut deletes = Vec::new();
    // The rows the table's cascade to itself removes (the row itself is logged by its
    // own trigger).
    if let Some(r) = through {
        let table_info = &schema.tables[table];
        deletes.extend(log(
            table_info,
            "D",
            "NULL".into(),
            format!(
                "ferry_x.{r} IN {} AND NOT (ferry_x.{r} <=> OLD.{r})",
                gone(r),
                r = ident(r)
            ),
        ));
    }
    for a in &actions {
        let (col, to) = (ident(a.column), ident(a.to));
        let itself = a.child.name == table;
        match a.action {
            OnDelete::Cascade if itself && through.is_some() => {} // above
            OnDelete::Cascade => deletes.extend(log(
                a.child,
                "D",
                "NULL".into(),
                format!(
                    "ferry_x.{col} IN {}{}",
                    gone(a.to),
                    if itself {
                        format!(" AND NOT (ferry_x.{to} <=> OLD.{to})")
                    } else {
                        String::new()
                    }
                ),
            )),
            OnDelete::SetNull => set_null.extend(log(
                a.child,
                "U",
                literal(a.column),
                format!(
                    "ferry_x.{col} IN {}{}",
                    gone(a.to),
                    // Rows the delete removes are not set to NULL.
                    if itself {
                        format!(" AND ferry_x.{to} NOT IN {}", gone(a.to))
                    } else {
                        String::new()
                    }
                ),
            )),
        }
    }
    let statements: Vec<String> = set_null.into_iter().chain(deletes).collect();
    if statements.is_empty() {
        return None;
    }
    Some(format!(
        "IF {ORIGIN_VARIABLE} IS NULL THEN {}; END IF",
        statements.join("; ")
    ))
}

/// What the before-delete triggers cannot capture in this schema, one sentence each
/// (setup warns of them): a cascade that reaches a second table and goes on from
/// there, a key of several columns with an `ON DELETE` action, a table that cascades
/// to itself through keys naming different columns.
pub fn uncaptured_cascades(plan: &SyncPlan, schema: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for (name, _) in plan.synced() {
        let Some(child) = schema.tables.get(name) else {
            continue;
        };
        for fk in &child.foreign_keys {
            if fk.on_delete.is_some() && fk.columns.len() > 1 {
                out.push(format!(
                    "{name}.{} refers to {} with an ON DELETE action on several columns",
                    fk.name, fk.ref_table
                ));
            }
        }
    }
    for (table, _) in plan.synced() {
        let actions = actions_on(plan, schema, table);
        let selfs = actions
            .iter()
            .filter(|a| a.child.name == *table && a.action == OnDelete::Cascade)
            .count();
        if selfs > 0 && self_cascade(table, &actions).is_none() {
            out.push(format!(
                "{table} cascades to itself through keys naming different columns: one level is captured"
            ));
        }
        for a in &actions {
            let onward = a.action == OnDelete::Cascade
                && a.child.name != *table
                && !actions_on(plan, schema, &a.child.name).is_empty();
            if onward {
                out.push(format!(
                    "deleting a {table} row deletes {} rows ({}), whose own ON DELETE actions are not captured",
                    a.child.name, a.column
                ));
            }
        }
    }
    out
}

/// The SQL of `row`'s local integer key in `table` (`NULL` when it has none).
fn local_id(table: &Table, row: &str) -> String {
    match table.primary_key.as_slice() {
        [pk] if table.column(pk).is_some_and(|c| c.is_integer()) => format!("{row}.{}", ident(pk)),
        _ => "NULL".to_string(),
    }
}

/// Wall time in microseconds since the epoch at the moment of the write, independent of
/// the session time zone, shifted by `offset_us`.
pub fn now_us(offset_us: i64) -> String {
    let now = "CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)";
    match offset_us {
        0 => now.to_string(),
        o => format!("({now} + ({o}))"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_64_characters() {
        assert_eq!(trigger_name("person", Event::Insert), "ferry_person_ai");
        let long = "x".repeat(70);
        for e in Event::ALL {
            let n = trigger_name(&long, e);
            assert!(n.len() <= 64, "{n}");
            assert!(n.starts_with("ferry_"));
        }
        assert_ne!(
            trigger_name(&long, Event::Insert),
            trigger_name(&long, Event::Update)
        );
        assert_ne!(
            trigger_name(&format!("{long}a"), Event::Insert),
            trigger_name(&format!("{long}b"), Event::Insert)
        );
    }
}
