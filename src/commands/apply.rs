//! `lbctl apply -f FILE`: the file's configuration on the running
//! balancer, changing only what differs.

use std::path::Path;

use anyhow::Result;

use super::{open_for_change, publish_routes};
use crate::host::record;
use crate::model::Desired;
use crate::service::apply;

pub fn run(path: &Path, desired: &Desired) -> Result<()> {
    let (_lock, b) = open_for_change()?;
    let attached: Vec<String> = b.attachments.iter().map(|a| a.ifname.clone()).collect();
    let done = apply::apply(&b.maps, &attached, desired);
    publish_routes(&b);
    let done = done?;
    record::write(b.maps.balancer_id()?, desired)?;
    println!("applied {}: {done}", path.display());
    for note in &done.notes {
        eprintln!("lbctl: note: {note}; first packets may wait for ARP");
    }
    Ok(())
}
