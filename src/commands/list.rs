//! `lbctl list`: VIPs and backends with their health, optionally with
//! counters and open flows, as a table (ipvsadm -L -n style) or JSON.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::open_for_reading;
use crate::datapath::counters::Counters;
use crate::model::Health;
use crate::snapshot::{BackendView, Snapshot};

pub fn run(stats: bool, json: bool) -> Result<()> {
    let b = open_for_reading()?;
    let snap = Snapshot::read(&b.maps, stats)?;
    let out = if json {
        render_json(&snap, stats)
    } else {
        render_table(&snap, stats, unix_now())
    };
    print!("{out}");
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

fn render_table(snap: &Snapshot, stats: bool, now: u64) -> String {
    let mut s = String::new();
    let counters_head = if stats {
        format!(
            " {:>10} {:>12} {:>9} {:>7}",
            "Packets", "Bytes", "NewFlows", "Active"
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "Prot LocalAddress:Port        Mode     Weight{counters_head}  Health"
    );
    let _ = writeln!(s, "  -> RemoteAddress:Port");
    for r in &snap.vips {
        let snat = r
            .vip
            .snat
            .map(|a| format!(" (source {a})"))
            .unwrap_or_default();
        let c = if stats {
            fmt_counters(&r.stats) + &format!(" {:>7}", "")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:<4} {:<24} {:<8} {:>6}{c}{snat}",
            r.vip.service.proto.name().to_uppercase(),
            r.vip.service.addr.to_string(),
            r.vip.mode.name(),
            ""
        );
        for be in &r.backends {
            let c = if stats {
                fmt_counters(&be.stats) + &format!(" {:>7}", be.active_flows.unwrap_or(0))
            } else {
                String::new()
            };
            let drain = if be.entry.weight == 0 {
                "  draining"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  -> {:<33} {:>6}{c}  {}{drain}",
                be.entry.addr.to_string(),
                be.entry.weight,
                health_text(be, now)
            );
        }
    }
    s
}

fn fmt_counters(c: &Counters) -> String {
    format!(" {:>10} {:>12} {:>9}", c.packets, c.bytes, c.new_flows)
}

fn json_counters(c: &Counters, active: Option<u64>) -> String {
    let active = active.map_or(String::new(), |n| format!(",\"active_flows\":{n}"));
    format!(
        "{{\"packets\":{},\"bytes\":{},\"new_flows\":{}{active}}}",
        c.packets, c.bytes, c.new_flows
    )
}

/// JSON by hand: the shape is small and fixed, and every string in it is an
/// address or a fixed word, which needs no escaping. With `stats`: each
/// backend's open flows, the verdict counters and the flow cache's.
fn render_json(snap: &Snapshot, stats: bool) -> String {
    let vips: Vec<String> = snap
        .vips
        .iter()
        .map(|r| {
            let backends: Vec<String> = r
                .backends
                .iter()
                .map(|be| {
                    let e = &be.entry;
                    let since = if e.health_since == 0 {
                        "null".to_string()
                    } else {
                        e.health_since.to_string()
                    };
                    format!(
                        "{{\"address\":\"{}\",\"weight\":{},\"health\":\"{}\",\"health_since\":{since},\"stats\":{}}}",
                        e.addr,
                        e.weight,
                        e.health,
                        json_counters(&be.stats, be.active_flows)
                    )
                })
                .collect();
            let snat = r.vip.snat.map(|a| format!("\"{a}\"")).unwrap_or_else(|| "null".into());
            format!(
                "{{\"vip\":\"{}\",\"proto\":\"{}\",\"mode\":\"{}\",\"snat\":{snat},\"table_size\":{},\"stats\":{},\"backends\":[{}]}}",
                r.vip.service.addr,
                r.vip.service.proto,
                r.vip.mode.name(),
                r.vip.table_size,
                json_counters(&r.stats, None),
                backends.join(",")
            )
        })
        .collect();
    let mut extra = String::new();
    if stats {
        let verdicts: Vec<String> = snap
            .verdicts
            .iter()
            .map(|(name, n)| format!("\"{name}\":{n}"))
            .collect();
        let _ = write!(extra, ",\"verdicts\":{{{}}}", verdicts.join(","));
        if let Some(c) = snap.flow_cache {
            let _ = write!(
                extra,
                ",\"flow_cache\":{{\"hits\":{},\"misses\":{},\"stores\":{}}}",
                c.hits, c.misses, c.stores
            );
        }
    }
    format!("{{\"vips\":[{}]{extra}}}\n", vips.join(","))
}
