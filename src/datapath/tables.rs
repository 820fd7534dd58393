//! Maglev tables in the data path: a VIP's table is a fresh inner map
//! holding [size, backend ids...], put in `vip_tables` with one update, so a
//! packet sees the old table or the new one, never a mix. Element 0 holds
//! the size; the slots follow, 32 two-byte backend ids to an element
//! (bpf/lb_abi.h). Tables an lbctl before this
//! format wrote (one 4-byte id an element) are still read, for `explain`
//! and for the upgrade (`attach --replace`), which rebuilds every table. Built from the
//! VIP's backend rows; the digest of those rows, recorded in the VIP by
//! `config.rs`, tells a table that missed a change (lbctl killed between the
//! two writes) from a current one.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::abi::{LB_MAX_BACKENDS, LB_MAX_TABLE_SIZE, LB_TABLE_HDR, LB_TABLE_SLOTS_PER_BLOCK};
use super::codec::{endpoint_key, read, to_endpoint, BackendEntry};
use super::maps::{entries_of, u32_of, Maps};
use super::table_names::table_name;
use super::types::lb_vip;
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
            Ok(Some(v)) => u32_of(&v[..4.min(v.len())], &what)?,
            Ok(None) => 0,
            Err(e) => return Err(e).with_context(|| format!("reading the size of {what}")),
        };
        let mut ids = vec![0u32; size as usize];
        if size == 0 {
            return Ok(ids);
        }
        let rows = entries_of(&inner).with_context(|| format!("reading {what}"))?;
        let legacy = inner.value_size() == LEGACY_VALUE_SIZE;
        for (key, value) in rows.iter() {
            let elem = u32_of(key, &what)?;
            if elem < LB_TABLE_HDR {
                continue;
            }
            if legacy {
                if let Some(id) = ids.get_mut((elem - LB_TABLE_HDR) as usize) {
                    *id = u32_of(value, &what)?;
                }
                continue;
            }
            let first = ((elem - LB_TABLE_HDR) * LB_TABLE_SLOTS_PER_BLOCK) as usize;
            for (i, pair) in value.chunks_exact(2).enumerate() {
                if let Some(id) = ids.get_mut(first + i) {
                    *id = u32::from(u16::from_ne_bytes([pair[0], pair[1]]));
                }
            }
        }
        Ok(ids)
    }

    /// Whether the running program keeps its tables in the format of an
    /// lbctl before slots were packed (one 4-byte id an element): this lbctl
    /// cannot put a table in its `vip_tables` (the kernel refuses an inner
    /// map of another value size), only read them, until `attach --replace`
    /// upgrades the program. (A program without any table takes the format
    /// of the first one put in; every VIP has one, so that is one without
    /// VIPs, which `vip add` tells by the kernel's refusal.) Reads the slot
    /// of one VIP, not all 1,024 (`table_names.rs` says why).
    pub fn legacy_tables(&self) -> Result<bool> {
        let what = "a VIP's table";
        for (_, value) in self.vips.entries(&"VIPs")?.iter() {
            let vip: lb_vip = read(value).context("decoding a VIP")?;
            let Some(id) = self
                .vip_tables
                .get::<u32>(&vip.index.to_ne_bytes(), &what)?
            else {
                continue; // (a VIP has a table; met only mid-change)
            };
            let table = MapHandle::from_map_id(id)
                .with_context(|| format!("opening a VIP table (map id {id})"))?;
            return Ok(table.value_size() == LEGACY_VALUE_SIZE);
        }
        Ok(false)
    }

    /// Refuses, with one line, a change this lbctl cannot make to an older
    /// program's tables.
    pub fn require_current_tables(&self) -> Result<()> {
        if self.legacy_tables()? {
            bail!("the running program keeps its Maglev tables in an older format than this lbctl writes: upgrade it first with lbctl attach IFACE --replace (nothing was changed)");
        }
        Ok(())
    }

    /// A new inner map holding [size, ids...], put in place with one update.
    pub(super) fn swap_table(&self, index: u32, ids: &[u32]) -> Result<()> {
        let table = new_table(self.balancer_id()?, index, ids)?;
        self.install_tables(&[(index, &table)])
    }

    /// Puts several new tables in place (each VIP sees its old table or
    /// its new one). One batch update: the kernel waits for running
    /// programs to finish with the old tables (an RCU grace period, about
    /// 10-15 ms here) once per call on 6.7 and later, rather than once per
    /// table; where the batch is refused, one update each.
    pub(super) fn install_tables(&self, tables: &[(u32, &MapHandle)]) -> Result<()> {
        self.install_tables_once(tables).context(
            "putting the new table in place (a program older than this lbctl keeps its tables in another format: upgrade it first with lbctl attach IFACE --replace)",
        )
    }

    fn install_tables_once(&self, tables: &[(u32, &MapHandle)]) -> Result<()> {
        let what = |i: u32| format!("the table of VIP index {i}");
        if tables.is_empty() {
            return Ok(()); // (a batch of none divides by zero in libbpf-rs)
        }
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

/// Bytes of a table element: 32 slots of 2 bytes (bpf/lb_abi.h).
const BLOCK_BYTES: u32 = 2 * LB_TABLE_SLOTS_PER_BLOCK;

/// Bytes of an element of the tables lbctl wrote before slots were packed.
const LEGACY_VALUE_SIZE: u32 = 4;

// A slot holds a backend id in 16 bits.
const _: () = assert!(LB_MAX_BACKENDS <= 1 << 16);

/// The elements of a table of these ids: the header (the slot count), then
/// the ids, 32 to an element.
fn table_elements(ids: &[u32]) -> Result<Vec<u8>> {
    let per = LB_TABLE_SLOTS_PER_BLOCK as usize;
    let blocks = LB_TABLE_HDR as usize + ids.len().div_ceil(per);
    let mut values = vec![0u8; blocks * BLOCK_BYTES as usize];
    values[..4].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    let slots = &mut values[LB_TABLE_HDR as usize * BLOCK_BYTES as usize..];
    for (slot, &id) in slots.chunks_exact_mut(2).zip(ids) {
        let id =
            u16::try_from(id).with_context(|| format!("backend id {id} does not fit a slot"))?;
        slot.copy_from_slice(&id.to_ne_bytes());
    }
    Ok(values)
}

/// A new inner map holding [size, ids...] for VIP index `index` of
/// balancer `owner` (named for both: `table_names.rs`), not yet in use.
pub(super) fn new_table(owner: u32, index: u32, ids: &[u32]) -> Result<MapHandle> {
    let values = table_elements(ids)?;
    let entries = (values.len() / BLOCK_BYTES as usize) as u32;
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: libbpf_rs::libbpf_sys::BPF_F_INNER_MAP,
        ..Default::default()
    };
    let inner = MapHandle::create(
        MapType::Array,
        Some(&table_name(owner, index)),
        4,
        BLOCK_BYTES,
        entries,
        &opts,
    )
    .with_context(|| format!("creating a {}-slot table for VIP index {index}", ids.len()))?;
    let keys: Vec<u8> = (0..entries).flat_map(u32::to_ne_bytes).collect();
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
