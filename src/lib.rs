//! lbctl: a layer-4 load balancer in XDP whose connections are held by the
//! kernel's conntrack. The binary is a thin dispatcher over this library, so
//! tests, the demo and the benchmarks use the same code.
//!
//! | module | owns |
//! |---|---|
//! | `cli` | clap definitions only |
//! | `model` | operator input: parsing, validation, requests (pure) |
//! | `commands` | one module per command |
//! | `datapath` | everything that touches BPF (see its module docs) |
//! | `maglev`, `hash` | Maglev tables and the flow hash (pure) |
//! | `conntrack` | the kernel's conntrack table, read through ctnetlink |
//! | `neighbour` | managed neighbour entries for backends' next hops |
//! | `routes`, `drain` | VIP host routes for BGP (`ip route show proto 108`); node drain |
//! | `iproute` | runs `ip` (iproute2) for `neighbour` and `routes` |
//! | `config_file` | the configuration file: TOML ⇄ `model::Desired` (pure) |
//! | `service` | `apply`, `save`, and `lbctl run`: the loop, health checks, metrics |
//! | `snapshot` | a balancer at one moment (list, save, metrics read it) |
//! | `conntrack` | the kernel's conntrack table through ctnetlink |

pub mod cli;
pub mod commands;
pub mod config_file;
pub mod conntrack;
pub mod datapath;
pub mod hash;
pub mod host;
pub mod maglev;
pub mod model;
pub mod service;
mod skeleton;
pub mod snapshot;
pub mod table_size;
