//! The health checks last applied, kept beside the balancer for `lbctl
//! save`. The maps hold the data path's configuration and each backend's
//! health, but not how a VIP is checked (kind, interval, path...): `lbctl
//! apply` and `lbctl run` write that here, in the configuration file's own
//! format, as a record under /run/lbctl/ (`state.rs`) of the balancer it
//! belongs to (`Maps::balancer_id`), which goes when that balancer goes.

use anyhow::{Context, Result};

use crate::config_file;
use crate::host::state::{self, Kind};
use crate::model::{Desired, DesiredVip};

const HEADER: &str = "# lbctl: health checks last applied to balancer ";

/// Records the health checks of `desired`'s VIPs for balancer `id`.
pub fn write(id: u32, desired: &Desired) -> Result<()> {
    let checked = Desired {
        vips: desired
            .vips
            .iter()
            .filter(|v| v.health.is_some() || !v.backend_health.is_empty())
            .map(|v| DesiredVip {
                // Only the backends with checks of their own.
                backends: v
                    .backends
                    .iter()
                    .filter(|(a, _)| v.backend_health.iter().any(|(b, _)| b == a))
                    .copied()
                    .collect(),
                table_in_use: None,
                ..v.clone()
            })
            .collect(),
        ..Default::default()
    };
    let text = format!("{HEADER}{id}\n{}", config_file::render(&checked));
    state::write(Kind::Health, id, &text)
}

/// Removes this namespace's record (the last detach: the balancer is gone).
pub fn clear() -> Result<()> {
    state::clear(Kind::Health)
}

/// The recorded health checks of balancer `id`: the VIPs with checks, each
/// with its `health` and `backend_health` (none if there is no record, or
/// it belongs to another balancer).
pub fn read(id: u32) -> Result<Vec<DesiredVip>> {
    let Some((text, path)) = state::read(Kind::Health, id)? else {
        return Ok(Vec::new());
    };
    let mine = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(HEADER))
        .is_some_and(|n| n.trim() == id.to_string());
    if !mine {
        return Ok(Vec::new());
    }
    let d = config_file::parse(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(d.vips)
}
