//! The workload generator against real servers: its report equals the row writes the
//! database performed (checked against a trigger log and against row counts), it is
//! deterministic per seed, different seeds never share a uuid, and it runs on the real
//! OpenMRS 2.6.4 dump when `FERRY_OPENMRS_DUMP` names it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferry::db::DbUrl;
use ferry::dev::gen::{generate, GenOptions, GenReport, TableWrites};
use ferry::dev::mariadb::{load_sql_file, TestSite};
use mysql_async::prelude::*;
use mysql_async::Conn;
use sha2::{Digest, Sha256};

const LOG: &str = "ferry_test_write_log";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/openmrs")
        .join(file)
}

/// A site holding ferry's OpenMRS fixture.
fn fixture_site(name: &str) -> TestSite {
    let site = TestSite::new(name).expect("test site");
    load_sql_file(&site.url, &fixture("schema.sql")).expect("schema.sql loads");
    load_sql_file(&site.url, &fixture("metadata.sql")).expect("metadata.sql loads");
    site
}

async fn connect(url: &str) -> Conn {
    DbUrl::parse(url)
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

async fn base_tables(conn: &mut Conn) -> Vec<String> {
    conn.query(format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() \
         AND table_type = 'BASE TABLE' AND table_name <> '{LOG}' ORDER BY table_name"
    ))
    .await
    .expect("list tables")
}

async fn row_counts(conn: &mut Conn, tables: &[String]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for t in tables {
        let n: Option<i64> = conn
            .query_first(format!("SELECT COUNT(*) FROM `{t}`"))
            .await
            .expect("count");
        out.insert(t.clone(), n.unwrap_or(0));
    }
    out
}

/// One log row per inserted, updated or deleted row of every table, as a capture records.
async fn install_write_log(conn: &mut Conn, tables: &[String]) {
    conn.query_drop(format!(
        "CREATE TABLE {LOG} (id INT AUTO_INCREMENT PRIMARY KEY, tbl VARCHAR(64) NOT NULL, op CHAR(1) NOT NULL)"
    ))
    .await
    .expect("log table");
    for t in tables {
        for (event, op) in [("INSERT", "I"), ("UPDATE", "U"), ("DELETE", "D")] {
            conn.query_drop(format!(
                "CREATE TRIGGER `ftl_{t}_{op}` AFTER {event} ON `{t}` FOR EACH ROW \
                 INSERT INTO {LOG} (tbl, op) VALUES ('{t}', '{op}')"
            ))
            .await
            .expect("trigger");
        }
    }
}

async fn read_write_log(conn: &mut Conn) -> BTreeMap<String, TableWrites> {
    let rows: Vec<(String, String, u64)> = conn
        .query(format!(
            "SELECT tbl, op, COUNT(*) FROM {LOG} GROUP BY tbl, op"
        ))
        .await
        .expect("read log");
    let mut out: BTreeMap<String, TableWrites> = BTreeMap::new();
    for (t, op, n) in rows {
        let w = out.entry(t).or_default();
        match op.as_str() {
            "I" => w.inserts = n,
            "U" => w.updates = n,
            _ => w.deletes = n,
        }
    }
    conn.query_drop(format!("TRUNCATE TABLE {LOG}"))
        .await
        .expect("truncate log");
    out
}

async fn voided_obs(conn: &mut Conn) -> u64 {
    conn.query_first("SELECT COUNT(*) FROM obs WHERE voided = 1")
        .await
        .expect("voided obs")
        .unwrap_or(0)
}

/// Runs `opts` on `url` and proves the report exact: equal to the trigger log per table
/// and operation, equal to the row-count deltas, and the obs updates equal to newly voided obs.
async fn generate_exactly(url: &str, opts: &GenOptions) -> GenReport {
    let mut conn = connect(url).await;
    let tables = base_tables(&mut conn).await;
    let before = row_counts(&mut conn, &tables).await;
    let voided_before = voided_obs(&mut conn).await;
    let report = generate(&mut conn, opts).await.expect("generate");
    let logged = read_write_log(&mut conn).await;
    assert_eq!(report.per_table, logged, "report vs trigger log on {url}");
    let after = row_counts(&mut conn, &tables).await;
    for t in &tables {
        let w = report.table(t);
        assert_eq!(
            after[t] - before[t],
            w.inserts as i64 - w.deletes as i64,
            "row count delta of {t}"
        );
    }
    assert_eq!(
        voided_obs(&mut conn).await - voided_before,
        report.table("obs").updates,
        "obs updates are exactly the newly voided obs"
    );
    let sum: u64 = report.per_table.values().map(TableWrites::rows).sum();
    assert_eq!(report.total.rows(), sum);
    conn.disconnect().await.expect("disconnect");
    report
}

fn options(seed: u64) -> GenOptions {
    GenOptions {
        patients: 200,
        users: 5,
        edits_per_patient: 1.5,
        ..GenOptions::default()
    }
    .seed(seed)
}

/// The kinds of write the generator promises, on any schema.
fn assert_covers_the_clinic(report: &GenReport) {
    for t in [
        "person",
        "person_name",
        "person_address",
        "person_attribute",
        "patient",
        "patient_identifier",
        "visit",
        "encounter",
        "encounter_provider",
        "obs",
        "orders",
        "drug_order",
        "test_order",
        "users",
        "user_role",
    ] {
        assert!(
            report.table(t).inserts > 0,
            "no inserts into {t}: {}",
            report.render()
        );
    }
    assert!(report.table("obs").updates > 0, "no voided obs");
    assert!(report.table("person_attribute").deletes > 0, "no deletes");
    assert!(report.table("person_name").updates + report.table("person").updates > 0);
    assert_eq!(
        report.table("location").updates,
        1,
        "one location retired or brought back"
    );
    assert_eq!(
        report.table("concept").updates,
        1,
        "one concept retired or brought back"
    );
}

async fn prepare_log(url: &str) {
    let mut conn = connect(url).await;
    let tables = base_tables(&mut conn).await;
    install_write_log(&mut conn, &tables).await;
    conn.disconnect().await.expect("disconnect");
}

#[test]
fn report_counts_exactly_the_row_writes() {
    let (site, schema) = match std::env::var_os("FERRY_OPENMRS_DUMP") {
        Some(dump) => {
            let site = TestSite::new("gen_dump").expect("test site");
            load_sql_file(&site.url, Path::new(&dump)).expect("the dump loads");
            (
                site,
                format!("the real OpenMRS dump {}", dump.to_string_lossy()),
            )
        }
        None => (
            fixture_site("gen_exact"),
            "ferry's fixture (FERRY_OPENMRS_DUMP is unset)".to_string(),
        ),
    };
    println!("generator exactness runs on {schema}");
    let rt = runtime();
    rt.block_on(async {
        prepare_log(&site.url).await;
        let report = generate_exactly(&site.url, &options(11)).await;
        assert_covers_the_clinic(&report);
        println!("{}", report.render());
        // The same seed again on the now different database: fresh uuids, still exact.
        let again = generate_exactly(&site.url, &options(11).patients(20)).await;
        assert!(again.table("person").inserts >= 20);
    });
}

#[test]
fn fixture_run_is_exact_and_covers_every_kind_of_write() {
    // Always on the fixture, whatever FERRY_OPENMRS_DUMP says.
    let site = fixture_site("gen_fixture");
    runtime().block_on(async {
        prepare_log(&site.url).await;
        let report = generate_exactly(&site.url, &options(3)).await;
        assert_covers_the_clinic(&report);
        // System ids follow OpenMRS: `<user_id>-<Luhn check digit>`.
        let mut conn = connect(&site.url).await;
        let users: Vec<(i64, String)> = conn
            .query("SELECT user_id, system_id FROM users WHERE user_id > 2 ORDER BY user_id")
            .await
            .expect("users");
        assert_eq!(users.len(), 5);
        for (id, system_id) in users {
            let digit = ferry::dev::gen::luhn_check_digit(&id.to_string());
            assert_eq!(system_id, format!("{id}-{digit}"));
        }
        // The Location-format attribute holds an existing location id.
        let dangling: Option<i64> = conn
            .query_first(
                "SELECT COUNT(*) FROM person_attribute a JOIN person_attribute_type t \
                 ON t.person_attribute_type_id = a.person_attribute_type_id \
                 LEFT JOIN location l ON l.location_id = CAST(a.value AS UNSIGNED) \
                 WHERE t.format = 'org.openmrs.Location' AND l.location_id IS NULL",
            )
            .await
            .expect("soft references");
        assert_eq!(dangling, Some(0));
        let repeated: Option<i64> = conn
            .query_first("SELECT COUNT(*) - COUNT(DISTINCT identifier) FROM patient_identifier")
            .await
            .expect("identifiers");
        assert_eq!(repeated, Some(0), "an OpenMRS ID was assigned twice");
        conn.disconnect().await.expect("disconnect");
    });
}

const CONTENT: &[&str] = &[
    "SELECT p.uuid, p.gender, p.birthdate, p.birthdate_estimated, p.date_created, p.date_changed FROM person p ORDER BY p.uuid",
    "SELECT n.uuid, p.uuid, n.given_name, n.family_name, n.date_changed FROM person_name n JOIN person p ON p.person_id = n.person_id ORDER BY n.uuid",
    "SELECT a.uuid, p.uuid, a.value, a.person_attribute_type_id FROM person_attribute a JOIN person p ON p.person_id = a.person_id ORDER BY a.uuid",
    "SELECT o.uuid, p.uuid, e.uuid, g.uuid, o.concept_id, o.value_numeric, o.value_text, o.value_datetime, \
     o.value_coded, o.voided, o.date_voided, o.obs_datetime FROM obs o JOIN person p ON p.person_id = o.person_id \
     LEFT JOIN encounter e ON e.encounter_id = o.encounter_id LEFT JOIN obs g ON g.obs_id = o.obs_group_id ORDER BY o.uuid",
    "SELECT o.uuid, o.order_number, o.concept_id, o.care_setting, d.drug_inventory_id, d.dose, t.clinical_history \
     FROM orders o LEFT JOIN drug_order d ON d.order_id = o.order_id LEFT JOIN test_order t ON t.order_id = o.order_id ORDER BY o.uuid",
    "SELECT u.uuid, u.system_id, u.username FROM users u ORDER BY u.uuid",
    "SELECT location_id, retired, date_retired FROM location ORDER BY location_id",
];

const UUID_TABLES: &[&str] = &[
    "person",
    "person_name",
    "person_address",
    "person_attribute",
    "patient_identifier",
    "visit",
    "encounter",
    "encounter_provider",
    "obs",
    "orders",
    "users",
];

/// The uuids of every uuid table, and a digest of the content of a few tables without
/// their auto-increment ids.
async fn snapshot(url: &str, generated: bool) -> (BTreeSet<String>, String) {
    let mut conn = connect(url).await;
    let mut uuids = BTreeSet::new();
    for t in UUID_TABLES {
        let list: Vec<String> = conn
            .query(format!("SELECT uuid FROM {t} ORDER BY uuid"))
            .await
            .expect("uuids");
        uuids.extend(list.into_iter().map(|u| format!("{t}:{u}")));
    }
    let mut digest = Sha256::new();
    for sql in CONTENT {
        let rows: Vec<mysql_async::Row> = conn.query(*sql).await.expect("content");
        assert!(!generated || !rows.is_empty(), "{sql} returned nothing");
        for row in rows {
            digest.update(format!("{:?}\n", row.unwrap()).as_bytes());
        }
    }
    conn.disconnect().await.expect("disconnect");
    (uuids, hex::encode(digest.finalize()))
}

#[test]
fn same_seed_same_content_different_seed_different_uuids() {
    let a = fixture_site("gen_det_a");
    let b = fixture_site("gen_det_b");
    let c = fixture_site("gen_det_c");
    runtime().block_on(async {
        let (base, _) = snapshot(&a.url, false).await;
        let opts = GenOptions {
            patients: 60,
            users: 3,
            ..GenOptions::default()
        };
        let mut reports = Vec::new();
        for (site, seed) in [(&a, 5), (&b, 5), (&c, 6)] {
            let mut conn = connect(&site.url).await;
            reports.push(
                generate(&mut conn, &opts.clone().seed(seed))
                    .await
                    .expect("generate"),
            );
            conn.disconnect().await.expect("disconnect");
        }
        assert_eq!(reports[0].per_table, reports[1].per_table);
        let (ua, ca) = snapshot(&a.url, true).await;
        let (ub, cb) = snapshot(&b.url, true).await;
        let (uc, cc) = snapshot(&c.url, true).await;
        assert_eq!(ua, ub, "same seed, same uuids");
        assert_eq!(ca, cb, "same seed, same content");
        assert_ne!(ca, cc, "different seeds, different content");
        let new_a: BTreeSet<_> = ua.difference(&base).collect();
        let new_c: BTreeSet<_> = uc.difference(&base).collect();
        assert!(new_a.len() > 1000, "{} new uuids", new_a.len());
        assert_eq!(
            new_a.intersection(&new_c).count(),
            0,
            "different seeds share a uuid"
        );
    });
}
