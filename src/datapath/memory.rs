//! The kernel memory a balancer's maps hold locked (`memlock` in
//! `/proc/self/fdinfo` of each map: what `bpftool map show` prints): every
//! map of the program, and every VIP's table, which the program reaches
//! only through `vip_tables`.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::MapHandle;

use super::codec::read;
use super::maps::Maps;
use super::table_names::tables_of;
use super::types::lb_vip;

/// Bytes held by a balancer's maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Every map, the VIP tables included.
    pub total: u64,
    /// The VIP tables alone.
    pub tables: u64,
    /// How many VIP tables.
    pub table_count: usize,
    /// How many maps in all.
    pub maps: usize,
}

/// The `memlock` line of a map's fdinfo.
fn memlock(fd: BorrowedFd) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{path} has no memlock line"))
}

impl Maps {
    pub fn locked_memory(&self) -> Result<Memory> {
        let mut m = Memory::default();
        for map in self.all() {
            m.total += memlock(map.handle().as_fd())
                .with_context(|| format!("the memory of map {}", map.name()))?;
            m.maps += 1;
        }
        for table in self.vip_table_maps()? {
            let bytes = memlock(table.as_fd())?;
            m.tables += bytes;
            m.total += bytes;
            m.table_count += 1;
            m.maps += 1;
        }
        Ok(m)
    }

    /// Each VIP's table: the one named for it (`table_names.rs`; the
    /// newest if one being replaced is still listed), else, for a table an
    /// older lbctl made, the one its slot holds.
    fn vip_table_maps(&self) -> Result<Vec<MapHandle>> {
        let mut named: BTreeMap<u32, MapHandle> =
            tables_of(self.balancer_id()?)?.into_iter().collect();
        let mut out = Vec::new();
        for (_, value) in self.vips.entries(&"VIPs")?.iter() {
            let vip: lb_vip = read(value).context("decoding a VIP")?;
            if let Some(table) = named.remove(&vip.index) {
                out.push(table);
                continue;
            }
            let what = format_args!("the table of VIP index {}", vip.index);
            if let Some(id) = self
                .vip_tables
                .get::<u32>(&vip.index.to_ne_bytes(), &what)?
            {
                out.push(
                    MapHandle::from_map_id(id)
                        .with_context(|| format!("opening a VIP table (map id {id})"))?,
                );
            }
        }
        Ok(out)
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
