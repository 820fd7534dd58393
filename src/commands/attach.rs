//! `lbctl attach` and `lbctl detach`.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::sync::mpsc;

use anyhow::{bail, Context, Result};

use crate::change::plan::{Kind, Opening};
use crate::change::{self, Session};
use crate::datapath::abi::LB_FLOW_CACHE_ENTRIES;
use crate::datapath::balancer::Balancer;
use crate::datapath::load;
use crate::datapath::maps::Maps;
use crate::host::iface;
use crate::model::AttachOptions;

pub fn run(opts: &AttachOptions) -> Result<()> {
    load::require_privileges()?;
    load::require_btf()?;
    load::require_kernel()?;
    let iface = opts.iface.as_str();
    let ifindex = iface::ifindex(iface)?;
    // A fresh balancer serves nothing yet: without one, no route of an
    // earlier one may be left announced (`plan::opening`).
    let mut s = change::begin(Opening::Attach)?;
    if opts.replace {
        return replace(&s, iface, ifindex, opts.flow_cache_size);
    }
    if let Some(id) = change::xdp_taken(iface, ifindex, s.balancer())? {
        bail!("lbctl is already attached to {iface} (program id {id}); use --replace to upgrade it in place");
    }
    let (prog_id, notes) = s.attach(opts)?;
    println!("lbctl attached to {iface} (program id {prog_id})");
    for note in notes {
        eprintln!("lbctl: note: {note}");
    }
    drop(s);
    if opts.foreground {
        wait_for_ctrl_c()?;
        detach(iface)?;
    }
    Ok(())
}

/// Upgrade in place: a freshly loaded program on the running maps, swapped
/// in on every interface with XDP_FLAGS_REPLACE (never a moment without).
fn replace(s: &Session, iface: &str, ifindex: u32, flow_cache_size: Option<u32>) -> Result<()> {
    let b = s.balancer().with_context(|| format!("lbctl is not attached in this network namespace: nothing to replace (attach {iface} without --replace)"))?;
    if b.attachment(ifindex).is_none() {
        bail!("lbctl is not attached to {iface}: nothing to replace (attach it without --replace)");
    }
    s.run(Kind::Attach, |_| upgrade(b, flow_cache_size))?;
    let id = iface::xdp_program(ifindex)?.map(|p| p.0).unwrap_or(0);
    let names: Vec<&str> = b.attachments.iter().map(|a| a.ifname.as_str()).collect();
    println!(
        "lbctl replaced program {} with {id} on {}",
        b.prog_id,
        names.join(", ")
    );
    Ok(())
}

/// The upgrade itself: load, build the new program's tables, swap it in.
fn upgrade(b: &Balancer, flow_cache_size: Option<u32>) -> Result<()> {
    load::load_conntrack_modules();
    let mut storage = MaybeUninit::uninit();
    // The cache keeps its size unless told otherwise.
    let cache = flow_cache_size
        .or(b.maps.flow_cache_size())
        .unwrap_or(LB_FLOW_CACHE_ENTRIES);
    let skel = load::load_sized(&mut storage, Some(&b.maps), cache)?;
    b.maps.rebuild_prefilter()?;
    // The new program's tables, from the configuration (not reused: the
    // running program's may be in an older format or of an older size).
    let new_maps = Maps::from_skel(&skel)?;
    let rebuilt = new_maps.build_all_tables(&b.maps)?;
    let new = skel.progs.lbctl_xdp.as_fd();
    for a in &b.attachments {
        let old = libbpf_rs::Program::fd_from_id(a.prog_id).with_context(|| {
            format!("opening the running program {} on {}", a.prog_id, a.ifname)
        })?;
        iface::replace(new, old.as_fd(), a.ifindex, &a.ifname, a.mode)?;
    }
    // The new program has a cache of its own; the old one may still be
    // running a packet: neither uses a decision from before the upgrade.
    b.maps.bump_generation()?;
    new_maps.record_tables(&rebuilt)?;
    // What an interrupted lbctl left that the tables did not finish (rows
    // of removed backends; the repair before was skipped for an older
    // program's tables, which it cannot write).
    new_maps.repair(false)?;
    Ok(())
}

fn wait_for_ctrl_c() -> Result<()> {
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    eprintln!("running in the foreground; Ctrl-C detaches");
    let _ = rx.recv();
    Ok(())
}

pub fn detach(iface: &str) -> Result<()> {
    load::require_privileges()?;
    let ifindex = iface::ifindex(iface)?;
    let mut s = change::begin(Opening::Attach)?;
    let done = s
        .detach(ifindex)?
        .with_context(|| format!("lbctl is not attached to {iface}"))?;
    if done.left == 0 {
        println!(
            "lbctl detached from {iface}; that was the last interface: all lbctl state is gone"
        );
    } else {
        let left = done.left;
        println!("lbctl detached from {iface}; still attached to {left} interface(s)");
    }
    Ok(())
}
