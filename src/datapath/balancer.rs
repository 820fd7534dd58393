//! A running balancer: its program and maps, found through the interfaces
//! of the current network namespace. No pins: the XDP program attached to an
//! interface holds its maps, so a balancer's state lives exactly as long as
//! it is attached somewhere and belongs to that interface's namespace. This
//! is what makes `ip netns exec NS lbctl ...` work across invocations (that
//! command hides the host's /sys/fs/bpf) and keeps namespaces apart.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapHandle};

use super::attach::{self, Attachment};
use super::skel::LbSkel;

/// The program's name as the kernel reports it (BPF names are 15 bytes).
pub const PROG_NAME: &str = "lbctl_xdp";

/// Handles on every map of a balancer.
pub struct Maps {
    pub vips: MapHandle,
    pub backends: MapHandle,
    pub reply_sources: MapHandle,
    pub addr_filter: MapHandle,
    pub vip_tables: MapHandle,
    pub settings: MapHandle,
    pub vip_stats: MapHandle,
    pub backend_stats: MapHandle,
    pub reasons: MapHandle,
    pub tx_ports: MapHandle,
    /// The flow cache's counters; None for a running program from before
    /// the flow cache (until `attach --replace` upgrades it).
    pub flow_cache_stats: Option<MapHandle>,
    /// The flow cache itself (its size); None as above.
    pub flow_cache: Option<MapHandle>,
}

impl Maps {
    /// Entries the flow cache holds, if the program has one.
    pub fn flow_cache_size(&self) -> Option<u32> {
        self.flow_cache.as_ref().map(|m| m.max_entries())
    }

    pub fn from_skel(skel: &LbSkel) -> Result<Maps> {
        let m = &skel.maps;
        let h =
            |map: &libbpf_rs::MapMut| MapHandle::try_from(map).context("duplicating a map handle");
        Ok(Maps {
            vips: h(&m.vips)?,
            backends: h(&m.backends)?,
            reply_sources: h(&m.reply_sources)?,
            addr_filter: h(&m.addr_filter)?,
            vip_tables: h(&m.vip_tables)?,
            settings: h(&m.settings)?,
            vip_stats: h(&m.vip_stats)?,
            backend_stats: h(&m.backend_stats)?,
            reasons: h(&m.reasons)?,
            tx_ports: h(&m.tx_ports)?,
            flow_cache_stats: Some(h(&m.flow_cache_stats)?),
            flow_cache: Some(h(&m.flow_cache)?),
        })
    }

    /// The maps a loaded lbctl program uses, found by their names.
    pub fn from_prog(prog: BorrowedFd) -> Result<Maps> {
        let mut found: Vec<(String, MapHandle)> = Vec::new();
        for id in prog_map_ids(prog)? {
            let map = MapHandle::from_map_id(id).with_context(|| format!("opening map id {id}"))?;
            found.push((map.name().to_string_lossy().into_owned(), map));
        }
        let mut take = |name: &str| -> Result<MapHandle> {
            // The kernel keeps the first 15 bytes of a map's name.
            let kernel_name = &name[..name.len().min(15)];
            let i = found
                .iter()
                .position(|(n, _)| n == kernel_name)
                .with_context(|| format!("the attached lbctl program has no map {name:?}: was it built by another lbctl version?"))?;
            Ok(found.swap_remove(i).1)
        };
        Ok(Maps {
            vips: take("vips")?,
            backends: take("backends")?,
            reply_sources: take("reply_sources")?,
            addr_filter: take("addr_filter")?,
            vip_tables: take("vip_tables")?,
            settings: take("settings")?,
            vip_stats: take("vip_stats")?,
            backend_stats: take("backend_stats")?,
            reasons: take("reasons")?,
            tx_ports: take("tx_ports")?,
            flow_cache_stats: take("flow_cache_stats").ok(),
            flow_cache: take("flow_cache").ok(),
        })
    }
}

/// Ids of the maps a program uses (BPF_OBJ_GET_INFO_BY_FD, asked twice: once
/// for the count, once for the ids).
fn prog_map_ids(prog: BorrowedFd) -> Result<Vec<u32>> {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: info is a valid bpf_prog_info of len bytes.
    let ret = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len)
    };
    if ret != 0 {
        bail!(
            "reading program info: {}",
            std::io::Error::from_raw_os_error(-ret)
        );
    }
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    let mut info2 = libbpf_rs::libbpf_sys::bpf_prog_info {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    let mut len = std::mem::size_of_val(&info2) as u32;
    // SAFETY: map_ids points to nr_map_ids u32s that outlive the call.
    let ret = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info2, &mut len)
    };
    if ret != 0 {
        bail!(
            "reading program map ids: {}",
            std::io::Error::from_raw_os_error(-ret)
        );
    }
    ids.truncate(info2.nr_map_ids as usize);
    Ok(ids)
}

/// A balancer running in this network namespace.
pub struct Balancer {
    pub prog: OwnedFd,
    pub prog_id: u32,
    pub maps: Maps,
    /// Every interface it is attached to.
    pub attachments: Vec<Attachment>,
}

impl Balancer {
    /// The balancer attached to this namespace's interfaces, if any.
    pub fn find() -> Result<Option<Balancer>> {
        let attachments = attach::lbctl_attachments()?;
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
            None => bail!(
                "lbctl is not attached to any interface in this network namespace: run `lbctl attach IFACE` first"
            ),
        }
    }
}
