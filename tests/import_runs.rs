//! Bundles of one sender applied together in one transaction (a bundle refers to a row
//! only a later one brings), on real MariaDB: a reference filled in at the end of the
//! run does not overwrite a later bundle's value, and a corrupt later bundle is the one
//! that goes to quarantine.

mod common;

use common::{block_on, conn, Cluster, Source};
use mysql_async::prelude::*;

const LOCATION: &str = "cccccccc-0000-4000-8000-000000000001";
const VISIT: &str = "cccccccc-0000-4000-8000-000000000002";

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
    c.node("site-a").ok(&["tables", "disable", "location"]);
    sql(
        c.url("site-a"),
        &format!(
            "INSERT INTO location (name, creator, date_created, retired, uuid) \
             VALUES ('annex', 1, '2024-01-01', 0, '{LOCATION}')"
        ),
    );
    sql(
        c.url("site-a"),
        &format!(
            "INSERT INTO visit (patient_id, visit_type_id, date_started, location_id, creator, \
             date_created, voided, uuid) \
             SELECT (SELECT MIN(patient_id) FROM patient), MIN(visit_type_id), '2024-01-02', \
             (SELECT location_id FROM location WHERE uuid = '{LOCATION}'), 1, '2024-01-02', 0, \
             '{VISIT}' FROM visit_type"
        ),
    );
    c.node("site-a").ok(&["tables", "enable", "location"]);
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
    let seqs: Vec<u64> = r["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3], "{r}");
    assert_eq!(
        visit_location(c.url("site-b")),
        at_a,
        "the visit points to bundle 3's location"
    );
    assert_eq!(c.verify("site-a"), c.verify("site-b"));
}
