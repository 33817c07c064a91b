//! A node whose database was restored from a backup rejoins (`ferry rejoin`), on real
//! MariaDB: the bundle chains go on where its peers hold them, the changes made since
//! the restore travel (their log positions reused numbers the peers had acknowledged),
//! the peers send back every row the backup lacks, with no false conflicts, and every
//! node converges. Issue 4: before, such a node could only be set up anew.

mod common;

use common::{block_on, conflicts, conn, Cluster, Source};
use mysql_async::prelude::*;
use serde_json::Value as Json;

fn exec(url: &str, sql: &str) {
    block_on(async {
        let mut db = conn(url).await;
        db.query_drop(sql).await.unwrap();
    })
}

fn first_string(url: &str, sql: &str) -> Option<String> {
    block_on(async {
        let mut db = conn(url).await;
        db.query_first(sql).await.unwrap()
    })
}

/// Each spoke to the hub, then the hub to each spoke.
fn round(c: &Cluster) {
    c.carry("site-a", "hub");
    c.carry("site-b", "hub");
    c.carry("hub", "site-a");
    c.carry("hub", "site-b");
}

/// The conflicts recorded at a node: (table, identity, winner's node, loser's node).
fn conflict_keys(c: &Cluster, at: &str) -> Vec<(String, String, String, String)> {
    let mut keys: Vec<_> = conflicts(c, at)
        .iter()
        .map(|k| {
            let s = |v: &Json| v.as_str().unwrap_or_default().to_string();
            (
                s(&k["table"]),
                s(&k["identity"]),
                s(&k["winner"]["node"]),
                s(&k["loser"]["node"]),
            )
        })
        .collect();
    keys.sort();
    keys
}

/// The rows a restored node changed since the restore (the entries `ferry rejoin`
/// moved), read right after it.
fn changed_since_restore(
    c: &Cluster,
    restored: &str,
    report: &Json,
) -> std::collections::BTreeSet<(String, String)> {
    let moved_to = report["moved_to"].as_u64().unwrap();
    block_on(async {
        let mut db = conn(c.url(restored)).await;
        db.exec(
            "SELECT table_name, row_key FROM ferry_change WHERE change_id >= ? AND origin IS NULL",
            (moved_to,),
        )
        .await
        .unwrap()
        .into_iter()
        .collect()
    })
}

/// Every conflict recorded since `before` (per node: hub, site-a, site-b) is a real one
/// the restore made: on a row the restored node changed after the restore, without
/// seeing the version it had lost, with that node's version on one side. Rows changed
/// elsewhere since the backup came back as fast-forwards, recording nothing.
fn only_conflicts_the_restore_made(
    c: &Cluster,
    restored: &str,
    before: &[Vec<(String, String, String, String)>],
    since_restore: &std::collections::BTreeSet<(String, String)>,
) {
    for (k, at) in ["hub", "site-a", "site-b"].iter().enumerate() {
        for key in conflict_keys(c, at) {
            if before[k].contains(&key) {
                continue;
            }
            let (table, identity, winner, loser) = &key;
            assert!(
                since_restore.contains(&(table.clone(), identity.clone()))
                    && (winner == restored || loser == restored),
                "{at}: a conflict the restore does not explain: {key:?}"
            );
        }
    }
}

/// `ferry rejoin` at `node` exits 1 with an error that contains `needle` and a hint.
fn refused(c: &Cluster, node: &str, needle: &str) -> String {
    let (code, _, err) = c.node(node).run(&["rejoin"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(needle) && err.contains("hint:"), "{err}");
    err
}

fn peer<'a>(status: &'a Json, name: &str) -> &'a Json {
    status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == name)
        .unwrap_or_else(|| panic!("no peer {name} in {status}"))
}

/// The new location a node makes by direct SQL, with a known uuid.
fn add_location(url: &str, uuid: &str) {
    exec(
        url,
        &format!(
            "INSERT INTO location (name, creator, date_created, retired, uuid) \
             VALUES ('{uuid}', 1, NOW(), 0, '{uuid}')"
        ),
    );
}

fn has_location(c: &Cluster, at: &str, uuid: &str) -> bool {
    first_string(
        c.url(at),
        &format!("SELECT uuid FROM location WHERE uuid = '{uuid}'"),
    )
    .is_some()
}

/// Spoke site-a's disk fails; last night's backup goes back, and the clinic works on
/// before anyone notices. `ferry rejoin` puts it back in step: what it sealed and
/// applied since the backup comes back from the hub, what it did since the restore
/// reaches everyone, and no conflict is recorded for rows the hub changed meanwhile.
#[test]
fn a_spoke_restored_from_a_backup_rejoins_and_every_node_converges() {
    let c = Cluster::star(&["hub", "site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 11, 3, 1, 3);
    common::generate(c.url("site-b"), 12, 3, 1, 3);
    // A location site-a makes before the backup and edits again after the rejoin.
    add_location(c.url("site-a"), "aaaaaaaa-0000-4000-8000-00000000da00");
    round(&c);
    // A patient site-a registered, which site-b edits after the backup.
    let edited = first_string(
        c.url("site-a"),
        "SELECT uuid FROM person ORDER BY person_id DESC LIMIT 1",
    )
    .unwrap();
    let night = tempfile::tempdir().unwrap();
    let backup = night.path().join("site-a.sql");
    common::backup(c.url("site-a"), &backup);

    // The next day, carried everywhere: more at site-a than it does after the restore,
    // so that the restored log hands out positions the hub has acknowledged.
    common::generate(c.url("site-a"), 13, 12, 1, 4);
    add_location(c.url("site-a"), "aaaaaaaa-0000-4000-8000-00000000da01");
    common::generate(c.url("site-b"), 14, 3, 1, 3);
    exec(
        c.url("site-b"),
        &format!("UPDATE person SET gender = 'F' WHERE uuid = '{edited}'"),
    );
    round(&c);
    round(&c);
    assert_eq!(c.verify("site-a"), c.verify("site-b"));

    // The disk fails; last night's backup goes back, and the clinic goes on.
    common::restore(c.url("site-a"), &backup);
    add_location(c.url("site-a"), "aaaaaaaa-0000-4000-8000-00000000da02");
    common::generate(c.url("site-a"), 15, 2, 1, 2);
    let (code, _, err) = c.node("site-a").run(&["export"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("run `ferry rejoin` on this node"), "{err}");

    // Refusals that change nothing: a record from before rejoin existed, and a log
    // whose entries since the restore are out of order with the clock.
    let record = c.node("site-a").dir.path().join("sequences.json");
    let kept = std::fs::read_to_string(&record).unwrap();
    let mut old: Json = serde_json::from_str(&kept).unwrap();
    for p in old["peers"].as_object_mut().unwrap().values_mut() {
        let p = p.as_object_mut().unwrap();
        p.retain(|k, _| k == "sent" || k == "applied");
    }
    std::fs::write(&record, old.to_string()).unwrap();
    refused(
        &c,
        "site-a",
        "the state directory's record of hub lacks what rejoin needs",
    );
    std::fs::write(&record, kept).unwrap();
    exec(
        c.url("site-a"),
        "INSERT INTO ferry_change (table_name, row_key, op, wall_us) VALUES ('location', 'x', 'U', 1)",
    );
    refused(
        &c,
        "site-a",
        "cannot tell the changes made since the restore",
    );
    exec(
        c.url("site-a"),
        "DELETE FROM ferry_change WHERE row_key = 'x' AND wall_us = 1",
    );
    // The first change since the restore written by a clock two days behind, set right
    // before the next: it would pass for the backup's, and never travel.
    let da02 = "row_key = 'aaaaaaaa-0000-4000-8000-00000000da02'";
    exec(
        c.url("site-a"),
        &format!("UPDATE ferry_change SET wall_us = wall_us - 172800000000 WHERE {da02}"),
    );
    refused(
        &c,
        "site-a",
        "cannot tell the changes made since the restore",
    );
    exec(
        c.url("site-a"),
        &format!("UPDATE ferry_change SET wall_us = wall_us + 172800000000 WHERE {da02}"),
    );
    // A clock a day behind (as the node's config shifts it, and setup bakes into the
    // triggers) cannot tell them apart.
    let config = &c.node("site-a").config;
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, format!("clock_offset_seconds = -86400\n{text}")).unwrap();
    // A config out of step with the triggers.
    refused(&c, "site-a", "run `ferry setup`");
    c.node("site-a").ok(&["setup"]);
    let err = refused(&c, "site-a", "the database's clock reads");
    assert!(err.contains("Set this machine's clock right"), "{err}");
    std::fs::write(config, text).unwrap();
    c.node("site-a").ok(&["setup"]);
    let (code, _, err) = c.node("site-a").run(&["export"]);
    assert_eq!(code, 1, "still behind: {err}");

    let report = c.node("site-a").json(&["rejoin", "--json"]);
    assert_eq!(report["peers"][0]["peer"], "hub", "{report}");
    let since_restore = changed_since_restore(&c, "site-a", &report);
    let sealed = &report["peers"][0]["sealed"];
    assert!(sealed[0].as_u64() < sealed[1].as_u64(), "{report}");
    let applied = &report["peers"][0]["applied"];
    assert!(applied[0].as_u64() < applied[1].as_u64(), "{report}");
    assert!(report["moved_entries"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["moved_from"].as_u64().unwrap() <= report["boundary"].as_u64().unwrap(),
        "the entries made since the restore took positions the hub knew: {report}"
    );
    let status = c.node("site-a").json(&["status", "--json"]);
    assert_eq!(
        peer(&status, "hub")["behind_record"],
        Json::Null,
        "{status}"
    );
    assert_eq!(peer(&status, "hub")["rejoining"], "to_ask", "{status}");
    // The hub's copy of a bundle site-a applied before the failure, carried again: a
    // duplicate, not a conflicting bundle to quarantine.
    let stick = c.stick.path().to_str().unwrap();
    c.node("hub").ok(&["send", "--again", stick]);
    c.node("site-a").ok(&["receive", stick]);
    let r = c.node("site-a").json(&["import", "--json"]);
    assert_eq!(r["applied"], serde_json::json!([]), "{r}");
    assert_eq!(r["refused"], serde_json::json!([]), "{r}");
    assert_eq!(r["duplicates"].as_array().unwrap().len(), 1, "{r}");
    // A second rejoin finds nothing to do.
    refused(&c, "site-a", "nothing to rejoin");

    // site-a's next bundle asks; the hub applies it and answers with every row.
    let r = c.carry("site-a", "hub");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    // Meanwhile site-a edits a row of its own from the backup: the answer brings the
    // backup's version of it back, which is no conflict.
    exec(
        c.url("site-a"),
        "UPDATE location SET description = 'edited after the rejoin' \
         WHERE uuid = 'aaaaaaaa-0000-4000-8000-00000000da00'",
    );
    let status = c.node("site-a").json(&["status", "--json"]);
    assert_eq!(peer(&status, "hub")["rejoining"], "asked", "{status}");
    let hub_status = c.node("hub").json(&["status", "--json"]);
    assert!(
        peer(&hub_status, "site-a")["rebuild_since_us"].is_i64(),
        "{hub_status}"
    );
    let exported = c
        .node("hub")
        .json(&["export", "--json", "--peer", "site-a"]);
    assert_eq!(exported[0]["rebuild"], true, "{exported}");
    c.node("hub").ok(&["send", stick]);
    c.node("site-a").ok(&["receive", stick]);
    let r = c.node("site-a").json(&["import", "--json"]);
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    let status = c.node("site-a").json(&["status", "--json"]);
    assert_eq!(peer(&status, "hub")["rejoining"], Json::Null, "{status}");
    let hub_status = c.node("hub").json(&["status", "--json"]);
    assert_eq!(
        peer(&hub_status, "site-a")["rebuild_since_us"],
        Json::Null,
        "{hub_status}"
    );

    // What site-a lost came back; what it did since the restore went everywhere.
    c.carry("hub", "site-b");
    round(&c);
    for at in ["hub", "site-a", "site-b"] {
        for l in ["da00", "da01", "da02"] {
            let uuid = format!("aaaaaaaa-0000-4000-8000-00000000{l}");
            assert!(has_location(&c, at, &uuid), "{at} lacks location {uuid}");
        }
    }
    assert_eq!(
        first_string(
            c.url("site-a"),
            &format!("SELECT gender FROM person WHERE uuid = '{edited}'")
        )
        .as_deref(),
        Some("F")
    );
    let a = c.verify("site-a");
    assert_eq!(a, c.verify("hub"));
    assert_eq!(a, c.verify("site-b"));
    only_conflicts_the_restore_made(&c, "site-a", &[vec![], vec![], vec![]], &since_restore);

    // Sync goes on as before: no second full export, and every change is acknowledged.
    common::generate(c.url("site-a"), 16, 2, 1, 2);
    common::generate(c.url("site-b"), 17, 2, 1, 2);
    round(&c);
    let exported = c.node("hub").json(&["export", "--json", "--heartbeat"]);
    assert!(
        exported
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["rebuild"] == false),
        "{exported}"
    );
    round(&c);
    round(&c);
    let a = c.verify("site-a");
    assert_eq!(a, c.verify("hub"));
    assert_eq!(a, c.verify("site-b"));
    let status = c.node("site-a").json(&["status", "--json"]);
    assert_eq!(
        peer(&status, "hub")["unacknowledged_changes"],
        0,
        "the rows that came back are acknowledged like any other: {status}"
    );
}

/// The hub's database goes back to last night's backup. Both spokes hold what it lost
/// (its own changes too, which came back to it through either spoke), and it relays:
/// after `ferry rejoin` every node converges, nothing is recorded as a conflict, and
/// the rows that came back are acknowledged by both spokes and leave the hub's log.
#[test]
fn a_hub_restored_from_a_backup_rejoins_and_relays_again() {
    let c = Cluster::star(&["hub", "site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 21, 3, 1, 3);
    common::generate(c.url("site-b"), 22, 3, 1, 3);
    round(&c);
    let night = tempfile::tempdir().unwrap();
    let backup = night.path().join("hub.sql");
    common::backup(c.url("hub"), &backup);

    common::generate(c.url("site-a"), 23, 6, 1, 3);
    common::generate(c.url("site-b"), 24, 6, 1, 3);
    common::generate(c.url("hub"), 25, 6, 1, 3);
    add_location(c.url("hub"), "aaaaaaaa-0000-4000-8000-00000000db01");
    round(&c);
    round(&c);
    // The spokes' generators retired the same location: a real conflict, recorded at
    // the hub (and lost with its restore).
    let before: Vec<_> = ["hub", "site-a", "site-b"]
        .iter()
        .map(|at| conflict_keys(&c, at))
        .collect();

    common::restore(c.url("hub"), &backup);
    add_location(c.url("hub"), "aaaaaaaa-0000-4000-8000-00000000db02");
    common::generate(c.url("hub"), 26, 2, 1, 2);
    let report = c.node("hub").json(&["rejoin", "--json"]);
    let names: Vec<&str> = report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["site-a", "site-b"], "{report}");
    let since_restore = changed_since_restore(&c, "hub", &report);

    for _ in 0..3 {
        round(&c);
    }
    for at in ["hub", "site-a", "site-b"] {
        for l in ["db01", "db02"] {
            let uuid = format!("aaaaaaaa-0000-4000-8000-00000000{l}");
            assert!(has_location(&c, at, &uuid), "{at} lacks location {uuid}");
        }
    }
    // The conflicts from before the failure, recorded again at the hub when it met the
    // spokes' concurrent versions once more; and the real ones the restore made.
    only_conflicts_the_restore_made(&c, "hub", &before, &since_restore);
    assert_eq!(conflict_keys(&c, "hub"), before[0]);
    let hub = c.verify("hub");
    assert_eq!(hub, c.verify("site-a"));
    assert_eq!(hub, c.verify("site-b"));
    // The spokes acknowledge the hub's last bundles.
    c.carry_with("site-a", "hub", &["--heartbeat"]);
    c.carry_with("site-b", "hub", &["--heartbeat"]);
    let status = c.node("hub").json(&["status", "--json"]);
    for p in ["site-a", "site-b"] {
        assert_eq!(peer(&status, p)["rejoining"], Json::Null, "{status}");
        assert_eq!(peer(&status, p)["unacknowledged_changes"], 0, "{status}");
    }
    for s in ["site-a", "site-b"] {
        let st = c.node(s).json(&["status", "--json"]);
        assert_eq!(peer(&st, "hub")["rebuild_since_us"], Json::Null, "{st}");
    }
}
