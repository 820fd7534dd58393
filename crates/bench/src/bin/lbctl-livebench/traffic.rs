//! Packets per second: the generator in the client namespace sends 64-byte
//! UDP frames to the VIP, the balancer forwards them, sinks count arrivals.
//!
//! Where things run (two CPUs here): the balancer's receive work (the NAPI
//! thread of `lba`, the arm facing the client) alone on `lb_cpu`, under
//! SCHED_FIFO so other work on the machine does not preempt it; the
//! generator, the switch and the backends on `gen_cpu`. The balancer's CPU
//! time is read from its thread, so "per core" is measured, not assumed.
//!
//! Two places to count arrivals:
//! - `Sink::Switch`: on the switch port facing the balancer (the far end of
//!   the balancer's wire to the backends). Cheap, so the balancer is the
//!   bottleneck: used to measure its capacity.
//! - `Sink::Backends`: on every backend's interface, after the bridge. The
//!   whole path; used for losses at paced rates and the spread.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::balancers::{self, Balancer, VIP_PORT};
use crate::napi::{self, CpuTimes, NapiThread};
use crate::progs::{self, FlowPlan, FrameSpec, Progs, XdpSwap};
use lbctl_lab::lab::Lab;
use lbctl_lab::netns;
use lbctl_lab::servers::ECHO_PORT;

/// SCHED_FIFO priority of the NAPI threads (balancer, switch, backends).
const NAPI_PRIO: i32 = 50;
/// Nice value of the generator thread: ahead of ordinary work on its CPU,
/// behind the (real-time) switch and backend threads it feeds.
const GEN_NICE: i32 = -20;
/// Frames per flush towards the balancer when sending flat out (the
/// kernel's maximum batch).
const FLAT_BATCH: u32 = 256;
/// Paced, the program drops the runs that come before a burst is due and
/// sends PACED_BURST frames back to back (about what a NIC with interrupt
/// moderation hands over at once; an eighth of the balancer's 256-frame
/// ring); a flush every 64 runs.
const PACED_BATCH: u32 = 64;
const PACED_BURST: u32 = 32;
/// Generator calls: the first one's size, the smallest, the longest (so
/// Ctrl-C and the arrival cap are seen), and the least time worth a call.
const FIRST_CALL_RUNS: u32 = 1 << 16;
const MIN_RUNS: u32 = 4096;
const MAX_CALL: Duration = Duration::from_millis(500);
const MIN_CALL: Duration = Duration::from_millis(5);
/// A capped run may overshoot its arrival cap by at most this many.
pub const ARRIVAL_SLACK: u64 = 50_000;
/// Rate of the warm-up pass that opens the established flows.
const WARM_PPS: f64 = 200_000.0;
/// First source port of generated flows; 50000 ports per source address.
const SPORT_BASE: u16 = 10000;
const PORTS_PER_ADDR: u32 = 50000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// `flows` flows opened before the measurement, frames round-robin over them.
    Established,
    /// Every frame a flow never seen before (conntrack flushed first).
    NewFlows,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub balancer: Balancer,
    pub mix: Mix,
}

impl Case {
    pub fn name(&self) -> String {
        match (self.balancer, self.mix) {
            (Balancer::Reflector, _) => "reflector".into(),
            (b, Mix::Established) => format!("{b} established"),
            (b, Mix::NewFlows) => format!("{b} new flows"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Switch,
    Backends,
}

/// How to send: flat out or paced, bounded in time, frames and (for new
/// flows, which each leave a conntrack entry) arrivals.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub rate_pps: Option<f64>,
    pub duration: Duration,
    pub max_frames: u64,
    pub max_arrivals: Option<u64>,
}

/// One measured run.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub offered_pps: Option<f64>,
    pub seconds: f64,
    pub sent: u64,
    pub arrived: u64,
    /// Frames the balancer's receive ring refused (it was full): offered
    /// faster than the balancer took them.
    pub ring_full_balancer: u64,
    /// Frames the balancer sent that the switch port's ring refused.
    pub ring_full_switch: u64,
    /// CPU time of the balancer's NAPI thread.
    pub lb_cpu_s: f64,
    /// Time that thread was runnable but not running (its CPU was taken).
    pub lb_wait_s: f64,
    /// Busy fraction of each CPU (all work on the machine).
    pub cpu_busy: Vec<f64>,
    pub per_backend: Vec<u64>,
    pub conntrack_entries: u64,
    pub loadavg: f64,
    /// lbctl only: its verdict counters that moved (`lbctl status`).
    pub verdicts: BTreeMap<String, u64>,
}

impl Sample {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.arrived)
    }

    pub fn pps(&self) -> f64 {
        self.arrived as f64 / self.seconds.max(1e-9)
    }

    /// The rate the generator achieved (a paced target is not always met:
    /// it shares its CPU with the switch and the backends).
    pub fn sent_rate(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }

    /// Forwarded frames per second of the balancer thread's CPU time.
    pub fn pps_per_core(&self) -> f64 {
        self.arrived as f64 / self.lb_cpu_s.max(1e-9)
    }

    pub fn lb_busy(&self) -> f64 {
        self.lb_cpu_s / self.seconds.max(1e-9)
    }

    /// Lost frames not explained by a full ring.
    pub fn lost_elsewhere(&self) -> u64 {
        self.lost()
            .saturating_sub(self.ring_full_balancer + self.ring_full_switch)
    }
}

/// The lab wired for packet tests, and the bench's XDP programs.
pub struct Rig {
    pub lab: Lab,
    pub progs: Progs,
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
    pub gen_cpu: usize,
    pub lb_cpu: usize,
    pub flows: u32,
    lb_thread: Option<NapiThread>,
    other_threads: Vec<NapiThread>,
    frame: FrameSpec,
    switch_port: u32,
    backend_ports: Vec<u32>,
    sink: Option<Sink>,
    /// The UDP port the sinks count (the backends' echo port; dsr: the VIP's).
    sink_port: u16,
    switch_sink: Option<XdpSwap>,
    /// Set while lbctl is the balancer: its verdicts are recorded per run.
    pub lbctl: Option<std::path::PathBuf>,
    /// lbctl-sync's conntrackds' CPU (`--sync-cpu`).
    pub sync_cpu: Option<usize>,
}

impl Rig {
    pub fn new(lab: Lab, progs: Progs, gen_cpu: usize, lb_cpu: usize, flows: u32) -> Result<Rig> {
        let vip = lab.vip(1);
        let backends = lab.backend_ids().map(|i| lab.backend_addr(i)).collect();
        let frame = FrameSpec {
            src_mac: mac(&lab, lab.client_ns(), lab.client_iface())?,
            dst_mac: mac(&lab, lab.balancer_ns(), lab.lb_client_iface())?,
            dst: vip,
            dport: VIP_PORT,
        };
        let switch_port = netns::in_ns(lab.switch_ns(), || progs::ifindex("plb"))??;
        let mut backend_ports = Vec::new();
        for i in lab.backend_ids() {
            let ns = lab.backend_ns(i);
            backend_ports.push(netns::in_ns(ns, || progs::ifindex(lab.client_iface()))??);
        }
        Ok(Rig {
            lab,
            progs,
            vip,
            backends,
            gen_cpu,
            lb_cpu,
            flows,
            lb_thread: None,
            other_threads: Vec::new(),
            frame,
            switch_port,
            backend_ports,
            sink: None,
            sink_port: ECHO_PORT,
            switch_sink: None,
            lbctl: None,
            sync_cpu: None,
        })
    }

    /// Threaded NAPI, pinned and real-time: the balancer's receive arm on
    /// `lb_cpu`; the switch port and the backends on `gen_cpu`.
    pub fn pin_receive_work(&mut self) -> Result<()> {
        let lab = &self.lab;
        let lb = NapiThread::start(lab.balancer_ns(), lab.lb_client_iface(), Some(self.lb_cpu))?;
        napi::set_fifo(lb.pid, NAPI_PRIO)?;
        self.lb_thread = Some(lb);
        let mut others = vec![(lab.switch_ns().to_string(), "plb")];
        for i in lab.backend_ids() {
            others.push((lab.backend_ns(i).to_string(), lab.client_iface()));
        }
        for (ns, iface) in others {
            let t = NapiThread::start(&ns, iface, Some(self.gen_cpu))?;
            napi::set_fifo(t.pid, NAPI_PRIO)?;
            self.other_threads.push(t);
        }
        Ok(())
    }

    /// Back to the kernel's defaults: NAPI in softirq, no pinning.
    pub fn unpin_receive_work(&mut self) -> Result<()> {
        let mut result = Ok(());
        for t in self
            .lb_thread
            .take()
            .into_iter()
            .chain(self.other_threads.drain(..))
        {
            result = result.and(t.stop());
        }
        result
    }

    /// The port the sinks count from the next `set_sink` on.
    pub fn set_sink_port(&mut self, port: u16) -> Result<()> {
        if port != self.sink_port {
            self.sink_port = port;
            let sink = self.sink.take();
            self.switch_sink = None;
            self.progs.detach_sinks();
            self.set_sink(sink)?;
        }
        Ok(())
    }

    /// Counts arrivals at `sink` from now on (None: no counting, no drops).
    pub fn set_sink(&mut self, sink: Option<Sink>) -> Result<()> {
        if self.sink == sink {
            return Ok(());
        }
        self.switch_sink = None;
        self.progs.detach_sinks();
        match sink {
            Some(Sink::Switch) => {
                let swap = self
                    .progs
                    .swap_in_sink(self.lab.switch_ns(), "plb", self.sink_port)?;
                self.switch_sink = Some(swap);
            }
            Some(Sink::Backends) => {
                for i in self.lab.backend_ids() {
                    let ns = self.lab.backend_ns(i).to_string();
                    self.progs
                        .attach_sink(&ns, self.lab.client_iface(), self.sink_port)?;
                }
            }
            None => {}
        }
        self.sink = sink;
        Ok(())
    }

    fn sink_ports(&self) -> Vec<u32> {
        match self.sink {
            Some(Sink::Switch) => vec![self.switch_port],
            Some(Sink::Backends) => self.backend_ports.clone(),
            None => Vec::new(),
        }
    }

    /// Neighbour entries on the balancer and the bridge's forwarding table:
    /// a datagram from the balancer to each backend's discard port, answered
    /// with ICMP port unreachable (the sinks let both through). Without it
    /// the bridge would flood frames to every backend.
    pub fn refresh_paths(&self) -> Result<()> {
        let backends = self.backends.clone();
        netns::in_ns(self.lab.balancer_ns(), || -> Result<()> {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            for b in &backends {
                socket.send_to(b"livebench", (*b, 9))?;
            }
            Ok(())
        })??;
        thread::sleep(Duration::from_millis(100));
        Ok(())
    }

    fn check_threads(&self) -> Result<()> {
        for t in self.lb_thread.iter().chain(&self.other_threads) {
            t.check()?;
        }
        Ok(())
    }

    fn plan(&self, mix: Mix) -> FlowPlan {
        let flows = match mix {
            Mix::Established => self.flows,
            // Source addresses 198.18.0.2 up to .241: all new until the
            // run's arrival cap ends it, far sooner.
            Mix::NewFlows => PORTS_PER_ADDR * 240,
        };
        FlowPlan {
            flows,
            pkts_per_flow: 1,
            ports_per_addr: PORTS_PER_ADDR,
            saddr_base: self.lab.client_addr(),
            sport_base: SPORT_BASE,
        }
    }

    /// Makes the flows of `mix` ready: established flows are opened by one
    /// paced pass over them; new flows start from an empty conntrack table.
    pub fn prepare(&mut self, mix: Mix) -> Result<()> {
        self.refresh_paths()?;
        self.check_threads()?;
        balancers::flush_conntrack(self.lab.balancer_ns())?;
        let plan = self.plan(mix);
        self.progs.set_frame(&self.frame);
        self.progs.set_flows(&plan);
        if mix == Mix::Established {
            self.generate(&Load {
                rate_pps: Some(WARM_PPS),
                duration: Duration::from_secs(5),
                max_frames: plan.flows as u64,
                max_arrivals: None,
            })?;
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// One measured run of `load` with the flows `prepare` set up.
    pub fn measure(&mut self, load: &Load) -> Result<Sample> {
        let ports = self.sink_ports();
        if ports.is_empty() {
            bail!("no sink to count arrivals");
        }
        let arrivals = self.progs.arrivals();
        let ns = self.lab.balancer_ns().to_string();
        let client_ns = self.lab.client_ns().to_string();
        let per_port =
            |a: &progs::Arrivals| -> Result<Vec<u64>> { ports.iter().map(|&p| a.on(p)).collect() };

        let a0 = per_port(&arrivals)?;
        let g0 = self.progs.generated();
        let eth0 = ethtool(&client_ns, self.lab.client_iface())?;
        let lbb = ethtool(&ns, self.lab.lb_backend_iface())?;
        let lbb_drop0 = tx_dropped(&ns, self.lab.lb_backend_iface())?;
        let verdicts0 = self.verdicts()?;
        let cpu0 = self.lb_cpu_ns()?;
        let wait0 = self.lb_wait_ns()?;
        let times0 = CpuTimes::now();

        let wall = self.generate(load)?;
        wait_quiet(&arrivals, &ports)?;

        let a1 = per_port(&arrivals)?;
        let times = CpuTimes::now().busy_since(&times0);
        let lb_cpu_s = (self.lb_cpu_ns()? - cpu0) as f64 / 1e9;
        let lb_wait_s = (self.lb_wait_ns()? - wait0) as f64 / 1e9;
        let sent = self.progs.generated() - g0;
        let eth0_after = ethtool(&client_ns, self.lab.client_iface())?;
        let lbb_after = ethtool(&ns, self.lab.lb_backend_iface())?;
        let lbb_drop = tx_dropped(&ns, self.lab.lb_backend_iface())? - lbb_drop0;
        let verdicts = self
            .verdicts()?
            .into_iter()
            .map(|(k, v)| {
                let d = v.saturating_sub(verdicts0.get(&k).copied().unwrap_or(0));
                (k, d)
            })
            .filter(|(_, d)| *d > 0)
            .collect();
        let per_backend: Vec<u64> = a1.iter().zip(&a0).map(|(a, b)| a - b).collect();
        let arrived: u64 = per_backend.iter().sum();
        if arrived > sent {
            bail!(
                "counted {arrived} arrivals of {sent} frames sent: frames flooded or counted twice"
            );
        }
        Ok(Sample {
            offered_pps: load.rate_pps,
            seconds: wall.as_secs_f64(),
            sent,
            arrived,
            ring_full_balancer: delta(&eth0, &eth0_after, "tx_queue_0_xdp_xmit_errors"),
            ring_full_switch: delta(&lbb, &lbb_after, "tx_queue_0_xdp_xmit_errors") + lbb_drop,
            lb_cpu_s,
            lb_wait_s,
            cpu_busy: times,
            per_backend,
            conntrack_entries: balancers::conntrack_count(&ns)?,
            loadavg: lbctl_bench::loadavg(),
            verdicts,
        })
    }

    /// lbctl's verdict counters, when lbctl is the balancer.
    fn verdicts(&self) -> Result<BTreeMap<String, u64>> {
        let Some(lbctl) = &self.lbctl else {
            return Ok(BTreeMap::new());
        };
        let lbctl = lbctl.to_string_lossy().into_owned();
        let status = netns::exec(self.lab.balancer_ns(), &[lbctl.as_str(), "status"])?;
        Ok(status
            .lines()
            .skip_while(|l| !l.starts_with("verdicts"))
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.parse().ok()?))
            })
            .collect())
    }

    fn lb_cpu_ns(&self) -> Result<u64> {
        self.lb_thread.as_ref().map_or(Ok(0), NapiThread::cpu_ns)
    }

    fn lb_wait_ns(&self) -> Result<u64> {
        self.lb_thread.as_ref().map_or(Ok(0), NapiThread::wait_ns)
    }

    /// Sends `load` from a thread in the client namespace on `gen_cpu`;
    /// returns how long sending took.
    fn generate(&mut self, load: &Load) -> Result<Duration> {
        self.progs.set_pace(load.rate_pps, PACED_BURST);
        let generator = self.progs.generator();
        let arrivals = self.progs.arrivals();
        let ports = self.sink_ports();
        let (cpu, iface, load) = (self.gen_cpu, self.lab.client_iface(), *load);
        netns::in_ns(self.lab.client_ns(), move || -> Result<Duration> {
            napi::pin(0, cpu)?;
            // SAFETY: plain syscall; 0 is the calling thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, GEN_NICE) };
            let ifindex = progs::ifindex(iface)?;
            let arrived0 = arrivals.total(&ports)?;
            let sent0 = generator.sent();
            let batch = if load.rate_pps.is_some() {
                PACED_BATCH
            } else {
                FLAT_BATCH
            };
            let start = Instant::now();
            // Each call pays tens of ms of setup and teardown in the kernel
            // (the sender sits idle meanwhile), so calls are sized from the
            // previous one to fill the time left, or to reach the arrival cap.
            let mut runs = FIRST_CALL_RUNS;
            loop {
                let sent = generator.sent() - sent0;
                let arrived = arrivals.total(&ports)? - arrived0;
                let left = load.duration.saturating_sub(start.elapsed());
                if sent >= load.max_frames
                    || left < MIN_CALL
                    || load.max_arrivals.is_some_and(|m| arrived >= m)
                {
                    break;
                }
                let kernel = generator.send(ifindex, runs, batch)?;
                let per_s = runs as f64 / kernel.as_secs_f64().max(1e-6);
                let left = load.duration.saturating_sub(start.elapsed()).min(MAX_CALL);
                let mut next = per_s * left.as_secs_f64();
                if let Some(max) = load.max_arrivals {
                    // Arrivals per run in this call predict the next one's;
                    // and the next call never sends more frames than the
                    // cap's remainder plus ARRIVAL_SLACK (a run sends at
                    // most one; paced, at most `rate` a second).
                    let arrived_now = arrivals.total(&ports)? - arrived0;
                    let per_run = (arrived_now - arrived) as f64 / runs as f64;
                    let want = max.saturating_sub(arrived_now) as f64;
                    if per_run > 0.0 {
                        next = next.min(want / per_run * 1.05);
                    }
                    let frames = want + ARRIVAL_SLACK as f64;
                    next = match load.rate_pps {
                        // Paced, most runs send nothing: bound the time.
                        Some(rate) => next.min(per_s * frames / rate),
                        None => next.min(frames),
                    };
                }
                runs = next.clamp(MIN_RUNS as f64, (1u32 << 30) as f64) as u32;
            }
            Ok(start.elapsed())
        })?
    }
}

/// Waits until no more frames arrive (queues drained), at most 1 s.
fn wait_quiet(arrivals: &progs::Arrivals, ports: &[u32]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut last = arrivals.total(ports)?;
    loop {
        thread::sleep(Duration::from_millis(30));
        let now = arrivals.total(ports)?;
        if now == last || Instant::now() > deadline {
            return Ok(());
        }
        last = now;
    }
}

/// `ethtool -S` counters of `iface` in `ns`.
fn ethtool(ns: &str, iface: &str) -> Result<BTreeMap<String, u64>> {
    let out = netns::exec(ns, &["ethtool", "-S", iface])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.trim().to_string(), v.trim().parse().ok()?)))
        .collect())
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    let get = |m: &BTreeMap<String, u64>| m.get(key).copied().unwrap_or(0);
    get(after).saturating_sub(get(before))
}

/// TX dropped of `iface` (skbs a veth could not hand to its peer).
fn tx_dropped(ns: &str, iface: &str) -> Result<u64> {
    let out = netns::exec(ns, &["ip", "-s", "link", "show", "dev", iface])?;
    let mut lines = out.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("TX:") {
            let values = lines.next().unwrap_or("");
            if let Some(v) = values.split_whitespace().nth(3) {
                return v.parse().with_context(|| format!("ip -s link: {values:?}"));
            }
        }
    }
    bail!("no TX counters in `ip -s link show dev {iface}`")
}

/// MAC address of `iface` in `ns`.
fn mac(lab: &Lab, ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = lab.exec(ns, &["ip", "-br", "link", "show", "dev", iface])?;
    let word = out
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("no MAC in {out:?}"))?;
    let mut m = [0u8; 6];
    let parts: Vec<&str> = word.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {word:?} of {iface}");
    }
    for (byte, part) in m.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(m)
}
