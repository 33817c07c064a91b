//! Bundles of one sender applied together in one transaction (a bundle refers to a row
//! only a later one brings), on real MariaDB: a reference filled in at the end of the
//! run does not overwrite a later bundle's value, and a corrupt later bundle is the one
//! that goes to quarantine.

mod common;

use std::path::Path;

use common::{block_on, conn, Cluster, Source};
use mysql_async::prelude::*;

const LOCATION: &str = common::UNSENT_LOCATION;
const VISIT: &str = common::VISIT_TO_UNSENT;

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn sql(url: &str, stmt: &str) {
    block_on(async {
        let mut db = conn(url).await;
        db.query_drop(stmt).await.unwrap();
    });
}

/// The uuid of the location the visit points to.
fn visit_location(url: &str) -> Option<String> {
    block_on(async {
        let mut db = conn(url).await;
        let v: Option<String> = db
            .exec_first(
                "SELECT l.uuid FROM visit v JOIN location l ON l.location_id = v.location_id \
                 WHERE v.uuid = ?",
                (VISIT,),
            )
            .await
            .unwrap();
        v
    })
}

/// Bundle 1 reaches site-b; bundle 2 (exported, not carried) holds a visit that refers
/// to a location created at site-a while location capture was off: it cannot apply
/// alone.
fn stuck_visit(c: &Cluster) {
    common::generate(c.url("site-a"), 5, 1, 1, 4);
    c.carry("site-a", "site-b");
    common::visit_to_an_unsent_location(c, "site-a");
    c.node("site-a").ok(&["export"]);
}

/// Issue 4, bug: a pending fixup of an earlier bundle of a run overwrote a later
/// bundle's update of the same row and column. Bundle 2 inserts a visit whose location
/// is not yet sent (a placeholder, filled in at the end of the run); bundle 3 brings the
/// location (touched by the operator) and re-points the visit to another location.
/// Bundles 2 and 3 apply together, and the visit must keep bundle 3's location, not go
/// back to the one bundle 2 named.
#[test]
fn a_later_bundle_of_a_run_keeps_its_reference_over_an_earlier_fixup() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    stuck_visit(&c);
    sql(
        c.url("site-a"),
        &format!("UPDATE location SET description = 'now synced' WHERE uuid = '{LOCATION}'"),
    );
    sql(
        c.url("site-a"),
        &format!(
            "UPDATE visit SET location_id = (SELECT MIN(location_id) FROM location) \
             WHERE uuid = '{VISIT}'"
        ),
    );
    let at_a = visit_location(c.url("site-a"));
    assert!(at_a.is_some() && at_a.as_deref() != Some(LOCATION));

    let r = c.carry("site-a", "site-b");
    assert_eq!(common::applied_seqs(&r), vec![2, 3], "{r}");
    assert_eq!(
        visit_location(c.url("site-b")),
        at_a,
        "the visit points to bundle 3's location"
    );
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// Issue 4, bug: when bundles were tried together and a later one failed verification,
/// the error was pinned on the first: the good bundle went to quarantine and the corrupt
/// one stayed in the inbox. Now the corrupt bundle 3 goes to quarantine; bundle 2 stays
/// in the inbox, reported with its own missing reference, and applies once a genuine
/// bundle 3 (and the operator's fix) arrive.
#[test]
fn a_corrupt_later_bundle_of_a_run_is_the_one_quarantined() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    stuck_visit(&c);
    common::generate(c.url("site-a"), 6, 1, 1, 1);
    c.node("site-a").ok(&["export"]);
    // Bundle 1 is not yet acknowledged: it is still in the outbox.
    let files = c.outbox("site-a", "site-b")[1..].to_vec();
    assert_eq!(files.len(), 2, "{files:?}");
    let inbox = c.node("site-b").dir.path().join("inbox");
    for f in &files {
        std::fs::copy(f, inbox.join(f.file_name().unwrap())).unwrap();
    }
    let name2 = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let name3 = files[1].file_name().unwrap().to_string_lossy().into_owned();
    // Bundle 3's body is damaged in transit.
    let three = inbox.join(&name3);
    let mut bytes = std::fs::read(&three).unwrap();
    let n = bytes.len();
    assert!(n > 2000, "bundle 3 is {n} bytes");
    bytes[n - 2000] ^= 0xff;
    std::fs::write(&three, bytes).unwrap();
    let before = c.verify("site-b");

    let (code, out, err) = c.node("site-b").run(&["import", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["applied"], serde_json::json!([]), "{r}");
    let refused = r["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{r}");
    assert_eq!(refused[0]["file"], name3.as_str(), "{r}");
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["file"], name2.as_str(), "{r}");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("refers through location_id to location row"),
        "{r}"
    );
    let quarantined = names_in(&c.node("site-b").dir.path().join("quarantine"));
    assert!(
        quarantined.iter().any(|q| q.starts_with(&name3)),
        "{quarantined:?}"
    );
    assert!(
        !quarantined.iter().any(|q| q.starts_with(&name2)),
        "{quarantined:?}"
    );
    let waiting = names_in(&inbox);
    assert!(waiting.contains(&name2), "{waiting:?}");
    assert!(!waiting.contains(&name3), "{waiting:?}");
    assert_eq!(c.verify("site-b"), before, "nothing was applied");

    // The genuine bundle 3 comes again, with the operator's fix behind it (bundle 4):
    // all three apply.
    std::fs::copy(&files[1], inbox.join(&name3)).unwrap();
    sql(
        c.url("site-a"),
        &format!("UPDATE location SET description = 'now synced' WHERE uuid = '{LOCATION}'"),
    );
    let r = c.carry("site-a", "site-b");
    assert_eq!(common::applied_seqs(&r), vec![2, 3, 4], "{r}");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// Regression (issue 4, found by review): two imports started together (the daemon's
/// pass and a manual import) both listed the inbox before taking the import lock; the
/// one that waited then failed (exit 1, "cannot read" the file the other had applied
/// and removed) instead of finding it already applied.
#[test]
fn two_imports_started_together_both_succeed() {
    use std::process::{Command, Stdio};
    let c = Cluster::star(&["hub", "clinic"], &Source::Fixture);
    sql(
        c.url("hub"),
        "INSERT INTO person (gender, birthdate, creator, date_created, voided, uuid) \
         VALUES ('F', '1990-05-01', 1, '2024-01-01 08:00:00', 0, '22222222-0000-4000-8000-00000000000a')",
    );
    let stick = c.stick.path().to_str().unwrap().to_string();
    c.node("hub").ok(&["export"]);
    c.node("hub").ok(&["send", &stick]);
    c.node("clinic").ok(&["receive", &stick]);
    let config = c.node("clinic").config.clone();
    let outputs = block_on(async {
        // Stands for an import already running: both new ones list the inbox, then wait.
        let mut lock = conn(c.url("clinic")).await;
        let got: Option<i64> = lock
            .query_first("SELECT GET_LOCK(CONCAT('ferry-import-', DATABASE()), 60)")
            .await
            .unwrap();
        assert_eq!(got, Some(1));
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .arg("--config")
                .arg(&config)
                .args(["import", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        std::thread::sleep(std::time::Duration::from_secs(4));
        lock.query_drop("DO RELEASE_LOCK(CONCAT('ferry-import-', DATABASE()))")
            .await
            .unwrap();
        [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()]
    });
    let mut applied = 0;
    for o in &outputs {
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(o.status.code(), Some(0), "an import failed:\n{out}\n{err}");
        let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
        applied += rep["applied"].as_array().map_or(0, |a| a.len());
    }
    assert_eq!(applied, 1, "the bundle applied once, by one of the two");
    let n: Option<u64> = block_on(async {
        let mut db = conn(c.url("clinic")).await;
        db.query_first(
            "SELECT COUNT(*) FROM person WHERE uuid = '22222222-0000-4000-8000-00000000000a'",
        )
        .await
        .unwrap()
    });
    assert_eq!(n, Some(1));
}
