//! The VIP routes a balancer wants, from its maps and the drain record,
//! and their reconcile with the kernel's (`host::routes`). A VIP can be
//! served while lbctl is attached, the node is not drained and one of its
//! backends has weight > 0 and is not down by health checks; several VIPs
//! on one address share one route.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Result;

use crate::datapath::maps::Maps;
use crate::datapath::running::Running;
use crate::host::drain;
use crate::host::routes::{self, Reconciled};

/// The VIP addresses a balancer with these maps can serve (none when the
/// node is drained).
pub fn desired(run: &Running, drained: bool) -> BTreeSet<IpAddr> {
    if drained {
        return BTreeSet::new();
    }
    run.vips
        .iter()
        .filter(|v| run.members(v).iter().any(|m| m.effective_weight() > 0))
        .map(|v| v.service.addr.ip())
        .collect()
}

/// The routes this balancer wants now, from its maps (or `run`, their rows
/// as just read) and its drain record.
pub fn wanted(maps: &Maps, run: Option<&Running>) -> Result<BTreeSet<IpAddr>> {
    let drained = drain::is_drained(maps.balancer_id()?);
    match run {
        Some(run) => Ok(desired(run, drained)),
        None => Ok(desired(&maps.running()?, drained)),
    }
}

/// Brings the kernel's lbctl routes to what `maps` call for (their rows
/// `run`, if just read), printing what could not be done as notes (one
/// line each on stderr): a route lbctl could not change is never a reason
/// to fail, or undo, a configuration change that was made.
pub fn publish(maps: &Maps, run: Option<&Running>) -> Reconciled {
    noted(wanted(maps, run).and_then(|w| routes::reconcile(&w)))
}

/// Withdraws every lbctl route, printing what could not be done as notes.
pub fn withdraw() -> Reconciled {
    noted(routes::withdraw_all())
}

fn noted(r: Result<Reconciled>) -> Reconciled {
    match r {
        Ok(r) => {
            for f in &r.failed {
                eprintln!("lbctl: note: VIP route: {f}");
            }
            r
        }
        Err(e) => {
            eprintln!("lbctl: note: VIP routes not reconciled: {e:#}");
            Reconciled::default()
        }
    }
}
