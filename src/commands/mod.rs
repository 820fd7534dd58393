//! One module per command; each validates, then acts through `datapath`.

pub mod attach;
pub mod backend;
pub mod list;
pub mod status;
pub mod vip;

use anyhow::Result;

use crate::datapath::balancer::Balancer;
use crate::datapath::load;
use crate::lock::{lock_netns, NetnsLock};

/// For commands that change a running balancer: privileges, the lock, the
/// balancer.
pub fn open_for_change() -> Result<(NetnsLock, Balancer)> {
    load::require_privileges()?;
    let lock = lock_netns()?;
    let balancer = Balancer::require()?;
    balancer.maps.repair_tables()?;
    Ok((lock, balancer))
}
