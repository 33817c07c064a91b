//! OpenMRS's soft references: columns that point at another row although no foreign key
//! says so. This small rules table is the only OpenMRS-specific knowledge in the plan.
//!
//! Two kinds exist:
//! - `person_attribute.value` holds the *integer id* of a row when its
//!   `person_attribute_type.format` names an OpenMRS class (`org.openmrs.Location`
//!   → a `location_id`). ferry translates it to the row's identity on export and back to
//!   the local id on import, exactly like a foreign key.
//! - The attribute tables of the customdatatype framework (`location_attribute`,
//!   `provider_attribute`, `visit_attribute`, ...) hold the referenced row's *uuid* in
//!   `value_reference` when the attribute type's `datatype` is a reference datatype
//!   (OpenMRS's `BaseOpenmrsDatatype` serializes to the uuid). The value is portable as
//!   it is; ferry still declares the reference so that import can check that the row
//!   exists and order it before the referring row.

use serde::{Deserialize, Serialize};

/// How a soft reference's value names the referenced row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SoftRefEncoding {
    /// The value is the referenced row's local integer id (translated like a foreign key).
    LocalId,
    /// The value is the referenced row's uuid (portable; checked, not translated).
    Uuid,
}

/// One rule: `table.value_column` refers to a row of the target table chosen by the
/// `discriminator` column of the row that `type_column` points to.
#[derive(Debug, Clone, Copy)]
pub struct SoftRefRule {
    pub table: &'static str,
    pub value_column: &'static str,
    /// The foreign-key column that leads to the attribute type row.
    pub type_column: &'static str,
    /// The attribute type's column that says what the value refers to.
    pub discriminator: &'static str,
    pub encoding: SoftRefEncoding,
    /// Discriminator value → referenced table.
    pub targets: &'static [(&'static str, &'static str)],
}

const PERSON_ATTRIBUTE_FORMATS: &[(&str, &str)] = &[
    ("org.openmrs.Location", "location"),
    ("org.openmrs.Concept", "concept"),
    ("org.openmrs.Person", "person"),
    ("org.openmrs.Patient", "patient"),
    ("org.openmrs.User", "users"),
    ("org.openmrs.Provider", "provider"),
    ("org.openmrs.Drug", "drug"),
    ("org.openmrs.Program", "program"),
    ("org.openmrs.Encounter", "encounter"),
];

const REFERENCE_DATATYPES: &[(&str, &str)] = &[
    (
        "org.openmrs.customdatatype.datatype.LocationDatatype",
        "location",
    ),
    (
        "org.openmrs.customdatatype.datatype.ConceptDatatype",
        "concept",
    ),
    (
        "org.openmrs.customdatatype.datatype.ProviderDatatype",
        "provider",
    ),
    (
        "org.openmrs.customdatatype.datatype.ProgramDatatype",
        "program",
    ),
];

const fn datatype_rule(table: &'static str) -> SoftRefRule {
    SoftRefRule {
        table,
        value_column: "value_reference",
        type_column: "attribute_type_id",
        discriminator: "datatype",
        encoding: SoftRefEncoding::Uuid,
        targets: REFERENCE_DATATYPES,
    }
}

/// The rules. A rule whose tables or columns are missing from a schema is ignored.
pub const RULES: &[SoftRefRule] = &[
    SoftRefRule {
        table: "person_attribute",
        value_column: "value",
        type_column: "person_attribute_type_id",
        discriminator: "format",
        encoding: SoftRefEncoding::LocalId,
        targets: PERSON_ATTRIBUTE_FORMATS,
    },
    datatype_rule("location_attribute"),
    datatype_rule("provider_attribute"),
    datatype_rule("visit_attribute"),
    datatype_rule("concept_attribute"),
    datatype_rule("patient_program_attribute"),
    datatype_rule("order_attribute"),
    datatype_rule("order_group_attribute"),
    datatype_rule("order_set_attribute"),
    datatype_rule("diagnosis_attribute"),
];

/// The rules that apply to `table`.
pub fn rules_for(table: &str) -> impl Iterator<Item = &'static SoftRefRule> + '_ {
    RULES.iter().filter(move |r| r.table == table)
}
