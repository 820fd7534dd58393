//! Node drain (`lbctl drain` / `lbctl undrain`): the balancer keeps
//! forwarding what arrives, but withdraws every VIP route (`routes.rs`), so
//! the routers send new traffic to the other balancers. The state is a file
//! under /run/lbctl/, one per network namespace, naming the balancer it
//! belongs to (`Maps::balancer_id`, the settings map's id): it lasts as
//! long as that balancer (the last detach removes it), a record of a
//! balancer that is gone is ignored, and every command that reconciles
//! routes (the CLI's, `lbctl run`'s) reads it, so none announces again.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::host::record::DIR;

/// This network namespace's drain record.
fn path() -> Result<PathBuf> {
    let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(PathBuf::from(DIR).join(format!("drained-netns-{}", ns.ino())))
}

/// Whether balancer `id` is drained.
pub fn is_drained(id: u32) -> bool {
    let Ok(path) = path() else {
        return false;
    };
    std::fs::read_to_string(path).is_ok_and(|t| t.trim() == id.to_string())
}

/// Records that balancer `id` is drained (written whole, then renamed into
/// place: a killed lbctl leaves the old record or the new one).
pub fn set(id: u32) -> Result<()> {
    let path = path()?;
    std::fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// Removes the drain record, whichever balancer it names.
pub fn clear() -> Result<()> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
