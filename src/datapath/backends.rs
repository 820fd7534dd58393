//! Backend rows: adding, reweighting and removing a VIP's backends (one
//! call, `set_backends`, for all of a VIP's), and recording their health,
//! in a crash-safe order (see `mod.rs`).

use std::collections::HashSet;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use libbpf_rs::MapFlags;

use super::abi::LB_MAX_BACKENDS;
use super::codec::{row_of, BackendEntry, VipEntry};
use super::maps::Maps;
use super::rebuild::sizing_of_vip;
use super::reply::{key_of, Key};
use super::running::Running;
use super::tables::table_size_for;
use super::types::lb_backend;
use crate::model::{check_backend_port, check_same_family, Health, Service};

impl Maps {
    /// A new backend row with its counters reset (nothing refers to it
    /// yet; the caller registers its reply source before a table does).
    /// It starts unchecked, or down (out of the table until its checks
    /// pass) if it is in `start_down`.
    pub(super) fn add_backend_row(
        &self,
        service: &Service,
        vip_index: u32,
        id: u32,
        (addr, weight): (SocketAddr, u32),
        start_down: &[(Service, SocketAddr)],
    ) -> Result<BackendEntry> {
        let down = start_down.contains(&(*service, addr));
        let b = BackendEntry {
            id,
            vip_index,
            vip: *service,
            addr,
            proto: service.proto,
            weight,
            health: if down {
                Health::Down
            } else {
                Health::Unchecked
            },
            health_since: if down { unix_now() } else { 0 },
            leaving: false,
        };
        self.reset_backend_counters(id)?;
        self.write_backend_row(&b)?;
        Ok(b)
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
        self.set_backends(&mut run, service, &want, &[])?;
        Ok(())
    }

    pub fn set_weight(&self, service: &Service, addr: SocketAddr, weight: u32) -> Result<()> {
        let mut run = self.running()?;
        let mut want = run.wanted_with(service, addr)?;
        want.iter_mut()
            .filter(|(a, _)| *a == addr)
            .for_each(|(_, w)| *w = weight);
        self.set_backends(&mut run, service, &want, &[])?;
        Ok(())
    }

    pub fn del_backend(&self, service: &Service, addr: SocketAddr) -> Result<()> {
        let mut run = self.running()?;
        let mut want = run.wanted_with(service, addr)?;
        want.retain(|(a, _)| *a != addr);
        self.set_backends(&mut run, service, &want, &[])?;
        Ok(())
    }

    /// Makes a VIP's backends exactly `want` (address, weight), changing only
    /// what differs: new rows are written (counters reset, reply source and
    /// prefilter first), then changed weights, then one table is built and
    /// swapped in if what it is built from changed, and only then are the
    /// rows of removed backends cleared. Health stays as it was for backends
    /// that stay; new ones start unchecked, or down if in `start_down`.
    /// Nothing differs: nothing is written.
    pub fn set_backends(
        &self,
        run: &mut Running,
        service: &Service,
        want: &[(SocketAddr, u32)],
        start_down: &[(Service, SocketAddr)],
    ) -> Result<BackendChanges> {
        let vip = run.require_vip(service)?;
        let current = run.members(&vip);
        let mut changes = BackendChanges::between(&current, want);
        let gone: Vec<BackendEntry> = current
            .iter()
            .filter(|b| changes.removed.contains(&b.addr))
            .cloned()
            .collect();
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
            let b = self.add_backend_row(service, vip.index, id, (addr, weight), start_down)?;
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
    pub(super) fn allocate_backend_ids(&self, run: &Running, n: usize) -> Result<Vec<u32>> {
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
}

/// The weight `want` gives `addr` (0 if none).
pub fn weight_in(want: &[(SocketAddr, u32)], addr: SocketAddr) -> u32 {
    want.iter().find(|(a, _)| *a == addr).map_or(0, |(_, w)| *w)
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
    /// What makes a VIP's backends (`current`, its members) exactly `want`:
    /// what `Maps::set_backends` writes and `lbctl apply --dry-run` shows.
    /// `table_rebuilt` says whether the table's input would change: a
    /// backend added or removed, or a new weight that counts (not that of a
    /// backend down, whose table weight stays 0).
    pub fn between(current: &[BackendEntry], want: &[(SocketAddr, u32)]) -> BackendChanges {
        let mut changes = BackendChanges::default();
        for &(addr, weight) in want {
            match current.iter().find(|b| b.addr == addr) {
                None => changes.added.push(addr),
                Some(b) if b.weight != weight => {
                    changes.reweighted.push(addr);
                    changes.table_rebuilt |= b.health != Health::Down;
                }
                Some(_) => {}
            }
        }
        changes.removed = current
            .iter()
            .filter(|b| !want.iter().any(|(a, _)| *a == b.addr))
            .map(|b| b.addr)
            .collect();
        changes.table_rebuilt |= !changes.added.is_empty() || !changes.removed.is_empty();
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.reweighted.is_empty() && self.removed.is_empty()
    }
}

/// Now, as a row's `health_since` records it (Unix seconds).
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}
