//! Acknowledgements against real MariaDB (issue 4 §4): a bundle's ack vector claims
//! no more than the bundle and the ones before it hold.

mod common;

use std::sync::mpsc;

use common::{Cluster, Source};
use mysql_async::prelude::Queryable;

/// `node`'s ack vector entry for `origin` (the greatest position of `origin`'s changes
/// it claims to hold).
fn claimed(c: &Cluster, node: &str, origin: &str) -> Option<u64> {
    common::block_on(async {
        let mut db = common::conn(c.url(node)).await;
        db.exec_first("SELECT seq FROM ferry_applied WHERE origin = ?", (origin,))
            .await
            .unwrap()
    })
}

/// A transaction held open at a node that has written a change-log entry, until
/// dropped (then rolled back). Export cannot take the log's barrier meanwhile, and its
/// range stops at the entry's position.
struct LogGap {
    release: Option<mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl LogGap {
    fn hold(url: &str) -> LogGap {
        let url = url.to_string();
        let (held_tx, held_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            common::block_on(async move {
                let mut db = common::conn(&url).await;
                db.query_drop("START TRANSACTION").await.unwrap();
                db.query_drop(
                    "INSERT INTO ferry_change (table_name, row_key, op, wall_us) \
                     VALUES ('ferry_test_gap', 'gap', 'U', 0)",
                )
                .await
                .unwrap();
                held_tx.send(()).unwrap();
                let _ = release_rx.recv();
                db.query_drop("ROLLBACK").await.unwrap();
            })
        });
        held_rx.recv().unwrap();
        LogGap {
            release: Some(release),
            holder: Some(holder),
        }
    }
}

impl Drop for LogGap {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(h) = self.holder.take() {
            let _ = h.join();
        }
    }
}

/// Issue 4: export read the ack vector inside its snapshot, which starts after the
/// horizon. An import that committed past the horizon was claimed although its
/// forwarded entries were not in the bundle, so the recipient claimed to hold changes
/// it had never been sent (and passed the claim on).
///
/// The same scenario held a second fault: pruning deleted the log by range, which
/// locks the entry after the range, so the hub's import waited for the open
/// transaction and then failed, after its bundle had committed.
#[test]
fn a_bundle_does_not_acknowledge_an_import_whose_changes_it_does_not_carry() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    // s1 -> hub -> s2: s2 holds s1's first changes and says so.
    common::generate(c.url("s1"), 1, 2, 1, 2);
    c.carry("s1", "hub");
    c.carry("hub", "s2");
    let first = claimed(&c, "s2", "s1").expect("s2 acknowledges s1's first changes");
    assert_eq!(claimed(&c, "hub", "s1"), Some(first));

    // An open transaction at the hub leaves a gap in its log; s1's next changes are
    // imported at the hub past that gap.
    let gap = LogGap::hold(c.url("hub"));
    common::generate(c.url("s1"), 2, 2, 1, 2);
    let r = c.carry("s1", "hub");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    let second = claimed(&c, "hub", "s1").unwrap();
    assert!(second > first, "{second} > {first}");

    // The hub's bundle to s2 stops at the gap: it carries none of s1's second
    // changes, so it must not claim them.
    let r = c.carry_with("hub", "s2", &["--peer", "s2", "--heartbeat"]);
    assert_eq!(r["applied"][0]["changes"], 0, "{r}");
    assert_eq!(claimed(&c, "s2", "s1"), Some(first));

    // Once the gap closes, the changes travel and so does the claim.
    drop(gap);
    let r = c.carry("hub", "s2");
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(claimed(&c, "s2", "s1"), Some(second));
    assert_eq!(c.verify("hub"), c.verify("s2"));
}

/// Issue 4: the same, when the bundle does carry an earlier import of that origin: the
/// claim is the one that earlier import made, not the later one's.
#[test]
fn a_bundle_acknowledges_the_imports_it_carries_and_not_a_later_one() {
    let c = Cluster::star(&["hub", "s1", "s2"], &Source::Fixture);
    let to_hub = || {
        let r = c.carry("s1", "hub");
        assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
        claimed(&c, "hub", "s1").unwrap()
    };
    common::generate(c.url("s1"), 1, 2, 1, 2);
    let first = to_hub();
    // s1's second changes are imported past a gap; the first ones lie before it.
    let gap = LogGap::hold(c.url("hub"));
    common::generate(c.url("s1"), 2, 2, 1, 2);
    let second = to_hub();
    assert!(second > first, "{second} > {first}");
    let r = c.carry_with("hub", "s2", &["--peer", "s2"]);
    assert!(r["applied"][0]["changes"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(claimed(&c, "s2", "s1"), Some(first));
    drop(gap);
    c.carry("hub", "s2");
    assert_eq!(claimed(&c, "s2", "s1"), Some(second));
    assert_eq!(c.verify("hub"), c.verify("s2"));
}

/// Issue 4: pruning the log must not wait for an open transaction, also when it deletes
/// nearly all of the log (MariaDB then plans a delete by a list of positions as a scan
/// of the whole table, which meets the open transaction's entry).
#[test]
fn pruning_nearly_the_whole_log_does_not_wait_for_an_open_transaction() {
    let c = Cluster::star(&["site-a", "site-b"], &Source::Fixture);
    common::generate(c.url("site-a"), 1, 3, 2, 3);
    c.carry("site-a", "site-b");
    let gap = LogGap::hold(c.url("site-a"));
    // site-b acknowledges everything: site-a's import prunes its whole log but the gap.
    let r = c.carry_with("site-b", "site-a", &["--heartbeat"]);
    assert_eq!(r["applied"].as_array().unwrap().len(), 1, "{r}");
    let left: u64 = common::block_on(async {
        let mut db = common::conn(c.url("site-a")).await;
        db.query_first("SELECT COUNT(*) FROM ferry_change")
            .await
            .unwrap()
            .unwrap()
    });
    assert!(left <= 2, "{left} log entries left");
    drop(gap);
}
