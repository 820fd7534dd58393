//! lbctl as a service: applying a configuration file to a running
//! balancer, reading the running configuration back, and `lbctl run`, a
//! loop around the same library API the CLI uses (`datapath::config`):
//! attach, apply, check health, reload on SIGHUP, serve metrics.
//!
//! | file | owns |
//! |---|---|
//! | `apply.rs` | a `Desired` → the maps, changing only what differs |
//! | `running.rs` | the maps → a `Desired` (`lbctl save`) |
//! | `run.rs` | `lbctl run`: the loop, reloads, exit |
//! | `health/` | health checks: probes, rise/fall, the schedule |
//! | `census.rs` | counting open flows per backend in the background |
//! | `replication.rs` | watching conntrackd's sync for `/metrics` |
//! | `metrics.rs` | `GET /metrics`: Prometheus text from a `Snapshot` |
//! | `signals.rs` | SIGHUP, SIGTERM, SIGINT as messages |
//! | `notify.rs` | systemd's readiness protocol (NOTIFY_SOCKET) |

pub mod apply;
pub mod census;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod replication;
pub mod run;
pub mod running;
pub mod signals;
