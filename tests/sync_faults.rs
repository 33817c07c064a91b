//! Sync under bad delivery and failure, on real MariaDB: bundles out of order,
//! duplicated and held back; a reference to a row nobody sent, and one to a row another
//! sender's bundle brings; an import that finds another one running; the importing
//! server killed with `kill -9` in the middle of a large bundle; a second config
//! naming another node on a node's database.

mod common;

use std::time::{Duration, Instant};

use common::{block_on, conn, Cluster, Source};
use mysql_async::prelude::*;

fn import(c: &Cluster, node: &str, file: &std::path::Path) -> serde_json::Value {
    c.node(node)
        .json(&["import", "--json", file.to_str().unwrap()])
}

#[test]
fn reverse_order_duplicates_and_held_bundles_all_converge() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    for round in 0..5 {
        common::generate(c.url("site-a"), 300 + round, 3, 1, 4);
        c.node("site-a").ok(&["export"]);
    }
    let files = c.outbox("site-a", "site-b");
    assert_eq!(files.len(), 5);

    // Reverse order: 3 and 2 are held, naming the missing bundle; 1 releases them.
    let r = import(&c, "site-b", &files[2]);
    assert_eq!(r["applied"], serde_json::json!([]), "{r}");
    assert_eq!(r["held"][0]["waiting_for"], 1, "{r}");
    assert!(c
        .node("site-b")
        .ok(&["import", files[1].to_str().unwrap()])
        .contains("waiting for bundle 1 from site-a"));
    let status = c.node("site-b").json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["waiting_for"], 1, "{status}");
    assert_eq!(
        status["peers"][0]["held_bundles"],
        serde_json::json!([2, 3]),
        "{status}"
    );
    let r = import(&c, "site-b", &files[0]);
    assert_eq!(common::applied_seqs(&r), vec![1, 2, 3], "{r}");

    // A duplicate is a no-op that says so, and changes nothing.
    let before = c.verify("site-b");
    let out = c.node("site-b").ok(&["import", files[1].to_str().unwrap()]);
    assert!(out.contains("already applied"), "{out}");
    assert_eq!(c.verify("site-b"), before);

    // One held back, then released.
    let r = import(&c, "site-b", &files[4]);
    assert_eq!(r["held"][0]["waiting_for"], 4, "{r}");
    let r = import(&c, "site-b", &files[3]);
    assert_eq!(r["applied"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

#[test]
fn a_reference_to_a_row_nobody_sent_fails_the_bundle_and_names_it() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 5, 1, 1, 4);
    c.carry("site-a", "site-b");
    // A location created at site-a while location capture was off there, and a visit
    // (captured) that refers to it.
    common::visit_to_an_unsent_location(&c, "site-a");
    // A second such location and visit: the error names both rows (issue 4: it named
    // one per import, so the operator fixed them one import at a time).
    common::visit_to_unsent(
        &c,
        "site-a",
        "cccccccc-0000-4000-8000-000000000003",
        "cccccccc-0000-4000-8000-000000000004",
    );
    let before = c.verify("site-b");
    let stick = c.stick.path().to_str().unwrap();
    c.node("site-a").ok(&["export"]);
    c.node("site-a").ok(&["send", stick]);
    c.node("site-b").ok(&["receive", stick]);
    let (code, out, err) = c.node("site-b").run(&["import"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("visit row cccccccc-0000-4000-8000-000000000002 refers through location_id to location row cccccccc-0000-4000-8000-000000000001, which is neither in the bundle from site-a nor in this database"),
        "{out}"
    );
    assert!(
        out.contains("; 1 more row(s) are missing as well: location row cccccccc-0000-4000-8000-000000000003"),
        "{out}"
    );
    assert!(
        out.contains("hint: check that location is enabled on site-a"),
        "{out}"
    );
    assert_eq!(
        c.verify("site-b"),
        before,
        "nothing of the bundle was applied"
    );
    let status = c.node("site-b").json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["last_received_seq"], 1, "{status}");
    // Between imports, status says which bundle waits and why (issue 4: it showed
    // nothing, as if all were well).
    let blocked = &status["peers"][0]["blocked"];
    assert_eq!(blocked["seq"], 2, "{status}");
    assert!(
        blocked["error"]
            .as_str()
            .unwrap()
            .contains("location row cccccccc-0000-4000-8000-000000000001")
            && blocked["error"]
                .as_str()
                .unwrap()
                .contains("hint: check that location is enabled on site-a"),
        "{status}"
    );
    let text = c.node("site-b").ok(&["status"]);
    assert!(
        text.contains("bundle 2 from site-a waits in the inbox: it failed to apply")
            && text.contains("hint: check that location is enabled on site-a"),
        "{text}"
    );

    // The operator's fix at site-a: touch the row so that it is captured. Its bundle
    // comes after the stuck one; both apply together, in one transaction.
    block_on(async {
        let mut db = conn(c.url("site-a")).await;
        db.query_drop("UPDATE location SET description = 'now synced' WHERE uuid IN ('cccccccc-0000-4000-8000-000000000001', 'cccccccc-0000-4000-8000-000000000003')")
            .await
            .unwrap();
    });
    let r = c.carry("site-a", "site-b");
    assert_eq!(common::applied_seqs(&r), vec![2, 3], "{r}");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
    let status = c.node("site-b").json(&["status", "--json"]);
    assert!(status["peers"][0]["blocked"].is_null(), "{status}");
}

/// Imports take turns (issue 4: skipping the version probe of rows new to a node relies
/// on being the only import): one that waited its `import_wait_seconds` for another
/// applies nothing, says why, and leaves the bundle waiting; it applies once the other
/// is done.
#[test]
fn an_import_that_finds_another_running_applies_nothing_and_says_so() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 7, 1, 1, 2);
    let stick = c.stick.path().to_str().unwrap();
    c.node("site-a").ok(&["export"]);
    c.node("site-a").ok(&["send", stick]);
    c.node("site-b").ok(&["receive", stick]);
    let config = &c.node("site-b").config;
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, format!("import_wait_seconds = 1\n{text}")).unwrap();
    let before = c.verify("site-b");
    block_on(async {
        // Another import's lock, held by a session of its own.
        let mut other = conn(c.url("site-b")).await;
        let got: Option<i64> = other
            .query_first("SELECT GET_LOCK(CONCAT('ferry-import-', DATABASE()), 0)")
            .await
            .unwrap();
        assert_eq!(got, Some(1));
        let (code, out, err) = c.node("site-b").run(&["import"]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains("another import into this database ran all the 1 s this one waited"),
            "{err}"
        );
        assert!(err.contains("hint: nothing was applied"), "{err}");
        other
            .query_drop("DO RELEASE_LOCK(CONCAT('ferry-import-', DATABASE()))")
            .await
            .unwrap();
    });
    assert_eq!(c.verify("site-b"), before, "nothing was applied");
    let r = c.node("site-b").json(&["import", "--json"]);
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

#[test]
fn killing_the_server_mid_import_leaves_all_or_nothing() {
    let mut c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 77, 600, 1, 4);
    c.node("site-a").ok(&["export"]);
    let file = c.outbox("site-a", "site-b").remove(0);
    let before = c.verify("site-b");
    let b = c.index("site-b");
    let url = c.url("site-b").to_string();

    // Start the import, wait until its transaction has written rows, then kill -9.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(&c.node("site-b").config)
        .args(["import", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut watch = rt.block_on(conn(&url));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut killed = false;
    while Instant::now() < deadline {
        // Deep in the bundle: persons, visits and encounters are written, obs are going in.
        let busy: u64 = rt.block_on(async {
            let n: Option<u64> = watch
                .query_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                     WHERE INFO LIKE 'INSERT INTO `obs`%' OR INFO LIKE 'INSERT INTO `orders`%'",
                )
                .await
                .unwrap();
            n.unwrap_or(0)
        });
        if busy > 0 {
            c.sites[b].server_mut().kill9();
            killed = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(watch);
    drop(rt);
    if !killed {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the import was not caught in the middle of its transaction: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = child.wait_with_output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "the import failed when its server died"
    );
    c.sites[b].server_mut().restart().unwrap();

    // Nothing of the bundle is there: same content, no ledger entry, bundle waiting.
    assert_eq!(c.verify("site-b"), before, "not applied at all");
    let ledger: u64 = block_on(async {
        let mut db = conn(&url).await;
        db.query_first("SELECT COUNT(*) FROM ferry_ledger")
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(ledger, 0);
    // A re-import completes it, whole.
    let r = c.node("site-b").json(&["import", "--json"]);
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// Issue 4: a deleted row whose key is not an integer (`role.role`, a natural key) was
/// never checked for rows still referring to it. A role synced to site-b gets a
/// `user_role` row there; site-a deletes the role. The import must fail naming
/// `user_role.role`, apply nothing and keep the bundle; once the referring row is gone
/// it applies.
#[test]
fn deleting_a_role_a_user_here_still_has_fails_the_bundle() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    block_on(async {
        let mut db = conn(c.url("site-a")).await;
        db.query_drop(
            "INSERT INTO role (role, description, uuid) \
             VALUES ('Temp', 'a role soon deleted', 'dddddddd-0000-4000-8000-000000000001')",
        )
        .await
        .unwrap();
    });
    c.carry("site-a", "site-b");
    let roles = |site: &str| -> u64 {
        block_on(async {
            let mut db = conn(c.url(site)).await;
            db.query_first("SELECT COUNT(*) FROM role WHERE role = 'Temp'")
                .await
                .unwrap()
                .unwrap()
        })
    };
    assert_eq!(roles("site-b"), 1, "the role reached site-b");
    block_on(async {
        let mut db = conn(c.url("site-b")).await;
        db.query_drop("INSERT INTO user_role (user_id, role) VALUES (1, 'Temp')")
            .await
            .unwrap();
        let mut db = conn(c.url("site-a")).await;
        db.query_drop("DELETE FROM role WHERE role = 'Temp'")
            .await
            .unwrap();
    });
    let before = c.verify("site-b");
    let stick = c.stick.path().to_str().unwrap();
    c.node("site-a").ok(&["export"]);
    c.node("site-a").ok(&["send", stick]);
    c.node("site-b").ok(&["receive", stick]);
    let (code, out, err) = c.node("site-b").run(&["import"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        format!("{out}{err}").contains(
            "a bundle from site-a deletes role rows that user_role.role here still refers to \
             (for example user_role.role = 'Temp')"
        ),
        "{out}{err}"
    );
    assert_eq!(
        c.verify("site-b"),
        before,
        "nothing of the bundle was applied"
    );
    assert_eq!(roles("site-b"), 1, "the role is still there");
    let status = c.node("site-b").json(&["status", "--json"]);
    assert_eq!(status["peers"][0]["last_received_seq"], 1, "{status}");

    // The operator re-points the user; the bundle waiting in the inbox then applies.
    block_on(async {
        let mut db = conn(c.url("site-b")).await;
        db.query_drop("DELETE FROM user_role WHERE user_id = 1 AND role = 'Temp'")
            .await
            .unwrap();
    });
    let r = c.node("site-b").json(&["import", "--json"]);
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(roles("site-b"), 0, "the role is deleted at site-b");
}

/// Issue 4: `import` applied the inbox sender by sender in name order, so a bundle that
/// refers to a row only another sender's bundle (waiting in the same inbox) brings
/// failed with a missing reference, stayed in the inbox, and the operator had to import
/// again. Here b-site and a-site each make the same location (same uuid): b-site's is
/// captured and its bundle to the hub carries it; a-site's was made while location
/// capture was off there. a-site makes a visit there (its bundle 1) and more (bundle 2),
/// and neither bundle carries the location. Both senders' bundles reach the hub
/// together: one import applies b-site's bundle and then both of a-site's, and reports
/// no failure.
#[test]
fn a_bundle_needing_a_row_another_sender_brings_applies_in_the_same_import() {
    let c = Cluster::star(&["hub", "a-site", "b-site"], &Source::Fixture);
    c.node("a-site").ok(&["tables", "disable", "location"]);
    let stick = c.stick.path().to_str().unwrap();
    let sql = |site: &str, stmt: String| {
        block_on(async {
            let mut db = conn(c.url(site)).await;
            db.query_drop(stmt).await.unwrap();
        })
    };

    // The same location at both; only b-site's is captured.
    let location = format!(
        "INSERT INTO location (name, creator, date_created, retired, uuid) \
         VALUES ('annex', 1, '2024-01-01', 0, '{}')",
        common::UNSENT_LOCATION
    );
    sql("b-site", location.clone());
    sql("a-site", location);
    c.node("b-site").ok(&["export"]);
    c.node("b-site").ok(&["send", stick]);

    // a-site: a patient and a visit at the location (bundle 1), then more (bundle 2). The
    // generator leaves locations alone: a-site's edits of them would not be synced.
    let generate = |seed: u64| {
        block_on(async {
            let mut db = conn(c.url("a-site")).await;
            let opts = ferry::dev::gen::GenOptions {
                seed,
                patients: 1,
                visits_per_patient: 1,
                encounters_per_visit: 1,
                obs_per_encounter: 1,
                retire_metadata: false,
                ..Default::default()
            };
            ferry::dev::gen::generate(&mut db, &opts).await.unwrap();
        })
    };
    generate(11);
    sql(
        "a-site",
        format!(
            "INSERT INTO visit (patient_id, visit_type_id, date_started, location_id, creator, \
             date_created, voided, uuid) \
             SELECT (SELECT MIN(patient_id) FROM patient), MIN(visit_type_id), '2024-01-02', \
             (SELECT location_id FROM location WHERE uuid = '{}'), 1, '2024-01-02', 0, '{}' \
             FROM visit_type",
            common::UNSENT_LOCATION,
            common::VISIT_TO_UNSENT
        ),
    );
    c.node("a-site").ok(&["export"]);
    generate(12);
    c.node("a-site").ok(&["export"]);
    c.node("a-site").ok(&["send", stick]);
    c.node("hub").ok(&["receive", stick]);
    let names = |from: &str| -> Vec<String> {
        c.outbox(from, "hub")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let (from_a, from_b) = (names("a-site"), names("b-site"));
    assert_eq!(
        (from_a.len(), from_b.len()),
        (2, 1),
        "{from_a:?} {from_b:?}"
    );

    let (code, out, err) = c.node("hub").run(&["import", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let applied: Vec<(&str, u64)> = r["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["sender"].as_str().unwrap(), a["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        applied,
        [("b-site", 1), ("a-site", 1), ("a-site", 2)],
        "{r}"
    );
    assert_eq!(r["failed"], serde_json::json!([]), "{r}");
    assert_eq!(r["held"], serde_json::json!([]), "{r}");
    assert_eq!(r["refused"], serde_json::json!([]), "{r}");
    let inbox = c.node("hub").dir.path().join("inbox");
    for f in from_a.iter().chain(&from_b) {
        assert!(!inbox.join(f).exists(), "{f} is still in the hub's inbox");
    }
    // Verify leaves out tables switched off, so a-site compares with location on again.
    c.node("a-site").ok(&["tables", "enable", "location"]);
    assert_eq!(c.verify("hub"), c.verify("a-site"));
}

/// Issue 4: a second config naming another node on site-a's database (a copied config,
/// or `init --force` with a mistyped name) sealed bundles from site-a's log under its
/// own name and took site-a's bundle numbers: site-b then waited forever for a number
/// site-a never sealed. Such a config is now refused before it does anything.
#[test]
fn a_config_naming_another_node_on_a_nodes_database_is_refused() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 1, 2, 1, 2);
    c.carry("site-a", "site-b");
    let other = common::Node::new("site-c", c.url("site-a"));
    let key_b = c.node("site-b").ok(&["key"]).trim().to_string();
    other.ok(&["peer", "add", "site-b", &key_b]);
    for args in [
        &["export", "--heartbeat"][..],
        &["import"][..],
        &["setup"][..],
    ] {
        let (code, out, err) = other.run(args);
        assert_eq!(code, 1, "ferry {args:?}: {out}{err}");
        assert!(
            err.contains("this database is node site-a's, but the config names node site-c")
                && err.contains("hint:"),
            "{err}"
        );
    }
    // site-a's sequence is intact: its next bundle applies at site-b.
    common::generate(c.url("site-a"), 2, 2, 1, 2);
    let r = c.carry("site-a", "site-b");
    assert_eq!(common::applied_seqs(&r), vec![2], "{r}");
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}

/// A site's database restored from last night's backup (issue 4: sync then broke both
/// ways without a word). The state directory remembers the bundles this node sealed and
/// applied since; export and import find the database behind that, refuse, name the
/// numbers, and change nothing. Status says so per peer.
#[test]
fn a_database_restored_from_a_backup_is_refused_and_named() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 5, 1, 1, 4);
    c.carry("site-a", "site-b");
    common::generate(c.url("site-b"), 6, 1, 1, 4);
    c.carry("site-b", "site-a");
    let night = tempfile::tempdir().unwrap();
    let backup = night.path().join("site-a.sql");
    common::backup(c.url("site-a"), &backup);
    // The next day's work, carried both ways.
    common::generate(c.url("site-a"), 7, 1, 1, 4);
    c.carry("site-a", "site-b");
    common::generate(c.url("site-b"), 8, 1, 1, 4);
    c.carry("site-b", "site-a");
    // The disk fails; last night's backup goes back.
    common::restore(c.url("site-a"), &backup);
    let before = c.verify("site-a");
    let outbox = |c: &Cluster| c.outbox("site-a", "site-b");

    let sealed = outbox(&c);
    let (code, out, err) = c.node("site-a").run(&["export"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("this database is behind this node's own record: bundle 2 was sealed for site-b, but the database says 1")
            && err.contains("hint: the database was probably restored from a backup"),
        "{err}"
    );
    assert_eq!(outbox(&c), sealed, "nothing sealed, published or deleted");

    // A bundle from site-b waits; import refuses it too and leaves it waiting.
    common::generate(c.url("site-b"), 9, 1, 1, 4);
    let stick = c.stick.path().to_str().unwrap();
    c.node("site-b").ok(&["export"]);
    c.node("site-b").ok(&["send", stick]);
    c.node("site-a").ok(&["receive", stick]);
    let (code, out, err) = c.node("site-a").run(&["import"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("bundle 2 was applied from site-b, but the database says 1")
            || err.contains("bundle 2 was sealed for site-b, but the database says 1"),
        "{err}"
    );
    assert_eq!(c.verify("site-a"), before, "nothing applied");
    let status = c.node("site-a").json(&["status", "--json"]);
    assert!(
        status["peers"][0]["behind_record"]
            .as_str()
            .is_some_and(|e| e.contains("this database is behind this node's own record")),
        "{status}"
    );
}
