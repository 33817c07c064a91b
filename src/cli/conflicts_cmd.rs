//! `ferry conflicts`: the conflicts import recorded on this node. Without a subcommand
//! it lists the unresolved ones (table, identity, both versions' nodes and times, the
//! columns that differ); `show ID` puts both full rows side by side; `resolve ID --keep
//! winner|loser` settles one, restoring the loser as a new local edit when asked.

use clap::{Args, Subcommand, ValueEnum};

use super::Output;
use crate::apply::operator::{self, Conflict, Keep, SideView};
use crate::config::Config;
use crate::db::DbUrl;
use crate::node::NodeContext;

#[derive(Debug, Args)]
pub struct ConflictsArgs {
    #[command(subcommand)]
    pub command: Option<ConflictsCommand>,
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// List resolved conflicts too.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConflictsCommand {
    /// Show both versions of one conflict side by side.
    Show {
        /// The conflict's id (from `ferry conflicts`).
        id: u64,
    },
    /// Settle a conflict: keep the winner as it is, or restore the loser as a new edit
    /// that then syncs everywhere.
    Resolve {
        /// The conflict's id (from `ferry conflicts`).
        id: u64,
        /// Which version to keep.
        #[arg(long, value_enum)]
        keep: KeepArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeepArg {
    Winner,
    Loser,
}

/// `ferry conflicts`.
pub async fn run(config: Config, args: ConflictsArgs, out: &Output) -> anyhow::Result<()> {
    let url = DbUrl::parse(&config.database)?;
    let mut conn = url.connect().await?;
    match args.command {
        None => {
            let list = operator::list(&mut conn, args.all).await?;
            if args.json {
                out.json(&list);
                return Ok(());
            }
            if list.is_empty() {
                out.line("no unresolved conflicts");
                return Ok(());
            }
            out.line(format!(
                "{:>5}  {:<20} {:<38} {:<10} {:<36} {:<36} differ",
                "id", "table", "identity", "kind", "winner", "loser"
            ));
            for c in &list {
                out.line(format!(
                    "{:>5}  {:<20} {:<38} {:<10} {:<36} {:<36} {}{}",
                    c.id,
                    c.table,
                    c.identity,
                    kind_text(c),
                    side_text(&c.winner, c.winner_skewed),
                    side_text(&c.loser, false),
                    c.differing.join(","),
                    c.resolved
                        .as_deref()
                        .map(|r| format!("  (resolved: kept {r})"))
                        .unwrap_or_default()
                ));
            }
        }
        Some(ConflictsCommand::Show { id }) => {
            let c = operator::get(&mut conn, id).await?;
            if args.json {
                out.json(&c);
            } else {
                show(&c, out);
            }
        }
        Some(ConflictsCommand::Resolve { id, keep }) => {
            let node = NodeContext::load(config)?;
            let keep = match keep {
                KeepArg::Winner => Keep::Winner,
                KeepArg::Loser => Keep::Loser,
            };
            let c = operator::resolve(&mut conn, &node, id, keep).await?;
            if args.json {
                out.json(&c);
            } else if keep == Keep::Loser {
                out.line(format!(
                    "conflict {id}: restored the version of {} as a new local edit of {} {}; \
                     it reaches the other nodes with the next export",
                    c.loser.node, c.table, c.identity
                ));
            } else {
                out.line(format!(
                    "conflict {id}: kept the winner ({})",
                    c.winner.node
                ));
            }
        }
    }
    Ok(())
}

fn kind_text(c: &Conflict) -> String {
    match &c.column {
        Some(col) => format!("{}:{col}", c.kind),
        None => c.kind.clone(),
    }
}

fn side_text(s: &SideView, skewed: bool) -> String {
    format!(
        "{} {}{}{}",
        s.node,
        time_text(s.wall_us),
        if s.deleted { " (delete)" } else { "" },
        if skewed { " SKEWED" } else { "" }
    )
}

fn show(c: &Conflict, out: &Output) {
    out.line(format!(
        "conflict {}: {} {} ({}), detected {}{}",
        c.id,
        c.table,
        c.identity,
        kind_text(c),
        time_text(c.detected_us),
        c.via
            .as_deref()
            .map(|v| format!(" in a bundle from {v}"))
            .unwrap_or_default()
    ));
    out.line(format!(
        "winner  {}  version {}.{}{}",
        side_text(&c.winner, false),
        c.winner.wall_us,
        c.winner.counter,
        if c.winner_skewed {
            "  (its clock looked skewed)"
        } else {
            ""
        }
    ));
    out.line(format!(
        "loser   {}  version {}.{}",
        side_text(&c.loser, false),
        c.loser.wall_us,
        c.loser.counter
    ));
    if let Some(r) = &c.resolved {
        out.line(format!("resolved: kept the {r}"));
    }
    let empty = serde_json::Map::new();
    let w = c
        .winner
        .values
        .as_ref()
        .and_then(|v| v.as_object())
        .unwrap_or(&empty);
    let l = c
        .loser
        .values
        .as_ref()
        .and_then(|v| v.as_object())
        .unwrap_or(&empty);
    let mut names: Vec<&String> = w.keys().chain(l.keys()).collect();
    names.sort();
    names.dedup();
    out.line(format!(
        "  {:<24} {:<40} {:<40}",
        "column", "winner", "loser"
    ));
    for n in names {
        let mark = if c.differing.contains(n) { "*" } else { " " };
        out.line(format!(
            "{mark} {:<24} {:<40} {:<40}",
            n,
            value_text(w.get(n)),
            value_text(l.get(n))
        ));
    }
}

/// A stored value as people read it: `{"Text":"x"}` → `x`, `"Null"` → NULL.
fn value_text(v: Option<&serde_json::Value>) -> String {
    match v {
        None => "-".into(),
        Some(serde_json::Value::String(s)) if s == "Null" => "NULL".into(),
        Some(serde_json::Value::Object(m)) if m.len() == 1 => {
            let (_, inner) = m.iter().next().expect("one");
            match inner {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) if a.iter().all(|p| p.is_string()) => a
                    .iter()
                    .map(|p| p.as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            }
        }
        Some(other) => other.to_string(),
    }
}

/// µs since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time_text(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(time_text(0), "1970-01-01 00:00:00");
        assert_eq!(time_text(1_700_000_000_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn values_print_plainly() {
        let v = serde_json::json!({"Text": "5-3"});
        assert_eq!(value_text(Some(&v)), "5-3");
        assert_eq!(value_text(Some(&serde_json::json!("Null"))), "NULL");
        let r = serde_json::json!({"Ref": ["abc"]});
        assert_eq!(value_text(Some(&r)), "abc");
    }
}
