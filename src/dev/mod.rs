//! Tools that tests, benchmarks and the demo share: private MariaDB servers and the
//! deterministic OpenMRS workload generator. Operators never need these.

pub mod bundle_synth;
pub mod mariadb;
