//! The plan as text for people (`ferry plan`); `--json` prints the plan's serde form.

use std::fmt::Write;

use super::plan::{Disposition, SyncPlan};

/// Renders the plan as an aligned table followed by the soft references.
pub fn plan_text(plan: &SyncPlan) -> String {
    let mut out = String::new();
    let width = plan
        .tables
        .iter()
        .map(|t| t.table.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(out, "{:width$}  {:<40}  what travels", "table", "identity");
    let (mut synced, mut local) = (0, 0);
    for t in &plan.tables {
        match &t.disposition {
            Disposition::Synced(s) => {
                synced += 1;
                let refs = s.references.len() + s.soft_refs.len();
                let _ = writeln!(
                    out,
                    "{:width$}  {:<40}  {} columns, {} references",
                    t.table,
                    s.identity.describe(),
                    s.columns.len(),
                    refs
                );
            }
            Disposition::Local { reason } => {
                local += 1;
                let _ = writeln!(out, "{:width$}  {:<40}  local: {reason}", t.table, "-");
            }
        }
    }
    let soft: Vec<_> = plan
        .synced()
        .flat_map(|(name, s)| s.soft_refs.iter().map(move |r| (name, r)))
        .collect();
    if !soft.is_empty() {
        let _ = writeln!(out, "\nsoft references (no foreign key declares them):");
        for (name, r) in soft {
            let _ = writeln!(
                out,
                "  {name}.{} by {}.{} ({:?}): {}",
                r.column,
                r.type_table,
                r.discriminator,
                r.encoding,
                r.targets
                    .iter()
                    .map(|(k, v)| format!("{k} → {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{} tables: {synced} synced, {local} node-local; plan fingerprint {}",
        plan.tables.len(),
        &hex::encode(plan.fingerprint())[..16]
    );
    out
}
