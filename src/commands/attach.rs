//! `lbctl attach` and `lbctl detach`.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::sync::mpsc;

use anyhow::{bail, Context, Result};

use crate::datapath::abi::LB_FLOW_CACHE_ENTRIES;
use crate::datapath::balancer::{self, Balancer};
use crate::datapath::load;
use crate::datapath::maps::Maps;
use crate::host::iface;
use crate::host::lock::lock_netns;
use crate::host::{neighbour, routes};
use crate::model::AttachOptions;

pub fn run(opts: &AttachOptions) -> Result<()> {
    load::require_privileges()?;
    load::require_btf()?;
    load::require_kernel()?;
    let iface = opts.iface.as_str();
    let ifindex = iface::ifindex(iface)?;
    let lock = lock_netns()?;
    let running = Balancer::find()?;
    if let Some(b) = &running {
        b.repair()?;
    } else {
        // A fresh balancer serves nothing yet: no route of an earlier one
        // may be left announced.
        routes::sync_none();
    }
    if opts.replace {
        return replace(iface, ifindex, running, opts.flow_cache_size);
    }
    refuse_if_taken(iface, ifindex, running.as_ref())?;
    let (prog_id, has_ipv6_vips) = match running {
        Some(b) => (b.join(ifindex, opts)?, b.maps.has_ipv6_vips()?),
        None => (balancer::start(ifindex, opts)?, false),
    };
    println!("lbctl attached to {iface} (program id {prog_id})");
    if !iface::ipv4_forwarding(iface) {
        eprintln!(
            "lbctl: note: IPv4 forwarding is off on {iface}: balanced packets go to the stack, which drops them; enable it with sysctl -w net.ipv4.conf.{iface}.forwarding=1 (or net.ipv4.ip_forward=1)"
        );
    }
    if has_ipv6_vips && !iface::ipv6_forwarding(iface) {
        eprintln!("lbctl: note: {}", iface::ipv6_forwarding_off(&[iface]));
    }
    drop(lock);
    if opts.foreground {
        wait_for_ctrl_c()?;
        detach(iface)?;
    }
    Ok(())
}

fn refuse_if_taken(iface: &str, ifindex: u32, running: Option<&Balancer>) -> Result<()> {
    let Some((id, _)) = iface::xdp_program(ifindex)? else {
        return Ok(());
    };
    if running.is_some_and(|b| b.attachment(ifindex).is_some()) {
        bail!("lbctl is already attached to {iface} (program id {id}); use --replace to upgrade it in place");
    }
    let name = iface::prog_name(id).unwrap_or_default();
    bail!(
        "{iface} already runs another XDP program (id {id}, {name:?}); remove it first: ip link set dev {iface} xdp off"
    )
}

/// Upgrade in place: a freshly loaded program on the running maps, swapped
/// in on every interface with XDP_FLAGS_REPLACE (never a moment without).
fn replace(
    iface: &str,
    ifindex: u32,
    running: Option<Balancer>,
    flow_cache_size: Option<u32>,
) -> Result<()> {
    let b = running.with_context(|| format!("lbctl is not attached in this network namespace: nothing to replace (attach {iface} without --replace)"))?;
    if b.attachment(ifindex).is_none() {
        bail!("lbctl is not attached to {iface}: nothing to replace (attach it without --replace)");
    }
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
    new_maps.repair()?;
    let id = iface::xdp_program(ifindex)?.map(|p| p.0).unwrap_or(0);
    let names: Vec<&str> = b.attachments.iter().map(|a| a.ifname.as_str()).collect();
    println!(
        "lbctl replaced program {} with {id} on {}",
        b.prog_id,
        names.join(", ")
    );
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
    let _lock = lock_netns()?;
    let b = Balancer::find()?;
    if let Some(b) = &b {
        b.repair()?;
    }
    let (b, a) = b
        .as_ref()
        .and_then(|b| Some((b, b.attachment(ifindex)?)))
        .with_context(|| format!("lbctl is not attached to {iface}"))?;
    if let Some(backends) = b.detach(a)? {
        neighbour::release_unused(&backends, &[]);
        // The health checks recorded for `save` belong to the balancer gone.
        let _ = crate::host::record::clear();
        println!(
            "lbctl detached from {iface}; that was the last interface: all lbctl state is gone"
        );
    } else {
        let left = b.attachments.len() - 1;
        println!("lbctl detached from {iface}; still attached to {left} interface(s)");
    }
    Ok(())
}
