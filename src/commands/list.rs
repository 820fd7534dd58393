//! `lbctl list`: VIPs and backends, optionally with counters, as a table
//! (ipvsadm -L -n style) or JSON.

use std::fmt::Write;

use anyhow::Result;

use super::open_for_reading;
use crate::datapath::balancer::Balancer;
use crate::datapath::codec::{BackendEntry, VipEntry};
use crate::datapath::counters::Counters;

struct Row {
    vip: VipEntry,
    stats: Counters,
    backends: Vec<(BackendEntry, Counters)>,
}

fn collect(b: &Balancer) -> Result<Vec<Row>> {
    let all = b.maps.backends()?;
    let mut rows = Vec::new();
    for vip in b.maps.vips()? {
        let mut backends = Vec::new();
        for be in all.iter().filter(|be| be.vip_index == vip.index) {
            backends.push((be.clone(), b.maps.backend_counters(be.id)?));
        }
        backends.sort_by_key(|(be, _)| be.addr);
        let stats = b.maps.vip_counters(vip.index)?;
        rows.push(Row {
            vip,
            stats,
            backends,
        });
    }
    Ok(rows)
}

pub fn run(stats: bool, json: bool) -> Result<()> {
    let b = open_for_reading()?;
    let rows = collect(&b)?;
    let out = if json {
        render_json(&rows)
    } else {
        render_table(&rows, stats)
    };
    print!("{out}");
    Ok(())
}

fn render_table(rows: &[Row], stats: bool) -> String {
    let mut s = String::new();
    let counters_head = if stats {
        format!(" {:>10} {:>12} {:>9}", "Packets", "Bytes", "NewFlows")
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "Prot LocalAddress:Port        Mode     Weight{counters_head}"
    );
    let _ = writeln!(s, "  -> RemoteAddress:Port");
    for r in rows {
        let snat = r
            .vip
            .snat
            .map(|a| format!(" (source {a})"))
            .unwrap_or_default();
        let c = if stats {
            fmt_counters(&r.stats)
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
        for (be, bc) in &r.backends {
            let c = if stats {
                fmt_counters(bc)
            } else {
                String::new()
            };
            let drain = if be.weight == 0 { "  draining" } else { "" };
            let _ = writeln!(
                s,
                "  -> {:<33} {:>6}{c}{drain}",
                be.addr.to_string(),
                be.weight
            );
        }
    }
    s
}

fn fmt_counters(c: &Counters) -> String {
    format!(" {:>10} {:>12} {:>9}", c.packets, c.bytes, c.new_flows)
}

fn json_counters(c: &Counters) -> String {
    format!(
        "{{\"packets\":{},\"bytes\":{},\"new_flows\":{}}}",
        c.packets, c.bytes, c.new_flows
    )
}

/// JSON by hand: the shape is small and fixed, and every string in it is an
/// address or a fixed word, which needs no escaping.
fn render_json(rows: &[Row]) -> String {
    let vips: Vec<String> = rows
        .iter()
        .map(|r| {
            let backends: Vec<String> = r
                .backends
                .iter()
                .map(|(be, c)| {
                    format!(
                        "{{\"address\":\"{}\",\"weight\":{},\"stats\":{}}}",
                        be.addr,
                        be.weight,
                        json_counters(c)
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
                json_counters(&r.stats),
                backends.join(",")
            )
        })
        .collect();
    format!("{{\"vips\":[{}]}}\n", vips.join(","))
}
