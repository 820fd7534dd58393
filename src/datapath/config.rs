//! Configuration changes: settings, VIPs and backends, read from and written
//! to the maps. Every change is ordered so that a packet (or an lbctl killed
//! halfway) sees the old configuration or the new one: rows are written
//! before a table refers to them, a table is swapped in with one map update
//! (`tables.rs`), and rows are cleared only after no table refers to them.
//! Each change ends by bumping the configuration generation, so the flow
//! cache drops decisions made under the old configuration.
//!
//! One API for every change: the CLI's commands, `lbctl apply`, `lbctl run`
//! and its health checks all come here. A change of many VIPs reads the maps
//! once (`Running`) and each VIP's backends are set in one call
//! (`set_backends`: rows, then at most one table build and swap); health
//! results are recorded with `set_health`, which treats a down backend as
//! weight 0 in its table while its row keeps the operator's weight.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapFlags, MapHandle};

use super::abi::{
    LB_DEFAULT_TCP_FIN_TIMEOUT_S, LB_DEFAULT_TCP_TIMEOUT_S, LB_DEFAULT_UDP_TIMEOUT_S,
    LB_MAX_BACKENDS, LB_MAX_VIPS,
};
use super::codec::{
    backend_entry, backend_row, bytes_of, read, service_endpoint, set_row_health, to_endpoint,
    vip_entry, vip_row, BackendEntry, VipEntry,
};
use super::maps::{u32_of, Maps, ROW0};
use super::prefilter::Set;
use super::tables::{moved_ppm, new_table, table_digest, table_ids};
use super::types::{lb_backend, lb_config, lb_endpoint, lb_reply_source, lb_vip};
use crate::model::{Health, Service, Timeouts, VipSpec};

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

    /// Every VIP and backend, read once.
    pub fn running(&self) -> Result<Running> {
        Ok(Running {
            vips: self.vips()?,
            backends: self.backends()?,
        })
    }

    pub fn add_vip(&self, spec: &VipSpec) -> Result<VipEntry> {
        self.add_vip_to(&mut self.running()?, spec)
    }

    /// Adds a VIP with no backends (an empty table, then the VIP that
    /// refers to it) and records it in `run`.
    pub fn add_vip_to(&self, run: &mut Running, spec: &VipSpec) -> Result<VipEntry> {
        let service = &spec.service;
        if run.vip(service).is_some() {
            bail!("VIP {service} already exists (lbctl vip del first to change its mode)");
        }
        let index = (0..LB_MAX_VIPS)
            .find(|i| !run.vips.iter().any(|v| v.index == *i))
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
        let entry = vip_entry(&ep, &vip)?;
        run.vips.push(entry.clone());
        Ok(entry)
    }

    /// Adds new VIPs with their backends: every backend row first, then one
    /// table per VIP built and all of them put in place in one batch
    /// update, then the VIPs that refer to them. For a VIP added with its
    /// backends this is one table build and one swap, where `add_vip` then
    /// `set_backends` would swap twice (each swap waits for an RCU grace
    /// period). Returns how many were added.
    pub fn add_vips_with_backends(
        &self,
        run: &mut Running,
        new: &[(VipSpec, Vec<(SocketAddr, u32)>)],
    ) -> Result<usize> {
        if new.is_empty() {
            return Ok(0);
        }
        let mut free = (0..LB_MAX_VIPS).filter(|i| !run.vips.iter().any(|v| v.index == *i));
        let mut placed = Vec::new();
        for (spec, backends) in new {
            if run.vip(&spec.service).is_some()
                || placed
                    .iter()
                    .any(|(s, _, _): &(&VipSpec, _, _)| s.service == spec.service)
            {
                bail!("VIP {} already exists", spec.service);
            }
            let index = free
                .next()
                .with_context(|| format!("no room for another VIP (at most {LB_MAX_VIPS})"))?;
            placed.push((spec, index, backends));
        }
        let total: usize = new.iter().map(|(_, b)| b.len()).sum();
        let mut ids = self.allocate_backend_ids(run, total)?.into_iter();
        let mut members_of_each = Vec::with_capacity(placed.len());
        for (spec, index, backends) in &placed {
            self.reset_vip_counters(*index)?;
            let mut members = Vec::with_capacity(backends.len());
            for &(addr, weight) in backends.iter() {
                let id = ids.next().context("fewer backend ids than backends")?;
                members.push(self.add_backend_row(&spec.service, *index, id, addr, weight)?);
            }
            members_of_each.push(members);
        }
        // Building and filling a 65,537-slot table takes about 10 ms of
        // CPU, most of it the kernel copying the slots in: one thread per
        // CPU, each on its share of the VIPs.
        let jobs: Vec<(u32, u32, &[BackendEntry])> = placed
            .iter()
            .zip(&members_of_each)
            .map(|((spec, index, _), m)| (*index, spec.table_size, m.as_slice()))
            .collect();
        let tables = build_tables(&jobs)?;
        for members in members_of_each {
            run.backends.extend(members);
        }
        let installed: Vec<(u32, &MapHandle)> = placed
            .iter()
            .zip(&tables)
            .map(|((_, index, _), (t, _))| (*index, t))
            .collect();
        self.install_tables(&installed)?;
        for ((spec, index, _), (_, digest)) in placed.iter().zip(&tables) {
            let mut vip = vip_row(spec.mode, spec.snat, *index, spec.table_size);
            vip.table_digest = *digest;
            vip.moved_ppm = 1_000_000;
            let ep = service_endpoint(&spec.service);
            self.prefilter_mark(Set::Vips, spec.service.addr.ip())?;
            self.vips.put(
                bytes_of(&ep),
                &vip,
                MapFlags::NO_EXIST,
                &format_args!("VIP {}", spec.service),
            )?;
            run.vips.push(vip_entry(&ep, &vip)?);
        }
        self.bump_generation()?;
        Ok(placed.len())
    }

    /// A new backend row with its counters reset, its reply source and
    /// prefilter bit in place (nothing refers to the row yet).
    fn add_backend_row(
        &self,
        service: &Service,
        vip_index: u32,
        id: u32,
        addr: SocketAddr,
        weight: u32,
    ) -> Result<BackendEntry> {
        let row = backend_row(service, vip_index, addr, weight);
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
        Ok(BackendEntry {
            id,
            vip_index,
            addr,
            proto: service.proto,
            weight,
            health: Health::Unchecked,
            health_since: 0,
        })
    }

    /// Deletes a VIP and its backend rows; returns the rows it removed.
    pub fn del_vip(&self, service: &Service) -> Result<Vec<BackendEntry>> {
        self.del_vips(&mut self.running()?, &[*service])
    }

    /// Deletes VIPs and their backend rows (one prefilter rebuild for all);
    /// returns the rows removed.
    pub fn del_vips(&self, run: &mut Running, services: &[Service]) -> Result<Vec<BackendEntry>> {
        let mut gone = Vec::new();
        for service in services {
            let vip = run
                .vip(service)
                .cloned()
                .with_context(|| format!("VIP {service} does not exist (see `lbctl list`)"))?;
            let ep = service_endpoint(service);
            // Stop matching first; then nothing refers to the table or rows.
            self.vips
                .remove(bytes_of(&ep), &format_args!("VIP {service}"))?;
            self.bump_generation()?;
            self.vip_tables.remove(
                &vip.index.to_ne_bytes(),
                &format_args!("the table of VIP {service}"),
            )?;
            for b in run.members(&vip) {
                self.release_backend_row(&b)?;
                gone.push(b);
            }
            run.vips.retain(|v| v.index != vip.index);
            run.backends.retain(|b| b.vip_index != vip.index);
        }
        if !services.is_empty() {
            self.rebuild_prefilter()?;
            self.bump_generation()?;
        }
        Ok(gone)
    }

    pub fn add_backend(&self, service: &Service, addr: SocketAddr, weight: u32) -> Result<()> {
        self.add_backends(service, &[(addr, weight)])
    }

    /// Several backends of one VIP at once: their rows, then one table
    /// rebuild.
    pub fn add_backends(&self, service: &Service, new: &[(SocketAddr, u32)]) -> Result<()> {
        let mut run = self.running()?;
        let vip = run.require_vip(service)?;
        let mut want: Vec<(SocketAddr, u32)> = run
            .members(&vip)
            .iter()
            .map(|b| (b.addr, b.weight))
            .collect();
        for &(addr, weight) in new {
            if want.iter().any(|(a, _)| *a == addr) {
                bail!("backend {addr} is already in VIP {service} (lbctl backend set to change its weight)");
            }
            want.push((addr, weight));
        }
        self.set_backends(&mut run, service, &want)?;
        Ok(())
    }

    pub fn set_weight(&self, service: &Service, addr: SocketAddr, weight: u32) -> Result<()> {
        let mut run = self.running()?;
        let mut want = run.wanted_with(service, addr)?;
        want.iter_mut()
            .filter(|(a, _)| *a == addr)
            .for_each(|(_, w)| *w = weight);
        self.set_backends(&mut run, service, &want)?;
        Ok(())
    }

    pub fn del_backend(&self, service: &Service, addr: SocketAddr) -> Result<()> {
        let mut run = self.running()?;
        let mut want = run.wanted_with(service, addr)?;
        want.retain(|(a, _)| *a != addr);
        self.set_backends(&mut run, service, &want)?;
        Ok(())
    }

    /// Makes a VIP's backends exactly `want` (address, weight), changing only
    /// what differs: new rows are written (counters reset, reply source and
    /// prefilter first), then changed weights, then one table is built and
    /// swapped in if what it is built from changed, and only then are the
    /// rows of removed backends cleared. Health stays as it was for backends
    /// that stay; new ones start unchecked. Nothing differs: nothing is
    /// written.
    pub fn set_backends(
        &self,
        run: &mut Running,
        service: &Service,
        want: &[(SocketAddr, u32)],
    ) -> Result<BackendChanges> {
        let vip = run.require_vip(service)?;
        let current = run.members(&vip);
        let mut changes = BackendChanges::default();
        for &(addr, weight) in want {
            match current.iter().find(|b| b.addr == addr) {
                None => changes.added.push(addr),
                Some(b) if b.weight != weight => changes.reweighted.push(addr),
                Some(_) => {}
            }
        }
        let gone: Vec<BackendEntry> = current
            .iter()
            .filter(|b| !want.iter().any(|(a, _)| *a == b.addr))
            .cloned()
            .collect();
        changes.removed = gone.iter().map(|b| b.addr).collect();
        if changes.is_empty() {
            return Ok(changes);
        }
        let ids = self.allocate_backend_ids(run, changes.added.len())?;
        for (&addr, id) in changes.added.iter().zip(ids) {
            let weight = weight_in(want, addr);
            let b = self.add_backend_row(service, vip.index, id, addr, weight)?;
            run.backends.push(b);
        }
        for &addr in &changes.reweighted {
            let b = run
                .backend_mut(vip.index, addr)
                .context("a backend vanished while being reweighted")?;
            b.weight = weight_in(want, addr);
            let b = b.clone();
            self.write_backend_row(service, &b)?;
        }
        let members: Vec<BackendEntry> = run
            .members(&vip)
            .into_iter()
            .filter(|b| !changes.removed.contains(&b.addr))
            .collect();
        changes.table_rebuilt = self.rebuild_table_if_changed(run, &vip, &members)?;
        for b in &gone {
            self.release_backend_row(b)?; // no table refers to it any more
            run.backends.retain(|r| r.id != b.id);
        }
        if !gone.is_empty() {
            self.bump_generation()?;
        }
        Ok(changes)
    }

    /// Records health check results: each backend's row gets its new health
    /// and `since`, then every VIP whose table input changed (a backend went
    /// down or came back) gets one new table. Returns the changes made
    /// (results equal to the recorded health are skipped; backends no longer
    /// configured are ignored).
    pub fn set_health(
        &self,
        run: &mut Running,
        results: &[(Service, SocketAddr, Health)],
        since: u32,
    ) -> Result<Vec<(Service, SocketAddr, Health)>> {
        let mut done = Vec::new();
        let mut touched: Vec<VipEntry> = Vec::new();
        for &(service, addr, health) in results {
            let Some(vip) = run.vip(&service).cloned() else {
                continue;
            };
            let Some(b) = run.backend_mut(vip.index, addr) else {
                continue;
            };
            if b.health == health {
                continue;
            }
            b.health = health;
            b.health_since = since;
            let b = b.clone();
            self.write_backend_row(&service, &b)?;
            done.push((service, addr, health));
            if !touched.iter().any(|v| v.index == vip.index) {
                touched.push(vip);
            }
        }
        for vip in touched {
            let members = run.members(&vip);
            self.rebuild_table_if_changed(run, &vip, &members)?;
        }
        Ok(done)
    }

    /// Writes a backend's row as `b` describes it (weight and health).
    fn write_backend_row(&self, service: &Service, b: &BackendEntry) -> Result<()> {
        let mut row = backend_row(service, b.vip_index, b.addr, b.weight);
        set_row_health(&mut row, b.health, b.health_since);
        let what = format_args!("backend {} of VIP {service} (id {})", b.addr, b.id);
        self.backends
            .put(&b.id.to_ne_bytes(), &row, MapFlags::ANY, &what)
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

    /// `n` free ids from the one after the last handed out, so a fresh
    /// backend does not inherit the counters of flows still marked with an
    /// old id. Recorded before any row uses them.
    fn allocate_backend_ids(&self, run: &Running, n: usize) -> Result<Vec<u32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut cfg = self.settings()?;
        let used: HashSet<u32> = run.backends.iter().map(|b| b.id).collect();
        let start = cfg.next_backend_id % LB_MAX_BACKENDS;
        let ids: Vec<u32> = (0..LB_MAX_BACKENDS)
            .map(|i| (start + i) % LB_MAX_BACKENDS)
            .filter(|id| !used.contains(id))
            .take(n)
            .collect();
        if ids.len() < n {
            bail!("no room for {n} more backends (at most {LB_MAX_BACKENDS} in all)");
        }
        cfg.next_backend_id = ids[n - 1] + 1;
        self.set_settings(&cfg)?;
        Ok(ids)
    }

    /// Builds the VIP's Maglev table from these members and swaps it in,
    /// unless the VIP's table was already built from exactly them (same
    /// ids, endpoints and effective weights). Returns whether it rebuilt.
    fn rebuild_table_if_changed(
        &self,
        run: &mut Running,
        vip: &VipEntry,
        members: &[BackendEntry],
    ) -> Result<bool> {
        let digest = table_digest(members);
        if digest == vip.table_digest {
            return Ok(false);
        }
        let moved = self.rebuild_table(vip, members)?;
        if let Some(v) = run.vips.iter_mut().find(|v| v.index == vip.index) {
            v.table_digest = digest;
            v.moved = moved;
        }
        Ok(true)
    }

    /// Builds the VIP's Maglev table from its backends, swaps it in, and
    /// records in the VIP what it was built from; returns the share of
    /// slots that moved.
    fn rebuild_table(&self, vip: &VipEntry, members: &[BackendEntry]) -> Result<f64> {
        let ids = table_ids(members, vip.table_size)?;
        let old = self.table(vip.index).unwrap_or_default();
        self.swap_table(vip.index, &ids)?;
        self.bump_generation()?;
        let ep = service_endpoint(&vip.service);
        let what = format_args!("VIP {}", vip.service);
        let moved = moved_ppm(&old, &ids);
        if let Some(mut row) = self.vips.get::<lb_vip>(bytes_of(&ep), &what)? {
            row.moved_ppm = moved;
            row.table_digest = table_digest(members);
            self.vips.put(bytes_of(&ep), &row, MapFlags::EXIST, &what)?;
        }
        Ok(moved as f64 / 1e6)
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

/// New tables (not yet in use) for (VIP index, table size, members), with
/// the digest of what each was built from, built on every CPU at once.
fn build_tables(jobs: &[(u32, u32, &[BackendEntry])]) -> Result<Vec<(MapHandle, u32)>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = jobs.len().div_ceil(threads).max(1);
    let built: Vec<Result<Vec<(MapHandle, u32)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(index, size, members)| {
                            let ids = table_ids(members, *size)?;
                            Ok((new_table(*index, &ids)?, table_digest(members)))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a table builder panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(jobs.len());
    for part in built {
        out.extend(part?);
    }
    Ok(out)
}

fn weight_in(want: &[(SocketAddr, u32)], addr: SocketAddr) -> u32 {
    want.iter().find(|(a, _)| *a == addr).map_or(0, |(_, w)| *w)
}

/// Every VIP and backend row as the maps hold them, read once so a change
/// of many VIPs (`lbctl apply`) need not read 65,536 rows per VIP. The
/// methods that take it keep it up to date with what they write.
#[derive(Clone, Debug, Default)]
pub struct Running {
    pub vips: Vec<VipEntry>,
    pub backends: Vec<BackendEntry>,
}

impl Running {
    pub fn vip(&self, service: &Service) -> Option<&VipEntry> {
        self.vips.iter().find(|v| v.service == *service)
    }

    pub fn require_vip(&self, service: &Service) -> Result<VipEntry> {
        self.vip(service)
            .cloned()
            .with_context(|| format!("VIP {service} does not exist (see `lbctl list`)"))
    }

    /// The backends of one VIP.
    pub fn members(&self, vip: &VipEntry) -> Vec<BackendEntry> {
        members_of(&self.backends, vip)
    }

    fn backend_mut(&mut self, vip_index: u32, addr: SocketAddr) -> Option<&mut BackendEntry> {
        self.backends
            .iter_mut()
            .find(|b| b.vip_index == vip_index && b.addr == addr)
    }

    /// The VIP's backends as (address, weight), if `addr` is among them.
    fn wanted_with(&self, service: &Service, addr: SocketAddr) -> Result<Vec<(SocketAddr, u32)>> {
        let vip = self.require_vip(service)?;
        let members = self.members(&vip);
        if !members.iter().any(|b| b.addr == addr) {
            bail!("backend {addr} is not in VIP {service}");
        }
        Ok(members.iter().map(|b| (b.addr, b.weight)).collect())
    }
}

/// What `set_backends` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendChanges {
    pub added: Vec<SocketAddr>,
    pub reweighted: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    /// A new table was built and swapped in.
    pub table_rebuilt: bool,
}

impl BackendChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.reweighted.is_empty() && self.removed.is_empty()
    }
}
