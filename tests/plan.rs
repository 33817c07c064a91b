//! `ferry plan` on real schemas: every table gets an identity or a stated reason.
//! Runs on the project's fixture, and on the real OpenMRS 2.6.4 dump when
//! `FERRY_OPENMRS_DUMP` names it (as `.ci/run` does).

mod common;

use common::{block_on, site, sources, Node, Source};
use ferry::schema::plan::KeyPart;
use ferry::schema::{Disposition, Identity, Schema, SyncPlan};

fn identity(plan: &SyncPlan, table: &str) -> Identity {
    match &plan
        .table(table)
        .unwrap_or_else(|| panic!("{table} missing"))
        .disposition
    {
        Disposition::Synced(s) => s.identity.clone(),
        Disposition::Local { reason } => panic!("{table} is local: {reason}"),
    }
}

fn local_reason(plan: &SyncPlan, table: &str) -> String {
    match &plan
        .table(table)
        .unwrap_or_else(|| panic!("{table} missing"))
        .disposition
    {
        Disposition::Local { reason } => reason.clone(),
        d => panic!("{table} should be local, is {d:?}"),
    }
}

fn parent(column: &str, parent: &str) -> Identity {
    Identity::Parent {
        column: column.into(),
        parent: parent.into(),
    }
}

fn composite(parts: &[(&str, Option<&str>)]) -> Identity {
    Identity::Composite {
        parts: parts
            .iter()
            .map(|(c, r)| KeyPart {
                column: c.to_string(),
                references: r.map(str::to_string),
            })
            .collect(),
    }
}

fn natural(column: &str) -> Identity {
    Identity::Natural {
        columns: vec![column.into()],
    }
}

fn uuid(unique_index: bool) -> Identity {
    Identity::Uuid {
        column: "uuid".into(),
        unique_index,
    }
}

/// The identities the fixture and the real dump share.
fn assert_common(plan: &SyncPlan) {
    assert_eq!(identity(plan, "patient"), parent("patient_id", "person"));
    assert_eq!(identity(plan, "drug_order"), parent("order_id", "orders"));
    assert_eq!(identity(plan, "test_order"), parent("order_id", "orders"));
    assert_eq!(
        identity(plan, "concept_numeric"),
        parent("concept_id", "concept")
    );
    assert_eq!(
        identity(plan, "location_tag_map"),
        composite(&[
            ("location_id", Some("location")),
            ("location_tag_id", Some("location_tag"))
        ])
    );
    assert_eq!(
        identity(plan, "role_privilege"),
        composite(&[("role", Some("role")), ("privilege", Some("privilege"))])
    );
    assert_eq!(
        identity(plan, "user_role"),
        composite(&[("user_id", Some("users")), ("role", Some("role"))])
    );
    assert_eq!(identity(plan, "global_property"), natural("property"));
    assert_eq!(identity(plan, "role"), natural("role"));
    assert_eq!(identity(plan, "privilege"), natural("privilege"));
    assert_eq!(identity(plan, "users"), uuid(false));
    assert_eq!(identity(plan, "person"), uuid(true));
    assert_eq!(identity(plan, "obs"), uuid(true));

    // Integer ids never travel; foreign keys travel as references.
    let obs = plan.table("obs").unwrap().synced().unwrap();
    assert_eq!(obs.local_id.as_deref(), Some("obs_id"));
    assert!(!obs.columns.contains(&"obs_id".to_string()));
    for fk in [
        "person_id",
        "concept_id",
        "encounter_id",
        "obs_group_id",
        "creator",
    ] {
        assert!(
            obs.references.iter().any(|r| r.column == fk),
            "obs.{fk} should be a reference"
        );
    }
    // The users <-> person cycle is planned on both sides.
    let users = plan.table("users").unwrap().synced().unwrap();
    assert!(users
        .references
        .iter()
        .any(|r| r.column == "person_id" && r.table == "person"));
    let person = plan.table("person").unwrap().synced().unwrap();
    assert!(person
        .references
        .iter()
        .any(|r| r.column == "creator" && r.table == "users"));
    // The soft reference of person attributes.
    let pa = plan.table("person_attribute").unwrap().synced().unwrap();
    let soft = pa
        .soft_refs
        .iter()
        .find(|s| s.column == "value")
        .expect("soft ref");
    assert_eq!(
        soft.targets.get("org.openmrs.Location").map(String::as_str),
        Some("location")
    );
}

/// The 17 tables of the real 2.6.4 schema that have no uuid column, one by one.
fn assert_real_dump(plan: &SyncPlan) {
    assert_eq!(
        plan.tables.len(),
        116,
        "every table of the dump is in the plan"
    );
    assert_eq!(identity(plan, "patient"), parent("patient_id", "person"));
    assert_eq!(identity(plan, "drug_order"), parent("order_id", "orders"));
    assert_eq!(identity(plan, "test_order"), parent("order_id", "orders"));
    assert_eq!(
        identity(plan, "referral_order"),
        parent("order_id", "orders")
    );
    assert_eq!(
        identity(plan, "concept_numeric"),
        parent("concept_id", "concept")
    );
    assert_eq!(
        identity(plan, "concept_complex"),
        parent("concept_id", "concept")
    );
    assert_eq!(
        identity(plan, "location_tag_map"),
        composite(&[
            ("location_id", Some("location")),
            ("location_tag_id", Some("location_tag"))
        ])
    );
    assert_eq!(
        identity(plan, "order_type_class_map"),
        composite(&[
            ("order_type_id", Some("order_type")),
            ("concept_class_id", Some("concept_class"))
        ])
    );
    assert_eq!(
        identity(plan, "role_privilege"),
        composite(&[("role", Some("role")), ("privilege", Some("privilege"))])
    );
    assert_eq!(
        identity(plan, "role_role"),
        composite(&[("parent_role", Some("role")), ("child_role", Some("role"))])
    );
    assert_eq!(
        identity(plan, "user_property"),
        composite(&[("user_id", Some("users")), ("property", None)])
    );
    assert_eq!(
        identity(plan, "user_role"),
        composite(&[("user_id", Some("users")), ("role", Some("role"))])
    );
    assert!(local_reason(plan, "scheduler_task_config_property").contains("no uuid column"));
    assert!(local_reason(plan, "liquibasechangeloglock").contains("liquibase"));
    assert!(local_reason(plan, "liquibasechangelog").contains("liquibase"));
    assert!(local_reason(plan, "concept_name_tag_map").contains("no primary key"));
    assert!(local_reason(plan, "concept_proposal_tag_map").contains("no primary key"));

    // uuid columns without a unique index still identify rows.
    for t in [
        "users",
        "allergy",
        "allergy_reaction",
        "concept_stop_word",
        "notification_alert_recipient",
    ] {
        assert_eq!(identity(plan, t), uuid(false), "{t}");
    }
    // Every other table is synced by its uuid.
    let no_uuid = 17;
    let by_uuid = plan
        .synced()
        .filter(|(_, s)| matches!(s.identity, Identity::Uuid { .. }))
        .count();
    assert_eq!(
        by_uuid,
        116 - no_uuid - 3,
        "all tables with a uuid column except the 3 natural keys"
    );
    // Attribute tables carry uuid-valued soft references.
    let la = plan.table("location_attribute").unwrap().synced().unwrap();
    assert!(la.soft_refs.iter().any(|s| s.column == "value_reference"));
}

#[test]
fn plan_covers_every_table() {
    for source in sources() {
        eprintln!("plan on {}", source.name());
        let site = site("plan", &source);
        let plan = block_on(async {
            let mut c = common::conn(&site.url).await;
            SyncPlan::derive(&Schema::read(&mut c, &site.database).await.unwrap())
        });
        assert_common(&plan);
        if let Source::RealDump(_) = source {
            assert_real_dump(&plan);
        }

        // The command prints the same plan as JSON, and as text naming every table.
        let node = Node::new("clinic-a", &site.url);
        let json = node.json(&["plan", "--json"]);
        let from_cli: SyncPlan = serde_json::from_value(json).unwrap();
        assert_eq!(from_cli, plan);
        let text = node.ok(&["plan"]);
        for t in &plan.tables {
            assert!(text.contains(&t.table), "text plan lacks {}", t.table);
        }
        assert!(text.contains(&format!("{} tables", plan.tables.len())));
    }
}
