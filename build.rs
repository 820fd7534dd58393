//! Compiles the data path, `bpf/lb.bpf.c`, and generates its Rust skeleton
//! in OUT_DIR. Test and benchmark BPF programs belong to their own crates
//! (crates/lab, crates/bench), so the product builds only what it ships.
use libbpf_cargo::SkeletonBuilder;
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=bpf");
    for entry in fs::read_dir("bpf").expect("bpf/ exists") {
        let path = entry.expect("readable bpf/ entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }
    SkeletonBuilder::new()
        .source("bpf/lb.bpf.c")
        .clang_args(["-Ibpf", "-Wall", "-Wno-unused-function"])
        .build_and_generate(out.join("lb.skel.rs"))
        .unwrap_or_else(|e| panic!("building bpf/lb.bpf.c: {e:#}"));
}
