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
        c.carry(from, to);
        assert_eq!(block_on(person(c.url(to), uuid)), None);
    }
    // Nothing echoes back: the receiving side has nothing new to export to the sender.
    let out = c.node("site-a").json(&["export", "--json"]);
    assert_eq!(out[0]["bundle"], serde_json::Value::Null, "{out}");
}
