//! The data path's per-CPU counters, summed over the CPUs: packets, bytes and
//! new flows per VIP and backend, one count per verdict reason, and the flow
//! cache's hits, misses and stores.

use std::fmt::Display;

use anyhow::Result;

use super::abi::{reason_name, LB_REASON_MAX};
use super::maps::{uncount, Map, Maps};
use super::types::{
    lb_counters, lb_datapath_counters, lb_flow_cache_counters, lb_reason, lb_traffic,
};

// SAFETY: plain old data: #[repr(C)], integer fields only.
unsafe impl plain::Plain for lb_traffic {}

const _: () = assert!(std::mem::size_of::<lb_traffic>() == 16);

/// Summed per-CPU counters of a VIP or a backend: packets and bytes of
/// both directions, and of those the ones to clients (replies through the
/// balancer; zero for a running program from before they were counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub packets_to_clients: u64,
    pub bytes_to_clients: u64,
}

impl Counters {
    /// Packets and bytes to backends: the rest.
    pub fn to_backends(&self) -> (u64, u64) {
        (
            self.packets.saturating_sub(self.packets_to_clients),
            self.bytes.saturating_sub(self.bytes_to_clients),
        )
    }
}

/// Row `index` of a per-CPU map, every CPU's copy `add`ed into one sum.
fn sum_per_cpu<T: plain::Plain + Default, S: Default>(
    map: &Map,
    index: u32,
    what: &dyn Display,
    add: fn(&mut S, &T),
) -> Result<S> {
    let mut sum = S::default();
    for c in map.per_cpu::<T>(index, what)? {
        add(&mut sum, &c);
    }
    Ok(sum)
}

/// `sum.f += cpu.f` for each field `f` named: what a sum of one CPU's
/// counters adds.
macro_rules! add_fields {
    ($sum:ident, $cpu:ident: $($f:ident),+) => {{
        $($sum.$f += $cpu.$f;)+
    }};
}

/// The one row of an optional per-CPU map (None where the running program
/// predates it).
fn sum_row0<T: plain::Plain + Default, S: Default>(
    map: Option<&Map>,
    what: &dyn Display,
    add: fn(&mut S, &T),
) -> Result<Option<S>> {
    map.map(|map| sum_per_cpu(map, 0, what, add)).transpose()
}

/// Row `index` of a counters map, with its row of the matching
/// to-clients map where the program has one.
fn sum_counters(
    map: &Map,
    to_clients: Option<&Map>,
    index: u32,
    what: &dyn Display,
) -> Result<Counters> {
    let add = |sum: &mut Counters, c: &lb_counters| add_fields!(sum, c: packets, bytes, new_flows);
    let mut sum = sum_per_cpu(map, index, what, add)?;
    if let Some(map) = to_clients {
        let add = |sum: &mut Counters, t: &lb_traffic| {
            sum.packets_to_clients += t.packets;
            sum.bytes_to_clients += t.bytes;
        };
        let replies: Counters = sum_per_cpu(map, index, what, add)?;
        sum.packets_to_clients = replies.packets_to_clients;
        sum.bytes_to_clients = replies.bytes_to_clients;
    }
    Ok(sum)
}

/// Zeroes row `index` of a counters map and of its to-clients map where
/// the program has one: the rows `sum_counters` reads, for both kinds.
fn reset_counters(
    map: &Map,
    to_clients: Option<&Map>,
    index: u32,
    what: &dyn Display,
) -> Result<()> {
    map.reset_per_cpu(index, what)?;
    uncount(to_clients, index, what)
}

impl Maps {
    pub fn vip_counters(&self, index: u32) -> Result<Counters> {
        sum_counters(
            &self.vip_stats,
            self.vip_to_clients.as_ref(),
            index,
            &format_args!("counters of VIP index {index}"),
        )
    }

    pub fn backend_counters(&self, id: u32) -> Result<Counters> {
        sum_counters(
            &self.backend_stats,
            self.backend_to_clients.as_ref(),
            id,
            &format_args!("counters of backend id {id}"),
        )
    }

    /// Counters start from zero for a new VIP or backend in a reused row.
    pub(super) fn reset_vip_counters(&self, index: u32) -> Result<()> {
        let what = format_args!("counters of VIP index {index}");
        reset_counters(&self.vip_stats, self.vip_to_clients.as_ref(), index, &what)
    }

    pub(super) fn reset_backend_counters(&self, id: u32) -> Result<()> {
        let what = format_args!("counters of backend id {id}");
        reset_counters(
            &self.backend_stats,
            self.backend_to_clients.as_ref(),
            id,
            &what,
        )
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
        let add = |sum: &mut lb_flow_cache_counters, c: &lb_flow_cache_counters| add_fields!(sum, c: hits, misses, stores);
        sum_row0(self.flow_cache_stats.as_ref(), &"flow cache counters", add)
    }

    /// What the data path repaired besides its verdicts (None for a running
    /// program from before these counters).
    pub fn datapath_counters(&self) -> Result<Option<lb_datapath_counters>> {
        let add = |sum: &mut lb_datapath_counters, c: &lb_datapath_counters| add_fields!(sum, c: partial_csums, ct_full, stateless, unverified_closes);
        sum_row0(self.datapath_stats.as_ref(), &"data path counters", add)
    }
}
