//! Compiles the XDP program under bpf/ and generates its Rust skeleton.
use libbpf_cargo::SkeletonBuilder;
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The directory too: a file added later (bpf/harness.bpf.c) must rerun
    // this script, and cargo watches only the paths named here.
    println!("cargo:rerun-if-changed=bpf");
    for entry in fs::read_dir("bpf").expect("bpf/ exists") {
        let path = entry.expect("readable bpf/ entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for (src, skel) in [
        ("bpf/lb.bpf.c", "lb.skel.rs"),
        ("bpf/harness.bpf.c", "harness.skel.rs"),
    ] {
        if !std::path::Path::new(src).exists() {
            continue;
        }
        SkeletonBuilder::new()
            .source(src)
            .clang_args(["-Ibpf", "-Wall", "-Wno-unused-function"])
            .build_and_generate(out.join(skel))
            .unwrap_or_else(|e| panic!("building {src}: {e:#}"));
    }
}
