//! The clinic's writes, one transaction per unit of work as the OpenMRS app commits them:
//! a registration, a visit, an encounter (with its providers, obs and orders), an edit,
//! a new user, a metadata retirement. Counts are taken from the server's affected-row
//! counts and kept pending until the transaction commits, so the report holds committed
//! row writes only.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, Value};
use rand::Rng;
use rand_chacha::ChaCha20Rng;

use super::meta::Meta;
use super::values::{self, date, datetime, pick, pick_other, uuid};
use super::{GenError, GenOptions, TableWrites};

#[derive(Clone, Copy)]
enum Op {
    Insert,
    Update,
    Delete,
}

/// A patient registered by this run, remembered for its edits.
struct Patient {
    person_id: i64,
    name_id: i64,
    given: &'static str,
    birth_days: i64,
    address_id: i64,
    city: &'static str,
    attributes: Vec<i64>,
    obs: Vec<i64>,
    location: i64,
}

pub(super) struct Writer<'c> {
    conn: &'c mut Conn,
    rng: ChaCha20Rng,
    meta: Meta,
    rate: Option<f64>,
    started: Instant,
    now: i64,
    pending: BTreeMap<&'static str, TableWrites>,
    counts: BTreeMap<String, TableWrites>,
    committed_rows: u64,
    /// Four digits that open every OpenMRS ID this run assigns (like an idgen site prefix).
    site_code: u32,
}

const INSERT_OBS: &str = "INSERT INTO obs (person_id, concept_id, encounter_id, obs_datetime, location_id, \
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
    fn tick(&mut self, max: i64) -> Value {
        self.now += self.rng.gen_range(1..=max);
        datetime(self.now)
    }

    fn new_uuid(&mut self) -> String {
        uuid(&mut self.rng)
    }

    async fn write(
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

    async fn insert(
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
        }
        if opts.retire_metadata {
            self.begin().await?;
            let r = self.retire().await;
            self.rollback_on(r).await?;
        }
        Ok(())
    }

    async fn user(&mut self) -> Result<(), GenError> {
        // OpenMRS derives system_id from max(user_id) + 1 with a Luhn check digit.
        let next: Option<i64> = self
            .conn
            .query_first("SELECT COALESCE(MAX(user_id), 0) + 1 FROM users")
            .await
            .map_err(GenError::db("reading the next user id"))?;
        let next = next.unwrap_or(1);
        let system_id = format!("{next}-{}", values::luhn_check_digit(&next.to_string()));
        let creator = self.meta.creator;
        let female = self.rng.gen_bool(0.5);
        let given = *pick(
            &mut self.rng,
            if female {
                values::GIVEN_F
            } else {
                values::GIVEN_M
            },
        );
        let family = *pick(&mut self.rng, values::FAMILY);
        let (ts, u1, u2, u3) = (
            self.tick(600),
            self.new_uuid(),
            self.new_uuid(),
            self.new_uuid(),
        );
        let person = self
            .insert(
                "person",
                "INSERT INTO person (gender, birthdate, creator, date_created, uuid) VALUES (?, NULL, ?, ?, ?)",
                vec![(if female { "F" } else { "M" }).into(), creator.into(), ts.clone(), u1.into()],
            )
            .await?;
        self.insert(
            "person_name",
            "INSERT INTO person_name (preferred, person_id, given_name, family_name, creator, date_created, uuid) \
             VALUES (1, ?, ?, ?, ?, ?, ?)",
            vec![person.into(), given.into(), family.into(), creator.into(), ts.clone(), u2.into()],
        )
        .await?;
        let username = format!("{}{}", given.to_lowercase(), next);
        let user = self
            .insert(
                "users",
                "INSERT INTO users (system_id, username, creator, date_created, person_id, retired, uuid) \
                 VALUES (?, ?, ?, ?, ?, 0, ?)",
                vec![system_id.into(), username.into(), creator.into(), ts, person.into(), u3.into()],
            )
            .await?;
        if !self.meta.user_roles.is_empty() {
            let role = pick(&mut self.rng, &self.meta.user_roles).clone();
            self.insert(
                "user_role",
                "INSERT INTO user_role (user_id, role) VALUES (?, ?)",
                vec![user.into(), role.into()],
            )
            .await?;
        }
        Ok(())
    }

    async fn register(&mut self) -> Result<Patient, GenError> {
        let creator = self.meta.creator;
        let female = self.rng.gen_bool(0.5);
        let given = *pick(
            &mut self.rng,
            if female {
                values::GIVEN_F
            } else {
                values::GIVEN_M
            },
        );
        let family = *pick(&mut self.rng, values::FAMILY);
        let birth_days = self.rng.gen_range(-10_000..18_000);
        let estimated = self.rng.gen_bool(0.1);
        let ts = self.tick(900);
        let u = self.new_uuid();
        let person_id = self
            .insert(
                "person",
                "INSERT INTO person (gender, birthdate, birthdate_estimated, creator, date_created, uuid) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                vec![(if female { "F" } else { "M" }).into(), date(birth_days), estimated.into(), creator.into(), ts.clone(), u.into()],
            )
            .await?;
        let u = self.new_uuid();
        let name_id = self
            .insert(
                "person_name",
                "INSERT INTO person_name (preferred, person_id, given_name, family_name, creator, date_created, uuid) \
                 VALUES (1, ?, ?, ?, ?, ?, ?)",
                vec![person_id.into(), given.into(), family.into(), creator.into(), ts.clone(), u.into()],
            )
            .await?;
        let city = *pick(&mut self.rng, values::CITIES);
        let address1 = format!(
            "{} {}",
            self.rng.gen_range(1..400),
            pick(&mut self.rng, values::STREETS)
        );
        let u = self.new_uuid();
        let address_id = self
            .insert(
                "person_address",
                "INSERT INTO person_address (person_id, preferred, address1, city_village, country, creator, \
                 date_created, uuid) VALUES (?, 1, ?, ?, 'Rwanda', ?, ?, ?)",
                vec![person_id.into(), address1.into(), city.into(), creator.into(), ts.clone(), u.into()],
            )
            .await?;
        let location = *pick(&mut self.rng, &self.meta.locations);
        let mut attributes = Vec::new();
        let attr_sql =
            "INSERT INTO person_attribute (person_id, value, person_attribute_type_id, creator, \
             date_created, uuid) VALUES (?, ?, ?, ?, ?, ?)";
        if !self.meta.string_attribute_types.is_empty() {
            let t = *pick(&mut self.rng, &self.meta.string_attribute_types);
            let phone = format!("+250 78{:07}", self.rng.gen_range(0..10_000_000));
            let u = self.new_uuid();
            let id = self
                .insert(
                    "person_attribute",
                    attr_sql,
                    vec![
                        person_id.into(),
                        phone.into(),
                        t.into(),
                        creator.into(),
                        ts.clone(),
                        u.into(),
                    ],
                )
                .await?;
            attributes.push(id);
        }
        if let Some(&t) = self.meta.location_attribute_types.first() {
            // A soft reference: the value is a location_id, as OpenMRS stores org.openmrs.Location attributes.
            let u = self.new_uuid();
            let id = self
                .insert(
                    "person_attribute",
                    attr_sql,
                    vec![
                        person_id.into(),
                        location.to_string().into(),
                        t.into(),
                        creator.into(),
                        ts.clone(),
                        u.into(),
                    ],
                )
                .await?;
            attributes.push(id);
        }
        self.insert(
            "patient",
            "INSERT INTO patient (patient_id, creator, date_created) VALUES (?, ?, ?)",
            vec![person_id.into(), creator.into(), ts.clone()],
        )
        .await?;
        // Unique within the database: the person_id part never repeats and the code has a fixed width.
        let body = format!("{}{:06}", self.site_code, person_id);
        let identifier = format!("{body}-{}", values::luhn_check_digit(&body));
        let u = self.new_uuid();
        self.insert(
            "patient_identifier",
            "INSERT INTO patient_identifier (patient_id, identifier, identifier_type, preferred, location_id, \
             creator, date_created, uuid) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
            vec![person_id.into(), identifier.into(), self.meta.identifier_type.into(), location.into(), creator.into(), ts, u.into()],
        )
        .await?;
        Ok(Patient {
            person_id,
            name_id,
            given,
            birth_days,
            address_id,
            city,
            attributes,
            obs: Vec::new(),
            location,
        })
    }

    async fn visit(&mut self, p: &Patient) -> Result<(i64, i64), GenError> {
        self.now += self.rng.gen_range(86_400..30 * 86_400);
        let start = self.now;
        let stop = datetime(start + self.rng.gen_range(3_600..8 * 3_600));
        let location = if self.rng.gen_bool(0.8) {
            p.location
        } else {
            *pick(&mut self.rng, &self.meta.locations)
        };
        let visit_type = *pick(&mut self.rng, &self.meta.visit_types);
        let u = self.new_uuid();
        let id = self
            .insert(
                "visit",
                "INSERT INTO visit (patient_id, visit_type_id, date_started, date_stopped, location_id, creator, \
                 date_created, uuid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                vec![p.person_id.into(), visit_type.into(), datetime(start), stop, location.into(), self.meta.creator.into(), datetime(start), u.into()],
            )
            .await?;
        Ok((id, location))
    }

    async fn encounter(
        &mut self,
        p: &mut Patient,
        visit_id: i64,
        location: i64,
        opts: &GenOptions,
    ) -> Result<(), GenError> {
        let creator = self.meta.creator;
        let ts = self.tick(1_200);
        let et = *pick(&mut self.rng, &self.meta.encounter_types);
        let u = self.new_uuid();
        let enc = self
            .insert(
                "encounter",
                "INSERT INTO encounter (encounter_type, patient_id, location_id, encounter_datetime, creator, \
                 date_created, visit_id, uuid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                vec![et.into(), p.person_id.into(), location.into(), ts.clone(), creator.into(), ts.clone(), visit_id.into(), u.into()],
            )
            .await?;
        let provider = *pick(&mut self.rng, &self.meta.providers);
        let role = *pick(&mut self.rng, &self.meta.encounter_roles);
        let u = self.new_uuid();
        self.insert(
            "encounter_provider",
            "INSERT INTO encounter_provider (encounter_id, provider_id, encounter_role_id, creator, date_created, uuid) \
             VALUES (?, ?, ?, ?, ?, ?)",
            vec![enc.into(), provider.into(), role.into(), creator.into(), ts.clone(), u.into()],
        )
        .await?;
        let ctx = ObsCtx {
            person: p.person_id,
            encounter: enc,
            location,
            at: ts.clone(),
        };
        for k in 0..opts.obs_per_encounter {
            self.obs(&ctx, k, p).await?;
        }
        for k in 0..opts.orders_per_encounter {
            self.order(p.person_id, enc, provider, k, ts.clone())
                .await?;
        }
        Ok(())
    }

    /// The value columns of one obs: (concept, value_coded, value_coded_name_id, value_datetime, value_numeric, value_text).
    fn obs_value(&mut self, kind: u32) -> (i64, Value, Value, Value, Value, Value) {
        let m = &self.meta;
        let available = [
            !m.numeric.is_empty(),
            m.can_code(),
            !m.text.is_empty(),
            !m.datetime.is_empty(),
        ];
        let mut kind = (kind % 4) as usize;
        while !available[kind] {
            kind = (kind + 1) % 4;
        }
        let null = || Value::NULL;
        match kind {
            0 => {
                let n = pick(&mut self.rng, &self.meta.numeric).clone();
                let mut v = self.rng.gen_range(n.low..=n.high);
                v = if n.decimal {
                    (v * 10.0).round() / 10.0
                } else {
                    v.round()
                };
                (n.concept, null(), null(), null(), v.into(), null())
            }
            1 => {
                let q = *pick(&mut self.rng, &self.meta.coded_questions);
                let (a, name) = *pick(&mut self.rng, &self.meta.answers);
                (q, a.into(), name.into(), null(), null(), null())
            }
            2 => {
                let c = *pick(&mut self.rng, &self.meta.text);
                let note = *pick(&mut self.rng, values::NOTES);
                (c, null(), null(), null(), null(), note.into())
            }
            _ => {
                let c = *pick(&mut self.rng, &self.meta.datetime);
                let when = self.now + self.rng.gen_range(7..90) * 86_400;
                (
                    c,
                    null(),
                    null(),
                    datetime(when - when % 86_400),
                    null(),
                    null(),
                )
            }
        }
    }

    async fn obs(&mut self, ctx: &ObsCtx, k: u32, p: &mut Patient) -> Result<(), GenError> {
        // Every fifth obs is a group (a set concept with two member obs) where a set exists.
        let group = if k % 5 == 4 && !self.meta.sets.is_empty() {
            let set = *pick(&mut self.rng, &self.meta.sets);
            let u = self.new_uuid();
            let parent = self
                .insert(
                    "obs",
                    INSERT_OBS,
                    ctx.params(
                        set,
                        Value::NULL,
                        (
                            Value::NULL,
                            Value::NULL,
                            Value::NULL,
                            Value::NULL,
                            Value::NULL,
                        ),
                        self.meta.creator,
                        u,
                    ),
                )
                .await?;
            p.obs.push(parent);
            Some(parent)
        } else {
            None
        };
        let members = if group.is_some() { 2 } else { 1 };
        for i in 0..members {
            let (concept, coded, name, dt, num, text) = self.obs_value(k + i);
            let u = self.new_uuid();
            let id = self
                .insert(
                    "obs",
                    INSERT_OBS,
                    ctx.params(
                        concept,
                        group.into(),
                        (coded, name, dt, num, text),
                        self.meta.creator,
                        u,
                    ),
                )
                .await?;
            p.obs.push(id);
        }
        Ok(())
    }

    async fn order(
        &mut self,
        patient: i64,
        enc: i64,
        orderer: i64,
        k: u32,
        ts: Value,
    ) -> Result<(), GenError> {
        let drug_ok = self.meta.drug_order_type.is_some() && !self.meta.drugs.is_empty();
        let drug = drug_ok
            && (self.meta.test_order_type.is_none() || (k + self.rng.gen_range(0..2)) % 2 == 0);
        let (order_type, concept) = if drug {
            (self.meta.drug_order_type, None)
        } else {
            (
                self.meta.test_order_type,
                Some(*pick(&mut self.rng, &self.meta.test_concepts)),
            )
        };
        let chosen_drug = if drug {
            Some(pick(&mut self.rng, &self.meta.drugs).clone())
        } else {
            None
        };
        let concept = concept
            .or(chosen_drug.as_ref().map(|d| d.concept))
            .unwrap_or_default();
        let care = *pick(&mut self.rng, &self.meta.care_settings);
        let number = format!("ORD-{:08x}", self.rng.gen::<u32>());
        let u = self.new_uuid();
        let order = self
            .insert(
                "orders",
                "INSERT INTO orders (order_type_id, concept_id, orderer, encounter_id, date_activated, creator, \
                 date_created, voided, patient_id, uuid, urgency, order_number, order_action, care_setting) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 'ROUTINE', ?, 'NEW', ?)",
                vec![order_type.into(), concept.into(), orderer.into(), enc.into(), ts.clone(), self.meta.creator.into(), ts, patient.into(), u.into(), number.into(), care.into()],
            )
            .await?;
        if let Some(d) = chosen_drug {
            let dose = f64::from(self.rng.gen_range(1..=4)) * 250.0;
            let days = self.rng.gen_range(3..=30);
            let freq = (!self.meta.frequencies.is_empty())
                .then(|| *pick(&mut self.rng, &self.meta.frequencies));
            self.insert(
                "drug_order",
                "INSERT INTO drug_order (order_id, drug_inventory_id, dose, as_needed, dosing_type, quantity, \
                 num_refills, duration, quantity_units, route, dose_units, frequency, dispense_as_written) \
                 VALUES (?, ?, ?, 0, 'org.openmrs.SimpleDosingInstructions', ?, 0, ?, ?, ?, ?, ?, 0)",
                vec![order.into(), d.drug.into(), dose.into(), f64::from(days * 2).into(), days.into(), self.meta.dose_units.into(), d.route.into(), self.meta.dose_units.into(), freq.into()],
            )
            .await?;
        } else {
            let history = *pick(&mut self.rng, values::NOTES);
            self.insert(
                "test_order",
                "INSERT INTO test_order (order_id, clinical_history) VALUES (?, ?)",
                vec![order.into(), history.into()],
            )
            .await?;
        }
        Ok(())
    }

    async fn edit(&mut self, p: &mut Patient) -> Result<(), GenError> {
        let by = self.meta.creator;
        let ts = self.tick(3_600);
        let mut kind = self.rng.gen_range(0..5);
        if kind == 2 && p.obs.is_empty() {
            kind = 0;
        }
        if kind == 3 && p.attributes.is_empty() {
            kind = 4;
        }
        match kind {
            0 => {
                // A corrected given name: always a different value.
                let list = if values::GIVEN_F.contains(&p.given) {
                    values::GIVEN_F
                } else {
                    values::GIVEN_M
                };
                let given = pick_other(&mut self.rng, list, p.given);
                p.given = given;
                self.write(Op::Update, "person_name",
                    "UPDATE person_name SET given_name = ?, changed_by = ?, date_changed = ? WHERE person_name_id = ?",
                    vec![given.into(), by.into(), ts, p.name_id.into()]).await?;
            }
            1 => {
                p.birth_days -= self.rng.gen_range(1..=365);
                self.write(Op::Update, "person",
                    "UPDATE person SET birthdate = ?, birthdate_estimated = 0, changed_by = ?, date_changed = ? WHERE person_id = ?",
                    vec![date(p.birth_days), by.into(), ts, p.person_id.into()]).await?;
            }
            2 => {
                let obs = p.obs.swap_remove(self.rng.gen_range(0..p.obs.len()));
                self.write(Op::Update, "obs",
                    "UPDATE obs SET voided = 1, voided_by = ?, date_voided = ?, void_reason = 'entered in error' \
                     WHERE obs_id = ? AND voided = 0",
                    vec![by.into(), ts, obs.into()]).await?;
            }
            3 => {
                let attr = p
                    .attributes
                    .swap_remove(self.rng.gen_range(0..p.attributes.len()));
                self.write(
                    Op::Delete,
                    "person_attribute",
                    "DELETE FROM person_attribute WHERE person_attribute_id = ?",
                    vec![attr.into()],
                )
                .await?;
            }
            _ => {
                let city = pick_other(&mut self.rng, values::CITIES, p.city);
                p.city = city;
                self.write(Op::Update, "person_address",
                    "UPDATE person_address SET city_village = ?, changed_by = ?, date_changed = ? WHERE person_address_id = ?",
                    vec![city.into(), by.into(), ts, p.address_id.into()]).await?;
            }
        }
        Ok(())
    }

    /// Retires (or, when already retired, brings back) one location and one concept.
    async fn retire(&mut self) -> Result<(), GenError> {
        let by = self.meta.creator;
        let ts = self.tick(3_600);
        for (table, key, list) in [
            ("location", "location_id", self.meta.all_locations.clone()),
            (
                "concept",
                "concept_id",
                self.meta.all_answer_concepts.clone(),
            ),
        ] {
            if list.is_empty() {
                continue;
            }
            let id = *pick(&mut self.rng, &list);
            let sql = format!("SELECT retired FROM {table} WHERE {key} = ?");
            let retired: Option<bool> = self
                .conn
                .exec_first(&sql, (id,))
                .await
                .map_err(GenError::db(format!("reading {table} {id}")))?;
            let (sql, params) = if retired.unwrap_or(false) {
                (
                    format!("UPDATE {table} SET retired = 0, retired_by = NULL, date_retired = NULL, retire_reason = NULL WHERE {key} = ?"),
                    vec![id.into()],
                )
            } else {
                (
                    format!("UPDATE {table} SET retired = 1, retired_by = ?, date_retired = ?, retire_reason = 'no longer used' WHERE {key} = ?"),
                    vec![by.into(), ts.clone(), id.into()],
                )
            };
            self.write(Op::Update, table, &sql, params).await?;
        }
        Ok(())
    }
}

/// What every obs of one encounter shares.
struct ObsCtx {
    person: i64,
    encounter: i64,
    location: i64,
    at: Value,
}

impl ObsCtx {
    fn params(
        &self,
        concept: i64,
        group: Value,
        v: (Value, Value, Value, Value, Value),
        creator: i64,
        uuid: String,
    ) -> Vec<Value> {
        let (coded, name, dt, num, text) = v;
        vec![
            self.person.into(),
            concept.into(),
            self.encounter.into(),
            self.at.clone(),
            self.location.into(),
            group,
            coded,
            name,
            dt,
            num,
            text,
            creator.into(),
            self.at.clone(),
            uuid.into(),
        ]
    }
}
