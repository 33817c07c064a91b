//! Capture against real MariaDB: one change-log entry per row write, importer writes
//! recorded with their origin, idempotent setup, a clean teardown, the per-table switch
//! and schema drift. Each test runs on the fixture and, when `FERRY_OPENMRS_DUMP` is
//! set, on the real OpenMRS 2.6.4 dump.

mod common;

use std::collections::BTreeMap;

use common::{block_on, conn, site, sources, Node};
use ferry::dev::gen::{generate, GenOptions};
use mysql_async::prelude::*;

type Counts = BTreeMap<(String, String), u64>;

async fn change_counts(c: &mut mysql_async::Conn, local: bool) -> Counts {
    let filter = if local {
        "origin IS NULL"
    } else {
        "origin IS NOT NULL"
    };
    let rows: Vec<(String, String, u64)> = c
        .query(format!(
            "SELECT table_name, op, COUNT(*) FROM ferry_change WHERE {filter} GROUP BY 1, 2"
        ))
        .await
        .unwrap();
    rows.into_iter().map(|(t, o, n)| ((t, o), n)).collect()
}

/// SHOW CREATE TABLE of every table, and the names of every trigger.
async fn snapshot(c: &mut mysql_async::Conn) -> (BTreeMap<String, String>, Vec<String>) {
    let tables: Vec<String> = c
        .query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1")
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let row: Option<(String, String)> = c
            .query_first(format!("SHOW CREATE TABLE `{t}`"))
            .await
            .unwrap();
        out.insert(t, row.unwrap().1);
    }
    let triggers: Vec<String> = c
        .query("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY 1")
        .await
        .unwrap();
    (out, triggers)
}

/// Everything setup leaves behind, except timestamps.
async fn ferry_state(c: &mut mysql_async::Conn) -> String {
    let triggers: Vec<(String, String, String)> = c
        .query(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY 1",
        )
        .await
        .unwrap();
    let tables: Vec<(String, bool, Option<String>)> = c
        .query("SELECT table_name, enabled, signature FROM ferry_table ORDER BY 1")
        .await
        .unwrap();
    let meta: Vec<(String, String)> = c
        .query("SELECT name, value FROM ferry_meta ORDER BY 1")
        .await
        .unwrap();
    let (creates, _) = snapshot(c).await;
    format!("{triggers:?}\n{tables:?}\n{meta:?}\n{creates:?}")
}

#[test]
fn change_log_holds_one_entry_per_row_write() {
    for source in sources() {
        eprintln!("capture counts on {}", source.name());
        let site = site("counts", &source);
        let node = Node::new("clinic-a", &site.url);
        node.ok(&["setup"]);
        block_on(async {
            let mut c = conn(&site.url).await;
            let opts = GenOptions {
                seed: 7,
                patients: 1000,
                ..GenOptions::default()
            };
            let report = generate(&mut c, &opts).await.unwrap();
            let mut expected = Counts::new();
            for (table, w) in &report.per_table {
                for (op, n) in [("I", w.inserts), ("U", w.updates), ("D", w.deletes)] {
                    if n > 0 {
                        expected.insert((table.clone(), op.to_string()), n);
                    }
                }
            }
            assert!(
                expected.len() >= 10,
                "the workload touches many tables: {expected:?}"
            );
            assert!(
                expected.keys().any(|(_, op)| op == "U"),
                "edits are part of the workload"
            );
            assert!(
                expected.keys().any(|(_, op)| op == "D"),
                "deletes are part of the workload"
            );
            assert_eq!(change_counts(&mut c, true).await, expected);

            // Writes made in an importer session leave no entry: the importer logs its
            // changes itself, with their origin (tests/sync.rs checks that side).
            let before = change_counts(&mut c, true).await;
            c.query_drop("SET @ferry_origin = 'clinic-b'")
                .await
                .unwrap();
            c.query_drop(
                "INSERT INTO person (gender, creator, date_created, voided, uuid) \
                 VALUES ('F', 1, '2024-01-01', 0, 'aaaaaaaa-0000-4000-8000-000000000001')",
            )
            .await
            .unwrap();
            c.query_drop("UPDATE person SET gender = 'M' WHERE uuid = 'aaaaaaaa-0000-4000-8000-000000000001'")
                .await
                .unwrap();
            c.query_drop("DELETE FROM person WHERE uuid = 'aaaaaaaa-0000-4000-8000-000000000001'")
                .await
                .unwrap();
            c.query_drop("SET @ferry_origin = NULL").await.unwrap();
            assert_eq!(
                change_counts(&mut c, true).await,
                before,
                "no local entry for importer writes"
            );
            assert_eq!(
                change_counts(&mut c, false).await,
                Counts::new(),
                "and no trigger entry at all"
            );
        });
    }
}

#[test]
fn setup_is_idempotent_and_teardown_restores_every_table() {
    for source in sources() {
        eprintln!("setup/teardown on {}", source.name());
        let site = site("idem", &source);
        let node = Node::new("clinic-a", &site.url);
        let before = block_on(async { snapshot(&mut conn(&site.url).await).await });
        assert!(before.1.is_empty());

        let first = node.json(&["setup", "--json"]);
        assert!(first["triggers_created"].as_u64().unwrap() > 0);
        let once = block_on(async { ferry_state(&mut conn(&site.url).await).await });
        let second = node.json(&["setup", "--json"]);
        assert_eq!(second["triggers_created"], 0);
        assert_eq!(second["triggers_dropped"], 0);
        assert_eq!(second["triggers_unchanged"], first["triggers_created"]);
        let twice = block_on(async { ferry_state(&mut conn(&site.url).await).await });
        assert_eq!(once, twice, "setup twice equals setup once");

        let (code, _, err) = node.run(&["teardown"]);
        assert_eq!(code, 2, "teardown without --yes is a usage error");
        assert!(err.contains("hint:"), "{err}");
        node.ok(&["teardown", "--yes"]);
        let after = block_on(async { snapshot(&mut conn(&site.url).await).await });
        assert_eq!(
            after, before,
            "SHOW CREATE TABLE of every table equals what it was"
        );
    }
}

async fn count(c: &mut mysql_async::Conn) -> u64 {
    let n: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM ferry_change WHERE table_name = 'location'")
        .await
        .unwrap();
    n.unwrap()
}

#[test]
fn disabling_a_table_stops_capture_and_enabling_resumes_it() {
    let source = common::Source::Fixture;
    let site = site("switch", &source);
    let node = Node::new("clinic-a", &site.url);
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop("CREATE TABLE scratch_pad (note TEXT)")
            .await
            .unwrap();
    });
    node.ok(&["setup"]);
    let write = |n: u32| {
        format!(
            "INSERT INTO location (name, creator, date_created, retired, uuid) \
             VALUES ('room {n}', 1, '2024-01-01', 0, 'bbbbbbbb-0000-4000-8000-{n:012}')"
        )
    };
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop(write(1)).await.unwrap();
        assert_eq!(count(&mut c).await, 1);
    });
    assert!(node
        .ok(&["tables", "disable", "location"])
        .contains("disabled"));
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop(write(2)).await.unwrap();
        assert_eq!(count(&mut c).await, 1, "no capture while disabled");
    });
    // The choice survives setup.
    node.ok(&["setup"]);
    let tables = node.json(&["tables", "--json"]);
    let loc = tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "location")
        .unwrap();
    assert_eq!(loc["state"], "disabled");
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop(write(3)).await.unwrap();
        assert_eq!(count(&mut c).await, 1, "still disabled after setup");
    });
    node.ok(&["tables", "enable", "location"]);
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop(write(4)).await.unwrap();
        assert_eq!(count(&mut c).await, 2, "capture resumes");
    });
    let status = node.json(&["status", "--json"]);
    assert_eq!(status["tables_disabled"].as_array().unwrap().len(), 0);

    // A node-local or unknown table cannot be switched, with a hint; naming one is a
    // usage error, exit code 2 (issue 4: it exited 1, as if something had failed).
    let (code, _, err) = node.run(&["tables", "enable", "scratch_pad"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("stays node-local: no primary key") && err.contains("hint:"),
        "{err}"
    );
    let (code, _, err) = node.run(&["tables", "disable", "no_such_table"]);
    assert_eq!(code, 2);
    assert!(err.contains("no table named no_such_table"), "{err}");
}

#[test]
fn added_column_is_reported_as_drift_then_captured_after_setup() {
    for source in sources() {
        eprintln!("drift on {}", source.name());
        let site = site("drift", &source);
        let node = Node::new("clinic-a", &site.url);
        node.ok(&["setup"]);
        assert_eq!(
            node.json(&["status", "--json"])["drift"],
            serde_json::json!([])
        );
        block_on(async {
            let mut c = conn(&site.url).await;
            c.query_drop("ALTER TABLE person ADD COLUMN clinic_code VARCHAR(20) NULL")
                .await
                .unwrap();
        });
        let status = node.json(&["status", "--json"]);
        let drift = status["drift"].as_array().unwrap();
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert_eq!(drift[0]["table"], "person");
        assert!(drift[0]["change"]
            .as_str()
            .unwrap()
            .contains("column clinic_code added"));
        assert!(node.ok(&["status"]).contains("run `ferry setup`"));
        // Enabling a drifted table is refused until setup.
        node.ok(&["tables", "disable", "person"]);
        let (code, _, err) = node.run(&["tables", "enable", "person"]);
        assert_eq!(code, 1);
        assert!(err.contains("changed since the last setup"), "{err}");

        node.ok(&["setup"]);
        node.ok(&["tables", "enable", "person"]);
        assert_eq!(
            node.json(&["status", "--json"])["drift"],
            serde_json::json!([])
        );
        block_on(async {
            let mut c = conn(&site.url).await;
            c.query_drop("DELETE FROM ferry_change").await.unwrap();
            c.query_drop("UPDATE person SET clinic_code = 'X1' WHERE person_id = 1")
                .await
                .unwrap();
            let cols: Vec<(String, Option<String>)> = c
                .query("SELECT op, changed_cols FROM ferry_change WHERE table_name = 'person'")
                .await
                .unwrap();
            assert_eq!(
                cols,
                vec![("U".to_string(), Some("clinic_code".to_string()))]
            );
        });
    }
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(&missing)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hint: run `ferry init"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("no-such-command")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--config",
            missing.to_str().unwrap(),
            "init",
            "--db",
            "mysql://r@h/d",
            "--node",
            "Bad Name",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid node name"));
}

/// Rows a foreign key's `ON DELETE` action changes fire no trigger; capture logs them
/// from the referenced table's before-delete trigger: a delete of each row a cascade
/// deletes, an update of each row set to NULL, as the delete leaves them. (The cascade
/// of OpenMRS's `users` to itself is covered end to end in tests/sync.rs.)
#[test]
fn rows_a_delete_cascades_to_are_captured_as_it_leaves_them() {
    let site = site("cascade", &common::Source::Fixture);
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop(
            "CREATE TABLE clinic_room (room_id INT AUTO_INCREMENT PRIMARY KEY, \
             location_id INT NOT NULL, uuid CHAR(38) NOT NULL UNIQUE, \
             CONSTRAINT room_location FOREIGN KEY (location_id) \
             REFERENCES location (location_id) ON DELETE CASCADE); \
             CREATE TABLE clinic_note (note_id INT AUTO_INCREMENT PRIMARY KEY, \
             room_id INT NULL, uuid CHAR(38) NOT NULL UNIQUE, \
             CONSTRAINT note_room FOREIGN KEY (room_id) \
             REFERENCES clinic_room (room_id) ON DELETE SET NULL); \
             CREATE TABLE clinic_staff (staff_id INT AUTO_INCREMENT PRIMARY KEY, \
             boss INT NULL, mentor INT NULL, uuid CHAR(38) NOT NULL UNIQUE, \
             CONSTRAINT staff_boss FOREIGN KEY (boss) REFERENCES clinic_staff (staff_id) \
             ON DELETE CASCADE, \
             CONSTRAINT staff_mentor FOREIGN KEY (mentor) REFERENCES clinic_staff (staff_id) \
             ON DELETE SET NULL); \
             CREATE TABLE clinic_shift (shift_id INT AUTO_INCREMENT PRIMARY KEY, \
             staff_id INT NOT NULL, uuid CHAR(38) NOT NULL UNIQUE, \
             CONSTRAINT shift_staff FOREIGN KEY (staff_id) REFERENCES clinic_staff (staff_id) \
             ON DELETE CASCADE)",
        )
        .await
        .unwrap();
    });
    let node = Node::new("clinic-a", &site.url);
    // A location's cascade to its rooms goes on to their notes: a second level, which
    // MariaDB runs and capture does not follow. Setup says so.
    let (code, _, err) = node.run(&["setup"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "deleting a location row deletes clinic_room rows (location_id), \
             whose own ON DELETE actions are not captured"
        ),
        "{err}"
    );
    type Entry = (String, String, String, Option<String>);
    let log = |sql: &str| -> Vec<Entry> {
        block_on(async {
            let mut c = conn(&site.url).await;
            c.query_drop("DELETE FROM ferry_change").await.unwrap();
            c.query_drop(sql).await.unwrap();
            c.query(
                "SELECT table_name, op, row_key, changed_cols FROM ferry_change \
                 ORDER BY change_id",
            )
            .await
            .unwrap()
        })
    };
    let entry = |t: &str, op: &str, key: &str, cols: Option<&str>| -> Entry {
        (
            t.to_string(),
            op.to_string(),
            key.to_string(),
            cols.map(String::from),
        )
    };
    log(
        "INSERT INTO location (name, creator, date_created, uuid) VALUES \
         ('Annex', 1, '2024-01-01', 'loc-annex'), ('Other', 1, '2024-01-01', 'loc-other'); \
         INSERT INTO clinic_room (location_id, uuid) SELECT location_id, \
         CONCAT('room-', name, '-', n) FROM location, (SELECT 1 AS n UNION SELECT 2) AS two \
         WHERE uuid IN ('loc-annex', 'loc-other'); \
         INSERT INTO clinic_note (room_id, uuid) SELECT room_id, CONCAT('note-', uuid) \
         FROM clinic_room; \
         INSERT INTO clinic_staff (uuid) VALUES ('staff-A'); \
         INSERT INTO clinic_staff (boss, mentor, uuid) VALUES (1, 1, 'staff-B'); \
         INSERT INTO clinic_staff (boss, uuid) VALUES (2, 'staff-C'); \
         INSERT INTO clinic_staff (mentor, uuid) VALUES (2, 'staff-D'); \
         INSERT INTO clinic_shift (staff_id, uuid) \
         SELECT staff_id, CONCAT('shift-', uuid) FROM clinic_staff WHERE staff_id > 1",
    );

    // A room deleted: its notes' room is set to NULL.
    assert_eq!(
        log("DELETE FROM clinic_room WHERE uuid = 'room-Other-1'"),
        [
            entry("clinic_note", "U", "note-room-Other-1", Some("room_id")),
            entry("clinic_room", "D", "room-Other-1", None),
        ]
    );
    // A location deleted: its rooms go with it (one level).
    let mut entries = log("DELETE FROM location WHERE uuid = 'loc-annex'");
    assert_eq!(
        entries.pop(),
        Some(entry("location", "D", "loc-annex", None))
    );
    entries.sort();
    assert_eq!(
        entries,
        [
            entry("clinic_room", "D", "room-Annex-1", None),
            entry("clinic_room", "D", "room-Annex-2", None),
        ]
    );
    // A member of staff deleted: the cascade to the staff they lead runs to every
    // level (B, then C), the shifts of everyone it removes go too, and D, mentored by
    // B, loses the mentor. B's mentor (A) is set to NULL and B deleted: B ends deleted.
    let entries = log("DELETE FROM clinic_staff WHERE uuid = 'staff-A'");
    assert_eq!(
        entries.first(),
        Some(&entry("clinic_staff", "U", "staff-D", Some("mentor")))
    );
    assert_eq!(
        entries.last(),
        Some(&entry("clinic_staff", "D", "staff-A", None))
    );
    let mut middle = entries[1..entries.len() - 1].to_vec();
    middle.sort();
    assert_eq!(
        middle,
        [
            entry("clinic_shift", "D", "shift-staff-B", None),
            entry("clinic_shift", "D", "shift-staff-C", None),
            entry("clinic_staff", "D", "staff-B", None),
            entry("clinic_staff", "D", "staff-C", None),
        ]
    );
    block_on(async {
        let mut c = conn(&site.url).await;
        let left: Vec<(String, Option<i64>)> = c
            .query("SELECT uuid, mentor FROM clinic_staff ORDER BY uuid")
            .await
            .unwrap();
        assert_eq!(left, [("staff-D".to_string(), None)], "what MariaDB did");
    });
    // The importer's session (which writes with foreign key checks off) logs nothing.
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop("DELETE FROM ferry_change").await.unwrap();
        c.query_drop(
            "SET @ferry_origin = 'clinic-b'; \
             DELETE FROM clinic_room WHERE uuid = 'room-Other-2'; \
             SET @ferry_origin = NULL",
        )
        .await
        .unwrap();
        let n: u64 = c
            .query_first("SELECT COUNT(*) FROM ferry_change")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    });
    // A second setup finds every trigger, the before-delete ones too, as it left them.
    let again = node.json(&["setup", "--json"]);
    assert_eq!(again["triggers_created"], 0, "{again}");
}

/// A node set up by a release that did not read `ON DELETE` actions stored `users`
/// without its cascade: it must see drift there (which export refuses) until `ferry setup`
/// installs the trigger that captures the cascade (docs/operations.md, "Upgrading").
#[test]
fn a_shape_stored_without_delete_actions_is_drift_until_setup() {
    let site = site("upgrade", &common::Source::Fixture);
    let node = Node::new("clinic-a", &site.url);
    node.ok(&["setup"]);
    let cascade_trigger = || -> u64 {
        block_on(async {
            let mut c = conn(&site.url).await;
            c.query_first(
                "SELECT COUNT(*) FROM information_schema.TRIGGERS \
                 WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = 'ferry_users_bd'",
            )
            .await
            .unwrap()
            .unwrap()
        })
    };
    assert_eq!(cascade_trigger(), 1);
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop(
            "UPDATE ferry_table SET shape = REPLACE(shape, ',\"on_delete\":\"Cascade\"', '') \
             WHERE table_name = 'users'; DROP TRIGGER ferry_users_bd",
        )
        .await
        .unwrap();
    });
    let status = node.json(&["status", "--json"]);
    let drift = status["drift"].as_array().unwrap();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0]["table"], "users");
    assert_eq!(drift[0]["change"], "foreign keys changed");
    assert!(node.ok(&["status"]).contains("run `ferry setup`"));

    node.ok(&["setup"]);
    assert_eq!(
        node.json(&["status", "--json"])["drift"],
        serde_json::json!([])
    );
    assert_eq!(cascade_trigger(), 1);
}

/// Issue 4 (regression test): a capture trigger dropped by hand, or replaced by
/// another body, on a table whose shape did not change, stopped that table's capture
/// with nothing to say so (a table dropped and made again by an upgrade, or a database
/// restored from a dump made without triggers, does the same). Now it is drift: status
/// names it, export refuses, and `ferry setup` puts the trigger back.
#[test]
fn a_missing_or_altered_capture_trigger_is_drift_until_setup() {
    let site = site("triggers", &common::Source::Fixture);
    let node = Node::new("clinic-a", &site.url);
    let other = Node::new("clinic-b", &site.url);
    node.ok(&["peer", "add", "clinic-b", other.ok(&["key"]).trim()]);
    let first = node.json(&["setup", "--json"]);
    assert_eq!(first["triggers_restored"], serde_json::json!([]), "{first}");
    // The entries `sql` logs.
    let logged = |sql: &str| -> u64 {
        block_on(async {
            let mut c = conn(&site.url).await;
            c.query_drop("DELETE FROM ferry_change").await.unwrap();
            c.query_drop(sql).await.unwrap();
            c.query_first("SELECT COUNT(*) FROM ferry_change")
                .await
                .unwrap()
                .unwrap()
        })
    };
    block_on(async {
        let mut c = conn(&site.url).await;
        c.query_drop("DROP TRIGGER ferry_location_ai")
            .await
            .unwrap();
        c.query_drop(
            "CREATE OR REPLACE TRIGGER ferry_location_au AFTER UPDATE ON location \
             FOR EACH ROW SET @ferry_touched = 1",
        )
        .await
        .unwrap();
    });
    let uuid = "bbbbbbbb-0000-4000-8000-000000000001";
    assert_eq!(
        logged(&format!(
            "INSERT INTO location (name, creator, date_created, uuid) \
             VALUES ('Annex', 1, '2024-01-01', '{uuid}')"
        )),
        0,
        "without its trigger, an insert is not captured"
    );
    let status = node.json(&["status", "--json"]);
    assert_eq!(
        status["drift"],
        serde_json::json!([
            {
                "table": "location",
                "change": "capture trigger ferry_location_ai missing: changes to location \
                           since it went missing were not captured",
                "kind": "trigger"
            },
            {
                "table": "location",
                "change": "capture trigger ferry_location_au differs from the one this \
                           release of ferry installs",
                "kind": "trigger"
            }
        ])
    );
    assert!(node.ok(&["status"]).contains("run `ferry setup`"));
    let (code, out, err) = node.run(&["export"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("capture changed since the last setup")
            && err.contains("ferry_location_ai missing")
            && err.contains("hint: run `ferry setup`"),
        "{err}"
    );

    let report = node.json(&["setup", "--json"]);
    assert_eq!(report["triggers_created"], 2, "{report}");
    // The one that was gone is named: the changes made meanwhile were not captured.
    assert_eq!(
        report["triggers_restored"],
        serde_json::json!(["ferry_location_ai"]),
        "{report}"
    );
    assert_eq!(
        node.json(&["status", "--json"])["drift"],
        serde_json::json!([])
    );
    assert_eq!(
        logged(&format!(
            "UPDATE location SET name = 'Annex 2' WHERE uuid = '{uuid}'"
        )),
        1,
        "captured again"
    );

    let sql = |s: &str| ferry::dev::mariadb::run_sql_blocking(&site.url, s).unwrap();
    // A table switched off, changed, then switched on (refused until setup, which
    // installs its triggers): setup names none of them, the operator had it off.
    node.ok(&["tables", "disable", "location"]);
    sql("ALTER TABLE location ADD COLUMN ferry_note VARCHAR(20) NULL");
    let (code, out, err) = node.run(&["tables", "enable", "location"]);
    assert_eq!(code, 1, "{out}{err}");
    let report = node.json(&["setup", "--json"]);
    assert_eq!(
        report["triggers_restored"],
        serde_json::json!([]),
        "{report}"
    );
    assert_eq!(
        node.json(&["status", "--json"])["drift"],
        serde_json::json!([])
    );
    // A new table whose key deletes with location: drift names the table, not
    // location's before-delete trigger, which must change for it but lost nothing.
    sql(
        "CREATE TABLE location_note (location_note_id INT AUTO_INCREMENT PRIMARY KEY, \
         location_id INT NOT NULL, uuid CHAR(38) NOT NULL, UNIQUE KEY (uuid), \
         CONSTRAINT location_note_location FOREIGN KEY (location_id) \
         REFERENCES location (location_id) ON DELETE CASCADE)",
    );
    assert_eq!(
        node.json(&["status", "--json"])["drift"],
        serde_json::json!([
            {"table": "location_note", "change": "new table, not captured yet", "kind": "schema"}
        ])
    );
}

/// Issue 4 (regression test): `TRUNCATE TABLE` fires no trigger, so the rows it took
/// stayed at the peers and nothing said so (the docs only warned). Its trace is the
/// table's id counter, which starts again from 1: export records the highest counter it
/// has seen, and one that went back is drift. Status names the table, export refuses
/// with what to do, and `ferry setup` takes the counters as they are. Deletes never
/// take a counter back, and a truncate while the table was switched off is not
/// captured by design (switching it on takes the counter as it is).
#[test]
fn a_table_emptied_by_truncate_is_drift_until_setup() {
    let site = site("truncate", &common::Source::Fixture);
    let node = Node::new("clinic-a", &site.url);
    let other = Node::new("clinic-b", &site.url);
    node.ok(&["peer", "add", "clinic-b", other.ok(&["key"]).trim()]);
    node.ok(&["setup"]);
    let sql = |s: &str| ferry::dev::mariadb::run_sql_blocking(&site.url, s).unwrap();
    let drift = || node.json(&["status", "--json"])["drift"].clone();
    let bundles = || {
        std::fs::read_dir(node.dir.path().join("outbox").join("clinic-b")).map_or(0, |d| d.count())
    };
    for i in 0..3 {
        sql(&format!(
            "INSERT INTO location (name, creator, date_created, uuid) \
             VALUES ('Ward {i}', 1, '2024-01-01', 'cccccccc-0000-4000-8000-00000000000{i}')"
        ));
    }
    node.ok(&["export"]);
    // Deletes, captured, leave the counter where it was: no drift.
    sql("DELETE FROM location WHERE uuid = 'cccccccc-0000-4000-8000-000000000002'");
    sql("DELETE FROM location_tag_map");
    sql("DELETE FROM location_tag");
    assert_eq!(drift(), serde_json::json!([]));
    node.ok(&["export"]);

    let (was, rows): (u64, u64) = block_on(async {
        let mut c = conn(&site.url).await;
        let was: u64 = c
            .query_first("SELECT id_counter FROM ferry_table WHERE table_name = 'location'")
            .await
            .unwrap()
            .unwrap();
        let rows = c
            .query_first("SELECT COUNT(*) FROM location")
            .await
            .unwrap()
            .unwrap();
        (was, rows)
    });
    assert!(rows > 0 && was > rows, "counter {was}, {rows} rows");
    sql("SET FOREIGN_KEY_CHECKS = 0; TRUNCATE TABLE location_tag_map; TRUNCATE TABLE location");
    // A row OpenMRS writes after the truncate takes id 1: still drift.
    sql("INSERT INTO location (name, creator, date_created, uuid) \
         VALUES ('After', 1, '2024-01-01', 'cccccccc-0000-4000-8000-000000000009')");
    assert_eq!(
        drift(),
        serde_json::json!([{
            "table": "location",
            "change": format!(
                "emptied by TRUNCATE TABLE, which no trigger sees (its id counter went back \
                 from {was} to 2): the rows it held are still at the peers"
            ),
            "kind": "truncate"
        }]),
        "location_tag_map has no rows since the last export, its counter never moved"
    );
    let text = node.ok(&["status"]);
    assert!(
        text.contains("location: emptied by TRUNCATE TABLE")
            && text.contains("empty it the same way on every node"),
        "{text}"
    );
    let (code, out, err) = node.run(&["export"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("location: emptied by TRUNCATE TABLE")
            && err.contains(
                "hint: a table emptied by TRUNCATE TABLE still has its rows at the peers"
            )
            && err.contains("run `ferry setup` on this node"),
        "{err}"
    );
    assert_eq!(bundles(), 2, "the refused export sealed nothing");

    // The operator has dealt with the rows: setup takes the counters as they are.
    node.ok(&["setup"]);
    assert_eq!(drift(), serde_json::json!([]));
    node.ok(&["export"]);

    // Switched off, emptied, switched on: not captured by design, so no drift.
    node.ok(&["tables", "disable", "location"]);
    sql("SET FOREIGN_KEY_CHECKS = 0; TRUNCATE TABLE location");
    node.ok(&["tables", "enable", "location"]);
    assert_eq!(drift(), serde_json::json!([]));
    node.ok(&["export"]);
}

/// Issue 4 (regression test): an update that gives a row a new uuid is logged as a
/// delete of the old identity and an insert of the new one, and export's identity
/// check takes the two as one row's new uuid only when no entry comes between them.
/// Logged by two statements, another session's entry could. Now they are one
/// statement, and take consecutive positions while other sessions write.
#[test]
fn an_identity_change_takes_consecutive_positions_while_others_write() {
    const RENAMES: usize = 300;
    let site = site("renames", &common::Source::Fixture);
    let node = Node::new("clinic-a", &site.url);
    node.ok(&["setup"]);
    block_on(async {
        let mut c = conn(&site.url).await;
        let mode: Option<u32> = c
            .query_first("SELECT @@innodb_autoinc_lock_mode")
            .await
            .unwrap();
        assert_ne!(
            mode,
            Some(2),
            "the test server runs MariaDB's default lock mode"
        );
        c.query_drop("DELETE FROM ferry_change").await.unwrap();
        let renamer = async {
            let mut c = conn(&site.url).await;
            for _ in 0..RENAMES {
                c.query_drop("UPDATE location SET uuid = UUID() WHERE location_id = 1")
                    .await
                    .unwrap();
            }
        };
        let writer = |w: usize| {
            let url = site.url.clone();
            async move {
                let mut c = conn(&url).await;
                for i in 0..RENAMES {
                    c.exec_drop(
                        "INSERT INTO location (name, creator, date_created, uuid) \
                         VALUES (?, 1, '2024-01-01', UUID())",
                        (format!("writer {w} row {i}"),),
                    )
                    .await
                    .unwrap();
                }
            }
        };
        tokio::join!(renamer, writer(0), writer(1), writer(2));
        let log: Vec<(String, Option<i64>)> = c
            .query("SELECT op, row_id FROM ferry_change WHERE table_name = 'location' ORDER BY change_id")
            .await
            .unwrap();
        assert_eq!(log.len(), 2 * RENAMES + 3 * RENAMES);
        let mut pairs = 0;
        for (at, (op, id)) in log.iter().enumerate() {
            if op == "D" {
                assert_eq!(id, &Some(1));
                assert_eq!(
                    log.get(at + 1),
                    Some(&("I".to_string(), Some(1))),
                    "the insert of the new identity follows its delete at once"
                );
                pairs += 1;
            }
        }
        assert_eq!(pairs, RENAMES);
    });
}

/// Issue 4: capture relies on a statement's log entries taking consecutive positions,
/// which `innodb_autoinc_lock_mode` 2 does not promise. A server set so is named by
/// `ferry status` (and setup), with what to change.
#[test]
fn a_server_with_interleaved_auto_increment_is_named_in_status() {
    use ferry::dev::mariadb::{load_sql_file, run_sql_blocking, MariaServer, ServerOptions};
    let server = MariaServer::start_with(ServerOptions {
        extra_args: vec!["--innodb-autoinc-lock-mode=2".into()],
        ..ServerOptions::default()
    })
    .unwrap();
    run_sql_blocking(
        &server.server_url(),
        "CREATE DATABASE ferry_lock_mode CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
    )
    .unwrap();
    let url = server.url("ferry_lock_mode");
    let fixture = common::fixture_dir();
    load_sql_file(&url, &fixture.join("schema.sql")).unwrap();
    load_sql_file(&url, &fixture.join("metadata.sql")).unwrap();
    let node = Node::new("clinic-a", &url);
    let (code, _, err) = node.run(&["setup"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("innodb_autoinc_lock_mode is 2"), "{err}");
    let status = node.json(&["status", "--json"]);
    let warnings = status["server_warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{status}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("set it to 1 (MariaDB's default)"),
        "{status}"
    );
    assert!(node
        .ok(&["status"])
        .contains("warning   innodb_autoinc_lock_mode is 2"));
}
