//! Two-way sync on real MariaDB, one private server per site: the seed's phases,
//! disorder, atomicity under `kill -9`, and fidelity of every column type.

mod common;

use common::{block_on, conn, Cluster, Source};
use mysql_async::prelude::*;

async fn person(url: &str, uuid: &str) -> Option<(String, Option<String>)> {
    let mut c = conn(url).await;
    c.exec_first(
        "SELECT gender, CAST(birthdate AS CHAR) FROM person WHERE uuid = ?",
        (uuid,),
    )
    .await
    .unwrap()
}

/// Phase 1: two OpenMRS databases, the person table only, both directions.
#[test]
fn phase1_person_insert_update_delete_both_ways() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    // Person only: switch every other table off on both sides.
    let tables = c.node("site-a").json(&["tables", "--json"]);
    let others: Vec<String> = tables
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "enabled" && t["table"] != "person")
        .map(|t| t["table"].as_str().unwrap().to_string())
        .collect();
    for n in ["site-a", "site-b"] {
        let mut args = vec!["tables", "disable"];
        args.extend(others.iter().map(String::as_str));
        c.node(n).ok(&args);
    }
    for (from, to, uuid) in [
        ("site-a", "site-b", "11111111-0000-4000-8000-00000000000a"),
        ("site-b", "site-a", "11111111-0000-4000-8000-00000000000b"),
    ] {
        block_on(async {
            let mut db = conn(c.url(from)).await;
            db.exec_drop(
                "INSERT INTO person (gender, birthdate, creator, date_created, voided, uuid) \
                 VALUES ('F', '1990-05-01', 1, '2024-01-01 08:00:00', 0, ?)",
                (uuid,),
            )
            .await
            .unwrap();
        });
        let r = c.carry(from, to);
        assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(
            block_on(person(c.url(to), uuid)),
            Some(("F".into(), Some("1990-05-01".into())))
        );
        block_on(async {
            let mut db = conn(c.url(from)).await;
            db.exec_drop("UPDATE person SET gender = 'M' WHERE uuid = ?", (uuid,))
                .await
                .unwrap();
        });
        c.carry(from, to);
        assert_eq!(
            block_on(person(c.url(to), uuid)),
            Some(("M".into(), Some("1990-05-01".into())))
        );
        block_on(async {
            let mut db = conn(c.url(from)).await;
            db.exec_drop("DELETE FROM person WHERE uuid = ?", (uuid,))
                .await
                .unwrap();
        });
        let r = c.carry(from, to);
        assert_eq!(block_on(person(c.url(to), uuid)), None);
        assert_eq!(r["applied"][0]["stats"]["deleted"], 1, "{r}");
        // A person made and deleted between two exports travels as one delete of a row
        // the other side never had, and the import counts it (issue 4: its counts left
        // such deletes out, so they did not add up to the bundle's changes).
        let brief = uuid.replace("-00000000000", "-10000000000");
        block_on(async {
            let mut db = conn(c.url(from)).await;
            db.exec_drop(
                "INSERT INTO person (gender, creator, date_created, voided, uuid) \
                 VALUES ('F', 1, '2024-01-02 08:00:00', 0, ?)",
                (&brief,),
            )
            .await
            .unwrap();
            db.exec_drop("DELETE FROM person WHERE uuid = ?", (&brief,))
                .await
                .unwrap();
        });
        let r = c.carry(from, to);
        let applied = &r["applied"][0];
        assert_eq!(applied["changes"], 1, "{r}");
        assert_eq!(applied["stats"]["already_gone"], 1, "{r}");
        assert_eq!(applied["stats"]["deleted"], 0, "{r}");
        assert_eq!(block_on(person(c.url(to), &brief)), None);
    }
    // Nothing echoes back: the receiving side has nothing new to export to the sender.
    let out = c.node("site-a").json(&["export", "--json"]);
    assert_eq!(out[0]["bundle"], serde_json::Value::Null, "{out}");
}

fn assert_same(c: &Cluster, names: &[&str]) {
    let first = c.verify(names[0]);
    assert!(first.contains("\"rows\""), "{first}");
    for n in &names[1..] {
        let other = c.verify(n);
        if other != first {
            let path = c.stick.path().join("verify.json");
            std::fs::write(&path, &first).unwrap();
            let (_, out, err) = c
                .node(n)
                .run(&["verify", "--against", path.to_str().unwrap()]);
            panic!("{} and {n} differ:\n{out}\n{err}", names[0]);
        }
    }
}

/// Phase 2: all tables, both directions, a week offline, then everything in one go.
#[test]
fn phase2_all_tables_both_ways_after_a_week_offline() {
    for source in common::sources() {
        eprintln!("phase 2 on {}", source.name());
        let c = Cluster::star(&["site-a", "site-b"], &source);
        for day in 0..7 {
            common::generate(c.url("site-a"), 100 + day, 8, 2, 5);
            c.node("site-a").ok(&["export"]);
            common::generate(c.url("site-b"), 200 + day, 8, 2, 5);
            c.node("site-b").ok(&["export"]);
        }
        // Status counts every local change as owed to the peer until it acknowledges
        // it (issue 4 §4; it counted none before the fix in `state::done_for`).
        for (n, peer) in [("site-a", "site-b"), ("site-b", "site-a")] {
            let status = c.node(n).json(&["status", "--json"]);
            let p = &status["peers"][0];
            assert_eq!(p["peer"], peer, "{status}");
            let owed = p["unacknowledged_changes"].as_u64().unwrap();
            assert!(owed > 0, "{n}: {status}");
            assert_eq!(
                owed,
                status["pending_changes"].as_u64().unwrap(),
                "{status}"
            );
            assert!(p["oldest_unacknowledged_s"].is_u64(), "{status}");
            assert_eq!(p["unacknowledged_bundles"], 7, "{status}");
        }
        let stick = c.stick.path().to_str().unwrap();
        c.node("site-a").ok(&["send", stick]);
        c.node("site-b").ok(&["send", stick]);
        c.node("site-a").ok(&["receive", stick]);
        c.node("site-b").ok(&["receive", stick]);
        for n in ["site-a", "site-b"] {
            let r = c.node(n).json(&["import", "--json"]);
            assert_eq!(r["applied"].as_array().unwrap().len(), 7, "{n}: {r}");
            assert!(r["failed"].as_array().unwrap().is_empty(), "{r}");
        }
        assert_same(&c, &["site-a", "site-b"]);
        // Acknowledgements travel back (on heartbeats: there is nothing new) and empty
        // both outboxes and change logs.
        c.carry_with("site-a", "site-b", &["--heartbeat"]);
        c.carry_with("site-b", "site-a", &["--heartbeat"]);
        for n in ["site-a", "site-b"] {
            let status = c.node(n).json(&["status", "--json"]);
            assert_eq!(status["pending_changes"], 0, "{n}: {status}");
            assert_eq!(status["pending_forwarded"], 0, "{n}: {status}");
            let p = &status["peers"][0];
            assert_eq!(p["unacknowledged_changes"], 0, "{n}: {status}");
            assert_eq!(
                p["oldest_unacknowledged_s"],
                serde_json::Value::Null,
                "{status}"
            );
        }
        let outbox_a = c.node("site-a").dir.path().join("outbox/site-b");
        let left: Vec<_> = std::fs::read_dir(&outbox_a).unwrap().collect();
        assert_eq!(
            left.len(),
            0,
            "site-a's outbox is empty once site-b acknowledged"
        );
    }
}

/// Phase 3: a patient registered at spoke 1 reaches spoke 2 through the hub.
#[test]
fn phase3_hub_forwards_between_spokes() {
    let c = Cluster::star(&["hub", "spoke-1", "spoke-2"], &Source::Fixture);
    common::generate(c.url("spoke-1"), 11, 3, 2, 5);
    common::generate(c.url("spoke-2"), 22, 3, 2, 5);
    c.carry("spoke-1", "hub");
    c.carry("spoke-2", "hub");
    // The hub owes each spoke the other's changes (forwarded entries), none of its own.
    let status = c.node("hub").json(&["status", "--json"]);
    let peers = status["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{status}");
    let owed: Vec<u64> = peers
        .iter()
        .map(|p| p["unacknowledged_changes"].as_u64().unwrap())
        .collect();
    assert!(owed.iter().all(|&n| n > 0), "{status}");
    assert_eq!(
        owed.iter().sum::<u64>(),
        status["pending_forwarded"].as_u64().unwrap(),
        "each forwarded entry is owed to the one spoke it did not come from: {status}"
    );
    // The hub forwards each spoke's changes to the other, never back.
    let stick = c.stick.path().to_str().unwrap();
    let out = c.node("hub").json(&["export", "--json"]);
    for e in out.as_array().unwrap() {
        assert!(e["changes"].as_u64().unwrap() > 0, "{out}");
    }
    c.node("hub").ok(&["send", stick]);
    for s in ["spoke-1", "spoke-2"] {
        c.node(s).ok(&["receive", stick]);
        let r = c.node(s).json(&["import", "--json"]);
        assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    }
    assert_same(&c, &["hub", "spoke-1", "spoke-2"]);
    // A patient of spoke 1 is at spoke 2, under the same uuid with a local id of its own.
    let uuid: String = block_on(async {
        let mut db = conn(c.url("spoke-1")).await;
        db.query_first("SELECT p.uuid FROM person p JOIN patient pa ON pa.patient_id = p.person_id ORDER BY p.person_id DESC LIMIT 1")
            .await
            .unwrap()
            .unwrap()
    });
    let at2: Option<u64> = block_on(async {
        let mut db = conn(c.url("spoke-2")).await;
        db.exec_first(
            "SELECT pa.patient_id FROM patient pa JOIN person p ON p.person_id = pa.patient_id WHERE p.uuid = ?",
            (&uuid,),
        )
        .await
        .unwrap()
    });
    assert!(at2.is_some(), "patient {uuid} reached spoke-2");
    // Nothing goes back to where it came from.
    for s in ["spoke-1", "spoke-2"] {
        let r = c.carry(s, "hub");
        let _ = r;
    }
    let again = c.node("hub").json(&["export", "--json"]);
    for e in again.as_array().unwrap() {
        assert_eq!(e["bundle"], serde_json::Value::Null, "{again}");
    }
}

/// Renames the location with `uuid` at the site of `url` (a plain local edit).
fn rename_location(url: &str, uuid: &str, name: &str) {
    block_on(async {
        let mut db = conn(url).await;
        db.exec_drop("UPDATE location SET name = ? WHERE uuid = ?", (name, uuid))
            .await
            .unwrap();
    });
}

/// Rows the sender made new are presumed new at the receiver and inserted without a
/// lookup; a row that exists there after all (loaded at both sites before capture, so
/// it has no version anywhere) makes the insert fail on its unique uuid, and is then
/// looked up and updated, never duplicated. Regression test for issue 4 (import speed:
/// the insert path that skips the lookup of rows the sender made new).
#[test]
fn a_row_older_than_capture_that_the_sender_changed_is_updated_not_duplicated() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    let shared = "df23b903-40fe-4a99-a65a-d7a57207725d"; // fixture location 2, both sites
    let added = "22222222-0000-4000-8000-00000000000a";
    block_on(async {
        let mut db = conn(c.url("site-a")).await;
        db.exec_drop(
            "INSERT INTO location (name, creator, date_created, retired, uuid) \
             VALUES ('Annex', 1, '2024-02-01 08:00:00', 0, ?)",
            (added,),
        )
        .await
        .unwrap();
    });
    rename_location(c.url("site-a"), shared, "Main Clinic (renamed)");
    let stick = c.stick.path().to_str().unwrap();
    c.node("site-a").ok(&["export"]);
    c.node("site-a").ok(&["send", stick]);
    c.node("site-b").ok(&["receive", stick]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(&c.node("site-b").config)
        .args(["import", "--json"])
        .env("FERRY_LOG", "ferry=info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {err}");
    assert!(
        err.contains("rows presumed new exist here"),
        "the shared row went through the presumed-insert path: {err}"
    );
    let rows: Vec<(String, String)> = block_on(async {
        let mut db = conn(c.url("site-b")).await;
        db.exec(
            "SELECT uuid, name FROM location WHERE uuid IN (?, ?) ORDER BY name",
            (shared, added),
        )
        .await
        .unwrap()
    });
    assert_eq!(
        rows,
        vec![
            (added.to_string(), "Annex".to_string()),
            (shared.to_string(), "Main Clinic (renamed)".to_string()),
        ]
    );
    assert_same(&c, &["site-a", "site-b"]);
    // The version the shared row got at site-a is its version at site-b now: an edit
    // at site-b supersedes it, and travels back as an update site-a takes.
    rename_location(c.url("site-b"), shared, "Main Clinic (site b)");
    let r = c.carry("site-b", "site-a");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    assert_same(&c, &["site-a", "site-b"]);
}

/// The same through a hub that forwards: the hub finds the shared row by the failed
/// insert, logs the change for the other spoke with the row's local id, and the other
/// spoke finds it the same way; all three end equal. Regression test for issue 4.
#[test]
fn a_hub_forwards_a_change_to_a_row_older_than_capture() {
    let c = Cluster::star(&["hub", "spoke-1", "spoke-2"], &Source::Fixture);
    let shared = "f1365cd4-1232-4d34-a6be-127925e04b83"; // fixture location 3, every site
    rename_location(c.url("spoke-1"), shared, "Outpatient Ward (east)");
    let r = c.carry("spoke-1", "hub");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    let r = c.carry("hub", "spoke-2");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    for site in ["hub", "spoke-2"] {
        let names: Vec<String> = block_on(async {
            let mut db = conn(c.url(site)).await;
            db.exec("SELECT name FROM location WHERE uuid = ?", (shared,))
                .await
                .unwrap()
        });
        assert_eq!(names, vec!["Outpatient Ward (east)".to_string()], "{site}");
    }
    assert_same(&c, &["hub", "spoke-1", "spoke-2"]);
}

/// Issue 4 (found in review): with an auto-increment step other than one (a Galera
/// cluster sets it), a multi-row insert's ids are not `first + j`; taking them so sent
/// children to the wrong parents, silently.
#[test]
fn rows_land_under_the_right_parents_when_auto_increment_steps_by_two() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    block_on(async {
        let mut db = conn(c.url("site-b")).await;
        db.query_drop("SET GLOBAL auto_increment_increment = 2")
            .await
            .unwrap();
    });
    common::generate(c.url("site-a"), 7, 4, 2, 3);
    let r = c.carry("site-a", "site-b");
    assert!(r["failed"].as_array().unwrap().is_empty(), "{r}");
    assert_same(&c, &["site-a", "site-b"]);
    block_on(async {
        let mut db = conn(c.url("site-b")).await;
        db.query_drop("SET GLOBAL auto_increment_increment = 1")
            .await
            .unwrap();
    });
}

/// Issue 4: a row deleted and made again with its uuid (a new local id) while another
/// row's entries sorted between the two ids formed two changes in one bundle: a
/// delete, then an update the peer could not apply (the row was gone), so the peer
/// lost the row. All of an identity's entries in a bundle coalesce into one change.
/// An identity change (a delete of the old uuid and an insert of the new one, at one
/// local id) carries the old uuid's tombstone first, whatever the uuids' text order.
#[test]
fn a_row_deleted_and_made_again_with_its_uuid_travels_as_one_change() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    let x = "44444444-0000-4000-8000-0000000000aa";
    let y = "44444444-0000-4000-8000-0000000000bb";
    let old = "44444444-0000-4000-8000-0000000000ff";
    let new = "44444444-0000-4000-8000-000000000001";
    let sql = |stmts: &[String]| {
        block_on(async {
            let mut db = conn(c.url("site-a")).await;
            for s in stmts {
                db.query_drop(s).await.unwrap();
            }
        })
    };
    let insert = |uuid: &str, gender: &str, birthdate: &str| {
        format!(
            "INSERT INTO person (gender, birthdate, creator, date_created, voided, uuid) \
             VALUES ('{gender}', '{birthdate}', 1, '2024-01-01 08:00:00', 0, '{uuid}')"
        )
    };
    // X, then Y (a greater local id), then the row whose uuid will change.
    sql(&[
        insert(x, "F", "1990-05-01"),
        insert(y, "F", "1991-05-01"),
        insert(old, "F", "1992-05-01"),
    ]);
    c.carry("site-a", "site-b");
    assert_eq!(
        block_on(person(c.url("site-b"), x)),
        Some(("F".into(), Some("1990-05-01".into())))
    );
    sql(&[
        format!("UPDATE person SET gender = 'M' WHERE uuid = '{y}'"),
        format!("DELETE FROM person WHERE uuid = '{x}'"),
        insert(x, "M", "1980-01-01"),
        format!("UPDATE person SET uuid = '{new}' WHERE uuid = '{old}'"),
    ]);
    c.node("site-a").ok(&["export"]);
    let outbox = c.node("site-a").dir.path().join("outbox").join("site-b");
    let (_, path) = ferry::transport::state::list_bundles(&outbox)
        .unwrap()
        .into_iter()
        .max_by_key(|(n, _)| n.seq)
        .unwrap();
    let people: Vec<(String, ferry::bundle::Op)> = common::bundle_changes(c.node("site-b"), &path)
        .into_iter()
        .filter(|ch| ch.table == "person")
        .map(|ch| (ferry::apply::changes::identity_text(&ch.identity), ch.op))
        .collect();
    let of = |uuid: &str| -> Vec<ferry::bundle::Op> {
        people
            .iter()
            .filter(|(k, _)| k == uuid)
            .map(|(_, op)| *op)
            .collect()
    };
    assert_eq!(of(x), [ferry::bundle::Op::Update], "{people:?}");
    assert_eq!(of(y), [ferry::bundle::Op::Update], "{people:?}");
    let at = |uuid: &str| people.iter().position(|(k, _)| k == uuid).unwrap();
    assert!(at(old) < at(new), "the tombstone comes first: {people:?}");
    let stick = c.stick.path().to_str().unwrap();
    c.node("site-a").ok(&["send", stick]);
    c.node("site-b").ok(&["receive", stick]);
    let r = c.node("site-b").json(&["import", "--json"]);
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    for site in ["site-a", "site-b"] {
        assert_eq!(
            block_on(person(c.url(site), x)),
            Some(("M".into(), Some("1980-01-01".into()))),
            "{site}"
        );
        assert_eq!(
            block_on(person(c.url(site), y)),
            Some(("M".into(), Some("1991-05-01".into()))),
            "{site}"
        );
        assert_eq!(block_on(person(c.url(site), old)), None, "{site}");
        assert_eq!(
            block_on(person(c.url(site), new)),
            Some(("F".into(), Some("1992-05-01".into()))),
            "{site}"
        );
    }
    assert_same(&c, &["site-a", "site-b"]);
}

/// Issue 4: changes captured before a table was switched off were left out of every
/// export, and the export cursor moved past them: once acknowledged they were pruned,
/// never sent, and only `verify` showed the difference. Switching a table off stops
/// its capture; what was captured before still goes out.
#[test]
fn changes_captured_before_a_table_is_switched_off_still_travel() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 1, 3, 1, 3);
    c.node("site-a").ok(&["tables", "disable", "obs"]);
    c.carry("site-a", "site-b");
    c.carry_with("site-b", "site-a", &["--heartbeat"]);
    c.node("site-a").ok(&["tables", "enable", "obs"]);
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// Issue 4 (review, regression test): a full export left switched-off tables out
/// entirely, yet moved the cursor past their captured changes like any export: the
/// changes captured before the switch-off never travelled, and were pruned once the
/// peer acknowledged the full bundle. Now a full export seals, of such a table, the
/// rows the range's entries name (an edit, an insert, a delete).
#[test]
fn a_full_export_carries_changes_captured_before_a_table_was_switched_off() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    let a = c.url("site-a");
    common::generate(a, 1, 2, 1, 2);
    c.carry("site-a", "site-b");
    c.carry_with("site-b", "site-a", &["--heartbeat"]);
    assert_eq!(c.verify("site-a"), c.verify("site-b"));

    rename_location(a, &location_uuid(a, 1), "renamed before switch-off");
    add_locations(a, "before-switch-off", 3);
    ferry::dev::mariadb::run_sql_blocking(
        a,
        "DELETE FROM location WHERE name = 'before-switch-off-2'",
    )
    .unwrap();
    c.node("site-a").ok(&["tables", "disable", "location"]);
    c.carry_with("site-a", "site-b", &["--full", "--peer", "site-b"]);
    // site-b's acknowledgement lets site-a prune what the full bundle covered.
    c.carry_with("site-b", "site-a", &["--heartbeat"]);
    c.carry("site-a", "site-b");
    c.node("site-a").ok(&["tables", "enable", "location"]);
    let names = |url: &str| -> Vec<String> {
        block_on(async {
            let mut db = conn(url).await;
            db.query(
                "SELECT name FROM location WHERE name LIKE 'before-switch-off-%' \
                 OR name = 'renamed before switch-off' ORDER BY name",
            )
            .await
            .unwrap()
        })
    };
    assert_eq!(
        names(c.url("site-b")),
        [
            "before-switch-off-1",
            "before-switch-off-3",
            "renamed before switch-off"
        ]
    );
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// The uuid of location `id` at the site of `url`.
fn location_uuid(url: &str, id: u32) -> String {
    block_on(async {
        let mut db = conn(url).await;
        db.query_first(format!(
            "SELECT uuid FROM location WHERE location_id = {id}"
        ))
        .await
        .unwrap()
        .unwrap()
    })
}

/// Issue 4 (review, regression test): a patient's identity is its person's uuid. A
/// person made since the last export may get a new uuid (the peer holds neither), but
/// the patient's log entry kept the old identity and no entry gave it the new one:
/// export found the patient under another identity, skipped it, and moved the cursor
/// past it, so the person arrived without its patient. Now export refuses the new uuid
/// of a row that other rows take their identity from, as it does for one that rows
/// refer to; changed back, both travel.
#[test]
fn a_new_uuid_for_a_person_made_with_its_patient_is_refused_until_undone() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    let a = c.url("site-a");
    let old = "eeeeeeee-0000-4000-8000-000000000001";
    let new = "eeeeeeee-0000-4000-8000-000000000002";
    let sql = |stmt: &str| ferry::dev::mariadb::run_sql_blocking(a, stmt).unwrap();
    sql(&format!(
        "{} UPDATE person SET uuid = '{new}' WHERE uuid = '{old}'",
        person_with_patient(old)
    ));
    let (code, _, err) = c.node("site-a").run(&["export"]);
    assert_eq!(code, 1, "{err}");
    for part in [
        "person row",
        "a patient row takes its identity from it (by patient.patient_id)",
        &format!("UPDATE person SET uuid = '{old}' WHERE person_id ="),
    ] {
        assert!(err.contains(part), "{part:?} not in {err}");
    }
    assert!(
        c.outbox("site-a", "site-b").is_empty(),
        "no bundle was written"
    );

    sql(&format!(
        "UPDATE person SET uuid = '{old}' WHERE uuid = '{new}'"
    ));
    c.carry("site-a", "site-b");
    let patients = |url: &str| -> u64 {
        block_on(async {
            let mut db = conn(url).await;
            db.query_first(format!(
                "SELECT COUNT(*) FROM patient p JOIN person s ON s.person_id = p.patient_id \
                 WHERE s.uuid = '{old}'"
            ))
            .await
            .unwrap()
            .unwrap()
        })
    };
    assert_eq!((patients(a), patients(c.url("site-b"))), (1, 1));
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// Issue 4 (review, regression test): a patient deleted with its person (as OpenMRS's
/// purge does) stopped the peer's import for good. The bundle deletes the person first
/// (parents first); the patient's identity, its person's uuid, then found no row, so its
/// delete counted as a tombstone only, the patient row stayed, and the check of deleted
/// rows refused the bundle. Now the applier remembers the local ids of the rows it
/// deleted that other rows take their identity from.
#[test]
fn a_patient_deleted_with_its_person_is_deleted_at_the_peer() {
    let c = Cluster::star(&["hub", "s1"], &Source::Fixture);
    let s1 = c.url("s1");
    let p = "22222222-0000-4000-8000-0000000000aa";
    let sql = |stmt: &str| ferry::dev::mariadb::run_sql_blocking(s1, stmt).unwrap();
    sql(&person_with_patient(p));
    c.carry("s1", "hub");
    let count = |url: &str, q: &str| -> u64 {
        block_on(async {
            let mut db = conn(url).await;
            db.query_first(q).await.unwrap().unwrap()
        })
    };
    let held = |url: &str| {
        (
            count(
                url,
                &format!("SELECT COUNT(*) FROM person WHERE uuid = '{p}'"),
            ),
            count(
                url,
                "SELECT COUNT(*) FROM patient LEFT JOIN person ON person_id = patient_id \
                 WHERE person.person_id IS NULL",
            ),
        )
    };
    let patients = |url: &str| count(url, "SELECT COUNT(*) FROM patient");
    assert_eq!(held(c.url("hub")), (1, 0));
    let before = patients(c.url("hub"));
    sql(&format!(
        "DELETE patient FROM patient JOIN person ON person_id = patient_id WHERE uuid = '{p}'; \
         DELETE FROM person WHERE uuid = '{p}'"
    ));
    let report = c.carry("s1", "hub");
    assert_eq!(report["applied"][0]["changes"], 2, "{report}");
    assert_eq!(
        held(c.url("hub")),
        (0, 0),
        "no person, and no patient without one"
    );
    assert_eq!(patients(c.url("hub")), before - 1);
    assert_eq!(c.verify("hub"), c.verify("s1"));
}

/// SQL that makes a person with `uuid` and its patient row (each statement ends in `;`).
fn person_with_patient(uuid: &str) -> String {
    format!(
        "INSERT INTO person (gender, birthdate, creator, date_created, voided, uuid) \
         VALUES ('F', '1990-01-01', 1, '2024-01-01 08:00:00', 0, '{uuid}'); \
         INSERT INTO patient (patient_id, creator, date_created, voided) \
         SELECT person_id, 1, '2024-01-01 08:00:00', 0 FROM person WHERE uuid = '{uuid}';"
    )
}

/// Adds `n` locations named `prefix-1`..`prefix-n` at the site of `url`.
fn add_locations(url: &str, prefix: &str, n: u32) {
    ferry::dev::mariadb::run_sql_blocking(
        url,
        &format!(
            "INSERT INTO location (name, creator, date_created, uuid) \
             SELECT CONCAT('{prefix}-', seq), 1, NOW(), UUID() FROM seq_1_to_{n}"
        ),
    )
    .unwrap();
}

/// A hub's range for a spoke mixes its own entries with entries it imported, and more
/// of its own after them, over several of the queries export reads the log with. Export
/// reads local entries with fewer columns and switches to every column at the first
/// imported one (issue 4, export speed); everything still arrives, and the hub's edit of
/// an imported row travels back on top of the version it was made on, with no conflict.
#[test]
fn a_range_of_local_and_imported_entries_read_in_several_queries_arrives_whole() {
    let c = Cluster::star(&["hub", "spoke-1", "spoke-2"], &Source::Fixture);
    add_locations(c.url("hub"), "hub-before", 12_000);
    add_locations(c.url("spoke-1"), "spoke", 30);
    c.carry("spoke-1", "hub");
    let uuid: String = block_on(async {
        let mut db = conn(c.url("spoke-1")).await;
        db.query_first("SELECT uuid FROM location WHERE name = 'spoke-7'")
            .await
            .unwrap()
            .unwrap()
    });
    rename_location(c.url("hub"), &uuid, "renamed at the hub");
    add_locations(c.url("hub"), "hub-after", 12_000);
    let out = c.node("hub").json(&["export", "--json"]);
    let sent: Vec<u64> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["changes"].as_u64().unwrap())
        .collect();
    // To spoke-1: the hub's 24,000 and its edit; to spoke-2 also spoke-1's 30.
    assert_eq!(sent.iter().sum::<u64>(), 24_001 + 24_030, "{out}");
    let stick = c.stick.path().to_str().unwrap();
    c.node("hub").ok(&["send", stick]);
    for s in ["spoke-1", "spoke-2"] {
        c.node(s).ok(&["receive", stick]);
        c.node(s).ok(&["import"]);
        let status = c.node(s).json(&["status", "--json"]);
        assert_eq!(status["conflicts"], serde_json::json!({}), "{s}: {status}");
    }
    assert_same(&c, &["hub", "spoke-1", "spoke-2"]);
    let name: String = block_on(async {
        let mut db = conn(c.url("spoke-1")).await;
        db.exec_first("SELECT name FROM location WHERE uuid = ?", (&uuid,))
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(name, "renamed at the hub");
}

/// A site closed for good is removed from its hub's peers (issue 4: there was no
/// `ferry peer remove`, and the hub's change log waited for that site's
/// acknowledgements for ever). Once removed, what the remaining peers acknowledged
/// leaves the log, and exports seal nothing more for it.
#[test]
fn a_removed_peer_no_longer_holds_back_the_log() {
    let c = Cluster::star(&["hub", "spoke-1", "spoke-2"], &Source::Fixture);
    common::generate(c.url("hub"), 3, 2, 1, 3);
    c.carry("hub", "spoke-1");
    c.carry_with("spoke-1", "hub", &["--heartbeat"]);
    let log = |c: &Cluster| -> u64 {
        block_on(async {
            conn(c.url("hub"))
                .await
                .query_first("SELECT COUNT(*) FROM ferry_change")
                .await
                .unwrap()
                .unwrap()
        })
    };
    let kept = log(&c);
    assert!(
        kept > 0,
        "spoke-2 has acknowledged nothing, so the log keeps it all"
    );

    let (code, _, err) = c.node("hub").run(&["peer", "remove", "spoke-9"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("there is no peer named spoke-9")
            && err.contains("hint: the peers are: spoke-1, spoke-2"),
        "{err}"
    );
    let out = c.node("hub").ok(&["peer", "remove", "spoke-2"]);
    assert!(
        out.contains("peer spoke-2 removed from")
            && out.contains("its 1 unacknowledged bundle(s) stay in"),
        "{out}"
    );
    let status = c.node("hub").json(&["status", "--json"]);
    assert_eq!(peer_names(&status["peers"]), ["spoke-1"], "{status}");

    // spoke-1's next acknowledgement is the last one the log waits for.
    c.carry_with("spoke-1", "hub", &["--heartbeat"]);
    assert_eq!(log(&c), 0, "the log had {kept} entries");
    common::generate(c.url("hub"), 4, 1, 1, 2);
    let out = c.node("hub").json(&["export", "--json"]);
    assert_eq!(peer_names(&out), ["spoke-1"], "{out}");
    assert_eq!(c.outbox("hub", "spoke-2").len(), 1);
    assert!(out[0]["missed_before"].is_null(), "{out}");

    // spoke-1 takes those changes and acknowledges them: they leave the log, though
    // spoke-2 never had them.
    c.carry("hub", "spoke-1");
    c.carry_with("spoke-1", "hub", &["--heartbeat"]);
    assert_eq!(log(&c), 0);

    // Added back, spoke-2 resumes its bundle numbers, but what was pruned meanwhile
    // does not reach it: export and status say so instead of keeping quiet.
    let key = c.node("spoke-2").ok(&["key"]);
    c.node("hub").ok(&["peer", "add", "spoke-2", key.trim()]);
    common::generate(c.url("hub"), 5, 1, 1, 2);
    let text = c.node("hub").ok(&["export"]);
    assert!(
        text.contains("spoke-2: bundle 2 with")
            && text.contains(
                "warning: spoke-2 became a peer after this node's change log was pruned up to #"
            ),
        "{text}"
    );
    let status = c.node("hub").json(&["status", "--json"]);
    let spoke2 = peer_entry(&status, "spoke-2");
    assert!(spoke2["missed_before"].as_u64().unwrap() > 0, "{status}");
    assert!(
        peer_entry(&status, "spoke-1")["missed_before"].is_null(),
        "{status}"
    );
}

/// The `peer` names of a JSON list of per-peer entries (status's peers, export's reports).
fn peer_names(list: &serde_json::Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap())
        .collect()
}

/// The entry of `peer` in a `status --json` report.
fn peer_entry<'a>(status: &'a serde_json::Value, peer: &str) -> &'a serde_json::Value {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == peer)
        .unwrap()
}

/// A site joins a network that has run for a while: the hub's log was pruned, and the
/// hub holds rows no bundle ever carried (written while capture was off, as rows from
/// before `ferry setup` are). `ferry export --full` gives the newcomer every row, the
/// deleted ones as tombstones, and the two then sync both ways with no spurious
/// conflict; the one row the newcomer held with other values is recorded as the loser.
#[test]
fn a_site_joins_a_running_network_with_a_full_export() {
    // Every site starts with two more locations, one inside the other; the hub deletes
    // both, so the newcomer receives two tombstones of rows that refer to each other.
    let pair = "INSERT INTO location (location_id, name, creator, date_created, retired, uuid) \
                VALUES (90, 'Old wing', 1, NOW(), 0, 'eeeeeeee-0000-4000-8000-000000000090'); \
                INSERT INTO location (location_id, name, creator, date_created, retired, \
                parent_location, uuid) VALUES (91, 'Old ward', 1, NOW(), 0, 90, \
                'eeeeeeee-0000-4000-8000-000000000091')";
    let c = Cluster::star_with(&["hub", "spoke-1"], &Source::Fixture, &[pair]);
    let hub = c.url("hub");
    let sql = |url: &str, s: &str| ferry::dev::mariadb::run_sql_blocking(url, s).unwrap();
    let count = |url: &str, query: &str| -> u64 {
        block_on(async { conn(url).await.query_first(query).await.unwrap().unwrap() })
    };
    let log = |url: &str| count(url, "SELECT COUNT(*) FROM ferry_change WHERE op <> 'F'");
    // A month of work, carried to spoke-1 and acknowledged: the log is pruned.
    sql(
        hub,
        "DELETE FROM global_property WHERE property = 'application.name'; \
         DELETE FROM location WHERE location_id = 91; DELETE FROM location WHERE location_id = 90",
    );
    common::generate(hub, 11, 3, 1, 3);
    c.carry("hub", "spoke-1");
    c.carry_with("spoke-1", "hub", &["--heartbeat"]);
    assert_eq!(log(hub), 0, "spoke-1 acknowledged everything");
    // Rows no bundle carries: a fixture row renamed and a new row, capture off.
    c.node("hub").ok(&["tables", "disable", "location"]);
    sql(
        hub,
        "UPDATE location SET name = 'Pharmacy (hub)' WHERE location_id = 5; \
         INSERT INTO location (name, creator, date_created, retired, uuid) \
         VALUES ('Hub annex', 1, NOW(), 0, 'dddddddd-0000-4000-8000-000000000001')",
    );
    c.node("hub").ok(&["tables", "enable", "location"]);

    // The newcomer starts from a fresh OpenMRS (here: the fixture).
    let site = common::site("newcomer", &Source::Fixture);
    sql(&site.url, pair);
    let newcomer = common::Node::new("newcomer", &site.url);
    let hub_key = c.node("hub").ok(&["key"]);
    newcomer.ok(&["peer", "add", "hub", hub_key.trim()]);
    newcomer.ok(&["setup"]);
    let key = newcomer.ok(&["key"]);
    c.node("hub").ok(&["peer", "add", "newcomer", key.trim()]);
    // An ordinary export has nothing for it, and says what it missed.
    let text = c.node("hub").ok(&["export", "--peer", "newcomer"]);
    assert!(
        text.contains("newcomer: nothing new")
            && text.contains(
                "warning: newcomer became a peer after this node's change log was pruned"
            ),
        "{text}"
    );
    common::generate(hub, 12, 1, 1, 2); // in the log, not yet sent to the newcomer

    // --full names its peers: a usage error without.
    let (code, _, err) = c.node("hub").run(&["export", "--full"]);
    assert_eq!(code, 2, "{err}");
    let out = c
        .node("hub")
        .json(&["export", "--full", "--peer", "newcomer", "--json"]);
    assert_eq!(out[0]["seq"], 1, "{out}");
    assert!(out[0]["missed_before"].is_null(), "{out}");
    let status = c.node("hub").json(&["status", "--json"]);
    assert!(
        peer_entry(&status, "newcomer")["missed_before"].is_null(),
        "{status}"
    );
    let stick = c.stick.path().to_str().unwrap();
    c.node("hub").ok(&["send", stick]);
    newcomer.ok(&["receive", stick]);
    let report = newcomer.json(&["import", "--json"]);
    assert_eq!(common::applied_seqs(&report), [1], "{report}");
    assert_eq!(
        c.verify("hub"),
        newcomer.ok(&["verify", "--json"]),
        "the newcomer holds every row the hub does"
    );
    let gone = count(
        &site.url,
        "SELECT COUNT(*) FROM global_property WHERE property = 'application.name'",
    );
    assert_eq!(
        gone, 0,
        "the tombstone (pruned from the hub's log) reached it"
    );
    let wing = count(
        &site.url,
        "SELECT COUNT(*) FROM location WHERE location_id IN (90, 91)",
    );
    assert_eq!(
        wing, 0,
        "both tombstones applied (one row refers to the other)"
    );
    // Its own 'Pharmacy' lost to the hub's, and is kept; the identical rows are no conflict.
    let conflicts = newcomer.json(&["status", "--json"])["conflicts"].clone();
    assert_eq!(conflicts, serde_json::json!({"location": 1}), "{conflicts}");
    let list = newcomer.ok(&["conflicts", "--json"]);
    assert!(
        list.contains("Pharmacy (hub)") && list.contains("\"Pharmacy\""),
        "{list}"
    );

    // Both ways from here on, with no conflict: edits of rows the full export brought,
    // from before capture and after.
    sql(
        &site.url,
        "UPDATE location SET description = 'annex, edited at the newcomer' \
         WHERE uuid = 'dddddddd-0000-4000-8000-000000000001'; \
         UPDATE person SET gender = 'F' WHERE person_id = (SELECT MAX(person_id) FROM patient)",
    );
    sql(
        hub,
        "UPDATE location SET description = 'pharmacy, edited at the hub' WHERE location_id = 5",
    );
    let stick_to = |from: &common::Node, to: &common::Node| {
        from.ok(&["export"]);
        from.ok(&["send", stick]);
        to.ok(&["receive", stick]);
        to.json(&["import", "--json"])
    };
    let back = stick_to(&newcomer, c.node("hub"));
    assert_eq!(common::applied_seqs(&back), [1], "{back}");
    let forth = stick_to(c.node("hub"), &newcomer);
    assert_eq!(common::applied_seqs(&forth), [2], "{forth}");
    assert_eq!(c.verify("hub"), newcomer.ok(&["verify", "--json"]));
    let hub_conflicts = c.node("hub").json(&["status", "--json"])["conflicts"].clone();
    assert_eq!(hub_conflicts, serde_json::json!({}), "{hub_conflicts}");
    let conflicts = newcomer.json(&["status", "--json"])["conflicts"].clone();
    assert_eq!(conflicts, serde_json::json!({"location": 1}), "{conflicts}");
    // The full bundle again is a no-op that says so.
    let again = newcomer.run(&["import", c.outbox("hub", "newcomer")[0].to_str().unwrap()]);
    assert_eq!(again.0, 0, "{}", again.2);
}

/// A full export carries every row of every synced table of the schema, the real
/// OpenMRS one included: the newcomer ends equal to the hub, the bundle holds exactly
/// the rows `ferry verify` counts, and the rows both held already (the same data) are
/// no conflict.
#[test]
fn a_full_export_carries_every_row_of_every_table() {
    for source in common::sources() {
        eprintln!("full export on {}", source.name());
        let c = Cluster::star(&["hub", "newcomer"], &source);
        common::generate(c.url("hub"), 21, 4, 2, 4);
        // A table sync is switched off for stays out (both nodes hold the same rows).
        c.node("hub").ok(&["tables", "disable", "global_property"]);
        let out = c
            .node("hub")
            .json(&["export", "--full", "--peer", "newcomer", "--json"]);
        // Per table, the bundle's live rows are the rows verify counts; the rest are
        // tombstones of rows deleted since capture began.
        let verify: serde_json::Value = serde_json::from_str(&c.verify("hub")).unwrap();
        let bundle = c.outbox("hub", "newcomer");
        let changes = common::bundle_changes(c.node("newcomer"), &bundle[0]);
        assert_eq!(
            out[0]["changes"].as_u64(),
            Some(changes.len() as u64),
            "{out}"
        );
        let mut live: std::collections::BTreeMap<String, u64> = Default::default();
        for ch in changes
            .iter()
            .filter(|ch| ch.op != ferry::bundle::Op::Delete)
        {
            *live.entry(ch.table.clone()).or_default() += 1;
        }
        let counted: std::collections::BTreeMap<String, u64> = verify["tables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["rows"].as_u64() != Some(0))
            .map(|t| {
                (
                    t["table"].as_str().unwrap().to_string(),
                    t["rows"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(live, counted, "{}", source.name());
        assert!(!live.contains_key("global_property"), "{live:?}");
        c.node("hub").ok(&["tables", "enable", "global_property"]);
        let report = c.carry("hub", "newcomer");
        assert_eq!(common::applied_seqs(&report), [1], "{report}");
        assert_eq!(c.verify("hub"), c.verify("newcomer"), "{}", source.name());
        let conflicts = c.node("newcomer").json(&["status", "--json"])["conflicts"].clone();
        assert_eq!(conflicts, serde_json::json!({}), "{}", source.name());
    }
}

/// Issue 4: a row that other rows refer to, given a new uuid by direct SQL, is logged as
/// a delete of the old uuid and an insert of the new one. A peer holding the rows that
/// refer to it refused that bundle (they would refer to a deleted row), with a hint about
/// rows added there, and its sequence from this node stopped for good. Export now
/// refuses such a range at the site that made the change, names the row and how to undo
/// it, and writes no bundle; once undone, everything travels. A new uuid for a row made
/// since the last export (which the peer does not hold) still travels.
#[test]
fn a_new_uuid_for_a_row_that_others_refer_to_is_refused_at_export_until_undone() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    let sql = |stmt: &str| ferry::dev::mariadb::run_sql_blocking(c.url("site-a"), stmt).unwrap();
    let parent = "55555555-0000-4000-8000-000000000001";
    let renamed = "55555555-0000-4000-8000-0000000000ff";
    let location = |name: &str, uuid: &str, parent: Option<&str>| {
        let parent = parent
            .map(|p| format!("(SELECT location_id FROM location AS p WHERE p.uuid = '{p}')"))
            .unwrap_or("NULL".into());
        format!(
            "INSERT INTO location (name, creator, date_created, uuid, parent_location) \
             SELECT '{name}', 1, NOW(), '{uuid}', {parent}"
        )
    };
    sql(&location("Ward", parent, None));
    sql(&location(
        "Ward bed 1",
        "55555555-0000-4000-8000-000000000002",
        Some(parent),
    ));
    c.carry("site-a", "site-b");
    let before = c.outbox("site-a", "site-b");

    sql(&format!(
        "UPDATE location SET uuid = '{renamed}' WHERE uuid = '{parent}'"
    ));
    let (code, _, err) = c.node("site-a").run(&["export"]);
    assert_eq!(code, 1, "{err}");
    for part in [
        "location row",
        parent,
        renamed,
        "location.parent_location refers to it",
        &format!("UPDATE location SET uuid = '{parent}' WHERE location_id ="),
    ] {
        assert!(err.contains(part), "{part:?} not in {err}");
    }
    assert_eq!(
        c.outbox("site-a", "site-b"),
        before,
        "no bundle was written"
    );

    // Undone. A soft reference by local id counts too: a person's "Health Center"
    // attribute (type 4, a location_id in its value).
    sql(&format!(
        "UPDATE location SET uuid = '{parent}' WHERE uuid = '{renamed}'"
    ));
    let depot = "55555555-0000-4000-8000-000000000005";
    sql(&location("Depot", depot, None));
    sql(
        "INSERT INTO person (gender, creator, date_created, voided, uuid) \
         VALUES ('F', 1, NOW(), 0, '55555555-0000-4000-8000-000000000006')",
    );
    sql(&format!(
        "INSERT INTO person_attribute (person_id, value, person_attribute_type_id, creator, \
         date_created, voided, uuid) SELECT p.person_id, l.location_id, 4, 1, NOW(), 0, \
         '55555555-0000-4000-8000-000000000007' FROM person AS p, location AS l \
         WHERE p.uuid = '55555555-0000-4000-8000-000000000006' AND l.uuid = '{depot}'"
    ));
    c.carry("site-a", "site-b");
    sql(&format!(
        "UPDATE location SET uuid = '{renamed}' WHERE uuid = '{depot}'"
    ));
    let (code, _, err) = c.node("site-a").run(&["export"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("person_attribute.value refers to it"), "{err}");
    sql(&format!(
        "UPDATE location SET uuid = '{depot}' WHERE uuid = '{renamed}'"
    ));

    // Meanwhile a row made since the last export, with a row referring to it, gets a
    // new uuid: the peer holds neither, so that one travels.
    let fresh = "55555555-0000-4000-8000-000000000003";
    let fresh_renamed = "55555555-0000-4000-8000-0000000000fe";
    sql(&location("Clinic", fresh, None));
    sql(&location(
        "Clinic room",
        "55555555-0000-4000-8000-000000000004",
        Some(fresh),
    ));
    sql(&format!(
        "UPDATE location SET uuid = '{fresh_renamed}' WHERE uuid = '{fresh}'"
    ));
    let r = c.carry("site-a", "site-b");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    assert_same(&c, &["site-a", "site-b"]);
    let parent_of = |uuid: &str| -> Option<String> {
        block_on(async {
            let mut db = conn(c.url("site-b")).await;
            db.exec_first(
                "SELECT p.uuid FROM location AS l JOIN location AS p \
                 ON p.location_id = l.parent_location WHERE l.uuid = ?",
                (uuid,),
            )
            .await
            .unwrap()
        })
    };
    assert_eq!(
        parent_of("55555555-0000-4000-8000-000000000002").as_deref(),
        Some(parent)
    );
    assert_eq!(
        parent_of("55555555-0000-4000-8000-000000000004").as_deref(),
        Some(fresh_renamed)
    );
}

/// MariaDB fires no trigger for the rows a foreign key's `ON DELETE CASCADE` deletes
/// (OpenMRS has one: `users.changed_by`, `user_who_changed_user`), and import writes
/// with foreign key checks off, so the peer's own cascade does not run either. A user
/// deleted with the users it changed (and those they changed) must leave the peer
/// without them too, not with users that refer to nothing. Before the cascade was
/// captured, the peer refused the bundle for good ("… still refers to"; issue 4).
#[test]
fn a_user_deleted_with_the_users_it_changed_leaves_every_site_without_them() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    let uuid = |n: u32| format!("66666666-0000-4000-8000-{n:012}");
    let sql = |stmts: &[String]| {
        block_on(async {
            let mut db = conn(c.url("site-a")).await;
            for s in stmts {
                db.query_drop(s).await.unwrap();
            }
        })
    };
    // Three users, each changed by the one before: deleting the first cascades to the
    // other two (the third through the second).
    let mut stmts = Vec::new();
    for n in 1..=3 {
        stmts.push(format!(
            "INSERT INTO person (gender, creator, date_created, voided, uuid) \
             VALUES ('F', 1, '2024-01-01 08:00:00', 0, '{}')",
            uuid(n)
        ));
        let changed_by = match n {
            1 => "NULL".to_string(),
            _ => format!(
                "(SELECT u.user_id FROM users AS u WHERE u.uuid = '{}')",
                uuid(10 + n - 1)
            ),
        };
        stmts.push(format!(
            "INSERT INTO users (system_id, username, creator, date_created, changed_by, \
             person_id, uuid) SELECT 'cascade-{n}', 'cascade{n}', 1, '2024-01-01 08:00:00', \
             {changed_by}, p.person_id, '{}' FROM person AS p WHERE p.uuid = '{}'",
            uuid(10 + n),
            uuid(n)
        ));
    }
    sql(&stmts);
    let r = c.carry("site-a", "site-b");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    let users = |site: &str| -> u64 {
        block_on(async {
            let mut db = conn(c.url(site)).await;
            db.query_first("SELECT COUNT(*) FROM users WHERE username LIKE 'cascade%'")
                .await
                .unwrap()
                .unwrap()
        })
    };
    assert_eq!(users("site-b"), 3);

    sql(&[format!("DELETE FROM users WHERE uuid = '{}'", uuid(11))]);
    assert_eq!(
        users("site-a"),
        0,
        "the cascade deleted all three at site-a"
    );
    let r = c.carry("site-a", "site-b");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(users("site-b"), 0, "site-b holds none of the three");
    assert_same(&c, &["site-a", "site-b"]);
}
