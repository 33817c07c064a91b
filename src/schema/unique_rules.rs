//! OpenMRS's semantically unique columns: values that must not repeat although no
//! unique index says so. This small rules table sits beside [`super::soft_refs`] and is
//! the only other OpenMRS-specific knowledge ferry holds.
//!
//! OpenMRS 2.6.4 derives `users.system_id` from the next local `user_id` (plus a Luhn
//! check digit), so two sites that each create a user produce the same system id; and
//! it looks users up by `username` as if it were unique. The real schema has no unique
//! index on either, so import treats them exactly like the unique indexes it reads from
//! the database: a collision is resolved by suffixing the later version's value with
//! its origin node (see `crate::apply::unique`).

/// (table, column) pairs that OpenMRS treats as unique.
pub const SEMANTIC_UNIQUE: &[(&str, &str)] = &[("users", "system_id"), ("users", "username")];

/// Whether `table.column` is declared unique here.
pub fn declared_unique(table: &str, column: &str) -> bool {
    SEMANTIC_UNIQUE
        .iter()
        .any(|(t, c)| *t == table && *c == column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_system_id_and_username_are_unique() {
        assert!(declared_unique("users", "system_id"));
        assert!(declared_unique("users", "username"));
        assert!(!declared_unique("users", "email"));
    }
}
