//! `lbctl attach` and `lbctl detach`.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;

use crate::cli::{AttachArgs, AttachMode};
use crate::datapath::abi::*;
use crate::datapath::attach::{self, XdpMode};
use crate::datapath::balancer::{Balancer, Maps};
use crate::datapath::load;
use crate::datapath::types::lb_config;
use crate::lock::lock_netns;
use crate::neighbour;

/// Balancers that were not given a seed agree with each other.
pub const DEFAULT_HASH_SEED: u32 = 0x6c62_6374;

pub fn run(args: &AttachArgs) -> Result<()> {
    load::require_privileges()?;
    load::require_btf()?;
    load::require_kernel()?;
    let ifindex = attach::ifindex(&args.iface)?;
    let lock = lock_netns()?;
    let running = Balancer::find()?;
    if args.replace {
        return replace(&args.iface, ifindex, running, args.flow_cache_size);
    }
    refuse_if_taken(&args.iface, ifindex, running.as_ref())?;
    let mode = match args.mode {
        AttachMode::Auto => XdpMode::Auto,
        AttachMode::Native => XdpMode::Native,
        AttachMode::Generic => XdpMode::Generic,
    };
    let prog_id = match running {
        Some(b) => join(&b, &args.iface, ifindex, mode, args)?,
        None => start(&args.iface, ifindex, mode, args)?,
    };
    println!("lbctl attached to {} (program id {prog_id})", args.iface);
    if !forwarding_on(&args.iface) {
        eprintln!(
            "lbctl: note: IPv4 forwarding is off on {0}: balanced packets go to the stack, which drops them; enable it with sysctl -w net.ipv4.conf.{0}.forwarding=1 (or net.ipv4.ip_forward=1)",
            args.iface
        );
    }
    drop(lock);
    if args.foreground {
        wait_for_ctrl_c()?;
        detach(&args.iface)?;
    }
    Ok(())
}

/// The XDP program forwards through the kernel's FIB, which refuses to route
/// for an interface that does not forward.
pub fn forwarding_on(iface: &str) -> bool {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1")
}

fn refuse_if_taken(iface: &str, ifindex: u32, running: Option<&Balancer>) -> Result<()> {
    let Some((id, _)) = attach::xdp_program(ifindex)? else {
        return Ok(());
    };
    if running.is_some_and(|b| b.attachments.iter().any(|a| a.ifindex == ifindex)) {
        bail!("lbctl is already attached to {iface} (program id {id}); use --replace to upgrade it in place");
    }
    let name = attach::prog_name(id).unwrap_or_default();
    bail!(
        "{iface} already runs another XDP program (id {id}, {name:?}); remove it first: ip link set dev {iface} xdp off"
    )
}

/// First interface in this namespace: load a fresh program with fresh maps.
fn start(iface: &str, ifindex: u32, mode: XdpMode, args: &AttachArgs) -> Result<u32> {
    load::load_conntrack_modules();
    let mut storage = MaybeUninit::uninit();
    let cache = args.flow_cache_size.unwrap_or(LB_FLOW_CACHE_ENTRIES);
    let skel = load::load_sized(&mut storage, None, cache)?;
    let maps = Maps::from_skel(&skel)?;
    maps.set_settings(&lb_config {
        hash_seed: args.hash_seed.unwrap_or(DEFAULT_HASH_SEED),
        tcp_timeout_s: LB_DEFAULT_TCP_TIMEOUT_S,
        tcp_fin_timeout_s: LB_DEFAULT_TCP_FIN_TIMEOUT_S,
        udp_timeout_s: LB_DEFAULT_UDP_TIMEOUT_S,
        ..Default::default()
    })?;
    add_tx_port(&maps, ifindex)?;
    // Until this succeeds nothing is attached; if it fails, dropping the
    // skeleton frees the program and maps: nothing is left half-done.
    attach::attach(skel.progs.lbctl_xdp.as_fd(), ifindex, iface, mode)?;
    let info = attach::xdp_program(ifindex)?.context("program vanished right after attaching")?;
    Ok(info.0)
}

/// Another interface of a running balancer: same program, same maps.
fn join(b: &Balancer, iface: &str, ifindex: u32, mode: XdpMode, args: &AttachArgs) -> Result<u32> {
    let running_seed = b.maps.settings()?.hash_seed;
    if let Some(seed) = args.hash_seed.filter(|s| *s != running_seed) {
        bail!("--hash-seed {seed} differs from the running balancer's seed {running_seed}; detach everywhere first to change it");
    }
    let running_size = b.maps.flow_cache_size();
    if let Some(size) = args.flow_cache_size.filter(|s| Some(*s) != running_size) {
        bail!(
            "--flow-cache-size {size} differs from the running balancer's {}; change it with attach {} --replace --flow-cache-size {size}",
            running_size.map_or("(none)".into(), |s| s.to_string()),
            b.attachments.first().map_or(iface, |a| a.ifname.as_str())
        );
    }
    add_tx_port(&b.maps, ifindex)?;
    if let Err(e) = attach::attach(b.prog.as_fd(), ifindex, iface, mode) {
        let _ = b.maps.tx_ports.delete(&ifindex.to_ne_bytes());
        return Err(e);
    }
    b.maps.bump_generation()?;
    Ok(b.prog_id)
}

fn add_tx_port(maps: &Maps, ifindex: u32) -> Result<()> {
    maps.tx_ports
        .update(
            &ifindex.to_ne_bytes(),
            &ifindex.to_ne_bytes(),
            MapFlags::ANY,
        )
        .context("adding the interface to the redirect map")
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
    if !b.attachments.iter().any(|a| a.ifindex == ifindex) {
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
    let new = skel.progs.lbctl_xdp.as_fd();
    for a in &b.attachments {
        let old = libbpf_rs::Program::fd_from_id(a.prog_id)?;
        attach::replace(new, old.as_fd(), a.ifindex, &a.ifname, a.mode)?;
    }
    // The new program has a cache of its own; the old one may still be
    // running a packet: neither uses a decision from before the upgrade.
    b.maps.bump_generation()?;
    let id = attach::xdp_program(ifindex)?.map(|p| p.0).unwrap_or(0);
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
    let ifindex = attach::ifindex(iface)?;
    let _lock = lock_netns()?;
    let b = Balancer::find()?;
    let a = b
        .as_ref()
        .and_then(|b| b.attachments.iter().find(|a| a.ifindex == ifindex))
        .with_context(|| format!("lbctl is not attached to {iface}"))?;
    // Read before the last detach: after it the maps are gone.
    let backends: Vec<IpAddr> = b
        .as_ref()
        .filter(|b| b.attachments.len() == 1)
        .and_then(|b| b.maps.backends().ok())
        .unwrap_or_default()
        .iter()
        .map(|r| r.addr.ip())
        .collect();
    attach::detach(ifindex, iface, a.mode)?;
    if let Some(b) = &b {
        let _ = b.maps.tx_ports.delete(&ifindex.to_ne_bytes());
        let left = b.attachments.len() - 1;
        if left > 0 {
            b.maps.bump_generation()?;
        }
        if left == 0 {
            println!(
                "lbctl detached from {iface}; that was the last interface: all lbctl state is gone"
            );
            neighbour::release_unused(&backends, &[]);
        } else {
            println!("lbctl detached from {iface}; still attached to {left} interface(s)");
        }
    }
    Ok(())
}
