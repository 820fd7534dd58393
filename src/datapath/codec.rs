//! Map keys and values ⇄ what lbctl works with: endpoints and socket
//! addresses, VIP and backend rows and their decoded forms.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{bail, Result};

use super::abi::{
    LB_AF_INET, LB_AF_INET6, LB_BACKEND_CHECKED, LB_BACKEND_DOWN, LB_BACKEND_IN_USE,
    LB_BACKEND_LEAVING, LB_VIP_AFFINITY, LB_VIP_ALLOWLIST, LB_VIP_DSR, LB_VIP_FIXED_SIZE,
    LB_VIP_FULLNAT, LB_VIP_GONE_REASSIGN, LB_VIP_GONE_RESET, LB_VIP_RATE_LIMIT, LB_VIP_TUNNEL,
};
use super::types::{lb_backend, lb_endpoint, lb_vip};
use crate::model::{
    vip_name, Affinity, Health, NatMode, OnBackendGone, Ports, Proto, Service, VipSpec,
};
use crate::prefix::Prefix;

/// A VIP as configured.
#[derive(Clone, Debug)]
pub struct VipEntry {
    pub service: Service,
    pub index: u32,
    pub mode: NatMode,
    pub snat: Option<IpAddr>,
    /// Slots of the table in use.
    pub table_size: u32,
    /// The operator chose the size; else lbctl sizes it for the backends.
    pub fixed_size: bool,
    pub affinity: Affinity,
    /// Its row says it has a source allowlist (`LB_VIP_ALLOWLIST`).
    pub has_allowlist: bool,
    /// The allowlist (`allowlists.rs` reads it); empty: everyone.
    pub allow: Vec<Prefix>,
    /// Its row says it has a limit on new flows (`LB_VIP_RATE_LIMIT`).
    pub has_limit: bool,
    /// Its limit on new flows a second (read from `vip_rates` where the
    /// row has the flag).
    pub max_new_flows: Option<u32>,
    /// What becomes of the flows of a backend removed or marked down.
    pub on_backend_gone: OnBackendGone,
    /// Share of table slots the last change moved to another backend.
    pub moved: f64,
    /// Digest of the members the current table was built from.
    pub table_digest: u32,
    /// The ports it takes (a port-less VIP's are read from `vip_ports`).
    pub ports: Ports,
}

impl VipEntry {
    /// `198.18.100.1:8000-8099/tcp`.
    pub fn name(&self) -> String {
        vip_name(&self.service, self.ports)
    }
}

/// A backend row.
#[derive(Clone, Debug)]
pub struct BackendEntry {
    pub id: u32,
    pub vip_index: u32,
    /// The VIP the row says it serves: a row belongs to the VIP at
    /// `vip_index` only if that VIP is this one.
    pub vip: Service,
    pub addr: SocketAddr,
    pub proto: Proto,
    /// The operator's weight.
    pub weight: u32,
    pub health: Health,
    /// Unix time (s) of the last health change; 0: never.
    pub health_since: u32,
    /// Being removed (`LB_BACKEND_LEAVING`): in no table, not listed.
    pub leaving: bool,
}

impl BackendEntry {
    /// The weight its VIP's table is built with: 0 while it is down.
    pub fn effective_weight(&self) -> u32 {
        if self.health == Health::Down {
            0
        } else {
            self.weight
        }
    }
}

pub fn bytes_of<T: plain::Plain>(v: &T) -> &[u8] {
    // SAFETY: Plain types have no padding that is not an explicit field.
    unsafe { plain::as_bytes(v) }
}

/// A struct from the bytes the kernel returned; an error if they are short.
pub fn read<T: plain::Plain + Default>(bytes: &[u8]) -> Result<T> {
    let mut v = T::default();
    if plain::copy_from_bytes(&mut v, bytes).is_err() {
        bail!(
            "{} bytes where a {}-byte {} was expected",
            bytes.len(),
            std::mem::size_of::<T>(),
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("value")
        );
    }
    Ok(v)
}

/// An address as the 16 bytes maps hold (IPv4 in the first 4).
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

fn ip_of(bytes: &[u8; 16], family: u8) -> IpAddr {
    if u32::from(family) == LB_AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

pub fn to_endpoint(addr: SocketAddr, proto: Proto) -> lb_endpoint {
    let family = if addr.is_ipv4() {
        LB_AF_INET
    } else {
        LB_AF_INET6
    };
    lb_endpoint {
        addr: ip_bytes(addr.ip()),
        port: addr.port().to_be(),
        proto: proto.number(),
        family: family as u8,
    }
}

pub fn from_endpoint(ep: &lb_endpoint) -> Result<(SocketAddr, Proto)> {
    let addr = SocketAddr::new(ip_of(&ep.addr, ep.family), u16::from_be(ep.port));
    match Proto::from_number(ep.proto) {
        Some(proto) => Ok((addr, proto)),
        None => bail!(
            "endpoint {addr} has protocol number {}, neither TCP nor UDP",
            ep.proto
        ),
    }
}

pub fn service_endpoint(service: &Service) -> lb_endpoint {
    to_endpoint(service.addr, service.proto)
}

/// A backend's identity for Maglev: the bytes of its endpoint, so balancers
/// configured alike agree whatever ids they gave their rows.
pub fn endpoint_key(ep: &lb_endpoint) -> [u8; 20] {
    let mut key = [0u8; 20];
    key.copy_from_slice(bytes_of(ep));
    key
}

/// The row of VIP `spec` at `index` with a table of `table_size` slots.
pub fn vip_row(spec: &VipSpec, index: u32, table_size: u32) -> lb_vip {
    let mut flags = 0;
    match spec.mode {
        NatMode::Dnat => {}
        NatMode::Fullnat => flags |= LB_VIP_FULLNAT,
        NatMode::Dsr => flags |= LB_VIP_DSR,
        NatMode::Tunnel => flags |= LB_VIP_TUNNEL,
    }
    if spec.table_size.is_some() {
        flags |= LB_VIP_FIXED_SIZE;
    }
    let mut row = lb_vip {
        index,
        flags,
        snat_addr: spec.snat.map(ip_bytes).unwrap_or_default(),
        table_size,
        ..Default::default()
    };
    set_affinity(&mut row, spec.affinity);
    if !spec.allow.is_empty() {
        row.flags |= LB_VIP_ALLOWLIST;
    }
    set_on_backend_gone(&mut row, spec.on_backend_gone);
    if spec.max_new_flows.is_some() {
        row.flags |= LB_VIP_RATE_LIMIT;
    }
    row
}

/// Sets `flag` in a VIP row when `on`, else clears it; whether that changed
/// the row (a flag switched on or off in place need not be written again).
pub fn switch_flag(row: &mut lb_vip, flag: u32, on: bool) -> bool {
    let flags = if on {
        row.flags | flag
    } else {
        row.flags & !flag
    };
    std::mem::replace(&mut row.flags, flags) != flags
}

/// Writes the on-backend-gone policy into a VIP row (lbctl-only flags).
pub fn set_on_backend_gone(row: &mut lb_vip, policy: OnBackendGone) {
    row.flags &= !(LB_VIP_GONE_REASSIGN | LB_VIP_GONE_RESET);
    row.flags |= match policy {
        OnBackendGone::Keep => 0,
        OnBackendGone::Reassign => LB_VIP_GONE_REASSIGN,
        OnBackendGone::Reset => LB_VIP_GONE_RESET,
    };
}

/// Writes `affinity` into a VIP row (flag and IPv6 prefix).
pub fn set_affinity(row: &mut lb_vip, affinity: Affinity) {
    match affinity {
        Affinity::None => {
            row.flags &= !LB_VIP_AFFINITY;
            row.affinity_prefix6 = 0;
        }
        Affinity::Client { prefix6 } => {
            row.flags |= LB_VIP_AFFINITY;
            row.affinity_prefix6 = prefix6;
        }
    }
}

pub fn vip_entry(ep: &lb_endpoint, v: &lb_vip) -> Result<VipEntry> {
    let (addr, proto) = from_endpoint(ep)?;
    let mode = if v.flags & LB_VIP_FULLNAT != 0 {
        NatMode::Fullnat
    } else if v.flags & LB_VIP_DSR != 0 {
        NatMode::Dsr
    } else if v.flags & LB_VIP_TUNNEL != 0 {
        NatMode::Tunnel
    } else {
        NatMode::Dnat
    };
    Ok(VipEntry {
        service: Service { addr, proto },
        index: v.index,
        mode,
        snat: mode.has_source().then(|| ip_of(&v.snat_addr, ep.family)),
        table_size: v.table_size,
        fixed_size: v.flags & LB_VIP_FIXED_SIZE != 0,
        affinity: match v.flags & LB_VIP_AFFINITY {
            0 => Affinity::None,
            _ => Affinity::Client {
                prefix6: v.affinity_prefix6.clamp(1, 128),
            },
        },
        has_allowlist: v.flags & LB_VIP_ALLOWLIST != 0,
        allow: Vec::new(),
        has_limit: v.flags & LB_VIP_RATE_LIMIT != 0,
        max_new_flows: None,
        on_backend_gone: if v.flags & LB_VIP_GONE_RESET != 0 {
            OnBackendGone::Reset
        } else if v.flags & LB_VIP_GONE_REASSIGN != 0 {
            OnBackendGone::Reassign
        } else {
            OnBackendGone::Keep
        },
        moved: v.moved_ppm as f64 / 1e6,
        table_digest: v.table_digest,
        ports: Ports::of(addr, Ports::ALL),
    })
}

pub fn backend_row(service: &Service, vip_index: u32, addr: SocketAddr, weight: u32) -> lb_backend {
    lb_backend {
        ep: to_endpoint(addr, service.proto),
        vip: service_endpoint(service),
        vip_index,
        weight,
        flags: LB_BACKEND_IN_USE,
        health_since: 0,
    }
}

/// The row's health flags set to `health`, changed at `since`.
pub fn set_row_health(row: &mut lb_backend, health: Health, since: u32) {
    row.flags &= !(LB_BACKEND_CHECKED | LB_BACKEND_DOWN);
    row.flags |= match health {
        Health::Unchecked => 0,
        Health::Up => LB_BACKEND_CHECKED,
        Health::Down => LB_BACKEND_CHECKED | LB_BACKEND_DOWN,
    };
    row.health_since = since;
}

fn row_health(row: &lb_backend) -> Health {
    if row.flags & LB_BACKEND_CHECKED == 0 {
        Health::Unchecked
    } else if row.flags & LB_BACKEND_DOWN != 0 {
        Health::Down
    } else {
        Health::Up
    }
}

/// The row written for `b`: its endpoint, VIP, weight, health and
/// whether it is leaving.
pub fn row_of(b: &BackendEntry) -> lb_backend {
    let mut row = backend_row(&b.vip, b.vip_index, b.addr, b.weight);
    set_row_health(&mut row, b.health, b.health_since);
    if b.leaving {
        row.flags |= LB_BACKEND_LEAVING;
    }
    row
}

/// A backend row in use, decoded; None for a free row.
pub fn backend_entry(id: u32, row: &lb_backend) -> Result<Option<BackendEntry>> {
    if row.flags & LB_BACKEND_IN_USE == 0 {
        return Ok(None);
    }
    let (addr, proto) = from_endpoint(&row.ep)?;
    let (vip_addr, vip_proto) = from_endpoint(&row.vip)?;
    Ok(Some(BackendEntry {
        id,
        vip_index: row.vip_index,
        vip: Service {
            addr: vip_addr,
            proto: vip_proto,
        },
        addr,
        proto,
        weight: row.weight,
        health: row_health(row),
        health_since: row.health_since,
        leaving: row.flags & LB_BACKEND_LEAVING != 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip() {
        for (a, p) in [
            ("198.18.1.11:8080", Proto::Tcp),
            ("[2001:db8::1]:53", Proto::Udp),
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let ep = to_endpoint(addr, p);
            assert_eq!(from_endpoint(&ep).unwrap(), (addr, p));
        }
        let mut ep = to_endpoint("198.18.1.11:80".parse().unwrap(), Proto::Tcp);
        ep.proto = 1;
        assert!(from_endpoint(&ep)
            .unwrap_err()
            .to_string()
            .contains("protocol number 1"));
        assert!(read::<lb_vip>(&[0u8; 3]).is_err());
    }

    #[test]
    fn health_round_trips_through_a_row() {
        let svc = Service {
            addr: "198.18.100.1:80".parse().unwrap(),
            proto: Proto::Tcp,
        };
        let mut row = backend_row(&svc, 3, "198.18.1.11:8080".parse().unwrap(), 5);
        for h in [Health::Down, Health::Up, Health::Unchecked, Health::Down] {
            set_row_health(&mut row, h, 1234);
            let b = backend_entry(7, &row).unwrap().unwrap();
            assert_eq!((b.health, b.health_since, b.weight), (h, 1234, 5));
            assert_eq!(b.effective_weight(), if h == Health::Down { 0 } else { 5 });
            assert_eq!((b.vip, b.leaving), (svc, false));
            let mut leaving = b.clone();
            leaving.leaving = true;
            let again = backend_entry(7, &row_of(&leaving)).unwrap().unwrap();
            assert_eq!((again.health, again.leaving), (h, true));
        }
    }
}
