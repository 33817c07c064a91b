//! Bookkeeping written by an older ferry (stamped change log: a `seq` and a version in
//! every stamped entry, a stamping clock in `ferry_meta`) is brought up to date by
//! `ferry setup`: every stamped entry's position becomes its old `seq` (so cursors and
//! ack vectors keep their meaning), unstamped entries follow in log order, and the
//! stamping clock becomes the floor of the entries it never stamped.

mod common;

use common::{block_on, conn, site, Node, Source};
use ferry::capture::bookkeeping::{set_meta, MIGRATIONS};
use mysql_async::prelude::*;

/// The bookkeeping steps of the last ferry that stamped.
const STAMPING_STEPS: usize = 10;

#[test]
fn a_stamped_log_is_renumbered_by_seq_and_its_clock_becomes_a_floor() {
    let s = site("migrate", &Source::Fixture);
    block_on(async {
        let mut c = conn(&s.url).await;
        c.query_drop(
            "CREATE TABLE ferry_meta (name VARCHAR(64) NOT NULL PRIMARY KEY, value LONGTEXT NOT NULL) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        )
        .await
        .unwrap();
        for step in &MIGRATIONS[..STAMPING_STEPS] {
            let sql = if step.starts_with("CREATE") {
                format!("{step} ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
            } else {
                step.to_string()
            };
            c.query_drop(sql).await.unwrap();
        }
        set_meta(&mut c, "bookkeeping_version", &STAMPING_STEPS.to_string())
            .await
            .unwrap();
        set_meta(&mut c, "hlc", "1700000000000000,7").await.unwrap();
        // Ids in one order, commit order (seq) in another; one imported entry; two
        // entries not stamped yet.
        c.query_drop(
            "INSERT INTO ferry_change (change_id, table_name, row_key, op, wall_us, origin, seq, \
             version_wall, version_counter, version_node) VALUES \
             (1, 'person', 'p-1', 'I', 10, NULL, 3, 10, 0, 'a'), \
             (2, 'person', 'p-2', 'I', 11, NULL, 1, 11, 0, 'a'), \
             (3, 'person', 'p-3', 'U', 12, 'b', 2, 5, 0, 'b'), \
             (4, 'person', 'p-1', 'U', 13, NULL, NULL, NULL, NULL, NULL), \
             (5, 'person', 'p-4', 'I', 14, NULL, NULL, NULL, NULL, NULL)",
        )
        .await
        .unwrap();
    });
    let node = Node::new("a", &s.url);
    node.ok(&["setup"]);
    block_on(async {
        let mut c = conn(&s.url).await;
        let log: Vec<(u64, String, String)> = c
            .query("SELECT change_id, row_key, op FROM ferry_change ORDER BY change_id")
            .await
            .unwrap();
        assert_eq!(
            log,
            vec![
                (1, "p-2".into(), "I".into()),
                (2, "p-3".into(), "U".into()),
                (3, "p-1".into(), "I".into()),
                (4, "p-1".into(), "U".into()),
                (5, "p-4".into(), "I".into()),
            ]
        );
        // Stamped versions stay; the clock is the floor after the last stamped entry.
        let v: Option<(i64, String)> = c
            .query_first("SELECT version_wall, version_node FROM ferry_change WHERE change_id = 3")
            .await
            .unwrap();
        assert_eq!(v, Some((10, "a".into())));
        let floors: Vec<(u64, i64, u32)> = c
            .query("SELECT from_change, wall, counter FROM ferry_floor")
            .await
            .unwrap();
        assert_eq!(floors, vec![(3, 1_700_000_000_000_000, 7)]);
        let cols: Vec<String> = c
            .query(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = 'ferry_change' AND COLUMN_NAME IN ('seq', 'new_id')",
            )
            .await
            .unwrap();
        assert!(cols.is_empty(), "{cols:?}");
        let stale: Option<u64> = c
            .query_first("SELECT COUNT(*) FROM ferry_meta WHERE name IN ('seq', 'hlc')")
            .await
            .unwrap();
        assert_eq!(stale, Some(0));
        // New entries take positions after the renumbered ones, and an unstamped
        // entry's version now follows from it: past the old clock.
        c.query_drop("UPDATE person SET gender = 'F' WHERE person_id = 1")
            .await
            .unwrap();
        let next: Option<u64> = c
            .query_first("SELECT MAX(change_id) FROM ferry_change")
            .await
            .unwrap();
        assert!(next.unwrap() > 5);
        let floors = ferry::capture::versions::Floors::load(&mut c)
            .await
            .unwrap();
        let v = floors.local_version(4, 13, "a");
        assert!((v.wall_us, v.counter) > (1_700_000_000_000_000, 7), "{v:?}");
    });
}
