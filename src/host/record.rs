//! The health checks last applied, kept beside the balancer for `lbctl
//! save`. The maps hold the data path's configuration and each backend's
//! health, but not how a VIP is checked (kind, interval, path...): `lbctl
//! apply` and `lbctl run` write that here, in the configuration file's own
//! format, as a record under /run/lbctl/ (`state.rs`) of the balancer it
//! belongs to (`Maps::balancer_id`), which goes when that balancer goes.

use anyhow::{Context, Result};

use crate::config_file;
use crate::host::state::{self, Kind};
use crate::model::{Desired, DesiredVip, HealthCheck, Service};

const HEADER: &str = "# lbctl: health checks last applied to balancer ";

/// Records the health checks of `desired`'s VIPs for balancer `id`.
pub fn write(id: u32, desired: &Desired) -> Result<()> {
    let checked = Desired {
        vips: desired
            .vips
            .iter()
            .filter(|v| v.health.is_some())
            .map(|v| DesiredVip {
                backends: Vec::new(),
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

/// The recorded health checks of balancer `id`, by VIP (none if there is
/// no record, or it belongs to another balancer).
pub fn read(id: u32) -> Result<Vec<(Service, HealthCheck)>> {
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
    Ok(d.vips
        .into_iter()
        .filter_map(|v| Some((v.spec.service, v.health?)))
        .collect())
}
