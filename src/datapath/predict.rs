//! What the data path would do with a new flow now: the VIP it matches, the
//! Maglev slot its hash picks, and the backend in that slot, computed the
//! way `bpf/conntrack.h: pick_backend` does (the same hash, seed, table).

use std::net::SocketAddr;

use anyhow::Result;

use super::codec::{ip_bytes, BackendEntry, VipEntry};
use super::maps::Maps;
use crate::hash::{flow_hash, flow_key};
use crate::model::{Affinity, Service};

/// The pick for a new flow to a VIP that exists.
#[derive(Clone, Debug)]
pub struct Pick {
    pub vip: VipEntry,
    pub seed: u32,
    pub hash: u32,
    /// Slots in the VIP's table; 0: no backend of weight > 0.
    pub table_size: u32,
    pub slot: u32,
    /// The backend in that slot (None with an empty table).
    pub backend: Option<BackendEntry>,
}

/// The flow hash of a new flow from `client` to `service` and the slot it
/// picks in a table of `size` slots (`size` > 0), as `pick_backend` in
/// `bpf/conntrack.h` computes them (with `affinity`, from the client's
/// address alone).
pub fn hash_and_slot(
    service: &Service,
    affinity: Affinity,
    client: SocketAddr,
    seed: u32,
    size: u32,
) -> (u32, u32) {
    let mut src = ip_bytes(client.ip());
    let mut sport = client.port();
    if let Affinity::Client { prefix6 } = affinity {
        sport = 0;
        if client.is_ipv6() {
            keep_prefix(&mut src, prefix6);
        }
    }
    let key = flow_key(
        src,
        ip_bytes(service.addr.ip()),
        sport,
        service.addr.port(),
        service.proto.number(),
    );
    let hash = flow_hash(&key, seed);
    (hash, hash % size)
}

/// The first `bits` bits of a 16-byte address, the rest zero.
fn keep_prefix(addr: &mut [u8; 16], bits: u8) {
    for (i, byte) in addr.iter_mut().enumerate() {
        let left = (bits as usize).saturating_sub(8 * i);
        if left < 8 {
            *byte &= !(0xffu8 >> left);
        }
    }
}

impl Maps {
    /// The pick for a new flow from `client` to `service` (an address and
    /// the port the client chose): the VIP of that port, else the port-less
    /// VIP of the address that takes it, as the data path finds them; None
    /// if there is none.
    pub fn predict(&self, service: &Service, client: SocketAddr) -> Result<Option<Pick>> {
        let port_less = Service {
            addr: SocketAddr::new(service.addr.ip(), 0),
            proto: service.proto,
        };
        let vip = match self.find_vip(service)? {
            Some(vip) => vip,
            None => match self.find_vip(&port_less)? {
                Some(vip) if vip.ports.contains(service.addr.port()) => vip,
                _ => return Ok(None),
            },
        };
        let seed = self.settings()?.hash_seed;
        let table = self.table(vip.index)?;
        let table_size = table.len() as u32;
        let (hash, slot, backend) = if table.is_empty() {
            (
                hash_and_slot(service, vip.affinity, client, seed, 1).0,
                0,
                None,
            )
        } else {
            let (hash, slot) = hash_and_slot(service, vip.affinity, client, seed, table_size);
            let id = table[slot as usize];
            let backend = self.backends_of(&vip)?.into_iter().find(|b| b.id == id);
            (hash, slot, backend)
        };
        Ok(Some(Pick {
            vip,
            seed,
            hash,
            table_size,
            slot,
            backend,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_keeps_its_bits_and_clears_the_rest() {
        let a = |s: &str| ip_bytes(s.parse().unwrap());
        let cut = |s: &str, bits: u8| {
            let mut x = a(s);
            keep_prefix(&mut x, bits);
            x
        };
        let full = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff";
        assert_eq!(cut(full, 128), a(full));
        assert_eq!(cut(full, 64), a("2001:db8:aaaa:bbbb::"));
        assert_eq!(cut(full, 52), a("2001:db8:aaaa:b000::"));
        assert_eq!(cut(full, 1), a("::"));
        assert_eq!(cut("ffff::", 3), a("e000::"));
    }
}
