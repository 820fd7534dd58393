//! The balancer's settings row (`lb_config`: hash seed, timeouts, the
//! configuration generation, the next backend id), the handshake timeouts
//! and the redirect map of attached interfaces.

use anyhow::{bail, Result};
use libbpf_rs::MapFlags;

use super::abi::{
    LB_DEFAULT_TCP_FIN_TIMEOUT_S, LB_DEFAULT_TCP_TIMEOUT_S, LB_DEFAULT_UDP_TIMEOUT_S,
    LB_UDP_UNREPLIED_TIMEOUT_S, LB_UNPROVEN_TIMEOUT_S,
};
use super::maps::{Maps, ROW0};
use super::types::{lb_config, lb_handshake};
use crate::model::Timeouts;

/// The settings of a new balancer.
pub fn initial_settings(hash_seed: u32) -> lb_config {
    lb_config {
        hash_seed,
        tcp_timeout_s: LB_DEFAULT_TCP_TIMEOUT_S,
        tcp_fin_timeout_s: LB_DEFAULT_TCP_FIN_TIMEOUT_S,
        udp_timeout_s: LB_DEFAULT_UDP_TIMEOUT_S,
        ..Default::default()
    }
}

impl Maps {
    pub fn settings(&self) -> Result<lb_config> {
        self.settings.require(&ROW0, &"the settings row")
    }

    pub fn set_settings(&self, cfg: &lb_config) -> Result<()> {
        self.settings
            .put(&ROW0, cfg, MapFlags::ANY, &"the settings row")
    }

    /// Tells the data path the configuration changed: flow cache entries
    /// decided under an older generation are no longer used, so the next
    /// packet of every flow goes through conntrack and the FIB again. Called
    /// after a change is visible to the data path (a packet reads the
    /// generation before any configuration).
    pub fn bump_generation(&self) -> Result<()> {
        let mut cfg = self.settings()?;
        cfg.generation = cfg.generation.wrapping_add(1);
        self.set_settings(&cfg)
    }

    /// Sets the timeouts given and returns all four as they now are.
    pub fn set_timeouts(&self, t: &Timeouts) -> Result<Timeouts> {
        if t.syn.is_some() || t.udp_unreplied.is_some() {
            let Some(map) = &self.handshake else {
                bail!("the running program predates the handshake and unreplied UDP timeouts: upgrade it with lbctl attach IFACE --replace");
            };
            // One row holds both: keep the one not given.
            let mut row = map
                .get::<lb_handshake>(&ROW0, &"the handshake timeout")?
                .unwrap_or_default();
            row.timeout_s = t.syn.unwrap_or(row.timeout_s);
            row.udp_unreplied_s = t.udp_unreplied.unwrap_or(row.udp_unreplied_s);
            map.put(&ROW0, &row, MapFlags::ANY, &"the handshake timeout")?;
        }
        let mut cfg = self.settings()?;
        if t.tcp.is_some() || t.tcpfin.is_some() || t.udp.is_some() {
            cfg.tcp_timeout_s = t.tcp.unwrap_or(cfg.tcp_timeout_s);
            cfg.tcp_fin_timeout_s = t.tcpfin.unwrap_or(cfg.tcp_fin_timeout_s);
            cfg.udp_timeout_s = t.udp.unwrap_or(cfg.udp_timeout_s);
            // One write: the timeouts and the generation bump together.
            cfg.generation = cfg.generation.wrapping_add(1);
            self.set_settings(&cfg)?;
        }
        Ok(Timeouts {
            tcp: Some(cfg.tcp_timeout_s),
            tcpfin: Some(cfg.tcp_fin_timeout_s),
            udp: Some(cfg.udp_timeout_s),
            syn: Some(self.handshake_timeout()?),
            udp_unreplied: Some(self.udp_unreplied_timeout()?),
        })
    }

    /// The unreplied UDP timeout in force (LB_UDP_UNREPLIED_TIMEOUT_S
    /// unless set).
    pub fn udp_unreplied_timeout(&self) -> Result<u32> {
        self.handshake_row_s(|r| r.udp_unreplied_s, LB_UDP_UNREPLIED_TIMEOUT_S)
    }

    /// The handshake timeout in force (LB_UNPROVEN_TIMEOUT_S unless set).
    pub fn handshake_timeout(&self) -> Result<u32> {
        self.handshake_row_s(|r| r.timeout_s, LB_UNPROVEN_TIMEOUT_S)
    }

    /// One field of the handshake row: `default` where the program has no
    /// such map (older) or the field is 0 (never set).
    fn handshake_row_s(&self, field: fn(&lb_handshake) -> u32, default: u32) -> Result<u32> {
        let Some(map) = &self.handshake else {
            return Ok(default);
        };
        let row = map.get::<lb_handshake>(&ROW0, &"the handshake timeout")?;
        Ok(row
            .map(|r| field(&r))
            .filter(|s| *s != 0)
            .unwrap_or(default))
    }

    /// Adds an attached interface to the redirect map.
    pub fn add_tx_port(&self, ifindex: u32) -> Result<()> {
        self.tx_ports.put(
            &ifindex.to_ne_bytes(),
            &ifindex,
            MapFlags::ANY,
            &format_args!("interface index {ifindex}"),
        )
    }

    pub fn remove_tx_port(&self, ifindex: u32) -> Result<()> {
        self.tx_ports.remove(
            &ifindex.to_ne_bytes(),
            &format_args!("interface index {ifindex}"),
        )
    }
}
