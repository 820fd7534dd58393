//! The maps of a balancer, listed once (`balancer_maps!`), and access to
//! them whose errors say which map and what was being done. Every other
//! module reaches the maps through `Maps`.

use std::ffi::OsStr;
use std::fmt::Display;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::libbpf_sys::{self, bpf_prog_info};
use libbpf_rs::skel::Skel;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::codec::{bytes_of, read};
use super::skel::LbSkel;
use crate::host::iface::prog_info;

/// One map of the program, with its name for error messages.
pub struct Map {
    name: &'static str,
    handle: MapHandle,
}

impl Map {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn handle(&self) -> &MapHandle {
        &self.handle
    }

    pub fn max_entries(&self) -> u32 {
        self.handle.max_entries()
    }

    /// The value under `key`, decoded; None if there is none.
    pub fn get<T: plain::Plain + Default>(
        &self,
        key: &[u8],
        what: &dyn Display,
    ) -> Result<Option<T>> {
        let value = self
            .handle
            .lookup(key, MapFlags::ANY)
            .with_context(|| format!("reading {what} from map {}", self.name))?;
        value
            .map(|v| read(&v).with_context(|| format!("decoding {what} from map {}", self.name)))
            .transpose()
    }

    /// Like `get`, but the value must exist.
    pub fn require<T: plain::Plain + Default>(&self, key: &[u8], what: &dyn Display) -> Result<T> {
        self.get(key, what)?
            .with_context(|| format!("map {} has no {what}", self.name))
    }

    pub fn put<T: plain::Plain>(
        &self,
        key: &[u8],
        value: &T,
        flags: MapFlags,
        what: &dyn Display,
    ) -> Result<()> {
        self.put_bytes(key, bytes_of(value), flags, what)
    }

    pub fn put_bytes(
        &self,
        key: &[u8],
        value: &[u8],
        flags: MapFlags,
        what: &dyn Display,
    ) -> Result<()> {
        self.handle
            .update(key, value, flags)
            .with_context(|| format!("writing {what} to map {}", self.name))
    }

    /// Deletes `key`; a key that is already gone is not an error.
    pub fn remove(&self, key: &[u8], what: &dyn Display) -> Result<()> {
        match self.handle.delete(key) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            r => r.with_context(|| format!("deleting {what} from map {}", self.name)),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.handle.keys()
    }

    /// Every (key, value) pair, read with as few bpf() calls as the kernel
    /// allows (one for an array) into two flat buffers: a command reads the
    /// 65,536 backend rows each time, and one buffer instead of a Vec per
    /// row made that 2-3 times cheaper. An error is an error, not the end.
    pub fn entries(&self, what: &dyn Display) -> Result<Entries> {
        entries_of(&self.handle).with_context(|| format!("reading {what} from map {}", self.name))
    }

    /// One value per CPU of a per-CPU array row.
    pub fn per_cpu<T: plain::Plain + Default>(
        &self,
        index: u32,
        what: &dyn Display,
    ) -> Result<Vec<T>> {
        let cpus = self
            .handle
            .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("reading {what} from map {}", self.name))?;
        cpus.unwrap_or_default()
            .iter()
            .map(|v| read(v).with_context(|| format!("decoding {what} from map {}", self.name)))
            .collect()
    }

    /// A per-CPU u64 counter row summed over the CPUs.
    pub fn sum_per_cpu(&self, index: u32, what: &dyn Display) -> Result<u64> {
        Ok(self.per_cpu::<u64>(index, what)?.iter().sum())
    }

    /// Zeroes a per-CPU array row on every CPU.
    pub fn reset_per_cpu(&self, index: u32, what: &dyn Display) -> Result<()> {
        let cpus = libbpf_rs::num_possible_cpus().context("counting CPUs")?;
        let zero = vec![vec![0u8; self.handle.value_size() as usize]; cpus];
        self.handle
            .update_percpu(&index.to_ne_bytes(), &zero, MapFlags::ANY)
            .with_context(|| format!("resetting {what} in map {}", self.name))
    }
}

/// `Map::entries` of any map handle (inner maps too).
pub fn entries_of(handle: &MapHandle) -> Result<Entries> {
    let key_size = handle.key_size() as usize;
    let value_size = handle.value_size() as usize;
    let max = handle.max_entries() as usize;
    let mut keys = vec![0u8; key_size * max];
    let mut values = vec![0u8; value_size * max];
    // The kernel's batch cursor: a key for arrays, a bucket for hashes.
    let mut cursor = vec![0u8; key_size.max(8)];
    let mut next = vec![0u8; key_size.max(8)];
    let mut read = 0usize;
    let mut first = true;
    while read < max {
        let mut count = (max - read) as u32;
        let opts = libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        // SAFETY: the buffers hold `count` more keys and values from
        // `read` on, and the cursors are key_size.max(8) bytes long.
        let ret = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                handle.as_fd().as_raw_fd(),
                if first {
                    std::ptr::null_mut()
                } else {
                    cursor.as_mut_ptr().cast()
                },
                next.as_mut_ptr().cast(),
                keys[read * key_size..].as_mut_ptr().cast(),
                values[read * value_size..].as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        let errno = if ret < 0 { -ret } else { 0 };
        if errno == libc::EINTR {
            continue;
        }
        if errno != 0 && errno != libc::ENOENT {
            return Err(std::io::Error::from_raw_os_error(errno).into());
        }
        read += count as usize;
        // ENOENT: no more entries after these `count`.
        if errno == libc::ENOENT || count == 0 {
            break;
        }
        std::mem::swap(&mut cursor, &mut next);
        first = false;
    }
    keys.truncate(read * key_size);
    values.truncate(read * value_size);
    Ok(Entries {
        key_size,
        value_size,
        keys,
        values,
    })
}

/// A map's entries as `Map::entries` read them.
pub struct Entries {
    key_size: usize,
    value_size: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Entries {
    /// Each (key, value), in the map's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.keys
            .chunks_exact(self.key_size)
            .zip(self.values.chunks_exact(self.value_size))
    }
}

/// Declares `Maps` from the one list of the program's maps (`bpf/maps.h`):
/// its fields, how they are found by name, and the list to iterate. Adding a
/// map to the program means adding its name here, nowhere else.
macro_rules! balancer_maps {
    (
        required: [$($(#[$rdoc:meta])* $required:ident),* $(,)?],
        optional: [$($(#[$odoc:meta])* $optional:ident),* $(,)?] $(,)?
    ) => {
        /// Handles on every map of a balancer.
        pub struct Maps {
            $($(#[$rdoc])* pub $required: Map,)*
            $($(#[$odoc])* pub $optional: Option<Map>,)*
        }

        impl Maps {
            /// Builds `Maps` from a source of handles by map name.
            fn from_named(mut take: impl FnMut(&'static str) -> Option<MapHandle>) -> Result<Maps> {
                Ok(Maps {
                    $($required: Map {
                        name: stringify!($required),
                        handle: take(stringify!($required)).with_context(|| {
                            format!("the lbctl program has no map {:?}: was it built by another lbctl version?", stringify!($required))
                        })?,
                    },)*
                    $($optional: take(stringify!($optional)).map(|handle| Map {
                        name: stringify!($optional),
                        handle,
                    }),)*
                })
            }

            /// Every map present.
            pub fn all(&self) -> Vec<&Map> {
                let mut all = vec![$(&self.$required),*];
                $(all.extend(self.$optional.as_ref());)*
                all
            }
        }
    };
}

balancer_maps! {
    required: [
        /// VIP endpoint → `lb_vip`.
        vips,
        /// Backend id → `lb_backend`.
        backends,
        /// Backend endpoint → `lb_reply_source`.
        reply_sources,
        /// The address prefilter bitmaps.
        addr_filter,
        /// VIP index → its Maglev table (an inner map).
        vip_tables,
        /// Row 0: `lb_config`.
        settings,
        /// Per-CPU `lb_counters` per VIP index.
        vip_stats,
        /// Per-CPU `lb_counters` per backend id.
        backend_stats,
        /// Per-CPU count per `enum lb_reason`.
        reasons,
        /// Attached interfaces, for redirects between them.
        tx_ports,
    ],
    optional: [
        /// The flow cache's counters; None for a running program from
        /// before the flow cache (until `attach --replace` upgrades it).
        flow_cache_stats,
        /// The flow cache itself; None as above.
        flow_cache,
        /// What the data path repaired (`lb_datapath_counters`); None for a
        /// running program from before it.
        datapath_stats,
        /// Row 0: `lb_handshake`, the handshake timeout; None for a running
        /// program from before it (its handshake timeout is fixed).
        handshake,
        /// Flood mode's record of which VIP a flow sent without an entry
        /// to a shared backend was for; None for a running program from
        /// before it.
        flood_replies,
        /// VIP index and client prefix → allowed (`allow.h`); None for a
        /// running program from before allowlists.
        allowlists,
        /// Per-CPU count per VIP index of new flows its allowlist turned
        /// away; None as above.
        vip_denied,
        /// VIP index → `lb_vip_rate`, its limit on new flows and their
        /// count (`limit.h`); None for a running program from before limits.
        vip_rates,
        /// Per-CPU count per VIP index of new flows its limit turned away;
        /// None as above.
        vip_limited,
        /// VIP index → `lb_vip_ports`, the ports a port-less VIP takes;
        /// None for a running program from before port-less VIPs.
        vip_ports,
        /// Per-CPU packets and bytes to clients per VIP index and per
        /// backend id (`lb_traffic`); None for a running program from
        /// before they were counted by direction.
        vip_to_clients,
        backend_to_clients,
    ],
}

/// Maps a new program never takes over from a running one: the flow cache
/// and flood mode's records start empty, so no decision of the old program outlives it; the VIP
/// tables are built anew from the VIP and backend rows before the new
/// program runs (`Maps::build_all_tables`), in the new program's format and
/// at the size the configuration calls for, whatever the old program had.
const NOT_REUSED: &[&str] = &["flow_cache", "flood_replies", "vip_tables"];

impl Maps {
    /// The maps of a freshly loaded skeleton.
    pub fn from_skel(skel: &LbSkel) -> Result<Maps> {
        let mut handles: Vec<(String, MapHandle)> = Vec::new();
        for map in skel.object().maps() {
            let name = map.name().to_string_lossy().into_owned();
            let handle = MapHandle::try_from(&map)
                .with_context(|| format!("duplicating the handle of map {name}"))?;
            handles.push((name, handle));
        }
        Maps::from_named(|name| take(&mut handles, name))
    }

    /// The maps a loaded lbctl program uses, found by their names.
    pub fn from_prog(prog: BorrowedFd) -> Result<Maps> {
        let mut handles: Vec<(String, MapHandle)> = Vec::new();
        for id in prog_map_ids(prog)? {
            let map = MapHandle::from_map_id(id).with_context(|| format!("opening map id {id}"))?;
            handles.push((map.name().to_string_lossy().into_owned(), map));
        }
        Maps::from_named(|name| take(&mut handles, name))
    }

    /// The map a new program of this balancer should share, by name: every
    /// map but those in NOT_REUSED.
    pub fn to_reuse(&self, name: &OsStr) -> Option<&Map> {
        self.all()
            .into_iter()
            .find(|m| OsStr::new(m.name) == name && !NOT_REUSED.contains(&m.name))
    }

    /// An id for this balancer as long as it runs: the id of its settings
    /// map, which an upgrade in place keeps and no other map has while it
    /// exists.
    pub fn balancer_id(&self) -> Result<u32> {
        Ok(self
            .settings
            .handle
            .info()
            .context("reading the settings map's info")?
            .info
            .id)
    }

    /// Entries the flow cache holds, if the program has one.
    pub fn flow_cache_size(&self) -> Option<u32> {
        self.flow_cache.as_ref().map(Map::max_entries)
    }
}

/// The handle named `name` (the kernel keeps the first 15 bytes of a map's
/// name), taken out of the list.
fn take(handles: &mut Vec<(String, MapHandle)>, name: &str) -> Option<MapHandle> {
    let kernel_name = &name[..name.len().min(15)];
    let i = handles
        .iter()
        .position(|(n, _)| n == name || n == kernel_name)?;
    Some(handles.swap_remove(i).1)
}

/// Ids of the maps a program uses (asked twice: once for the count, once
/// for the ids).
fn prog_map_ids(prog: BorrowedFd) -> Result<Vec<u32>> {
    let mut info = bpf_prog_info::default();
    prog_info(prog, &mut info).context("reading program info")?;
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    let mut info = bpf_prog_info {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    // The kernel writes at most nr_map_ids ids into `ids`, which outlives the call.
    prog_info(prog, &mut info).context("reading program map ids")?;
    ids.truncate(info.nr_map_ids as usize);
    Ok(ids)
}

/// The u32 a 4-byte key or value holds (array indexes, map ids, slots).
pub fn u32_of(bytes: &[u8], what: &dyn Display) -> Result<u32> {
    let b: [u8; 4] = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{what}: {} bytes where a u32 was expected", bytes.len()))?;
    Ok(u32::from_ne_bytes(b))
}

/// A row 0 key of a one-row array, as maps take it.
pub const ROW0: [u8; 4] = 0u32.to_ne_bytes();

/// Why the data path turned a VIP's new flow away: each reason has a
/// per-CPU count per VIP index, read and zeroed the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnedAway {
    /// Its source allowlist (`vip_denied`).
    Denied,
    /// Its limit on new flows a second (`vip_limited`).
    Limited,
}

impl Maps {
    /// New flows VIP index `index`'s allowlist or limit turned away (0
    /// where the program has no such counter).
    pub fn turned_away(&self, why: TurnedAway, index: u32) -> Result<u64> {
        let (map, name) = self.turned_away_map(why);
        counted(
            map,
            index,
            &format_args!("the {name} count of VIP index {index}"),
        )
    }

    /// Zeroes VIP index `index`'s count of `why` (a VIP added there).
    pub(super) fn reset_turned_away(&self, why: TurnedAway, index: u32) -> Result<()> {
        let (map, name) = self.turned_away_map(why);
        uncount(
            map,
            index,
            &format_args!("the {name} count of VIP index {index}"),
        )
    }

    fn turned_away_map(&self, why: TurnedAway) -> (Option<&Map>, &'static str) {
        match why {
            TurnedAway::Denied => (self.vip_denied.as_ref(), "denied"),
            TurnedAway::Limited => (self.vip_limited.as_ref(), "limited"),
        }
    }
}

/// Row `index` of an optional per-CPU counter map, summed (0 where the
/// running program has no such map).
pub fn counted(map: Option<&Map>, index: u32, what: &dyn Display) -> Result<u64> {
    map.map_or(Ok(0), |m| m.sum_per_cpu(index, what))
}

/// Zeroes row `index` of an optional per-CPU counter map (a VIP added there).
pub fn uncount(map: Option<&Map>, index: u32, what: &dyn Display) -> Result<()> {
    map.map_or(Ok(()), |m| m.reset_per_cpu(index, what))
}
