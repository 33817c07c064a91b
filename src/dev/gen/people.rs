//! Writes about people: new users (person, name, users with an OpenMRS system id,
//! user_role), patient registrations (person, name, address, attributes including a
//! Location-format soft reference, patient, identifier), the later edits of a patient
//! (name, birthdate or address changes, a voided obs, a deleted attribute) and the
//! retirement of metadata.

use mysql_async::prelude::*;
use rand::Rng;

use super::clinic::{Op, Patient, Writer};
use super::values::{self, date, pick, pick_other};
use super::GenError;

impl Writer<'_> {
    pub(super) async fn user(&mut self) -> Result<(), GenError> {
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

    pub(super) async fn register(&mut self) -> Result<Patient, GenError> {
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

    pub(super) async fn edit(&mut self, p: &mut Patient) -> Result<(), GenError> {
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

    /// Retires (or, when already retired, brings back) one location and one concept. The
    /// last active row of its kind is never retired (a later run needs one): another,
    /// retired one is brought back instead.
    pub(super) async fn retire(&mut self) -> Result<(), GenError> {
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
            let mut id = *pick(&mut self.rng, &list);
            let sql = format!("SELECT retired FROM {table} WHERE {key} = ?");
            let mut retired: Option<bool> = self
                .conn
                .exec_first(&sql, (id,))
                .await
                .map_err(GenError::db(format!("reading {table} {id}")))?;
            if !retired.unwrap_or(false) {
                let ids = list
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let states: Vec<(i64, bool)> = self
                    .conn
                    .query(format!(
                        "SELECT {key}, retired FROM {table} WHERE {key} IN ({ids}) ORDER BY {key}"
                    ))
                    .await
                    .map_err(GenError::db(format!("reading {table} states")))?;
                if states.iter().filter(|(_, r)| !r).count() <= 1 {
                    match states.iter().find(|(_, r)| *r) {
                        Some((other, _)) => {
                            id = *other;
                            retired = Some(true);
                        }
                        None => continue,
                    }
                }
            }
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
