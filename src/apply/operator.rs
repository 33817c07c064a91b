//! What operators do with recorded conflicts: list them, look at one, resolve one.
//!
//! Import records conflicts by itself ([`super::conflict`], [`super::unique`]); nothing
//! is lost, but the winner was chosen by rule. Here an operator can accept the winner
//! (`--keep winner`, which only marks the conflict resolved) or restore the loser
//! (`--keep loser`): its values are written back with ordinary SQL in a session
//! without `@ferry_origin`, so the triggers capture it as a new local edit. That edit
//! comes after the winner in this node's history (its version passes the floor the
//! winner raised), travels like any edit and wins everywhere by the ordinary rule, as a
//! fast-forward that records nothing further.
//! Also here: unresolved counts per table and the skewed clocks, for `ferry status`.

use std::collections::{BTreeMap, BTreeSet};

use mysql_async::prelude::*;
use mysql_async::{Conn, Row};
use serde::Serialize;
use serde_json::Value as Json;

use super::changes::Applier;
use super::conflict::values_from_json;
use super::ImportError;
use crate::bundle::{Change, Identity, Op, Version};
use crate::capture::setup::stored_plan;
use crate::capture::versions::Floors;
use crate::capture::CaptureError;
use crate::db::DbError;
use crate::export::{begin, finish};
use crate::node::NodeContext;
use crate::schema::identity_sql::parse_identity;
use crate::schema::Schema;

/// Errors of conflict handling.
#[derive(Debug, thiserror::Error)]
pub enum ConflictError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("there is no conflict {id} on this node\nhint: `ferry conflicts --all` lists every conflict recorded here")]
    NotFound { id: u64 },
    #[error("conflict {id} was already resolved (kept the {how})\nhint: to change the row again, edit it in OpenMRS")]
    AlreadyResolved { id: u64, how: String },
    #[error("conflict {id} is a unique collision on {column}; both rows are kept and the later one's value was suffixed, there is no losing version to restore\nhint: edit the value in OpenMRS if the suffix does not suit, then `ferry conflicts resolve {id} --keep winner`")]
    NothingToRestore { id: u64, column: String },
    #[error("conflict {id} names {table} row {key:?}, which ferry cannot restore: {why}\nhint: run `ferry setup` so that the plan covers the table, then try again")]
    Unrestorable {
        id: u64,
        table: String,
        key: String,
        why: String,
    },
}

/// Which version an operator keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    Winner,
    Loser,
}

impl Keep {
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Winner => "winner",
            Keep::Loser => "loser",
        }
    }
}

/// One side of a recorded conflict.
#[derive(Debug, Clone, Serialize)]
pub struct SideView {
    pub node: String,
    pub wall_us: i64,
    pub counter: u32,
    pub deleted: bool,
    /// Column → value (exact serde form), when the row existed.
    pub values: Option<Json>,
}

impl SideView {
    pub fn version(&self) -> Version {
        Version {
            wall_us: self.wall_us,
            counter: self.counter,
            node: self.node.clone(),
        }
    }
}

/// A recorded conflict.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub id: u64,
    pub table: String,
    pub identity: String,
    /// `concurrent` or `unique`.
    pub kind: String,
    /// For unique collisions: the column.
    pub column: Option<String>,
    pub winner: SideView,
    /// The winner's clock looked skewed when it won.
    pub winner_skewed: bool,
    pub loser: SideView,
    pub detected_us: i64,
    /// The peer whose bundle brought it.
    pub via: Option<String>,
    /// `winner` or `loser` once an operator resolved it.
    pub resolved: Option<String>,
    /// Columns whose values differ between the two versions.
    pub differing: Vec<String>,
}

const SELECT: &str =
    "SELECT id, table_name, row_key, kind, column_name, winner_wall, winner_counter, \
     winner_node, winner_deleted, winner_values, winner_skewed, loser_wall, loser_counter, \
     loser_node, loser_deleted, loser_values, detected_us, via, resolved FROM ferry_conflict";

fn parse_json(text: Option<String>) -> Option<Json> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn from_row(row: Row) -> Conflict {
    let mut r = row;
    let id: u64 = r.take(0).unwrap_or(0);
    let table: String = r.take(1).unwrap_or_default();
    let identity: String = r.take(2).unwrap_or_default();
    let kind: String = r.take(3).unwrap_or_default();
    let column: Option<String> = r.take(4).unwrap_or(None);
    let winner = SideView {
        wall_us: r.take(5).unwrap_or(0),
        counter: r.take(6).unwrap_or(0),
        node: r.take(7).unwrap_or_default(),
        deleted: r.take(8).unwrap_or(false),
        values: parse_json(r.take(9).unwrap_or(None)),
    };
    let winner_skewed: bool = r.take(10).unwrap_or(false);
    let loser = SideView {
        wall_us: r.take::<Option<i64>, _>(11).flatten().unwrap_or(0),
        counter: r.take::<Option<u32>, _>(12).flatten().unwrap_or(0),
        node: r
            .take::<Option<String>, _>(13)
            .flatten()
            .unwrap_or_default(),
        deleted: r.take(14).unwrap_or(false),
        values: parse_json(r.take(15).unwrap_or(None)),
    };
    let differing = differing(&winner, &loser);
    Conflict {
        id,
        table,
        identity,
        kind,
        column,
        winner,
        winner_skewed,
        loser,
        detected_us: r.take(16).unwrap_or(0),
        via: r.take(17).unwrap_or(None),
        resolved: r.take(18).unwrap_or(None),
        differing,
    }
}

/// Columns whose values differ (every column when one side is a delete).
fn differing(a: &SideView, b: &SideView) -> Vec<String> {
    let empty = serde_json::Map::new();
    let am = a
        .values
        .as_ref()
        .and_then(Json::as_object)
        .unwrap_or(&empty);
    let bm = b
        .values
        .as_ref()
        .and_then(Json::as_object)
        .unwrap_or(&empty);
    let names: BTreeSet<&String> = am.keys().chain(bm.keys()).collect();
    names
        .into_iter()
        .filter(|n| am.get(*n) != bm.get(*n))
        .cloned()
        .collect()
}

/// Recorded conflicts, oldest first: unresolved ones, or with `all` every one.
pub async fn list(conn: &mut Conn, all: bool) -> Result<Vec<Conflict>, DbError> {
    let sql = format!(
        "{SELECT}{} ORDER BY id",
        if all { "" } else { " WHERE resolved IS NULL" }
    );
    let rows: Vec<Row> = conn
        .query(sql)
        .await
        .map_err(DbError::query("listing conflicts"))?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// One conflict.
pub async fn get(conn: &mut Conn, id: u64) -> Result<Conflict, ConflictError> {
    let row: Option<Row> = conn
        .exec_first(format!("{SELECT} WHERE id = ?"), (id,))
        .await
        .map_err(DbError::query("reading a conflict"))?;
    row.map(from_row).ok_or(ConflictError::NotFound { id })
}

/// Unresolved conflicts per table.
pub async fn unresolved_per_table(conn: &mut Conn) -> Result<BTreeMap<String, u64>, DbError> {
    let rows: Vec<(String, u64)> = conn
        .query(
            "SELECT table_name, COUNT(*) FROM ferry_conflict WHERE resolved IS NULL \
             GROUP BY table_name ORDER BY table_name",
        )
        .await
        .map_err(DbError::query("counting conflicts"))?;
    Ok(rows.into_iter().collect())
}

/// A node whose versions arrived with their clock ahead of the bundle that carried them.
#[derive(Debug, Clone, Serialize)]
pub struct Skew {
    pub node: String,
    /// The largest apparent skew, in seconds.
    pub skew_s: i64,
    /// The peer whose bundle showed it.
    pub sender: String,
    pub seen_us: i64,
}

/// Every node flagged for clock skew.
pub async fn skews(conn: &mut Conn) -> Result<Vec<Skew>, DbError> {
    let rows: Vec<(String, i64, String, i64)> = conn
        .query("SELECT node, skew_us, sender, seen_us FROM ferry_skew ORDER BY node")
        .await
        .map_err(DbError::query("reading clock skew"))?;
    Ok(rows
        .into_iter()
        .map(|(node, us, sender, seen_us)| Skew {
            node,
            skew_s: us / 1_000_000,
            sender,
            seen_us,
        })
        .collect())
}

/// Resolves a conflict: keeps the winner as it is, or restores the loser as a new local
/// edit. `conn` must be an ordinary session (no `@ferry_origin`), so capture sees it.
pub async fn resolve(
    conn: &mut Conn,
    node: &NodeContext,
    id: u64,
    keep: Keep,
) -> Result<Conflict, ConflictError> {
    let database = node.db.database.clone();
    let plan = stored_plan(conn, &database).await?;
    let schema = Schema::read(conn, &database).await?;
    conn.query_drop("SET @ferry_origin = NULL")
        .await
        .map_err(DbError::query("preparing the session"))?;
    begin(conn).await?;
    let result = async {
        let _: Option<u64> = conn
            .exec_first(
                "SELECT id FROM ferry_conflict WHERE id = ? FOR UPDATE",
                (id,),
            )
            .await
            .map_err(DbError::query("locking a conflict"))?;
        let c = get(conn, id).await?;
        if let Some(how) = &c.resolved {
            return Err(ConflictError::AlreadyResolved {
                id,
                how: how.clone(),
            });
        }
        if keep == Keep::Loser {
            if c.kind == "unique" {
                return Err(ConflictError::NothingToRestore {
                    id,
                    column: c.column.clone().unwrap_or_default(),
                });
            }
            let change = restoring_change(&plan, &c, node.name())?;
            let mut applier = Applier::new(
                &plan,
                &schema,
                node.name(),
                node.name(),
                BTreeMap::new(),
                Floors::load(conn).await?,
                node.clock.now_us(),
            );
            applier.rewrite(conn, change).await?;
        }
        conn.exec_drop(
            "UPDATE ferry_conflict SET resolved = ?, resolved_us = ? WHERE id = ?",
            (keep.as_str(), node.clock.now_us(), id),
        )
        .await
        .map_err(DbError::query("marking a conflict resolved"))?;
        get(conn, id).await
    }
    .await;
    finish(conn, result).await
}

/// The change that writes the loser's version back.
fn restoring_change(
    plan: &crate::schema::SyncPlan,
    c: &Conflict,
    me: &str,
) -> Result<Change, ConflictError> {
    let bad = |why: &str| ConflictError::Unrestorable {
        id: c.id,
        table: c.table.clone(),
        key: c.identity.clone(),
        why: why.to_string(),
    };
    let synced = plan
        .table(&c.table)
        .and_then(|t| t.synced())
        .ok_or_else(|| bad("the table is not synced"))?;
    let parts = parse_identity(&c.identity, synced.identity.arity())
        .ok_or_else(|| bad("the identity does not parse"))?;
    let (op, values) = if c.loser.deleted {
        (Op::Delete, Vec::new())
    } else {
        let json = c
            .loser
            .values
            .as_ref()
            .ok_or_else(|| bad("its values were not recorded"))?;
        let values = values_from_json(&synced.columns, json)
            .ok_or_else(|| bad("its recorded columns differ from the plan's"))?;
        (Op::Update, values)
    };
    Ok(Change {
        table: c.table.clone(),
        identity: Identity(parts),
        op,
        version: c.loser.version(),
        base_version: None,
        origin: me.to_string(),
        values,
    })
}
