//! The build script of crates/lab and crates/bench (`build =
//! "../bpf-build.rs"` in their Cargo.toml; it runs in the crate's own
//! directory): compiles the crate's BPF programs (`bpf/*.bpf.c`) into Rust
//! skeletons in OUT_DIR. They include the data path's shared headers
//! (`../../bpf`), so there is one definition of each struct and checksum
//! helper.
use libbpf_cargo::SkeletonBuilder;
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for dir in ["bpf", "../../bpf"] {
        println!("cargo:rerun-if-changed={dir}");
        for entry in fs::read_dir(dir).expect("bpf/ exists") {
            println!(
                "cargo:rerun-if-changed={}",
                entry.expect("readable entry").path().display()
            );
        }
    }
    for entry in fs::read_dir("bpf").expect("bpf/ exists") {
        let src = entry.expect("readable bpf/ entry").path();
        let name = src
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(stem) = name.strip_suffix(".bpf.c") else {
            continue;
        };
        SkeletonBuilder::new()
            .source(&src)
            .clang_args(["-Ibpf", "-I../../bpf", "-Wall", "-Wno-unused-function"])
            .build_and_generate(out.join(format!("{stem}.skel.rs")))
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
    }
}
