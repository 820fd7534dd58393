//! `lbctl list`: VIPs and backends with their health, optionally with
//! counters and open flows (`--stats`) or rates over an interval (`--rate`,
//! ipvsadm's CPS/PPS/BPS columns), as a table (ipvsadm -L -n style) or JSON
//! (docs/JSON.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

use super::open_for_reading;
use crate::datapath::counters::Counters;
use crate::datapath::repair;
use crate::host::census;
use crate::host::{drain, routes};
use crate::model::{Affinity, Health, ListOptions, NatMode, Proto, VipAddr};
use crate::prefix;
use crate::snapshot::{
    ActiveFlows, BackendView, DatapathStats, FlowCacheStats, FlowsCounted, Snapshot,
};

/// Packets, bytes and new flows per second over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rate {
    /// New flows ("connections") per second.
    pub cps: f64,
    /// Packets per second, both directions.
    pub pps: f64,
    /// Bytes per second, both directions.
    pub bps: f64,
}

impl Rate {
    fn between(before: &Counters, after: &Counters, secs: f64) -> Rate {
        let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        Rate {
            cps: per_s(after.new_flows, before.new_flows),
            pps: per_s(after.packets, before.packets),
            bps: per_s(after.bytes, before.bytes),
        }
    }
}

#[derive(Serialize)]
struct StatsJson {
    packets: u64,
    bytes: u64,
    new_flows: u64,
    /// Of `packets` and `bytes`, those to backends and those to clients.
    to_backends: TrafficJson,
    to_clients: TrafficJson,
    /// lbctl's conntrack entries for the backend without FIN or RST (--stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    active_flows: Option<u64>,
}

#[derive(Serialize)]
struct TrafficJson {
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct BackendJson {
    address: SocketAddr,
    weight: u32,
    health: Health,
    /// Unix time of the last health change (null: never checked).
    health_since: Option<u32>,
    stats: StatsJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<Rate>,
}

#[derive(Serialize)]
struct VipJson {
    vip: SocketAddr,
    /// The ports it takes, first and last: `vip`'s own, or (port 0) every
    /// port or a range.
    ports: [u16; 2],
    proto: Proto,
    mode: NatMode,
    snat: Option<IpAddr>,
    table_size: u32,
    /// lbctl's route for the VIP's address is in the kernel (announced).
    route: bool,
    /// `none` or `client`; with client, `affinity_prefix6`.
    affinity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    affinity_prefix6: Option<u8>,
    /// The clients that may begin flows (prefixes); empty: everyone.
    allow: Vec<String>,
    /// New flows the allowlist turned away (--stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    denied: Option<u64>,
    /// keep, reassign or reset: what becomes of a gone backend's flows.
    on_backend_gone: &'static str,
    /// At most this many new flows a second; null: no limit.
    max_new_flows: Option<u32>,
    /// New flows the limit turned away (--stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    limited: Option<u64>,
    /// Entries of gone backends' flows lbctl removed (--stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    expired: Option<u64>,
    stats: StatsJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<Rate>,
    backends: Vec<BackendJson>,
}

#[derive(Serialize)]
struct ListJson {
    /// The node is drained (`lbctl drain`): no VIP route is announced.
    drained: bool,
    vips: Vec<VipJson>,
    /// Every verdict counter by name (--stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    verdicts: Option<BTreeMap<&'static str, u64>>,
    /// The flow cache's counters (--stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    flow_cache: Option<FlowCacheStats>,
    /// What the data path repaired: `partial_csums` (--stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    datapath: Option<DatapathStats>,
    /// Seconds the rates were measured over (--rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_s: Option<f64>,
    /// When the backends' `active_flows` were counted (--stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    active_flows_counted: Option<CountedJson>,
}

#[derive(Serialize)]
struct CountedJson {
    /// Unix time the count began.
    at: f64,
    /// Seconds since.
    age_s: f64,
    /// Seconds the count took.
    took_s: f64,
    /// `lbctl run`'s census, or this listing's own count.
    by: &'static str,
}

fn counted_json(c: &FlowsCounted) -> CountedJson {
    CountedJson {
        at: census::unix_seconds(c.at),
        age_s: c.at.elapsed().unwrap_or_default().as_secs_f64(),
        took_s: c.took.as_secs_f64(),
        by: if c.by_census { "lbctl run" } else { "listing" },
    }
}

/// Rates per VIP index and per backend id.
#[derive(Default)]
struct Rates {
    vips: BTreeMap<u32, Rate>,
    backends: BTreeMap<u32, Rate>,
    interval_s: f64,
}

pub fn run(opts: &ListOptions) -> Result<()> {
    let b = open_for_reading()?;
    let flows = if opts.stats {
        ActiveFlows::for_listing(b.maps.balancer_id()?)?
    } else {
        ActiveFlows::Skip
    };
    let (snap, rates) = match opts.rate {
        None => (Snapshot::read(&b.maps, &flows)?, None),
        Some(interval) => {
            let before = Snapshot::read(&b.maps, &ActiveFlows::Skip)?;
            let started = Instant::now();
            std::thread::sleep(interval);
            let after = Snapshot::read(&b.maps, &flows)?;
            let secs = started.elapsed().as_secs_f64();
            let rates = rates(&before, &after, secs);
            (after, Some(rates))
        }
    };
    let published = Published {
        drained: drain::is_drained(b.maps.balancer_id()?),
        routes: routes::installed()?,
    };
    let out = if opts.json {
        serde_json::to_string(&list_json(&snap, opts.stats, rates.as_ref(), &published))? + "\n"
    } else {
        render_table(&snap, opts.stats, rates.as_ref(), unix_now())
    };
    print!("{out}");
    if published.drained && !opts.json {
        println!("Node drained: every VIP route withdrawn, forwarding goes on (lbctl undrain)");
    }
    // list changes nothing: what an lbctl killed halfway left is finished
    // by the next change, and until then the data path may lag the list.
    let pending = repair::pending(&b.maps.running()?);
    if !pending.is_empty() {
        eprintln!(
            "lbctl: note: an interrupted change is not finished yet ({}); the next lbctl command that changes something finishes it",
            pending.join("; ")
        );
    }
    Ok(())
}

/// Rates from two snapshots; a VIP or backend that came or went meanwhile
/// has none.
fn rates(before: &Snapshot, after: &Snapshot, secs: f64) -> Rates {
    let mut r = Rates {
        interval_s: secs,
        ..Rates::default()
    };
    for v in &after.vips {
        let Some(old) = before.vips.iter().find(|o| o.vip.index == v.vip.index) else {
            continue;
        };
        r.vips
            .insert(v.vip.index, Rate::between(&old.stats, &v.stats, secs));
        for be in &v.backends {
            if let Some(o) = old.backends.iter().find(|o| o.entry.id == be.entry.id) {
                r.backends
                    .insert(be.entry.id, Rate::between(&o.stats, &be.stats, secs));
            }
        }
    }
    r
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn stats_json(c: &Counters, active_flows: Option<u64>) -> StatsJson {
    let (packets, bytes) = c.to_backends();
    StatsJson {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
        to_backends: TrafficJson { packets, bytes },
        to_clients: TrafficJson {
            packets: c.packets_to_clients,
            bytes: c.bytes_to_clients,
        },
        active_flows,
    }
}

/// What this balancer tells the routers (`routes.rs`).
struct Published {
    drained: bool,
    /// lbctl's routes in the kernel.
    routes: BTreeSet<IpAddr>,
}

fn list_json(
    snap: &Snapshot,
    stats: bool,
    rates: Option<&Rates>,
    published: &Published,
) -> ListJson {
    let vips = snap
        .vips
        .iter()
        .map(|r| VipJson {
            vip: r.vip.service.addr,
            ports: [r.vip.ports.first, r.vip.ports.last],
            proto: r.vip.service.proto,
            mode: r.vip.mode,
            snat: r.vip.snat,
            affinity: r.vip.affinity.name(),
            affinity_prefix6: r.vip.affinity.prefix6(),
            allow: r.vip.allow.iter().map(|p| p.to_string()).collect(),
            on_backend_gone: r.vip.on_backend_gone.name(),
            denied: stats.then_some(r.denied),
            max_new_flows: r.vip.max_new_flows,
            limited: stats.then_some(r.limited),
            expired: stats.then_some(r.expired),
            table_size: r.vip.table_size,
            route: published.routes.contains(&r.vip.service.addr.ip()),
            stats: stats_json(&r.stats, None),
            rate: rates.and_then(|x| x.vips.get(&r.vip.index).copied()),
            backends: r
                .backends
                .iter()
                .map(|be| BackendJson {
                    address: be.entry.addr,
                    weight: be.entry.weight,
                    health: be.entry.health,
                    health_since: (be.entry.health_since != 0).then_some(be.entry.health_since),
                    stats: stats_json(&be.stats, be.active_flows),
                    rate: rates.and_then(|x| x.backends.get(&be.entry.id).copied()),
                })
                .collect(),
        })
        .collect();
    ListJson {
        drained: published.drained,
        vips,
        verdicts: stats.then(|| snap.verdicts.iter().copied().collect()),
        flow_cache: if stats { snap.flow_cache } else { None },
        datapath: if stats { snap.datapath } else { None },
        interval_s: rates.map(|r| r.interval_s),
        active_flows_counted: snap.flows_counted.as_ref().map(counted_json),
    }
}

/// `up 3m12s`, `down 4s`, `unchecked`.
fn health_text(b: &BackendView, now: u64) -> String {
    let e = &b.entry;
    if e.health == Health::Unchecked || e.health_since == 0 {
        return e.health.name().into();
    }
    let age = now.saturating_sub(e.health_since as u64);
    let age = match age {
        0..60 => format!("{age}s"),
        60..3600 => format!("{}m{:02}s", age / 60, age % 60),
        _ => format!("{}h{:02}m", age / 3600, age % 3600 / 60),
    };
    format!("{} {age}", e.health.name())
}

fn render_table(snap: &Snapshot, stats: bool, rates: Option<&Rates>, now: u64) -> String {
    let mut s = String::new();
    let mut head = String::new();
    if stats {
        head += &format!(
            " {:>10} {:>12} {:>9} {:>7}",
            "Packets", "Bytes", "NewFlows", "Active"
        );
    }
    if rates.is_some() {
        head += &format!(" {:>8} {:>10} {:>12}", "CPS", "PPS", "BPS");
    }
    let _ = writeln!(
        s,
        "Prot LocalAddress:Port        Mode     Weight{head}  Health"
    );
    let _ = writeln!(s, "  -> RemoteAddress:Port");
    let columns = |c: &Counters, active: Option<u64>, rate: Option<Rate>| {
        let mut out = String::new();
        if stats {
            let active = active.map_or(String::new(), |n| n.to_string());
            out += &format!(
                " {:>10} {:>12} {:>9} {active:>7}",
                c.packets, c.bytes, c.new_flows
            );
        }
        if rates.is_some() {
            let r = rate.unwrap_or_default();
            out += &format!(" {:>8.0} {:>10.0} {:>12.0}", r.cps, r.pps, r.bps);
        }
        out
    };
    for r in &snap.vips {
        let mut snat = r
            .vip
            .snat
            .map(|a| format!(" (source {a})"))
            .unwrap_or_default();
        if r.vip.affinity != Affinity::None {
            snat += &format!(" (affinity {})", r.vip.affinity);
        }
        if r.vip.on_backend_gone.expires() {
            snat += &format!(" (on backend gone: {})", r.vip.on_backend_gone);
            if stats {
                snat += &format!(" (expired {})", r.expired);
            }
        }
        if !r.vip.allow.is_empty() {
            snat += &format!(" (allow {})", prefix::describe(&r.vip.allow));
            if stats {
                snat += &format!(" (denied {})", r.denied);
            }
        }
        if let Some(n) = r.vip.max_new_flows {
            snat += &format!(" (max {n} new flows/s)");
            if stats {
                snat += &format!(" (limited {})", r.limited);
            }
        }
        let rate = rates.and_then(|x| x.vips.get(&r.vip.index).copied());
        let _ = writeln!(
            s,
            "{:<4} {:<24} {:<8} {:>6}{}{snat}",
            r.vip.service.proto.name().to_uppercase(),
            VipAddr {
                addr: r.vip.service.addr,
                ports: r.vip.ports,
            }
            .to_string(),
            r.vip.mode.name(),
            "",
            columns(&r.stats, None, rate)
        );
        for be in &r.backends {
            let drain = if be.entry.weight == 0 {
                "  draining"
            } else {
                ""
            };
            let rate = rates.and_then(|x| x.backends.get(&be.entry.id).copied());
            let _ = writeln!(
                s,
                "  -> {:<33} {:>6}{}  {}{drain}",
                be.entry.addr.to_string(),
                be.entry.weight,
                columns(&be.stats, be.active_flows, rate),
                health_text(be, now)
            );
        }
    }
    if let Some(c) = snap.flows_counted.filter(|c| stats && c.by_census) {
        let age = c.at.elapsed().unwrap_or_default().as_secs();
        let _ = writeln!(
            s,
            "Active: open flows as lbctl run counted them {age}s ago (a count of the table every {}s)",
            census::period(c.took).as_secs()
        );
    }
    s
}
