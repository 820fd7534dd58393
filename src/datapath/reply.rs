//! Reply sources (`reply_sources`, `bpf/lb_abi.h`): the backend endpoints
//! whose packets may be replies of balanced flows. The data path looks a
//! packet's source up there to know it is worth a conntrack lookup, and when
//! a dnat reply's entry was lost it rebuilds the entry for the VIP of the row
//! `backend_id` names.
//!
//! The map is derived from the backend rows, never kept by counting: each
//! change, and the repair after an interrupted one, computes what an
//! endpoint's entry should be ([`wanted`]) and writes it where it differs.
//! An entry is never deleted: once an endpoint has been a backend, replies
//! of its live flows must keep being recognised (it stays with 0 users).
//!
//! An endpoint shared by backends of several VIPs is the hard case: a reply
//! whose entry was lost names the client and the backend, not the VIP the
//! client had asked for. Rebuilding it for one of the VIPs sends the reply
//! out from the wrong address, and the client's reset then kills the
//! backend's connection. So the entry names a row only where that cannot go
//! wrong: all rows serve one VIP (rebuilt for it), or one of them serves a
//! fullnat VIP (the data path drops lost fullnat replies; the client's next
//! packet rebuilds the entry through Maglev, whichever VIP it was for).
//! Otherwise it names no row (`LB_NO_BACKEND`) and the reply is not rebuilt.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::Result;
use libbpf_rs::MapFlags;

use super::abi::LB_NO_BACKEND;
use super::codec::{bytes_of, read, to_endpoint, BackendEntry, VipEntry};
use super::maps::Maps;
use super::prefilter::Set;
use super::running::Running;
use super::types::{lb_endpoint, lb_reply_source};
use crate::model::NatMode;

/// An endpoint as the map's key bytes.
pub type Key = [u8; 20];

pub fn key_of(b: &BackendEntry) -> Key {
    let mut k = [0u8; 20];
    k.copy_from_slice(bytes_of(&to_endpoint(b.addr, b.proto)));
    k
}

/// The entry an endpoint should have, given the rows using it, each with
/// the VIP it belongs to.
pub fn wanted(rows: &[(&BackendEntry, &VipEntry)]) -> lb_reply_source {
    let mut vips: Vec<u32> = rows.iter().map(|(_, v)| v.index).collect();
    vips.sort_unstable();
    vips.dedup();
    let lowest = |keep: &dyn Fn(&VipEntry) -> bool| {
        rows.iter()
            .filter(|(_, v)| keep(v))
            .map(|(b, _)| b.id)
            .min()
            .unwrap_or(LB_NO_BACKEND)
    };
    let backend_id = match vips.len() {
        0 => LB_NO_BACKEND,
        1 => lowest(&|_| true),
        _ => lowest(&|v| v.mode == NatMode::Fullnat),
    };
    lb_reply_source {
        backend_id,
        users: rows.len() as u32,
    }
}

/// Every endpoint used by a row that belongs to a VIP (leaving ones too:
/// their entries still name them), with those rows.
fn rows_by_endpoint(run: &Running) -> BTreeMap<Key, Vec<(&BackendEntry, &VipEntry)>> {
    let mut out: BTreeMap<Key, Vec<(&BackendEntry, &VipEntry)>> = BTreeMap::new();
    for b in &run.backends {
        // A dsr or tunnel backend answers from the VIP, never from its own
        // address.
        if let Some(v) = run.vip_of(b).filter(|v| !v.mode.keeps_destination()) {
            out.entry(key_of(b)).or_default().push((b, v));
        }
    }
    out
}

impl Maps {
    /// Brings the reply sources of these endpoints (None: every endpoint
    /// the map or the rows know) to what `run`'s rows say, setting each
    /// address's prefilter bit before its entry is written. Returns whether
    /// anything was written.
    pub(super) fn sync_reply_sources(&self, run: &Running, only: Option<&[Key]>) -> Result<bool> {
        let rows = rows_by_endpoint(run);
        let current: BTreeMap<Key, lb_reply_source> = match only {
            Some(keys) => {
                let mut m = BTreeMap::new();
                for k in keys {
                    let what = format_args!("a reply source");
                    if let Some(v) = self.reply_sources.get::<lb_reply_source>(k, &what)? {
                        m.insert(*k, v);
                    }
                }
                m
            }
            None => self.all_reply_sources()?,
        };
        let mut keys: Vec<Key> = match only {
            Some(keys) => keys.to_vec(),
            None => current.keys().chain(rows.keys()).copied().collect(),
        };
        keys.sort_unstable();
        keys.dedup();
        let mut changed = false;
        for k in keys {
            let want = wanted(rows.get(&k).map_or(&[][..], Vec::as_slice));
            let have = current.get(&k);
            if have.is_none() && want.users == 0 {
                continue; // never a backend: nothing to keep
            }
            if have.is_some_and(|h| (h.backend_id, h.users) == (want.backend_id, want.users)) {
                continue;
            }
            let ep: lb_endpoint = read(&k)?;
            let addr: IpAddr = super::codec::from_endpoint(&ep)?.0.ip();
            self.prefilter_mark(Set::Backends, addr)?;
            let what = format_args!("the reply source of backend {addr}");
            self.reply_sources.put(&k, &want, MapFlags::ANY, &what)?;
            changed = true;
        }
        Ok(changed)
    }

    /// Every reply source, read in batches.
    pub fn all_reply_sources(&self) -> Result<BTreeMap<Key, lb_reply_source>> {
        let mut out = BTreeMap::new();
        for (k, v) in self.reply_sources.entries(&"reply sources")?.iter() {
            let key: Key = k
                .get(..20)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("a reply source key of {} bytes", k.len()))?;
            out.insert(key, read(v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Health, Proto, Service};

    fn vip(index: u32, mode: NatMode) -> VipEntry {
        VipEntry {
            service: Service {
                addr: format!("198.18.100.{}:80", index + 1).parse().unwrap(),
                proto: Proto::Tcp,
            },
            index,
            mode,
            snat: None,
            table_size: 101,
            fixed_size: false,
            affinity: crate::model::Affinity::None,
            has_allowlist: false,
            allow: Vec::new(),
            on_backend_gone: crate::model::OnBackendGone::Keep,
            has_limit: false,
            max_new_flows: None,
            moved: 0.0,
            table_digest: 0,
            ports: crate::model::Ports::one(80),
        }
    }

    fn row(id: u32, v: &VipEntry) -> BackendEntry {
        BackendEntry {
            id,
            vip_index: v.index,
            vip: v.service,
            addr: "198.18.1.11:8080".parse().unwrap(),
            proto: Proto::Tcp,
            weight: 1,
            health: Health::Unchecked,
            health_since: 0,
            leaving: false,
        }
    }

    #[test]
    fn one_vip_names_its_row() {
        let a = vip(0, NatMode::Dnat);
        let r = row(7, &a);
        let w = wanted(&[(&r, &a)]);
        assert_eq!((w.backend_id, w.users), (7, 1));
    }

    #[test]
    fn no_rows_name_no_row_but_the_entry_stays() {
        let w = wanted(&[]);
        assert_eq!((w.backend_id, w.users), (LB_NO_BACKEND, 0));
    }

    #[test]
    fn two_dnat_vips_name_no_row_whatever_the_order() {
        let (a, b) = (vip(0, NatMode::Dnat), vip(1, NatMode::Dnat));
        let (ra, rb) = (row(3, &a), row(9, &b));
        for rows in [[(&ra, &a), (&rb, &b)], [(&rb, &b), (&ra, &a)]] {
            let w = wanted(&rows);
            assert_eq!((w.backend_id, w.users), (LB_NO_BACKEND, 2));
        }
    }

    #[test]
    fn a_fullnat_vip_among_them_is_named_so_lost_replies_are_dropped() {
        let (a, b) = (vip(0, NatMode::Dnat), vip(1, NatMode::Fullnat));
        let (ra, rb) = (row(3, &a), row(9, &b));
        let w = wanted(&[(&ra, &a), (&rb, &b)]);
        assert_eq!((w.backend_id, w.users), (9, 2));
    }
}
