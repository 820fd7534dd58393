//! Node drain (`lbctl drain` / `lbctl undrain`): the balancer keeps
//! forwarding what arrives, but withdraws every VIP route (`routes.rs`), so
//! the routers send new traffic to the other balancers. The state is a
//! record under /run/lbctl/ (`state.rs`) naming the balancer it belongs to
//! (`Maps::balancer_id`): it lasts as long as that balancer (the last
//! detach removes it, and so does the sweep once its maps are gone), and
//! every command that reconciles routes (the CLI's, `lbctl run`'s) reads
//! it, so none announces again.

use anyhow::Result;

use crate::host::state::{self, Kind};

/// Whether balancer `id` is drained.
pub fn is_drained(id: u32) -> bool {
    state::read(Kind::Drained, id)
        .ok()
        .flatten()
        .is_some_and(|(t, _)| t.trim() == id.to_string())
}

/// Records that balancer `id` is drained.
pub fn set(id: u32) -> Result<()> {
    state::write(Kind::Drained, id, &format!("{id}\n"))
}

/// Removes this namespace's drain record, whichever balancer it names.
pub fn clear() -> Result<()> {
    state::clear(Kind::Drained)
}
