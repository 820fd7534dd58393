//! One module per command. Each takes `model` types (validated already),
//! changes a running balancer through `change` (reads it through
//! `datapath`), and prints what it did. Commands do not call each other;
//! what two need lives in `change`, `datapath` or `model`.

pub mod apply;
pub mod attach;
pub mod backend;
pub mod check;
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

use crate::change::{self, Session};
use crate::datapath::balancer::Balancer;
use crate::datapath::load;

/// For commands that change a running balancer: privileges, then the
/// change begun (`change::open`: the lock, the repair, its routes).
pub fn open_for_change() -> Result<Session> {
    load::require_privileges()?;
    change::open()
}

/// For commands that only read a running balancer.
pub fn open_for_reading() -> Result<Balancer> {
    load::require_privileges()?;
    Balancer::require()
}
