//! Developer commands (`ferry dev ...`) that tests, benchmarks and the demo use: today
//! `ferry dev gen`, the deterministic OpenMRS workload generator. They name the database
//! directly with `--db` and need no config file.

use clap::{Args, Subcommand};

use super::{Output, UsageError};
use crate::db::DbUrl;
use crate::dev::gen::{generate, GenOptions};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write a deterministic clinic workload (registrations, visits, encounters, obs,
    /// orders, edits, voids, retirements, deletes) into an OpenMRS database.
    Gen(GenArgs),
    /// Seal and open N synthetic changes in one bundle (to measure peak memory).
    BundleStress {
        /// How many changes.
        #[arg(long, default_value_t = 1_000_000)]
        changes: u64,
        /// Where to write the bundle (a temporary directory by default).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Start or stop a private MariaDB server in a directory (used by the demo).
    #[command(subcommand)]
    Mariadb(MariadbCommand),
}

#[derive(Debug, Subcommand)]
pub enum MariadbCommand {
    /// Start a private mariadbd on a fresh copy of a prepared data directory in DIR
    /// (or on DIR's existing data) and leave it running; prints its TCP port.
    Start {
        /// The server's directory (data/, socket, error log, port file).
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
        /// InnoDB buffer pool size in MiB.
        #[arg(long, default_value_t = 128)]
        buffer_pool_mb: u32,
    },
    /// Stop the server started in DIR.
    Stop {
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// The OpenMRS database, e.g. mysql://root@127.0.0.1:3306/openmrs
    #[arg(long = "db", value_name = "URL")]
    pub db: String,
    /// Seed of every random choice; use a different seed on every site.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Patients to register.
    #[arg(long, default_value_t = 100)]
    pub patients: u32,
    /// Visits per patient.
    #[arg(long, default_value_t = 2)]
    pub visits_per_patient: u32,
    /// Encounters per visit.
    #[arg(long, default_value_t = 2)]
    pub encounters_per_visit: u32,
    /// Top-level obs per encounter (every fifth is a group of a parent and two members).
    #[arg(long, default_value_t = 6)]
    pub obs_per_encounter: u32,
    /// Orders per encounter (drug and test orders, alternating).
    #[arg(long, default_value_t = 1)]
    pub orders_per_encounter: u32,
    /// Edits per patient on average (e.g. 0.5): name/birthdate/address changes, voided obs, deleted attributes.
    #[arg(long, default_value_t = 1.5)]
    pub edits_per_patient: f64,
    /// Users to create first (person + users with an OpenMRS-style system_id + user_role).
    #[arg(long, default_value_t = 0)]
    pub users: u32,
    /// Throttle to about this many row writes per second.
    #[arg(long, value_name = "ROWS_PER_SEC")]
    pub rate: Option<f64>,
    /// Do not retire (or unretire) a location and a concept at the end.
    #[arg(long)]
    pub no_retire: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `ferry dev` command.
pub async fn run(cmd: DevCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        DevCommand::Gen(args) => gen(args, out).await,
        DevCommand::BundleStress { changes, dir } => {
            super::bundle_cmd::bundle_stress(changes, dir, out)
        }
        DevCommand::Mariadb(MariadbCommand::Start {
            dir,
            buffer_pool_mb,
        }) => {
            let options = crate::dev::mariadb::ServerOptions {
                buffer_pool_mb,
                ..Default::default()
            };
            let server = tokio::task::spawn_blocking(move || {
                crate::dev::mariadb::MariaServer::start_in(&dir, options)
            })
            .await??;
            out.line(server.detach()?.to_string());
            Ok(())
        }
        DevCommand::Mariadb(MariadbCommand::Stop { dir }) => {
            tokio::task::spawn_blocking(move || crate::dev::mariadb::stop_detached(&dir)).await??;
            Ok(())
        }
    }
}

async fn gen(args: GenArgs, out: &Output) -> anyhow::Result<()> {
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(
            UsageError("--rate must be a positive number of rows per second".into()).into(),
        );
    }
    if !(args.edits_per_patient >= 0.0 && args.edits_per_patient.is_finite()) {
        return Err(UsageError("--edits-per-patient must be a non-negative number".into()).into());
    }
    let url = DbUrl::parse(&args.db)?;
    let mut conn = url.connect().await?;
    let opts = GenOptions {
        seed: args.seed,
        patients: args.patients,
        visits_per_patient: args.visits_per_patient,
        encounters_per_visit: args.encounters_per_visit,
        obs_per_encounter: args.obs_per_encounter,
        orders_per_encounter: args.orders_per_encounter,
        edits_per_patient: args.edits_per_patient,
        users: args.users,
        rate: args.rate,
        retire_metadata: !args.no_retire,
    };
    let report = generate(&mut conn, &opts).await?;
    let _ = conn.disconnect().await;
    if args.json {
        out.json(&report);
    } else {
        out.line(report.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::DevCommand;
    use crate::cli::{Cli, Command};

    #[test]
    fn parses_dev_gen_without_a_config() {
        let cli = Cli::try_parse_from([
            "ferry",
            "dev",
            "gen",
            "--db",
            "mysql://root@127.0.0.1/x",
            "--seed",
            "9",
            "--patients",
            "3",
            "--edits-per-patient",
            "0.25",
            "--users",
            "2",
            "--rate",
            "100",
            "--json",
        ])
        .expect("parses");
        let Command::Dev(DevCommand::Gen(args)) = cli.command else {
            panic!("not dev gen: {:?}", cli.command);
        };
        assert_eq!((args.seed, args.patients, args.users), (9, 3, 2));
        assert_eq!(args.edits_per_patient, 0.25);
        assert_eq!(args.rate, Some(100.0));
        assert!(args.json && !args.no_retire);
        assert_eq!(args.visits_per_patient, 2);
    }
}
