//! `Desired` → the running balancer, changing only what differs: the whole
//! file is checked against what runs first (nothing is changed if any of it
//! cannot be applied), then timeouts, removed VIPs, new VIPs with their
//! backends (`Maps::add_vips_with_backends`: one table build per VIP, all
//! swapped in with one batch update), and each other VIP's backends in one
//! `Maps::set_backends` call (at most one table build and swap per VIP,
//! none where backends and weights are unchanged).
//! Applying the same file twice changes nothing the second time.
//! What follows an apply (routes, neighbours released, the health record)
//! is `change`'s: callers go through `change::Session::run`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Result};

use crate::change::Effects;
use crate::datapath::abi::{LB_MAX_BACKENDS, LB_MAX_VIPS};
use crate::datapath::backends::{weight_in, BackendChanges};
use crate::datapath::maps::Maps;
use crate::datapath::running::Running;
use crate::datapath::tables::table_size_for;
use crate::host::iface;
use crate::host::neighbour;
use crate::model::{
    Affinity, Desired, DesiredVip, Health, NatMode, OnBackendGone, Service, StartHealth, Timeout,
    VipSpec,
};
use crate::prefix;
use crate::table_size::Sizing;

/// What an apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub timeouts: bool,
    pub vips_added: usize,
    pub vips_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_reweighted: usize,
    /// Backends whose VIP lost its health checks, back to unchecked.
    pub health_cleared: usize,
    /// VIPs whose client affinity changed (their new flows only).
    pub affinity_changed: usize,
    /// VIPs whose source allowlist changed (their new flows only).
    pub allow_changed: usize,
    /// VIPs whose on-backend-gone policy changed.
    pub on_backend_gone_changed: usize,
    /// VIPs whose limit on new flows changed.
    pub limits_changed: usize,
    pub tables_rebuilt: usize,
    /// Notes for the operator (neighbours that could not be kept resolved).
    pub notes: Vec<String>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        *self
            == Applied {
                notes: self.notes.clone(),
                ..Default::default()
            }
    }
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut parts = Vec::new();
        for (n, what) in [
            (self.vips_added, "VIPs added"),
            (self.vips_removed, "VIPs removed"),
            (self.backends_added, "backends added"),
            (self.backends_removed, "backends removed"),
            (self.backends_reweighted, "weights changed"),
            (self.health_cleared, "backends no longer checked"),
            (self.affinity_changed, "affinities changed"),
            (self.allow_changed, "allowlists changed"),
            (
                self.on_backend_gone_changed,
                "on-backend-gone policies changed",
            ),
            (self.limits_changed, "limits changed"),
            (self.tables_rebuilt, "tables rebuilt"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if self.timeouts {
            parts.push("timeouts set".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// Checks `desired` against the running balancer and fills in what the
/// file leaves to the balancer (fullnat's source address: the first
/// attached interface's). Errors say what cannot be applied; nothing has
/// been changed when one is returned.
pub fn resolve(
    maps: &Maps,
    run: &Running,
    attached: &[String],
    desired: &Desired,
) -> Result<Desired> {
    let mut d = desired.clone();
    for name in &d.interfaces {
        if !attached.contains(name) {
            bail!("interface {name} is in the file but lbctl is not attached to it (lbctl run attaches the file's interfaces; or lbctl attach {name})");
        }
    }
    let cfg = maps.settings()?;
    if let Some(seed) = d.hash_seed.filter(|s| *s != cfg.hash_seed) {
        bail!(
            "hash_seed {seed} differs from the running balancer's {}: it is set when the first interface is attached",
            cfg.hash_seed
        );
    }
    let running_cache = maps.flow_cache_size();
    if let Some(size) = d.flow_cache_size.filter(|s| Some(*s) != running_cache) {
        bail!(
            "flow_cache_size {size} differs from the running balancer's {}: change it with lbctl attach IFACE --replace --flow-cache-size {size}",
            running_cache.map_or("(none)".into(), |s| s.to_string())
        );
    }
    for v in d.vips.iter_mut() {
        if v.spec.mode.has_source() && v.spec.snat.is_none() {
            let names = attached.iter().map(String::as_str);
            v.spec.snat = Some(iface::fullnat_source(names, v.spec.service.addr.is_ipv6())?);
        }
        let running = run.vip(&v.spec.service);
        if let Some(r) = running {
            let size = r.fixed_size.then_some(r.table_size);
            if (r.mode, r.snat, size) != (v.spec.mode, v.spec.snat, v.spec.table_size) {
                bail!(
                    "VIP {} runs as {} in the balancer but the file says {}: apply does not change a VIP's mode, snat or table size in place; remove the VIP from the file, apply, then add it back",
                    v.spec.service,
                    describe(r.mode, r.snat, size),
                    describe(v.spec.mode, v.spec.snat, v.spec.table_size)
                );
            }
            if r.ports != v.spec.ports {
                bail!(
                    "VIP {} takes ports {}-{} in the balancer but the file says {}: apply does not change a VIP's ports in place; remove the VIP from the file, apply, then add it back",
                    r.name(),
                    r.ports.first,
                    r.ports.last,
                    v.spec.name()
                );
            }
        }
    }
    if let Some((_, problem)) = offline_problems(&d).into_iter().next() {
        bail!("{problem}");
    }
    Ok(d)
}

/// What apply refuses in a file without asking the balancer, for the whole
/// file before anything changes (`lbctl check` reports the same): a backend
/// that would get no slot of its VIP's table, more VIPs or backends than a
/// balancer holds. Each problem with the index in `d.vips` of the VIP it is
/// about (None: the file as a whole).
pub fn offline_problems(d: &Desired) -> Vec<(Option<usize>, String)> {
    let mut out = Vec::new();
    for (i, v) in d.vips.iter().enumerate() {
        let sizing = v.spec.table_size.map_or(Sizing::Auto, Sizing::Fixed);
        if let Err(e) = table_size_for(&v.spec.service, sizing, &v.backends) {
            out.push((Some(i), e.to_string()));
        }
    }
    if d.vips.len() > LB_MAX_VIPS as usize {
        let n = d.vips.len();
        out.push((
            Some(LB_MAX_VIPS as usize),
            format!("{n} VIPs: a balancer holds at most {LB_MAX_VIPS}"),
        ));
    }
    let backends: usize = d.vips.iter().map(|v| v.backends.len()).sum();
    if backends > LB_MAX_BACKENDS as usize {
        out.push((
            None,
            format!("{backends} backends: a balancer holds at most {LB_MAX_BACKENDS}"),
        ));
    }
    out
}

fn describe(mode: NatMode, snat: Option<IpAddr>, table_size: Option<u32>) -> String {
    let size = table_size.map_or("table sized by lbctl".to_string(), |s| {
        format!("table size {s}")
    });
    match snat {
        Some(s) => format!("{} (snat {s}, {size})", mode.name()),
        None => format!("{} ({size})", mode.name()),
    }
}

/// Checks, then applies `desired` to the balancer whose maps these are
/// (`attached`: the interfaces it is attached to). Call with the
/// namespace's lock held. Nothing follows it here (see `apply_noting`).
pub fn apply(maps: &Maps, attached: &[String], desired: &Desired) -> Result<Applied> {
    apply_noting(
        maps,
        attached,
        desired,
        Checks::NotRun,
        &mut Effects::default(),
    )
}

/// Whether health checks run beside the balancer this apply changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checks {
    /// `lbctl run`: a backend added to a checked VIP starts as its check's
    /// `start` says (down by default, until `rise` checks pass).
    Run,
    /// `lbctl apply`: nothing would ever check a backend that started
    /// down, so every new backend starts unchecked.
    NotRun,
}

/// `apply` as a change (`change::plan::Kind::Apply`): notes in `fx` the
/// backends it removed and the file to record, for the steps after it.
pub fn apply_noting(
    maps: &Maps,
    attached: &[String],
    desired: &Desired,
    checks: Checks,
    fx: &mut Effects,
) -> Result<Applied> {
    let mut run = maps.running()?;
    let d = resolve(maps, &run, attached, desired)?;
    let mut done = Applied::default();
    let start_down = match checks {
        Checks::Run => starting_down(&d),
        Checks::NotRun => Vec::new(),
    };

    // Next hops first: killed after them, resolved neighbour entries are
    // left (harmless); after the maps, every backend has its hop. Every
    // backend's, not only new ones': a link that went down took lbctl's
    // entries with it, and an apply (a reload) is how they come back
    // (README, "Known limits"). An entry already there costs a lookup.
    let mut resolved: BTreeSet<IpAddr> = BTreeSet::new();
    for v in &d.vips {
        for (addr, _) in &v.backends {
            if resolved.insert(addr.ip()) {
                if let Some(note) = neighbour::keep_resolved(addr.ip()) {
                    done.notes.push(note);
                }
            }
        }
    }

    if !timeout_changes(maps, &d)?.is_empty() {
        maps.set_timeouts(&d.timeouts)?;
        done.timeouts = true;
    }

    let gone = vips_gone(&run, &d);
    let released = maps.del_vips(&mut run, &gone)?;
    done.vips_removed = gone.len();
    done.backends_removed += released.len();
    let mut released: Vec<IpAddr> = released.iter().map(|b| b.addr.ip()).collect();

    // New VIPs together: one table build each, all swapped in at once.
    let new: Vec<(VipSpec, Vec<(SocketAddr, u32)>)> = vips_new(&run, &d)
        .map(|v| (v.spec.clone(), v.backends.clone()))
        .collect();
    done.vips_added = maps.add_vips_with_backends(&mut run, &new, &start_down)?;
    done.tables_rebuilt += new.len();
    done.backends_added += new.iter().map(|(_, b)| b.len()).sum::<usize>();
    for v in &d.vips {
        apply_vip(
            maps,
            &mut run,
            v,
            &start_down,
            &mut done,
            &mut released,
            &mut fx.gone,
        )?;
    }
    fx.released = released;
    fx.record = Some(desired.clone());
    Ok(done)
}

/// The backends that start down if added now: those whose checks say
/// `start = "down"` (the default).
fn starting_down(d: &Desired) -> Vec<(Service, SocketAddr)> {
    d.vips
        .iter()
        .flat_map(|v| {
            v.backends
                .iter()
                .filter(|(a, _)| v.check_of(*a).is_some_and(|c| c.start == StartHealth::Down))
                .map(|(a, _)| (v.spec.service, *a))
        })
        .collect()
}

/// The timeouts the file sets that differ from the running ones: (which,
/// now, wanted).
fn timeout_changes(maps: &Maps, d: &Desired) -> Result<Vec<(Timeout, u32, u32)>> {
    let cfg = maps.settings()?;
    let mut out = Vec::new();
    for which in Timeout::ALL {
        let now = match which {
            Timeout::Tcp => cfg.tcp_timeout_s,
            Timeout::Tcpfin => cfg.tcp_fin_timeout_s,
            Timeout::Udp => cfg.udp_timeout_s,
            Timeout::Syn => maps.handshake_timeout()?,
            Timeout::UdpUnreplied => maps.udp_unreplied_timeout()?,
        };
        if let Some(want) = d.timeouts.get(which).filter(|w| *w != now) {
            out.push((which, now, want));
        }
    }
    Ok(out)
}

/// The running VIPs the file does not have.
fn vips_gone(run: &Running, d: &Desired) -> Vec<Service> {
    run.vips
        .iter()
        .map(|v| v.service)
        .filter(|s| d.vip(s).is_none())
        .collect()
}

/// The file's VIPs that do not run yet.
fn vips_new<'a>(run: &'a Running, d: &'a Desired) -> impl Iterator<Item = &'a DesiredVip> {
    d.vips.iter().filter(|v| run.vip(&v.spec.service).is_none())
}

/// The backends that lose their health state when their checks go from
/// the file: every checked member that the file no longer checks.
fn health_to_clear(run: &Running, v: &DesiredVip) -> Result<Vec<(Service, SocketAddr, Health)>> {
    let service = v.spec.service;
    let vip = run.require_vip(&service)?;
    Ok(run
        .members(&vip)
        .iter()
        .filter(|b| b.health != Health::Unchecked && v.check_of(b.addr).is_none())
        .map(|b| (service, b.addr, Health::Unchecked))
        .collect())
}

/// What `apply` would change on this balancer, one line each, in the order
/// apply makes the changes, and its summary: `lbctl apply --dry-run`.
/// Reads the maps, writes nothing; the same checks as apply first.
pub fn plan(maps: &Maps, attached: &[String], desired: &Desired) -> Result<(Vec<String>, Applied)> {
    let run = maps.running()?;
    let d = resolve(maps, &run, attached, desired)?;
    let mut lines = Vec::new();
    let mut sum = Applied::default();
    for (which, now, want) in timeout_changes(maps, &d)? {
        lines.push(format!("~ timeout {} {now} -> {want} s", which.name()));
        sum.timeouts = true;
    }
    for service in vips_gone(&run, &d) {
        let vip = run.require_vip(&service)?;
        let members = run.members(&vip);
        lines.push(format!("- vip {service} ({} backends)", members.len()));
        sum.vips_removed += 1;
        sum.backends_removed += members.len();
    }
    for v in vips_new(&run, &d) {
        let service = v.spec.service;
        let affinity = match v.spec.affinity {
            Affinity::None => String::new(),
            a => format!(", affinity {a}"),
        };
        let allow = match v.spec.on_backend_gone {
            OnBackendGone::Keep => String::new(),
            p => format!(", on-backend-gone {p}"),
        } + &match v.spec.allow.is_empty() {
            true => String::new(),
            false => format!(", allow {}", prefix::describe(&v.spec.allow)),
        } + &match v.spec.max_new_flows {
            None => String::new(),
            Some(n) => format!(", max-new-flows {n}"),
        };
        lines.push(format!(
            "+ vip {service} {}{affinity}{allow}",
            describe(v.spec.mode, v.spec.snat, v.spec.table_size)
        ));
        for (addr, weight) in &v.backends {
            lines.push(format!("+ backend {service} {addr} weight {weight}"));
        }
        sum.vips_added += 1;
        sum.backends_added += v.backends.len();
        sum.tables_rebuilt += 1;
    }
    for v in d.vips.iter().filter(|v| run.vip(&v.spec.service).is_some()) {
        let service = v.spec.service;
        let vip = run.require_vip(&service)?;
        let members = run.members(&vip);
        // A setting changed in place: one line, one count.
        let mut setting = |what: &str, differ: bool, old: String, new: String, n: &mut usize| {
            if differ {
                lines.push(format!("~ vip {service} {what} {old} -> {new}"));
                *n += 1;
            }
        };
        let (a, b) = (vip.affinity, v.spec.affinity);
        setting(
            "affinity",
            a != b,
            a.to_string(),
            b.to_string(),
            &mut sum.affinity_changed,
        );
        let (a, b) = (&vip.allow, &v.spec.allow);
        let (old, new) = (prefix::describe(a), prefix::describe(b));
        setting("allow", a != b, old, new, &mut sum.allow_changed);
        let (a, b) = (vip.on_backend_gone, v.spec.on_backend_gone);
        let n = &mut sum.on_backend_gone_changed;
        setting("on-backend-gone", a != b, a.to_string(), b.to_string(), n);
        let (a, b) = (vip.max_new_flows, v.spec.max_new_flows);
        let (old, new) = (limit_name(a), limit_name(b));
        setting("max-new-flows", a != b, old, new, &mut sum.limits_changed);
        let changes = BackendChanges::between(&members, &v.backends);
        for &addr in &changes.added {
            let weight = weight_in(&v.backends, addr);
            lines.push(format!("+ backend {service} {addr} weight {weight}"));
        }
        for addr in &changes.removed {
            lines.push(format!("- backend {service} {addr}"));
        }
        for &addr in &changes.reweighted {
            let old = members
                .iter()
                .find(|b| b.addr == addr)
                .map_or(0, |b| b.weight);
            let new = weight_in(&v.backends, addr);
            lines.push(format!("~ backend {service} {addr} weight {old} -> {new}"));
        }
        let cleared = health_to_clear(&run, v)?;
        for (_, addr, _) in &cleared {
            lines.push(format!("~ backend {service} {addr} no longer checked"));
        }
        let down_cleared = cleared.iter().any(|(_, addr, _)| {
            members
                .iter()
                .any(|b| b.addr == *addr && b.health == Health::Down)
        });
        // As apply does them: the backends' change, then the health's.
        for rebuilt in [changes.table_rebuilt, down_cleared] {
            if rebuilt {
                lines.push(format!("~ table {service} rebuilt"));
                sum.tables_rebuilt += 1;
            }
        }
        sum.backends_added += changes.added.len();
        sum.backends_removed += changes.removed.len();
        sum.backends_reweighted += changes.reweighted.len();
        sum.health_cleared += cleared.len();
    }
    Ok((lines, sum))
}

/// A limit on new flows as the dry run shows it.
fn limit_name(n: Option<u32>) -> String {
    n.map_or_else(|| "none".into(), |n| n.to_string())
}

fn apply_vip(
    maps: &Maps,
    run: &mut Running,
    v: &DesiredVip,
    start_down: &[(Service, SocketAddr)],
    done: &mut Applied,
    released: &mut Vec<IpAddr>,
    gone: &mut Vec<(Service, SocketAddr)>,
) -> Result<()> {
    let service = v.spec.service;
    if maps.set_flag(run, &service, v.spec.affinity)? {
        done.affinity_changed += 1;
    }
    if maps.set_allowlist(run, &service, &v.spec.allow)? {
        done.allow_changed += 1;
    }
    if maps.set_flag(run, &service, v.spec.on_backend_gone)? {
        done.on_backend_gone_changed += 1;
    }
    if maps.set_max_new_flows(run, &service, v.spec.max_new_flows)? {
        done.limits_changed += 1;
    }
    let changes = maps.set_backends(run, &service, &v.backends, start_down)?;
    done.backends_added += changes.added.len();
    done.backends_removed += changes.removed.len();
    done.backends_reweighted += changes.reweighted.len();
    done.tables_rebuilt += changes.table_rebuilt as usize;
    released.extend(changes.removed.iter().map(|a| a.ip()));
    // Their flows' entries follow the VIP's policy (`Step::ExpireGoneFlows`).
    gone.extend(changes.removed.iter().map(|a| (service, *a)));
    let checked = health_to_clear(run, v)?;
    if !checked.is_empty() {
        let before = run.require_vip(&service)?.table_digest;
        done.health_cleared += maps.set_health(run, &checked, 0)?.len();
        if run.require_vip(&service)?.table_digest != before {
            done.tables_rebuilt += 1;
        }
    }
    Ok(())
}
