//! Configuration changes: settings, VIPs and backends, read from and written
//! to the maps. Every change is ordered so that a packet sees the old
//! configuration or the new one, and so that an lbctl killed between any two
//! writes leaves a state that is safe for packets and that `repair.rs`
//! finishes at the next change:
//!
//! - a row is written, and its reply source registered (`reply.rs`), before
//!   a table names it; a table is swapped in with one map update
//!   (`tables.rs`); a row is cleared only after no table names it;
//! - each change has one write that commits it: the VIP entry (add, delete),
//!   the backend row (add, weight), the row's LEAVING flag (removal); what
//!   follows that write is derived from the maps and redone by the repair
//!   if it was not finished;
//! - each change ends by bumping the configuration generation, so the flow
//!   cache drops decisions made under the old configuration.
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
    LB_MAX_BACKENDS, LB_MAX_VIPS, LB_UDP_UNREPLIED_TIMEOUT_S, LB_UNPROVEN_TIMEOUT_S,
};
use super::codec::{
    backend_entry, bytes_of, read, row_of, service_endpoint, vip_entry, vip_row, BackendEntry,
    VipEntry,
};
use super::maps::{u32_of, Maps, ROW0};
use super::prefilter::Set;
use super::reply::{key_of, Key};
use super::tables::{moved_ppm, new_table, table_digest, table_ids, table_size_for};
use super::types::{lb_backend, lb_config, lb_endpoint, lb_handshake, lb_vip};
use crate::model::{check_backend_port, check_same_family, Health, Service, Timeouts, VipSpec};
use crate::table_size::Sizing;

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

    /// Sets the timeouts given and returns all four as they now are.
    pub fn set_timeouts(&self, t: &Timeouts) -> Result<Timeouts> {
        if t.syn.is_some() || t.udp_unreplied.is_some() {
            let Some(map) = &self.handshake else {
                bail!("the running program predates the handshake and unreplied UDP timeouts: upgrade it with lbctl attach IFACE --replace");
            };
            // One row holds both: keep the one not given.
            let mut row = map
                .get::<lb_handshake>(&ROW0, &"the handshake timeout")?
                .unwrap_or_default();
            row.timeout_s = t.syn.unwrap_or(row.timeout_s);
            row.udp_unreplied_s = t.udp_unreplied.unwrap_or(row.udp_unreplied_s);
            map.put(&ROW0, &row, MapFlags::ANY, &"the handshake timeout")?;
        }
        let mut cfg = self.settings()?;
        if t.tcp.is_some() || t.tcpfin.is_some() || t.udp.is_some() {
            cfg.tcp_timeout_s = t.tcp.unwrap_or(cfg.tcp_timeout_s);
            cfg.tcp_fin_timeout_s = t.tcpfin.unwrap_or(cfg.tcp_fin_timeout_s);
            cfg.udp_timeout_s = t.udp.unwrap_or(cfg.udp_timeout_s);
            // One write: the timeouts and the generation bump together.
            cfg.generation = cfg.generation.wrapping_add(1);
            self.set_settings(&cfg)?;
        }
        Ok(Timeouts {
            tcp: Some(cfg.tcp_timeout_s),
            tcpfin: Some(cfg.tcp_fin_timeout_s),
            udp: Some(cfg.udp_timeout_s),
            syn: Some(self.handshake_timeout()?),
            udp_unreplied: Some(self.udp_unreplied_timeout()?),
        })
    }

    /// The unreplied UDP timeout in force (LB_UDP_UNREPLIED_TIMEOUT_S
    /// unless set).
    pub fn udp_unreplied_timeout(&self) -> Result<u32> {
        let Some(map) = &self.handshake else {
            return Ok(LB_UDP_UNREPLIED_TIMEOUT_S);
        };
        let row = map.get::<lb_handshake>(&ROW0, &"the handshake timeout")?;
        Ok(row
            .map(|r| r.udp_unreplied_s)
            .filter(|s| *s != 0)
            .unwrap_or(LB_UDP_UNREPLIED_TIMEOUT_S))
    }

    /// The handshake timeout in force (LB_UNPROVEN_TIMEOUT_S unless set).
    pub fn handshake_timeout(&self) -> Result<u32> {
        let Some(map) = &self.handshake else {
            return Ok(LB_UNPROVEN_TIMEOUT_S);
        };
        let row = map.get::<lb_handshake>(&ROW0, &"the handshake timeout")?;
        Ok(row
            .map(|r| r.timeout_s)
            .filter(|s| *s != 0)
            .unwrap_or(LB_UNPROVEN_TIMEOUT_S))
    }

    /// Every VIP, by index.
    pub fn vips(&self) -> Result<Vec<VipEntry>> {
        let mut out = Vec::new();
        for (key, value) in self.vips.entries(&"VIPs")? {
            let ep: lb_endpoint = read(&key).context("decoding a key of map vips")?;
            let v: lb_vip = read(&value).context("decoding a VIP")?;
            out.push(vip_entry(&ep, &v)?);
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

    /// Every backend row in use (those of no VIP and leaving ones too).
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

    /// The backends of one VIP (not those being removed).
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
        let size = table_size_for(service, sizing_of(spec), &[])?;
        self.reset_vip_counters(index)?;
        // The table first (empty), then the VIP that refers to it: killed
        // before the VIP, a table at an index no VIP has is left, which
        // the repair removes.
        self.swap_table(index, &[])?;
        let mut vip = vip_row(spec.mode, spec.snat, index, size, spec.table_size.is_some());
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
                    .any(|(s, _, _, _): &(&VipSpec, _, _, _)| s.service == spec.service)
            {
                bail!("VIP {} already exists", spec.service);
            }
            let index = free
                .next()
                .with_context(|| format!("no room for another VIP (at most {LB_MAX_VIPS})"))?;
            let size = table_size_for(&spec.service, sizing_of(spec), backends)?;
            placed.push((spec, index, backends, size));
        }
        let total: usize = new.iter().map(|(_, b)| b.len()).sum();
        let mut ids = self.allocate_backend_ids(run, total)?.into_iter();
        // Rows first: until its VIP entry is written, a killed apply leaves
        // rows of no VIP, which the repair clears.
        let mut members_of_each = Vec::with_capacity(placed.len());
        for (spec, index, backends, _) in &placed {
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
            .map(|((_, index, _, size), m)| (*index, *size, m.as_slice()))
            .collect();
        let tables = build_tables(&jobs)?;
        let keys: Vec<Key> = members_of_each.iter().flatten().map(key_of).collect();
        for members in members_of_each {
            run.backends.extend(members);
        }
        // Reply sources before any table names a row. The VIPs are not in
        // `run` yet, so their rows are counted from what is being placed.
        let mut future = run.clone();
        for (spec, index, _, size) in &placed {
            future.vips.push(vip_entry(
                &service_endpoint(&spec.service),
                &vip_row(spec.mode, spec.snat, *index, *size, false),
            )?);
        }
        self.sync_reply_sources(&future, Some(&keys))?;
        let installed: Vec<(u32, &MapHandle)> = placed
            .iter()
            .zip(&tables)
            .map(|((_, index, _, _), (t, _))| (*index, t))
            .collect();
        self.install_tables(&installed)?;
        for ((spec, index, _, size), (_, digest)) in placed.iter().zip(&tables) {
            let fixed = spec.table_size.is_some();
            let mut vip = vip_row(spec.mode, spec.snat, *index, *size, fixed);
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

    /// A new backend row with its counters reset (nothing refers to it
    /// yet; the caller registers its reply source before a table does).
    fn add_backend_row(
        &self,
        service: &Service,
        vip_index: u32,
        id: u32,
        addr: SocketAddr,
        weight: u32,
    ) -> Result<BackendEntry> {
        let b = BackendEntry {
            id,
            vip_index,
            vip: *service,
            addr,
            proto: service.proto,
            weight,
            health: Health::Unchecked,
            health_since: 0,
            leaving: false,
        };
        self.reset_backend_counters(id)?;
        self.write_backend_row(&b)?;
        Ok(b)
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
            // Stop matching first: this write commits the deletion. Then
            // nothing refers to the table or the rows, and a killed lbctl
            // leaves rows of no VIP, which the repair clears.
            self.vips
                .remove(bytes_of(&ep), &format_args!("VIP {service}"))?;
            self.bump_generation()?;
            self.vip_tables.remove(
                &vip.index.to_ne_bytes(),
                &format_args!("the table of VIP {service}"),
            )?;
            let rows = run.rows_of(&vip);
            for b in &rows {
                self.clear_backend_row(b.id)?;
            }
            let keys: Vec<Key> = rows.iter().map(key_of).collect();
            run.vips.retain(|v| v.index != vip.index);
            run.backends.retain(|b| !rows.iter().any(|r| r.id == b.id));
            self.sync_reply_sources(run, Some(&keys))?;
            gone.extend(rows.into_iter().filter(|b| !b.leaving));
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
            check_same_family(service.addr, addr).map_err(anyhow::Error::msg)?;
            check_backend_port(vip.mode, service.addr, addr).map_err(anyhow::Error::msg)?;
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
        // Refused before anything is written: a backend that would get no
        // slot of the table.
        table_size_for(service, sizing_of_vip(&vip), want)?;
        let ids = self.allocate_backend_ids(run, changes.added.len())?;
        let mut keys: Vec<Key> = Vec::new();
        for (&addr, id) in changes.added.iter().zip(ids) {
            let weight = weight_in(want, addr);
            let b = self.add_backend_row(service, vip.index, id, addr, weight)?;
            keys.push(key_of(&b));
            run.backends.push(b);
        }
        for &addr in &changes.reweighted {
            let b = run
                .member_mut(&vip, addr)
                .context("a backend vanished while being reweighted")?;
            b.weight = weight_in(want, addr);
            let b = b.clone();
            self.write_backend_row(&b)?;
        }
        // The removal is recorded in the rows before the table leaves them
        // out: killed after this, the repair finishes it.
        for b in &gone {
            let b = run.member_mut(&vip, b.addr).context("a backend vanished")?;
            b.leaving = true;
            let b = b.clone();
            self.write_backend_row(&b)?;
        }
        self.sync_reply_sources(run, Some(&keys))?;
        let members = run.members(&vip);
        changes.table_rebuilt = self.rebuild_table_if_changed(run, &vip, &members)?;
        let keys: Vec<Key> = gone.iter().map(key_of).collect();
        for b in &gone {
            self.clear_backend_row(b.id)?; // no table refers to it any more
            run.backends.retain(|r| r.id != b.id);
        }
        if !gone.is_empty() {
            self.sync_reply_sources(run, Some(&keys))?;
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
            let Some(b) = run.member_mut(&vip, addr) else {
                continue;
            };
            if b.health == health {
                continue;
            }
            b.health = health;
            b.health_since = since;
            let b = b.clone();
            self.write_backend_row(&b)?;
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

    /// Writes a backend's row as `b` describes it (weight, health, leaving).
    fn write_backend_row(&self, b: &BackendEntry) -> Result<()> {
        let what = format_args!("backend {} of VIP {} (id {})", b.addr, b.vip, b.id);
        self.backends
            .put(&b.id.to_ne_bytes(), &row_of(b), MapFlags::ANY, &what)
    }

    /// Clears a row no table names any more. Its endpoint's reply source
    /// stays (the caller recounts it): live flows to it keep getting their
    /// replies NATed.
    pub(super) fn clear_backend_row(&self, id: u32) -> Result<()> {
        self.backends.put(
            &id.to_ne_bytes(),
            &lb_backend::default(),
            MapFlags::ANY,
            &format_args!("backend row {id} (clearing it)"),
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
    pub(super) fn rebuild_table_if_changed(
        &self,
        run: &mut Running,
        vip: &VipEntry,
        members: &[BackendEntry],
    ) -> Result<bool> {
        let digest = table_digest(members);
        if digest == vip.table_digest && size_for(vip, members) == vip.table_size {
            return Ok(false);
        }
        let (size, moved) = self.rebuild_table(vip, members)?;
        if let Some(v) = run.vips.iter_mut().find(|v| v.index == vip.index) {
            v.table_digest = digest;
            v.moved = moved;
            v.table_size = size;
        }
        Ok(true)
    }

    /// Builds the VIP's Maglev table from its backends, at the size they
    /// call for, swaps it in, and records in the VIP what it was built from
    /// and its size; returns the size and the share of slots that moved.
    /// A fixed size too small for them (refused before any write, so only
    /// met in maps an older lbctl wrote) is kept.
    fn rebuild_table(&self, vip: &VipEntry, members: &[BackendEntry]) -> Result<(u32, f64)> {
        let size = size_for(vip, members);
        let ids = table_ids(members, size)?;
        let old = self.table(vip.index).unwrap_or_default();
        self.swap_table(vip.index, &ids)?;
        self.bump_generation()?;
        let ep = service_endpoint(&vip.service);
        let what = format_args!("VIP {}", vip.service);
        let moved = moved_ppm(&old, &ids);
        if let Some(mut row) = self.vips.get::<lb_vip>(bytes_of(&ep), &what)? {
            row.moved_ppm = moved;
            row.table_digest = table_digest(members);
            row.table_size = size;
            self.vips.put(bytes_of(&ep), &row, MapFlags::EXIST, &what)?;
        }
        Ok((size, moved as f64 / 1e6))
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

/// The size a running VIP's table should have for these members (their
/// configured weights). A fixed size too small for them (refused before any
/// write, so only met in maps an older lbctl wrote) is kept.
fn size_for(vip: &VipEntry, members: &[BackendEntry]) -> u32 {
    let want: Vec<(SocketAddr, u32)> = members.iter().map(|b| (b.addr, b.weight)).collect();
    table_size_for(&vip.service, sizing_of_vip(vip), &want).unwrap_or(vip.table_size)
}

impl Maps {
    /// Builds every VIP's table from its rows into this program's own
    /// `vip_tables` (an upgrade in place: `attach --replace` gives the new
    /// program fresh tables, in its format and at the size the backends
    /// call for, rather than the running program's). `old` is the running
    /// program's maps, for what each rebuild moved. Returns what to record
    /// in each VIP's row once the new program runs ([`Maps::record_tables`]).
    pub fn build_all_tables(&self, old: &Maps) -> Result<Vec<RebuiltTable>> {
        let run = self.running()?;
        let members: Vec<(VipEntry, Vec<BackendEntry>)> = run
            .vips
            .iter()
            .map(|v| (v.clone(), run.members(v)))
            .collect();
        let jobs: Vec<(u32, u32, &[BackendEntry])> = members
            .iter()
            .map(|(v, m)| (v.index, size_for(v, m), m.as_slice()))
            .collect();
        let tables = build_tables(&jobs)?;
        let installed: Vec<(u32, &MapHandle)> = jobs
            .iter()
            .zip(&tables)
            .map(|((index, _, _), (t, _))| (*index, t))
            .collect();
        self.install_tables(&installed)?;
        let mut out = Vec::with_capacity(jobs.len());
        for (((vip, m), (_, size, _)), (_, digest)) in members.iter().zip(&jobs).zip(&tables) {
            let new = table_ids(m, *size)?;
            let before = old.table(vip.index).unwrap_or_default();
            out.push(RebuiltTable {
                service: vip.service,
                size: *size,
                digest: *digest,
                moved_ppm: moved_ppm(&before, &new),
            });
        }
        Ok(out)
    }

    /// Records in each VIP's row the table [`Maps::build_all_tables`] built.
    pub fn record_tables(&self, rebuilt: &[RebuiltTable]) -> Result<()> {
        for t in rebuilt {
            let ep = service_endpoint(&t.service);
            let what = format_args!("VIP {}", t.service);
            if let Some(mut row) = self.vips.get::<lb_vip>(bytes_of(&ep), &what)? {
                row.moved_ppm = t.moved_ppm;
                row.table_digest = t.digest;
                row.table_size = t.size;
                self.vips.put(bytes_of(&ep), &row, MapFlags::EXIST, &what)?;
            }
        }
        Ok(())
    }
}

/// A VIP's table built anew by [`Maps::build_all_tables`].
#[derive(Clone, Copy, Debug)]
pub struct RebuiltTable {
    pub service: Service,
    pub size: u32,
    pub digest: u32,
    pub moved_ppm: u32,
}

/// Whether a row belongs to this VIP: its index and the VIP it names
/// (a row left by a VIP deleted halfway names another VIP than the one
/// that later took its index).
fn belongs(b: &BackendEntry, vip: &VipEntry) -> bool {
    b.vip_index == vip.index && b.vip == vip.service
}

/// The backends of one VIP (not those being removed).
fn members_of(all: &[BackendEntry], vip: &VipEntry) -> Vec<BackendEntry> {
    all.iter()
        .filter(|b| belongs(b, vip) && !b.leaving)
        .cloned()
        .collect()
}

/// How a new VIP's table is sized.
fn sizing_of(spec: &VipSpec) -> Sizing {
    match spec.table_size {
        Some(size) => Sizing::Fixed(size),
        None => Sizing::Auto,
    }
}

/// How a running VIP's table is sized.
fn sizing_of_vip(vip: &VipEntry) -> Sizing {
    if vip.fixed_size {
        Sizing::Fixed(vip.table_size)
    } else {
        Sizing::Auto
    }
}

/// New tables (not yet in use) for (VIP index, table size, members), with
/// the digest of what each was built from, built on every CPU at once (on
/// this thread when there is one CPU or one table).
fn build_tables(jobs: &[(u32, u32, &[BackendEntry])]) -> Result<Vec<(MapHandle, u32)>> {
    let build = |(index, size, members): &(u32, u32, &[BackendEntry])| {
        let ids = table_ids(members, *size)?;
        Ok((new_table(*index, &ids)?, table_digest(members)))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    if threads == 1 || jobs.len() <= 1 {
        return jobs.iter().map(build).collect();
    }
    let chunk = jobs.len().div_ceil(threads).max(1);
    let built: Vec<Result<Vec<(MapHandle, u32)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(build).collect()))
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

    /// The backends of one VIP (not those being removed).
    pub fn members(&self, vip: &VipEntry) -> Vec<BackendEntry> {
        members_of(&self.backends, vip)
    }

    /// Every row of one VIP, leaving ones too.
    pub fn rows_of(&self, vip: &VipEntry) -> Vec<BackendEntry> {
        self.backends
            .iter()
            .filter(|b| belongs(b, vip))
            .cloned()
            .collect()
    }

    /// The VIP a row belongs to; None for a row of no VIP (left by a VIP
    /// deleted, or added, halfway).
    pub fn vip_of(&self, b: &BackendEntry) -> Option<&VipEntry> {
        self.vips.iter().find(|v| belongs(b, v))
    }

    fn member_mut(&mut self, vip: &VipEntry, addr: SocketAddr) -> Option<&mut BackendEntry> {
        self.backends
            .iter_mut()
            .find(|b| belongs(b, vip) && !b.leaving && b.addr == addr)
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
