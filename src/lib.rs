//! lbctl: a layer-4 load balancer in XDP whose connections are held by the
//! kernel's conntrack. The binary is a thin dispatcher over this library, so
//! tests, the demo and the benchmarks use the same code.
//!
//! | module | owns |
//! |---|---|
//! | `cli` | clap definitions only |
//! | `model` | operator input: parsing, validation, requests (pure) |
//! | `prefix` | address prefixes and VIP source allowlists (pure) |
//! | `abi` | the constants of `bpf/lb_abi.h` (generated) |
//! | `maglev`, `hash`, `table_size` | Maglev tables, the flow hash, table sizes (pure) |
//! | `config_file` | the configuration file: TOML ⇄ `model::Desired` (pure) |
//! | `wire` | IP, TCP and UDP packets built and read in user space (pure) |
//! | `netlink` | one netlink request and its answer, any family |
//! | `host` | the host around the balancer: interfaces, neighbours, VIP routes, lock, records under /run |
//! | `conntrack` | the kernel's conntrack table, read through ctnetlink |
//! | `datapath` | typed access to the BPF objects (see its module docs) |
//! | `change` | a change to a running balancer: lock, repair, the change, what follows |
//! | `snapshot` | a balancer at one moment (list, save, metrics read it) |
//! | `commands` | one module per command |
//! | `service` | `apply`, `save`, and `lbctl run`: the loop, health checks, metrics |
//!
//! Layers, each importing only those below it (`grep -rn "use crate::"`):
//!
//! 1. `abi`, `hash`, `maglev`, `prefix`, `wire`; then `table_size`, `model`, `config_file`;
//! 2. `netlink`; then `host` and `conntrack` (plain values in and out:
//!    never `datapath`);
//! 3. `datapath` (uses `host::iface` for the interfaces its program is on);
//! 4. `change` and `snapshot`;
//! 5. `commands` and `service` (`commands` runs `service::apply`, the
//!    service never a command); `cli` beside them, used by `main.rs`.

pub mod abi;
pub mod change;
pub mod cli;
pub mod commands;
pub mod config_file;
pub mod conntrack;
pub mod datapath;
pub mod hash;
pub mod host;
pub mod maglev;
pub mod model;
mod netlink;
pub mod prefix;
pub mod service;
mod skeleton;
pub mod snapshot;
pub mod table_size;
pub mod wire;
