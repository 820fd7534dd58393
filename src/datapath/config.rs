//! Configuration changes: settings, VIPs and backends, read from and written
//! to the maps. Every change is ordered so that a packet (or an lbctl killed
//! halfway) sees the old configuration or the new one: rows are written
//! before a table refers to them, a table is swapped in with one map update
//! (`tables.rs`), and rows are cleared only after no table refers to them.
//! Each change ends by bumping the configuration generation, so the flow
//! cache drops decisions made under the old configuration.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use libbpf_rs::MapFlags;

use super::abi::{
    LB_DEFAULT_TCP_FIN_TIMEOUT_S, LB_DEFAULT_TCP_TIMEOUT_S, LB_DEFAULT_UDP_TIMEOUT_S,
    LB_MAX_BACKENDS, LB_MAX_VIPS,
};
use super::codec::{
    backend_entry, backend_row, bytes_of, read, service_endpoint, to_endpoint, vip_entry, vip_row,
    BackendEntry, VipEntry,
};
use super::maps::{u32_of, Maps, ROW0};
use super::prefilter::Set;
use super::tables::{moved_ppm, table_digest, table_ids};
use super::types::{lb_backend, lb_config, lb_endpoint, lb_reply_source, lb_vip};
use crate::model::{check_same_family, Service, Timeouts, VipSpec};

/// The settings of a new balancer.
pub fn initial_settings(hash_seed: u32) -> lb_config {
    lb_config {
        hash_seed,
        tcp_timeout_s: LB_DEFAULT_TCP_TIMEOUT_S,
        tcp_fin_timeout_s: LB_DEFAULT_TCP_FIN_TIMEOUT_S,
        udp_timeout_s: LB_DEFAULT_UDP_TIMEOUT_S,
        ..Default::default()
    }
}

impl Maps {
    pub fn settings(&self) -> Result<lb_config> {
        self.settings.require(&ROW0, &"the settings row")
    }

    pub fn set_settings(&self, cfg: &lb_config) -> Result<()> {
        self.settings
            .put(&ROW0, cfg, MapFlags::ANY, &"the settings row")
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

    /// Sets the timeouts given and returns all three as they now are.
    pub fn set_timeouts(&self, t: &Timeouts) -> Result<Timeouts> {
        let mut cfg = self.settings()?;
        if !t.is_empty() {
            cfg.tcp_timeout_s = t.tcp.unwrap_or(cfg.tcp_timeout_s);
            cfg.tcp_fin_timeout_s = t.tcpfin.unwrap_or(cfg.tcp_fin_timeout_s);
            cfg.udp_timeout_s = t.udp.unwrap_or(cfg.udp_timeout_s);
            self.set_settings(&cfg)?;
            self.bump_generation()?;
        }
        Ok(Timeouts {
            tcp: Some(cfg.tcp_timeout_s),
            tcpfin: Some(cfg.tcp_fin_timeout_s),
            udp: Some(cfg.udp_timeout_s),
        })
    }

    /// Every VIP, by index.
    pub fn vips(&self) -> Result<Vec<VipEntry>> {
        let mut out = Vec::new();
        for key in self.vips.keys() {
            let ep: lb_endpoint = read(&key).context("decoding a key of map vips")?;
            let what = format_args!("a VIP");
            if let Some(v) = self.vips.get::<lb_vip>(&key, &what)? {
                out.push(vip_entry(&ep, &v)?);
            }
        }
        out.sort_by_key(|v| v.index);
        Ok(out)
    }

    /// Whether any VIP is IPv6 (then IPv6 forwarding matters).
    pub fn has_ipv6_vips(&self) -> Result<bool> {
        Ok(self.vips()?.iter().any(|v| v.service.addr.is_ipv6()))
    }

    pub fn find_vip(&self, service: &Service) -> Result<Option<VipEntry>> {
        let ep = service_endpoint(service);
        self.vips
            .get::<lb_vip>(bytes_of(&ep), &format_args!("VIP {service}"))?
            .map(|v| vip_entry(&ep, &v))
            .transpose()
    }

    pub fn require_vip(&self, service: &Service) -> Result<VipEntry> {
        self.find_vip(service)?
            .with_context(|| format!("VIP {service} does not exist (see `lbctl list`)"))
    }

    /// Every backend row in use.
    pub fn backends(&self) -> Result<Vec<BackendEntry>> {
        let mut out = Vec::new();
        for (key, value) in self.backends.entries(&"backend rows")? {
            let id = u32_of(&key, &"a backend id")?;
            let row: lb_backend =
                read(&value).with_context(|| format!("decoding backend row {id}"))?;
            out.extend(backend_entry(id, &row)?);
        }
        Ok(out)
    }

    /// The backends of one VIP.
    pub fn backends_of(&self, vip: &VipEntry) -> Result<Vec<BackendEntry>> {
        Ok(members_of(&self.backends()?, vip))
    }

    pub fn add_vip(&self, spec: &VipSpec) -> Result<VipEntry> {
        let service = &spec.service;
        let vips = self.vips()?;
        if vips.iter().any(|v| v.service == *service) {
            bail!("VIP {service} already exists (lbctl vip del first to change its mode)");
        }
        let index = (0..LB_MAX_VIPS)
            .find(|i| !vips.iter().any(|v| v.index == *i))
            .with_context(|| format!("no room for another VIP (at most {LB_MAX_VIPS})"))?;
        self.reset_vip_counters(index)?;
        // The table first (empty), then the VIP that refers to it.
        self.swap_table(index, &[])?;
        let mut vip = vip_row(spec.mode, spec.snat, index, spec.table_size);
        vip.table_digest = table_digest(&[]);
        let ep = service_endpoint(service);
        self.prefilter_mark(Set::Vips, service.addr.ip())?;
        self.vips.put(
            bytes_of(&ep),
            &vip,
            MapFlags::NO_EXIST,
            &format_args!("VIP {service}"),
        )?;
        self.bump_generation()?;
        vip_entry(&ep, &vip)
    }

    /// Deletes a VIP and its backend rows; returns the rows it removed.
    pub fn del_vip(&self, service: &Service) -> Result<Vec<BackendEntry>> {
        let vip = self.require_vip(service)?;
        let ep = service_endpoint(service);
        // Stop matching first; then nothing refers to the table or rows.
        self.vips
            .remove(bytes_of(&ep), &format_args!("VIP {service}"))?;
        self.bump_generation()?;
        self.vip_tables.remove(
            &vip.index.to_ne_bytes(),
            &format_args!("the table of VIP {service}"),
        )?;
        let gone = self.backends_of(&vip)?;
        for b in &gone {
            self.release_backend_row(b)?;
        }
        self.rebuild_prefilter()?;
        self.bump_generation()?;
        Ok(gone)
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
            check_same_family(service.addr, addr).map_err(anyhow::Error::msg)?;
            if all
                .iter()
                .any(|b| b.vip_index == vip.index && b.addr == addr)
            {
                bail!("backend {addr} is already in VIP {service} (lbctl backend set to change its weight)");
            }
            let id = self.allocate_backend_id(&all)?;
            let row = backend_row(service, vip.index, addr, weight);
            let what = format_args!("backend {addr} of VIP {service} (id {id})");
            self.reset_backend_counters(id)?;
            self.backends
                .put(&id.to_ne_bytes(), &row, MapFlags::ANY, &what)?;
            let what = format_args!("the reply source of backend {addr}");
            let mut src = self
                .reply_sources
                .get::<lb_reply_source>(bytes_of(&row.ep), &what)?
                .unwrap_or_default();
            src.backend_id = id;
            src.users += 1;
            self.prefilter_mark(Set::Backends, addr.ip())?;
            self.reply_sources
                .put(bytes_of(&row.ep), &src, MapFlags::ANY, &what)?;
            all.push(BackendEntry {
                id,
                vip_index: vip.index,
                addr,
                proto: service.proto,
                weight,
            });
        }
        self.rebuild_table(&vip, &members_of(&all, &vip))
    }

    /// A VIP, its backends, and the position of `addr` among them.
    fn locate_backend(
        &self,
        service: &Service,
        addr: SocketAddr,
    ) -> Result<(VipEntry, Vec<BackendEntry>, usize)> {
        let vip = self.require_vip(service)?;
        let members = self.backends_of(&vip)?;
        let i = members
            .iter()
            .position(|b| b.addr == addr)
            .with_context(|| format!("backend {addr} is not in VIP {service}"))?;
        Ok((vip, members, i))
    }

    pub fn set_weight(&self, service: &Service, addr: SocketAddr, weight: u32) -> Result<()> {
        let (vip, mut members, i) = self.locate_backend(service, addr)?;
        let b = &mut members[i];
        b.weight = weight;
        let what = format_args!("backend {addr} of VIP {service} (id {})", b.id);
        let mut row: lb_backend = self.backends.require(&b.id.to_ne_bytes(), &what)?;
        row.weight = weight;
        self.backends
            .put(&b.id.to_ne_bytes(), &row, MapFlags::ANY, &what)?;
        self.rebuild_table(&vip, &members)
    }

    pub fn del_backend(&self, service: &Service, addr: SocketAddr) -> Result<()> {
        let (vip, mut members, i) = self.locate_backend(service, addr)?;
        let gone = members.remove(i);
        self.rebuild_table(&vip, &members)?; // no new flows to it from here on
        self.release_backend_row(&gone)?;
        self.bump_generation()
    }

    /// Clears a row nothing refers to any more. Its reply source stays (with
    /// one user less): live flows to it keep getting their replies NATed.
    fn release_backend_row(&self, b: &BackendEntry) -> Result<()> {
        let ep = to_endpoint(b.addr, b.proto);
        let what = format_args!("the reply source of backend {}", b.addr);
        if let Some(mut src) = self
            .reply_sources
            .get::<lb_reply_source>(bytes_of(&ep), &what)?
        {
            src.users = src.users.saturating_sub(1);
            self.reply_sources
                .put(bytes_of(&ep), &src, MapFlags::ANY, &what)?;
        }
        self.backends.put(
            &b.id.to_ne_bytes(),
            &lb_backend::default(),
            MapFlags::ANY,
            &format_args!("backend row {} (clearing it)", b.id),
        )
    }

    /// The next free id after the last one handed out, so a fresh backend
    /// does not inherit the counters of flows still marked with an old id.
    fn allocate_backend_id(&self, all: &[BackendEntry]) -> Result<u32> {
        let mut cfg = self.settings()?;
        let used: HashSet<u32> = all.iter().map(|b| b.id).collect();
        let start = cfg.next_backend_id % LB_MAX_BACKENDS;
        let id = (0..LB_MAX_BACKENDS)
            .map(|i| (start + i) % LB_MAX_BACKENDS)
            .find(|id| !used.contains(id))
            .with_context(|| format!("no room for another backend (at most {LB_MAX_BACKENDS})"))?;
        cfg.next_backend_id = id + 1;
        self.set_settings(&cfg)?;
        Ok(id)
    }

    /// Builds the VIP's Maglev table from its backends, swaps it in, and
    /// records in the VIP what it was built from.
    fn rebuild_table(&self, vip: &VipEntry, members: &[BackendEntry]) -> Result<()> {
        let ids = table_ids(members, vip.table_size)?;
        let old = self.table(vip.index).unwrap_or_default();
        self.swap_table(vip.index, &ids)?;
        self.bump_generation()?;
        let ep = service_endpoint(&vip.service);
        let what = format_args!("VIP {}", vip.service);
        if let Some(mut row) = self.vips.get::<lb_vip>(bytes_of(&ep), &what)? {
            row.moved_ppm = moved_ppm(&old, &ids);
            row.table_digest = table_digest(members);
            self.vips.put(bytes_of(&ep), &row, MapFlags::EXIST, &what)?;
        }
        Ok(())
    }

    /// Rebuilds the tables of VIPs whose rows changed without their table
    /// (an lbctl killed between the two writes): the data path kept serving
    /// the old table all along; this brings it to the rows.
    pub fn repair_tables(&self) -> Result<()> {
        let all = self.backends()?;
        for vip in self.vips()? {
            let members = members_of(&all, &vip);
            if table_digest(&members) != vip.table_digest {
                self.rebuild_table(&vip, &members)?;
            }
        }
        Ok(())
    }

    /// Adds an attached interface to the redirect map.
    pub fn add_tx_port(&self, ifindex: u32) -> Result<()> {
        self.tx_ports.put(
            &ifindex.to_ne_bytes(),
            &ifindex,
            MapFlags::ANY,
            &format_args!("interface index {ifindex}"),
        )
    }

    pub fn remove_tx_port(&self, ifindex: u32) -> Result<()> {
        self.tx_ports.remove(
            &ifindex.to_ne_bytes(),
            &format_args!("interface index {ifindex}"),
        )
    }

    /// The addresses of every backend (for the neighbour entries they need).
    pub fn backend_addrs(&self) -> Result<Vec<IpAddr>> {
        Ok(self.backends()?.iter().map(|b| b.addr.ip()).collect())
    }
}

/// The backends of one VIP.
fn members_of(all: &[BackendEntry], vip: &VipEntry) -> Vec<BackendEntry> {
    all.iter()
        .filter(|b| b.vip_index == vip.index)
        .cloned()
        .collect()
}
