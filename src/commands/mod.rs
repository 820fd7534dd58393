//! One module per command. Each takes `model` types (validated already),
//! acts through `datapath`, and prints what it did. Commands do not call
//! each other; what two need lives in `datapath` or `model`.

pub mod apply;
pub mod attach;
pub mod backend;
pub mod conns;
pub mod docs;
pub mod drain;
pub mod explain;
pub mod list;
pub mod run;
pub mod save;
pub mod status;
pub mod timeouts;
pub mod vip;

use anyhow::Result;

use crate::datapath::balancer::Balancer;
use crate::datapath::load;
use crate::host::lock::{lock_netns, NetnsLock};
use crate::host::routes;

/// For commands that change a running balancer: privileges, the lock, the
/// balancer, and whatever an interrupted lbctl left half-done finished
/// (`Balancer::repair`).
pub fn open_for_change() -> Result<(NetnsLock, Balancer)> {
    load::require_privileges()?;
    let lock = lock_netns()?;
    let Some(balancer) = Balancer::find()? else {
        // No balancer (its last interface went away under it): it serves
        // no VIP, so no route may be left announcing one.
        routes::sync_none();
        return Balancer::require().map(|b| (lock, b));
    };
    balancer.maps.require_current_tables()?;
    balancer.repair()?;
    Ok((lock, balancer))
}

/// After a change: the VIP routes the maps now call for (`routes.rs`).
pub fn publish_routes(b: &Balancer) {
    routes::sync(&b.maps);
}

/// For commands that only read a running balancer.
pub fn open_for_reading() -> Result<Balancer> {
    load::require_privileges()?;
    Balancer::require()
}
