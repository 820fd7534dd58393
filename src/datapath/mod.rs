//! Everything that touches BPF: the skeleton, loading, finding a running
//! balancer, attaching, and typed access to its maps.

pub mod abi;
pub mod attach;
pub mod balancer;
pub mod load;
pub mod tables;

/// The skeleton libbpf-cargo generates from `bpf/lb.bpf.c`.
#[allow(
    clippy::all,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unused_imports
)]
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/lb.skel.rs"));
}

pub use skel::types;
