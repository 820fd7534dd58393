//! Health checks: each backend of a VIP with a `[vip.health]` section is
//! probed once per interval from the balancer's own network namespace:
//! straight to the backend's address for dnat and fullnat VIPs (their
//! backends answer there), through the VIP the way clients' packets go for
//! dsr and tunnel VIPs (`through_vip.rs`). Probes of a VIP's backends are
//! spread evenly over the interval, not sent in bursts.
//!
//! | file | owns |
//! |---|---|
//! | `probe.rs` | one check: TCP connect, HTTP(S) GET, UDP send/expect, with a deadline |
//! | `through_vip.rs` | a dsr or tunnel backend's check through the VIP: SYN or datagram by packet sockets |
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
pub mod through_vip;
pub mod tls;
pub mod tracker;

use std::net::SocketAddr;
use std::time::Instant;

use crate::model::{CheckKind, HealthCheck, Service};
use probe::Failure;
use through_vip::{Exchange, Path};

/// One backend to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: Service,
    /// The backend's address (its identity in the VIP).
    pub backend: SocketAddr,
    pub check: HealthCheck,
    /// How clients' packets reach the backend when not at its address
    /// (dsr, tunnel): the check goes that way too.
    pub path: Option<Path>,
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

    /// Where a check through the VIP goes: the VIP, on the check's port if
    /// it has one (a backend of a dsr or tunnel VIP listens on the VIP's
    /// port).
    pub fn vip_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.service.addr.ip(),
            self.check.port.unwrap_or(self.service.addr.port()),
        )
    }

    /// Runs one check within the check's timeout. Through the VIP (dsr,
    /// tunnel): TCP is the handshake's first half there; UDP the check's
    /// exchange there; HTTP(S) both the handshake there and the request to
    /// the backend's address (the request needs a whole connection, which
    /// packet sockets do not make: the handshake proves the VIP's path, the
    /// request the application).
    pub fn run(&self) -> Result<(), Failure> {
        let timeout = self.check.timeout;
        let Some(path) = self.path else {
            return probe::probe(&self.check.kind, self.probe_addr(), timeout);
        };
        let started = Instant::now();
        let deadline = started + timeout;
        let (vip, backend) = (self.vip_addr(), self.backend.ip());
        match &self.check.kind {
            CheckKind::Tcp => through_vip::check(&Exchange::Tcp, vip, backend, path, deadline),
            CheckKind::Udp { send, expect } => {
                let udp = Exchange::Udp { send, expect };
                through_vip::check(&udp, vip, backend, path, deadline)
            }
            http @ CheckKind::Http(_) => {
                through_vip::check(&Exchange::Tcp, vip, backend, path, deadline)?;
                let rest = timeout.saturating_sub(started.elapsed());
                probe::probe(http, self.probe_addr(), rest)
            }
        }
    }
}
