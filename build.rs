//! Compiles every `bpf/*.bpf.c` and generates its Rust skeleton in OUT_DIR:
//! `lb.bpf.c` (the data path), and test/benchmark helpers beside it.
use libbpf_cargo::SkeletonBuilder;
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources = Vec::new();
    for entry in fs::read_dir("bpf").expect("bpf/ exists") {
        let path = entry.expect("readable bpf/ entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".bpf.c") {
            sources.push((path.clone(), stem.to_owned()));
        }
    }
    println!("cargo:rerun-if-changed=bpf");
    for (src, stem) in sources {
        SkeletonBuilder::new()
            .source(&src)
            .clang_args(["-Ibpf", "-Wall", "-Wno-unused-function"])
            .build_and_generate(out.join(format!("{stem}.skel.rs")))
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
    }
}
