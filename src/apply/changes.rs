//! Applying one bundle's changes inside its transaction.
//!
//! Changes arrive grouped by table, parents first. [`Applier`] takes them in chunks of
//! one table and, per chunk: resolves identities to local rows (locking the ones that
//! exist), reads the rows' current versions (their heads, local edits included),
//! compares versions ([`super::conflict`]: the greater version wins, a concurrent
//! loser is recorded, an equal one is a duplicate), translates every reference back to
//! a local id (`translate.rs`), settles unique collisions ([`super::unique`]), then
//! deletes, updates and inserts (`write.rs`). Each applied change is logged with its
//! origin when other peers need it forwarded, and otherwise settled in `ferry_row`. A
//! reference to a row later in the same bundle (a cycle, a self-reference) gets a
//! placeholder and is fixed up at the end; a reference that is still missing then fails
//! the whole bundle, naming the row. Deletes are checked at the end too: no remaining
//! row may refer to a deleted one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, Value as MyValue};

use super::conflict::{
    decide, record, record_skew, values_json, Decision, Kind, NewConflict, Side,
};
use super::fresh::FreshTables;
use super::ids::IdCache;
use super::resolve::{key_text, KeyValues, Resolver};
use super::unique::{read_values, unique_columns, Check, UniqueColumn};
use super::{ImportError, MissingReference};
use crate::bundle::{Change, Identity, Op, Version};
use crate::capture::versions::{heads_where, last_position, settle, version_cols, Floors, Settle};
use crate::db::{ident, values_sql, DbError};
use crate::export::rows::TableReader;
use crate::schema::plan::SyncedTable;
use crate::schema::{Identity as Rule, Schema, SyncPlan, Table};

mod gone;
mod translate;
mod write;

use gone::Gone;
use write::Writes;

/// Changes applied per chunk.
const CHUNK: usize = 1000;

/// Most placeholders in one statement (MariaDB allows 65,535).
const MAX_PLACEHOLDERS: usize = 60_000;

/// Rows are added to an insert statement until it holds about this many bytes.
const MAX_STATEMENT_BYTES: usize = 4 << 20;

/// About how many bytes a parameter takes on the wire.
fn param_len(v: &MyValue) -> usize {
    match v {
        MyValue::Bytes(b) => b.len() + 3,
        _ => 9,
    }
}

/// A reference to fill in once the whole bundle is in.
struct Fixup {
    table: String,
    key: KeyValues,
    column: String,
    target: String,
    ref_column: String,
    identity: Identity,
    /// The row that refers (for messages).
    row: Identity,
}

/// Time spent per step of applying (for the stage log).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyTimings {
    pub lookup: Duration,
    /// Of the lookup: local keys by identity, the existing rows (locked), and the
    /// rows' versions.
    pub keys: Duration,
    pub existing: Duration,
    pub versions: Duration,
    pub decide: Duration,
    pub translate: Duration,
    pub unique: Duration,
    pub update: Duration,
    pub insert: Duration,
    pub settle: Duration,
    pub log: Duration,
}

/// The time since `clock`, which moves to now.
fn lap(clock: &mut Instant) -> Duration {
    let now = Instant::now();
    let d = now - *clock;
    *clock = now;
    d
}

/// What applying a bundle did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApplyStats {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Deletes of rows this node does not hold: only their tombstones are recorded (so
    /// that an older insert arriving later stays deleted).
    pub already_gone: u64,
    /// Changes older than (or equal to) what this node holds.
    pub skipped: u64,
    /// Conflicts recorded (concurrent versions and unique collisions).
    pub conflicts: u64,
    pub per_table: BTreeMap<String, u64>,
}

impl ApplyStats {
    /// What happened since `before` (for one bundle of a run).
    pub fn since(&self, before: &ApplyStats) -> ApplyStats {
        let mut per_table = self.per_table.clone();
        for (t, n) in &before.per_table {
            if let Some(v) = per_table.get_mut(t) {
                *v -= n;
            }
        }
        per_table.retain(|_, n| *n > 0);
        ApplyStats {
            inserted: self.inserted - before.inserted,
            updated: self.updated - before.updated,
            deleted: self.deleted - before.deleted,
            already_gone: self.already_gone - before.already_gone,
            skipped: self.skipped - before.skipped,
            conflicts: self.conflicts - before.conflicts,
            per_table,
        }
    }
}

/// Applies the changes of one bundle.
pub struct Applier<'a> {
    pub plan: &'a SyncPlan,
    pub schema: &'a Schema,
    pub sender: String,
    pub me: String,
    /// The sender's ack vector: bounds of the origins' change ids this bundle covers.
    pub acks: BTreeMap<String, u64>,
    /// This node's version floors (local versions are read against them).
    pub floors: Floors,
    /// Whether applied changes go into the log, to be forwarded to other peers; when
    /// not, their versions are settled in `ferry_row` directly.
    pub forward: bool,
    /// The greatest version seen (the next floor).
    pub seen: Option<Version>,
    /// Where the time went (for the stage log).
    pub timings: ApplyTimings,
    /// Local rows by identity, looked up or written during this import.
    pub ids: IdCache,
    /// Whether a multi-row insert gets consecutive auto-increment ids (InnoDB's lock
    /// mode 0 or 1), so that the ids are known from the first.
    pub consecutive_ids: bool,
    /// After a restore from a backup (`ferry rejoin`), until the sender has sent every
    /// row: the log position at or below which a row's head is the backup's version
    /// and was sent to the sender before the failure. A greater version arriving for
    /// such a row was made after it, or met it as a conflict at the sender: it applies
    /// as a fast-forward, recording nothing. And the backup's version itself arriving
    /// again, for a row changed here since, is stale.
    pub backup_upto: Option<u64>,
    /// Tables whose rows' versions need no probe unless this run settled them.
    pub fresh: FreshTables,
    pub stats: ApplyStats,
    buffer: Vec<Change>,
    fixups: Vec<Fixup>,
    /// The rows (table, key text) that `fixups` fill in.
    fixup_rows: HashSet<(String, String)>,
    /// What the rows this bundle deleted held in each column a foreign key refers to,
    /// by (table, column): checked at the end (`Applier::check_deletes`).
    deleted: BTreeMap<(String, String), Vec<MyValue>>,
    /// Local ids of the rows deleted so far that other rows take their identity from.
    gone: Gone,
    now_us: i64,
    /// When the sender sealed the bundle (its clock), for the skew check.
    pub created_us: i64,
    /// How far ahead of `created_us` a version may be before it is flagged.
    pub max_skew_us: i64,
    conflicts: Vec<NewConflict>,
    skews: BTreeMap<String, (i64, i64)>,
    readers: HashMap<String, TableReader>,
    /// Tables where a row presumed new turned out to exist (a row older than capture):
    /// every row of them is looked up for the rest of the run.
    probed: std::collections::HashSet<String>,
}

impl<'a> Applier<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        plan: &'a SyncPlan,
        schema: &'a Schema,
        sender: &str,
        me: &str,
        acks: BTreeMap<String, u64>,
        floors: Floors,
        now_us: i64,
    ) -> Applier<'a> {
        Applier {
            plan,
            schema,
            sender: sender.to_string(),
            me: me.to_string(),
            acks,
            floors,
            forward: true,
            seen: None,
            timings: ApplyTimings::default(),
            ids: IdCache::default(),
            consecutive_ids: false,
            backup_upto: None,
            fresh: FreshTables::default(),
            stats: ApplyStats::default(),
            buffer: Vec::new(),
            fixups: Vec::new(),
            fixup_rows: HashSet::new(),
            deleted: BTreeMap::new(),
            gone: Gone::new(plan),
            now_us,
            created_us: now_us,
            max_skew_us: i64::MAX / 2,
            conflicts: Vec::new(),
            skews: BTreeMap::new(),
            readers: HashMap::new(),
            probed: Default::default(),
        }
    }

    fn resolver(&self) -> Resolver<'a> {
        Resolver {
            plan: self.plan,
            schema: self.schema,
        }
    }

    /// Takes the next change.
    pub async fn push(&mut self, conn: &mut Conn, change: Change) -> Result<(), ImportError> {
        if self.buffer.first().is_some_and(|c| c.table != change.table)
            || self.buffer.len() >= CHUNK
        {
            self.flush(conn).await?;
        }
        self.buffer.push(change);
        Ok(())
    }

    /// Begins the changes of the next bundle (of a run applied together), whose sender
    /// states the ack vector `acks`.
    pub async fn start_bundle(
        &mut self,
        conn: &mut Conn,
        acks: BTreeMap<String, u64>,
    ) -> Result<(), ImportError> {
        self.flush(conn).await?;
        self.acks = acks;
        Ok(())
    }

    /// Applies what is buffered.
    pub async fn flush_all(&mut self, conn: &mut Conn) -> Result<(), ImportError> {
        self.flush(conn).await
    }

    /// Applies what is buffered, fixes up forward references and checks deletes.
    pub async fn finish(&mut self, conn: &mut Conn) -> Result<(), ImportError> {
        self.flush(conn).await?;
        self.apply_fixups(conn).await?;
        self.check_deletes(conn).await?;
        let found = std::mem::take(&mut self.conflicts);
        record(conn, self.now_us, &found).await?;
        for (node, (skew, wall)) in std::mem::take(&mut self.skews) {
            record_skew(conn, &node, skew, wall, &self.sender, self.now_us).await?;
        }
        Ok(())
    }

    /// Writes one change's values as an ordinary edit of this node: no version check,
    /// no log entry of its own. In a session without `@ferry_origin` the triggers capture
    /// it like any local edit (restoring a conflict's losing version).
    pub async fn rewrite(&mut self, conn: &mut Conn, change: Change) -> Result<(), ImportError> {
        let table = change.table.clone();
        let (synced, info) = self.table(&table)?;
        let resolver = self.resolver();
        let keys = resolver
            .key_values(conn, &table, std::slice::from_ref(&change.identity))
            .await?;
        let Some(key) = keys[0].clone() else {
            return Err(self.missing_parent(&table, synced, &change.identity));
        };
        let present = resolver
            .existing(conn, &table, std::slice::from_ref(&key), true)
            .await?
            .contains_key(&key_text(&key));
        let cond = key_condition(&synced.identity);
        let mut changes = vec![change];
        if changes[0].op == Op::Delete {
            if present {
                conn.exec_drop(
                    format!("DELETE FROM {} WHERE {cond}", ident(&table)),
                    key.clone(),
                )
                .await
                .map_err(|e| self.write_error(&table, &changes[0].identity, e))?;
            }
            return Ok(());
        }
        let translated = self
            .translate(conn, &table, synced, info, &mut changes, &[0], &keys, false)
            .await?;
        if present {
            self.update_row(conn, &table, synced, &translated[&0], &key, &changes[0])
                .await?;
        } else {
            let row_keys = [identity_text(&changes[0].identity)];
            let w = Writes {
                table: &table,
                synced,
                info,
                translated: &translated,
                changes: &changes,
                row_keys: &row_keys,
            };
            self.insert_rows(conn, &w, &[(0, key)]).await?;
        }
        self.apply_fixups(conn).await
    }

    /// Notes a version whose clock reading is too far ahead of the bundle's creation.
    fn note_skew(&mut self, c: &Change) -> bool {
        let skew = c.version.wall_us - self.created_us;
        if skew <= self.max_skew_us {
            return false;
        }
        let e = self
            .skews
            .entry(c.version.node.clone())
            .or_insert((skew, c.version.wall_us));
        if skew > e.0 {
            *e = (skew, c.version.wall_us);
        }
        true
    }

    /// Whether a version's clock reading looks skewed (ahead of the bundle or of now).
    fn skewed(&self, v: &Version) -> bool {
        v.wall_us - self.created_us > self.max_skew_us || v.wall_us - self.now_us > self.max_skew_us
    }

    fn reader(&mut self, table: &str) -> Result<TableReader, ImportError> {
        if let Some(r) = self.readers.get(table) {
            return Ok(r.clone());
        }
        let r = TableReader::new(self.plan, self.schema, table).ok_or_else(|| {
            ImportError::UnknownTable {
                table: table.to_string(),
            }
        })?;
        self.readers.insert(table.to_string(), r.clone());
        Ok(r)
    }

    /// Records concurrent versions: reads the local rows (before any overwrite) and
    /// pairs each with the incoming change.
    async fn record_concurrent(
        &mut self,
        conn: &mut Conn,
        table: &str,
        changes: &[Change],
        list: &[(usize, Version, bool, bool)],
    ) -> Result<(), ImportError> {
        let reader = self.reader(table)?;
        let keys: Vec<String> = list
            .iter()
            .filter(|(_, _, deleted, _)| !deleted)
            .map(|(i, ..)| identity_text(&changes[*i].identity))
            .collect();
        let local_values = match read_values(conn, &reader, &keys).await {
            // A local row that lost a delete refers to a row this run deleted: the
            // delete check's refusal, said now (reading it in uuid space cannot).
            Err(ImportError::Row(crate::export::rows::RowError::Dangling {
                table: child,
                column,
                target,
                value,
                ..
            })) if self.deleted.iter().any(|((t, _), gone)| {
                *t == target && gone.iter().any(|v| value_text(v) == value)
            }) =>
            {
                return Err(ImportError::StillReferenced {
                    table: target,
                    child,
                    column,
                    example: value,
                    sender: self.sender.clone(),
                });
            }
            r => r?,
        };
        for (i, local_version, local_deleted, incoming_wins) in list {
            let c = &changes[*i];
            let key = identity_text(&c.identity);
            let incoming = Side {
                version: c.version.clone(),
                deleted: c.op == Op::Delete,
                values: (c.op != Op::Delete).then(|| values_json(&reader.columns, &c.values)),
            };
            let local = Side {
                version: local_version.clone(),
                deleted: *local_deleted,
                values: local_values.get(&key).cloned(),
            };
            let (winner, loser) = if *incoming_wins {
                (incoming, local)
            } else {
                (local, incoming)
            };
            if loser.version.is_genesis()
                && winner.deleted == loser.deleted
                && winner.values == loser.values
            {
                // A row from before capture that a full export brought again, the
                // same: nothing is lost. (Captured versions are recorded even then.)
                continue;
            }
            self.stats.conflicts += 1;
            self.conflicts.push(NewConflict {
                table: table.to_string(),
                row_key: key,
                kind: Kind::Concurrent,
                column: None,
                winner_skewed: self.skewed(&winner.version),
                winner,
                loser,
                via: self.sender.clone(),
            });
        }
        Ok(())
    }

    fn table(&self, name: &str) -> Result<(&'a SyncedTable, &'a Table), ImportError> {
        let synced = self
            .plan
            .table(name)
            .and_then(|t| t.synced())
            .ok_or_else(|| ImportError::UnknownTable {
                table: name.to_string(),
            })?;
        Ok((synced, &self.schema.tables[name]))
    }

    async fn flush(&mut self, conn: &mut Conn) -> Result<(), ImportError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.buffer);
        let table = changes[0].table.clone();
        let (synced, info) = self.table(&table)?;
        let resolver = self.resolver();
        let arity = synced.identity.arity();
        for c in &changes {
            if c.identity.0.len() != arity {
                return Err(ImportError::BadChange {
                    table: table.clone(),
                    why: format!(
                        "identity {:?} has {} parts, not {arity}",
                        c.identity.0,
                        c.identity.0.len()
                    ),
                });
            }
            if c.op != Op::Delete && c.values.len() != synced.columns.len() {
                return Err(ImportError::BadChange {
                    table: table.clone(),
                    why: format!(
                        "{} values for {} columns",
                        c.values.len(),
                        synced.columns.len()
                    ),
                });
            }
        }

        // 1. Local keys, existing rows (locked), current versions. A row the sender
        // made new (no base) is presumed new here too, and not looked up, where the
        // identity's unique index would refuse it if it existed (see `insert_presumed`).
        let mut clock = Instant::now();
        let ids: Vec<Identity> = changes.iter().map(|c| c.identity.clone()).collect();
        let mut keys = resolver.key_values(conn, &table, &ids).await?;
        self.keys_of_gone(conn, &table, &changes, &mut keys).await?;
        let keyed = clock.elapsed();
        self.timings.keys += keyed;
        let uniques = unique_columns(&table, synced, info);
        let presume = self.may_presume(&table, synced, info, &uniques);
        let mut presumed: Vec<bool> = changes
            .iter()
            .map(|c| {
                presume && c.base_version.is_none() && c.op != Op::Delete && !c.version.is_genesis()
            })
            .collect();
        let present: Vec<KeyValues> = keys
            .iter()
            .zip(&presumed)
            .filter(|(_, p)| !**p)
            .filter_map(|(k, _)| k.clone())
            .collect();
        let mut existing = resolver.existing(conn, &table, &present, true).await?;
        self.timings.existing += clock.elapsed() - keyed;
        let probing = Instant::now();
        let row_keys: Vec<String> = changes.iter().map(|c| identity_text(&c.identity)).collect();
        let key_refs: Vec<&str> = row_keys.iter().map(String::as_str).collect();
        self.fresh.learn(conn, &table).await?;
        let mut versions = self.versions_of(conn, &table, &key_refs).await?;
        // A presumed row with a version exists (or did): look it up after all, locked,
        // and read its version again under the lock.
        let late: Vec<usize> = (0..changes.len())
            .filter(|&i| presumed[i] && versions.contains_key(&row_keys[i]))
            .collect();
        if !late.is_empty() {
            let late_keys: Vec<KeyValues> = late.iter().filter_map(|&i| keys[i].clone()).collect();
            existing.extend(resolver.existing(conn, &table, &late_keys, true).await?);
            let late_refs: Vec<&str> = late.iter().map(|&i| row_keys[i].as_str()).collect();
            versions.extend(self.versions_of(conn, &table, &late_refs).await?);
            for i in late {
                presumed[i] = false;
            }
        }
        // Rows changed here since a rejoin: the version each had in the backup.
        let backup_versions = self.backup_versions(conn, &table, &versions).await?;
        self.timings.versions += probing.elapsed();
        // Where these versions settle in the row's history, when they are not logged:
        // after every entry written so far (the rows are locked), and before any entry
        // written later (an entry wins a tie with a settled record).
        let settled_at = if self.forward {
            0
        } else {
            last_position(conn).await? + 1
        };

        self.timings.lookup += lap(&mut clock);
        // 2. Decide: fast-forward, concurrent (greater wins, the loser is recorded), or stale.
        let mut deletes: Vec<(usize, KeyValues, Option<i64>)> = Vec::new();
        let mut updates: Vec<(usize, KeyValues, Option<i64>)> = Vec::new();
        let mut inserts: Vec<(usize, KeyValues)> = Vec::new();
        let mut applied: Vec<usize> = Vec::new();
        // (change, local version, local tombstone, incoming wins)
        let mut concurrent: Vec<(usize, Version, bool, bool)> = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            let greater = match &self.seen {
                Some(s) => (c.version.wall_us, c.version.counter) > (s.wall_us, s.counter),
                None => true,
            };
            if greater {
                self.seen = Some(c.version.clone());
            }
            self.note_skew(c);
            let rk = row_keys[i].clone();
            let local = versions.get(&rk).cloned();
            let at_backup = backup_versions.get(&rk);
            let held = || {
                keys[i]
                    .as_ref()
                    .is_some_and(|k| existing.contains_key(&key_text(k)))
            };
            if local.is_none() && c.version.is_genesis() && held() {
                // A row from before capture here, met by another node's from before
                // capture (a full export): the export's is taken, and this one is
                // recorded as the loser where its values differ.
                concurrent.push((i, Version::genesis(&self.me), false, true));
            } else {
                let from_backup = local.as_ref().is_some_and(|l| l.2 && c.version > l.0);
                let decision = if from_backup {
                    Decision::FastForward
                } else if at_backup == Some(&c.version) {
                    Decision::Stale
                } else {
                    decide(
                        &c.version,
                        c.base_version.as_ref(),
                        local.as_ref().map(|l| (&l.0, l.1)),
                    )
                };
                match decision {
                    Decision::Stale => {
                        self.stats.skipped += 1;
                        continue;
                    }
                    Decision::LosesConcurrent => {
                        self.stats.skipped += 1;
                        let (v, d, _) = local.expect("a local version");
                        concurrent.push((i, v, d, false));
                        continue;
                    }
                    Decision::WinsConcurrent => {
                        let (v, d, _) = local.expect("a local version");
                        concurrent.push((i, v, d, true));
                    }
                    Decision::FastForward => {}
                }
            }
            versions.insert(rk, (c.version.clone(), c.op == Op::Delete, false));
            applied.push(i);
            let key = keys[i].clone();
            let row = key.as_ref().and_then(|k| existing.get(&key_text(k)));
            match (c.op, key, row) {
                (Op::Delete, Some(k), Some(r)) => deletes.push((i, k, r.local_id)),
                (Op::Delete, _, None) | (Op::Delete, None, _) => {
                    self.stats.already_gone += 1; // a tombstone only
                }
                (_, Some(k), Some(r)) => updates.push((i, k, r.local_id)),
                (_, Some(k), None) => inserts.push((i, k)),
                (_, None, _) => {
                    return Err(self.missing_parent(&table, synced, &c.identity));
                }
            }
        }
        if !concurrent.is_empty() {
            self.record_concurrent(conn, &table, &changes, &concurrent)
                .await?;
        }

        self.timings.decide += lap(&mut clock);
        // 3. Translate references of the rows to write, then settle unique collisions.
        // A row written again by a later bundle of the run gets that bundle's values: a
        // reference an earlier one left to fill in no longer applies.
        let rewritten = updates.iter().chain(&deletes).map(|(_, k, _)| k);
        self.drop_fixups(&table, rewritten);
        let writes: Vec<usize> = updates
            .iter()
            .map(|u| u.0)
            .chain(inserts.iter().map(|u| u.0))
            .collect();
        let mut changes = changes;
        let keep_values = !uniques.is_empty();
        let mut translated = self
            .translate(
                conn,
                &table,
                synced,
                info,
                &mut changes,
                &writes,
                &keys,
                keep_values,
            )
            .await?;
        self.timings.translate += lap(&mut clock);
        if !uniques.is_empty() && !writes.is_empty() {
            let reader = self.reader(&table)?;
            let check = Check {
                table: &table,
                columns: &uniques,
                reader: &reader,
                changes: &changes,
                via: &self.sender,
                floors: &self.floors,
                me: &self.me,
            };
            let (found, releasing) = check.resolve(conn, &writes, &mut translated).await?;
            self.stats.conflicts += found.len() as u64;
            self.conflicts.extend(found);
            // Values another row of the chunk takes are parked first, so that the
            // unique index takes the updates in any order (two rows swapping values
            // included); each row's own update then writes its new value.
            for (n, (i, idx)) in releasing.into_iter().enumerate() {
                let Some((_, key, _)) = updates.iter().find(|u| u.0 == i) else {
                    continue;
                };
                let cond = key_condition(&synced.identity);
                let mut params = vec![MyValue::from(format!("~ferry{n}"))];
                params.extend(key.iter().cloned());
                conn.exec_drop(
                    format!(
                        "UPDATE {} SET {} = ? WHERE {cond}",
                        ident(&table),
                        ident(&synced.columns[idx])
                    ),
                    params,
                )
                .await
                .map_err(DbError::query(format!("parking a unique value of {table}")))?;
            }
        }

        self.timings.unique += lap(&mut clock);
        // 4. Write.
        self.note_deletes(conn, &table, synced, &deletes).await?;
        for (i, key, local_id) in &deletes {
            let cond = key_condition(&synced.identity);
            conn.exec_drop(
                format!("DELETE FROM {} WHERE {cond}", ident(&table)),
                key.clone(),
            )
            .await
            .map_err(DbError::query(format!("deleting a {table} row")))?;
            self.gone.note(&table, &changes[*i].identity, *local_id);
            self.ids.forget(&table, &row_keys[*i]);
            self.stats.deleted += 1;
        }
        for (i, key, _) in &updates {
            self.update_row(conn, &table, synced, &translated[i], key, &changes[*i])
                .await?;
            self.stats.updated += 1;
        }
        self.timings.update += lap(&mut clock);
        let w = Writes {
            table: &table,
            synced,
            info,
            translated: &translated,
            changes: &changes,
            row_keys: &row_keys,
        };
        let inserted = if inserts.is_empty() {
            HashMap::new()
        } else if inserts.iter().any(|(i, _)| presumed[*i]) {
            self.insert_presumed(conn, &w, &inserts, &mut existing)
                .await?
        } else {
            self.insert_rows(conn, &w, &inserts).await?
        };

        self.timings.insert += lap(&mut clock);
        // 5. Versions: logged for forwarding, or settled.
        let mut inserted_ids: HashMap<String, Option<i64>> = HashMap::new();
        let unknown: Vec<KeyValues> = inserts
            .iter()
            .filter(|(i, _)| !inserted.contains_key(i))
            .map(|(_, k)| k.clone())
            .collect();
        if self.forward && !unknown.is_empty() && resolver.int_pk(&table).is_some() {
            for (k, row) in resolver.existing(conn, &table, &unknown, false).await? {
                inserted_ids.insert(k, row.local_id);
            }
        }
        for (i, k) in &inserts {
            if let Some(id) = inserted.get(i) {
                inserted_ids.insert(key_text(k), Some(*id));
            }
        }
        let mut log = Vec::new();
        let mut settled = Vec::new();
        for i in &applied {
            let c = &changes[*i];
            let rk = row_keys[*i].clone();
            *self.stats.per_table.entry(table.clone()).or_default() += 1;
            if !self.forward {
                settled.push(Settle {
                    table: table.clone(),
                    row_key: rk,
                    version: c.version.clone(),
                    deleted: c.op == Op::Delete,
                    at: settled_at,
                    via: Some(self.sender.clone()),
                });
                continue;
            }
            let row_id = keys[*i]
                .as_ref()
                .and_then(|k| {
                    existing
                        .get(&key_text(k))
                        .map(|r| r.local_id)
                        .or_else(|| inserted_ids.get(&key_text(k)).cloned())
                })
                .flatten();
            log.push(self.log_row(&table, rk, row_id, c));
        }
        settle(conn, &settled).await?;
        for s in &settled {
            self.fresh.settled(&s.table, &s.row_key);
        }
        self.timings.settle += lap(&mut clock);
        if !log.is_empty() {
            conn.query_drop(format!(
                "INSERT INTO ferry_change (table_name, row_id, row_key, op, wall_us, origin, origin_seq, via, \
                 version_wall, version_counter, version_node, base_wall, base_counter, base_node) VALUES {}",
                values_sql(&log)
            ))
            .await
            .map_err(DbError::query("logging applied changes for forwarding"))?;
        }
        self.timings.log += lap(&mut clock);
        Ok(())
    }

    fn log_row(
        &mut self,
        table: &str,
        key: String,
        row_id: Option<i64>,
        c: &Change,
    ) -> Vec<MyValue> {
        let (bw, bc, bn) = version_cols(c.base_version.as_ref());
        let origin_seq = self.acks.get(&c.origin).copied().unwrap_or(0);
        vec![
            table.into(),
            row_id.map(MyValue::Int).unwrap_or(MyValue::NULL),
            key.into(),
            match c.op {
                Op::Insert => "I",
                Op::Update => "U",
                Op::Delete => "D",
            }
            .into(),
            self.now_us.into(),
            c.origin.clone().into(),
            origin_seq.into(),
            self.sender.clone().into(),
            c.version.wall_us.into(),
            c.version.counter.into(),
            c.version.node.clone().into(),
            bw,
            bc,
            bn,
        ]
    }

    fn missing_parent(&self, table: &str, synced: &SyncedTable, id: &Identity) -> ImportError {
        let target = match &synced.identity {
            Rule::Parent { parent, .. } => parent.clone(),
            Rule::Composite { parts } => parts
                .iter()
                .filter_map(|p| p.references.clone())
                .collect::<Vec<_>>()
                .join(" or "),
            _ => table.to_string(),
        };
        ImportError::MissingReference(Box::new(MissingReference {
            table: table.to_string(),
            row: id.0.join(", "),
            column: synced.identity.columns().join(", "),
            target,
            identity: id.0.join(", "),
            sender: self.sender.clone(),
            also: Default::default(),
            deleted_here: false,
        }))
    }

    /// Whether rows the sender made new may be presumed new here without a lookup: the
    /// identity has a unique index (an existing row makes the insert fail, changing
    /// nothing), no other unique column needs its collision check, and no row of the
    /// table turned out to exist in this run.
    fn may_presume(
        &self,
        table: &str,
        synced: &SyncedTable,
        info: &Table,
        uniques: &[UniqueColumn],
    ) -> bool {
        !self.probed.contains(table)
            && info.has_unique(&synced.identity.columns())
            && uniques.is_empty()
    }

    /// The current versions (and tombstones) of rows of `table` by identity text.
    async fn versions_of(
        &self,
        conn: &mut Conn,
        table: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, (Version, bool, bool)>, ImportError> {
        let fresh = &self.fresh;
        let may_have_record = |k: &str| fresh.may_have_record(table, k);
        Ok(heads_where(
            conn,
            &self.floors,
            &self.me,
            table,
            keys,
            None,
            &may_have_record,
        )
        .await?
        .into_iter()
        .map(|(k, h)| {
            let from_backup = self.backup_upto.is_some_and(|b| h.position <= b);
            (k, (h.version, h.deleted, from_backup))
        })
        .collect())
    }

    /// For rows whose head is above [`Applier::backup_upto`] (changed here since the
    /// rejoin): the version they had in the backup, when the log still shows it.
    async fn backup_versions(
        &self,
        conn: &mut Conn,
        table: &str,
        versions: &HashMap<String, (Version, bool, bool)>,
    ) -> Result<HashMap<String, Version>, ImportError> {
        let Some(upto) = self.backup_upto else {
            return Ok(HashMap::new());
        };
        let changed: Vec<&str> = versions
            .iter()
            .filter(|(_, l)| !l.2)
            .map(|(k, _)| k.as_str())
            .collect();
        if changed.is_empty() {
            return Ok(HashMap::new());
        }
        let fresh = &self.fresh;
        let may_have_record = |k: &str| fresh.may_have_record(table, k);
        let heads = heads_where(
            conn,
            &self.floors,
            &self.me,
            table,
            &changed,
            Some(upto),
            &may_have_record,
        )
        .await?;
        Ok(heads
            .into_iter()
            .filter(|(_, h)| h.position <= upto)
            .map(|(k, h)| (k, h.version))
            .collect())
    }

    fn write_error(&self, table: &str, id: &Identity, e: mysql_async::Error) -> ImportError {
        ImportError::Write {
            table: table.to_string(),
            row: id.0.join(", "),
            source: e,
        }
    }
}

/// `a = ? AND b = ?` over the identity's columns.
fn key_condition(rule: &Rule) -> String {
    rule.columns()
        .iter()
        .map(|c| format!("{} = ?", ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The identity as `ferry_change.row_key` and `ferry_row.row_key` store it.
pub fn identity_text(id: &Identity) -> String {
    if id.0.len() == 1 {
        id.0[0].clone()
    } else {
        // The same text MariaDB's JSON_ARRAY writes.
        let parts: Vec<String> =
            id.0.iter()
                .map(|p| serde_json::to_string(p).expect("string"))
                .collect();
        format!("[{}]", parts.join(", "))
    }
}

fn value_text(v: &MyValue) -> String {
    match v {
        MyValue::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        MyValue::Int(i) => i.to_string(),
        MyValue::UInt(u) => u.to_string(),
        other => other.as_sql(true),
    }
}
