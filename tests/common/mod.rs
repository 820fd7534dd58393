//! Network-namespace lab shared by the end-to-end tests, the demo and the
//! benchmarks: topologies (`lab`), namespace plumbing (`netns`), real servers
//! on the backends (`servers`) and clients that tell which backend answered
//! (`clients`), and the XDP_PASS program the lab puts on the veth ends facing
//! the balancer (`xdp_pass`).
//!
//! Every test binary compiles this module and uses a different part of it.
#![allow(dead_code, unused_imports)]

pub mod clients;
pub mod lab;
pub mod netns;
pub mod servers;
pub mod xdp_pass;

pub use clients::{
    http_backend, http_get, tcp_echo, tcp_hello, udp_ask, ClientError, ConnReport, EchoConfig,
    LongConn,
};
pub use lab::{Lab, Topology, VIP_NET};
pub use netns::{in_ns, try_in_ns};
pub use servers::{BackendServers, ECHO_PORT, HTTP_PORT};
