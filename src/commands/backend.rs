//! `lbctl backend add|set|del`.

use anyhow::Result;

use super::open_for_change;
use super::vip::service;
use crate::cli::BackendCommand;
use crate::model::check_same_family;
use crate::neighbour;

pub fn run(cmd: &BackendCommand) -> Result<()> {
    let target = match cmd {
        BackendCommand::Add { target, .. }
        | BackendCommand::Set { target, .. }
        | BackendCommand::Del { target } => target,
    };
    let svc = service(&target.service);
    check_same_family(svc.addr, target.backend).map_err(anyhow::Error::msg)?;
    let (_lock, b) = open_for_change()?;
    match cmd {
        BackendCommand::Add { weight, .. } => {
            b.maps.add_backend(&svc, target.backend, *weight)?;
            println!(
                "added backend {} to {svc} (weight {weight})",
                target.backend
            );
            if let Some(note) = neighbour::keep_resolved(target.backend.ip()) {
                eprintln!("lbctl: note: {note}; first packets may wait for ARP");
            }
        }
        BackendCommand::Set { weight, .. } => {
            b.maps.set_weight(&svc, target.backend, *weight)?;
            let note = if *weight == 0 {
                ": draining, live flows stay"
            } else {
                ""
            };
            println!(
                "backend {} of {svc} now has weight {weight}{note}",
                target.backend
            );
        }
        BackendCommand::Del { .. } => {
            b.maps.del_backend(&svc, target.backend)?;
            println!("removed backend {} from {svc}", target.backend);
            let left: Vec<_> = b.maps.backends()?.iter().map(|r| r.addr.ip()).collect();
            neighbour::release_unused(&[target.backend.ip()], &left);
        }
    }
    Ok(())
}
