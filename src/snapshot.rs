//! A balancer at one moment, as `lbctl list`, `lbctl save` and the
//! service's `/metrics` all show it: VIPs and backends with their health,
//! counters and open flows, the verdict counters and the flow cache's. One
//! collection, several renderings, so they cannot disagree.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use crate::datapath::codec::{BackendEntry, VipEntry};
use crate::datapath::counters::Counters;
use crate::datapath::maps::{Maps, TurnedAway};
use crate::host::census::Census;

/// One backend and what the maps and conntrack say of it.
#[derive(Clone, Debug)]
pub struct BackendView {
    pub entry: BackendEntry,
    pub stats: Counters,
    /// lbctl's entries in conntrack for it that saw no FIN or RST (None
    /// when not asked for).
    pub active_flows: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct VipView {
    pub vip: VipEntry,
    pub stats: Counters,
    /// New flows its source allowlist turned away.
    pub denied: u64,
    /// New flows its limit on new flows turned away.
    pub limited: u64,
    /// Entries of its gone backends' flows lbctl removed
    /// (`--on-backend-gone`; `host::expired`).
    pub expired: u64,
    /// Sorted by address.
    pub backends: Vec<BackendView>,
}

/// Flow cache counters (None for a program from before the flow cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub stores: u64,
}

/// What the data path repaired besides its verdicts (None for a program
/// from before these counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DatapathStats {
    /// TCP/UDP checksums that arrived partial (TX checksum offload) and
    /// were completed.
    pub partial_csums: u64,
    /// Conntrack entries that could not be made: the table was full.
    pub ct_full: u64,
    /// dnat packets forwarded without an entry (flood mode).
    pub stateless: u64,
    /// TCP FINs and RSTs whose sequence number was not the one the
    /// sender's peer expects (blind): forwarded, the flow's timeout kept.
    pub unverified_closes: u64,
}

/// Where a snapshot's open flows per backend come from.
#[derive(Clone, Debug)]
pub enum ActiveFlows {
    /// Not asked for.
    Skip,
    /// Counted now: a dump of the whole table (seconds for a million
    /// entries).
    CountNow,
    /// A census `lbctl run` took (`host::census`).
    From(Arc<Census>),
}

impl ActiveFlows {
    /// For `list --stats` of balancer `id`: `lbctl run`'s census while it
    /// is fresh, else a count now.
    pub fn for_listing(id: u32) -> Result<ActiveFlows> {
        Ok(match Census::load(id)? {
            Some(c) if c.fresh() => ActiveFlows::From(Arc::new(c)),
            _ => ActiveFlows::CountNow,
        })
    }
}

/// When the open flows of a snapshot were counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowsCounted {
    /// When the count began.
    pub at: SystemTime,
    /// How long it took.
    pub took: Duration,
    /// Whether it is `lbctl run`'s census (else counted for this snapshot).
    pub by_census: bool,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// By VIP index.
    pub vips: Vec<VipView>,
    /// Every verdict reason by its printed name, in enum order.
    pub verdicts: Vec<(&'static str, u64)>,
    pub flow_cache: Option<FlowCacheStats>,
    pub datapath: Option<DatapathStats>,
    /// None when open flows were not asked for.
    pub flows_counted: Option<FlowsCounted>,
}

impl Snapshot {
    /// Reads the maps, and the open flows per backend from `active_flows`.
    pub fn read(maps: &Maps, active_flows: &ActiveFlows) -> Result<Snapshot> {
        let run = maps.running()?;
        let counted_now;
        let census = match active_flows {
            ActiveFlows::Skip => None,
            ActiveFlows::CountNow => {
                counted_now = Census::take(&run.vip_ports())?;
                Some((&counted_now, false))
            }
            ActiveFlows::From(c) => Some((c.as_ref(), true)),
        };
        let flows_counted = census.map(|(c, by_census)| FlowsCounted {
            at: c.taken,
            took: c.took,
            by_census,
        });
        let flows = census.map(|(c, _)| &c.flows);
        let expired = crate::host::expired::read(maps.balancer_id()?)?;
        let mut vips = Vec::new();
        for vip in run.vips.iter() {
            let mut backends = Vec::new();
            for entry in run.members(vip) {
                backends.push(BackendView {
                    stats: maps.backend_counters(entry.id)?,
                    active_flows: flows
                        .as_ref()
                        .map(|f| f.get(&(vip.service, entry.addr)).copied().unwrap_or(0)),
                    entry,
                });
            }
            backends.sort_by_key(|b| b.entry.addr);
            vips.push(VipView {
                stats: maps.vip_counters(vip.index)?,
                denied: maps.turned_away(TurnedAway::Denied, vip.index)?,
                limited: maps.turned_away(TurnedAway::Limited, vip.index)?,
                expired: crate::host::expired::of(&expired, &vip.service),
                vip: vip.clone(),
                backends,
            });
        }
        let flow_cache = maps.flow_cache_counters()?.map(|c| FlowCacheStats {
            hits: c.hits,
            misses: c.misses,
            stores: c.stores,
        });
        let datapath = maps.datapath_counters()?.map(|c| DatapathStats {
            partial_csums: c.partial_csums,
            ct_full: c.ct_full,
            stateless: c.stateless,
            unverified_closes: c.unverified_closes,
        });
        Ok(Snapshot {
            vips,
            verdicts: maps.reason_counts()?,
            flow_cache,
            datapath,
            flows_counted,
        })
    }
}
