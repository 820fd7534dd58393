//! How much of the verifier's budget a compiled data path takes on the
//! running kernel: loads each object (its XDP program) with the kernel's
//! statistics log (BPF_LOG_STATS) and prints the verifier's summary line.
//! Linux 6.1's verifier prunes less than today's: run it in the floor
//! kernel before a change to the per-packet path lands.
//!
//! ```text
//! sudo target/release/examples/verifier_stats a.o b.o
//! scripts/kernels/run-in-kernel.sh 6.1 target/release/examples/verifier_stats a.o b.o
//! ```

use anyhow::{Context, Result};
use libbpf_rs::{AsRawLibbpf, ObjectBuilder};

/// BPF_LOG_STATS: the summary only, not the walk.
const LOG_STATS: u32 = 4;

fn main() -> Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!paths.is_empty(), "usage: verifier_stats OBJ.o...");
    for path in paths {
        let mut open = ObjectBuilder::default()
            .open_file(&path)
            .with_context(|| format!("opening {path}"))?;
        let mut buf = vec![0u8; 64 * 1024];
        for mut prog in open.progs_mut() {
            prog.set_log_level(LOG_STATS);
            // SAFETY: buf outlives the load below and is as long as said.
            unsafe {
                libbpf_rs::libbpf_sys::bpf_program__set_log_buf(
                    prog.as_libbpf_object().as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len() as _,
                );
            }
        }
        let result = open.load();
        let log = String::from_utf8_lossy(&buf);
        let log = log.trim_end_matches('\0');
        let stats: Vec<&str> = log.lines().filter(|l| l.contains("processed")).collect();
        match result {
            Ok(_) => println!("{path}: loaded: {}", stats.join(" | ")),
            Err(e) => println!("{path}: FAILED ({e}): {}", stats.join(" | ")),
        }
    }
    Ok(())
}
