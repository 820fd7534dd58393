//! The host around the balancer: everything lbctl changes or reads outside
//! the BPF objects. Nothing here imports `datapath`: callers pass plain values.
//!
//! | file | owns |
//! |---|---|
//! | `census.rs` | open flows per backend as `lbctl run` last counted them (a state file) |
//! | `conntrackd.rs` | conntrackd's sync statistics, from its control socket |
//! | `iface.rs` | interfaces, forwarding sysctls, XDP attachment (netlink) |
//! | `neighbour.rs` | managed neighbour entries for backends' next hops |
//! | `routes.rs` | VIP host routes for BGP (`ip route show proto 108`) |
//! | `rtnl.rs` | rtnetlink requests for `neighbour` and `routes` |
//! | `lock.rs` | the per-namespace lock |
//! | `state.rs` | state files under /run/lbctl, one per balancer, swept when it goes |
//! | `drain.rs` | the node-drain record (a state file) |
//! | `record.rs` | the health checks last applied (a state file) |
//! | `expired.rs` | the entries `--on-backend-gone` removed, per VIP (a state file) |

pub mod census;
pub mod conntrackd;
pub mod drain;
pub mod expired;
pub mod iface;
pub mod lock;
pub mod neighbour;
pub mod record;
pub mod routes;
mod rtnl;
pub mod state;
