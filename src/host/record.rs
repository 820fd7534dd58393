//! The health checks last applied, kept beside the balancer for `lbctl
//! save`. The maps hold the data path's configuration and each backend's
//! health, but not how a VIP is checked (kind, interval, path...): `lbctl
//! apply` and `lbctl run` write that here, in the configuration file's own
//! format, under /run/lbctl/, one file per network namespace. The file
//! names the balancer it belongs to (`Maps::balancer_id`), so a record of a
//! balancer that is gone is ignored.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config_file;
use crate::model::{Desired, DesiredVip, HealthCheck, Service};

pub const DIR: &str = "/run/lbctl";
const HEADER: &str = "# lbctl: health checks last applied to balancer ";

/// This network namespace's record file.
fn path() -> Result<PathBuf> {
    let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(PathBuf::from(DIR).join(format!("health-netns-{}.toml", ns.ino())))
}

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
    let path = path()?;
    std::fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
    let text = format!("{HEADER}{id}\n{}", config_file::render(&checked));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// Removes this namespace's record (the last detach: the balancer is gone).
pub fn clear() -> Result<()> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The recorded health checks of balancer `id`, by VIP (none if there is
/// no record, or it belongs to another balancer).
pub fn read(id: u32) -> Result<Vec<(Service, HealthCheck)>> {
    let path = path()?;
    let Ok(text) = std::fs::read_to_string(&path) else {
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
