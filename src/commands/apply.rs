//! `lbctl apply -f FILE`: the file's configuration on the running
//! balancer, changing only what differs.

use std::path::Path;

use anyhow::Result;

use super::open_for_change;
use crate::change::plan::Kind;
use crate::model::Desired;
use crate::service::apply;

pub fn run(path: &Path, desired: &Desired) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    let attached: Vec<String> = b.attachments.iter().map(|a| a.ifname.clone()).collect();
    let (done, _) = s.run(Kind::Apply, |fx| {
        apply::apply_noting(&b.maps, &attached, desired, fx)
    })?;
    println!("applied {}: {done}", path.display());
    for note in &done.notes {
        eprintln!("lbctl: note: {note}; first packets may wait for ARP");
    }
    Ok(())
}
