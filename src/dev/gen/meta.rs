//! Run-time discovery of the metadata the generator writes against: users, locations,
//! identifier and attribute types, visit and encounter types, roles, providers, concepts
//! by datatype, order types, care settings, drugs. Everything is found by querying (by
//! name of datatype, class or Java class, never by hard-coded id), so the same code runs
//! on ferry's fixture and on a real OpenMRS dump. Retired metadata is left alone.

use mysql_async::prelude::*;
use mysql_async::Conn;

use super::GenError;

/// A numeric concept with the range its values are drawn from.
#[derive(Debug, Clone)]
pub struct Numeric {
    pub concept: i64,
    pub low: f64,
    pub high: f64,
    pub decimal: bool,
}

/// A drug with the concept and route its orders use.
#[derive(Debug, Clone)]
pub struct Drug {
    pub drug: i64,
    pub concept: i64,
    pub route: Option<i64>,
}

/// The metadata of one database, in id order.
#[derive(Debug, Clone)]
pub struct Meta {
    pub creator: i64,
    pub locations: Vec<i64>,
    pub identifier_type: i64,
    pub string_attribute_types: Vec<i64>,
    pub location_attribute_types: Vec<i64>,
    pub visit_types: Vec<i64>,
    pub encounter_types: Vec<i64>,
    pub encounter_roles: Vec<i64>,
    pub providers: Vec<i64>,
    pub numeric: Vec<Numeric>,
    pub coded_questions: Vec<i64>,
    /// Answer concepts with the concept_name obs.value_coded_name_id points at.
    pub answers: Vec<(i64, Option<i64>)>,
    pub text: Vec<i64>,
    pub datetime: Vec<i64>,
    pub sets: Vec<i64>,
    pub drug_order_type: Option<i64>,
    pub test_order_type: Option<i64>,
    pub care_settings: Vec<i64>,
    pub drugs: Vec<Drug>,
    pub frequencies: Vec<i64>,
    pub dose_units: Option<i64>,
    pub test_concepts: Vec<i64>,
    pub user_roles: Vec<String>,
    /// Every location and every non-set concept, retired or not, for the retire/unretire edit.
    pub all_locations: Vec<i64>,
    pub all_answer_concepts: Vec<i64>,
    /// A summary of the starting state, mixed into the RNG seed so that a second run with
    /// the same seed on the same database writes new uuids.
    pub fingerprint: String,
}

async fn ids(conn: &mut Conn, sql: &str) -> Result<Vec<i64>, GenError> {
    conn.query(sql).await.map_err(GenError::db(sql))
}

async fn one(conn: &mut Conn, sql: &str) -> Result<Option<i64>, GenError> {
    conn.query_first(sql).await.map_err(GenError::db(sql))
}

fn need<T>(v: Vec<T>, what: &str) -> Result<Vec<T>, GenError> {
    if v.is_empty() {
        Err(GenError::MissingMetadata {
            what: what.to_string(),
        })
    } else {
        Ok(v)
    }
}

const BY_DATATYPE: &str = "SELECT c.concept_id FROM concept c \
     JOIN concept_datatype d ON d.concept_datatype_id = c.datatype_id \
     WHERE c.retired = 0 AND c.is_set = 0 AND d.name IN ";

/// Reads the metadata the generator needs.
pub async fn discover(conn: &mut Conn) -> Result<Meta, GenError> {
    let creator = one(
        conn,
        "SELECT user_id FROM users WHERE retired = 0 ORDER BY user_id LIMIT 1",
    )
    .await?
    .ok_or_else(|| GenError::MissingMetadata {
        what: "an active user (creator)".into(),
    })?;
    let locations = need(
        ids(
            conn,
            "SELECT location_id FROM location WHERE retired = 0 ORDER BY location_id",
        )
        .await?,
        "an active location",
    )?;
    let identifier_type = one(
        conn,
        "SELECT patient_identifier_type_id FROM patient_identifier_type WHERE retired = 0 \
         ORDER BY required DESC, patient_identifier_type_id LIMIT 1",
    )
    .await?
    .ok_or_else(|| GenError::MissingMetadata {
        what: "an active patient identifier type".into(),
    })?;
    let string_attribute_types = ids(
        conn,
        "SELECT person_attribute_type_id FROM person_attribute_type WHERE retired = 0 \
         AND (format = 'java.lang.String' OR format IS NULL OR format = '') ORDER BY person_attribute_type_id",
    )
    .await?;
    let location_attribute_types = ids(
        conn,
        "SELECT person_attribute_type_id FROM person_attribute_type WHERE retired = 0 \
         AND format = 'org.openmrs.Location' ORDER BY person_attribute_type_id",
    )
    .await?;
    let visit_types = need(
        ids(
            conn,
            "SELECT visit_type_id FROM visit_type WHERE retired = 0 ORDER BY visit_type_id",
        )
        .await?,
        "an active visit type",
    )?;
    let encounter_types = need(
        ids(conn, "SELECT encounter_type_id FROM encounter_type WHERE retired = 0 ORDER BY encounter_type_id").await?,
        "an active encounter type",
    )?;
    let encounter_roles = need(
        ids(conn, "SELECT encounter_role_id FROM encounter_role WHERE retired = 0 ORDER BY encounter_role_id").await?,
        "an active encounter role",
    )?;
    let providers = need(
        ids(
            conn,
            "SELECT provider_id FROM provider WHERE retired = 0 ORDER BY provider_id",
        )
        .await?,
        "an active provider",
    )?;
    let numeric_sql = "SELECT c.concept_id, n.low_normal, n.hi_normal, n.low_absolute, n.hi_absolute, \
         COALESCE(n.allow_decimal, 0) FROM concept c JOIN concept_numeric n ON n.concept_id = c.concept_id \
         JOIN concept_datatype d ON d.concept_datatype_id = c.datatype_id \
         WHERE c.retired = 0 AND d.name = 'Numeric' ORDER BY c.concept_id";
    type NumRow = (i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>, i64);
    let rows: Vec<NumRow> = conn
        .query(numeric_sql)
        .await
        .map_err(GenError::db(numeric_sql))?;
    let numeric = rows
        .into_iter()
        .map(|(concept, ln, hn, la, ha, dec)| {
            let low = ln.or(la).unwrap_or(1.0);
            let high = hn.or(ha).filter(|h| *h > low).unwrap_or(low + 100.0);
            Numeric {
                concept,
                low,
                high,
                decimal: dec != 0,
            }
        })
        .collect();
    let coded_questions = ids(
        conn,
        &format!("{BY_DATATYPE}('Coded') ORDER BY c.concept_id"),
    )
    .await?;
    let answer_sql = "SELECT c.concept_id, (SELECT n.concept_name_id FROM concept_name n \
         WHERE n.concept_id = c.concept_id AND n.voided = 0 ORDER BY n.locale_preferred DESC, n.concept_name_id LIMIT 1) \
         FROM concept c JOIN concept_datatype d ON d.concept_datatype_id = c.datatype_id \
         WHERE c.retired = 0 AND c.is_set = 0 AND d.name = 'N/A' ORDER BY c.concept_id";
    let answers: Vec<(i64, Option<i64>)> = conn
        .query(answer_sql)
        .await
        .map_err(GenError::db(answer_sql))?;
    let text = ids(
        conn,
        &format!("{BY_DATATYPE}('Text') ORDER BY c.concept_id"),
    )
    .await?;
    let datetime = ids(
        conn,
        &format!("{BY_DATATYPE}('Datetime', 'Date') ORDER BY c.concept_id"),
    )
    .await?;
    let sets = ids(
        conn,
        "SELECT concept_id FROM concept WHERE retired = 0 AND is_set = 1 ORDER BY concept_id",
    )
    .await?;
    let order_type = |class: &str| {
        format!(
            "SELECT order_type_id FROM order_type WHERE retired = 0 AND java_class_name = '{class}' \
             ORDER BY order_type_id LIMIT 1"
        )
    };
    let drug_order_type = one(conn, &order_type("org.openmrs.DrugOrder")).await?;
    let test_order_type = one(conn, &order_type("org.openmrs.TestOrder")).await?;
    let care_settings = ids(
        conn,
        "SELECT care_setting_id FROM care_setting WHERE retired = 0 ORDER BY care_setting_id",
    )
    .await?;
    let drug_sql = "SELECT d.drug_id, d.concept_id, d.route FROM drug d JOIN concept c ON c.concept_id = d.concept_id \
         WHERE d.retired = 0 ORDER BY d.drug_id";
    let drug_rows: Vec<(i64, i64, Option<i64>)> =
        conn.query(drug_sql).await.map_err(GenError::db(drug_sql))?;
    let drugs = drug_rows
        .into_iter()
        .map(|(drug, concept, route)| Drug {
            drug,
            concept,
            route,
        })
        .collect();
    let frequencies = ids(
        conn,
        "SELECT order_frequency_id FROM order_frequency WHERE retired = 0 ORDER BY order_frequency_id",
    )
    .await?;
    let by_class = |classes: &str| {
        format!(
            "SELECT c.concept_id FROM concept c JOIN concept_class k ON k.concept_class_id = c.class_id \
             WHERE c.retired = 0 AND k.name IN ({classes}) ORDER BY c.concept_id"
        )
    };
    let dose_units = ids(conn, &by_class("'Units of Measure'"))
        .await?
        .first()
        .copied();
    let mut test_concepts = ids(conn, &by_class("'Test', 'LabSet'")).await?;
    if test_concepts.is_empty() {
        test_concepts = rows_concepts(&answers);
    }
    let user_roles: Vec<String> = conn
        .query(
            "SELECT role FROM role WHERE role NOT IN ('Anonymous', 'Authenticated') ORDER BY role",
        )
        .await
        .map_err(GenError::db("reading roles"))?;
    let all_locations = ids(
        conn,
        "SELECT location_id FROM location ORDER BY location_id",
    )
    .await?;
    let all_answer_concepts = ids(
        conn,
        "SELECT c.concept_id FROM concept c JOIN concept_datatype d ON d.concept_datatype_id = c.datatype_id \
         WHERE c.is_set = 0 AND d.name = 'N/A' ORDER BY c.concept_id",
    )
    .await?;
    let fp_sql = "SELECT CONCAT_WS('/', (SELECT COALESCE(MAX(person_id), 0) FROM person), \
         (SELECT COUNT(*) FROM person), (SELECT COALESCE(MAX(obs_id), 0) FROM obs), \
         (SELECT COALESCE(MAX(encounter_id), 0) FROM encounter), (SELECT COUNT(*) FROM users), \
         (SELECT COUNT(*) FROM person_attribute), (SELECT COALESCE(SUM(voided), 0) FROM obs))";
    let fingerprint: Option<String> = conn
        .query_first(fp_sql)
        .await
        .map_err(GenError::db(fp_sql))?;
    let meta = Meta {
        creator,
        locations,
        identifier_type,
        string_attribute_types,
        location_attribute_types,
        visit_types,
        encounter_types,
        encounter_roles,
        providers,
        numeric,
        coded_questions,
        answers,
        text,
        datetime,
        sets,
        drug_order_type,
        test_order_type,
        care_settings,
        drugs,
        frequencies,
        dose_units,
        test_concepts,
        user_roles,
        all_locations,
        all_answer_concepts,
        fingerprint: fingerprint.unwrap_or_default(),
    };
    if meta.numeric.is_empty()
        && meta.text.is_empty()
        && meta.datetime.is_empty()
        && !meta.can_code()
    {
        return Err(GenError::MissingMetadata {
            what: "a concept to record obs with (numeric, text, datetime or coded with answers)"
                .into(),
        });
    }
    Ok(meta)
}

fn rows_concepts(answers: &[(i64, Option<i64>)]) -> Vec<i64> {
    answers.iter().map(|(c, _)| *c).collect()
}

impl Meta {
    /// Whether coded obs can be written (a coded question and an answer exist).
    pub fn can_code(&self) -> bool {
        !self.coded_questions.is_empty() && !self.answers.is_empty()
    }
}
