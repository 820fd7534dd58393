//! lbctl-applybench: how long `lbctl apply` takes to configure a balancer
//! from a file of 1,000 VIPs x 16 backends (16,016 backend rows), on an
//! empty balancer, then the same file again (nothing to change). Runs the
//! library's own apply (`lbctl::service::apply`) on lbctl's real program,
//! loaded with fresh maps in a network namespace of its own (gone with the
//! thread), and checks the result: one table build per VIP, every table
//! holding the VIP's 16 backends at the size lbctl chose for them, and no
//! change at all the second time. Reports the locked kernel memory of all
//! the balancer's maps (the goal: under 100 MiB for 1,000 x 16).
//!
//! `make bench` runs it; `make test` runs `--quick` (100 VIPs) once.

use std::mem::MaybeUninit;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use lbctl::config_file;
use lbctl::datapath::config::initial_settings;
use lbctl::datapath::load;
use lbctl::datapath::maps::Maps;
use lbctl::datapath::memory::{mib, Memory};
use lbctl::model::{Desired, DEFAULT_HASH_SEED};
use lbctl::service::apply;
use lbctl::table_size;

#[derive(Parser, Debug)]
#[command(about = "Time of lbctl apply for a file of many VIPs on an empty balancer")]
struct Args {
    /// 100 VIPs instead of 1,000 (make test); figures not for quoting.
    #[arg(long)]
    quick: bool,
    /// VIPs in the file [default: 1000; quick: 100].
    #[arg(long)]
    vips: Option<u32>,
    /// Backends per VIP.
    #[arg(long, default_value_t = 16)]
    backends: u32,
    /// Every VIP's table fixed at this size (65537: as before lbctl sized
    /// tables per VIP) instead of sized by lbctl.
    #[arg(long)]
    table_size: Option<u32>,
}

fn run(args: &Args) -> Result<()> {
    load::require_privileges()?;
    let vips = args.vips.unwrap_or(if args.quick { 100 } else { 1000 });
    ensure!(args.backends <= 200, "at most 200 backends per VIP here");
    let d = lbctl_lab::configs::many_vips(vips, args.backends, args.table_size);
    let fixed = args.table_size;
    // Through the file format, as an operator's file would come.
    let text = config_file::render(&d);
    let d = config_file::parse(&text).context("reading the generated file back")?;
    let lines = text.lines().count();
    let worker = std::thread::spawn(move || -> Result<(f64, f64, apply::Applied, Memory, u32)> {
        // SAFETY: unshare affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        load::load_conntrack_modules();
        let mut storage = MaybeUninit::uninit();
        let skel = load::load(&mut storage, None)?;
        let maps = Maps::from_skel(&skel)?;
        maps.set_settings(&initial_settings(DEFAULT_HASH_SEED))?;
        let started = Instant::now();
        let first = apply::apply(&maps, &[], &d)?;
        let first_s = started.elapsed().as_secs_f64();
        let memory = maps.locked_memory()?;
        let run = maps.running()?;
        let size = fixed.unwrap_or(table_size::auto_size(args_backends(&d)));
        for v in &run.vips {
            let table = maps.table(v.index)?;
            let members = run.members(v);
            ensure!(
                members.len() == args_backends(&d) && table.len() == v.table_size as usize,
                "VIP {}: {} backends, a table of {} slots",
                v.service,
                members.len(),
                table.len()
            );
            ensure!(
                table.iter().all(|id| members.iter().any(|m| m.id == *id)),
                "VIP {}: its table names a backend of another VIP",
                v.service
            );
            ensure!(
                v.table_size == size && v.fixed_size == fixed.is_some(),
                "VIP {}: a table of {} slots, lbctl sizes {} backends' at {size}",
                v.service,
                v.table_size,
                members.len()
            );
        }
        let started = Instant::now();
        let again = apply::apply(&maps, &[], &d)?;
        let again_s = started.elapsed().as_secs_f64();
        ensure!(again.is_empty(), "the same file again changed: {again}");
        ensure!(
            first.vips_added == d.vips.len() && first.tables_rebuilt == d.vips.len(),
            "expected one table per VIP: {first}"
        );
        Ok((first_s, again_s, first, memory, size))
    });
    let (first_s, again_s, first, memory, size) = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))??;
    println!(
        "lbctl-applybench{}: a file of {vips} VIPs x {} backends ({lines} lines)",
        if args.quick {
            " --quick (not for quoting)"
        } else {
            ""
        },
        args.backends
    );
    println!("  apply to an empty balancer   {first_s:>7.2} s   ({first})");
    println!("  the same file again          {again_s:>7.2} s   (no changes)");
    println!(
        "  locked memory                {:>9}   ({} maps; {} in {} VIP tables of {size} slots)",
        mib(memory.total),
        memory.maps,
        mib(memory.tables),
        memory.table_count
    );
    if !args.quick && fixed.is_none() && vips >= 1000 && memory.total >= GOAL_BYTES {
        bail!(
            "{} locked: the goal is under {}",
            mib(memory.total),
            mib(GOAL_BYTES)
        );
    }
    Ok(())
}

/// 1,000 VIPs x 16 backends must fit in less locked memory than this.
const GOAL_BYTES: u64 = 100 << 20;

fn args_backends(d: &Desired) -> usize {
    d.vips.first().map_or(0, |v| v.backends.len())
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl-applybench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
