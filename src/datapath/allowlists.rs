//! VIPs' source allowlists in the `allowlists` LPM trie (`bpf/allow.h`):
//! one trie for every VIP, keyed by VIP index then client prefix. A list is
//! changed prefixes-first: new prefixes are added before the VIP's flag
//! turns the check on and before old ones go, so a client in both the old
//! and the new list is never turned away in between (flows already in the
//! table are not checked at all).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use libbpf_rs::MapFlags;

use super::abi::{LB_AF_INET, LB_VIP_ALLOWLIST};
use super::codec::{bytes_of, read, service_endpoint, switch_flag, VipEntry};
use super::maps::{Map, Maps};
use super::running::Running;
use super::types::lb_allow_key;
use crate::model::Service;
use crate::prefix::Prefix;

// SAFETY: plain old data: #[repr(C)], integer fields and arrays only.
unsafe impl plain::Plain for lb_allow_key {}

/// The VIP index's bits of a key's prefix length.
const INDEX_BITS: u32 = 32;

fn key_of(index: u32, p: &Prefix) -> lb_allow_key {
    let mut key = lb_allow_key {
        prefixlen: INDEX_BITS + p.bits() as u32,
        vip_index: index,
        ..Default::default()
    };
    match p.addr() {
        IpAddr::V4(a) => key.addr[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => key.addr = a.octets(),
    }
    key
}

fn prefix_of(key: &lb_allow_key, family: u8) -> Option<Prefix> {
    let len = key.prefixlen.checked_sub(INDEX_BITS)? as u8;
    let addr = if family == LB_AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(
            key.addr[0],
            key.addr[1],
            key.addr[2],
            key.addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    };
    Prefix::new(addr, len)
}

/// The trie's keys by VIP index, read once for a change of many VIPs (the
/// trie has no batch lookup: reading it is one call per key, so reading it
/// once per VIP would cost VIPs x prefixes calls). The change removes each
/// index's keys as it clears them.
#[derive(Default)]
pub(super) struct AllowKeys(Option<BTreeMap<u32, Vec<lb_allow_key>>>);

impl Maps {
    fn allowlists_map(&self) -> Result<&Map> {
        self.allowlists.as_ref().context(
            "the running lbctl program predates source allowlists: upgrade it first (lbctl attach IFACE --replace)",
        )
    }

    /// Every key in the trie, decoded, by VIP index (the trie has no batch
    /// lookup: one call per key).
    fn allow_keys(&self) -> Result<BTreeMap<u32, Vec<lb_allow_key>>> {
        let mut by_index: BTreeMap<u32, Vec<lb_allow_key>> = BTreeMap::new();
        let Some(map) = self.allowlists.as_ref() else {
            return Ok(by_index);
        };
        for k in map.keys() {
            let key: lb_allow_key = read(&k).context("decoding a key of map allowlists")?;
            by_index.entry(key.vip_index).or_default().push(key);
        }
        Ok(by_index)
    }

    /// Fills in the allowlist of every VIP whose row has the flag.
    pub(super) fn read_allowlists(&self, vips: &mut [super::codec::VipEntry]) -> Result<()> {
        if !vips.iter().any(|v| v.has_allowlist) {
            return Ok(());
        }
        let keys = self.allow_keys()?;
        for v in vips.iter_mut().filter(|v| v.has_allowlist) {
            let family = service_endpoint(&v.service).family;
            let mut list: Vec<Prefix> = keys
                .get(&v.index)
                .into_iter()
                .flatten()
                .filter_map(|k| prefix_of(k, family))
                .collect();
            list.sort();
            v.allow = list;
        }
        Ok(())
    }

    /// Writes `allow` as the list of the VIP at `index`, whose row is not
    /// yet written (a VIP being added): stale keys of that index (left by
    /// an lbctl killed while deleting a VIP there) go first.
    pub(super) fn put_allowlist(
        &self,
        index: u32,
        allow: &[Prefix],
        keys: &mut AllowKeys,
    ) -> Result<()> {
        self.clear_allowlist(index, keys)?;
        if allow.is_empty() {
            return Ok(());
        }
        let map = self.allowlists_map()?;
        for p in allow {
            map.put(
                bytes_of(&key_of(index, p)),
                &1u8,
                MapFlags::ANY,
                &format_args!("allowed prefix {p}"),
            )?;
        }
        Ok(())
    }

    /// Removes every prefix of VIP index `index` (a VIP deleted, or one
    /// about to be written there).
    pub(super) fn clear_allowlist(&self, index: u32, keys: &mut AllowKeys) -> Result<()> {
        let Some(map) = self.allowlists.as_ref() else {
            return Ok(());
        };
        if keys.0.is_none() {
            keys.0 = Some(self.allow_keys()?);
        }
        let of_index = keys.0.as_mut().and_then(|k| k.remove(&index));
        for key in of_index.unwrap_or_default() {
            map.remove(
                bytes_of(&key),
                &format_args!("a prefix of VIP index {index}"),
            )?;
        }
        Ok(())
    }

    /// Changes a VIP's allowlist (empty: everyone may begin flows): new
    /// prefixes, then the flag, then the old prefixes out. Returns whether
    /// anything changed.
    pub fn set_allowlist(
        &self,
        run: &mut Running,
        service: &Service,
        allow: &[Prefix],
    ) -> Result<bool> {
        let write = |vip: &VipEntry| {
            let map = self.allowlists_map()?;
            for p in allow.iter().filter(|p| !vip.allow.contains(p)) {
                map.put(
                    bytes_of(&key_of(vip.index, p)),
                    &1u8,
                    MapFlags::ANY,
                    &format_args!("allowed prefix {p} of VIP {service}"),
                )?;
            }
            self.edit_vip_row(service, |row| {
                Ok(switch_flag(row, LB_VIP_ALLOWLIST, !allow.is_empty()))
            })?;
            for p in vip.allow.iter().filter(|p| !allow.contains(p)) {
                map.remove(
                    bytes_of(&key_of(vip.index, p)),
                    &format_args!("prefix {p} of VIP {service}"),
                )?;
            }
            Ok(())
        };
        run.change_vip(
            service,
            |vip| vip.allow == allow,
            write,
            |v| {
                v.allow = allow.to_vec();
                v.has_allowlist = !allow.is_empty();
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for (s, family) in [
            ("198.18.0.0/24", LB_AF_INET),
            ("2001:db8::/48", super::super::abi::LB_AF_INET6),
        ] {
            let p: Prefix = s.parse().unwrap();
            let key = key_of(7, &p);
            assert_eq!(key.vip_index, 7);
            assert_eq!(prefix_of(&key, family as u8), Some(p));
        }
    }
}
