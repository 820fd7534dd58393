//! `lbctl conns`: lbctl's live flows, read from the kernel's conntrack table
//! (each entry lbctl made carries its mark), one line each with a count per
//! backend at the end, like `ipvsadm -L -c -n`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;

use anyhow::Result;
use serde::Serialize;

use crate::conntrack::{self, Flow};
use crate::datapath::balancer::Balancer;
use crate::datapath::load;
use crate::model::{FlowFilter, Proto};

/// One flow as `conns --json` shows it (docs/JSON.md).
#[derive(Serialize)]
struct FlowJson {
    proto: Proto,
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
    /// The source the backend sees, where it is not the client (fullnat).
    source: Option<SocketAddr>,
    state: &'static str,
    expires_s: u32,
    backend_id: u32,
    vip_index: u32,
}

#[derive(Serialize)]
struct ConnsJson {
    flows: Vec<FlowJson>,
    per_backend: BTreeMap<String, usize>,
}

/// What the data path knows of a flow: FIN or RST seen, answered, or not
/// answered yet.
pub fn state(f: &Flow) -> &'static str {
    if f.closing {
        "closing"
    } else if f.replied {
        "replied"
    } else {
        "unreplied"
    }
}

pub fn run(filter: &FlowFilter, json: bool) -> Result<()> {
    load::require_privileges()?;
    let mut flows: Vec<Flow> = conntrack::lbctl_flows()?
        .into_iter()
        .filter(|f| filter.matches(f.proto, f.vip, f.backend))
        .collect();
    flows.sort_by_key(|f| (f.vip, f.backend, f.client));
    // Counted per backend as configured: a port-less backend's flows
    // (one port each) as one.
    let vips = match Balancer::find()? {
        Some(b) => b.maps.running()?.vip_ports(),
        None => Vec::new(),
    };
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for f in &flows {
        let (_, backend) = conntrack::as_configured(f, &vips);
        *per_backend.entry(backend.to_string()).or_default() += 1;
    }
    let out = if json {
        let doc = ConnsJson {
            flows: flows.iter().map(flow_json).collect(),
            per_backend,
        };
        serde_json::to_string(&doc)? + "\n"
    } else {
        render(&flows, &per_backend)
    };
    print!("{out}");
    Ok(())
}

fn flow_json(f: &Flow) -> FlowJson {
    FlowJson {
        proto: f.proto,
        client: f.client,
        vip: f.vip,
        backend: f.backend,
        source: f.source,
        state: state(f),
        expires_s: f.expires_s,
        backend_id: f.backend_id,
        vip_index: f.vip_index,
    }
}

/// mm:ss, as ipvsadm -c shows expiry.
fn expires(s: u32) -> String {
    format!("{:02}:{:02}", s / 60, s % 60)
}

fn render(flows: &[Flow], per_backend: &BTreeMap<String, usize>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Pro {:<28} {:<28} {:<28} {:<28} {:<9} Expires",
        "FromIP:Port", "VIP:Port", "ToIP:Port", "Source (fullnat)", "State"
    );
    for f in flows {
        let source = f.source.map_or("-".into(), |a| a.to_string());
        let _ = writeln!(
            s,
            "{:<3} {:<28} {:<28} {:<28} {:<28} {:<9} {}",
            f.proto.name().to_uppercase(),
            f.client.to_string(),
            f.vip.to_string(),
            f.backend.to_string(),
            source,
            state(f),
            expires(f.expires_s)
        );
    }
    let _ = writeln!(s, "\n{:<28} Flows", "Backend");
    for (backend, n) in per_backend {
        let _ = writeln!(s, "{backend:<28} {n}");
    }
    let _ = writeln!(s, "{:<28} {}", "total", flows.len());
    s
}
