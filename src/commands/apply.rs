//! `lbctl apply -f FILE`: the file's configuration on the running
//! balancer, changing only what differs; with `--dry-run`, what that would
//! change, changing nothing.

use std::path::Path;

use anyhow::Result;

use super::{open_for_change, open_for_reading};
use crate::change::plan::Kind;
use crate::model::Desired;
use crate::service::apply;

pub fn run(path: &Path, desired: &Desired) -> Result<()> {
    let s = open_for_change()?;
    let b = s.running()?;
    let attached: Vec<String> = b.attachments.iter().map(|a| a.ifname.clone()).collect();
    let (done, _) = s.run(Kind::Apply, |fx| {
        apply::apply_noting(&b.maps, &attached, desired, apply::Checks::NotRun, fx)
    })?;
    println!("applied {}: {done}", path.display());
    for note in &done.notes {
        eprintln!("lbctl: note: {note}; first packets may wait for ARP");
    }
    Ok(())
}

/// The changes `run` would make, one a line (`+` added, `-` removed, `~`
/// changed, in the order apply makes them), then the summary; nothing is
/// written, and no lock is taken (a change running at the same time may
/// make the answer stale).
pub fn dry_run(path: &Path, desired: &Desired) -> Result<()> {
    let b = open_for_reading()?;
    let attached: Vec<String> = b.attachments.iter().map(|a| a.ifname.clone()).collect();
    let (lines, would) = apply::plan(&b.maps, &attached, desired)?;
    for line in &lines {
        println!("{line}");
    }
    println!("would apply {}: {would}", path.display());
    Ok(())
}
