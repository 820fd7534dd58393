//! Finding a balancer's Maglev tables without reading `vip_tables`.
//!
//! On Linux 6.1 to 6.7 every user-space read of an array-of-maps slot waits
//! for an RCU grace period (`maybe_wait_bpf_programs`, removed in 6.8), so a
//! scan of all 1,024 slots held one `vip add` for 51 s in a 6.1 guest. A
//! table is an inner map named for its balancer and VIP index instead, and
//! the kernel's list of maps (`BPF_MAP_GET_NEXT_ID`, no grace period) says
//! which tables exist. A name is a hint, never the truth: a slot read (one
//! grace period) confirms a table before anything is done to it. Tables an
//! lbctl before this naming made are called `lb_table` and are not found;
//! `attach --replace` builds every table anew under its name.

use std::io;

use anyhow::{Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapHandle};

use super::abi::LB_MAX_VIPS;

// The name (15 characters at most) holds the index in three hex digits.
const _: () = assert!(LB_MAX_VIPS <= 0x1000);

/// The name of the table of VIP index `index` in the balancer whose id
/// (`Maps::balancer_id`) is `owner`: 15 characters, the kernel's limit.
pub fn table_name(owner: u32, index: u32) -> String {
    format!("lbt{owner:08x}_{index:03x}")
}

/// The VIP index a table's name gives, if `owner`'s table.
fn index_of(name: &str, owner: u32) -> Option<u32> {
    let hex = name.strip_prefix(&format!("lbt{owner:08x}_"))?;
    (hex.len() == 3)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Every map named as a table of `owner`, with its VIP index, in the order
/// of map ids (oldest first). A table being replaced may still be listed
/// beside its successor for as long as something holds it.
pub fn tables_of(owner: u32) -> Result<Vec<(u32, MapHandle)>> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut next = 0u32;
        // SAFETY: `next` is a valid u32 for the call to write.
        let rc = unsafe { libbpf_sys::bpf_map_get_next_id(id, &mut next) };
        if rc != 0 {
            let err = io::Error::from_raw_os_error(-rc);
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(out);
            }
            return Err(err).context("listing the kernel's BPF maps");
        }
        id = next;
        // A map freed since it was listed is passed over.
        let Ok(map) = MapHandle::from_map_id(id) else {
            continue;
        };
        if let Some(index) = map.name().to_str().and_then(|n| index_of(n, owner)) {
            out.push((index, map));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_gives_back_its_owner_and_index_only() {
        for (owner, index) in [(0, 0), (1, 1023), (0xffff_ffff, 0x3ff), (4711, 17)] {
            let name = table_name(owner, index);
            assert!(name.len() <= 15, "{name}");
            assert_eq!(index_of(&name, owner), Some(index), "{name}");
            assert_eq!(index_of(&name, owner.wrapping_add(1)), None, "{name}");
        }
        assert_eq!(index_of("lb_table", 0), None);
        assert_eq!(index_of("lbt00000001_01", 1), None);
        assert_eq!(index_of("lbt00000001_0g1", 1), None);
    }
}
