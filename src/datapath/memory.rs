//! The kernel memory a balancer's maps hold locked (`memlock` in
//! `/proc/self/fdinfo` of each map: what `bpftool map show` prints): every
//! map of the program, and every VIP's table, which the program reaches
//! only through `vip_tables`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::MapHandle;

use super::maps::{u32_of, Maps};

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
        for (_, value) in self.vip_tables.entries(&"VIP tables")? {
            let id = u32_of(&value, &"a VIP table's map id")?;
            let table = MapHandle::from_map_id(id)
                .with_context(|| format!("opening a VIP table (map id {id})"))?;
            let bytes = memlock(table.as_fd())?;
            m.tables += bytes;
            m.total += bytes;
            m.table_count += 1;
            m.maps += 1;
        }
        Ok(m)
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
