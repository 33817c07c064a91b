//! The deterministic OpenMRS workload generator: writes what a clinic writes (patient
//! registrations, visits, encounters with providers and obs, drug and test orders,
//! demographic edits, voided obs, retired metadata, a few hard deletes, optionally new
//! users) into an OpenMRS database, and reports exactly how many rows it inserted,
//! updated and deleted in each table.
//!
//! Exactness: every count comes from the server's affected-row count of a statement
//! that committed, every UPDATE changes at least one value, so the report equals the
//! row-level change log a trigger capture records. Determinism: all values (uuids,
//! timestamps, names, choices) come from a ChaCha RNG seeded with `--seed` mixed with a
//! fingerprint of the starting database, so the same seed on the same starting database
//! writes the same content, different seeds never share a uuid, and a second run on the
//! same database writes fresh uuids. Metadata is discovered at run time (`meta.rs`), so the
//! generator runs on ferry's fixture and on a real OpenMRS dump alike.

mod care;
mod clinic;
mod copy;
mod meta;
mod people;
mod values;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use mysql_async::Conn;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use copy::{copy_rows, grow_to};
pub use values::luhn_check_digit;

/// Errors generating a workload.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("database error while {doing}: {source}\nhint: the database must hold an OpenMRS 2.x schema (load fixtures/openmrs/schema.sql and metadata.sql, or an OpenMRS dump)")]
    Db {
        doing: String,
        source: mysql_async::Error,
    },
    #[error("the database has no {what}\nhint: load fixtures/openmrs/metadata.sql, or add that metadata in OpenMRS, before generating")]
    MissingMetadata { what: String },
    #[error("invalid generator option: {0}\nhint: counts are whole numbers, --edits-per-patient and --rate are non-negative numbers")]
    Options(String),
}

impl GenError {
    fn db(doing: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> GenError {
        let doing = doing.into();
        move |source| GenError::Db { doing, source }
    }
}

/// What to generate. Build with struct update syntax or the chaining setters:
/// `GenOptions { patients: 50, ..GenOptions::default() }` or
/// `GenOptions::default().seed(7).patients(50)`.
#[derive(Debug, Clone, Serialize)]
pub struct GenOptions {
    /// Seeds every random choice (default 1).
    pub seed: u64,
    /// Patients to register.
    pub patients: u32,
    /// Visits per patient.
    pub visits_per_patient: u32,
    /// Encounters per visit.
    pub encounters_per_visit: u32,
    /// Top-level obs per encounter (a grouped obs counts once but writes a parent and two children).
    pub obs_per_encounter: u32,
    /// Orders per encounter (alternating drug and test orders where both exist).
    pub orders_per_encounter: u32,
    /// Edits per patient on average: the whole part always, the fraction by chance.
    pub edits_per_patient: f64,
    /// Users to create before the patients (person + users + user_role).
    pub users: u32,
    /// Throttle to about this many row writes per second.
    pub rate: Option<f64>,
    /// Toggle the retired flag of one location and one concept at the end of the run.
    pub retire_metadata: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            seed: 1,
            patients: 100,
            visits_per_patient: 2,
            encounters_per_visit: 2,
            obs_per_encounter: 6,
            orders_per_encounter: 1,
            edits_per_patient: 1.5,
            users: 0,
            rate: None,
            retire_metadata: true,
        }
    }
}

impl GenOptions {
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the number of patients.
    pub fn patients(mut self, n: u32) -> Self {
        self.patients = n;
        self
    }

    /// Sets the number of users to create.
    pub fn users(mut self, n: u32) -> Self {
        self.users = n;
        self
    }

    fn validate(&self) -> Result<(), GenError> {
        if !self.edits_per_patient.is_finite() || self.edits_per_patient < 0.0 {
            return Err(GenError::Options(format!(
                "edits per patient {} is not a non-negative number",
                self.edits_per_patient
            )));
        }
        if let Some(rate) = self.rate {
            if !rate.is_finite() || rate <= 0.0 {
                return Err(GenError::Options(format!(
                    "rate {rate} is not a positive number"
                )));
            }
        }
        Ok(())
    }
}

/// Row writes to one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TableWrites {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
}

impl TableWrites {
    /// All row writes.
    pub fn rows(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }

    fn add(&mut self, other: &TableWrites) {
        self.inserts += other.inserts;
        self.updates += other.updates;
        self.deletes += other.deletes;
    }
}

/// What a run wrote: committed row writes per table and operation.
#[derive(Debug, Clone, Serialize)]
pub struct GenReport {
    pub seed: u64,
    /// The starting-state fingerprint mixed into the seed.
    pub fingerprint: String,
    pub patients: u32,
    pub users: u32,
    pub per_table: BTreeMap<String, TableWrites>,
    pub total: TableWrites,
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
    pub rows_per_sec: f64,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl GenReport {
    /// Writes to `table` (zero when it was not written).
    pub fn table(&self, table: &str) -> TableWrites {
        self.per_table.get(table).copied().unwrap_or_default()
    }

    /// A table of row writes per table, for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<22} {:>9} {:>9} {:>9}",
            "table", "inserts", "updates", "deletes"
        );
        for (table, w) in &self.per_table {
            let _ = writeln!(
                s,
                "{:<22} {:>9} {:>9} {:>9}",
                table, w.inserts, w.updates, w.deletes
            );
        }
        let t = &self.total;
        let _ = writeln!(
            s,
            "{:<22} {:>9} {:>9} {:>9}",
            "total", t.inserts, t.updates, t.deletes
        );
        let _ = write!(
            s,
            "{} row writes for {} patients and {} users in {:.2} s ({:.0} rows/s), seed {}",
            t.rows(),
            self.patients,
            self.users,
            self.elapsed.as_secs_f64(),
            self.rows_per_sec,
            self.seed
        );
        s
    }
}

/// Generates the workload `opts` describes on `conn` and reports the committed row writes.
pub async fn generate(conn: &mut Conn, opts: &GenOptions) -> Result<GenReport, GenError> {
    opts.validate()?;
    let started = Instant::now();
    let meta = meta::discover(conn).await?;
    if opts.orders_per_encounter > 0
        && (meta.care_settings.is_empty()
            || (meta.test_order_type.is_none()
                && (meta.drug_order_type.is_none() || meta.drugs.is_empty())))
    {
        return Err(GenError::MissingMetadata {
            what: "care setting with a drug order type and drug, or a test order type (needed for orders)"
                .into(),
        });
    }
    let mut key = Sha256::new();
    key.update(b"ferry-gen-v1\0");
    key.update(opts.seed.to_le_bytes());
    key.update(meta.fingerprint.as_bytes());
    let rng = ChaCha20Rng::from_seed(key.finalize().into());
    let fingerprint = meta.fingerprint.clone();
    let mut w = clinic::Writer::new(conn, rng, meta, opts.rate, started);
    w.run(opts).await?;
    let per_table = w.into_counts();
    let mut total = TableWrites::default();
    for t in per_table.values() {
        total.add(t);
    }
    let elapsed = started.elapsed();
    Ok(GenReport {
        seed: opts.seed,
        fingerprint,
        patients: opts.patients,
        users: opts.users,
        rows_per_sec: total.rows() as f64 / elapsed.as_secs_f64().max(1e-9),
        per_table,
        total,
        elapsed,
    })
}
