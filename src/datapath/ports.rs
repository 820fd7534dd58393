//! The ports of port-less VIPs (`198.18.100.1:0`, every port;
//! `198.18.100.1:8000-8099`, a range): each in its VIP's row of
//! `vip_ports`, written before the VIP's row, which is what makes the VIP
//! live. The data path reads a row only for a VIP keyed with port 0, so a
//! VIP of one port needs none.

use anyhow::{Context, Result};
use libbpf_rs::MapFlags;

use super::codec::{bytes_of, VipEntry};
use super::maps::Maps;
use super::types::lb_vip_ports;
use crate::model::Ports;

// SAFETY: plain old data: #[repr(C)], integer fields only.
unsafe impl plain::Plain for lb_vip_ports {}

const _: () = assert!(std::mem::size_of::<lb_vip_ports>() == 4);

impl Maps {
    /// Fills in the ports of every port-less VIP.
    pub(super) fn read_ports(&self, vips: &mut [VipEntry]) -> Result<()> {
        for v in vips.iter_mut().filter(|v| v.service.addr.port() == 0) {
            let row: Option<lb_vip_ports> = match self.vip_ports.as_ref() {
                Some(map) => map.get(
                    bytes_of(&v.index),
                    &format_args!("the ports of VIP index {}", v.index),
                )?,
                None => None,
            };
            if let Some(r) = row {
                v.ports = Ports {
                    first: r.first,
                    last: r.last,
                };
            }
        }
        Ok(())
    }

    /// Writes the ports of a port-less VIP at `index`, before its row.
    pub(super) fn put_ports(&self, index: u32, addr_port: u16, ports: Ports) -> Result<()> {
        if addr_port != 0 {
            return Ok(());
        }
        let map = self.vip_ports.as_ref().context(
            "the running lbctl program predates VIPs of every port or a range: upgrade it first (lbctl attach IFACE --replace)",
        )?;
        let row = lb_vip_ports {
            first: ports.first,
            last: ports.last,
        };
        map.put(
            bytes_of(&index),
            &row,
            MapFlags::ANY,
            &format_args!("the ports of VIP index {index}"),
        )
    }
}
