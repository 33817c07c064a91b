//! Fidelity: every column type OpenMRS uses, and the edge values real dumps contain,
//! round-trip exactly through export and import (real MariaDB on both sides).

mod common;

use common::{block_on, conn, Cluster, Source};
use mysql_async::prelude::*;

const PROBE: &str = "CREATE TABLE fidelity_probe (
    probe_id INT AUTO_INCREMENT PRIMARY KEY,
    uuid CHAR(38) NOT NULL,
    d DATE NULL, dt DATETIME NULL, dt6 DATETIME(6) NULL, ts TIMESTAMP(6) NULL DEFAULT NULL,
    t TIME(6) NULL, dbl DOUBLE NULL, flt FLOAT NULL, amount DECIMAL(20,6) NULL,
    vc VARCHAR(255) NULL, ch CHAR(10) NULL, tx TEXT NULL, mtx MEDIUMTEXT NULL, ltx LONGTEXT NULL,
    bin VARBINARY(64) NULL, blb BLOB NULL, flag TINYINT(1) NULL, big BIGINT UNSIGNED NULL,
    person_id INT NULL,
    UNIQUE KEY probe_uuid (uuid),
    CONSTRAINT probe_person FOREIGN KEY (person_id) REFERENCES person (person_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

async fn rows(url: &str) -> Vec<String> {
    let mut c = conn(url).await;
    let rows: Vec<mysql_async::Row> = c
        .exec(
            "SELECT p.uuid, d, dt, dt6, ts, t, dbl, flt, amount, vc, ch, tx, mtx, ltx, bin, blb, flag, big, \
             pe.uuid FROM fidelity_probe p LEFT JOIN person pe ON pe.person_id = p.person_id ORDER BY p.uuid",
            (),
        )
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| {
            let vals: Vec<mysql_async::Value> = r.unwrap();
            // Debug of the binary-protocol values: bit-exact doubles, NULL vs '' apart.
            vals.iter()
                .map(|v| match v {
                    mysql_async::Value::Double(d) => format!("f64:{:016x}", d.to_bits()),
                    mysql_async::Value::Float(f) => format!("f32:{:08x}", f.to_bits()),
                    mysql_async::Value::Bytes(b) => format!("b:{}", hex::encode(b)),
                    mysql_async::Value::Date(y, m, d, h, i, s, us) => {
                        format!("D{y:04}-{m:02}-{d:02} {h:02}:{i:02}:{s:02}.{us:06}")
                    }
                    mysql_async::Value::Time(neg, d, h, i, s, us) => {
                        format!("T{neg} {d}d {h:02}:{i:02}:{s:02}.{us:06}")
                    }
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[test]
fn every_column_type_round_trips_exactly() {
    let c = Cluster::star_with(&["site-a", "site-b"], &Source::Fixture, &[PROBE]);
    let long: String = "ü€𝄞 long text; ".repeat(7000);
    block_on(async {
        let mut db = conn(c.url("site-a")).await;
        db.exec_drop(
            "INSERT INTO fidelity_probe (uuid, d, dt, dt6, ts, t, dbl, flt, amount, vc, ch, tx, mtx, ltx, bin, blb, flag, big, person_id) \
             VALUES (?, '0000-00-00', '0000-00-00 00:00:00', '2024-02-29 23:59:59.999999', '2038-01-19 03:14:07.999999', \
             '-838:59:59.000000', ?, ?, '-12345678901234.123456', '', NULL, ?, ?, NULL, ?, ?, 0, 18446744073709551615, \
             (SELECT MIN(person_id) FROM person))",
            (
                "dddddddd-0000-4000-8000-000000000001",
                0.1f64 + 0.2f64,
                3.4028235e38f32,
                "🩺👩🏽‍⚕️ café vs cafe\u{301}; 'quotes' \"double\" \\ backslash \u{0} nul",
                long.clone(),
                vec![0u8, 255, 16, 0, 39, 92],
                (0u8..=255).collect::<Vec<u8>>(),
            ),
        )
        .await
        .unwrap();
        db.exec_drop(
            "INSERT INTO fidelity_probe (uuid, d, dt6, t, dbl, flt, vc, ch, tx, big) \
             VALUES (?, '1900-01-01', '1970-01-01 00:00:00.000001', '00:00:00.5', 5e-324, -0.5, NULL, '', '', 0)",
            ("dddddddd-0000-4000-8000-000000000002",),
        )
        .await
        .unwrap();
    });
    let r = c.carry("site-a", "site-b");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    let a = block_on(rows(c.url("site-a")));
    let b = block_on(rows(c.url("site-b")));
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
    assert!(
        a[0].contains("|D0000-00-00 00:00:00.000000|"),
        "zero dates kept: {}",
        a[0]
    );
    assert!(
        a[0].contains("|D2024-02-29 23:59:59.999999|"),
        "fractional seconds kept"
    );
    assert!(
        a[0].contains("|Ttrue 34d 22:59:59.000000|"),
        "negative times kept: {}",
        a[0]
    );
    assert!(a[0].contains("|b:|Null|"), "'' then NULL: {}", a[0]);
    assert!(a[1].contains("|Null|b:|"), "NULL then '': {}", a[1]);
    assert!(a[0].contains(&hex::encode(&long)), "long text whole");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// The traps of the real OpenMRS 2.6.4 test data: uuids that are not hexadecimal and
/// a datetime that loads as a zero date.
#[test]
fn real_dump_traps_round_trip() {
    let Some(dump) = common::real_dump() else {
        eprintln!("note: FERRY_OPENMRS_DUMP is not set; the real-dump traps are covered by CI");
        // Still exercise the same path on the fixture: a non-hex uuid and a zero date.
        let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
        block_on(async {
            let mut db = conn(c.url("site-a")).await;
            db.query_drop(
                "INSERT INTO location (name, creator, date_created, retired, uuid) \
                 VALUES ('trap', 1, '0000-00-00 00:00:00', 0, 'SSTRM-not-a-hex-uuid')",
            )
            .await
            .unwrap();
        });
        c.carry("site-a", "site-b");
        assert_eq!(c.verify("site-a"), c.verify("site-b"));
        return;
    };
    let c = Cluster::star(&["site-a", "site-b"], &Source::RealDump(dump));
    block_on(async {
        let mut db = conn(c.url("site-a")).await;
        // An existing row whose uuid is not hexadecimal, edited.
        db.query_drop(
            "UPDATE concept_reference_term SET name = 'edited at a' WHERE uuid = 'SSTRM-WGT234'",
        )
        .await
        .unwrap();
        // The row whose date_created is the zero date, edited; and a new one like it.
        db.query_drop("UPDATE concept_reference_source SET description = 'edited at a' WHERE date_created = '0000-00-00 00:00:00'")
            .await
            .unwrap();
        db.query_drop(
            "INSERT INTO concept_reference_term (concept_source_id, code, name, creator, date_created, retired, uuid) \
             SELECT concept_source_id, 'FERRY-1', 'new non-hex', 1, '0000-00-00 00:00:00', 0, 'SSTRM-FERRY-1' \
             FROM concept_reference_source WHERE date_created = '0000-00-00 00:00:00'",
        )
        .await
        .unwrap();
    });
    let r = c.carry("site-a", "site-b");
    assert_eq!(r["applied"][0]["changes"], 3, "{r}");
    let got: Vec<(String, String)> = block_on(async {
        let mut db = conn(c.url("site-b")).await;
        db.query(
            "SELECT uuid, CONCAT(name, '/', CAST(date_created AS CHAR)) FROM concept_reference_term \
             WHERE uuid IN ('SSTRM-WGT234', 'SSTRM-FERRY-1') ORDER BY uuid",
        )
        .await
        .unwrap()
    });
    assert_eq!(
        got[0],
        (
            "SSTRM-FERRY-1".to_string(),
            "new non-hex/0000-00-00 00:00:00".to_string()
        )
    );
    assert!(got[1].1.starts_with("edited at a/"), "{got:?}");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}
