//! lbctl: a layer-4 load balancer in XDP whose connections are held by the
//! kernel's conntrack. The binary is a thin dispatcher over this library, so
//! tests, the demo and the benchmarks use the same code.

pub mod cli;
pub mod commands;
pub mod datapath;
pub mod hash;
pub mod json;
pub mod lock;
pub mod maglev;
pub mod model;
pub mod neighbour;
