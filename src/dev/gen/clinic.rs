//! The generator's writer: the order of a run (users, then per patient a registration,
//! its visits and encounters, its edits; metadata retirement last), one transaction per
//! unit of work as the OpenMRS app commits them, and the counting. Counts are taken from
//! the server's affected-row counts and kept pending until the transaction commits, so
//! the report holds committed row writes only. The units of work themselves live in
//! [`super::people`] and [`super::care`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, Value};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

use super::meta::Meta;
use super::values::{self, datetime, uuid};
use super::{GenError, GenOptions, TableWrites};

#[derive(Clone, Copy)]
pub(super) enum Op {
    Insert,
    Update,
    Delete,
}

/// A patient registered by this run, remembered for its edits.
pub(super) struct Patient {
    pub(super) person_id: i64,
    pub(super) name_id: i64,
    pub(super) given: &'static str,
    pub(super) birth_days: i64,
    pub(super) address_id: i64,
    pub(super) city: &'static str,
    pub(super) attributes: Vec<i64>,
    pub(super) obs: Vec<i64>,
    pub(super) location: i64,
}

pub(super) struct Writer<'c> {
    pub(super) conn: &'c mut Conn,
    pub(super) rng: ChaCha20Rng,
    pub(super) meta: Meta,
    pub(super) rate: Option<f64>,
    pub(super) started: Instant,
    pub(super) now: i64,
    pub(super) pending: BTreeMap<&'static str, TableWrites>,
    pub(super) counts: BTreeMap<String, TableWrites>,
    pub(super) committed_rows: u64,
    /// Four digits that open every OpenMRS ID this run assigns (like an idgen site prefix).
    pub(super) site_code: u32,
}

pub(super) const INSERT_OBS: &str = "INSERT INTO obs (person_id, concept_id, encounter_id, obs_datetime, location_id, \
    obs_group_id, value_coded, value_coded_name_id, value_datetime, value_numeric, value_text, creator, \
    date_created, voided, uuid, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 'FINAL')";

impl<'c> Writer<'c> {
    pub fn new(
        conn: &'c mut Conn,
        mut rng: ChaCha20Rng,
        meta: Meta,
        rate: Option<f64>,
        started: Instant,
    ) -> Self {
        let site_code = rng.gen_range(1_000..10_000);
        Writer {
            site_code,
            conn,
            rng,
            meta,
            rate,
            started,
            now: values::TIMELINE_START,
            pending: BTreeMap::new(),
            counts: BTreeMap::new(),
            committed_rows: 0,
        }
    }

    pub fn into_counts(self) -> BTreeMap<String, TableWrites> {
        self.counts
    }

    /// Moves the clock forward by 1..=`max` seconds and returns the new instant.
    pub(super) fn tick(&mut self, max: i64) -> Value {
        self.now += self.rng.gen_range(1..=max);
        datetime(self.now)
    }

    pub(super) fn new_uuid(&mut self) -> String {
        uuid(&mut self.rng)
    }

    pub(super) async fn write(
        &mut self,
        op: Op,
        table: &'static str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<u64, GenError> {
        self.conn
            .exec_drop(sql, params)
            .await
            .map_err(GenError::db(format!("writing {table}")))?;
        let n = self.conn.affected_rows();
        let entry = self.pending.entry(table).or_default();
        match op {
            Op::Insert => entry.inserts += n,
            Op::Update => entry.updates += n,
            Op::Delete => entry.deletes += n,
        }
        Ok(n)
    }

    pub(super) async fn insert(
        &mut self,
        table: &'static str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<i64, GenError> {
        self.write(Op::Insert, table, sql, params).await?;
        Ok(self.conn.last_insert_id().unwrap_or(0) as i64)
    }

    async fn begin(&mut self) -> Result<(), GenError> {
        self.pending.clear();
        self.conn
            .query_drop("START TRANSACTION")
            .await
            .map_err(GenError::db("starting a transaction"))
    }

    async fn commit(&mut self) -> Result<(), GenError> {
        self.conn
            .query_drop("COMMIT")
            .await
            .map_err(GenError::db("committing"))?;
        for (table, w) in std::mem::take(&mut self.pending) {
            if w.rows() == 0 {
                continue;
            }
            self.committed_rows += w.rows();
            self.counts.entry(table.to_string()).or_default().add(&w);
        }
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.committed_rows as f64 / rate);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    /// Runs one unit of work in a transaction, rolling back on failure.
    async fn rollback_on<T>(&mut self, result: Result<T, GenError>) -> Result<T, GenError> {
        match result {
            Ok(v) => {
                self.commit().await?;
                Ok(v)
            }
            Err(e) => {
                self.pending.clear();
                let _ = self.conn.query_drop("ROLLBACK").await;
                Err(e)
            }
        }
    }

    pub async fn run(&mut self, opts: &GenOptions) -> Result<(), GenError> {
        for _ in 0..opts.users {
            self.begin().await?;
            let r = self.user().await;
            self.rollback_on(r).await?;
        }
        for _ in 0..opts.patients {
            self.begin().await?;
            let r = self.register().await;
            let mut patient = self.rollback_on(r).await?;
            // The patient's visits and edits follow its registration on its own timeline;
            // the run's clock moves on by registrations only, so dates stay near the start.
            let registered_at = self.now;
            for _ in 0..opts.visits_per_patient {
                self.begin().await?;
                let r = self.visit(&patient).await;
                let (visit_id, location) = self.rollback_on(r).await?;
                for _ in 0..opts.encounters_per_visit {
                    self.begin().await?;
                    let r = self.encounter(&mut patient, visit_id, location, opts).await;
                    self.rollback_on(r).await?;
                }
            }
            let whole = opts.edits_per_patient.trunc() as u64;
            let extra = self.rng.gen_bool(opts.edits_per_patient.fract());
            for _ in 0..whole + u64::from(extra) {
                self.begin().await?;
                let r = self.edit(&mut patient).await;
                self.rollback_on(r).await?;
            }
            self.now = registered_at;
        }
        if opts.retire_metadata {
            self.begin().await?;
            let r = self.retire().await;
            self.rollback_on(r).await?;
        }
        Ok(())
    }
}
