//! Keeps the next hop of every backend resolved, through the kernel's
//! "managed" neighbour entries (Linux 5.16+): the kernel resolves them
//! itself and keeps them fresh, so the XDP program's FIB lookup finds a MAC
//! for the first packet of a flow. Without it the first packet goes to the
//! stack to trigger ARP, which fails in fullnat: a packet already rewritten
//! to the balancer's own source address is dropped as martian.

use std::net::IpAddr;
use std::process::Command;

/// The next hop toward `addr` and its interface (`ip route get`).
fn next_hop(addr: IpAddr) -> Option<(String, String)> {
    let out = Command::new("ip")
        .args(["-o", "route", "get", &addr.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    let dev = after("dev")?;
    if dev == "lo" {
        return None; // a local address: nothing to resolve
    }
    Some((after("via").unwrap_or_else(|| addr.to_string()), dev))
}

/// Asks the kernel to keep `addr`'s next hop resolved. Best effort: on
/// failure the flow still works in dnat (the stack resolves on the first
/// packet), so this returns a note to print rather than an error.
pub fn keep_resolved(addr: IpAddr) -> Option<String> {
    let Some((hop, dev)) = next_hop(addr) else {
        return Some(format!("no route to backend {addr} from this namespace"));
    };
    let out = Command::new("ip")
        .args(["neigh", "add", &hop, "dev", &dev, "managed"])
        .output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("File exists") => None,
        Ok(o) => Some(format!(
            "could not add a managed neighbour for {hop} on {dev}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("could not run ip (iproute2) to resolve {hop}: {e}")),
    }
}

/// Removes the managed entry of a backend lbctl no longer uses. Entries that
/// are not managed (static or learned) are left alone.
pub fn release(addr: IpAddr) {
    let Some((hop, dev)) = next_hop(addr) else {
        return;
    };
    if hop != addr.to_string() {
        return; // a gateway may serve other backends and other traffic
    }
    let shown = Command::new("ip")
        .args(["neigh", "show", &hop, "dev", &dev])
        .output();
    if shown.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("managed")) {
        let _ = Command::new("ip")
            .args(["neigh", "del", &hop, "dev", &dev])
            .output();
    }
}
