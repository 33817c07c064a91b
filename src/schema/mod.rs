//! Reading the database schema and deriving the sync plan from it.
