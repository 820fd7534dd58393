//! Adding and deleting VIPs, in a crash-safe order (see `mod.rs`). One add
//! path: a VIP alone (`vip add`) is a VIP with no backends.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapFlags, MapHandle};

use super::abi::LB_MAX_VIPS;
use super::allowlists::AllowKeys;
use super::codec::{
    bytes_of, service_endpoint, set_affinity, set_on_backend_gone, vip_entry, vip_row,
    BackendEntry, VipEntry,
};
use super::maps::{Maps, TurnedAway};
use super::prefilter::Set;
use super::rebuild::build_tables;
use super::reply::{key_of, Key};
use super::running::Running;
use super::tables::table_size_for;
use super::types::lb_vip;
use crate::model::{Affinity, OnBackendGone, Service, VipSpec};
use crate::table_size::Sizing;

impl Maps {
    /// Adds a VIP with no backends: an empty table, then the VIP that
    /// refers to it (killed before the VIP, a table at an index no VIP has
    /// is left, which the repair removes). The one add path, with no rows.
    pub fn add_vip(&self, spec: &VipSpec) -> Result<VipEntry> {
        let mut run = self.running()?;
        self.add_vips_with_backends(&mut run, &[(spec.clone(), Vec::new())], &[])?;
        run.require_vip(&spec.service)
    }

    /// Adds new VIPs with their backends: every backend row first, then one
    /// table per VIP built and all of them put in place in one batch
    /// update, then the VIPs that refer to them. For a VIP added with its
    /// backends this is one table build and one swap, where `add_vip` then
    /// `set_backends` would swap twice (each swap waits for an RCU grace
    /// period). Backends in `start_down` start down (`set_backends`).
    /// Returns how many were added.
    pub fn add_vips_with_backends(
        &self,
        run: &mut Running,
        new: &[(VipSpec, Vec<(SocketAddr, u32)>)],
        start_down: &[(Service, SocketAddr)],
    ) -> Result<usize> {
        if new.is_empty() {
            return Ok(0);
        }
        let mut free = (0..LB_MAX_VIPS).filter(|i| !run.vips.iter().any(|v| v.index == *i));
        let mut placed = Vec::new();
        for (spec, backends) in new {
            if let Some(had) = run.vip(&spec.service) {
                if spec.service.addr.port() == 0 {
                    bail!(
                        "{} already has a VIP of many ports for {}: {} (one per address and protocol; lbctl vip del it first)",
                        spec.service.addr.ip(),
                        spec.service.proto,
                        had.name()
                    );
                }
            }
            if run.vip(&spec.service).is_some()
                || placed
                    .iter()
                    .any(|(s, _, _, _): &(&VipSpec, _, _, _)| s.service == spec.service)
            {
                bail!(
                    "VIP {} already exists (lbctl vip del first to change its mode)",
                    spec.name()
                );
            }
            let index = free
                .next()
                .with_context(|| format!("no room for another VIP (at most {LB_MAX_VIPS})"))?;
            let size = table_size_for(&spec.service, sizing_of(spec), backends)?;
            placed.push((spec, index, backends, size));
        }
        let total: usize = new.iter().map(|(_, b)| b.len()).sum();
        let mut allow_keys = AllowKeys::default();
        let mut ids = self.allocate_backend_ids(run, total)?.into_iter();
        // Rows first: until its VIP entry is written, a killed apply leaves
        // rows of no VIP, which the repair clears.
        let mut members_of_each = Vec::with_capacity(placed.len());
        for (spec, index, backends, _) in &placed {
            self.reset_vip_counters(*index)?;
            let mut members = Vec::with_capacity(backends.len());
            for &backend in backends.iter() {
                let id = ids.next().context("fewer backend ids than backends")?;
                members.push(self.add_backend_row(
                    &spec.service,
                    *index,
                    id,
                    backend,
                    start_down,
                )?);
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
        let tables = build_tables(self.balancer_id()?, &jobs)?;
        let keys: Vec<Key> = members_of_each.iter().flatten().map(key_of).collect();
        for members in members_of_each {
            run.backends.extend(members);
        }
        // Reply sources before any table names a row. The VIPs are not in
        // `run` yet, so their rows are counted from what is being placed.
        let mut future = run.clone();
        for (spec, index, _, size) in &placed {
            let mut entry = vip_entry(
                &service_endpoint(&spec.service),
                &vip_row(spec, *index, *size),
            )?;
            entry.ports = spec.ports;
            future.vips.push(entry);
        }
        self.sync_reply_sources(&future, Some(&keys))?;
        let installed: Vec<(u32, &MapHandle)> = placed
            .iter()
            .zip(&tables)
            .map(|((_, index, _, _), (t, _))| (*index, t))
            .collect();
        self.install_tables(&installed)?;
        for ((spec, index, backends, size), (_, digest)) in placed.iter().zip(&tables) {
            let mut vip = vip_row(spec, *index, *size);
            vip.table_digest = *digest;
            // A first table moved every slot it fills; an empty one none.
            vip.moved_ppm = if backends.is_empty() { 0 } else { 1_000_000 };
            let ep = service_endpoint(&spec.service);
            // Its prefixes before the row that turns the check on.
            self.put_allowlist(*index, &spec.allow, &mut allow_keys)?;
            self.reset_turned_away(TurnedAway::Denied, *index)?;
            self.put_limit(*index, spec.max_new_flows)?;
            self.reset_turned_away(TurnedAway::Limited, *index)?;
            self.put_ports(*index, spec.service.addr.port(), spec.ports)?;
            self.prefilter_mark(Set::Vips, spec.service.addr.ip())?;
            self.vips.put(
                bytes_of(&ep),
                &vip,
                MapFlags::NO_EXIST,
                &format_args!("VIP {}", spec.service),
            )?;
            let mut entry = vip_entry(&ep, &vip)?;
            entry.allow = spec.allow.clone();
            entry.max_new_flows = spec.max_new_flows;
            entry.ports = spec.ports;
            run.vips.push(entry);
        }
        self.bump_generation()?;
        Ok(placed.len())
    }

    /// Changes a VIP setting held in its row's flags (`RowFlag`: affinity,
    /// on-backend-gone): one write of the row, then the generation where
    /// the data path caches decisions made by it. Returns whether anything
    /// changed.
    pub fn set_flag<T: RowFlag>(
        &self,
        run: &mut Running,
        service: &Service,
        value: T,
    ) -> Result<bool> {
        run.change_vip(
            service,
            |vip| *(T::OF)(&mut vip.clone()) == value,
            |_| {
                self.edit_vip_row(service, |row| {
                    (T::ENCODE)(row, value);
                    Ok(true)
                })?;
                if T::CACHED {
                    self.bump_generation()?;
                }
                Ok(())
            },
            |v| *(T::OF)(v) = value,
        )
    }

    /// Reads VIP `service`'s row, lets `edit` change it, and writes it
    /// back where `edit` says it changed: the read-modify-write of the row
    /// that every `set_*` of one VIP setting does.
    pub(super) fn edit_vip_row(
        &self,
        service: &Service,
        edit: impl FnOnce(&mut lb_vip) -> Result<bool>,
    ) -> Result<()> {
        let ep = service_endpoint(service);
        let what = format_args!("VIP {service}");
        let mut row: lb_vip = self.vips.require(bytes_of(&ep), &what)?;
        if edit(&mut row)? {
            self.vips.put(bytes_of(&ep), &row, MapFlags::EXIST, &what)?;
        }
        Ok(())
    }

    /// Deletes a VIP and its backend rows; returns the rows it removed.
    pub fn del_vip(&self, service: &Service) -> Result<Vec<BackendEntry>> {
        self.del_vips(&mut self.running()?, &[*service])
    }

    /// Deletes VIPs and their backend rows (one prefilter rebuild for all);
    /// returns the rows removed.
    pub fn del_vips(&self, run: &mut Running, services: &[Service]) -> Result<Vec<BackendEntry>> {
        let mut gone = Vec::new();
        let mut allow_keys = AllowKeys::default();
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
            self.clear_allowlist(vip.index, &mut allow_keys)?;
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
}

/// How a new VIP's table is sized.
fn sizing_of(spec: &VipSpec) -> Sizing {
    match spec.table_size {
        Some(size) => Sizing::Fixed(size),
        None => Sizing::Auto,
    }
}

/// A VIP setting kept in its row's flags, set by `Maps::set_flag`.
pub trait RowFlag: Copy + PartialEq + 'static {
    /// Whether the flow cache's decisions depend on it (a change then
    /// bumps the generation; cached decisions are of live flows, which
    /// keep their backend).
    const CACHED: bool;
    /// The running VIP's value.
    const OF: fn(&mut VipEntry) -> &mut Self;
    /// Writes it into the row.
    const ENCODE: fn(&mut lb_vip, Self);
}

/// How new flows pick their backend.
impl RowFlag for Affinity {
    const CACHED: bool = true;
    const OF: fn(&mut VipEntry) -> &mut Self = |v| &mut v.affinity;
    const ENCODE: fn(&mut lb_vip, Self) = set_affinity;
}

/// What becomes of the flows of backends that go (not read by the data
/// path).
impl RowFlag for OnBackendGone {
    const CACHED: bool = false;
    const OF: fn(&mut VipEntry) -> &mut Self = |v| &mut v.on_backend_gone;
    const ENCODE: fn(&mut lb_vip, Self) = set_on_backend_gone;
}
