//! Everything that touches BPF: the skeleton, loading, finding a running
//! balancer, attaching, and typed access to its maps. One file per concern:
//!
//! | file | owns |
//! |---|---|
//! | `abi.rs` | constants and struct sizes shared with `bpf/lb_abi.h` |
//! | `maps.rs` | the list of the program's maps, and map access with errors that name the map |
//! | `codec.rs` | map keys and values ⇄ addresses, VIPs and backends |
//! | `config.rs` | configuration changes: settings, VIPs, backends, in a crash-safe order |
//! | `reply.rs` | reply sources: derived from the backend rows |
//! | `repair.rs` | finishing a change an lbctl killed halfway left |
//! | `tables.rs` | Maglev tables: size, build, swap in, read back |
//! | `prefilter.rs` | the address prefilter bitmaps |
//! | `memory.rs` | the locked kernel memory the maps hold |
//! | `counters.rs` | per-CPU counters: VIPs, backends, verdicts, flow cache |
//! | `predict.rs` | the backend the data path would pick for a new flow now |
//! | `load.rs` | checks before loading, loading with useful errors |
//! | `balancer.rs` | finding the balancer running in this network namespace |

pub mod abi;
pub mod balancer;
pub mod codec;
pub mod config;
pub mod counters;
pub mod load;
pub mod maps;
pub mod memory;
pub mod predict;
pub mod prefilter;
pub mod repair;
pub mod reply;
pub mod tables;

crate::include_skeleton!(
    /// The skeleton libbpf-cargo generates from `bpf/lb.bpf.c`.
    skel,
    "lb.skel.rs"
);

pub use skel::types;
