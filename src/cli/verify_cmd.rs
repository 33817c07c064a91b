//! `ferry verify`: prints this node's content digests (or sorted row hashes with
//! `--rows`), or compares them with another node's file given by `--against`. Nodes
//! that differ are an operational failure (exit 1), named on stdout; the formats are
//! described in [`crate::verify`] and docs/verify.md.

use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

use clap::Args;

use super::{Output, UsageError};
use crate::config::Config;
use crate::db::DbUrl;
use crate::verify::rows::{self, RowDiff, RowDiffKind, RowsFile};
use crate::verify::{self, TableDiffKind, VerifyError};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print JSON for scripts (with --rows: JSON Lines, sorted).
    #[arg(long)]
    pub json: bool,
    /// Compare with the output of `ferry verify --json` (or `--rows --json`) from
    /// another node; exit 1 when anything differs.
    #[arg(long, value_name = "FILE")]
    pub against: Option<PathBuf>,
    /// Work row by row: print every row's hash, or with --against name the rows that differ.
    #[arg(long)]
    pub rows: bool,
}

/// `ferry verify`.
pub async fn verify(config: &Config, args: VerifyArgs, out: &Output) -> anyhow::Result<()> {
    let url = DbUrl::parse(&config.database)?;
    let mut conn = url.connect().await?;
    let database = url.database;
    let selection = verify::select(&mut conn, &database).await?;
    let (plan, tables) = (&selection.plan, &selection.tables);
    match (&args.against, args.rows) {
        (None, false) => {
            let report = verify::digest(&mut conn, &database, plan, tables).await?;
            if args.json {
                out.json(&report);
            } else {
                out.line(format!("{:<32} {:>10}  digest", "table", "rows"));
                for t in &report.tables {
                    out.line(format!(
                        "{:<32} {:>10}  {}",
                        t.table,
                        t.rows,
                        &t.digest[..16]
                    ));
                }
                let source = if selection.stored {
                    "stored by ferry setup"
                } else {
                    "derived from the schema"
                };
                out.line(format!(
                    "{} tables, {} rows; plan {} ({source}); content digest {}",
                    report.tables.len(),
                    report.total_rows(),
                    &report.plan_fingerprint[..16],
                    report.digest
                ));
            }
            Ok(())
        }
        (None, true) => {
            // Streamed straight to stdout: a million rows must not be held in memory.
            let stdout = std::io::stdout();
            let mut w = BufWriter::new(stdout.lock());
            if args.json {
                rows::write_rows(&mut conn, &database, plan, tables, &mut w).await?;
            } else {
                rows::for_each_sorted_row(&mut conn, &database, plan, tables, |l| {
                    writeln!(w, "{} {} {}", l.table, l.identity.join(" "), l.hash)
                        .map_err(VerifyError::Output)
                })
                .await?;
                w.flush().map_err(VerifyError::Output)?;
            }
            Ok(())
        }
        (Some(path), false) => {
            let there = verify::read_report(path).map_err(usage_if_format)?;
            verify::check_plans(&selection.fingerprint(), &there.plan_fingerprint)?;
            let here = verify::digest(&mut conn, &database, plan, tables).await?;
            let diffs = verify::compare(&here, &there);
            if args.json {
                out.json(&serde_json::json!({
                    "equal": diffs.is_empty(),
                    "plan_fingerprint": here.plan_fingerprint,
                    "differ": diffs,
                }));
            } else {
                for d in &diffs {
                    out.line(match &d.kind {
                        TableDiffKind::Content {
                            rows_here,
                            rows_there,
                        } => format!(
                            "{}: differs ({rows_here} rows here, {rows_there} there)",
                            d.table
                        ),
                        TableDiffKind::OnlyHere => format!("{}: verified here only", d.table),
                        TableDiffKind::OnlyThere => format!("{}: verified there only", d.table),
                    });
                }
                if diffs.is_empty() {
                    out.line(format!(
                        "equal: {} tables, {} rows",
                        here.tables.len(),
                        here.total_rows()
                    ));
                }
            }
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(VerifyError::Differ {
                    what: format!("{} of {} tables", diffs.len(), here.tables.len()),
                }
                .into())
            }
        }
        (Some(path), true) => {
            let shown = path.display().to_string();
            let file = std::fs::File::open(path).map_err(|source| VerifyError::File {
                path: shown.clone(),
                source,
            })?;
            let there = RowsFile::open(BufReader::new(file), &shown).map_err(usage_if_format)?;
            let stdout = std::io::stdout();
            let mut w = BufWriter::new(stdout.lock());
            let json = args.json;
            let mut emit = |d: RowDiff| -> Result<(), VerifyError> {
                if json {
                    serde_json::to_writer(&mut w, &d).map_err(|e| VerifyError::Output(e.into()))?;
                    writeln!(w).map_err(VerifyError::Output)
                } else {
                    let kind = match d.kind {
                        RowDiffKind::OnlyHere => "only here",
                        RowDiffKind::OnlyThere => "only there",
                        RowDiffKind::Content => "differs",
                    };
                    writeln!(w, "{} {}: {kind}", d.table, d.identity.join(" "))
                        .map_err(VerifyError::Output)
                }
            };
            let result =
                rows::diff_rows(&mut conn, &database, plan, tables, there, &mut emit).await?;
            for t in &result.tables_only_here {
                emit_table(&mut w, json, t, "only_here")?;
            }
            for t in &result.tables_only_there {
                emit_table(&mut w, json, t, "only_there")?;
            }
            w.flush().map_err(VerifyError::Output)?;
            drop(w);
            if result.equal() {
                if !json {
                    out.line(format!("equal: {} rows", result.rows_here));
                }
                Ok(())
            } else {
                Err(VerifyError::Differ {
                    what: format!(
                        "{} rows ({} here, {} there), {} tables verified on one side only",
                        result.differing_rows,
                        result.rows_here,
                        result.rows_there,
                        result.tables_only_here.len() + result.tables_only_there.len()
                    ),
                }
                .into())
            }
        }
    }
}

fn emit_table(w: &mut dyn Write, json: bool, table: &str, kind: &str) -> Result<(), VerifyError> {
    let text = if json {
        serde_json::json!({ "table": table, "kind": format!("table_{kind}") }).to_string()
    } else {
        format!(
            "{table}: verified {} only",
            kind.trim_start_matches("only_")
        )
    };
    writeln!(w, "{text}").map_err(VerifyError::Output)
}

/// A file of the wrong kind is a usage error (exit 2); anything else stays operational.
fn usage_if_format(e: VerifyError) -> anyhow::Error {
    match e {
        VerifyError::Format { .. } => UsageError(e.to_string()).into(),
        e => e.into(),
    }
}
