//! Typed access to the BPF objects: the skeleton, loading, finding a running
//! balancer, attaching, and its maps. Nothing here reaches the host beyond
//! the interfaces its program is attached to (`host::iface`); what follows a
//! change (routes, neighbours, records) is `change`'s. One file per concern:
//!
//! | file | owns |
//! |---|---|
//! | `abi.rs` | the structs shared with `bpf/lb_abi.h` (its constants: `crate::abi`) |
//! | `maps.rs` | the list of the program's maps, and map access with errors that name the map |
//! | `codec.rs` | map keys and values ⇄ addresses, VIPs and backends |
//! | `config.rs` | settings: the settings row, timeouts, generation, redirect map |
//! | `running.rs` | reading the VIPs and backend rows (`Running`: all of them, once) |
//! | `vips.rs` | adding (one path, with or without backends) and deleting VIPs |
//! | `allowlists.rs` | VIPs' source allowlists (the `allowlists` LPM trie) |
//! | `ports.rs` | the ports of port-less VIPs (all ports or a range: `vip_ports`) |
//! | `backends.rs` | a VIP's backend rows: add, weight, remove, health |
//! | `rebuild.rs` | a VIP's table built from its rows and recorded in the VIP |
//! | `reply.rs` | reply sources: derived from the backend rows |
//! | `repair.rs` | finishing a change an lbctl killed halfway left |
//! | `tables.rs` | Maglev tables: size, build, swap in, read back |
//! | `prefilter.rs` | the address prefilter bitmaps |
//! | `memory.rs` | the locked kernel memory the maps hold |
//! | `counters.rs` | per-CPU counters: VIPs, backends, verdicts, flow cache |
//! | `predict.rs` | the backend the data path would pick for a new flow now |
//! | `load.rs` | checks before loading, loading with useful errors |
//! | `balancer.rs` | finding the balancer running in this network namespace |
//!
//! Changes (`vips.rs`, `backends.rs`) are ordered so that a packet sees the
//! old configuration or the new one, and so that an lbctl killed between
//! any two writes leaves a state that is safe for packets and that
//! `repair.rs` finishes at the next change:
//!
//! - a row is written, and its reply source registered (`reply.rs`), before
//!   a table names it; a table is swapped in with one map update
//!   (`tables.rs`); a row is cleared only after no table names it;
//! - each change has one write that commits it: the VIP entry (add, delete),
//!   the backend row (add, weight), the row's LEAVING flag (removal); what
//!   follows that write is derived from the maps and redone by the repair
//!   if it was not finished;
//! - each change ends by bumping the configuration generation, so the flow
//!   cache drops decisions made under the old configuration.
//!
//! A change of many VIPs reads the maps once (`Running`) and each VIP's
//! backends are set in one call (`set_backends`: rows, then at most one
//! table build and swap); health results are recorded with `set_health`,
//! which treats a down backend as weight 0 in its table while its row keeps
//! the operator's weight. Reading order between files: `running` ← `reply`
//! ← `rebuild` ← `backends`, `vips` ← `repair`; no file imports one that
//! imports it.

pub mod abi;
pub mod allowlists;
pub mod backends;
pub mod balancer;
pub mod codec;
pub mod config;
pub mod counters;
pub mod limits;
pub mod load;
pub mod maps;
pub mod memory;
pub mod ports;
pub mod predict;
pub mod prefilter;
pub mod rebuild;
pub mod repair;
pub mod reply;
pub mod running;
pub mod table_names;
pub mod tables;
pub mod vips;

crate::include_skeleton!(
    /// The skeleton libbpf-cargo generates from `bpf/lb.bpf.c`.
    skel,
    "lb.skel.rs"
);

pub use skel::types;
