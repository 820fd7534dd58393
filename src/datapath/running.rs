//! The VIPs and backend rows as the maps hold them: read one by one, or
//! all at once (`Running`), which a change of many VIPs keeps up to date
//! with what it writes.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};

use super::codec::{
    backend_entry, bytes_of, read, service_endpoint, vip_entry, BackendEntry, VipEntry,
};
use super::maps::{u32_of, Maps};
use super::types::{lb_backend, lb_endpoint, lb_vip};
use crate::model::{Ports, Service};

impl Maps {
    /// Every VIP, by index.
    pub fn vips(&self) -> Result<Vec<VipEntry>> {
        let mut out = Vec::new();
        for (key, value) in self.vips.entries(&"VIPs")?.iter() {
            let ep: lb_endpoint = read(key).context("decoding a key of map vips")?;
            let v: lb_vip = read(value).context("decoding a VIP")?;
            out.push(vip_entry(&ep, &v)?);
        }
        out.sort_by_key(|v| v.index);
        self.read_allowlists(&mut out)?;
        self.read_limits(&mut out)?;
        self.read_ports(&mut out)?;
        Ok(out)
    }

    /// Whether any VIP is IPv6 (then IPv6 forwarding matters).
    pub fn has_ipv6_vips(&self) -> Result<bool> {
        Ok(self.vips()?.iter().any(|v| v.service.addr.is_ipv6()))
    }

    pub fn find_vip(&self, service: &Service) -> Result<Option<VipEntry>> {
        let ep = service_endpoint(service);
        let Some(v) = self
            .vips
            .get::<lb_vip>(bytes_of(&ep), &format_args!("VIP {service}"))?
        else {
            return Ok(None);
        };
        let mut one = [vip_entry(&ep, &v)?];
        self.read_allowlists(&mut one)?;
        self.read_limits(&mut one)?;
        self.read_ports(&mut one)?;
        let [vip] = one;
        Ok(Some(vip))
    }

    pub fn require_vip(&self, service: &Service) -> Result<VipEntry> {
        self.find_vip(service)?
            .with_context(|| format!("VIP {service} does not exist (see `lbctl list`)"))
    }

    /// Every backend row in use (those of no VIP and leaving ones too).
    pub fn backends(&self) -> Result<Vec<BackendEntry>> {
        let mut out = Vec::new();
        for (key, value) in self.backends.entries(&"backend rows")?.iter() {
            let id = u32_of(key, &"a backend id")?;
            let row: lb_backend =
                read(value).with_context(|| format!("decoding backend row {id}"))?;
            out.extend(backend_entry(id, &row)?);
        }
        Ok(out)
    }

    /// The backends of one VIP (not those being removed).
    pub fn backends_of(&self, vip: &VipEntry) -> Result<Vec<BackendEntry>> {
        Ok(members_of(&self.backends()?, vip))
    }

    /// Every VIP and backend, read once.
    pub fn running(&self) -> Result<Running> {
        Ok(Running {
            vips: self.vips()?,
            backends: self.backends()?,
        })
    }

    /// The addresses of every backend (for the neighbour entries they need).
    pub fn backend_addrs(&self) -> Result<Vec<IpAddr>> {
        Ok(self.backends()?.iter().map(|b| b.addr.ip()).collect())
    }
}

/// Every VIP and backend row as the maps hold them, read once so a change
/// of many VIPs (`lbctl apply`) need not read 65,536 rows per VIP. The
/// methods that take it keep it up to date with what they write.
#[derive(Clone, Debug, Default)]
pub struct Running {
    pub vips: Vec<VipEntry>,
    pub backends: Vec<BackendEntry>,
}

impl Running {
    pub fn vip(&self, service: &Service) -> Option<&VipEntry> {
        self.vips.iter().find(|v| v.service == *service)
    }

    /// One setting of VIP `service` changed, the frame of each `set_*`:
    /// Ok(false) where `unchanged` says it already is so; else `write`
    /// puts it in the maps, `keep` records it in the VIP's entry here, and
    /// Ok(true).
    pub fn change_vip(
        &mut self,
        service: &Service,
        unchanged: impl FnOnce(&VipEntry) -> bool,
        write: impl FnOnce(&VipEntry) -> Result<()>,
        keep: impl FnOnce(&mut VipEntry),
    ) -> Result<bool> {
        let vip = self.require_vip(service)?;
        if unchanged(&vip) {
            return Ok(false);
        }
        write(&vip)?;
        if let Some(v) = self.vips.iter_mut().find(|v| v.service == *service) {
            keep(v);
        }
        Ok(true)
    }

    /// Every VIP with the ports it takes (`conntrack::as_configured`).
    pub fn vip_ports(&self) -> Vec<(Service, Ports)> {
        self.vips.iter().map(|v| (v.service, v.ports)).collect()
    }

    pub fn require_vip(&self, service: &Service) -> Result<VipEntry> {
        self.vip(service)
            .cloned()
            .with_context(|| format!("VIP {service} does not exist (see `lbctl list`)"))
    }

    /// The backends of one VIP (not those being removed).
    pub fn members(&self, vip: &VipEntry) -> Vec<BackendEntry> {
        members_of(&self.backends, vip)
    }

    /// Every row of one VIP, leaving ones too.
    pub fn rows_of(&self, vip: &VipEntry) -> Vec<BackendEntry> {
        self.backends
            .iter()
            .filter(|b| belongs(b, vip))
            .cloned()
            .collect()
    }

    /// The VIP a row belongs to; None for a row of no VIP (left by a VIP
    /// deleted, or added, halfway).
    pub fn vip_of(&self, b: &BackendEntry) -> Option<&VipEntry> {
        self.vips.iter().find(|v| belongs(b, v))
    }

    pub(super) fn member_mut(
        &mut self,
        vip: &VipEntry,
        addr: SocketAddr,
    ) -> Option<&mut BackendEntry> {
        self.backends
            .iter_mut()
            .find(|b| belongs(b, vip) && !b.leaving && b.addr == addr)
    }

    /// The VIP's backends as (address, weight), if `addr` is among them.
    pub(super) fn wanted_with(
        &self,
        service: &Service,
        addr: SocketAddr,
    ) -> Result<Vec<(SocketAddr, u32)>> {
        let vip = self.require_vip(service)?;
        let members = self.members(&vip);
        if !members.iter().any(|b| b.addr == addr) {
            bail!("backend {addr} is not in VIP {service}");
        }
        Ok(members.iter().map(|b| (b.addr, b.weight)).collect())
    }
}

/// Whether a row belongs to this VIP: its index and the VIP it names
/// (a row left by a VIP deleted halfway names another VIP than the one
/// that later took its index).
fn belongs(b: &BackendEntry, vip: &VipEntry) -> bool {
    b.vip_index == vip.index && b.vip == vip.service
}

/// The backends of one VIP (not those being removed).
fn members_of(all: &[BackendEntry], vip: &VipEntry) -> Vec<BackendEntry> {
    all.iter()
        .filter(|b| belongs(b, vip) && !b.leaving)
        .cloned()
        .collect()
}
