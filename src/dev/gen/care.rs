//! Writes about care: a visit, and an encounter with its provider, obs (numeric,
//! coded, text, datetime, and groups of a set concept with member obs) and orders (drug
//! orders and test orders, each an `orders` row plus its subclass row).

use mysql_async::Value;
use rand::Rng;

use super::clinic::{Patient, Writer, INSERT_OBS};
use super::values::{self, datetime, pick};
use super::{GenError, GenOptions};

impl Writer<'_> {
    pub(super) async fn visit(&mut self, p: &Patient) -> Result<(i64, i64), GenError> {
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

    pub(super) async fn encounter(
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
