//! What lbctl's tests, demo and benchmarks share: the network-namespace lab
//! (topologies in `lab`, namespace plumbing in `netns`, real servers on the
//! backends in `servers`, clients that tell which backend answered in
//! `clients`, the XDP_PASS program for the veth ends facing the balancer in
//! `xdp_pass`), and the packet fixtures that run frames through the real
//! program with BPF_PROG_TEST_RUN (`fixtures`). Not shipped: `cargo install`
//! installs only the `lbctl` package.
//!
//! One of each: a packet case is a row of `fixtures::Case` run by
//! `fixtures::run_table` (see `fixtures::cases` for how to add one); the
//! lbctl binary runs in a lab's balancer namespace through
//! `balanced::lbctl`, in a throwaway namespace through `lbctl_ns::LbctlNs`
//! (a test's own wrapper type from `lbctl_ns_type!`); the MACs of the
//! fixtures' neighbours are `fixtures::backend_mac` and `ROUTER_MAC`.

pub mod balanced;
pub mod bird;
pub mod clients;
pub mod configs;
pub mod conntrackd;
pub mod decap;
pub mod direct;
pub mod ecmp;
pub mod fixtures;
pub mod keepalived;
pub mod lab;
pub mod lbctl_ns;
pub mod lbctl_run;
pub mod metrics;
pub mod netns;
pub mod rng;
pub mod servers;
pub mod xdp_pass;

pub use clients::{
    http_backend, http_get, tcp_echo, tcp_hello, udp_ask, ClientError, ConnReport, EchoConfig,
    LongConn,
};
pub use lab::{Lab, Topology, VIP_NET};
pub use netns::{in_ns, try_in_ns};
pub use servers::{BackendServers, ECHO_PORT, HTTP_PORT};

lbctl::include_skeleton!(
    /// A test-only XDP program that strips an IPIP or ip6ip6 outer header,
    /// as a backend's tunnel device would (`decap.rs`).
    decap_prog,
    "decap.skel.rs"
);

lbctl::include_skeleton!(
    /// A test-only XDP program that runs one checksum function of the
    /// data path (`bpf/csum.h`) on inputs in the frame (tests/csum.rs).
    csum_check,
    "csum_check.skel.rs"
);

lbctl::include_skeleton!(
    /// A test-only BPF program that runs the data path's flow hash
    /// (`bpf/hash.h`) on a key, so tests can compare it with `lbctl::hash`.
    hash_check,
    "hash_check.skel.rs"
);

/// Opens and loads (verifier and all) one of the test-only programs above.
/// Its object is leaked: the skeleton borrows it, and a test keeps the
/// program to its end.
pub fn load_test_prog<B: libbpf_rs::skel::SkelBuilder<'static>>(
    builder: B,
) -> libbpf_rs::Result<<B::Output as libbpf_rs::skel::OpenSkel<'static>>::Output> {
    use libbpf_rs::skel::OpenSkel;
    let storage = Box::leak(Box::new(std::mem::MaybeUninit::uninit()));
    builder.open(storage)?.load()
}

/// Tests that differ only in the arguments of one shared body, one row
/// each: `name => body(args);` expands to `#[test] fn name() { body(args); }`.
/// A variant (topology, family, mode) is then one row, not one more wrapper.
/// Attributes (`///` docs, `#[ignore]`) before a row go onto its test.
#[macro_export]
macro_rules! test_rows {
    ($($(#[$attr:meta])* $name:ident => $body:expr;)+) => {
        $(
            $(#[$attr])*
            #[test]
            fn $name() {
                $body;
            }
        )+
    };
}
