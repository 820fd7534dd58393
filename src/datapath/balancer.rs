//! A running balancer: its program and maps, found through the interfaces
//! of the current network namespace. No pins: the XDP program attached to an
//! interface holds its maps, so a balancer's state lives exactly as long as
//! it is attached somewhere and belongs to that interface's namespace. This
//! is what makes `ip netns exec NS lbctl ...` work across invocations (that
//! command hides the host's /sys/fs/bpf) and keeps namespaces apart.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context, Result};

use super::iface::{self, Attachment};
use super::maps::Maps;

/// The program's name as the kernel reports it (BPF names are 15 bytes).
pub const PROG_NAME: &str = "lbctl_xdp";

/// A balancer running in this network namespace.
pub struct Balancer {
    pub prog: OwnedFd,
    pub prog_id: u32,
    pub maps: Maps,
    /// Every interface it is attached to.
    pub attachments: Vec<Attachment>,
}

/// Every interface of this namespace that runs lbctl's program.
pub fn lbctl_attachments() -> Result<Vec<Attachment>> {
    let mut out = iface::attachments()?;
    out.retain(|a| iface::prog_name(a.prog_id).is_ok_and(|n| n == PROG_NAME));
    Ok(out)
}

impl Balancer {
    /// The balancer attached to this namespace's interfaces, if any.
    pub fn find() -> Result<Option<Balancer>> {
        let attachments = lbctl_attachments()?;
        let Some(first) = attachments.first() else {
            return Ok(None);
        };
        let prog = libbpf_rs::Program::fd_from_id(first.prog_id)
            .with_context(|| format!("opening program id {}", first.prog_id))?;
        let maps = Maps::from_prog(prog.as_fd())?;
        Ok(Some(Balancer {
            prog_id: first.prog_id,
            prog,
            maps,
            attachments,
        }))
    }

    /// Like `find`, but a balancer must be running.
    pub fn require() -> Result<Balancer> {
        match Balancer::find()? {
            Some(b) => Ok(b),
            None => bail!(
                "lbctl is not attached to any interface in this network namespace: run `lbctl attach IFACE` first"
            ),
        }
    }

    /// The attachment on an interface, if lbctl is attached there.
    pub fn attachment(&self, ifindex: u32) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.ifindex == ifindex)
    }
}
