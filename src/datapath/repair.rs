//! The repair every change starts with: it finishes whatever an lbctl killed
//! halfway left, so the maps are again what `lbctl list` shows and what the
//! data path serves. Each change in `config.rs` has one write that commits
//! it (the VIP entry, the backend row, a row's LEAVING flag); everything
//! after that write is derived from the VIPs and rows, and recomputed here:
//!
//! 1. every row of a VIP has its reply source and prefilter bit (a `backend
//!    add` killed before registering them) — before any table names it;
//! 2. every VIP's table is built from its members, at the size they call
//!    for (a change killed between its row writes and its table swap);
//! 3. no table is left at an index no VIP has (a `vip add` killed before
//!    its VIP entry, a `vip del` after it; looked for only after a change
//!    was killed, which `change` records);
//! 4. rows no table names any more are cleared: rows of no VIP (a `vip
//!    del` killed after its VIP entry went, an apply killed before a new
//!    VIP's entry came) and rows being removed (a `backend del` killed
//!    after marking its row);
//! 5. reply sources are recounted from the rows that are left, and the
//!    prefilter recomputed (bits of addresses gone are cleared);
//! 6. and, where anything was written, the generation is bumped.
//!
//! `Balancer::repair` adds the attachments: the redirect map holds exactly
//! the interfaces lbctl is attached to.

use anyhow::Result;

use super::maps::Maps;
use super::running::Running;
use super::table_names::tables_of;
use super::tables::table_digest;

/// What a repair found to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    pub reply_sources: bool,
    pub tables_rebuilt: usize,
    pub tables_removed: usize,
    pub rows_cleared: usize,
    pub prefilter: bool,
    /// The redirect map was brought to the attached interfaces.
    pub ports: bool,
}

impl Repaired {
    pub fn is_empty(&self) -> bool {
        *self == Repaired::default()
    }
}

impl Maps {
    /// Finishes what an interrupted change left (see the module's doc).
    /// Writes nothing when there is nothing to finish. Tables at indexes no
    /// VIP has are looked for only after a change was `interrupted` (only
    /// a killed `vip add`, `vip del` or apply leaves one): the search lists
    /// every map of the host, and a change's work should not depend on what
    /// else runs there. Returns the VIPs and backends as the repair left
    /// them too, so what follows need not read 65,536 rows again.
    pub fn repair(&self, interrupted: bool) -> Result<(Repaired, Running)> {
        if self.legacy_tables()? {
            // An older program's tables cannot be written: its upgrade
            // (attach --replace) builds them all anew, then repairs.
            return Ok((Repaired::default(), self.running()?));
        }
        let mut run = self.running()?;
        let mut done = Repaired {
            reply_sources: self.sync_reply_sources(&run, None)?,
            ..Default::default()
        };
        for vip in run.vips.clone() {
            let members = run.members(&vip);
            if table_digest(&members) != vip.table_digest {
                self.rebuild_table_if_changed(&mut run, &vip, &members)?;
                done.tables_rebuilt += 1;
            }
        }
        let orphans = match interrupted {
            true => self.orphan_table_indices(&run)?,
            false => Vec::new(),
        };
        for index in orphans {
            let what = format_args!("the table of VIP index {index} (no VIP has it)");
            self.vip_tables.remove(&index.to_ne_bytes(), &what)?;
            done.tables_removed += 1;
        }
        let dead: Vec<u32> = run
            .backends
            .iter()
            .filter(|b| b.leaving || run.vip_of(b).is_none())
            .map(|b| b.id)
            .collect();
        for &id in &dead {
            self.clear_backend_row(id)?;
        }
        done.rows_cleared = dead.len();
        run.backends.retain(|b| !dead.contains(&b.id));
        if !dead.is_empty() {
            self.sync_reply_sources(&run, None)?;
        }
        done.prefilter = self.rebuild_prefilter()?;
        if !done.is_empty() {
            self.bump_generation()?;
        }
        Ok((done, run))
    }

    /// The VIP indexes no VIP has that hold a table. Only indexes where a
    /// table named for this balancer exists are read (one slot each), not
    /// all 1,024 (`table_names.rs` says why); an orphan is a table this
    /// lbctl put in place, so it bears that name.
    fn orphan_table_indices(&self, run: &Running) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for (index, _) in tables_of(self.balancer_id()?)? {
            if run.vips.iter().any(|v| v.index == index) || out.contains(&index) {
                continue;
            }
            let what = format_args!("the table of VIP index {index}");
            if self
                .vip_tables
                .get::<u32>(&index.to_ne_bytes(), &what)?
                .is_some()
            {
                out.push(index);
            }
        }
        Ok(out)
    }
}

/// What a read of the maps (`Running`) says is left to repair, without
/// writing: for `lbctl list`, which does not change anything, to say that
/// an interrupted change is still to be finished.
pub fn pending(run: &Running) -> Vec<String> {
    let mut out = Vec::new();
    for vip in &run.vips {
        if table_digest(&run.members(vip)) != vip.table_digest {
            out.push(format!(
                "the table of VIP {} is older than its backends",
                vip.service
            ));
        }
    }
    let dead = run
        .backends
        .iter()
        .filter(|b| b.leaving || run.vip_of(b).is_none())
        .count();
    if dead > 0 {
        out.push(format!("{dead} backend row(s) of deleted VIPs or backends"));
    }
    out
}
