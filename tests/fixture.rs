//! ferry's OpenMRS fixture: it loads, every foreign key points inside it, the shapes
//! replication must handle are there, and, when `FERRY_OPENMRS_DUMP` names the real
//! OpenMRS 2.6.4 dump, every fixture table has exactly the dump's columns and keys.

use std::path::Path;

use ferry::db::DbUrl;
use ferry::dev::mariadb::{load_sql_file, TestSite};
use mysql_async::prelude::*;
use mysql_async::Conn;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn load_fixture(site: &TestSite) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/openmrs");
    load_sql_file(&site.url, &dir.join("schema.sql")).expect("schema.sql loads");
    load_sql_file(&site.url, &dir.join("metadata.sql")).expect("metadata.sql loads");
}

async fn connect(url: &str) -> Conn {
    DbUrl::parse(url)
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

async fn count(conn: &mut Conn, sql: &str) -> i64 {
    conn.query_first(sql).await.expect(sql).unwrap_or(-1)
}

/// Columns (name, type, nullability, default) and keys of every table, in a comparable form.
async fn shape(conn: &mut Conn, tables: &[String]) -> Vec<String> {
    let list = tables
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(",");
    let mut out: Vec<String> = conn
        .query(format!(
            "SELECT CONCAT_WS(' ', table_name, column_name, column_type, is_nullable, \
             IFNULL(column_default, '<none>'), extra, collation_name) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name IN ({list})"
        ))
        .await
        .expect("columns");
    let keys: Vec<String> = conn
        .query(format!(
            "SELECT CONCAT_WS(' ', table_name, index_name, non_unique, seq_in_index, column_name) \
             FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name IN ({list})"
        ))
        .await
        .expect("indexes");
    let fks: Vec<String> = conn
        .query(format!(
            "SELECT CONCAT_WS(' ', k.table_name, k.constraint_name, k.column_name, k.referenced_table_name, \
             k.referenced_column_name, r.update_rule, r.delete_rule) FROM information_schema.key_column_usage k \
             JOIN information_schema.referential_constraints r ON r.constraint_schema = k.table_schema \
             AND r.constraint_name = k.constraint_name AND r.table_name = k.table_name \
             WHERE k.table_schema = DATABASE() AND k.table_name IN ({list})"
        ))
        .await
        .expect("foreign keys");
    out.extend(keys);
    out.extend(fks);
    out.sort();
    out
}

#[test]
fn fixture_is_closed_has_the_real_shapes_and_matches_the_dump() {
    let site = TestSite::new("fixture").expect("test site");
    load_fixture(&site);
    runtime().block_on(async {
        let mut conn = connect(&site.url).await;
        let tables = count(
            &mut conn,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()",
        )
        .await;
        assert_eq!(tables, 40);
        let outside = count(
            &mut conn,
            "SELECT COUNT(*) FROM information_schema.referential_constraints r \
             LEFT JOIN information_schema.tables t ON t.table_schema = r.constraint_schema \
             AND t.table_name = r.referenced_table_name \
             WHERE r.constraint_schema = DATABASE() AND t.table_name IS NULL",
        )
        .await;
        assert_eq!(outside, 0, "a foreign key points outside the fixture");
        // With checks on, every loaded row satisfies its foreign keys: re-check the cycle.
        assert_eq!(
            count(&mut conn, "SELECT COUNT(*) FROM users u JOIN person p ON p.person_id = u.person_id JOIN users c ON c.user_id = p.creator WHERE u.user_id = 1 AND c.user_id = 1").await,
            1,
            "admin user 1 <-> person 1, created by user 1"
        );
        for (sql, what) in [
            ("SELECT COUNT(*) FROM concept_datatype WHERE name IN ('N/A','Numeric','Coded','Text','Date','Time','Datetime','Boolean')", 8),
            ("SELECT COUNT(*) FROM concept_numeric n JOIN concept c USING (concept_id)", 7),
            ("SELECT COUNT(*) FROM concept WHERE is_set = 1", 2),
            ("SELECT COUNT(*) FROM person_attribute_type WHERE format = 'org.openmrs.Location'", 1),
            ("SELECT COUNT(*) FROM location_attribute_type WHERE datatype = 'org.openmrs.customdatatype.datatype.LocationDatatype'", 1),
            ("SELECT COUNT(*) FROM order_type WHERE java_class_name IN ('org.openmrs.DrugOrder', 'org.openmrs.TestOrder')", 2),
        ] {
            assert_eq!(count(&mut conn, sql).await, what, "{sql}");
        }
        let bad_uuids = count(
            &mut conn,
            "SELECT SUM(n) FROM ( \
             SELECT COUNT(*) n FROM person WHERE uuid NOT RLIKE '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' \
             UNION ALL SELECT COUNT(*) FROM concept WHERE uuid NOT RLIKE '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' \
             UNION ALL SELECT COUNT(*) FROM location WHERE uuid NOT RLIKE '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') x",
        )
        .await;
        assert_eq!(bad_uuids, 0);
        conn.disconnect().await.expect("disconnect");
    });
    match std::env::var_os("FERRY_OPENMRS_DUMP") {
        Some(dump) => compare_with_dump(&site, &dump),
        None => println!(
            "FERRY_OPENMRS_DUMP is unset: the fixture's own structure was checked, \
             not its columns and keys against the real dump"
        ),
    }
}

/// Compares every fixture table with the same table of the real dump.
fn compare_with_dump(site: &TestSite, dump: &std::ffi::OsStr) {
    let real = TestSite::new("fixture_real").expect("test site");
    load_sql_file(&real.url, Path::new(dump)).expect("the dump loads");
    println!("comparing the fixture with {}", dump.to_string_lossy());
    runtime().block_on(async {
        let mut fx = connect(&site.url).await;
        let tables: Vec<String> = fx
            .query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
            )
            .await
            .expect("tables");
        let mut rl = connect(&real.url).await;
        let ours = shape(&mut fx, &tables).await;
        let theirs = shape(&mut rl, &tables).await;
        // The two foreign keys the fixture drops on purpose (their targets are left out).
        let dropped = [
            "patient_identifier_program_id_fk",
            "orders_order_group_id_fk",
        ];
        let theirs: Vec<String> = theirs
            .into_iter()
            .filter(|l| {
                !dropped
                    .iter()
                    .any(|d| l.contains(&format!(" {d} ")) && l.contains(" RESTRICT"))
            })
            .collect();
        let missing: Vec<_> = theirs.iter().filter(|l| !ours.contains(l)).collect();
        let extra: Vec<_> = ours.iter().filter(|l| !theirs.contains(l)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing {missing:#?}\nextra {extra:#?}"
        );
        fx.disconnect().await.expect("disconnect");
        rl.disconnect().await.expect("disconnect");
    });
}
