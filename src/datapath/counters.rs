//! The data path's per-CPU counters, summed over the CPUs: packets, bytes and
//! new flows per VIP and backend, one count per verdict reason, and the flow
//! cache's hits, misses and stores.

use anyhow::Result;

use super::abi::{reason_name, LB_REASON_MAX};
use super::maps::{Map, Maps};
use super::types::{lb_counters, lb_datapath_counters, lb_flow_cache_counters, lb_reason};

/// Summed per-CPU counters of a VIP or a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

fn sum_counters(map: &Map, index: u32, what: &dyn std::fmt::Display) -> Result<Counters> {
    let mut sum = Counters::default();
    for c in map.per_cpu::<lb_counters>(index, what)? {
        sum.packets += c.packets;
        sum.bytes += c.bytes;
        sum.new_flows += c.new_flows;
    }
    Ok(sum)
}

impl Maps {
    pub fn vip_counters(&self, index: u32) -> Result<Counters> {
        sum_counters(
            &self.vip_stats,
            index,
            &format_args!("counters of VIP index {index}"),
        )
    }

    pub fn backend_counters(&self, id: u32) -> Result<Counters> {
        sum_counters(
            &self.backend_stats,
            id,
            &format_args!("counters of backend id {id}"),
        )
    }

    /// Counters start from zero for a new VIP or backend in a reused row.
    pub(super) fn reset_vip_counters(&self, index: u32) -> Result<()> {
        self.vip_stats
            .reset_per_cpu(index, &format_args!("counters of VIP index {index}"))
    }

    pub(super) fn reset_backend_counters(&self, id: u32) -> Result<()> {
        self.backend_stats
            .reset_per_cpu(id, &format_args!("counters of backend id {id}"))
    }

    /// How often the data path gave one verdict reason.
    pub fn reason_count(&self, reason: lb_reason) -> Result<u64> {
        let what = format_args!("verdict counter {}", reason_name(reason));
        Ok(self.reasons.per_cpu::<u64>(reason.0, &what)?.iter().sum())
    }

    /// Every verdict reason with its printed name and count, in enum order.
    pub fn reason_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        (0..LB_REASON_MAX)
            .map(|r| {
                let reason = lb_reason(r);
                Ok((reason_name(reason), self.reason_count(reason)?))
            })
            .collect()
    }

    /// Flow cache hits, misses and stores (None for a running program from
    /// before the flow cache).
    pub fn flow_cache_counters(&self) -> Result<Option<lb_flow_cache_counters>> {
        let Some(map) = &self.flow_cache_stats else {
            return Ok(None);
        };
        let mut sum = lb_flow_cache_counters::default();
        for c in map.per_cpu::<lb_flow_cache_counters>(0, &"flow cache counters")? {
            sum.hits += c.hits;
            sum.misses += c.misses;
            sum.stores += c.stores;
        }
        Ok(Some(sum))
    }

    /// What the data path repaired besides its verdicts (None for a running
    /// program from before these counters).
    pub fn datapath_counters(&self) -> Result<Option<lb_datapath_counters>> {
        let Some(map) = &self.datapath_stats else {
            return Ok(None);
        };
        let mut sum = lb_datapath_counters::default();
        for c in map.per_cpu::<lb_datapath_counters>(0, &"data path counters")? {
            sum.partial_csums += c.partial_csums;
            sum.ct_full += c.ct_full;
            sum.stateless += c.stateless;
            sum.unverified_closes += c.unverified_closes;
        }
        Ok(Some(sum))
    }
}
