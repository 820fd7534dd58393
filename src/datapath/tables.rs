//! The balancer's configuration as lbctl sees it: VIPs, backends, lookup
//! tables and settings, read from and written to the maps. Every change is
//! ordered so that a packet (or an lbctl killed halfway) sees the old
//! configuration or the new one: rows are written before a table refers to
//! them, a table is swapped in with one map update, and rows are cleared
//! only after no table refers to them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::abi::*;
use super::balancer::Maps;
use super::types::{
    lb_backend, lb_config, lb_counters, lb_endpoint, lb_flow_cache_counters, lb_reply_source,
    lb_vip,
};
use crate::maglev::{self, MaglevBackend};
use crate::model::{NatMode, Proto, Service};

/// A VIP as configured.
#[derive(Clone, Debug)]
pub struct VipEntry {
    pub service: Service,
    pub index: u32,
    pub mode: NatMode,
    pub snat: Option<IpAddr>,
    pub table_size: u32,
    /// Share of table slots the last change moved to another backend.
    pub moved: f64,
    /// Digest of the members the current table was built from.
    pub table_digest: u32,
}

/// A backend row.
#[derive(Clone, Debug)]
pub struct BackendEntry {
    pub id: u32,
    pub vip_index: u32,
    pub addr: SocketAddr,
    pub proto: Proto,
    pub weight: u32,
}

/// Summed per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

pub fn to_endpoint(addr: SocketAddr, proto: Proto) -> lb_endpoint {
    let mut ep = lb_endpoint {
        port: addr.port().to_be(),
        proto: proto.number(),
        ..Default::default()
    };
    match addr.ip() {
        IpAddr::V4(a) => {
            ep.addr[..4].copy_from_slice(&a.octets());
            ep.family = LB_AF_INET;
        }
        IpAddr::V6(a) => {
            ep.addr = a.octets();
            ep.family = LB_AF_INET6;
        }
    }
    ep
}

fn ip_of(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == LB_AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

pub fn from_endpoint(ep: &lb_endpoint) -> (SocketAddr, Proto) {
    let addr = SocketAddr::new(ip_of(&ep.addr, ep.family), u16::from_be(ep.port));
    (addr, Proto::from_number(ep.proto).unwrap_or(Proto::Tcp))
}

/// An address as the 16 bytes maps hold (IPv4 in the first 4).
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The prefilter bit of an address (`bpf/lb_abi.h`); `None` for IPv6, which
/// the data path does not prefilter.
pub fn prefilter_bit(ip: IpAddr) -> Option<u32> {
    match ip {
        IpAddr::V4(a) => Some(
            u32::from_ne_bytes(a.octets()).wrapping_mul(LB_PREFILTER_MULT) >> LB_PREFILTER_SHIFT,
        ),
        IpAddr::V6(_) => None,
    }
}

/// Word index and mask of an address in the prefilter set starting at `set`.
fn prefilter_slot(set: u32, ip: IpAddr) -> Option<(u32, u64)> {
    prefilter_bit(ip).map(|bit| (set + bit / 64, 1u64 << (bit % 64)))
}

fn bytes_of<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: Plain types have no padding that is not an explicit field.
    unsafe { plain::as_bytes(v) }
}

fn read<T: plain::Plain + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    plain::copy_from_bytes(&mut v, bytes).expect("map value has the struct's size");
    v
}

impl Maps {
    pub fn settings(&self) -> Result<lb_config> {
        let v = self
            .settings
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .context("settings row missing")?;
        Ok(read(&v))
    }

    pub fn set_settings(&self, cfg: &lb_config) -> Result<()> {
        self.settings
            .update(&0u32.to_ne_bytes(), bytes_of(cfg), MapFlags::ANY)
            .context("writing settings")
    }

    /// Tells the data path the configuration changed: flow cache entries
    /// decided under an older generation are no longer used, so the next
    /// packet of every flow goes through conntrack and the FIB again. Called
    /// after a change is visible to the data path (a packet reads the
    /// generation before any configuration).
    pub fn bump_generation(&self) -> Result<()> {
        let mut cfg = self.settings()?;
        cfg.generation = cfg.generation.wrapping_add(1);
        self.set_settings(&cfg)
    }

    /// Flow cache hits, misses and stores, summed over the CPUs (None for a
    /// running program from before the flow cache).
    pub fn flow_cache_counters(&self) -> Result<Option<lb_flow_cache_counters>> {
        let Some(map) = &self.flow_cache_stats else {
            return Ok(None);
        };
        let mut sum = lb_flow_cache_counters::default();
        if let Some(cpus) = map.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)? {
            for cpu in cpus {
                let c: lb_flow_cache_counters = read(&cpu);
                sum.hits += c.hits;
                sum.misses += c.misses;
                sum.stores += c.stores;
            }
        }
        Ok(Some(sum))
    }

    pub fn vips(&self) -> Result<Vec<VipEntry>> {
        let mut out = Vec::new();
        for key in self.vips.keys() {
            let ep: lb_endpoint = read(&key);
            if let Some(v) = self.vips.lookup(&key, MapFlags::ANY)? {
                out.push(vip_entry(&ep, &read(&v)));
            }
        }
        out.sort_by_key(|v| v.index);
        Ok(out)
    }

    pub fn find_vip(&self, service: &Service) -> Result<Option<VipEntry>> {
        let ep = to_endpoint(service.addr, service.proto);
        Ok(self
            .vips
            .lookup(bytes_of(&ep), MapFlags::ANY)?
            .map(|v| vip_entry(&ep, &read(&v))))
    }

    pub fn require_vip(&self, service: &Service) -> Result<VipEntry> {
        self.find_vip(service)?
            .with_context(|| format!("VIP {service} does not exist (see `lbctl list`)"))
    }

    /// Every backend row in use.
    pub fn backends(&self) -> Result<Vec<BackendEntry>> {
        let mut out = Vec::new();
        let rows = self
            .backends
            .lookup_batch(4096, MapFlags::ANY, MapFlags::ANY)?;
        for (key, value) in rows {
            let row: lb_backend = read(&value);
            if row.flags & LB_BACKEND_IN_USE == 0 {
                continue;
            }
            let (addr, proto) = from_endpoint(&row.ep);
            let id = u32::from_ne_bytes(key[..4].try_into().expect("u32 key"));
            out.push(BackendEntry {
                id,
                vip_index: row.vip_index,
                addr,
                proto,
                weight: row.weight,
            });
        }
        Ok(out)
    }

    pub fn add_vip(
        &self,
        service: &Service,
        mode: NatMode,
        snat: Option<IpAddr>,
        table_size: u32,
    ) -> Result<VipEntry> {
        let vips = self.vips()?;
        if vips.iter().any(|v| v.service == *service) {
            bail!("VIP {service} already exists (lbctl vip del first to change its mode)");
        }
        let index = (0..LB_MAX_VIPS)
            .find(|i| !vips.iter().any(|v| v.index == *i))
            .with_context(|| format!("no room for another VIP (at most {LB_MAX_VIPS})"))?;
        reset_counters(&self.vip_stats, index)?;
        // The table first (empty), then the VIP that refers to it.
        self.swap_table(index, &[], 0)?;
        let vip = lb_vip {
            index,
            flags: if mode == NatMode::Fullnat {
                LB_VIP_FULLNAT
            } else {
                0
            },
            snat_addr: snat.map(ip_bytes).unwrap_or_default(),
            table_size,
            table_digest: table_digest(&[]),
            ..Default::default()
        };
        let ep = to_endpoint(service.addr, service.proto);
        self.prefilter_mark(LB_PREFILTER_DST, service.addr.ip())?;
        self.vips
            .update(bytes_of(&ep), bytes_of(&vip), MapFlags::NO_EXIST)
            .with_context(|| format!("adding VIP {service}"))?;
        self.bump_generation()?;
        Ok(vip_entry(&ep, &vip))
    }

    pub fn del_vip(&self, service: &Service) -> Result<()> {
        let vip = self.require_vip(service)?;
        let ep = to_endpoint(service.addr, service.proto);
        // Stop matching first; then nothing refers to the table or rows.
        self.vips
            .delete(bytes_of(&ep))
            .with_context(|| format!("deleting VIP {service}"))?;
        self.bump_generation()?;
        let _ = self.vip_tables.delete(&vip.index.to_ne_bytes());
        for b in self
            .backends()?
            .into_iter()
            .filter(|b| b.vip_index == vip.index)
        {
            self.release_backend_row(&b)?;
        }
        self.rebuild_prefilter()?;
        self.bump_generation()
    }

    pub fn add_backend(&self, service: &Service, addr: SocketAddr, weight: u32) -> Result<()> {
        self.add_backends(service, &[(addr, weight)])
    }

    /// Several backends of one VIP at once: their rows, then one table
    /// rebuild. Reading every backend row and rebuilding the table costs
    /// about 0.1 s per call here, so configuring many backends one by one is
    /// slow (lbctl-bench configures 16,000).
    pub fn add_backends(&self, service: &Service, new: &[(SocketAddr, u32)]) -> Result<()> {
        let vip = self.require_vip(service)?;
        let mut all = self.backends()?;
        for &(addr, weight) in new {
            if all
                .iter()
                .any(|b| b.vip_index == vip.index && b.addr == addr)
            {
                bail!("backend {addr} is already in VIP {service} (lbctl backend set to change its weight)");
            }
            let id = self.allocate_backend_id(&all)?;
            let row = lb_backend {
                ep: to_endpoint(addr, service.proto),
                vip: to_endpoint(service.addr, service.proto),
                vip_index: vip.index,
                weight,
                flags: LB_BACKEND_IN_USE,
                reserved: 0,
            };
            reset_counters(&self.backend_stats, id)?;
            self.backends
                .update(&id.to_ne_bytes(), bytes_of(&row), MapFlags::ANY)?;
            let mut src = self
                .reply_sources
                .lookup(bytes_of(&row.ep), MapFlags::ANY)?
                .map(|v| read::<lb_reply_source>(&v))
                .unwrap_or_default();
            src.backend_id = id;
            src.users += 1;
            self.prefilter_mark(LB_PREFILTER_SRC, addr.ip())?;
            self.reply_sources
                .update(bytes_of(&row.ep), bytes_of(&src), MapFlags::ANY)?;
            all.push(BackendEntry {
                id,
                vip_index: vip.index,
                addr,
                proto: service.proto,
                weight,
            });
        }
        let members: Vec<BackendEntry> = all
            .into_iter()
            .filter(|b| b.vip_index == vip.index)
            .collect();
        self.rebuild_table(&vip, &members)
    }

    pub fn set_weight(&self, service: &Service, addr: SocketAddr, weight: u32) -> Result<()> {
        let vip = self.require_vip(service)?;
        let mut members: Vec<BackendEntry> = self
            .backends()?
            .into_iter()
            .filter(|b| b.vip_index == vip.index)
            .collect();
        let b = members
            .iter_mut()
            .find(|b| b.addr == addr)
            .with_context(|| format!("backend {addr} is not in VIP {service}"))?;
        b.weight = weight;
        let mut row: lb_backend = read(
            &self
                .backends
                .lookup(&b.id.to_ne_bytes(), MapFlags::ANY)?
                .context("backend row")?,
        );
        row.weight = weight;
        self.backends
            .update(&b.id.to_ne_bytes(), bytes_of(&row), MapFlags::ANY)?;
        self.rebuild_table(&vip, &members)
    }

    pub fn del_backend(&self, service: &Service, addr: SocketAddr) -> Result<()> {
        let vip = self.require_vip(service)?;
        let mut members: Vec<BackendEntry> = self
            .backends()?
            .into_iter()
            .filter(|b| b.vip_index == vip.index)
            .collect();
        let i = members
            .iter()
            .position(|b| b.addr == addr)
            .with_context(|| format!("backend {addr} is not in VIP {service}"))?;
        let gone = members.remove(i);
        self.rebuild_table(&vip, &members)?; // no new flows to it from here on
        self.release_backend_row(&gone)?;
        self.bump_generation()
    }

    /// Clears a row nothing refers to any more. Its reply source stays (with
    /// one user less): live flows to it keep getting their replies NATed.
    fn release_backend_row(&self, b: &BackendEntry) -> Result<()> {
        let ep = to_endpoint(b.addr, b.proto);
        if let Some(v) = self.reply_sources.lookup(bytes_of(&ep), MapFlags::ANY)? {
            let mut src: lb_reply_source = read(&v);
            src.users = src.users.saturating_sub(1);
            self.reply_sources
                .update(bytes_of(&ep), bytes_of(&src), MapFlags::ANY)?;
        }
        self.backends
            .update(
                &b.id.to_ne_bytes(),
                bytes_of(&lb_backend::default()),
                MapFlags::ANY,
            )
            .context("clearing a backend row")
    }

    /// Sets an address's prefilter bit; done before the address goes into
    /// the map the bit guards, so the data path never skips a lookup it
    /// needs.
    fn prefilter_mark(&self, set: u32, ip: IpAddr) -> Result<()> {
        let Some((word, mask)) = prefilter_slot(set, ip) else {
            return Ok(());
        };
        let old = self.prefilter_word(word)?;
        if old & mask == 0 {
            self.addr_filter
                .update(
                    &word.to_ne_bytes(),
                    &(old | mask).to_ne_bytes(),
                    MapFlags::ANY,
                )
                .context("updating the address prefilter")?;
        }
        Ok(())
    }

    fn prefilter_word(&self, word: u32) -> Result<u64> {
        let v = self
            .addr_filter
            .lookup(&word.to_ne_bytes(), MapFlags::ANY)?
            .context("address prefilter word missing")?;
        Ok(u64::from_ne_bytes(v[..8].try_into()?))
    }

    /// Recomputes both prefilter bitmaps from `vips` and `reply_sources`:
    /// clears the bits no address needs any more (a deleted VIP) and sets any
    /// missing one (a program upgraded in place over older maps). Every bit a
    /// present address needs stays set throughout.
    pub fn rebuild_prefilter(&self) -> Result<()> {
        let mut want = vec![0u64; 2 * LB_PREFILTER_WORDS as usize];
        let sets = [
            (LB_PREFILTER_DST, &self.vips),
            (LB_PREFILTER_SRC, &self.reply_sources),
        ];
        for (set, map) in sets {
            for key in map.keys() {
                let (addr, _) = from_endpoint(&read::<lb_endpoint>(&key));
                if let Some((word, mask)) = prefilter_slot(set, addr.ip()) {
                    want[word as usize] |= mask;
                }
            }
        }
        for (word, want) in (0u32..).zip(want) {
            if self.prefilter_word(word)? != want {
                self.addr_filter
                    .update(&word.to_ne_bytes(), &want.to_ne_bytes(), MapFlags::ANY)
                    .context("updating the address prefilter")?;
            }
        }
        Ok(())
    }

    /// The next free id after the last one handed out, so a fresh backend
    /// does not inherit the counters of flows still marked with an old id.
    fn allocate_backend_id(&self, all: &[BackendEntry]) -> Result<u32> {
        let mut cfg = self.settings()?;
        let used: std::collections::HashSet<u32> = all.iter().map(|b| b.id).collect();
        let start = cfg.next_backend_id % LB_MAX_BACKENDS;
        let id = (0..LB_MAX_BACKENDS)
            .map(|i| (start + i) % LB_MAX_BACKENDS)
            .find(|id| !used.contains(id))
            .with_context(|| format!("no room for another backend (at most {LB_MAX_BACKENDS})"))?;
        cfg.next_backend_id = id + 1;
        self.set_settings(&cfg)?;
        Ok(id)
    }

    /// Builds the VIP's Maglev table from its backends and swaps it in.
    fn rebuild_table(&self, vip: &VipEntry, members: &[BackendEntry]) -> Result<()> {
        let mut sorted = members.to_vec();
        sorted.sort_by_key(|b| b.id);
        let input: Vec<MaglevBackend> = sorted
            .iter()
            .map(|b| MaglevBackend {
                key: endpoint_key(&to_endpoint(b.addr, b.proto)),
                weight: b.weight,
            })
            .collect();
        let slots = maglev::build_table(&input, vip.table_size).map_err(anyhow::Error::msg)?;
        let ids: Vec<u32> = if slots.iter().all(|s| *s == u32::MAX) {
            Vec::new()
        } else {
            slots.iter().map(|s| sorted[*s as usize].id).collect()
        };
        let old = self.table(vip.index).unwrap_or_default();
        self.swap_table(vip.index, &ids, ids.len() as u32)?;
        self.bump_generation()?;
        self.record_table(vip, &old, &ids, table_digest(members))
    }

    /// Rebuilds the tables of VIPs whose rows changed without their table
    /// (an lbctl killed between the two writes): the data path kept serving
    /// the old table all along; this brings it to the rows.
    pub fn repair_tables(&self) -> Result<()> {
        let all = self.backends()?;
        for vip in self.vips()? {
            let members: Vec<BackendEntry> = all
                .iter()
                .filter(|b| b.vip_index == vip.index)
                .cloned()
                .collect();
            if table_digest(&members) != vip.table_digest {
                self.rebuild_table(&vip, &members)?;
            }
        }
        Ok(())
    }

    fn record_table(&self, vip: &VipEntry, old: &[u32], new: &[u32], digest: u32) -> Result<()> {
        let moved = if old.len() != new.len() || old.is_empty() {
            if old.is_empty() && new.is_empty() {
                0
            } else {
                1_000_000
            }
        } else {
            let n = old.iter().zip(new).filter(|(a, b)| a != b).count() as u64;
            (n * 1_000_000 / new.len() as u64) as u32
        };
        let ep = to_endpoint(vip.service.addr, vip.service.proto);
        if let Some(v) = self.vips.lookup(bytes_of(&ep), MapFlags::ANY)? {
            let mut row: lb_vip = read(&v);
            row.moved_ppm = moved;
            row.table_digest = digest;
            self.vips
                .update(bytes_of(&ep), bytes_of(&row), MapFlags::EXIST)?;
        }
        Ok(())
    }

    /// The backend ids in a VIP's current table (empty: no backend).
    pub fn table(&self, index: u32) -> Result<Vec<u32>> {
        let Some(id) = self
            .vip_tables
            .lookup(&index.to_ne_bytes(), MapFlags::ANY)?
        else {
            return Ok(Vec::new());
        };
        let inner = MapHandle::from_map_id(u32::from_ne_bytes(id[..4].try_into().unwrap()))
            .context("opening a VIP table")?;
        let size = inner
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .map(|v| u32::from_ne_bytes(v[..4].try_into().unwrap()))
            .unwrap_or(0);
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut ids = vec![0u32; size as usize];
        for (key, value) in inner.lookup_batch(8192, MapFlags::ANY, MapFlags::ANY)? {
            let k = u32::from_ne_bytes(key[..4].try_into().unwrap());
            if k >= LB_TABLE_HDR && ((k - LB_TABLE_HDR) as usize) < ids.len() {
                ids[(k - LB_TABLE_HDR) as usize] =
                    u32::from_ne_bytes(value[..4].try_into().unwrap());
            }
        }
        Ok(ids)
    }

    /// A new inner map holding [size, ids...], put in place with one update.
    fn swap_table(&self, index: u32, ids: &[u32], size: u32) -> Result<()> {
        let entries = LB_TABLE_HDR + ids.len() as u32;
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_rs::libbpf_sys::BPF_F_INNER_MAP,
            ..Default::default()
        };
        let inner = MapHandle::create(MapType::Array, Some("lb_table"), 4, 4, entries, &opts)
            .context("creating a VIP table")?;
        let mut keys = Vec::with_capacity(entries as usize * 4);
        let mut values = Vec::with_capacity(entries as usize * 4);
        for (k, v) in std::iter::once(size).chain(ids.iter().copied()).enumerate() {
            keys.extend_from_slice(&(k as u32).to_ne_bytes());
            values.extend_from_slice(&v.to_ne_bytes());
        }
        inner
            .update_batch(&keys, &values, entries, MapFlags::ANY, MapFlags::ANY)
            .context("filling a VIP table")?;
        let fd = inner.as_fd().as_raw_fd() as u32;
        self.vip_tables
            .update(&index.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .context("swapping in a VIP table")
    }

    pub fn reason_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        REASONS
            .iter()
            .map(|(r, name)| Ok((*name, sum_u64(&self.reasons, r.0)?)))
            .collect()
    }
}

/// What a table is built from: each member's id, endpoint and weight.
fn table_digest(members: &[BackendEntry]) -> u32 {
    let mut sorted: Vec<&BackendEntry> = members.iter().collect();
    sorted.sort_by_key(|b| b.id);
    let mut bytes = Vec::with_capacity(sorted.len() * 28);
    for b in sorted {
        bytes.extend_from_slice(&b.id.to_ne_bytes());
        bytes.extend_from_slice(&endpoint_key(&to_endpoint(b.addr, b.proto)));
        bytes.extend_from_slice(&b.weight.to_ne_bytes());
    }
    crate::hash::hash_bytes(&bytes, 0x7461_626c)
}

fn vip_entry(ep: &lb_endpoint, v: &lb_vip) -> VipEntry {
    let (addr, proto) = from_endpoint(ep);
    let fullnat = v.flags & LB_VIP_FULLNAT != 0;
    VipEntry {
        service: Service { addr, proto },
        index: v.index,
        mode: if fullnat {
            NatMode::Fullnat
        } else {
            NatMode::Dnat
        },
        snat: fullnat.then(|| ip_of(&v.snat_addr, ep.family)),
        table_size: v.table_size,
        moved: v.moved_ppm as f64 / 1e6,
        table_digest: v.table_digest,
    }
}

/// A backend's identity for Maglev: the bytes of its endpoint, so balancers
/// configured alike agree whatever ids they gave their rows.
pub fn endpoint_key(ep: &lb_endpoint) -> [u8; 20] {
    bytes_of(ep).try_into().expect("lb_endpoint is 20 bytes")
}

pub fn counters(map: &MapHandle, index: u32) -> Result<Counters> {
    let mut sum = Counters::default();
    if let Some(cpus) = map.lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)? {
        for cpu in cpus {
            let c: lb_counters = read(&cpu);
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            sum.new_flows += c.new_flows;
        }
    }
    Ok(sum)
}

fn sum_u64(map: &MapHandle, index: u32) -> Result<u64> {
    Ok(map
        .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)?
        .map(|cpus| {
            cpus.iter()
                .map(|c| u64::from_ne_bytes(c[..8].try_into().unwrap()))
                .sum()
        })
        .unwrap_or(0))
}

fn reset_counters(map: &MapHandle, index: u32) -> Result<()> {
    let cpus = libbpf_rs::num_possible_cpus()?;
    let zero = vec![vec![0u8; map.value_size() as usize]; cpus];
    map.update_percpu(&index.to_ne_bytes(), &zero, MapFlags::ANY)
        .context("resetting counters")
}
