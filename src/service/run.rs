//! `lbctl run -f FILE`: the service. A loop around the library's
//! configuration API, not a second implementation of it:
//!
//! 1. attach the file's interfaces (or join the balancer already running
//!    on them), apply the file (`apply::apply`), serve metrics if asked;
//! 2. probe every checked backend (`health::schedule`) and record each
//!    health change in the maps (`Maps::set_health`), one log line each;
//! 3. SIGHUP: read the file again and apply it the same way (a bad file
//!    changes nothing and is logged); one log line per reload;
//! 4. SIGTERM or SIGINT: stop, leaving the data path running with its
//!    configuration (a new `lbctl run` picks it up with no connection
//!    reset), or with `--detach-on-exit` detach from the file's
//!    interfaces, and with `--withdraw-on-exit` withdraw every VIP route;
//! 5. open flows per backend counted in the background (`census.rs`), for
//!    `/metrics` and `list --stats`;
//! 6. VIP routes (`routes.rs`): reconciled after every change it makes
//!    (apply, reload, health change) and once a second, which puts right
//!    what a killed lbctl or someone else's `ip route` left, and honours a
//!    node drain (`lbctl drain`).
//!
//! Changes take the namespace's lock only while they are made, so `lbctl`
//! commands keep working beside the service. Every change goes through
//! `change` as the commands' do (lock, repair, what follows).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::census::Latest;
use super::health::schedule::{CheckResult, Checker};
use super::health::through_vip::Path;
use super::health::tracker::Tracker;
use super::health::Target;
use super::metrics::{self, Metrics};
use super::replication::Watch;
use super::signals::{self, Signal};
use super::{apply, notify};
use crate::change::plan::{Kind, Opening};
use crate::change::{self};
use crate::config_file;
use crate::datapath::backends::unix_now;
use crate::datapath::balancer::Balancer;
use crate::datapath::load;
use crate::host::drain;
use crate::host::iface;
use crate::host::neighbour;
use crate::host::routes::Reconciled;
use crate::model::{AttachOptions, Desired, Health, NatMode, Service, XdpMode};

/// How often the routes are reconciled without a change of lbctl's.
const ROUTE_RESYNC: Duration = Duration::from_secs(1);
/// How often backends' neighbour entries gone since (a link flap takes
/// them) are asked for again: each costs a route and a neighbour lookup
/// per distinct backend address.
const NEIGHBOUR_RESYNC: Duration = Duration::from_secs(5);

/// What `lbctl run` is asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub file: PathBuf,
    /// The file as read at start.
    pub desired: Desired,
    pub metrics: Option<SocketAddr>,
    pub detach_on_exit: bool,
    pub withdraw_on_exit: bool,
    /// conntrackd's control socket, for `/metrics` (`replication::Watch`).
    pub conntrackd: Option<PathBuf>,
}

enum Event {
    Signal(Signal),
    Check(CheckResult),
}

/// One line on stderr (journald keeps it).
fn log(msg: impl std::fmt::Display) {
    eprintln!("lbctl: {msg}");
}

pub fn run(opts: &RunOptions) -> Result<()> {
    load::require_privileges()?;
    load::require_btf()?;
    load::require_kernel()?;
    // Before any thread exists, so every thread has them blocked.
    signals::block()?;
    let listener = opts.metrics.map(metrics::bind).transpose()?;
    let (tx, rx) = mpsc::channel();
    signals::forward(tx.clone(), Event::Signal);

    let attached = attach_interfaces(&opts.desired)?;
    let done = apply_locked(&opts.desired)?;
    log(format_args!(
        "running: {}; applied {}: {done}",
        attached,
        opts.file.display()
    ));
    // Open flows are counted in the background, for /metrics and `list
    // --stats` alike.
    let metrics = Metrics::default().with_census(Latest::spawn());
    let metrics = match listener {
        // Watched only where it is shown.
        Some(_) => metrics.with_replication(Watch::spawn(opts.conntrackd.clone())),
        None => metrics,
    };
    if let Some(l) = listener {
        let at = l.local_addr()?;
        metrics.clone().serve(l);
        log(format_args!("metrics at http://{at}/metrics"));
    }
    let mut svc = Runner {
        file: opts.file.clone(),
        desired: opts.desired.clone(),
        targets: Vec::new(),
        trackers: HashMap::new(),
        checker: None,
        generation: 0,
        metrics,
        events: tx,
    };
    svc.start_checks();
    notify::notify("READY=1");

    // Health results arrive more often than once a second: the resync
    // keeps its own clock.
    let mut resync_at = Instant::now() + ROUTE_RESYNC;
    let mut neighbours_at = Instant::now() + NEIGHBOUR_RESYNC;
    let stopped_by = loop {
        let wait = resync_at
            .min(neighbours_at)
            .saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Event::Signal(Signal::Hangup)) => svc.reload(),
            Ok(Event::Signal(Signal::Terminate(name))) => break name,
            Ok(Event::Check(r)) => svc.on_result(r),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break "a lost channel",
        }
        if Instant::now() >= resync_at {
            resync_routes();
            resync_at = Instant::now() + ROUTE_RESYNC;
        }
        if Instant::now() >= neighbours_at {
            svc.restore_neighbours();
            neighbours_at = Instant::now() + NEIGHBOUR_RESYNC;
        }
    };
    notify::notify("STOPPING=1");
    svc.checker = None; // joins the probe threads
    if opts.withdraw_on_exit && !opts.detach_on_exit {
        let r = change::withdraw_routes()?;
        log_routes(&r);
        log(format_args!(
            "{stopped_by}: withdrew every VIP route (--withdraw-on-exit); the next lbctl change or lbctl run announces them again unless the node is drained"
        ));
    }
    if opts.detach_on_exit {
        detach_interfaces(&svc.desired)?;
        log(format_args!(
            "{stopped_by}: stopped, detached from {}",
            svc.desired.interfaces.join(", ")
        ));
    } else {
        log(format_args!(
            "{stopped_by}: stopped; the data path keeps running with its configuration (lbctl run picks it up again)"
        ));
    }
    Ok(())
}

/// Attaches every interface of the file lbctl is not yet attached to (the
/// first one in this namespace loads the program; later ones join it).
/// Every interface is checked before any is attached.
fn attach_interfaces(d: &Desired) -> Result<String> {
    let mut s = change::begin(Opening::Attach)?;
    let mut todo = Vec::new();
    for name in &d.interfaces {
        let ifindex = iface::ifindex(name)?;
        if change::xdp_taken(name, ifindex, s.balancer())?.is_none() {
            todo.push((name.clone(), ifindex));
        }
    }
    for (name, _) in &todo {
        let opts = AttachOptions {
            iface: name.clone(),
            mode: d.xdp_mode.unwrap_or(XdpMode::Auto),
            foreground: false,
            replace: false,
            hash_seed: d.hash_seed,
            flow_cache_size: d.flow_cache_size,
        };
        for note in s.attach(&opts)?.1 {
            log(format_args!("note: {note}"));
        }
    }
    let b = s.running()?;
    let names: Vec<&str> = b.attachments.iter().map(|a| a.ifname.as_str()).collect();
    let fresh: Vec<&str> = todo.iter().map(|(n, _)| n.as_str()).collect();
    Ok(if fresh.is_empty() {
        format!("joined the balancer on {}", names.join(", "))
    } else {
        format!(
            "attached to {} (now on {})",
            fresh.join(", "),
            names.join(", ")
        )
    })
}

/// Applies a file under the namespace's lock and records its health checks.
fn apply_locked(d: &Desired) -> Result<apply::Applied> {
    let s = change::open()?;
    let b = s.running()?;
    let attached: Vec<String> = b.attachments.iter().map(|a| a.ifname.clone()).collect();
    let (done, after) = s.run_followed(Kind::Apply, |fx| {
        apply::apply_noting(&b.maps, &attached, d, apply::Checks::Run, fx)
    })?;
    log_routes(&after.routes);
    let done = done?;
    if drain::is_drained(b.maps.balancer_id()?) {
        log("this node is drained: its VIP routes stay withdrawn (lbctl undrain)");
    }
    for note in &done.notes {
        log(format_args!("note: {note}; first packets may wait for ARP"));
    }
    Ok(done)
}

fn detach_interfaces(d: &Desired) -> Result<()> {
    let mut s = change::begin(Opening::Attach)?;
    for name in &d.interfaces {
        if s.balancer().is_none() {
            return Ok(());
        }
        s.detach(iface::ifindex(name)?)?;
    }
    Ok(())
}

struct Runner {
    file: PathBuf,
    desired: Desired,
    /// What the current checker probes (results name an index here).
    targets: Vec<Target>,
    trackers: HashMap<(Service, SocketAddr), Tracker>,
    checker: Option<Checker>,
    /// Bumped with every new checker: results of an older one are dropped.
    generation: u64,
    metrics: Metrics,
    events: Sender<Event>,
}

/// How a VIP's checks reach its backends: through the VIP for dsr and
/// tunnel (from the tunnel's source, `source()`), else at their address.
fn check_path(mode: NatMode, source: impl FnOnce() -> Option<IpAddr>) -> Option<Path> {
    match mode {
        NatMode::Dsr => Some(Path::Dsr),
        NatMode::Tunnel => source().map(|source| Path::Tunnel { source }),
        NatMode::Dnat | NatMode::Fullnat => None,
    }
}

impl Runner {
    /// (Re)starts the probes for the current file, keeping each backend's
    /// rise/fall count if it is still checked; a backend new to checks
    /// starts from the health the maps record.
    fn start_checks(&mut self) {
        self.checker = None;
        let running = Balancer::require().and_then(|b| b.maps.running());
        if let Err(e) = &running {
            log(format_args!("health: reading the running VIPs: {e:#}"));
        }
        let running = running.ok();
        self.targets = self
            .desired
            .vips
            .iter()
            .flat_map(|v| {
                let path = check_path(v.spec.mode, || {
                    let vip = running.as_ref()?.vip(&v.spec.service);
                    v.spec.snat.or(vip?.snat)
                });
                v.backends.iter().filter_map(move |(addr, _)| {
                    Some(Target {
                        service: v.spec.service,
                        backend: *addr,
                        check: v.check_of(*addr)?.clone(),
                        path,
                    })
                })
            })
            .collect();
        // A reload reads the checks' CA files again.
        super::health::tls::forget();
        let recorded: HashMap<(Service, SocketAddr), Health> = running
            .iter()
            .flat_map(|run| {
                run.vips.iter().flat_map(move |v| {
                    run.members(v)
                        .into_iter()
                        .map(move |m| ((v.service, m.addr), m.health))
                })
            })
            .collect();
        let keep: Vec<(Service, SocketAddr)> = self
            .targets
            .iter()
            .map(|t| (t.service, t.backend))
            .collect();
        self.trackers.retain(|k, _| keep.contains(k));
        for k in keep {
            self.trackers.entry(k).or_insert_with(|| {
                Tracker::new(recorded.get(&k).copied().unwrap_or(Health::Unchecked))
            });
        }
        self.generation += 1;
        if !self.targets.is_empty() {
            self.checker = Some(Checker::start(
                self.targets.clone(),
                self.generation,
                self.events.clone(),
                Event::Check,
            ));
        }
    }

    /// Backends' next hops whose entries are gone, asked for again (what
    /// a reload's apply does for all of them), so a link that went down
    /// and came back needs no reload (README, "Known limits").
    fn restore_neighbours(&self) {
        let addrs = self
            .desired
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|(a, _)| a.ip()));
        for line in neighbour::restore_missing(addrs) {
            log(format_args!("neighbours: {line}"));
        }
    }

    fn on_result(&mut self, r: CheckResult) {
        if r.generation != self.generation {
            return;
        }
        let Some(t) = self.targets.get(r.target) else {
            return;
        };
        self.metrics.observe_check(&t.service, t.backend, r.latency);
        let Some(tracker) = self.trackers.get_mut(&(t.service, t.backend)) else {
            return;
        };
        let (rise, fall) = (t.check.rise, t.check.fall);
        let Some(health) = tracker.record(r.result.is_ok(), rise, fall) else {
            return;
        };
        let why = match (&r.result, health) {
            (Err(e), _) => format!("{fall} checks in a row failed, the last: {e}"),
            (Ok(()), Health::Up) if tracker.streak < rise => "its first check passed".into(),
            _ => format!("{} checks in a row passed", tracker.streak),
        };
        let (service, backend) = (t.service, t.backend);
        match record_health(service, backend, health) {
            Ok(Some(expired)) => log(format_args!(
                "health: backend {backend} of {service} is {health} ({why}){}",
                match (health, expired) {
                    (Health::Down, 0) => ": no new flows, its live flows go on".to_string(),
                    (Health::Down, n) => format!(
                        ": no new flows; the entries of its {n} live flows removed (on-backend-gone)"
                    ),
                    (Health::Up, _) => ": takes new flows".into(),
                    (Health::Unchecked, _) => String::new(),
                }
            )),
            Ok(None) => {}
            Err(e) => log(format_args!(
                "health: backend {backend} of {service} is {health} ({why}) but recording it failed: {e:#}"
            )),
        }
    }

    fn reload(&mut self) {
        notify::reloading();
        let file = self.file.display().to_string();
        let result = config_file::read(&self.file).and_then(|d| {
            attach_interfaces(&d)?;
            let done = apply_locked(&d)?;
            Ok((d, done))
        });
        match result {
            Ok((d, done)) => {
                log(format_args!("SIGHUP: reloaded {file}: {done}"));
                self.desired = d;
                self.start_checks();
                self.metrics.observe_reload(true);
            }
            Err(e) => {
                log(format_args!(
                    "SIGHUP: reloading {file} failed, the running configuration is unchanged: {e:#}"
                ));
                self.metrics.observe_reload(false);
            }
        }
        notify::notify("READY=1");
    }
}

/// Writes one backend's new health (and its VIP's table if that changes);
/// None if there was nothing to change (the backend is gone), else how
/// many of its flows' entries went with it (`--on-backend-gone`).
fn record_health(service: Service, backend: SocketAddr, health: Health) -> Result<Option<usize>> {
    let s = change::open()?;
    let b = s.running()?;
    let (done, after) = s.run_followed(Kind::Configure, |fx| {
        let mut run = b.maps.running()?;
        if health == Health::Down {
            fx.gone.push((service, backend));
        }
        b.maps
            .set_health(&mut run, &[(service, backend, health)], unix_now())
    })?;
    log_routes(&after.routes);
    Ok((!done?.is_empty()).then_some(after.expired))
}

/// Reconciles the routes with what the maps call for now (no balancer: none).
fn resync_routes() {
    match change::resync() {
        Ok(r) => log_routes(&r),
        Err(e) => log(format_args!("routes: finding the balancer: {e:#}")),
    }
}

/// One line per route announced or withdrawn.
fn log_routes(r: &Reconciled) {
    for a in &r.announced {
        log(format_args!("routes: announced VIP {a}"));
    }
    for a in &r.withdrawn {
        log(format_args!("routes: withdrew VIP {a}"));
    }
}
