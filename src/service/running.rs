//! The running configuration as a `Desired` (`lbctl save`): interfaces and
//! settings from the balancer, VIPs and backends from its maps, health
//! checks from the record of the last apply.

use anyhow::Result;

use crate::datapath::balancer::Balancer;
use crate::host::record;
use crate::model::{Desired, DesiredVip, Timeouts, VipSpec};

pub fn running(b: &Balancer) -> Result<Desired> {
    let cfg = b.maps.settings()?;
    let run = b.maps.running()?;
    let checks = record::read(b.maps.balancer_id()?)?;
    let modes: Vec<_> = b.attachments.iter().map(|a| a.mode).collect();
    let xdp_mode = match modes.first() {
        Some(&m) if modes.iter().all(|x| *x == m) => m.xdp_mode(),
        _ => None,
    };
    let vips = run
        .vips
        .iter()
        .map(|v| {
            let mut backends: Vec<_> = run.members(v).iter().map(|m| (m.addr, m.weight)).collect();
            backends.sort();
            let recorded = checks.iter().find(|r| r.spec.service == v.service);
            DesiredVip {
                spec: VipSpec {
                    service: v.service,
                    mode: v.mode,
                    snat: v.snat,
                    table_size: v.fixed_size.then_some(v.table_size),
                    affinity: v.affinity,
                    allow: v.allow.clone(),
                    on_backend_gone: v.on_backend_gone,
                    max_new_flows: v.max_new_flows,
                    ports: v.ports,
                },
                table_in_use: (!v.fixed_size).then_some(v.table_size),
                health: recorded.and_then(|r| r.health.clone()),
                backend_health: recorded
                    .map(|r| {
                        r.backend_health
                            .iter()
                            .filter(|(a, _)| backends.iter().any(|(b, _)| b == a))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
                backends,
            }
        })
        .collect();
    let mut interfaces: Vec<String> = b.attachments.iter().map(|a| a.ifname.clone()).collect();
    interfaces.sort();
    Ok(Desired {
        interfaces,
        xdp_mode,
        hash_seed: Some(cfg.hash_seed),
        flow_cache_size: b.maps.flow_cache_size(),
        timeouts: Timeouts {
            tcp: Some(cfg.tcp_timeout_s),
            tcpfin: Some(cfg.tcp_fin_timeout_s),
            udp: Some(cfg.udp_timeout_s),
            // Only where the running program has the setting: a file saved
            // from an older one must apply to it again.
            syn: match b.maps.handshake {
                Some(_) => Some(b.maps.handshake_timeout()?),
                None => None,
            },
            udp_unreplied: match b.maps.handshake {
                Some(_) => Some(b.maps.udp_unreplied_timeout()?),
                None => None,
            },
        },
        vips,
    })
}
