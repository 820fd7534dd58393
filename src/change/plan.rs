//! The order of a change, as data: which steps run, in which order, for
//! each kind of change. Pure, so the unit tests below check the order the
//! executor (`mod.rs`) follows; adding a side effect to every change is one
//! line here and one arm there.

/// One step of a change to a running balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Find the balancer running in this namespace (the lock is held).
    Find,
    /// Refuse an older program's tables (`attach --replace` upgrades them).
    RequireCurrentTables,
    /// Finish what an interrupted lbctl left (`Balancer::repair`); bumps
    /// the generation if it wrote anything.
    Repair,
    /// The change itself: its writes, in their crash-safe order, and the
    /// generation bump that publishes them (`datapath`).
    Change,
    /// Make the VIP routes what the maps call for.
    PublishRoutes,
    /// Withdraw every VIP route (no balancer, or the last detach).
    WithdrawRoutes,
    /// Release lbctl's neighbour entries no backend left needs.
    ReleaseNeighbours,
    /// Remove the entries of flows whose backend the change removed or
    /// marked down, where their VIP says so (`--on-backend-gone`).
    ExpireGoneFlows,
    /// Forget the node drain (the balancer it was about is gone).
    ClearDrain,
    /// Forget the service's health records and census (same).
    ClearRecords,
    /// Record the file's health checks for `save`.
    WriteRecord,
}

impl Step {
    /// Steps a change may begin with (`opening`); the others follow it.
    pub fn opens(self) -> bool {
        matches!(
            self,
            Step::Find
                | Step::RequireCurrentTables
                | Step::Repair
                | Step::PublishRoutes
                | Step::WithdrawRoutes
        )
    }

    /// Steps that only follow a change that succeeded. The others follow
    /// a failed one too: a change that fails halfway may have written part
    /// of itself, and routes and neighbours follow what the maps hold.
    pub fn needs_success(self) -> bool {
        matches!(
            self,
            Step::ClearDrain | Step::ClearRecords | Step::WriteRecord
        )
    }
}

/// How a change begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// A change to a balancer that must run, with current tables.
    Configure,
    /// `attach`/`detach`: the balancer may be missing or run older tables.
    Attach,
    /// The service's once-a-second route check: no repair.
    Resync,
}

/// What the change is, for what follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// VIPs, backends, weights, health, timeouts, drain.
    Configure,
    /// A whole file (`lbctl apply`, `lbctl run`): records its checks.
    Apply,
    /// An interface joins or leaves, the balancer stays.
    Attach,
    /// The last interface leaves: the balancer and its maps go.
    LastDetach,
}

/// The steps before the change, once the lock is held. `found`: a
/// balancer runs in this namespace (the answer of `Step::Find`).
pub fn opening(o: Opening, found: bool) -> Vec<Step> {
    let mut steps = vec![Step::Find];
    if !found {
        // No balancer serves any VIP: no route may announce one.
        steps.push(Step::WithdrawRoutes);
        return steps;
    }
    match o {
        Opening::Configure => steps.extend([
            Step::RequireCurrentTables,
            Step::Repair,
            Step::PublishRoutes,
        ]),
        // Routes are derived from the maps, like what the repair finishes.
        Opening::Attach => steps.extend([Step::Repair, Step::PublishRoutes]),
        Opening::Resync => steps.push(Step::PublishRoutes),
    }
    steps
}

/// The change and what follows from it.
pub fn change(k: Kind) -> Vec<Step> {
    match k {
        Kind::Configure => vec![
            Step::Change,
            Step::ExpireGoneFlows,
            Step::PublishRoutes,
            Step::ReleaseNeighbours,
        ],
        Kind::Apply => vec![
            Step::Change,
            Step::ExpireGoneFlows,
            Step::PublishRoutes,
            Step::ReleaseNeighbours,
            Step::WriteRecord,
        ],
        Kind::Attach => vec![Step::Change],
        // Withdrawn first: killed before the detach, the next command's
        // repair announces them again; killed after it, no balancer is left
        // to repair, and announced routes would draw traffic to a node that
        // serves nothing. The records go last: they describe the balancer.
        Kind::LastDetach => vec![
            Step::WithdrawRoutes,
            Step::Change,
            Step::ClearDrain,
            Step::ReleaseNeighbours,
            Step::ClearRecords,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn before(steps: &[Step], a: Step, b: Step) -> bool {
        let at = |s| steps.iter().position(|x| *x == s);
        matches!((at(a), at(b)), (Some(x), Some(y)) if x < y)
    }

    #[test]
    fn a_change_begins_with_the_repair_and_its_routes() {
        let s = opening(Opening::Configure, true);
        assert_eq!(s.first(), Some(&Step::Find));
        assert!(before(&s, Step::RequireCurrentTables, Step::Repair));
        assert!(before(&s, Step::Repair, Step::PublishRoutes));
        let s = opening(Opening::Attach, true);
        assert!(before(&s, Step::Repair, Step::PublishRoutes));
        assert!(
            !s.contains(&Step::RequireCurrentTables),
            "replace upgrades older tables"
        );
        assert!(!opening(Opening::Resync, true).contains(&Step::Repair));
    }

    #[test]
    fn without_a_balancer_every_route_is_withdrawn() {
        for o in [Opening::Configure, Opening::Attach, Opening::Resync] {
            assert_eq!(opening(o, false), [Step::Find, Step::WithdrawRoutes]);
        }
    }

    #[test]
    fn routes_and_neighbours_follow_every_change_to_the_maps() {
        for k in [Kind::Configure, Kind::Apply] {
            let s = change(k);
            assert_eq!(s.first(), Some(&Step::Change));
            assert!(before(&s, Step::Change, Step::PublishRoutes));
            assert!(before(&s, Step::Change, Step::ReleaseNeighbours));
            assert!(!s.contains(&Step::WithdrawRoutes));
        }
        // Only a whole file's checks are recorded, after its routes.
        assert!(before(
            &change(Kind::Apply),
            Step::PublishRoutes,
            Step::WriteRecord
        ));
        assert!(!change(Kind::Configure).contains(&Step::WriteRecord));
    }

    #[test]
    fn the_last_detach_withdraws_before_and_forgets_after() {
        let s = change(Kind::LastDetach);
        assert_eq!(s.first(), Some(&Step::WithdrawRoutes));
        for after in [
            Step::ClearDrain,
            Step::ReleaseNeighbours,
            Step::ClearRecords,
        ] {
            assert!(before(&s, Step::Change, after), "{after:?}");
        }
        assert!(
            !s.contains(&Step::PublishRoutes),
            "nothing is left to announce"
        );
        // Another interface leaving keeps every route and record.
        assert_eq!(change(Kind::Attach), [Step::Change]);
    }

    #[test]
    fn every_plan_is_one_the_executor_runs() {
        for o in [Opening::Configure, Opening::Attach, Opening::Resync] {
            for found in [false, true] {
                assert!(opening(o, found).iter().all(|s| s.opens()), "{o:?}");
            }
        }
        for k in [Kind::Configure, Kind::Apply, Kind::Attach, Kind::LastDetach] {
            let s = change(k);
            let changes = s.iter().filter(|s| **s == Step::Change).count();
            assert_eq!(changes, 1, "{k:?} makes its change once");
            assert!(
                !s.contains(&Step::Find) && !s.contains(&Step::Repair),
                "{k:?}"
            );
        }
    }

    #[test]
    fn what_a_failed_change_skips() {
        assert!(!Step::PublishRoutes.needs_success());
        assert!(!Step::ReleaseNeighbours.needs_success());
        assert!(Step::WriteRecord.needs_success());
        assert!(Step::ClearRecords.needs_success());
    }
}
