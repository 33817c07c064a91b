//! Tools that tests, benchmarks and the demo share: private MariaDB servers and the
//! deterministic OpenMRS workload generator. Operators never need these.

pub mod bundle_craft;
pub mod bundle_synth;
pub mod bundle_vectors;
pub mod gen;
pub mod mariadb;
