//! `Desired` → text that `parse` reads back to the same `Desired`: every
//! value written out (no defaults left implicit, but for `affinity =
//! "none"`, which files from before affinity lack), VIPs and backends in
//! the order given.

use std::fmt::Write;

use crate::model::{
    format_duration, format_status_range, CheckKind, Desired, HealthCheck, OnBackendGone, Timeout,
};

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
        let addr = crate::model::VipAddr {
            addr: spec.service.addr,
            ports: spec.ports,
        };
        let _ = writeln!(s, "address = {}", quote(&addr.to_string()));
        let _ = writeln!(s, "proto = {}", quote(spec.service.proto.name()));
        let _ = writeln!(s, "mode = {}", quote(spec.mode.name()));
        if let (true, Some(snat)) = (spec.mode.has_source(), spec.snat) {
            let _ = writeln!(s, "snat = {}", quote(&snat.to_string()));
        }
        if let Some(prefix6) = spec.affinity.prefix6() {
            let _ = writeln!(s, "affinity = {}", quote(spec.affinity.name()));
            if prefix6 != 128 {
                let _ = writeln!(s, "affinity_prefix6 = {prefix6}");
            }
        }
        if spec.on_backend_gone != OnBackendGone::Keep {
            let _ = writeln!(
                s,
                "on_backend_gone = {}",
                quote(spec.on_backend_gone.name())
            );
        }
        if let Some(n) = spec.max_new_flows {
            let _ = writeln!(s, "max_new_flows = {n}");
        }
        if !spec.allow.is_empty() {
            let list: Vec<String> = spec.allow.iter().map(|p| quote(&p.to_string())).collect();
            let _ = writeln!(s, "allow = [{}]", list.join(", "));
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
            for (key, value) in check_fields(h) {
                let _ = writeln!(s, "{key} = {value}");
            }
        }
        for (addr, weight) in &v.backends {
            let _ = writeln!(s, "\n[[vip.backend]]");
            let _ = writeln!(s, "address = {}", quote(&addr.to_string()));
            let _ = writeln!(s, "weight = {weight}");
            if let Some((_, own)) = v.backend_health.iter().find(|(a, _)| a == addr) {
                let _ = writeln!(s, "\n[vip.backend.health]");
                for (key, value) in override_fields(v.health.as_ref(), own.as_ref()) {
                    let _ = writeln!(s, "{key} = {value}");
                }
            }
        }
    }
    s
}

/// Every field of a check, as `[vip.health]` writes it.
fn check_fields(h: &HealthCheck) -> Vec<(&'static str, String)> {
    let mut f = vec![("kind", quote(h.kind.name()))];
    match &h.kind {
        CheckKind::Tcp => {}
        CheckKind::Http(http) => {
            f.push(("path", quote(&http.path)));
            if let Some(host) = &http.host {
                f.push(("host", quote(host)));
            }
            let ranges: Vec<String> = http
                .expect
                .iter()
                .map(|&(lo, hi)| match lo == hi {
                    true => lo.to_string(),
                    false => quote(&format_status_range((lo, hi))),
                })
                .collect();
            f.push((
                "expect",
                match ranges.len() {
                    1 => ranges[0].clone(),
                    _ => format!("[{}]", ranges.join(", ")),
                },
            ));
            if let Some(body) = &http.body {
                f.push(("body", quote(body)));
            }
            if let Some(tls) = &http.tls {
                if let Some(sni) = &tls.sni {
                    f.push(("sni", quote(sni)));
                }
                f.push(("verify", tls.verify.to_string()));
                if let Some(ca) = &tls.ca {
                    f.push(("ca", quote(&ca.display().to_string())));
                }
            }
        }
        CheckKind::Udp { send, expect } => {
            f.push(("send", quote(send)));
            f.push(("expect", quote(expect)));
        }
    }
    f.push(("interval", quote(&format_duration(h.interval))));
    f.push(("timeout", quote(&format_duration(h.timeout))));
    f.push(("rise", h.rise.to_string()));
    f.push(("fall", h.fall.to_string()));
    if let Some(port) = h.port {
        f.push(("port", port.to_string()));
    }
    f.push(("start", quote(h.start.name())));
    f
}

/// A backend's own check as `[vip.backend.health]` writes it over its
/// VIP's `base` (`parse`'s `RawHealth::over` reads it back): the fields
/// that differ, or the whole check under another kind.
fn override_fields(
    base: Option<&HealthCheck>,
    own: Option<&HealthCheck>,
) -> Vec<(&'static str, String)> {
    let Some(own) = own else {
        return vec![("kind", quote("none"))];
    };
    let mine = check_fields(own);
    match base {
        Some(b) if b.kind.name() == own.kind.name() => {
            let theirs = check_fields(b);
            mine.into_iter().filter(|f| !theirs.contains(f)).collect()
        }
        _ => mine,
    }
}
