//! `lbctl backend add|set|del`.

use std::net::SocketAddr;

use anyhow::Result;

use super::open_for_change;
use crate::change::plan::Kind;
use crate::host::neighbour;
use crate::model::Service;

pub fn add(svc: &Service, backend: SocketAddr, weight: u32) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    // The next hop first: killed after it, a resolved neighbour entry is
    // left (harmless); killed after the maps, the backend has its hop.
    let note = neighbour::keep_resolved(backend.ip());
    s.run(Kind::Configure, |fx| {
        let added = b.maps.add_backend(svc, backend, weight);
        if added.is_err() {
            fx.released.push(backend.ip());
        }
        added
    })?;
    println!("added backend {backend} to {svc} (weight {weight})");
    if let Some(note) = note {
        eprintln!("lbctl: note: {note}; first packets may wait for ARP or neighbour discovery");
    }
    Ok(())
}

pub fn set(svc: &Service, backend: SocketAddr, weight: u32) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    s.run(Kind::Configure, |_| b.maps.set_weight(svc, backend, weight))?;
    let note = if weight == 0 {
        ": draining, live flows stay"
    } else {
        ""
    };
    println!("backend {backend} of {svc} now has weight {weight}{note}");
    Ok(())
}

pub fn del(svc: &Service, backend: SocketAddr) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    let (_, followed) = s.run(Kind::Configure, |fx| {
        b.maps.del_backend(svc, backend)?;
        fx.released.push(backend.ip());
        fx.gone.push((*svc, backend));
        Ok(())
    })?;
    let expired = match followed.expired {
        0 => String::new(),
        n => format!(" and the entries of its {n} flows (on-backend-gone)"),
    };
    println!("removed backend {backend} from {svc}{expired}");
    Ok(())
}
