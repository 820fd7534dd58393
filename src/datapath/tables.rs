//! Maglev tables in the data path: a VIP's table is a fresh inner map
//! holding [size, backend ids...], put in `vip_tables` with one update, so a
//! packet sees the old table or the new one, never a mix. Built from the
//! VIP's backend rows; the digest of those rows, recorded in the VIP by
//! `config.rs`, tells a table that missed a change (lbctl killed between the
//! two writes) from a current one.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::abi::{LB_MAX_TABLE_SIZE, LB_TABLE_HDR};
use super::codec::{endpoint_key, to_endpoint, BackendEntry};
use super::maps::{u32_of, Maps};
use crate::maglev::{self, MaglevBackend};
use crate::model::Service;
use crate::table_size::{self, Sizing};

/// The size of a VIP's table for these backends (address, configured
/// weight), or why none will do: a backend would get no slot of a fixed
/// size, or of any size the data path holds.
pub fn table_size_for(
    service: &Service,
    sizing: Sizing,
    want: &[(SocketAddr, u32)],
) -> Result<u32> {
    let input: Vec<MaglevBackend> = want
        .iter()
        .map(|&(addr, weight)| MaglevBackend {
            key: endpoint_key(&to_endpoint(addr, service.proto)),
            weight,
        })
        .collect();
    let no = match table_size::choose(sizing, &input) {
        Ok(size) => return Ok(size),
        Err(no) => no,
    };
    let (addr, weight) = want[no.backend];
    let total: u64 = want.iter().map(|(_, w)| *w as u64).sum();
    match (sizing, no.needed) {
        (Sizing::Fixed(size), Some(needed)) => bail!(
            "backend {addr} of VIP {service} would get no slot of its {size}-slot table (weight {weight} of {total}): its table size is fixed; these backends need at least {needed} (delete the VIP and add it with a larger table size, or none)"
        ),
        _ => bail!(
            "backend {addr} of VIP {service} would get no slot even of the largest table ({LB_MAX_TABLE_SIZE} slots): weight {weight} is too small a share of {total}"
        ),
    }
}

/// The backend ids of a VIP's Maglev table for these members (empty: no
/// member of weight > 0).
pub fn table_ids(members: &[BackendEntry], size: u32) -> Result<Vec<u32>> {
    let mut sorted = members.to_vec();
    sorted.sort_by_key(|b| b.id);
    let input: Vec<MaglevBackend> = sorted
        .iter()
        .map(|b| MaglevBackend {
            key: endpoint_key(&to_endpoint(b.addr, b.proto)),
            weight: b.effective_weight(),
        })
        .collect();
    let slots = maglev::build_table(&input, size).map_err(anyhow::Error::msg)?;
    if slots.iter().all(|s| *s == maglev::NO_BACKEND) {
        return Ok(Vec::new());
    }
    Ok(slots.iter().map(|s| sorted[*s as usize].id).collect())
}

/// Share of slots, per million, that point elsewhere in `new` than in `old`.
pub fn moved_ppm(old: &[u32], new: &[u32]) -> u32 {
    if old.is_empty() && new.is_empty() {
        0
    } else if old.len() != new.len() || old.is_empty() {
        1_000_000
    } else {
        let n = old.iter().zip(new).filter(|(a, b)| a != b).count() as u64;
        (n * 1_000_000 / new.len() as u64) as u32
    }
}

impl Maps {
    /// The backend ids in a VIP's current table (empty: no backend).
    pub fn table(&self, index: u32) -> Result<Vec<u32>> {
        let what = format_args!("the table of VIP index {index}");
        let Some(id) = self.vip_tables.get::<u32>(&index.to_ne_bytes(), &what)? else {
            return Ok(Vec::new());
        };
        let inner =
            MapHandle::from_map_id(id).with_context(|| format!("opening {what} (map id {id})"))?;
        let size = match inner.lookup(&0u32.to_ne_bytes(), MapFlags::ANY) {
            Ok(Some(v)) => u32_of(&v, &what)?,
            Ok(None) => 0,
            Err(e) => return Err(e).with_context(|| format!("reading the size of {what}")),
        };
        let mut ids = vec![0u32; size as usize];
        if size == 0 {
            return Ok(ids);
        }
        let rows = inner
            .lookup_batch(8192, MapFlags::ANY, MapFlags::ANY)
            .with_context(|| format!("reading {what}"))?;
        for (key, value) in rows {
            let slot = u32_of(&key, &what)?.wrapping_sub(LB_TABLE_HDR) as usize;
            if let Some(id) = ids.get_mut(slot) {
                *id = u32_of(&value, &what)?;
            }
        }
        Ok(ids)
    }

    /// A new inner map holding [size, ids...], put in place with one update.
    pub(super) fn swap_table(&self, index: u32, ids: &[u32]) -> Result<()> {
        let table = new_table(index, ids)?;
        self.install_tables(&[(index, &table)])
    }

    /// Puts several new tables in place (each VIP sees its old table or
    /// its new one). One batch update: the kernel waits for running
    /// programs to finish with the old tables (an RCU grace period, about
    /// 10-15 ms here) once per call on 6.7 and later, rather than once per
    /// table; where the batch is refused, one update each.
    pub(super) fn install_tables(&self, tables: &[(u32, &MapHandle)]) -> Result<()> {
        let what = |i: u32| format!("the table of VIP index {i}");
        if let [(index, table)] = tables {
            let fd = table.as_fd().as_raw_fd() as u32;
            return self.vip_tables.put_bytes(
                &index.to_ne_bytes(),
                &fd.to_ne_bytes(),
                MapFlags::ANY,
                &what(*index),
            );
        }
        let mut keys = Vec::with_capacity(tables.len() * 4);
        let mut values = Vec::with_capacity(tables.len() * 4);
        for (index, table) in tables {
            keys.extend_from_slice(&index.to_ne_bytes());
            values.extend_from_slice(&(table.as_fd().as_raw_fd() as u32).to_ne_bytes());
        }
        let batch = self.vip_tables.handle().update_batch(
            &keys,
            &values,
            tables.len() as u32,
            MapFlags::ANY,
            MapFlags::ANY,
        );
        if batch.is_ok() {
            return Ok(());
        }
        for (index, table) in tables {
            let fd = table.as_fd().as_raw_fd() as u32;
            self.vip_tables.put_bytes(
                &index.to_ne_bytes(),
                &fd.to_ne_bytes(),
                MapFlags::ANY,
                &what(*index),
            )?;
        }
        Ok(())
    }
}

/// A new inner map holding [size, ids...] for VIP index `index`, not yet
/// in use.
pub(super) fn new_table(index: u32, ids: &[u32]) -> Result<MapHandle> {
    let entries = LB_TABLE_HDR + ids.len() as u32;
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: libbpf_rs::libbpf_sys::BPF_F_INNER_MAP,
        ..Default::default()
    };
    let inner = MapHandle::create(MapType::Array, Some("lb_table"), 4, 4, entries, &opts)
        .with_context(|| format!("creating a {entries}-entry table for VIP index {index}"))?;
    let mut keys = Vec::with_capacity(entries as usize * 4);
    let mut values = Vec::with_capacity(entries as usize * 4);
    let size = ids.len() as u32;
    for (k, v) in std::iter::once(size).chain(ids.iter().copied()).enumerate() {
        keys.extend_from_slice(&(k as u32).to_ne_bytes());
        values.extend_from_slice(&v.to_ne_bytes());
    }
    inner
        .update_batch(&keys, &values, entries, MapFlags::ANY, MapFlags::ANY)
        .with_context(|| format!("filling the new table of VIP index {index}"))?;
    Ok(inner)
}

/// What a table is built from: each member's id, endpoint and effective
/// weight (a down backend counts as weight 0).
pub fn table_digest(members: &[BackendEntry]) -> u32 {
    let mut sorted: Vec<&BackendEntry> = members.iter().collect();
    sorted.sort_by_key(|b| b.id);
    let mut bytes = Vec::with_capacity(sorted.len() * 28);
    for b in sorted {
        bytes.extend_from_slice(&b.id.to_ne_bytes());
        bytes.extend_from_slice(&endpoint_key(&to_endpoint(b.addr, b.proto)));
        bytes.extend_from_slice(&b.effective_weight().to_ne_bytes());
    }
    crate::hash::hash_bytes(&bytes, 0x7461_626c)
}
