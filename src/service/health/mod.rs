//! Health checks: each backend of a VIP with a `[vip.health]` section is
//! probed once per interval from the balancer's own network namespace,
//! straight to the backend's address (not through the VIP). Probes of a
//! VIP's backends are spread evenly over the interval, not sent in bursts.
//!
//! | file | owns |
//! |---|---|
//! | `probe.rs` | one check: TCP connect, HTTP(S) GET, UDP send/expect, with a deadline |
//! | `http.rs` | the HTTP/1.1 exchange: request, status, body match |
//! | `tls.rs` | HTTPS: rustls configurations, server names, `verify` |
//! | `tracker.rs` | rise/fall: when results change a backend's health (pure) |
//! | `schedule.rs` | when each backend is probed, on a few worker threads |
//!
//! Results go back to `lbctl run`'s loop, which records changes in the
//! maps with `Maps::set_health` (a down backend leaves its VIP's table).

pub mod http;
pub mod probe;
pub mod schedule;
pub mod tls;
pub mod tracker;

use std::net::SocketAddr;

use crate::model::{HealthCheck, Service};

/// One backend to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: Service,
    /// The backend's address (its identity in the VIP).
    pub backend: SocketAddr,
    pub check: HealthCheck,
}

impl Target {
    /// Where the probe goes: the backend's address, on the check's port if
    /// it has one.
    pub fn probe_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.backend.ip(),
            self.check.port.unwrap_or(self.backend.port()),
        )
    }
}
