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

/// A stored value (its serde form, [`crate::apply::conflict::values_json`]) as people
/// read it, the way the database prints it: text as itself, NULL, dates and times as
/// `2026-12-04 10:00:00.250000`, bytes as hex, a reference as its identity.
fn value_text(v: Option<&serde_json::Value>) -> String {
    use crate::bundle::Value;
    let Some(v) = v else {
        return "-".into();
    };
    let Ok(value) = serde_json::from_value::<Value>(v.clone()) else {
        return v.to_string();
    };
    let frac = |micros: u32| {
        if micros == 0 {
            String::new()
        } else {
            format!(".{micros:06}")
        }
    };
    match value {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Decimal(s) | Value::Text(s) => s,
        Value::Bytes(b) => format!("0x{}", hex::encode(b)),
        Value::Date { year, month, day } => format!("{year:04}-{month:02}-{day:02}"),
        Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
        } => format!(
            "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}{}",
            frac(micros)
        ),
        Value::Time {
            negative,
            hours,
            minutes,
            seconds,
            micros,
        } => format!(
            "{}{hours:02}:{minutes:02}:{seconds:02}{}",
            if negative { "-" } else { "" },
            frac(micros)
        ),
        Value::Ref(id) => id.0.join(","),
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

    /// Dates, times, numbers and bytes print as the database prints them, not as the
    /// objects they are stored as (issue 4: `conflicts show` printed
    /// `{"year":2026,...}`).
    #[test]
    fn every_kind_of_value_prints_as_the_database_prints_it() {
        use crate::apply::conflict::values_json;
        use crate::bundle::{Identity, Value};
        let values = [
            Value::DateTime {
                year: 2026,
                month: 12,
                day: 4,
                hour: 9,
                minute: 5,
                second: 7,
                micros: 250_000,
            },
            Value::DateTime {
                year: 0,
                month: 0,
                day: 0,
                hour: 0,
                minute: 0,
                second: 0,
                micros: 0,
            },
            Value::Date {
                year: 1987,
                month: 3,
                day: 9,
            },
            Value::Time {
                negative: true,
                hours: 838,
                minutes: 59,
                seconds: 59,
                micros: 0,
            },
            Value::Int(-3),
            Value::UInt(7),
            Value::Double(36.6),
            Value::Decimal("12.50".into()),
            Value::Bytes(vec![0, 0xab]),
            Value::Ref(Identity(vec!["a".into(), "b".into()])),
            Value::Null,
            Value::Text(String::new()),
        ];
        let columns: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
        let json = values_json(&columns, &values);
        let shown: Vec<String> = columns.iter().map(|c| value_text(json.get(c))).collect();
        assert_eq!(
            shown,
            [
                "2026-12-04 09:05:07.250000",
                "0000-00-00 00:00:00",
                "1987-03-09",
                "-838:59:59",
                "-3",
                "7",
                "36.6",
                "12.50",
                "0x00ab",
                "a,b",
                "NULL",
                ""
            ]
        );
        assert_eq!(value_text(None), "-");
    }
}
