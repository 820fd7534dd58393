//! A change to a running balancer, from one place. Every command that
//! changes one and the service go through here:
//!
//! 1. the namespace's lock ([`begin`], [`open`]);
//! 2. the balancer found, and what an interrupted lbctl left finished
//!    (`Balancer::repair`), then the routes that follow from the repair;
//! 3. the change itself ([`Session::run`]), through `datapath`, whose
//!    writes keep their crash-safe order and end with the generation bump
//!    that publishes them;
//! 4. what follows from it: VIP routes, neighbour entries no backend needs
//!    any more, the drain and health records.
//!
//! The order is data (`plan.rs`, unit-tested); the executor here runs it.
//! A new side effect of every change is a step there and an arm here.
//! `routes.rs` derives the VIP routes a balancer wants from its maps.

pub mod plan;
pub mod routes;

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Result};

use crate::conntrack;
use crate::datapath::balancer::{self, Balancer};
use crate::host::iface::{self, Attachment};
use crate::host::lock::{lock_netns, NetnsLock};
use crate::host::routes::Reconciled;
use crate::host::{drain, expired, neighbour, record, state};
use crate::model::{AttachOptions, Desired, Health, Service};
use plan::{Kind, Opening, Step};

/// A change in progress: the namespace's lock, and the balancer as found.
pub struct Session {
    _lock: NetnsLock,
    balancer: Option<Balancer>,
    /// Its id (`Maps::balancer_id`), read once: the Expiring record is
    /// written with no bpf() call between the change's last write and it.
    balancer_id: Option<u32>,
    /// The routes reconciled when the change began.
    pub opened: Reconciled,
}

/// What a change leaves for the steps after it.
#[derive(Debug, Default)]
pub struct Effects {
    /// Backends' addresses the change removed (their next hops may be
    /// released if no backend left needs them).
    pub released: Vec<IpAddr>,
    /// The file whose health checks are recorded (`Kind::Apply`).
    pub record: Option<Desired>,
    /// Backends the change removed or marked down, by VIP: their flows'
    /// entries go where the VIP says so (`Step::ExpireGoneFlows`).
    pub gone: Vec<(Service, SocketAddr)>,
}

/// What followed a change.
#[derive(Debug, Default)]
pub struct Followed {
    /// The last route reconcile (announced, withdrawn, wanted).
    pub routes: Reconciled,
    /// Entries removed for backends that went (`--on-backend-gone`).
    pub expired: usize,
}

/// Takes the lock and begins a change (`plan::opening`).
pub fn begin(o: Opening) -> Result<Session> {
    let lock = lock_netns()?;
    let balancer = Balancer::find()?;
    let balancer_id = match &balancer {
        Some(b) => Some(b.maps.balancer_id()?),
        None => None,
    };
    let mut s = Session {
        _lock: lock,
        balancer,
        balancer_id,
        opened: Reconciled::default(),
    };
    // The rows as the repair left them, for the routes after it.
    let mut repaired = None;
    for step in plan::opening(o, s.balancer.is_some()) {
        match step {
            Step::Find => {}
            Step::RequireCurrentTables => s.running()?.maps.require_current_tables()?,
            Step::Repair => {
                let known = s.balancer_id;
                let b = s.running()?;
                let id = match known {
                    Some(id) => id,
                    None => b.maps.balancer_id()?,
                };
                let interrupted = state::exists(state::Kind::Changing, id)?;
                repaired = Some(b.repair(interrupted)?.1);
                if interrupted {
                    state::forget(state::Kind::Changing, id)?;
                }
                finish_expiring(b, id)?;
            }
            Step::PublishRoutes => {
                s.opened = routes::publish(&s.running()?.maps, repaired.as_ref())
            }
            Step::WithdrawRoutes => s.opened = routes::withdraw(),
            // `plan::tests` check that no other step opens a change.
            other => bail!("internal: {other:?} does not open a change"),
        }
    }
    Ok(s)
}

/// Removes the entries a killed change was to remove (its
/// `state::Kind::Expiring` record), of backends still gone: one added back
/// or up again since keeps its flows.
fn finish_expiring(b: &Balancer, id: u32) -> Result<()> {
    let Some((text, _)) = state::read(state::Kind::Expiring, id)? else {
        return Ok(());
    };
    let run = b.maps.running()?;
    let still_gone: Vec<(Service, SocketAddr)> = parse_expiring(&text)
        .into_iter()
        .filter(|(service, backend)| {
            run.vip(service).is_some_and(|v| {
                v.on_backend_gone.expires()
                    && !run
                        .members(v)
                        .iter()
                        .any(|m| m.addr == *backend && m.health != Health::Down)
            })
        })
        .collect();
    expired::add(id, &conntrack::expire_flows(&still_gone, &run.vip_ports())?)?;
    state::forget(state::Kind::Expiring, id)
}

/// An Expiring record: a line per backend, `PROTO VIP BACKEND`.
fn expiring_text(gone: &[(Service, SocketAddr)]) -> String {
    expired::lines(gone)
}

fn parse_expiring(text: &str) -> Vec<(Service, SocketAddr)> {
    expired::parse_lines(text)
}

/// Begins a change to the running balancer (an error if none runs).
pub fn open() -> Result<Session> {
    let s = begin(Opening::Configure)?;
    s.running()?;
    Ok(s)
}

/// The service's periodic check: the routes the maps call for now (no
/// balancer: none), under the lock, without a repair.
pub fn resync() -> Result<Reconciled> {
    Ok(begin(Opening::Resync)?.opened)
}

/// Withdraws every VIP route under the lock (`lbctl run --withdraw-on-exit`).
pub fn withdraw_routes() -> Result<Reconciled> {
    let _lock = lock_netns()?;
    Ok(routes::withdraw())
}

impl Session {
    /// The balancer found when the change began.
    pub fn balancer(&self) -> Option<&Balancer> {
        self.balancer.as_ref()
    }

    /// The balancer found, which must be there.
    pub fn running(&self) -> Result<&Balancer> {
        match &self.balancer {
            Some(b) => Ok(b),
            None => Err(balancer::not_running()),
        }
    }

    /// Makes a change with `f` and runs what follows it (`plan::change`).
    /// What may follow a failed change (routes, neighbours) follows it too.
    pub fn run<T>(
        &self,
        k: Kind,
        f: impl FnOnce(&mut Effects) -> Result<T>,
    ) -> Result<(T, Followed)> {
        let (out, followed) = self.run_followed(k, f)?;
        Ok((out?, followed))
    }

    /// `run`, returning what followed a failed change too (the service
    /// logs the routes it changed either way). The outer error is a step
    /// after the change that failed.
    pub fn run_followed<T>(
        &self,
        k: Kind,
        f: impl FnOnce(&mut Effects) -> Result<T>,
    ) -> Result<(Result<T>, Followed)> {
        let mut fx = Effects::default();
        let mut f = Some(f);
        let mut out = None;
        let mut followed = Followed::default();
        for step in plan::change(k) {
            let ok = matches!(out, Some(Ok(_)) | None);
            if step.needs_success() && !ok {
                continue;
            }
            match step {
                Step::Change => {
                    out = f.take().map(|f| {
                        self.recorded(k, || {
                            let t = f(&mut fx)?;
                            // Before the change's own record goes, and with
                            // no system call but its own since the change's
                            // last write: a kill from here on leaves the
                            // entries to remove to the next repair.
                            self.note_expiring(&fx.gone)?;
                            Ok(t)
                        })
                    })
                }
                Step::PublishRoutes => {
                    followed.routes = routes::publish(&self.running()?.maps, None)
                }
                Step::WithdrawRoutes => followed.routes = routes::withdraw(),
                Step::ReleaseNeighbours if !fx.released.is_empty() => {
                    // After the last detach no backend is left to need one.
                    let still = match k {
                        Kind::LastDetach => Vec::new(),
                        _ => self.running()?.maps.backend_addrs()?,
                    };
                    neighbour::release_unused(&fx.released, &still);
                }
                Step::ReleaseNeighbours => {}
                Step::ExpireGoneFlows => {
                    // After the table no longer names the backend: the
                    // flows' next packets pick another.
                    let expiring = self.expiring(&fx.gone)?;
                    let removed = match expiring.is_empty() {
                        true => Vec::new(),
                        false => {
                            let vips = self.running()?.maps.running()?.vip_ports();
                            conntrack::expire_flows(&expiring, &vips)?
                        }
                    };
                    followed.expired += removed.iter().map(|(_, n)| n).sum::<usize>();
                    if let (false, Some(id)) = (fx.gone.is_empty(), self.balancer_id) {
                        expired::add(id, &removed)?;
                        state::forget(state::Kind::Expiring, id)?;
                    }
                }
                Step::ClearDrain => {
                    let _ = drain::clear();
                }
                Step::ClearRecords => {
                    let _ = record::clear();
                    let _ = state::clear(state::Kind::Census);
                }
                Step::WriteRecord => {
                    if let Some(d) = &fx.record {
                        record::write(self.running()?.maps.balancer_id()?, d)?;
                    }
                }
                other => bail!("internal: {other:?} is not part of a change"),
            }
        }
        let out = out.unwrap_or_else(|| Err(anyhow::anyhow!("internal: {k:?} made no change")));
        Ok((out, followed))
    }

    /// Of the backends a change removed or marked down, those whose VIP
    /// says their flows' entries go (`--on-backend-gone`).
    fn expiring(&self, gone: &[(Service, SocketAddr)]) -> Result<Vec<(Service, SocketAddr)>> {
        let mut out = Vec::new();
        let Some(b) = &self.balancer else {
            return Ok(out);
        };
        for &(service, backend) in gone {
            let policy = b.maps.find_vip(&service)?.map(|v| v.on_backend_gone);
            if policy.is_some_and(|p| p.expires()) {
                out.push((service, backend));
            }
        }
        Ok(out)
    }

    /// Records the backends the change removed or marked down
    /// (`state::Kind::Expiring`; whose VIP says their flows' entries go is
    /// decided after, from the maps), for the next repair should this
    /// lbctl die before their entries are removed.
    fn note_expiring(&self, gone: &[(Service, SocketAddr)]) -> Result<()> {
        if let (false, Some(id)) = (gone.is_empty(), self.balancer_id) {
            state::write(state::Kind::Expiring, id, &expiring_text(gone))?;
        }
        Ok(())
    }

    /// Runs a change to VIPs or backends with a record that it is under way
    /// (`state::Kind::Changing`), removed once it succeeded: a killed one
    /// leaves it, and the next repair then looks for tables no VIP has.
    fn recorded<T>(&self, k: Kind, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let id = match (k, &self.balancer) {
            (Kind::Configure | Kind::Apply, Some(b)) => b.maps.balancer_id()?,
            _ => return f(),
        };
        state::write(state::Kind::Changing, id, "")?;
        let out = f()?;
        state::forget(state::Kind::Changing, id)?;
        Ok(out)
    }

    /// Attaches to one more interface: the balancer running joins it, or
    /// the first one in this namespace starts. Returns the program's id
    /// and the notes for the operator.
    pub fn attach(&mut self, opts: &AttachOptions) -> Result<(u32, Vec<String>)> {
        let ifindex = iface::ifindex(&opts.iface)?;
        let ((id, ipv6), _) = self.run(Kind::Attach, |_| match &self.balancer {
            Some(b) => Ok((b.join(ifindex, opts)?, b.maps.has_ipv6_vips()?)),
            None => Ok((balancer::start(ifindex, opts)?, false)),
        })?;
        self.balancer = Balancer::find()?;
        Ok((id, forwarding_notes(&opts.iface, ipv6)))
    }

    /// Detaches from one interface; false if lbctl is not attached there.
    /// The last detach takes the balancer, its routes, its neighbour
    /// entries and its records with it (`Kind::LastDetach`).
    pub fn detach(&mut self, ifindex: u32) -> Result<Option<Detached>> {
        let Some(b) = &self.balancer else {
            return Ok(None);
        };
        let Some(a): Option<Attachment> = b.attachment(ifindex).cloned() else {
            return Ok(None);
        };
        let left = b.attachments.len() - 1;
        let kind = if left == 0 {
            Kind::LastDetach
        } else {
            Kind::Attach
        };
        self.run(kind, |fx| {
            if let Some(backends) = b.detach(&a)? {
                fx.released = backends;
            }
            Ok(())
        })?;
        self.balancer = Balancer::find()?;
        Ok(Some(Detached { left }))
    }
}

/// A detach done.
#[derive(Clone, Copy, Debug)]
pub struct Detached {
    /// Interfaces lbctl is still attached to (0: the balancer is gone).
    pub left: usize,
}

/// Whether lbctl may attach to `iface`: `Ok(Some(id))` when its own program
/// `id` is there already, an error when another XDP program is.
pub fn xdp_taken(iface: &str, ifindex: u32, running: Option<&Balancer>) -> Result<Option<u32>> {
    let Some((id, _)) = iface::xdp_program(ifindex)? else {
        return Ok(None);
    };
    if running.is_some_and(|b| b.attachment(ifindex).is_some()) {
        return Ok(Some(id));
    }
    let name = iface::prog_name(id).unwrap_or_default();
    bail!(
        "{iface} already runs another XDP program (id {id}, {name:?}); remove it first: ip link set dev {iface} xdp off"
    )
}

/// Notes for an interface just attached whose forwarding is off.
fn forwarding_notes(iface: &str, has_ipv6_vips: bool) -> Vec<String> {
    let mut notes = Vec::new();
    if !iface::ipv4_forwarding(iface) {
        notes.push(format!(
            "IPv4 forwarding is off on {iface}: balanced packets go to the stack, which drops them; enable it with sysctl -w net.ipv4.conf.{iface}.forwarding=1 (or net.ipv4.ip_forward=1)"
        ));
    }
    if has_ipv6_vips && !iface::ipv6_forwarding(iface) {
        notes.push(iface::ipv6_forwarding_off(&[iface]));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiring_record_round_trips() {
        let gone: Vec<(Service, SocketAddr)> = vec![
            (
                Service {
                    addr: "198.18.100.1:80".parse().unwrap(),
                    proto: crate::model::Proto::Udp,
                },
                "198.18.1.11:8080".parse().unwrap(),
            ),
            (
                Service {
                    addr: "[2001:db8::1]:443".parse().unwrap(),
                    proto: crate::model::Proto::Tcp,
                },
                "[2001:db8:1::11]:8443".parse().unwrap(),
            ),
        ];
        assert_eq!(parse_expiring(&expiring_text(&gone)), gone);
        assert!(parse_expiring("udp nonsense\n").is_empty());
    }
}
