//! Commands of the capture stage: init, plan, setup, teardown, status, tables.

use std::path::Path;

use clap::Args;

use super::Output;
use crate::config::Config;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The OpenMRS database, e.g. mysql://openmrs:PASS@127.0.0.1:3306/openmrs
    #[arg(long = "db", value_name = "URL")]
    pub db: String,
    /// This node's name, unique among the nodes that sync (a-z, 0-9, '-', '_').
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// Overwrite an existing config file.
    #[arg(long)]
    pub force: bool,
}

/// `ferry init`: writes the config file.
pub fn init(path: &Path, args: InitArgs, out: &Output) -> anyhow::Result<()> {
    let config = Config::new(path, &args.node, &args.db)?;
    config.save(args.force)?;
    let public = super::bundle_cmd::ensure_keys(&config)?;
    out.line(format!(
        "wrote {} for node {} (state directory {})",
        path.display(),
        config.node,
        config.state_dir().display()
    ));
    out.line(format!("public key: {public}"));
    Ok(())
}
