//! lbctl-livebench: lbctl under live traffic in the lab of network
//! namespaces, side by side with a baseline XDP reflector, the kernel's own
//! balancer (nftables DNAT with conntrack) and HAProxy.
//!
//! 1. Forwarding: an XDP program in the client namespace, run with
//!    BPF_F_TEST_XDP_LIVE_FRAMES, sends 64-byte UDP frames to the VIP over
//!    many flows; the balancer forwards them; XDP sinks count arrivals.
//!    Per case: the balancer's capacity on one pinned core, then a search for
//!    the highest paced rate at which every frame reaches the backends.
//! 2. Connections: short TCP connections (connect, HTTP/1.0 GET, read to
//!    close, close) from parallel workers; rate and latency percentiles.
//!
//! Prints a table and writes target/bench/live.json. `--quick` runs a few
//! packets and connections per case (under 30 s) so `make test` keeps it
//! working. Run as root on an otherwise idle machine if you can; the load
//! average is recorded with every run.

mod balancers;
mod conns;
mod napi;
mod progs;
mod report;
mod traffic;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use balancers::{Balancer, Running, Target, VIP_PORT};
use conns::ConnLoad;
use lbctl_lab::lab::Lab;
use lbctl_lab::servers::ECHO_PORT;
use progs::Progs;
use report::{ConnResult, PpsResult, Results};
use traffic::{Case, Load, Mix, Rig, Sample, Sink};

/// lbctl under live traffic, beside an XDP reflector, nftables DNAT and HAProxy.
#[derive(Parser, Debug)]
#[command(name = "lbctl-livebench")]
struct Args {
    /// A few packets and connections per case (under 30 s): proves it runs.
    #[arg(long)]
    quick: bool,
    /// Rounds; every case runs once per round, medians are reported.
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of each flat-out capacity run.
    #[arg(long)]
    seconds: Option<f64>,
    /// Seconds of each paced step of the zero-loss search.
    #[arg(long)]
    step_seconds: Option<f64>,
    /// Paced steps per zero-loss search (binary search below capacity).
    #[arg(long)]
    search_steps: Option<usize>,
    /// Rate of the delivery check counted at the backends (capped at half the
    /// case's capacity).
    #[arg(long)]
    delivery_pps: Option<f64>,
    /// Established flows the generator cycles through.
    #[arg(long)]
    flows: Option<u32>,
    /// New-flow runs stop after this many arrivals (each is a conntrack entry).
    #[arg(long)]
    new_flow_cap: Option<u64>,
    /// Seconds of each connection run.
    #[arg(long)]
    conn_seconds: Option<f64>,
    /// Parallel connection workers.
    #[arg(long)]
    workers: Option<usize>,
    /// Most connections per run.
    #[arg(long)]
    max_conns: Option<u64>,
    /// Run every lab interface's receive work as a NAPI thread during the
    /// connection runs, to measure the balancer's CPU per connection (adds
    /// a thread wake-up per packet burst: lower rates, higher latency).
    #[arg(long)]
    conn_threaded_napi: bool,
    /// Backends in the lab.
    #[arg(long, default_value_t = 3)]
    backends: usize,
    /// CPU for the balancer's receive work.
    #[arg(long, default_value_t = 1)]
    lb_cpu: usize,
    /// CPU for the generator, the switch and the backends.
    #[arg(long, default_value_t = 0)]
    gen_cpu: usize,
    /// lbctl-sync: pin both conntrackds to this CPU (default: unpinned).
    #[arg(long)]
    sync_cpu: Option<usize>,
    /// Only these balancers (reflector, lbctl, lbctl-dsr, lbctl-tunnel, lbctl-sync, nft, haproxy); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the packet-rate part.
    #[arg(long)]
    skip_pps: bool,
    /// Skip the connection part.
    #[arg(long)]
    skip_conns: bool,
    /// Where to write the JSON (default: target/bench/live.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The resolved settings of one invocation.
struct Plan {
    quick: bool,
    rounds: usize,
    capacity: Duration,
    step: Duration,
    search_steps: usize,
    delivery_pps: f64,
    flows: u32,
    new_flow_cap: u64,
    conn: ConnLoad,
    conn_threaded: bool,
    max_frames: u64,
    only: Vec<String>,
}

impl Plan {
    fn wants(&self, b: Balancer) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == b.name())
    }
}

impl Args {
    fn plan(&self) -> Plan {
        let q = self.quick;
        let secs = |v: Option<f64>, full: f64, quick: f64| {
            Duration::from_secs_f64(v.unwrap_or(if q { quick } else { full }).clamp(0.05, 60.0))
        };
        Plan {
            quick: q,
            rounds: self.rounds.unwrap_or(if q { 1 } else { 3 }).max(1),
            capacity: secs(self.seconds, 2.0, 0.3),
            step: secs(self.step_seconds, 1.0, 0.2),
            search_steps: self.search_steps.unwrap_or(if q { 1 } else { 5 }),
            delivery_pps: self.delivery_pps.unwrap_or(100_000.0).max(1000.0),
            flows: self.flows.unwrap_or(if q { 1000 } else { 10_000 }).max(1),
            new_flow_cap: self
                .new_flow_cap
                .unwrap_or(if q { 20_000 } else { 150_000 }),
            conn: ConnLoad {
                workers: self.workers.unwrap_or(if q { 4 } else { 8 }).max(1),
                duration: secs(self.conn_seconds, 3.0, 0.5),
                max_conns: self.max_conns.unwrap_or(if q { 2_000 } else { 100_000 }),
            },
            conn_threaded: self.conn_threaded_napi,
            // No run sends more than 60 s of 10 Mpps.
            max_frames: 600_000_000,
            only: self.only.clone(),
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Ctrl-C ends the current run; the lab is then torn down normally.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed));
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lbctl-livebench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: the bench makes network namespaces and loads XDP programs");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.lb_cpu >= cpus || args.gen_cpu >= cpus || args.lb_cpu == args.gen_cpu {
        bail!(
            "need two distinct CPUs below {cpus} for --lb-cpu ({}) and --gen-cpu ({})",
            args.lb_cpu,
            args.gen_cpu
        );
    }
    let mut plan = args.plan();
    // Each new flow is a conntrack entry; past nf_conntrack_max the kernel
    // refuses new ones. Stay well below it, slack included.
    let ct_max: u64 = fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65536);
    let ct_room = (ct_max * 3 / 4).saturating_sub(traffic::ARRIVAL_SLACK);
    if plan.new_flow_cap > ct_room {
        eprintln!(
            "new-flow cap {} lowered to {ct_room}: nf_conntrack_max is {ct_max}",
            plan.new_flow_cap
        );
        plan.new_flow_cap = ct_room.max(1000);
    }
    for o in &plan.only {
        if ![
            "reflector",
            "lbctl",
            "lbctl-dsr",
            "lbctl-tunnel",
            "lbctl-sync",
            "nft",
            "haproxy",
        ]
        .contains(&o.as_str())
        {
            bail!("--only {o}: not one of reflector, lbctl, lbctl-dsr, lbctl-tunnel, lbctl-sync, nft, haproxy");
        }
    }
    let exe = std::env::current_exe()?;
    let lbctl = exe.with_file_name("lbctl");
    if !lbctl.exists() {
        bail!("{} not found: cargo build --release", lbctl.display());
    }
    let out = match &args.out {
        Some(p) => p.clone(),
        // target/<profile>/lbctl-livebench -> target/bench/live.json
        None => exe
            .parent()
            .and_then(Path::parent)
            .map(|t| t.join("bench").join("live.json"))
            .context("no target directory above the binary")?,
    };
    let scratch = std::env::temp_dir().join(format!("lbctl-livebench-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let result = bench(args, &plan, &lbctl, &scratch);
    let _ = fs::remove_dir_all(&scratch);
    let results = result?;

    print!("{}", results.table());
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&out, results.json()).with_context(|| format!("writing {}", out.display()))?;
    println!("\nwrote {}", out.display());
    if plan.quick {
        return sanity(&results);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(args: &Args, plan: &Plan, lbctl: &Path, scratch: &Path) -> Result<Results> {
    let loadavg_start = lbctl_bench::loadavg();
    let progs = Progs::load()?;
    let mut lab = Lab::two_arm(args.backends).context("building the lab")?;
    lab.start_servers()?;
    let mut rig = Rig::new(lab, progs, args.gen_cpu, args.lb_cpu, plan.flows)?;
    rig.sync_cpu = args.sync_cpu;
    let mut results = Results {
        machine: machine_facts(),
        settings: settings(args, plan),
        pps: Vec::new(),
        conns: Vec::new(),
        loadavg_start,
        loadavg_end: f64::NAN,
    };
    if !args.skip_pps {
        rig.pin_receive_work()?;
        let pps = pps_part(&mut rig, plan, lbctl, scratch);
        rig.set_sink(None)?;
        rig.unpin_receive_work()?;
        results.pps = pps?;
    }
    if !args.skip_conns {
        results.conns = conn_part(&mut rig, plan, lbctl, scratch)?;
    }
    results.loadavg_end = lbctl_bench::loadavg();
    Ok(results)
}

fn start(rig: &mut Rig, kind: Balancer, lbctl: &Path, scratch: &Path) -> Result<Running> {
    let t = Target {
        lab: &rig.lab,
        lbctl,
        vip: rig.vip,
        backends: rig.backends.clone(),
        scratch,
        sync_cpu: rig.sync_cpu,
    };
    Running::start(kind, &t, &mut rig.progs)
}

fn pps_part(rig: &mut Rig, plan: &Plan, lbctl: &Path, scratch: &Path) -> Result<Vec<PpsResult>> {
    let cases = [
        (Balancer::Reflector, vec![Mix::Established]),
        (Balancer::Lbctl, vec![Mix::Established, Mix::NewFlows]),
        (Balancer::LbctlDsr, vec![Mix::Established]),
        (Balancer::LbctlTunnel, vec![Mix::Established]),
        (Balancer::LbctlSync, vec![Mix::NewFlows]),
        (Balancer::Nft, vec![Mix::Established, Mix::NewFlows]),
    ];
    let mut results: Vec<PpsResult> = Vec::new();
    for round in 1..=plan.rounds {
        for (balancer, mixes) in cases.iter().filter(|(b, _)| plan.wants(*b)) {
            check_interrupt()?;
            let mut running = start(rig, *balancer, lbctl, scratch)?;
            let is_lbctl = matches!(
                balancer,
                Balancer::Lbctl | Balancer::LbctlDsr | Balancer::LbctlTunnel | Balancer::LbctlSync
            );
            rig.lbctl = is_lbctl.then(|| lbctl.to_path_buf());
            // dsr's and tunnel's frames reach the backends on the VIP's port.
            rig.set_sink_port(
                if matches!(balancer, Balancer::LbctlDsr | Balancer::LbctlTunnel) {
                    VIP_PORT
                } else {
                    ECHO_PORT
                },
            )?;
            let measured = mixes
                .iter()
                .map(|&mix| {
                    pps_case(
                        rig,
                        plan,
                        Case {
                            balancer: *balancer,
                            mix,
                        },
                        round,
                    )
                })
                .collect::<Result<Vec<_>>>();
            rig.lbctl = None;
            running.stop(&mut rig.progs)?;
            for (case, capacity, search, delivery) in measured? {
                match results.iter_mut().find(|r| r.case == case) {
                    Some(r) => {
                        r.capacity.push(capacity);
                        r.searches.push(search);
                        r.deliveries.push(delivery);
                    }
                    None => results.push(PpsResult {
                        case,
                        capacity: vec![capacity],
                        searches: vec![search],
                        deliveries: vec![delivery],
                    }),
                }
            }
        }
    }
    Ok(results)
}

/// One round of one case: capacity (flat out) and the zero-loss search
/// (paced), both counted on the switch port where the balancer is the
/// bottleneck; then a delivery check counted at the backends.
fn pps_case(
    rig: &mut Rig,
    plan: &Plan,
    case: Case,
    round: usize,
) -> Result<(Case, Sample, Vec<Sample>, Sample)> {
    let cap = (case.mix == Mix::NewFlows).then_some(plan.new_flow_cap);
    let name = case.name();
    rig.set_sink(Some(Sink::Switch))?;
    rig.prepare(case.mix)?;
    let capacity = rig.measure(&Load {
        rate_pps: None,
        duration: plan.capacity,
        max_frames: plan.max_frames,
        max_arrivals: cap,
    })?;
    eprintln!(
        "round {round} {name:<22} capacity {:>9.0} pps, {:>9.0} per balancer core ({:.0}% busy), refused {}, other losses {}, load {:.1}",
        capacity.pps(),
        capacity.pps_per_core(),
        capacity.lb_busy() * 100.0,
        capacity.ring_full_balancer,
        capacity.lost_elsewhere(),
        capacity.loadavg
    );
    if capacity.arrived == 0 {
        bail!("{name}: nothing arrived");
    }
    if capacity.lost_elsewhere() > 0 && !capacity.verdicts.is_empty() {
        eprintln!("  lbctl verdicts: {:?}", capacity.verdicts);
    }

    let paced = |rig: &mut Rig, rate: f64| -> Result<Sample> {
        check_interrupt()?;
        rig.prepare(case.mix)?;
        let s = rig.measure(&Load {
            rate_pps: Some(rate),
            duration: plan.step,
            max_frames: plan.max_frames,
            max_arrivals: cap,
        })?;
        eprintln!(
            "round {round} {name:<22} paced {:>9.0} pps, sent {:>9.0}/s: {:>8} frames, lost {:>6} (balancer ring {}, switch ring {}, other {}), balancer {:.0}% busy, waited {:.1} ms",
            rate,
            s.sent_rate(),
            s.sent,
            s.lost(),
            s.ring_full_balancer,
            s.ring_full_switch,
            s.lost_elsewhere(),
            s.lb_busy() * 100.0,
            s.lb_wait_s * 1e3
        );
        Ok(s)
    };
    let (mut lo, mut hi) = (0.0, capacity.pps());
    let mut rate = if plan.quick { hi / 4.0 } else { hi / 2.0 };
    let mut steps = Vec::new();
    for _ in 0..plan.search_steps {
        let s = paced(rig, rate)?;
        if s.lost() == 0 {
            lo = rate;
        } else {
            hi = rate;
        }
        steps.push(s);
        rate = (lo + hi) / 2.0;
    }

    rig.set_sink(Some(Sink::Backends))?;
    let delivery = paced(rig, plan.delivery_pps.min(capacity.pps() / 2.0))?;
    Ok((case, capacity, steps, delivery))
}

fn conn_part(rig: &mut Rig, plan: &Plan, lbctl: &Path, scratch: &Path) -> Result<Vec<ConnResult>> {
    let mut results: Vec<ConnResult> = [
        Balancer::Lbctl,
        Balancer::LbctlSync,
        Balancer::Nft,
        Balancer::Haproxy,
    ]
    .into_iter()
    .filter(|b| plan.wants(*b))
    .map(|balancer| ConnResult {
        balancer,
        runs: Vec::new(),
        errors: Vec::new(),
    })
    .collect();
    // With --conn-threaded-napi every veth end runs its NAPI as a thread
    // (unpinned, normal priority): receive work then runs in its interface's
    // own thread, not in whatever softirq context woke it, so the balancer's
    // share can be read. Otherwise the kernel's defaults.
    let lab = &rig.lab;
    let mut ends = vec![(lab.client_ns(), lab.client_iface().to_string())];
    for iface in lab.lb_ifaces() {
        ends.push((lab.balancer_ns(), iface.to_string()));
    }
    ends.push((lab.switch_ns(), "plb".into()));
    for i in lab.backend_ids() {
        ends.push((lab.switch_ns(), format!("pb{i}")));
        ends.push((lab.backend_ns(i), lab.client_iface().to_string()));
    }
    let threaded = plan.conn_threaded;
    let mut balancer_threads = Vec::new();
    let mut other_threads = Vec::new();
    for (ns, iface) in ends.iter().filter(|_| threaded) {
        let t = napi::NapiThread::start(ns, iface, None)?;
        if *ns == lab.balancer_ns() {
            balancer_threads.push(t);
        } else {
            other_threads.push(t);
        }
    }
    let measured = conn_rounds(rig, plan, lbctl, scratch, &balancer_threads, &mut results);
    for t in balancer_threads.into_iter().chain(other_threads) {
        t.stop()?;
    }
    measured?;
    Ok(results)
}

fn conn_rounds(
    rig: &mut Rig,
    plan: &Plan,
    lbctl: &Path,
    scratch: &Path,
    napi_threads: &[napi::NapiThread],
    results: &mut [ConnResult],
) -> Result<()> {
    let balancer_cpu = |running: &Running| -> Result<u64> {
        let mut ns = 0;
        for t in napi_threads {
            ns += t.cpu_ns()?;
        }
        if let Some(pid) = running.haproxy_pid() {
            ns += napi::process_cpu_ns(pid)?;
        }
        Ok(ns)
    };
    let threaded = !napi_threads.is_empty();
    let own_cpu = || napi::process_cpu_ns(std::process::id());
    for round in 1..=plan.rounds {
        for r in results.iter_mut() {
            check_interrupt()?;
            // A balancer that does not come up costs its round, not the
            // whole benchmark.
            let mut running = match start(rig, r.balancer, lbctl, scratch) {
                Ok(running) => running,
                Err(e) => {
                    eprintln!("round {round} {}: {e:#}", r.balancer.name());
                    r.errors.push(format!("round {round}: {e:#}"));
                    continue;
                }
            };
            let (b0, o0, t0) = (balancer_cpu(&running)?, own_cpu()?, napi::CpuTimes::now());
            let sample = conns::run(&rig.lab, rig.vip, VIP_PORT, &plan.conn);
            let (b1, o1) = (balancer_cpu(&running)?, own_cpu()?);
            let busy = napi::CpuTimes::now().busy_since(&t0);
            running.stop(&mut rig.progs)?;
            let mut sample = sample?;
            sample.balancer_cpu_s = threaded.then_some((b1 - b0) as f64 / 1e9);
            sample.lab_cpu_s = (o1 - o0) as f64 / 1e9;
            sample.cpu_busy = busy;
            eprintln!(
                "round {round} {:<10} {:>7.0} conn/s, p50 {:.2} ms, p99 {:.2} ms, balancer {}, {} failed, load {:.1}",
                r.balancer.name(),
                sample.rate(),
                sample.percentile_ms(50.0),
                sample.percentile_ms(99.0),
                sample
                    .balancer_us_per_conn()
                    .map_or("CPU not measured".into(), |us| format!("{us:.1} µs/conn")),
                sample.failed(),
                sample.loadavg
            );
            r.runs.push(sample);
        }
    }
    Ok(())
}

/// Quick mode's verdict: every case moved traffic.
fn sanity(results: &Results) -> Result<ExitCode> {
    let mut bad = Vec::new();
    for r in &results.pps {
        if r.capacity.iter().any(|s| s.arrived == 0) {
            bad.push(format!("{}: no frames arrived", r.case.name()));
        }
    }
    for r in &results.conns {
        if r.ok() == 0 {
            bad.push(format!("{}: no connection succeeded", r.balancer.name()));
        }
    }
    if bad.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("lbctl-livebench --quick: {}", bad.join("; "));
    Ok(ExitCode::FAILURE)
}

fn machine_facts() -> Vec<(String, String)> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let model = lbctl_bench::cpu_model().unwrap_or_default();
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    let first_line = |argv: &[&str]| {
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_else(|| "not installed".into())
    };
    vec![
        (
            "kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().to_string(),
        ),
        ("cpu".into(), model),
        (
            "cpus".into(),
            std::thread::available_parallelism()
                .map_or(0, |n| n.get())
                .to_string(),
        ),
        ("memory".into(), mem),
        ("nft".into(), first_line(&["nft", "--version"])),
        ("haproxy".into(), first_line(&["haproxy", "-v"])),
    ]
}

fn settings(args: &Args, plan: &Plan) -> Vec<(String, String)> {
    vec![
        (
            "mode".into(),
            if plan.quick { "quick" } else { "full" }.into(),
        ),
        (
            "topology".into(),
            format!("two-arm, {} backends", args.backends),
        ),
        ("rounds".into(), plan.rounds.to_string()),
        (
            "capacity_seconds".into(),
            plan.capacity.as_secs_f64().to_string(),
        ),
        ("step_seconds".into(), plan.step.as_secs_f64().to_string()),
        ("search_steps".into(), plan.search_steps.to_string()),
        ("delivery_pps".into(), plan.delivery_pps.to_string()),
        ("established_flows".into(), plan.flows.to_string()),
        ("new_flow_cap".into(), plan.new_flow_cap.to_string()),
        (
            "frame".into(),
            "64 bytes on the wire (60 + FCS), UDP".into(),
        ),
        ("lb_cpu".into(), args.lb_cpu.to_string()),
        ("gen_cpu".into(), args.gen_cpu.to_string()),
        (
            "sync_cpu".into(),
            args.sync_cpu.map_or("unpinned".into(), |c| c.to_string()),
        ),
        ("conn_workers".into(), plan.conn.workers.to_string()),
        (
            "conn_seconds".into(),
            plan.conn.duration.as_secs_f64().to_string(),
        ),
        ("max_conns".into(), plan.conn.max_conns.to_string()),
        (
            "conn_napi".into(),
            if plan.conn_threaded {
                "threaded"
            } else {
                "softirq (kernel default)"
            }
            .into(),
        ),
    ]
}
