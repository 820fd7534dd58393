//! `Desired` → text that `parse` reads back to the same `Desired`: every
//! value written out (no defaults left implicit), VIPs and backends in the
//! order given.

use std::fmt::Write;

use crate::model::{format_duration, CheckKind, Desired, Timeout};

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn render(d: &Desired) -> String {
    let mut s = String::new();
    let list: Vec<String> = d.interfaces.iter().map(|i| quote(i)).collect();
    let _ = writeln!(s, "interfaces = [{}]", list.join(", "));
    if let Some(mode) = d.xdp_mode {
        let _ = writeln!(s, "xdp_mode = {}", quote(mode.name()));
    }
    if let Some(seed) = d.hash_seed {
        let _ = writeln!(s, "hash_seed = {seed}");
    }
    if let Some(size) = d.flow_cache_size {
        let _ = writeln!(s, "flow_cache_size = {size}");
    }
    let t = &d.timeouts;
    if !t.is_empty() {
        let _ = writeln!(s, "\n[timeouts]");
        for which in Timeout::ALL {
            if let Some(v) = t.get(which) {
                let _ = writeln!(s, "{} = {v}", which.name());
            }
        }
    }
    for v in &d.vips {
        let spec = &v.spec;
        let _ = writeln!(s, "\n[[vip]]");
        let _ = writeln!(s, "address = {}", quote(&spec.service.addr.to_string()));
        let _ = writeln!(s, "proto = {}", quote(spec.service.proto.name()));
        let _ = writeln!(s, "mode = {}", quote(spec.mode.name()));
        if let (true, Some(snat)) = (spec.mode.has_source(), spec.snat) {
            let _ = writeln!(s, "snat = {}", quote(&snat.to_string()));
        }
        match (spec.table_size, v.table_in_use) {
            (Some(size), _) => {
                let _ = writeln!(s, "table_size = {size}");
            }
            (None, Some(size)) => {
                let _ = writeln!(
                    s,
                    "# table_size: {size} in use, sized by lbctl for the backends (a table_size here would fix it)"
                );
            }
            (None, None) => {}
        }
        if let Some(h) = &v.health {
            let _ = writeln!(s, "\n[vip.health]");
            let _ = writeln!(s, "kind = {}", quote(h.kind.name()));
            match &h.kind {
                CheckKind::Tcp => {}
                CheckKind::Http { path, expect } => {
                    let _ = writeln!(s, "path = {}\nexpect = {expect}", quote(path));
                }
                CheckKind::Udp { send, expect } => {
                    let _ = writeln!(s, "send = {}\nexpect = {}", quote(send), quote(expect));
                }
            }
            let _ = writeln!(s, "interval = {}", quote(&format_duration(h.interval)));
            let _ = writeln!(s, "timeout = {}", quote(&format_duration(h.timeout)));
            let _ = writeln!(s, "rise = {}\nfall = {}", h.rise, h.fall);
            if let Some(port) = h.port {
                let _ = writeln!(s, "port = {port}");
            }
        }
        for (addr, weight) in &v.backends {
            let _ = writeln!(s, "\n[[vip.backend]]");
            let _ = writeln!(s, "address = {}", quote(&addr.to_string()));
            let _ = writeln!(s, "weight = {weight}");
        }
    }
    s
}
