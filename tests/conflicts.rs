//! Concurrent edits on real MariaDB, one private server per node: versions that respect
//! causality whatever the clocks say, the greater version winning everywhere with the
//! loser recorded, fast-forwards recording nothing, update against delete, unique
//! collisions (the two-site `users.system_id`), operators restoring a loser, and
//! clock-skew flags.

mod common;

use common::{block_on, conflicts, conn, row_head, row_version, Cluster, Source};
use mysql_async::prelude::*;

const YEAR: i64 = 365 * 86_400;

fn exec(url: &str, sql: &str, params: Vec<mysql_async::Value>) {
    block_on(async {
        let mut db = conn(url).await;
        db.exec_drop(sql, params).await.unwrap();
    })
}

fn new_person(c: &Cluster, at: &str, uuid: &str) {
    exec(
        c.url(at),
        "INSERT INTO person (gender, birthdate, creator, date_created, voided, uuid) \
         VALUES ('U', '1990-05-01', 1, '2024-01-01 08:00:00', 0, ?)",
        vec![uuid.into()],
    );
}

fn set_gender(c: &Cluster, at: &str, uuid: &str, gender: &str) {
    exec(
        c.url(at),
        "UPDATE person SET gender = ? WHERE uuid = ?",
        vec![gender.into(), uuid.into()],
    );
}

fn gender(c: &Cluster, at: &str, uuid: &str) -> Option<String> {
    block_on(async {
        let mut db = conn(c.url(at)).await;
        db.exec_first("SELECT gender FROM person WHERE uuid = ?", (uuid,))
            .await
            .unwrap()
    })
}

/// The row's version at a node: (wall µs, counter, node).
fn version(c: &Cluster, at: &str, table: &str, key: &str) -> (i64, u32, String) {
    row_version(c.url(at), at, table, key)
        .unwrap_or_else(|| panic!("{at} has no version of {table} {key}"))
}

/// Shifts a node's clock (in its ferry.toml; setup bakes it into the triggers).
fn set_clock(c: &Cluster, node: &str, offset_s: i64) {
    let path = &c.node(node).config;
    let text = std::fs::read_to_string(path).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("clock_offset_seconds"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, format!("clock_offset_seconds = {offset_s}\n{kept}")).unwrap();
    c.node(node).ok(&["setup"]);
}

/// Every spoke to the hub, then the hub to every spoke; twice, so that what the hub
/// learnt from one spoke reaches the others.
fn sync_all(c: &Cluster) {
    for _ in 0..2 {
        for s in &c.names[1..] {
            c.carry(s, &c.names[0]);
        }
        for s in &c.names[1..] {
            c.carry(&c.names[0], s);
        }
    }
}

fn assert_converged(c: &Cluster) {
    let first = c.verify(&c.names[0]);
    for n in &c.names[1..] {
        assert_eq!(c.verify(n), first, "{n} differs from {}", c.names[0]);
    }
}

const P: &str = "22222222-0000-4000-8000-000000000001";
const Q: &str = "22222222-0000-4000-8000-000000000002";

/// Rule 1: an edit made after seeing version V is greater than V, even at a node whose
/// clock is a year behind the node that made V; and a node a year ahead is no obstacle
/// either. Nothing here is concurrent, so nothing is recorded.
#[test]
fn edits_after_seeing_a_version_are_greater_whatever_the_clocks() {
    let c = Cluster::star(&["hub", "behind", "ahead"], &Source::Fixture);
    set_clock(&c, "behind", -YEAR);
    set_clock(&c, "ahead", YEAR);
    new_person(&c, "hub", P);
    sync_all(&c);
    set_gender(&c, "ahead", P, "M");
    sync_all(&c);
    let v_ahead = version(&c, "behind", "person", P);
    assert_eq!(v_ahead.2, "ahead");
    assert_eq!(gender(&c, "behind", P).as_deref(), Some("M"));
    // The node a year behind overwrites the value it was shown.
    set_gender(&c, "behind", P, "F");
    sync_all(&c);
    let v_behind = version(&c, "hub", "person", P);
    assert_eq!(v_behind.2, "behind");
    assert!(
        (v_behind.0, v_behind.1) > (v_ahead.0, v_ahead.1),
        "{v_behind:?} must follow {v_ahead:?}"
    );
    for n in ["hub", "behind", "ahead"] {
        assert_eq!(gender(&c, n, P).as_deref(), Some("F"), "{n}");
        assert!(conflicts(&c, n).is_empty(), "{n}: {:?}", conflicts(&c, n));
    }
    // And back: the node a year ahead edits after seeing the one behind.
    set_gender(&c, "ahead", P, "O");
    sync_all(&c);
    for n in ["hub", "behind", "ahead"] {
        assert_eq!(gender(&c, n, P).as_deref(), Some("O"), "{n}");
        assert!(conflicts(&c, n).is_empty(), "{n}");
    }
    assert_converged(&c);
}

/// Rule 2: concurrent updates: the greater version wins on every node, whatever order
/// they arrive in, and the loser is recorded with its full values where it lost.
#[test]
fn concurrent_updates_converge_on_the_greater_version_and_record_the_loser() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    new_person(&c, "hub", P);
    sync_all(&c);
    set_gender(&c, "s1", P, "M");
    c.node("s1").ok(&["export"]); // edited first: the smaller version
    set_gender(&c, "s2", P, "F");
    // s2's edit reaches the hub first, then s1's (older, concurrent).
    c.carry("s2", "hub");
    c.carry("s1", "hub");
    sync_all(&c);
    for n in ["hub", "s1", "s2"] {
        assert_eq!(gender(&c, n, P).as_deref(), Some("F"), "{n}");
    }
    assert_converged(&c);
    // The loser lost at the hub, so the hub never forwarded it: s2 saw no concurrency.
    assert!(conflicts(&c, "s2").is_empty(), "{:?}", conflicts(&c, "s2"));
    for n in ["hub", "s1"] {
        let list = conflicts(&c, n);
        assert_eq!(list.len(), 1, "{n}: {list:?}");
        let k = &list[0];
        assert_eq!(k["table"], "person");
        assert_eq!(k["identity"], P);
        assert_eq!(k["kind"], "concurrent");
        assert_eq!(k["winner"]["node"], "s2", "{k}");
        assert_eq!(k["loser"]["node"], "s1", "{k}");
        assert_eq!(k["loser"]["values"]["gender"]["Text"], "M", "{k}");
        assert_eq!(k["winner"]["values"]["gender"]["Text"], "F", "{k}");
        assert_eq!(k["differing"], serde_json::json!(["gender"]), "{k}");
    }
    // The operator's views: the list names the columns, show puts both rows side by side.
    let text = c.node("hub").ok(&["conflicts"]);
    assert!(
        text.contains("person") && text.contains(P) && text.contains("gender"),
        "{text}"
    );
    let id = conflicts(&c, "hub")[0]["id"].as_u64().unwrap().to_string();
    let shown = c.node("hub").ok(&["conflicts", "show", &id]);
    let line = shown
        .lines()
        .find(|l| l.contains("gender"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        line.starts_with('*') && line.contains(" F ") && line.contains(" M"),
        "{shown}"
    );
    let status = c.node("hub").json(&["status", "--json"]);
    assert_eq!(status["conflicts"]["person"], 1, "{status}");
}

/// Rule 2: no concurrency, no conflict: a row edited in turn at every node, each edit
/// made after the previous one arrived, with several edits coalesced into one bundle
/// and the hub forwarding.
#[test]
fn edits_in_turn_record_nothing_even_coalesced_and_forwarded() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    new_person(&c, "hub", P);
    sync_all(&c);
    for (round, node) in ["s1", "s2", "hub", "s2", "s1"].iter().enumerate() {
        // Several edits in a row coalesce into one change of one bundle (odd rounds),
        // or travel in bundles of their own that the hub coalesces (even rounds).
        for g in ["A", "B", "C"] {
            set_gender(&c, node, P, &format!("{g}{round}"));
            if round % 2 == 0 {
                c.node(node).ok(&["export"]);
            }
        }
        set_gender(&c, node, P, &format!("Z{round}"));
        sync_all(&c);
        for n in ["hub", "s1", "s2"] {
            assert_eq!(gender(&c, n, P), Some(format!("Z{round}")), "{n}");
        }
    }
    for n in ["hub", "s1", "s2"] {
        assert!(conflicts(&c, n).is_empty(), "{n}: {:?}", conflicts(&c, n));
    }
    assert_converged(&c);
}

/// Rule 2: update against delete, both ways. A later delete wins over a concurrent
/// update (a late update of the deleted row does not bring it back); a later update
/// wins over a concurrent delete and brings the row back, recorded.
#[test]
fn update_against_delete_is_decided_by_the_same_rule_and_recorded() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    new_person(&c, "hub", P);
    new_person(&c, "hub", Q);
    sync_all(&c);
    // P: update first, delete later. Q: delete first, update later.
    set_gender(&c, "s1", P, "M");
    c.node("s1").ok(&["export"]);
    exec(
        c.url("s1"),
        "DELETE FROM person WHERE uuid = ?",
        vec![Q.into()],
    );
    c.node("s1").ok(&["export"]);
    exec(
        c.url("s2"),
        "DELETE FROM person WHERE uuid = ?",
        vec![P.into()],
    );
    set_gender(&c, "s2", Q, "F");
    c.node("s2").ok(&["export"]);
    // The delete of P reaches the hub first; s1's older update of P arrives late.
    c.carry("s2", "hub");
    c.carry("s1", "hub");
    sync_all(&c);
    for n in ["hub", "s1", "s2"] {
        assert_eq!(gender(&c, n, P), None, "{n}: P stays deleted");
        assert_eq!(gender(&c, n, Q).as_deref(), Some("F"), "{n}: Q comes back");
    }
    assert_converged(&c);
    // s1's versions lost at the hub and were never forwarded: s2 saw no concurrency.
    assert!(conflicts(&c, "s2").is_empty(), "{:?}", conflicts(&c, "s2"));
    for n in ["hub", "s1"] {
        let list = conflicts(&c, n);
        let p = list
            .iter()
            .find(|k| k["identity"] == P)
            .unwrap_or_else(|| panic!("{n}: {list:?}"));
        assert_eq!(p["winner"]["deleted"], true, "{p}");
        assert_eq!(p["loser"]["deleted"], false, "{p}");
        let q = list
            .iter()
            .find(|k| k["identity"] == Q)
            .unwrap_or_else(|| panic!("{n}: {list:?}"));
        assert_eq!(q["winner"]["deleted"], false, "{q}");
        assert_eq!(q["loser"]["deleted"], true, "{q}");
    }
    // The hub holds P's tombstone.
    let deleted = row_head(c.url("hub"), "hub", "person", P).map(|h| h.deleted);
    assert_eq!(deleted, Some(true));
}

fn user_ids(c: &Cluster, at: &str) -> Vec<(String, String, Option<String>)> {
    block_on(async {
        let mut db = conn(c.url(at)).await;
        db.query("SELECT uuid, system_id, username FROM users ORDER BY uuid")
            .await
            .unwrap()
    })
}

/// Rule 3: users created at two sites collide on OpenMRS's derived `system_id` (no
/// unique index says so), and two users given one email collide on a unique index.
/// Neither fails a bundle; the later version's value is suffixed with its node, the
/// same on every node, and the collision is recorded.
#[test]
fn two_site_system_id_and_email_collisions_are_suffixed_everywhere() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    let loaded = user_ids(&c, "hub");
    let before = loaded.len();
    let mut made = Vec::new();
    for (n, seed) in [("s1", 1), ("s2", 2)] {
        block_on(async {
            let mut db = conn(c.url(n)).await;
            let opts = ferry::dev::gen::GenOptions {
                seed,
                users: 1,
                patients: 0,
                ..Default::default()
            };
            ferry::dev::gen::generate(&mut db, &opts).await.unwrap();
        });
        let new: Vec<_> = user_ids(&c, n)
            .into_iter()
            .filter(|u| !loaded.contains(u))
            .collect();
        assert_eq!(new.len(), 1, "{n}: {new:?}");
        made.push(new[0].clone());
    }
    assert_eq!(
        made[0].1, made[1].1,
        "the two sites made the same system id"
    );
    // The same email at both sites, on their new users; s1's first.
    for (i, n) in ["s1", "s2"].iter().enumerate() {
        exec(
            c.url(n),
            "UPDATE users SET email = 'clinic@example.org' WHERE uuid = ?",
            vec![made[i].0.clone().into()],
        );
        c.node(n).ok(&["export"]);
    }
    sync_all(&c);
    assert_converged(&c);
    let users = user_ids(&c, "hub");
    assert_eq!(users.len(), before + 2, "{users:?}");
    let mut sids: Vec<&String> = users.iter().map(|u| &u.1).collect();
    sids.sort();
    sids.dedup();
    assert_eq!(
        sids.len(),
        users.len(),
        "system ids are unique again: {users:?}"
    );
    assert!(
        users
            .iter()
            .any(|u| u.1.ends_with("-s2") || u.1.ends_with("-s1")),
        "{users:?}"
    );
    let emails: Vec<String> = block_on(async {
        let mut db = conn(c.url("hub")).await;
        db.query("SELECT email FROM users WHERE email LIKE 'clinic@example.org%' ORDER BY email")
            .await
            .unwrap()
    });
    assert_eq!(emails, vec!["clinic@example.org", "clinic@example.org-s2"]);
    // The hub suffixed s2's user as it arrived; s2 renamed its own user when s1's
    // arrived; s1 got s2's user already suffixed from the hub (nothing to settle).
    for n in ["hub", "s2"] {
        let list = conflicts(&c, n);
        assert!(
            list.iter()
                .any(|k| k["kind"] == "unique" && k["column"] == "system_id"),
            "{n}: {list:?}"
        );
    }
    let hub = conflicts(&c, "hub");
    assert!(
        hub.iter()
            .any(|k| k["kind"] == "unique" && k["column"] == "email"),
        "{hub:?}"
    );
}

/// Issue 4 (review, regression test): one bundle moves a unique value from one row to
/// another (daemon gives up an email, admin takes it). The receiver checked the
/// incoming value against the rows as they were before the bundle's own updates, saw a
/// collision the same bundle removes, and suffixed the taker's email there only. Now a
/// row that the same chunk gives another value is no holder, and the value it gives up
/// is parked before the updates (the unique index would refuse one order, and a swap in
/// both).
#[test]
fn a_unique_value_moved_between_rows_in_one_bundle_arrives_as_it_is() {
    const ADMIN: &str = "3ebe6194-d7f2-4faf-a8f1-17a062a505d0";
    const DAEMON: &str = "65fb8e95-aeec-4e01-a893-4b6dc4b80b60";
    let c = Cluster::star(&["hub", "s1"], &Source::Fixture);
    let email = |at: &str, uuid: &str| -> Option<String> {
        block_on(async {
            let mut db = conn(c.url(at)).await;
            db.exec_first("SELECT email FROM users WHERE uuid = ?", (uuid,))
                .await
                .unwrap()
                .flatten()
        })
    };
    let set = |uuid: &str, value: &str| {
        exec(
            c.url("s1"),
            "UPDATE users SET email = ? WHERE uuid = ?",
            vec![value.into(), uuid.into()],
        )
    };
    set(DAEMON, "a@x");
    c.carry("s1", "hub");
    // The bundle holds admin (the lower id) first: written in that order, the unique
    // index would refuse admin's update while daemon still holds the value.
    set(DAEMON, "b@x");
    set(ADMIN, "a@x");
    // The hub holds s1's values exactly, with no conflict recorded.
    let arrived = |admin: &str, daemon: &str| {
        c.carry("s1", "hub");
        for at in ["s1", "hub"] {
            let got = (email(at, ADMIN), email(at, DAEMON));
            assert_eq!(got, (Some(admin.into()), Some(daemon.into())), "{at}");
        }
        assert!(
            conflicts(&c, "hub").is_empty(),
            "{:?}",
            conflicts(&c, "hub")
        );
        assert_converged(&c);
    };
    arrived("a@x", "b@x");

    // The two swap their values (through a third one at s1): no order of the two
    // updates suits the index, so the values given up are parked first.
    set(ADMIN, "tmp@x");
    set(DAEMON, "a@x");
    set(ADMIN, "b@x");
    arrived("b@x", "a@x");
}

/// Rule 4: keeping the loser restores it as a new edit that wins everywhere, as a
/// fast-forward that records nothing more; keeping the winner only marks it resolved.
#[test]
fn keep_loser_propagates_to_every_node() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    new_person(&c, "hub", P);
    sync_all(&c);
    set_gender(&c, "s1", P, "M");
    c.node("s1").ok(&["export"]);
    set_gender(&c, "s2", P, "F");
    c.node("s2").ok(&["export"]);
    sync_all(&c);
    for n in ["hub", "s1", "s2"] {
        assert_eq!(gender(&c, n, P).as_deref(), Some("F"), "{n}");
    }
    // At s1, whose edit lost: keep it after all.
    let k = conflicts(&c, "s1");
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0]["loser"]["node"], "s1");
    let id = k[0]["id"].as_u64().unwrap().to_string();
    c.node("s1")
        .ok(&["conflicts", "resolve", &id, "--keep", "loser"]);
    assert_eq!(gender(&c, "s1", P).as_deref(), Some("M"));
    let (code, _, err) = c
        .node("s1")
        .run(&["conflicts", "resolve", &id, "--keep", "loser"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already resolved") && err.contains("hint:"),
        "{err}"
    );
    sync_all(&c);
    // The overwrites happened at the hub and at s1; s2's version won and the hub never
    // forwarded s1's losing version to it, so s2 holds no record. Keeping the loser is a
    // fast-forward everywhere: no node records anything new.
    for (n, recorded) in [("hub", 1), ("s1", 1), ("s2", 0)] {
        assert_eq!(gender(&c, n, P).as_deref(), Some("M"), "{n}");
        let list = conflicts(&c, n);
        assert_eq!(list.len(), recorded, "{n}: no new conflict: {list:?}");
    }
    assert_converged(&c);
    assert_eq!(conflicts(&c, "s1")[0]["resolved"], "loser");
    let hub_id = conflicts(&c, "hub")[0]["id"].as_u64().unwrap().to_string();
    c.node("hub")
        .ok(&["conflicts", "resolve", &hub_id, "--keep", "winner"]);
    assert_eq!(conflicts(&c, "hub")[0]["resolved"], "winner");
    let status = c.node("hub").json(&["status", "--json"]);
    assert_eq!(status["conflicts"], serde_json::json!({}), "{status}");
}

/// Rule 5: a node whose clock is a year ahead: its versions, forwarded by the hub in a
/// bundle of ordinary time, are flagged as skewed (a line in `ferry status` naming it)
/// and the conflict it wins is marked; everything still converges.
#[test]
fn skewed_clock_is_flagged_and_its_wins_marked() {
    let c = Cluster::star(&["hub", "ahead", "s2"], &Source::Fixture);
    set_clock(&c, "ahead", YEAR);
    new_person(&c, "hub", P);
    sync_all(&c);
    set_gender(&c, "s2", P, "F");
    c.node("s2").ok(&["export"]);
    set_gender(&c, "ahead", P, "M");
    c.carry("ahead", "hub");
    c.carry("hub", "s2"); // the hub's bundle, created now, carries a version a year ahead
    sync_all(&c);
    for n in ["hub", "ahead", "s2"] {
        assert_eq!(gender(&c, n, P).as_deref(), Some("M"), "{n}");
    }
    assert_converged(&c);
    let status = c.node("s2").json(&["status", "--json"]);
    let skew = status["clock_skew"].as_array().unwrap();
    let ahead = skew
        .iter()
        .find(|s| s["node"] == "ahead")
        .unwrap_or_else(|| panic!("{status}"));
    assert!(ahead["skew_s"].as_i64().unwrap() > YEAR - 3600, "{ahead}");
    let text = c.node("s2").ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("skew") && l.contains("ahead")),
        "{text}"
    );
    let list = conflicts(&c, "s2");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["winner"]["node"], "ahead");
    assert_eq!(list[0]["winner_skewed"], true, "{list:?}");
    assert!(c.node("s2").ok(&["conflicts"]).contains("SKEWED"));
}

/// Rule 2: an incoming change that meets an unexported local edit of the same row is
/// concurrent with it (the edit's version follows from its log entry): the greater wins, and the
/// local edit, which never left this node, is recorded with its values.
#[test]
fn an_unexported_local_edit_meeting_an_incoming_change_is_recorded() {
    let c = Cluster::star(&["hub", "s1"], &Source::Fixture);
    new_person(&c, "hub", P);
    sync_all(&c);
    set_gender(&c, "hub", P, "F"); // not exported
    set_gender(&c, "s1", P, "M");
    c.carry("s1", "hub");
    assert_eq!(gender(&c, "hub", P).as_deref(), Some("M"));
    let list = conflicts(&c, "hub");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["winner"]["node"], "s1");
    assert_eq!(list[0]["loser"]["node"], "hub");
    assert_eq!(list[0]["loser"]["values"]["gender"]["Text"], "F");
    sync_all(&c);
    assert_eq!(gender(&c, "s1", P).as_deref(), Some("M"));
    assert!(conflicts(&c, "s1").is_empty());
    assert_converged(&c);
}

/// Regression test for issue 4 (an import skips looking for the versions of rows new to
/// the node, `apply::fresh`): a node that never held a table's rows imports, in one run,
/// bundles that change one row three times, the last concurrently with the second. The
/// run must still see the versions it settled itself, so the concurrency is recorded
/// there as it was at the hub.
#[test]
fn a_run_of_bundles_into_a_new_node_still_sees_the_versions_it_settled() {
    let c = Cluster::star(&["hub", "s1", "s2", "s3"], &Source::Fixture);
    let stick = c.stick.path().to_str().unwrap();
    let hub_sends = || {
        c.node("hub").ok(&["export"]);
        c.node("hub").ok(&["send", stick]);
    };
    new_person(&c, "s1", P);
    c.carry("s1", "hub");
    hub_sends();
    c.node("s2").ok(&["receive", stick]);
    c.node("s2").ok(&["import"]);
    set_gender(&c, "s1", P, "M");
    set_gender(&c, "s2", P, "F"); // made later: the greater version
                                  // The smaller version reaches the hub first and goes on to s3; then the greater,
                                  // concurrent one wins at the hub and follows it.
    c.carry("s1", "hub");
    hub_sends();
    c.carry("s2", "hub");
    hub_sends();
    assert_eq!(conflicts(&c, "hub").len(), 1, "{:?}", conflicts(&c, "hub"));

    c.node("s3").ok(&["receive", stick]);
    let report = c.node("s3").json(&["import", "--json"]);
    assert_eq!(report["applied"].as_array().unwrap().len(), 3, "{report}");
    assert_eq!(gender(&c, "s3", P).as_deref(), Some("F"));
    let list = conflicts(&c, "s3");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["identity"], P);
    assert_eq!(list[0]["kind"], "concurrent");
    assert_eq!(list[0]["winner"]["node"], "s2", "{}", list[0]);
    assert_eq!(list[0]["loser"]["node"], "s1", "{}", list[0]);
    assert_eq!(c.verify("s3"), c.verify("hub"));
}

/// Issue 4 (review, a known problem, regression test for its message and its repair): a
/// person and its name deleted at one site while another edits the name. Neither side
/// can apply the other's bundle: the deleting site lacks the person the edit refers
/// to, the editing site still has a name that refers to the deleted person. The
/// deleting site's error used to say the person was neither in the bundle nor in the
/// database and to check the sender's tables; now it says the person was deleted here
/// and points to the repair, and the repair that docs/operations.md gives ("Known
/// problems") brings every node to the same rows.
#[test]
fn a_delete_meeting_an_edit_of_a_row_that_refers_to_it_is_named_and_repaired() {
    const N: &str = "33333333-0000-4000-8000-0000000000aa";
    let c = Cluster::star(&["hub", "s1"], &Source::Fixture);
    new_person(&c, "hub", P);
    exec(
        c.url("hub"),
        "INSERT INTO person_name (preferred, person_id, given_name, family_name, creator, \
         date_created, voided, uuid) SELECT 1, person_id, 'Ann', 'Lee', 1, \
         '2024-01-01 08:00:00', 0, ? FROM person WHERE uuid = ?",
        vec![N.into(), P.into()],
    );
    c.carry("hub", "s1");
    let s1 = c.url("s1");
    exec(s1, "DELETE FROM person_name WHERE uuid = ?", vec![N.into()]);
    exec(s1, "DELETE FROM person WHERE uuid = ?", vec![P.into()]);
    c.node("s1").ok(&["export"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    exec(
        c.url("hub"),
        "UPDATE person_name SET given_name = 'Anne' WHERE uuid = ?",
        vec![N.into()],
    );
    c.node("hub").ok(&["export"]);
    let stick = c.stick.path().to_str().unwrap();
    let carry = |from: &str, to: &str| {
        c.node(from).ok(&["send", stick]);
        c.node(to).ok(&["receive", stick]);
        let (code, out, err) = c.node(to).run(&["import"]);
        (code, format!("{out}{err}"))
    };
    let (code, err) = carry("s1", "hub");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("person_name.person_id here still refers to"),
        "{err}"
    );
    let (code, err) = carry("hub", "s1");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("to person row {P}, which was deleted here"))
            && err.contains("Known problems"),
        "{err}"
    );

    // The repair, keeping the deletion: the hub deletes the edited name, and its import
    // goes on; s1 puts the person back without capturing it, imports the edit and the
    // name's deletion, then deletes the person again.
    exec(
        c.url("hub"),
        "DELETE FROM person_name WHERE uuid = ?",
        vec![N.into()],
    );
    c.node("hub").ok(&["import"]);
    block_on(async {
        let mut db = conn(s1).await;
        db.query_drop("SET @ferry_origin = 'restore'")
            .await
            .unwrap();
        db.exec_drop(
            "INSERT INTO person (gender, birthdate, creator, date_created, voided, uuid) \
             VALUES ('U', '1990-05-01', 1, '2024-01-01 08:00:00', 0, ?)",
            (P,),
        )
        .await
        .unwrap();
    });
    c.node("s1").ok(&["import"]);
    c.carry("hub", "s1");
    exec(s1, "DELETE FROM person WHERE uuid = ?", vec![P.into()]);
    sync_all(&c);
    for at in ["hub", "s1"] {
        let left: u64 = block_on(async {
            let mut db = conn(c.url(at)).await;
            db.exec_first(
                "SELECT (SELECT COUNT(*) FROM person WHERE uuid = ?) + \
                 (SELECT COUNT(*) FROM person_name WHERE uuid = ?)",
                (P, N),
            )
            .await
            .unwrap()
            .unwrap()
        });
        assert_eq!(left, 0, "{at}");
    }
    assert_converged(&c);
}
