//! A running balancer: its program and maps, found through the interfaces
//! of the current network namespace. No pins: the XDP program attached to an
//! interface holds its maps, so a balancer's state lives exactly as long as
//! it is attached somewhere and belongs to that interface's namespace. This
//! is what makes `ip netns exec NS lbctl ...` work across invocations (that
//! command hides the host's /sys/fs/bpf) and keeps namespaces apart.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context, Result};

use super::abi::LB_FLOW_CACHE_ENTRIES;
use super::config::initial_settings;
use super::load;
use super::maps::{u32_of, Maps};
use super::repair::Repaired;
use super::running::Running;
use crate::host::iface::{self, Attachment};
use crate::model::{AttachOptions, DEFAULT_HASH_SEED};

/// The program's name as the kernel reports it (BPF names are 15 bytes).
pub const PROG_NAME: &str = "lbctl_xdp";

/// A balancer running in this network namespace.
pub struct Balancer {
    pub prog: OwnedFd,
    pub prog_id: u32,
    pub maps: Maps,
    /// Every interface it is attached to.
    pub attachments: Vec<Attachment>,
}

/// The error of a command that needs a running balancer.
pub fn not_running() -> anyhow::Error {
    anyhow::anyhow!(
        "lbctl is not attached to any interface in this network namespace: run `lbctl attach IFACE` first"
    )
}

/// Every interface of this namespace that runs lbctl's program.
pub fn lbctl_attachments() -> Result<Vec<Attachment>> {
    let mut out = iface::attachments()?;
    out.retain(|a| iface::prog_name(a.prog_id).is_ok_and(|n| n == PROG_NAME));
    Ok(out)
}

impl Balancer {
    /// The balancer attached to this namespace's interfaces, if any.
    pub fn find() -> Result<Option<Balancer>> {
        let attachments = lbctl_attachments()?;
        let Some(first) = attachments.first() else {
            return Ok(None);
        };
        let prog = libbpf_rs::Program::fd_from_id(first.prog_id)
            .with_context(|| format!("opening program id {}", first.prog_id))?;
        let maps = Maps::from_prog(prog.as_fd())?;
        Ok(Some(Balancer {
            prog_id: first.prog_id,
            prog,
            maps,
            attachments,
        }))
    }

    /// Like `find`, but a balancer must be running.
    pub fn require() -> Result<Balancer> {
        match Balancer::find()? {
            Some(b) => Ok(b),
            None => Err(not_running()),
        }
    }

    /// Another interface of a running balancer: same program, same maps.
    pub fn join(&self, ifindex: u32, opts: &AttachOptions) -> Result<u32> {
        let b = self;
        let running_seed = b.maps.settings()?.hash_seed;
        if let Some(seed) = opts.hash_seed.filter(|s| *s != running_seed) {
            bail!("--hash-seed {seed} differs from the running balancer's seed {running_seed}; detach everywhere first to change it");
        }
        let running_size = b.maps.flow_cache_size();
        if let Some(size) = opts.flow_cache_size.filter(|s| Some(*s) != running_size) {
            bail!(
                "--flow-cache-size {size} differs from the running balancer's {}; change it with attach {} --replace --flow-cache-size {size}",
                running_size.map_or("(none)".into(), |s| s.to_string()),
                b.attachments.first().map_or(opts.iface.as_str(), |a| a.ifname.as_str())
            );
        }
        b.maps.add_tx_port(ifindex)?;
        if let Err(e) = iface::attach(b.prog.as_fd(), ifindex, &opts.iface, opts.mode) {
            let _ = b.maps.remove_tx_port(ifindex);
            return Err(e);
        }
        b.maps.bump_generation()?;
        Ok(b.prog_id)
    }

    /// Detaches from one interface. The last detach frees the program and
    /// every map: then the addresses of the backends it had are returned
    /// (read before, for the caller to release their neighbour entries).
    pub fn detach(&self, a: &Attachment) -> Result<Option<Vec<std::net::IpAddr>>> {
        let last = self.attachments.len() == 1;
        // Read before the last detach: after it, the maps are gone.
        let backends = if last {
            Some(self.maps.backend_addrs()?)
        } else {
            None
        };
        // The routes and records of a last detach are `change`'s
        // (`Kind::LastDetach`): this is the BPF side only.
        iface::detach(a.ifindex, &a.ifname, a.mode)?;
        if !last {
            self.maps.remove_tx_port(a.ifindex)?;
            self.maps.bump_generation()?;
        }
        Ok(backends)
    }

    /// Finishes what an interrupted lbctl left (`Maps::repair`), and makes
    /// the redirect map hold exactly the interfaces lbctl is attached to (an
    /// attach or detach killed between its netlink change and its map
    /// write). Call with the namespace's lock held; the routes that follow
    /// are `change`'s.
    pub fn repair(&self, interrupted: bool) -> Result<(Repaired, Running)> {
        let (mut done, run) = self.maps.repair(interrupted)?;
        let attached: Vec<u32> = self.attachments.iter().map(|a| a.ifindex).collect();
        let mut listed = Vec::new();
        for key in self.maps.tx_ports.keys() {
            listed.push(u32_of(&key, &"an interface index in tx_ports")?);
        }
        let mut ports = false;
        for &ifindex in &attached {
            if !listed.contains(&ifindex) {
                self.maps.add_tx_port(ifindex)?;
                ports = true;
            }
        }
        for ifindex in listed {
            if !attached.contains(&ifindex) {
                self.maps.remove_tx_port(ifindex)?;
                ports = true;
            }
        }
        if ports {
            self.maps.bump_generation()?;
            done.ports = true;
        }
        Ok((done, run))
    }

    /// The attachment on an interface, if lbctl is attached there.
    pub fn attachment(&self, ifindex: u32) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.ifindex == ifindex)
    }
}

/// First interface in this namespace: load a fresh program with fresh maps.
pub fn start(ifindex: u32, opts: &AttachOptions) -> Result<u32> {
    load::load_conntrack_modules();
    let mut storage = MaybeUninit::uninit();
    let cache = opts.flow_cache_size.unwrap_or(LB_FLOW_CACHE_ENTRIES);
    let skel = load::load_sized(&mut storage, None, cache)?;
    let maps = Maps::from_skel(&skel)?;
    maps.set_settings(&initial_settings(
        opts.hash_seed.unwrap_or(DEFAULT_HASH_SEED),
    ))?;
    maps.add_tx_port(ifindex)?;
    // Until this succeeds nothing is attached; if it fails, dropping the
    // skeleton frees the program and maps: nothing is left half-done.
    iface::attach(
        skel.progs.lbctl_xdp.as_fd(),
        ifindex,
        &opts.iface,
        opts.mode,
    )?;
    let info = iface::xdp_program(ifindex)?.context("program vanished right after attaching")?;
    Ok(info.0)
}
