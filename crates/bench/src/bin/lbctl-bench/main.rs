//! lbctl-bench: the per-packet cost of lbctl's real, loaded XDP program,
//! measured with BPF_PROG_TEST_RUN through a harness (bpf/harness.bpf.c)
//! that restores the pristine frame before every repetition, next to a
//! MAC-swap XDP_TX baseline in the same harness and the harness alone.
//!
//! Every configuration lives in a network namespace of its own (a thread
//! that unshares it), with routes and neighbours so the FIB lookup succeeds
//! and lbctl really forwards (XDP_TX, or XDP_REDIRECT with --path redirect).
//! The configurations are measured in alternating rounds, every class of a
//! configuration in every round, so all figures of a run are side by side.
//! Each measurement is checked: the action, lbctl's own verdict counters
//! (every repetition counted under the expected reason), the rewritten frame
//! (addresses and checksums) and, for new flows, one new conntrack entry per
//! repetition.
//!
//! Every forwarding class is measured in IPv4 and in IPv6 (one IPv6 VIP,
//! TCP and UDP, beside the IPv4 ones); the goals compare each IPv6 row with
//! its IPv4 twin.
//!
//! `make bench` runs the full benchmark; `make test` runs `--quick` once so
//! this code keeps working (its figures are not for quoting).

mod maglev;
mod report;

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use lbctl::datapath::load;
use lbctl::datapath::maps::Maps;
use lbctl::host::census::Census;
use lbctl::snapshot::{ActiveFlows, Snapshot};

use lbctl_bench::frames::{self, Flow, ACK, SYN};
use lbctl_bench::harness::{
    self, Harness, Target, Vary, XDP_ABORTED, XDP_PASS, XDP_REDIRECT, XDP_TX,
};
use lbctl_bench::lab::{self, Config};

#[derive(Parser, Debug)]
#[command(
    name = "lbctl-bench",
    about = "Per-packet cost of lbctl's XDP program (BPF_PROG_TEST_RUN through a restoring harness)"
)]
struct Args {
    /// Few repetitions and a small second configuration: checks that the
    /// benchmark works (make test); the figures are not for quoting.
    #[arg(long)]
    quick: bool,
    /// Repetitions per measurement [default: 1000000; quick: 20000].
    #[arg(long)]
    repeat: Option<u32>,
    /// Runs (rounds) per configuration; the table shows their median
    /// [default: 7; quick: 2].
    #[arg(long)]
    runs: Option<u32>,
    /// Which forwarding path the frames take: tx (arrive on v0 and leave
    /// through it: XDP_TX, one-armed) or redirect (arrive on lo, leave on v0
    /// through the devmap).
    #[arg(long, value_enum, default_value = "tx")]
    path: FwdPath,
    /// CPU the measuring threads are pinned to [default: 1 if there are two
    /// or more, else 0].
    #[arg(long)]
    cpu: Option<usize>,
    /// Measure only these classes (their baselines are always measured).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Class>,
    /// Which configurations: small (1 VIP), large (1,000 VIPs, 100k
    /// conntrack entries; 50 VIPs with --quick) [default: both].
    #[arg(long, value_enum, value_delimiter = ',')]
    config: Vec<ConfigName>,
    /// Measure at normal priority instead of SCHED_FIFO.
    #[arg(long)]
    no_realtime: bool,
    /// Where the JSON report goes [default:
    /// target/bench/datapath.json, quick: target/bench/datapath-quick.json].
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ConfigName {
    Small,
    Large,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FwdPath {
    Tx,
    Redirect,
}

/// What is measured. The first four are the references: the harness's own
/// cost and the baseline, once with the fixed frame and once varying the
/// flow per repetition as the new-flow measurement does. The `*6` classes
/// are their IPv4 namesakes in IPv6 (frames 20 bytes longer), against the
/// same baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Class {
    HarnessAlone,
    Baseline,
    NonVip,
    Established,
    Reply,
    Udp,
    NonVip6,
    Established6,
    Reply6,
    Udp6,
    HarnessAloneNewFlow,
    BaselineNewFlow,
    NewFlow,
    NewFlow6,
    Dsr,
    Tunnel,
}

impl Class {
    pub const ALL: [Class; 16] = [
        Class::HarnessAlone,
        Class::Baseline,
        Class::NonVip,
        Class::Established,
        Class::Reply,
        Class::Udp,
        Class::NonVip6,
        Class::Established6,
        Class::Reply6,
        Class::Udp6,
        Class::HarnessAloneNewFlow,
        Class::BaselineNewFlow,
        Class::NewFlow,
        Class::NewFlow6,
        Class::Dsr,
        Class::Tunnel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::HarnessAlone => "harness alone",
            Class::Baseline => "baseline (MAC swap, XDP_TX)",
            Class::NonVip => "non-VIP pass-through",
            Class::Established => "TCP established, original dir.",
            Class::Reply => "TCP established, reply dir.",
            Class::Udp => "UDP established",
            Class::NonVip6 => "IPv6 non-VIP pass-through",
            Class::Established6 => "IPv6 TCP established, orig. dir.",
            Class::Reply6 => "IPv6 TCP established, reply dir.",
            Class::Udp6 => "IPv6 UDP established",
            Class::HarnessAloneNewFlow => "harness alone, varying flow",
            Class::BaselineNewFlow => "baseline, varying flow",
            Class::NewFlow => "TCP new flow (SYN, distinct)",
            Class::NewFlow6 => "IPv6 TCP new flow (SYN, distinct)",
            Class::Dsr => "dsr TCP established (MACs only)",
            Class::Tunnel => "tunnel TCP established (IPIP)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Class::HarnessAlone => "harness_alone",
            Class::Baseline => "baseline",
            Class::NonVip => "non_vip",
            Class::Established => "tcp_established",
            Class::Reply => "tcp_reply",
            Class::Udp => "udp_established",
            Class::NonVip6 => "non_vip_ipv6",
            Class::Established6 => "tcp_established_ipv6",
            Class::Reply6 => "tcp_reply_ipv6",
            Class::Udp6 => "udp_established_ipv6",
            Class::HarnessAloneNewFlow => "harness_alone_varying",
            Class::BaselineNewFlow => "baseline_varying",
            Class::NewFlow => "tcp_new_flow",
            Class::NewFlow6 => "tcp_new_flow_ipv6",
            Class::Dsr => "tcp_established_dsr",
            Class::Tunnel => "tcp_established_tunnel",
        }
    }

    /// The baseline its ratio is taken against: the one measured with the
    /// same harness work (fixed frame, or a new flow per repetition).
    pub fn baseline(self) -> Option<Class> {
        match self {
            Class::HarnessAlone | Class::Baseline => None,
            Class::HarnessAloneNewFlow
            | Class::BaselineNewFlow
            | Class::NewFlow
            | Class::NewFlow6 => Some(Class::BaselineNewFlow),
            _ => Some(Class::Baseline),
        }
    }

    /// Measures lbctl's program (the others measure the references).
    pub fn is_lbctl(self) -> bool {
        !matches!(
            self,
            Class::HarnessAlone
                | Class::Baseline
                | Class::HarnessAloneNewFlow
                | Class::BaselineNewFlow
        )
    }

    /// The IPv4 class an IPv6 class is compared with.
    pub fn ipv4_twin(self) -> Option<Class> {
        match self {
            Class::NonVip6 => Some(Class::NonVip),
            Class::Established6 => Some(Class::Established),
            Class::Reply6 => Some(Class::Reply),
            Class::Udp6 => Some(Class::Udp),
            Class::NewFlow6 => Some(Class::NewFlow),
            _ => None,
        }
    }
}

/// One measurement of one class.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub ns: f64,
    pub action: u32,
}

/// What a configuration's thread sends back.
enum Msg {
    Ready(Ready),
    Round(Vec<(Class, Sample)>),
}

/// A configuration set up, with what its setup measured.
struct Ready {
    setup_s: f64,
    entries: u64,
    /// lbctl's flows among them, and how long reading them took.
    flows: usize,
    conns_ms: f64,
    /// What a scrape or `list --stats` reads: a snapshot of the maps,
    /// its open flows from a census (as `lbctl run` serves them) and
    /// counted from the table (as before the census).
    census_snapshot_ms: f64,
    counting_snapshot_ms: f64,
    realtime: bool,
}

impl Ready {
    /// The line said for configuration `name` once it is set up.
    fn summary(&self, name: &str) -> String {
        format!(
            "{name}: configured in {:.1} s, {} conntrack entries; \
             reading them as `lbctl conns` does took {:.0} ms ({} lbctl flows); \
             a snapshot for `list --stats` took {:.1} ms \
             with open flows from lbctl run's census file, {:.0} ms counting them",
            self.setup_s,
            self.entries,
            self.conns_ms,
            self.flows,
            self.census_snapshot_ms,
            self.counting_snapshot_ms
        )
    }
}

#[derive(Clone, Debug)]
struct Opts {
    repeat: u32,
    /// New-flow repetitions per test run: the table must stay below
    /// nf_conntrack_max, or every insert would also evict an entry.
    chunk: u32,
    path: FwdPath,
    classes: Vec<Class>,
    realtime: bool,
}

/// The flow number the measured new flows start from (the background flows
/// use 0..background_flows).
const FIRST_MEASURED_FLOW: u32 = 1 << 20;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    load::require_privileges()?;
    maglev::report(if args.quick { 3 } else { 21 });
    let repeat = args
        .repeat
        .unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    let runs = args.runs.unwrap_or(if args.quick { 2 } else { 7 });
    ensure!(
        repeat >= 1 && runs >= 1,
        "--repeat and --runs must be at least 1"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = args.cpu.unwrap_or(if cpus >= 2 { 1 } else { 0 });

    // Both configurations' new flows are measured in test runs of the same
    // size, whichever are selected: the size the large one allows.
    const LARGE_BACKGROUND: u32 = 100_000;
    let mut configs = Vec::new();
    let wanted = |c| args.config.is_empty() || args.config.contains(&c);
    if wanted(ConfigName::Small) {
        configs.push(Config {
            name: "1 VIP x 16 backends".into(),
            tcp_vips: 1,
            backends_per_vip: 16,
            background_flows: 0,
        });
    }
    if wanted(ConfigName::Large) {
        // Quick: fewer VIPs, as configuring 16,000 backends takes about
        // 100 s here, more than the quick budget.
        let vips = if args.quick { 50 } else { 1000 };
        configs.push(Config {
            name: format!("{vips} VIPs x 16 backends, 100k entries"),
            tcp_vips: vips,
            backends_per_vip: 16,
            background_flows: LARGE_BACKGROUND,
        });
    }
    let ct_max = lab::conntrack_max()?;
    let headroom = ct_max.saturating_sub(LARGE_BACKGROUND as u64 + 1000);
    ensure!(
        headroom >= 10_000,
        "nf_conntrack_max is {ct_max}: too small for {LARGE_BACKGROUND} background entries plus new flows"
    );
    let chunk = (headroom.min(repeat as u64)) as u32;
    let mut classes = Class::ALL.to_vec();
    if !args.only.is_empty() {
        classes.retain(|c| {
            args.only.contains(c)
                || matches!(c, Class::HarnessAlone | Class::Baseline)
                || (*c == Class::BaselineNewFlow
                    && (args.only.contains(&Class::NewFlow)
                        || args.only.contains(&Class::NewFlow6)))
        });
    }
    let opts = Opts {
        repeat,
        chunk,
        path: args.path,
        classes,
        realtime: !args.no_realtime,
    };

    println!(
        "lbctl-bench{}: {repeat} repetitions per measurement, {runs} runs, path {:?}, pinned to CPU {cpu} of {cpus}",
        if args.quick { " --quick (figures not for quoting)" } else { "" },
        args.path
    );
    println!(
        "new flows: {} test runs of at most {chunk} distinct flows each (nf_conntrack_max {ct_max}); the table is emptied and refilled before each",
        repeat.div_ceil(chunk)
    );

    // One thread (and namespace) per configuration, set up one after the
    // other, then measured in alternating rounds.
    let mut workers = Vec::new();
    let mut setups = Vec::new();
    let mut realtime = opts.realtime;
    for cfg in &configs {
        let (cmd_tx, cmd_rx) = mpsc::channel::<()>();
        let (msg_tx, msg_rx) = mpsc::channel::<Msg>();
        let (c, o) = (cfg.clone(), opts.clone());
        let handle = lab::in_fresh_netns(cpu, move || worker(c, o, cmd_rx, msg_tx));
        let ready = msg_rx.recv();
        let Ok(Msg::Ready(ready)) = ready else {
            drop(cmd_tx);
            return Err(join_error(handle, &cfg.name));
        };
        println!("{}", ready.summary(&cfg.name));
        setups.push(ready.setup_s);
        realtime &= ready.realtime;
        workers.push((cmd_tx, msg_rx, handle));
    }
    let load_before = lbctl_bench::loadavg();
    let mut samples: Vec<Vec<(Class, Sample)>> = vec![Vec::new(); configs.len()];
    for round in 0..runs {
        for (i, (cmd_tx, msg_rx, _)) in workers.iter().enumerate() {
            let got = cmd_tx.send(()).ok().and_then(|()| msg_rx.recv().ok());
            match got {
                Some(Msg::Round(s)) => samples[i].extend(s),
                _ => {
                    let (_, _, handle) = workers.swap_remove(i);
                    return Err(join_error(handle, &configs[i].name));
                }
            }
        }
        eprintln!("run {}/{runs} done", round + 1);
    }
    for (cmd_tx, msg_rx, handle) in workers {
        drop(cmd_tx);
        drop(msg_rx);
        match handle.join() {
            Ok(r) => r?,
            Err(_) => bail!("a measuring thread panicked"),
        }
    }

    let report = report::Report {
        quick: args.quick,
        realtime,
        load: (load_before, lbctl_bench::loadavg()),
        repeat,
        runs,
        chunk,
        path: args.path,
        cpu,
        configs: configs
            .iter()
            .zip(&setups)
            .map(|(c, s)| (c.clone(), *s))
            .collect(),
        samples,
    };
    print!("{}", report.table());
    let json = args.json.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(if args.quick {
            "target/bench/datapath-quick.json"
        } else {
            "target/bench/datapath.json"
        })
    });
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&json, report.json()).with_context(|| format!("writing {}", json.display()))?;
    println!("JSON: {}", json.display());
    Ok(())
}

/// Milliseconds a snapshot of the maps took (each the best of 5): its open
/// flows from a census `lbctl run` recorded (read from its state file, as
/// `list --stats` does; a scrape has it in memory, and costs less) and
/// counted from the table.
fn snapshot_times(maps: &Maps) -> Result<(f64, f64)> {
    let id = maps.balancer_id()?;
    Census::take(&maps.running()?.vip_ports())?.save(id)?;
    let best = |flows: &dyn Fn() -> Result<ActiveFlows>| -> Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            Snapshot::read(maps, &flows()?)?;
            best = best.min(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(best)
    };
    let from_census = best(&|| {
        let flows = ActiveFlows::for_listing(id)?;
        ensure!(
            matches!(flows, ActiveFlows::From(_)),
            "the census just recorded is not read"
        );
        Ok(flows)
    });
    lbctl::host::state::forget(lbctl::host::state::Kind::Census, id)?;
    Ok((from_census?, best(&|| Ok(ActiveFlows::CountNow))?))
}

fn join_error(handle: std::thread::JoinHandle<Result<()>>, name: &str) -> anyhow::Error {
    match handle.join() {
        Ok(Err(e)) => e.context(format!("configuration {name:?}")),
        Ok(Ok(())) => anyhow::anyhow!("configuration {name:?} stopped early"),
        Err(_) => anyhow::anyhow!("configuration {name:?}: its thread panicked"),
    }
}

/// A configuration's thread, in its own namespace: set up, then one round
/// per message until the channel closes.
fn worker(
    cfg: Config,
    opts: Opts,
    rounds: mpsc::Receiver<()>,
    out: mpsc::Sender<Msg>,
) -> Result<()> {
    load::load_conntrack_modules();
    let mut lb_storage = MaybeUninit::uninit();
    let lb = load::load(&mut lb_storage, None)?;
    let maps = Maps::from_skel(&lb)?;
    lab::settings(&maps)?;
    let v0 = lab::routes(&maps, cfg.backends_per_vip)?;
    let started = Instant::now();
    lab::configure(&maps, &cfg).with_context(|| format!("configuring {}", cfg.name))?;
    let setup_s = started.elapsed().as_secs_f64();
    let ingress = match opts.path {
        FwdPath::Tx => v0,
        FwdPath::Redirect => lbctl::host::iface::ifindex("lo")?,
    };
    let mut h_storage = MaybeUninit::uninit();
    let harness = Harness::load(&mut h_storage, lb.progs.lbctl_xdp.as_fd(), ingress)?;
    let mut bench = Bench {
        cfg,
        opts,
        maps,
        harness,
        next_flow: FIRST_MEASURED_FLOW,
    };
    bench.reset()?;
    let entries = lab::conntrack_count()?;
    // What `lbctl conns` reads: every entry of the table over ctnetlink,
    // decoded, lbctl's kept.
    let started = Instant::now();
    let flows = lbctl::conntrack::lbctl_flows()?.len();
    let conns_ms = started.elapsed().as_secs_f64() * 1e3;
    let (census_snapshot_ms, counting_snapshot_ms) = snapshot_times(&bench.maps)?;
    // Where real-time scheduling is not allowed (a container without RT
    // bandwidth), measure at normal priority and say so.
    let realtime = bench.opts.realtime
        && lab::realtime()
            .map_err(|e| eprintln!("lbctl-bench: measuring at normal priority: {e:#}"))
            .is_ok();
    let ready = Msg::Ready(Ready {
        setup_s,
        entries,
        flows,
        conns_ms,
        census_snapshot_ms,
        counting_snapshot_ms,
        realtime,
    });
    if out.send(ready).is_err() {
        return Ok(());
    }
    while rounds.recv().is_ok() {
        let samples = bench.round()?;
        if out.send(Msg::Round(samples)).is_err() {
            break;
        }
    }
    // Leave an empty table: the namespace then goes away quickly instead
    // of tearing down 100k entries while another configuration measures.
    lab::flush_conntrack()
}

/// Flow number `n` as bpf/harness.bpf.c makes it from the new-flow frame:
/// (source, destination).
fn varied_flow(n: u32, vips: u32) -> (SocketAddrV4, SocketAddrV4) {
    let base = lab::NEW_FLOW_SOURCE;
    let src = Ipv4Addr::from(u32::from(*base.ip()) + ((n >> 15) & 0xffff));
    let dst = lab::vip_addr(n % vips.max(1));
    (
        SocketAddrV4::new(src, 1024 + (n & 0x7fff) as u16),
        SocketAddrV4::new(dst, lab::VIP_PORT),
    )
}

struct Bench<'o> {
    cfg: Config,
    opts: Opts,
    maps: Maps,
    harness: Harness<'o>,
    /// The next flow number never used for a measured new flow.
    next_flow: u32,
}

impl Bench<'_> {
    fn forward_action(&self) -> (u32, &'static str) {
        match self.opts.path {
            FwdPath::Tx => (XDP_TX, "xdp_tx"),
            FwdPath::Redirect => (XDP_REDIRECT, "xdp_redirect"),
        }
    }

    fn reason(&self, name: &str) -> Result<u64> {
        self.maps
            .reason_counts()?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .with_context(|| format!("no verdict reason {name}"))
    }

    fn cache_hits(&self) -> Result<u64> {
        Ok(self.maps.flow_cache_counters()?.map_or(0, |c| c.hits))
    }

    fn vip() -> SocketAddrV4 {
        SocketAddrV4::new(lab::FIRST_VIP, lab::VIP_PORT)
    }

    fn vip6() -> SocketAddrV6 {
        SocketAddrV6::new(lab::VIP6, lab::VIP_PORT, 0, 0)
    }

    /// The template of every new flow: a SYN from 198.19.0.0:1024 to the
    /// first VIP; the harness turns it into flow n.
    fn new_flow_frame() -> Vec<u8> {
        frames::frame(&Flow::tcp(lab::NEW_FLOW_SOURCE, Self::vip()), SYN)
    }

    /// The same in IPv6, from [2001:db8:1::]:1024 to the IPv6 VIP.
    fn new_flow_frame6() -> Vec<u8> {
        frames::frame(&Flow::tcp(lab::NEW_FLOW_SOURCE6, Self::vip6()), SYN)
    }

    /// The conntrack table as every measurement starts: emptied, then
    /// refilled with the configuration's background flows, made by lbctl
    /// itself from distinct new-flow packets spread over all TCP VIPs.
    fn reset(&mut self) -> Result<()> {
        lab::flush_conntrack()?;
        let n = self.cfg.background_flows;
        if n == 0 {
            return Ok(());
        }
        ensure!(
            n < FIRST_MEASURED_FLOW,
            "background flows overlap measured ones"
        );
        self.harness.set_target(Target::Lbctl)?;
        let vary = Vary::NewFlows {
            first: 0,
            vips: self.cfg.tcp_vips,
        };
        let run = self.harness.run(&Self::new_flow_frame(), vary, n)?;
        let count = lab::conntrack_count()?;
        ensure!(
            run.action == self.forward_action().0 && count == n as u64,
            "background: {count} conntrack entries after {n} new flows (last action {})",
            harness::action_name(run.action)
        );
        Ok(())
    }

    /// Runs `frame` once through lbctl and returns where it went.
    fn once(&mut self, frame: &[u8]) -> Result<Flow> {
        frames::parse_checked(&self.once_raw(frame)?)
    }

    /// Runs `frame` once through lbctl, which must forward it: the frame
    /// that left.
    fn once_raw(&mut self, frame: &[u8]) -> Result<Vec<u8>> {
        self.harness.set_target(Target::Lbctl)?;
        let run = self.harness.run(frame, Vary::None, 1)?;
        ensure!(
            run.action == self.forward_action().0,
            "priming a flow: {}",
            harness::action_name(run.action)
        );
        Ok(run.out)
    }

    /// One measurement of every class.
    fn round(&mut self) -> Result<Vec<(Class, Sample)>> {
        // The flows the established classes repeat, created first (a SYN,
        // and the backend's SYN-ACK, which marks the entry assured): entries
        // persist in the namespace, so the repetitions then find them. Only
        // those measured, so --only non-vip needs no forwarding at all.
        let vip = Self::vip();
        let syn_flow = Flow::tcp(lab::CLIENT, vip);
        let udp = Flow::udp(lab::CLIENT, vip);
        let classes = self.opts.classes.clone();
        let wants = |c: Class| classes.contains(&c);
        let (tcp_flow, udp_flow) = (
            wants(Class::Established) || wants(Class::Reply),
            wants(Class::Udp),
        );
        let (mut backend, mut udp_backend) = (SocketAddr::V4(vip), SocketAddr::V4(vip));
        if tcp_flow {
            backend = self.once(&frames::frame(&syn_flow, SYN))?.dst;
            self.once(&frames::frame(&Flow::tcp(backend, lab::CLIENT), SYN | ACK))?;
        }
        if udp_flow {
            udp_backend = self.once(&frames::frame(&udp, 0))?.dst;
        }
        // The same in IPv6.
        let (vip6, client6) = (SocketAddr::V6(Self::vip6()), SocketAddr::V6(lab::CLIENT6));
        let udp6 = Flow::udp(client6, vip6);
        let (mut backend6, mut udp_backend6) = (vip6, vip6);
        if wants(Class::Established6) || wants(Class::Reply6) {
            backend6 = self
                .once(&frames::frame(&Flow::tcp(client6, vip6), SYN))?
                .dst;
            self.once(&frames::frame(&Flow::tcp(backend6, client6), SYN | ACK))?;
        }
        if wants(Class::Udp6) {
            udp_backend6 = self.once(&frames::frame(&udp6, 0))?.dst;
        }
        // dsr and tunnel: the client's SYN makes the entry; their backends
        // answer the client directly, so no reply ever marks it.
        let (dsr, tunnel) = (lab::DSR_VIP.into(), lab::TUNNEL_VIP.into());
        if wants(Class::Dsr) {
            let to = self.once(&frames::frame(&Flow::tcp(lab::CLIENT, dsr), SYN))?;
            ensure!(to.dst == dsr, "dsr changed the destination to {}", to.dst);
        }
        let mut tunnel_backend = None;
        if wants(Class::Tunnel) {
            let out = self.once_raw(&frames::frame(&Flow::tcp(lab::CLIENT, tunnel), SYN))?;
            tunnel_backend = Some(frames::parse_tunnelled(&out)?.0);
        }

        let mut out = Vec::new();
        for class in self.opts.classes.clone() {
            if class == Class::NewFlow {
                let frame = Self::new_flow_frame();
                out.push((class, self.new_flows(&frame, self.cfg.tcp_vips)?));
                continue;
            }
            if class == Class::NewFlow6 {
                out.push((class, self.new_flows(&Self::new_flow_frame6(), 1)?));
                continue;
            }
            let fixed = |f: Flow, flags: u8| (frames::frame(&f, flags), Vary::None);
            let varying = (
                Self::new_flow_frame(),
                Vary::NewFlows {
                    first: 0,
                    vips: self.cfg.tcp_vips,
                },
            );
            let (fwd, fwd_reason) = self.forward_action();
            // What runs, on what, what it must return, which verdict
            // counter must count every repetition, where the frame must go.
            let client = SocketAddr::V4(lab::CLIENT);
            let vip = SocketAddr::V4(vip);
            // What lbctl forwards (and where to), and what it passes.
            let forwarded = |frame, to| (Target::Lbctl, frame, fwd, Some(fwd_reason), to);
            let not_a_vip = |frame| (Target::Lbctl, frame, XDP_PASS, Some("pass_not_vip"), None);
            let (target, (frame, vary), expect, reason, to) = match class {
                Class::HarnessAlone => {
                    (Target::Empty, fixed(syn_flow, SYN), XDP_ABORTED, None, None)
                }
                Class::Baseline => (Target::Baseline, fixed(syn_flow, SYN), XDP_TX, None, None),
                Class::NonVip => not_a_vip(fixed(Flow::tcp(lab::CLIENT, lab::NOT_A_VIP), ACK)),
                Class::Established => {
                    forwarded(fixed(Flow::tcp(client, vip), ACK), Some((client, backend)))
                }
                Class::Reply => {
                    forwarded(fixed(Flow::tcp(backend, client), ACK), Some((vip, client)))
                }
                Class::Udp => forwarded(fixed(udp, 0), Some((client, udp_backend))),
                Class::NonVip6 => not_a_vip(fixed(Flow::tcp(client6, lab::NOT_A_VIP6), ACK)),
                Class::Established6 => forwarded(
                    fixed(Flow::tcp(client6, vip6), ACK),
                    Some((client6, backend6)),
                ),
                Class::Reply6 => forwarded(
                    fixed(Flow::tcp(backend6, client6), ACK),
                    Some((vip6, client6)),
                ),
                Class::Udp6 => forwarded(fixed(udp6, 0), Some((client6, udp_backend6))),
                Class::Dsr => forwarded(fixed(Flow::tcp(client, dsr), ACK), Some((client, dsr))),
                // Checked below: the inner packet keeps its addresses.
                Class::Tunnel => forwarded(fixed(Flow::tcp(client, tunnel), ACK), None),
                Class::HarnessAloneNewFlow => (Target::Empty, varying, XDP_ABORTED, None, None),
                Class::BaselineNewFlow => (Target::Baseline, varying, XDP_TX, None, None),
                Class::NewFlow | Class::NewFlow6 => unreachable!("measured above"),
            };
            let repeat = self.opts.repeat;
            // Tunnelled flows are not cached: every packet takes the slow path.
            let cached = class != Class::Tunnel;
            let (sample, frame_out) =
                self.measure(target, &frame, vary, repeat, expect, reason, cached)?;
            if class == Class::Tunnel {
                let (to, inner) = frames::parse_tunnelled(&frame_out)?;
                ensure!(
                    Some(to) == tunnel_backend && inner.src == client && inner.dst == tunnel,
                    "tunnel: {} -> {} inside a header to {to}",
                    inner.src,
                    inner.dst
                );
                out.push((class, sample));
                continue;
            }
            // Every frame leaves with valid checksums; the varying ones as
            // the last flow the harness made (the MAC swap keeps addresses).
            let seen = frames::parse_checked(&frame_out)
                .with_context(|| format!("{}: the frame that left", class.name()))?;
            let to = match (class, vary) {
                (Class::BaselineNewFlow, Vary::NewFlows { first, vips }) => {
                    let (src, dst) = varied_flow(first + repeat - 1, vips);
                    Some((src.into(), dst.into()))
                }
                _ => to,
            };
            if let Some((src, dst)) = to {
                ensure!(
                    seen.src == src && seen.dst == dst,
                    "{}: the frame left from {} to {}, expected {src} to {dst}",
                    class.name(),
                    seen.src,
                    seen.dst
                );
            }
            out.push((class, sample));
        }
        Ok(out)
    }

    /// One test run of `repeat` repetitions, checked: the action of the last
    /// repetition, lbctl's verdict counter grown by one per repetition, and
    /// the flow cache serving a repeated forwarded flow if it can be
    /// (`cached`).
    #[allow(clippy::too_many_arguments)]
    fn measure(
        &mut self,
        target: Target,
        frame: &[u8],
        vary: Vary,
        repeat: u32,
        expect: u32,
        reason: Option<&str>,
        cached: bool,
    ) -> Result<(Sample, Vec<u8>)> {
        self.harness.set_target(target)?;
        let before = reason.map(|r| self.reason(r)).transpose()?;
        let hits_before = self.cache_hits()?;
        let run = self.harness.run(frame, vary, repeat)?;
        ensure!(
            run.action == expect,
            "{target:?}: returned {}, expected {}",
            harness::action_name(run.action),
            harness::action_name(expect)
        );
        if let (Some(r), Some(before)) = (reason, before) {
            let grew = self.reason(r)? - before;
            ensure!(
                grew == repeat as u64,
                "{r} grew by {grew} in {repeat} repetitions: not every packet took the measured path"
            );
        }
        // A repeated forwarded flow is served by the flow cache (but for
        // the packet that stores the entry, and one a second after that).
        let hits = self.cache_hits()? - hits_before;
        if cached
            && matches!(target, Target::Lbctl)
            && matches!(vary, Vary::None)
            && expect == self.forward_action().0
        {
            ensure!(
                hits + 1 + repeat as u64 / 100 >= repeat as u64,
                "{target:?}: {hits} flow cache hits in {repeat} repetitions of one flow"
            );
        } else {
            ensure!(
                hits == 0,
                "{target:?}: {hits} flow cache hits where none can be"
            );
        }
        Ok((
            Sample {
                ns: run.ns as f64,
                action: run.action,
            },
            run.out,
        ))
    }

    /// `repeat` distinct new flows made from `frame` over `vips` VIPs, in
    /// test runs of at most `chunk`, each starting from the configuration's
    /// table (emptied and refilled), each checked to have made one conntrack
    /// entry per repetition.
    fn new_flows(&mut self, frame: &[u8], vips: u32) -> Result<Sample> {
        let (fwd, reason) = self.forward_action();
        let mut left = self.opts.repeat;
        let mut total_ns = 0f64;
        while left > 0 {
            let n = left.min(self.opts.chunk);
            ensure!(
                self.next_flow.checked_add(n).is_some_and(|e| e < 1 << 31),
                "out of distinct flow numbers"
            );
            self.reset()?;
            let entries = lab::conntrack_count()?;
            let first = self.next_flow;
            let vary = Vary::NewFlows { first, vips };
            let (sample, out) =
                self.measure(Target::Lbctl, frame, vary, n, fwd, Some(reason), false)?;
            let made = lab::conntrack_count()? - entries;
            ensure!(
                made == n as u64 && self.harness.next_flow() == first + n,
                "{n} new flows made {made} conntrack entries"
            );
            frames::parse_checked(&out)?;
            self.next_flow += n;
            total_ns += sample.ns * n as f64;
            left -= n;
        }
        // Back to the configuration's table for whatever comes next.
        self.reset()?;
        Ok(Sample {
            ns: total_ns / self.opts.repeat as f64,
            action: fwd,
        })
    }
}
