//! `lbctl list`: VIPs and backends, optionally with counters (`--stats`) or
//! rates over an interval (`--rate`, ipvsadm's CPS/PPS/BPS columns), as a
//! table (ipvsadm -L -n style) or JSON (docs/JSON.md).

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::open_for_reading;
use crate::datapath::balancer::Balancer;
use crate::datapath::codec::{BackendEntry, VipEntry};
use crate::datapath::counters::Counters;
use crate::model::{ListOptions, NatMode, Proto};

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
struct BackendJson {
    address: SocketAddr,
    weight: u32,
    stats: Counters,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<Rate>,
}

#[derive(Serialize)]
struct VipJson {
    vip: SocketAddr,
    proto: Proto,
    mode: NatMode,
    snat: Option<IpAddr>,
    table_size: u32,
    stats: Counters,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<Rate>,
    backends: Vec<BackendJson>,
}

#[derive(Serialize)]
struct ListJson {
    vips: Vec<VipJson>,
    /// Seconds the rates were measured over (with --rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_s: Option<f64>,
}

struct Row {
    vip: VipEntry,
    stats: Counters,
    rate: Option<Rate>,
    backends: Vec<(BackendEntry, Counters, Option<Rate>)>,
}

fn collect(b: &Balancer) -> Result<Vec<Row>> {
    let all = b.maps.backends()?;
    let mut rows = Vec::new();
    for vip in b.maps.vips()? {
        let mut backends = Vec::new();
        for be in all.iter().filter(|be| be.vip_index == vip.index) {
            backends.push((be.clone(), b.maps.backend_counters(be.id)?, None));
        }
        backends.sort_by_key(|(be, _, _)| be.addr);
        let stats = b.maps.vip_counters(vip.index)?;
        rows.push(Row {
            vip,
            stats,
            rate: None,
            backends,
        });
    }
    Ok(rows)
}

/// The counters now and again after `interval`; rates from the difference.
/// A VIP or backend that came or went meanwhile has no rate.
fn collect_rates(b: &Balancer, interval: Duration) -> Result<(Vec<Row>, f64)> {
    let before = collect(b)?;
    let started = Instant::now();
    std::thread::sleep(interval);
    let mut after = collect(b)?;
    let secs = started.elapsed().as_secs_f64();
    for row in &mut after {
        let Some(old) = before.iter().find(|r| r.vip.index == row.vip.index) else {
            continue;
        };
        row.rate = Some(Rate::between(&old.stats, &row.stats, secs));
        for (be, now, rate) in &mut row.backends {
            if let Some((_, then, _)) = old.backends.iter().find(|(o, _, _)| o.id == be.id) {
                *rate = Some(Rate::between(then, now, secs));
            }
        }
    }
    Ok((after, secs))
}

pub fn run(opts: &ListOptions) -> Result<()> {
    let b = open_for_reading()?;
    let (rows, interval) = match opts.rate {
        Some(interval) => {
            let (rows, secs) = collect_rates(&b, interval)?;
            (rows, Some(secs))
        }
        None => (collect(&b)?, None),
    };
    let out = if opts.json {
        serde_json::to_string(&list_json(&rows, interval))? + "\n"
    } else {
        render_table(&rows, opts.stats, interval.is_some())
    };
    print!("{out}");
    Ok(())
}

fn list_json(rows: &[Row], interval_s: Option<f64>) -> ListJson {
    let vips = rows
        .iter()
        .map(|r| VipJson {
            vip: r.vip.service.addr,
            proto: r.vip.service.proto,
            mode: r.vip.mode,
            snat: r.vip.snat,
            table_size: r.vip.table_size,
            stats: r.stats,
            rate: r.rate,
            backends: r
                .backends
                .iter()
                .map(|(be, c, rate)| BackendJson {
                    address: be.addr,
                    weight: be.weight,
                    stats: *c,
                    rate: *rate,
                })
                .collect(),
        })
        .collect();
    ListJson { vips, interval_s }
}

fn render_table(rows: &[Row], stats: bool, rates: bool) -> String {
    let mut s = String::new();
    let mut head = String::new();
    if stats {
        head += &format!(" {:>10} {:>12} {:>9}", "Packets", "Bytes", "NewFlows");
    }
    if rates {
        head += &format!(" {:>8} {:>10} {:>12}", "CPS", "PPS", "BPS");
    }
    let _ = writeln!(s, "Prot LocalAddress:Port        Mode     Weight{head}");
    let _ = writeln!(s, "  -> RemoteAddress:Port");
    let columns = |c: &Counters, r: &Option<Rate>| {
        let mut out = String::new();
        if stats {
            out += &format!(" {:>10} {:>12} {:>9}", c.packets, c.bytes, c.new_flows);
        }
        if rates {
            let r = r.unwrap_or_default();
            out += &format!(" {:>8.0} {:>10.0} {:>12.0}", r.cps, r.pps, r.bps);
        }
        out
    };
    for r in rows {
        let snat = r
            .vip
            .snat
            .map(|a| format!(" (source {a})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<4} {:<24} {:<8} {:>6}{}{snat}",
            r.vip.service.proto.name().to_uppercase(),
            r.vip.service.addr.to_string(),
            r.vip.mode.name(),
            "",
            columns(&r.stats, &r.rate)
        );
        for (be, c, rate) in &r.backends {
            let drain = if be.weight == 0 { "  draining" } else { "" };
            let _ = writeln!(
                s,
                "  -> {:<33} {:>6}{}{drain}",
                be.addr.to_string(),
                be.weight,
                columns(c, rate)
            );
        }
    }
    s
}
