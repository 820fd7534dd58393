//! A VIP's Maglev table built from its rows and recorded in the VIP (what
//! it was built from, its size, what moved): one VIP after a change of its
//! backends or their health, or every VIP of an upgraded program.

use std::net::SocketAddr;

use anyhow::Result;
use libbpf_rs::{MapFlags, MapHandle};

use super::codec::{bytes_of, service_endpoint, BackendEntry, VipEntry};
use super::maps::Maps;
use super::running::Running;
use super::tables::{moved_ppm, new_table, table_digest, table_ids, table_size_for};
use super::types::lb_vip;
use crate::model::Service;
use crate::table_size::Sizing;

impl Maps {
    /// Builds the VIP's Maglev table from these members and swaps it in,
    /// unless the VIP's table was already built from exactly them (same
    /// ids, endpoints and effective weights). Returns whether it rebuilt.
    pub(super) fn rebuild_table_if_changed(
        &self,
        run: &mut Running,
        vip: &VipEntry,
        members: &[BackendEntry],
    ) -> Result<bool> {
        let digest = table_digest(members);
        if digest == vip.table_digest && size_for(vip, members) == vip.table_size {
            return Ok(false);
        }
        let (size, moved) = self.rebuild_table(vip, members)?;
        if let Some(v) = run.vips.iter_mut().find(|v| v.index == vip.index) {
            v.table_digest = digest;
            v.moved = moved;
            v.table_size = size;
        }
        Ok(true)
    }

    /// Builds the VIP's Maglev table from its backends, at the size they
    /// call for, swaps it in, and records in the VIP what it was built from
    /// and its size; returns the size and the share of slots that moved.
    /// A fixed size too small for them (refused before any write, so only
    /// met in maps an older lbctl wrote) is kept.
    fn rebuild_table(&self, vip: &VipEntry, members: &[BackendEntry]) -> Result<(u32, f64)> {
        let size = size_for(vip, members);
        let ids = table_ids(members, size)?;
        let old = self.table(vip.index).unwrap_or_default();
        self.swap_table(vip.index, &ids)?;
        self.bump_generation()?;
        let ep = service_endpoint(&vip.service);
        let what = format_args!("VIP {}", vip.service);
        let moved = moved_ppm(&old, &ids);
        if let Some(mut row) = self.vips.get::<lb_vip>(bytes_of(&ep), &what)? {
            row.moved_ppm = moved;
            row.table_digest = table_digest(members);
            row.table_size = size;
            self.vips.put(bytes_of(&ep), &row, MapFlags::EXIST, &what)?;
        }
        Ok((size, moved as f64 / 1e6))
    }

    /// Builds every VIP's table from its rows into this program's own
    /// `vip_tables` (an upgrade in place: `attach --replace` gives the new
    /// program fresh tables, in its format and at the size the backends
    /// call for, rather than the running program's). `old` is the running
    /// program's maps, for what each rebuild moved. Returns what to record
    /// in each VIP's row once the new program runs ([`Maps::record_tables`]).
    pub fn build_all_tables(&self, old: &Maps) -> Result<Vec<RebuiltTable>> {
        let run = self.running()?;
        let members: Vec<(VipEntry, Vec<BackendEntry>)> = run
            .vips
            .iter()
            .map(|v| (v.clone(), run.members(v)))
            .collect();
        let jobs: Vec<(u32, u32, &[BackendEntry])> = members
            .iter()
            .map(|(v, m)| (v.index, size_for(v, m), m.as_slice()))
            .collect();
        let tables = build_tables(self.balancer_id()?, &jobs)?;
        let installed: Vec<(u32, &MapHandle)> = jobs
            .iter()
            .zip(&tables)
            .map(|((index, _, _), (t, _))| (*index, t))
            .collect();
        self.install_tables(&installed)?;
        let mut out = Vec::with_capacity(jobs.len());
        for (((vip, m), (_, size, _)), (_, digest)) in members.iter().zip(&jobs).zip(&tables) {
            let new = table_ids(m, *size)?;
            let before = old.table(vip.index).unwrap_or_default();
            out.push(RebuiltTable {
                service: vip.service,
                size: *size,
                digest: *digest,
                moved_ppm: moved_ppm(&before, &new),
            });
        }
        Ok(out)
    }

    /// Records in each VIP's row the table [`Maps::build_all_tables`] built.
    pub fn record_tables(&self, rebuilt: &[RebuiltTable]) -> Result<()> {
        for t in rebuilt {
            let ep = service_endpoint(&t.service);
            let what = format_args!("VIP {}", t.service);
            if let Some(mut row) = self.vips.get::<lb_vip>(bytes_of(&ep), &what)? {
                row.moved_ppm = t.moved_ppm;
                row.table_digest = t.digest;
                row.table_size = t.size;
                self.vips.put(bytes_of(&ep), &row, MapFlags::EXIST, &what)?;
            }
        }
        Ok(())
    }
}

/// The size a running VIP's table should have for these members (their
/// configured weights). A fixed size too small for them (refused before any
/// write, so only met in maps an older lbctl wrote) is kept.
fn size_for(vip: &VipEntry, members: &[BackendEntry]) -> u32 {
    let want: Vec<(SocketAddr, u32)> = members.iter().map(|b| (b.addr, b.weight)).collect();
    table_size_for(&vip.service, sizing_of_vip(vip), &want).unwrap_or(vip.table_size)
}

/// A VIP's table built anew by [`Maps::build_all_tables`].
#[derive(Clone, Copy, Debug)]
pub struct RebuiltTable {
    pub service: Service,
    pub size: u32,
    pub digest: u32,
    pub moved_ppm: u32,
}

/// How a running VIP's table is sized.
pub(super) fn sizing_of_vip(vip: &VipEntry) -> Sizing {
    if vip.fixed_size {
        Sizing::Fixed(vip.table_size)
    } else {
        Sizing::Auto
    }
}

/// New tables (not yet in use) of balancer `owner` for (VIP index, table
/// size, members), with
/// the digest of what each was built from, built on every CPU at once (on
/// this thread when there is one CPU or one table).
pub(super) fn build_tables(
    owner: u32,
    jobs: &[(u32, u32, &[BackendEntry])],
) -> Result<Vec<(MapHandle, u32)>> {
    let build = |(index, size, members): &(u32, u32, &[BackendEntry])| {
        let ids = table_ids(members, *size)?;
        Ok((new_table(owner, *index, &ids)?, table_digest(members)))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    if threads == 1 || jobs.len() <= 1 {
        return jobs.iter().map(build).collect();
    }
    let chunk = jobs.len().div_ceil(threads).max(1);
    let built: Vec<Result<Vec<(MapHandle, u32)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(build).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a table builder panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(jobs.len());
    for part in built {
        out.extend(part?);
    }
    Ok(out)
}
