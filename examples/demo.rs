//! `sudo make demo`: lbctl balancing real traffic in a throwaway lab.
//!
//! Builds the lab of network namespaces the end-to-end tests use (client,
//! balancer, three backends, all in 198.18.0.0/15), attaches lbctl, adds a VIP
//! with three weighted backends, sends real TCP connections and UDP flows and
//! shows how they spread, what `lbctl list --stats` and `conntrack -L` say,
//! adds an IPv6 VIP beside the IPv4 one (the lab is dual-stack), then
//! drains a backend while long connections keep talking, runs `lbctl run`
//! with a configuration file whose health checks take a backend with a dead
//! server out of the table and bring it back, and removes everything. Every
//! claim it prints is checked: any failure exits non-zero.
//! The namespaces go away on success, on failure, on panic and on Ctrl-C.
//!
//! Runs as root. `--one-arm` uses the one-arm fullnat topology instead of
//! two-arm dnat; `--lbctl PATH` names the binary (default: target/release/lbctl,
//! found next to this example's own binary).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;

use lbctl_lab::clients::{self, EchoConfig, LongConn};
use lbctl_lab::lab::Family;
use lbctl_lab::{netns, Lab, Topology, ECHO_PORT};

/// Weights of b1, b2, b3.
const WEIGHTS: [u32; 3] = [1, 2, 1];
/// The backend the demo drains (1-based): the heaviest, so it holds the most
/// long connections when it stops taking new ones.
const DRAINED: usize = 2;
const VIP_PORT: u16 = 80;
const SHORT_TCP: usize = 400;
const SHORT_UDP: usize = 100;
/// TCP connections to the IPv6 VIP.
const SHORT_TCP6: usize = 200;
const LONG_CONNS: usize = 20;
const AFTER_DRAIN_TCP: usize = 100;
const AFTER_DRAIN_UDP: usize = 50;
/// UDP flow k comes from client port UDP_FIRST_PORT + k, so every flow of the
/// demo is a new 5-tuple (below the ephemeral range: nothing else uses them).
const UDP_FIRST_PORT: u16 = 20000;
/// Bit 31 of lbctl's conntrack mark: FIN or RST seen (bpf/lb_abi.h).
const MARK_CLOSING: u32 = 1 << 31;
/// Each long connection sends a chunk this often and checks its echo.
const CHUNK_INTERVAL: Duration = Duration::from_millis(20);
/// How long the long connections talk before and after the drain.
const TALK_BEFORE: Duration = Duration::from_millis(1000);
const TALK_AFTER: Duration = Duration::from_millis(2000);
/// Per connection: handshake, each read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// The whole demo, lab included; past this it cleans up and fails.
const DEMO_LIMIT: Duration = Duration::from_secs(180);
/// After Ctrl-C, how long the demo may take to stop on its own before the
/// namespaces are removed from under it.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A share is a failure beyond this many binomial standard deviations from
/// its weight's share: all checks together fail by chance about once in
/// 150,000 runs (exact binomial tails).
const SIGMAS: f64 = 5.0;
/// conntrack -L lines shown.
const CT_LINES: usize = 4;

#[derive(Parser)]
#[command(about = "lbctl balancing real traffic in a throwaway lab of network namespaces")]
struct Args {
    /// Client, balancer and backends on one bridge, the VIP in fullnat
    /// (default: two-arm, the balancer routes between client and backends, dnat).
    #[arg(long)]
    one_arm: bool,
    /// The lbctl binary (default: target/release/lbctl, next to this example).
    #[arg(long, value_name = "PATH")]
    lbctl: Option<PathBuf>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    if let Err(e) = install_ctrl_c() {
        eprintln!("demo: {e:#}");
        return ExitCode::FAILURE;
    }
    spawn_time_limit();
    // The lab lives inside `run`: it is dropped (namespaces deleted) before
    // main returns, also when `run` fails or panics.
    let result = run(&args);
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("demo: interrupted; the lab is removed");
        return ExitCode::from(130);
    }
    match result {
        Ok(()) => {
            println!(
                "\nDemo passed: everything above was checked ({:.1} s).",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every namespace this process may have made, finished lab or not.
fn own_prefix() -> String {
    format!("{}{}-", netns::PREFIX, std::process::id())
}

/// Removes our namespaces from outside the demo's own flow and exits.
fn force_cleanup_and_exit(code: i32) -> ! {
    for name in netns::list_prefixed(&own_prefix()).unwrap_or_default() {
        if let Err(e) = netns::delete(&name) {
            eprintln!("demo: {e}");
        }
    }
    std::process::exit(code);
}

/// Ctrl-C asks the demo to stop (it checks between steps and connections, then
/// drops the lab); if it has not stopped after `STOP_GRACE`, or on a second
/// Ctrl-C, the namespaces are removed here and the process exits.
fn install_ctrl_c() -> Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            force_cleanup_and_exit(130);
        }
        eprintln!("\nCtrl-C: stopping and removing the lab (Ctrl-C again to force)");
        thread::spawn(|| {
            thread::sleep(STOP_GRACE);
            force_cleanup_and_exit(130);
        });
    })
    .context("installing the Ctrl-C handler")
}

/// A hung step must not keep the namespaces forever.
fn spawn_time_limit() {
    thread::spawn(|| {
        thread::sleep(DEMO_LIMIT);
        eprintln!("\ndemo FAILED: still running after {DEMO_LIMIT:?}; removing the lab");
        force_cleanup_and_exit(1);
    });
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// target/release/examples/demo -> target/release/lbctl.
fn find_lbctl(flag: Option<&PathBuf>) -> Result<PathBuf> {
    let path = match flag {
        Some(p) => p.clone(),
        None => {
            let me = std::env::current_exe().context("locating the demo binary")?;
            let dir = me
                .parent()
                .and_then(|examples| examples.parent())
                .context("the demo binary has no parent directory")?;
            dir.join("lbctl")
        }
    };
    ensure!(
        path.is_file(),
        "lbctl not found at {} (build it with `make build`, or pass --lbctl PATH)",
        path.display()
    );
    // Commands run inside namespaces but share our mount namespace, so an
    // absolute path works wherever they run.
    std::fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
}

struct Demo {
    lab: Lab,
    lbctl: PathBuf,
    vip: IpAddr,
    mode: &'static str,
    step: usize,
}

fn run(args: &Args) -> Result<()> {
    ensure!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the demo makes network namespaces and loads XDP programs: run it as root (sudo make demo)"
    );
    let lbctl = find_lbctl(args.lbctl.as_ref())?;
    let topology = if args.one_arm {
        Topology::OneArm
    } else {
        Topology::TwoArm
    };
    println!("lbctl demo: an XDP load balancer that keeps every connection on its backend");
    println!("through the kernel's conntrack, on real traffic between network namespaces.");

    let mut demo = Demo::build(topology, lbctl)?;
    demo.attach()?;
    demo.add_vip()?;
    let short = demo.short_traffic()?;
    demo.show_list()?;
    demo.show_conntrack(&short)?;
    demo.ipv6_vip()?;
    demo.drain_under_load()?;
    demo.health_checks()?;
    demo.clean_up()
}

impl Demo {
    fn header(&mut self, title: &str) {
        self.step += 1;
        println!("\n{}. {title}", self.step);
    }

    fn build(topology: Topology, lbctl: PathBuf) -> Result<Demo> {
        let what = match topology {
            Topology::TwoArm => "two-arm",
            Topology::OneArm => "one-arm",
        };
        println!(
            "\n1. Building a lab of network namespaces ({what}): client, balancer, {} backends",
            WEIGHTS.len()
        );
        let started = Instant::now();
        let mut lab = Lab::dual_stack(topology, WEIGHTS.len()).context("building the lab")?;
        check_interrupt()?;
        lab.start_servers()
            .context("starting the backends' servers")?;
        let mode = match topology {
            Topology::TwoArm => "dnat",
            Topology::OneArm => "fullnat",
        };
        let demo = Demo {
            vip: lab.vip_ip(1, Family::V4),
            lab,
            lbctl,
            mode,
            step: 1,
        };
        demo.print_topology();
        println!(
            "   namespaces {}*, ready in {:.1} s",
            demo.lab.prefix(),
            started.elapsed().as_secs_f64()
        );
        Ok(demo)
    }

    fn print_topology(&self) {
        let lab = &self.lab;
        let backends: Vec<String> = lab
            .backend_ids()
            .map(|i| format!("{} {}", lab.backend_name(i), lab.backend_addr(i)))
            .collect();
        match lab.topology() {
            Topology::TwoArm => {
                println!(
                    "   client {} -- {} [balancer] {} -- switch -- {}",
                    lab.client_addr(),
                    lab.lb_client_iface(),
                    lab.lb_backend_iface(),
                    backends.join(", ")
                );
                println!(
                    "   the balancer routes between 198.18.0.0/24 ({}) and 198.18.1.0/24 ({});",
                    lab.lb_client_addr(),
                    lab.lb_backend_addr()
                );
                println!("   backends send their replies back through it (their default route)");
            }
            Topology::OneArm => {
                println!(
                    "   client {}, balancer {} ({}), {}: all on one switch",
                    lab.client_addr(),
                    lab.lb_client_addr(),
                    lab.lb_client_iface(),
                    backends.join(", ")
                );
                println!("   packets leave the balancer by the interface they came in on");
            }
        }
        println!(
            "   the client routes the VIP net {}/{} to the balancer",
            lab.vip_net().0,
            lab.vip_net().1
        );
        println!(
            "   dual-stack: every address has an IPv6 twin, 198.18.X.Y is 2001:db8:0:X::Y (b1 {})",
            lab.backend_ip(1, Family::V6)
        );
        println!(
            "   each backend runs a TCP and a UDP echo server on port {ECHO_PORT} that answer with its name"
        );
    }

    fn lbctl(&self, args: &[&str]) -> Result<String> {
        let mut argv: Vec<OsString> = vec![self.lbctl.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        self.lab
            .exec(self.lab.balancer_ns(), &argv)
            .with_context(|| format!("lbctl {}", args.join(" ")))
    }

    /// Runs lbctl in the balancer's namespace, echoing the command and its output.
    fn lbctl_shown(&self, args: &[&str]) -> Result<String> {
        check_interrupt()?;
        println!("   $ lbctl {}", args.join(" "));
        let out = self.lbctl(args)?;
        print_indented(&out, "     ");
        Ok(out)
    }

    fn vip_arg(&self) -> String {
        SocketAddr::new(self.vip, VIP_PORT).to_string()
    }

    fn backend_arg(&self, i: usize) -> String {
        self.backend_arg_in(i, Family::V4)
    }

    fn backend_arg_in(&self, i: usize, family: Family) -> String {
        SocketAddr::new(self.lab.backend_ip(i, family), ECHO_PORT).to_string()
    }

    fn attach(&mut self) -> Result<()> {
        let ifaces = self.lab.lb_ifaces();
        self.header(&format!(
            "Attaching lbctl to the balancer's interface{} ({})",
            if ifaces.len() > 1 { "s" } else { "" },
            ifaces.join(", ")
        ));
        for iface in &ifaces {
            self.lbctl_shown(&["attach", iface])?;
        }
        if ifaces.len() > 1 {
            println!(
                "   the second attach joins the running balancer: one program, one set of maps"
            );
        }
        Ok(())
    }

    fn add_vip(&mut self) -> Result<()> {
        let weights: Vec<String> = WEIGHTS.iter().map(u32::to_string).collect();
        self.header(&format!(
            "Adding VIP {} (TCP and UDP, {}) with {} backends, weights {}",
            self.vip_arg(),
            self.mode,
            WEIGHTS.len(),
            weights.join(", ")
        ));
        let v = self.vip_arg();
        for proto in ["tcp", "udp"] {
            self.lbctl_shown(&["vip", "add", &v, "--proto", proto, "--mode", self.mode])?;
            for i in self.lab.backend_ids() {
                let (b, w) = (self.backend_arg(i), WEIGHTS[i - 1].to_string());
                self.lbctl_shown(&["backend", "add", &v, &b, "--proto", proto, "--weight", &w])?;
            }
        }
        println!(
            "   lbctl computed a Maglev lookup table for each VIP and swapped it into the maps:"
        );
        self.lbctl_shown(&["vip", "show", &v, "--proto", "tcp"])?;
        Ok(())
    }

    /// Short TCP connections and UDP flows: their spread must follow the weights.
    fn short_traffic(&mut self) -> Result<Spread> {
        self.header(&format!(
            "Sending {SHORT_TCP} TCP connections and {SHORT_UDP} UDP flows from the client to the VIP"
        ));
        println!(
            "   each TCP connection: handshake, backend's name, echo checked byte for byte, close"
        );
        println!("   each UDP flow: a datagram from a port of its own, answered by one backend");
        let started = Instant::now();
        let spread = Spread {
            tcp: self.tcp_connections(self.vip, SHORT_TCP)?,
            udp: self.udp_flows(SHORT_UDP, UDP_FIRST_PORT)?,
        };
        println!(
            "   all {} answered in {:.1} s:\n",
            SHORT_TCP + SHORT_UDP,
            started.elapsed().as_secs_f64()
        );
        let rows = self.spread_table(&spread, &WEIGHTS);
        print_table(
            &[
                "backend", "address", "weight", "expected", "TCP", "share", "UDP", "share",
            ],
            &rows,
        );
        self.check_spread(&spread.tcp, &WEIGHTS, "TCP")?;
        self.check_spread(&spread.udp, &WEIGHTS, "UDP")?;
        println!("\n   every backend's share is its weight's share, give or take chance");
        Ok(spread)
    }

    fn tcp_connections(&self, vip: IpAddr, n: usize) -> Result<BTreeMap<String, usize>> {
        let target = SocketAddr::new(vip, VIP_PORT);
        self.answers_per_backend(n, |k| {
            clients::tcp_echo(vip, VIP_PORT, format!("hello {k}\n").as_bytes(), IO_TIMEOUT)
                .with_context(|| format!("TCP connection {k} of {n} to {target}"))
        })
    }

    /// `n` UDP flows from client ports `first_port`, `first_port` + 1, ...
    fn udp_flows(&self, n: usize, first_port: u16) -> Result<BTreeMap<String, usize>> {
        let vip = self.vip;
        self.answers_per_backend(n, |k| {
            let from = first_port + k as u16;
            let payload = format!("q{k}");
            clients::udp_ask_from(from, vip, VIP_PORT, payload.as_bytes(), IO_TIMEOUT).with_context(
                || format!("UDP flow {k} of {n} from port {from} to {vip}:{VIP_PORT}"),
            )
        })
    }

    /// Runs `ask(k)` for k in 0..n in the client's namespace, each naming the
    /// backend that answered, and counts the answers per backend.
    fn answers_per_backend(
        &self,
        n: usize,
        ask: impl Fn(usize) -> Result<String> + Sync,
    ) -> Result<BTreeMap<String, usize>> {
        self.lab
            .in_client(|| {
                clients::answers_per_backend(n, |k| {
                    check_interrupt()?;
                    ask(k)
                })
            })
            .map_err(|e| self.with_diagnosis(e))
    }

    /// A failure of traffic through the balancer, with what the balancer saw.
    fn with_diagnosis(&self, e: anyhow::Error) -> anyhow::Error {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return e;
        }
        anyhow::anyhow!("{e:#}\n{}", self.diagnose())
    }

    /// What the balancer says, for failure messages.
    fn diagnose(&self) -> String {
        let mut out = String::from("what the balancer saw:\n");
        for args in [&["status"][..], &["list", "--stats"]] {
            out += &self.lbctl(args).unwrap_or_else(|e| format!("{e:#}\n"));
        }
        out
    }

    fn spread_table(&self, spread: &Spread, weights: &[u32]) -> Vec<Vec<String>> {
        let wsum: u32 = weights.iter().sum();
        let (tcp_total, udp_total) = (total(&spread.tcp), total(&spread.udp));
        let mut rows: Vec<Vec<String>> = self
            .lab
            .backend_ids()
            .map(|i| {
                let name = self.lab.backend_name(i);
                let (t, u) = (count(&spread.tcp, &name), count(&spread.udp, &name));
                vec![
                    name,
                    self.backend_arg(i),
                    weights[i - 1].to_string(),
                    percent(weights[i - 1] as usize, wsum as usize),
                    t.to_string(),
                    percent(t, tcp_total),
                    u.to_string(),
                    percent(u, udp_total),
                ]
            })
            .collect();
        rows.push(vec![
            "total".into(),
            String::new(),
            wsum.to_string(),
            percent(1, 1),
            tcp_total.to_string(),
            percent(1, 1),
            udp_total.to_string(),
            percent(1, 1),
        ]);
        rows
    }

    /// Each backend's count is within `SIGMAS` standard deviations of its
    /// weight's share; a backend of weight 0 gets nothing; no stranger answers.
    fn check_spread(
        &self,
        spread: &BTreeMap<String, usize>,
        weights: &[u32],
        what: &str,
    ) -> Result<()> {
        let n = total(spread) as f64;
        let wsum: u32 = weights.iter().sum();
        let names: Vec<String> = self
            .lab
            .backend_ids()
            .map(|i| self.lab.backend_name(i))
            .collect();
        if let Some(stranger) = spread.keys().find(|k| !names.contains(k)) {
            bail!("{what}: an unknown server {stranger:?} answered ({spread:?})");
        }
        for i in self.lab.backend_ids() {
            let p = weights[i - 1] as f64 / wsum as f64;
            let got = count(spread, &names[i - 1]) as f64;
            let want = n * p;
            let slack = SIGMAS * (n * p * (1.0 - p)).sqrt();
            ensure!(
                (got - want).abs() <= slack,
                "{what}: {} got {got} of {n}, its weight's share is {want:.0} (spread {spread:?})",
                names[i - 1]
            );
        }
        Ok(())
    }

    fn show_list(&mut self) -> Result<()> {
        self.header(
            "What lbctl sees: per-VIP and per-backend counters from the XDP program's maps",
        );
        let out = self.lbctl_shown(&["list", "--stats"])?;
        // The VIP rows count every flow the program created.
        let new_flows = |proto: &str| -> Option<u64> {
            let line = out.lines().find(|l| l.starts_with(proto))?;
            line.split_whitespace().nth(5)?.parse().ok()
        };
        let (tcp, udp) = (new_flows("TCP"), new_flows("UDP"));
        ensure!(
            tcp == Some(SHORT_TCP as u64) && udp == Some(SHORT_UDP as u64),
            "lbctl list counts {tcp:?} new TCP and {udp:?} new UDP flows, the client made {SHORT_TCP} and {SHORT_UDP}"
        );
        println!(
            "   NewFlows: {SHORT_TCP} TCP and {SHORT_UDP} UDP, one per connection the client made"
        );
        println!("   $ lbctl status    (verdicts that are not 0)");
        let status = self.lbctl(&["status"])?;
        let verdicts: Vec<(&str, u64)> = status
            .lines()
            .skip_while(|l| !l.starts_with("verdicts"))
            .skip(1)
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                Some((words.next()?, words.next()?.parse().ok()?))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        for (name, n) in &verdicts {
            println!("     {name:<24} {n}");
        }
        let forwarded = match self.lab.topology() {
            Topology::TwoArm => "xdp_redirect",
            Topology::OneArm => "xdp_tx",
        };
        ensure!(
            verdicts.iter().any(|(name, _)| *name == forwarded),
            "no packet was forwarded with {forwarded}:\n{status}"
        );
        match self.lab.topology() {
            Topology::TwoArm => println!(
                "   xdp_redirect: packets forwarded from one attached interface to the other in XDP"
            ),
            Topology::OneArm => println!(
                "   xdp_tx: packets sent back out of the interface they came in on, in XDP"
            ),
        }
        println!(
            "   (pass_*: ARP, IPv6 neighbour discovery and the like, which lbctl hands to the kernel untouched)"
        );
        Ok(())
    }

    fn conntrack(&self, args: &[&str]) -> Result<Vec<CtEntry>> {
        let mut argv = vec!["conntrack", "-L"];
        argv.extend_from_slice(args);
        let out = self
            .lab
            .exec(self.lab.balancer_ns(), &argv)
            .context("conntrack -L in the balancer's namespace")?;
        Ok(out.lines().filter_map(CtEntry::parse).collect())
    }

    fn show_conntrack(&mut self, short: &Spread) -> Result<()> {
        self.header(
            "What the kernel sees: conntrack -L in the balancer's namespace (the XDP program made these)",
        );
        let entries = self.conntrack(&[])?;
        let vip = self.vip.to_string();
        let ours: Vec<&CtEntry> = entries
            .iter()
            .filter(|e| e.orig_dst == vip && e.mark != 0)
            .collect();
        // One TCP and one UDP entry per backend would be too long: a few lines.
        let mut shown: Vec<&CtEntry> = ours
            .iter()
            .filter(|e| e.proto == "tcp")
            .take(CT_LINES / 2)
            .copied()
            .collect();
        shown.extend(ours.iter().filter(|e| e.proto == "udp").take(CT_LINES / 2));
        println!(
            "   $ conntrack -L    ({} entries; {} shown)",
            entries.len(),
            shown.len()
        );
        for e in &shown {
            println!("     {}", e.line);
        }
        let mut rows = Vec::new();
        for i in self.lab.backend_ids() {
            let addr = self.lab.backend_addr(i).to_string();
            let name = self.lab.backend_name(i);
            let n = |proto: &str| {
                ours.iter()
                    .filter(|e| e.proto == proto && e.reply_src == addr)
                    .count()
            };
            let (t, u) = (n("tcp"), n("udp"));
            ensure!(
                t == count(&short.tcp, &name) && u == count(&short.udp, &name),
                "conntrack sends {t} TCP and {u} UDP flows to {name}, the client saw {} and {}",
                count(&short.tcp, &name),
                count(&short.udp, &name)
            );
            rows.push(vec![name, addr, t.to_string(), u.to_string()]);
        }
        println!();
        print_table(
            &["backend", "reply from", "TCP entries", "UDP entries"],
            &rows,
        );
        println!();
        self.explain_entry(&shown)?;
        Ok(())
    }

    /// Reads one entry aloud.
    fn explain_entry(&self, shown: &[&CtEntry]) -> Result<()> {
        let e = shown.first().context("no conntrack entry to show")?;
        println!(
            "   one entry per flow, both directions: the client's packets to the VIP (src={} dst={})",
            e.orig_src, e.orig_dst
        );
        match self.lab.topology() {
            Topology::TwoArm => println!(
                "   are answered by the backend (src={} dst={}): dnat, the backend sees the client",
                e.reply_src, e.reply_dst
            ),
            Topology::OneArm => println!(
                "   are answered by the backend (src={} dst={}): fullnat, the backend sees the balancer",
                e.reply_src, e.reply_dst
            ),
        }
        println!("   entries match the connections above, per backend; closed TCP connections");
        println!("   wait out the FIN timeout, UDP flows their idle timeout (`lbctl timeouts`)");
        println!(
            "   mark={} = {:#x}: backend id {}, VIP index {}{}",
            e.mark,
            e.mark,
            (e.mark & 0x1ffff).saturating_sub(1),
            (e.mark >> 17) & 0x7ff,
            if e.mark & MARK_CLOSING != 0 {
                ", closing (FIN or RST seen: short timeout)"
            } else {
                ""
            }
        );
        if e.proto == "tcp" {
            println!(
                "   state NONE: these packets never reach netfilter's TCP tracker; the XDP program"
            );
            println!("   refreshes the timeout and notes FIN/RST in the mark instead");
        }
        Ok(())
    }

    /// An IPv6 VIP on the same balancer, beside the IPv4 one: same mode,
    /// the backends' IPv6 addresses, the same five steps in the data path.
    fn ipv6_vip(&mut self) -> Result<()> {
        let vip6 = self.lab.vip_ip(1, Family::V6);
        let v = SocketAddr::new(vip6, VIP_PORT).to_string();
        self.header(&format!(
            "IPv6 on the same balancer: VIP {v} (TCP, {}), the backends' IPv6 addresses",
            self.mode
        ));
        self.lbctl_shown(&["vip", "add", &v, "--mode", self.mode])?;
        for i in self.lab.backend_ids() {
            let (b, w) = (
                self.backend_arg_in(i, Family::V6),
                WEIGHTS[i - 1].to_string(),
            );
            self.lbctl_shown(&["backend", "add", &v, &b, "--weight", &w])?;
        }
        let tcp = self.tcp_connections(vip6, SHORT_TCP6)?;
        let wsum: u32 = WEIGHTS.iter().sum();
        let rows: Vec<Vec<String>> = self
            .lab
            .backend_ids()
            .map(|i| {
                let name = self.lab.backend_name(i);
                let t = count(&tcp, &name);
                vec![
                    name,
                    self.backend_arg_in(i, Family::V6),
                    WEIGHTS[i - 1].to_string(),
                    percent(WEIGHTS[i - 1] as usize, wsum as usize),
                    t.to_string(),
                    percent(t, total(&tcp)),
                ]
            })
            .collect();
        println!("   {SHORT_TCP6} TCP connections to {v}, each echo checked:\n");
        print_table(
            &["backend", "address", "weight", "expected", "TCP", "share"],
            &rows,
        );
        self.check_spread(&tcp, &WEIGHTS, "IPv6 TCP")?;
        let entries = self.conntrack(&["-f", "ipv6", "-p", "tcp"])?;
        let ours: Vec<&CtEntry> = entries
            .iter()
            .filter(|e| e.orig_dst == vip6.to_string() && e.mark != 0)
            .collect();
        println!(
            "\n   $ conntrack -L -f ipv6 -p tcp    ({} entries; 1 shown)",
            ours.len()
        );
        if let Some(e) = ours.first() {
            println!("     {}", e.line);
        }
        for i in self.lab.backend_ids() {
            let addr = self.lab.backend_ip(i, Family::V6).to_string();
            let name = self.lab.backend_name(i);
            let n = ours.iter().filter(|e| e.reply_src == addr).count();
            ensure!(
                n == count(&tcp, &name),
                "conntrack sends {n} IPv6 flows to {name}, the client saw {}",
                count(&tcp, &name)
            );
        }
        println!("   one balancer, one program: IPv4 and IPv6 go through the same five steps,");
        println!("   each into the kernel's conntrack (NAT66 here) with lbctl's mark");
        Ok(())
    }

    fn drain_under_load(&mut self) -> Result<()> {
        let drained = self.lab.backend_name(DRAINED);
        self.header(&format!(
            "Draining {drained} (weight 0) while {LONG_CONNS} long connections keep talking"
        ));
        let vip = self.vip;
        let cfg = EchoConfig {
            interval: CHUNK_INTERVAL,
            io_timeout: IO_TIMEOUT,
            max_duration: Duration::from_secs(60),
            ..Default::default()
        };
        check_interrupt()?;
        let conns: Vec<LongConn> = self
            .lab
            .in_client(|| {
                clients::start_many(LONG_CONNS, vip, VIP_PORT, &cfg).map_err(anyhow::Error::from)
            })
            .context("opening the long connections")?;
        let mut long_spread: BTreeMap<String, usize> = BTreeMap::new();
        for c in &conns {
            *long_spread.entry(c.backend().to_string()).or_insert(0) += 1;
        }
        println!(
            "   {LONG_CONNS} connections open ({}); each sends a {}-byte chunk every {} ms",
            self.describe(&long_spread),
            cfg.chunk_len,
            CHUNK_INTERVAL.as_millis()
        );
        println!("   and checks that exactly those bytes come back");
        self.pause(TALK_BEFORE)?;
        let before: Vec<u64> = conns.iter().map(LongConn::chunks_ok).collect();

        let (v, b) = (self.vip_arg(), self.backend_arg(DRAINED));
        for proto in ["tcp", "udp"] {
            self.lbctl_shown(&["backend", "set", &v, &b, "--weight", "0", "--proto", proto])?;
        }
        let mut weights = WEIGHTS;
        weights[DRAINED - 1] = 0;
        let fresh = Spread {
            tcp: self.tcp_connections(self.vip, AFTER_DRAIN_TCP)?,
            udp: self.udp_flows(AFTER_DRAIN_UDP, UDP_FIRST_PORT + SHORT_UDP as u16)?,
        };
        println!(
            "   new after the drain: {AFTER_DRAIN_TCP} TCP connections ({}), {AFTER_DRAIN_UDP} UDP flows ({})",
            self.describe(&fresh.tcp),
            self.describe(&fresh.udp)
        );
        self.check_spread(&fresh.tcp, &weights, "TCP after the drain")?;
        self.check_spread(&fresh.udp, &weights, "UDP after the drain")?;
        println!("   -> the drained backend gets no new flows");
        self.pause(TALK_AFTER)?;

        // Still open (no FIN or RST seen), and conntrack still sends each to
        // its backend: taken before the connections close.
        let entries = self.conntrack(&["-p", "tcp"]);
        let reports = clients::finish_all(conns);
        let vip = self.vip.to_string();
        let open: Vec<CtEntry> = entries?
            .into_iter()
            .filter(|e| e.orig_dst == vip && e.mark != 0 && e.mark & MARK_CLOSING == 0)
            .collect();
        println!(
            "\n   {LONG_CONNS} long connections, stopped after {:.1} s more:\n",
            TALK_AFTER.as_secs_f64()
        );
        let mut rows = Vec::new();
        let mut failures = Vec::new();
        for i in self.lab.backend_ids() {
            let name = self.lab.backend_name(i);
            let addr = self.lab.backend_addr(i).to_string();
            let mine: Vec<(usize, &clients::ConnReport)> = reports
                .iter()
                .enumerate()
                .filter(|(_, r)| r.backend == name)
                .collect();
            let chunks: u64 = mine.iter().map(|(_, r)| r.chunks_ok).sum();
            let after: u64 = mine.iter().map(|(k, r)| r.chunks_ok - before[*k]).sum();
            let broken = mine.iter().filter(|(_, r)| !r.is_ok()).count();
            let tracked = open.iter().filter(|e| e.reply_src == addr).count();
            rows.push(vec![
                name.clone(),
                format!(
                    "{}{}",
                    weights[i - 1],
                    if i == DRAINED { " (drained)" } else { "" }
                ),
                mine.len().to_string(),
                chunks.to_string(),
                after.to_string(),
                broken.to_string(),
                tracked.to_string(),
            ]);
            if tracked != mine.len() {
                failures.push(format!(
                    "{name}: {} long connections, conntrack has {tracked} open entries to it",
                    mine.len()
                ));
            }
            for (k, r) in &mine {
                if r.chunks_ok - before[*k] < 10 {
                    failures.push(format!(
                        "connection {} exchanged only {} chunks after the drain",
                        r.id,
                        r.chunks_ok - before[*k]
                    ));
                }
            }
        }
        print_table(
            &[
                "backend",
                "weight",
                "long conns",
                "chunks echoed",
                "after drain",
                "broken",
                "open in conntrack",
            ],
            &rows,
        );
        if let Some(broken) = clients::broken_summary(&reports) {
            failures.insert(0, broken);
        }
        if !failures.is_empty() {
            bail!("{}\n{}", failures.join("\n"), self.diagnose());
        }
        let total_chunks: u64 = reports.iter().map(|r| r.chunks_ok).sum();
        let on_drained = long_spread.get(&drained).copied().unwrap_or(0);
        println!(
            "\n   -> all {LONG_CONNS} survived: {total_chunks} chunks echoed, none reset, each on the backend"
        );
        println!(
            "      it started on ({on_drained} of them on the drained {drained}), its conntrack entry intact"
        );
        Ok(())
    }

    /// `lbctl run` with a configuration file: health checks take a dead
    /// backend out of the table and bring it back when it answers again.
    fn health_checks(&mut self) -> Result<()> {
        const DEAD: usize = 3;
        let dead = self.lab.backend_name(DEAD);
        self.header(&format!(
            "lbctl run: health checks take {dead} out when its server dies, and bring it back"
        ));
        let v = self.vip_arg();
        let mut file = format!(
            "interfaces = {:?}\n\n[[vip]]\naddress = \"{v}\"\nproto = \"tcp\"\nmode = \"{}\"\n\n[vip.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n",
            self.lab.lb_ifaces(),
            self.mode
        );
        for i in self.lab.backend_ids() {
            let w = WEIGHTS[i - 1];
            file += &format!(
                "\n[[vip.backend]]\naddress = \"{}\"\nweight = {w}\n",
                self.backend_arg(i)
            );
        }
        let udp_backends: Vec<String> = self
            .lab
            .backend_ids()
            .map(|i| {
                format!(
                    "\n[[vip.backend]]\naddress = \"{}\"\nweight = {}\n",
                    self.backend_arg(i),
                    if i == DRAINED { 0 } else { WEIGHTS[i - 1] }
                )
            })
            .collect();
        file += &format!(
            "\n[[vip]]\naddress = \"{v}\"\nproto = \"udp\"\nmode = \"{}\"\n{}",
            self.mode,
            udp_backends.concat()
        );
        let path = std::env::temp_dir().join(format!("{}demo.toml", self.lab.prefix()));
        std::fs::write(&path, &file).context("writing the demo's configuration file")?;
        println!("   a configuration file for both VIPs: TCP with health checks every 200 ms");
        println!("   (down after 2 failures, up after 2 successes), b2's TCP weight back to 2:");
        for line in file
            .lines()
            .skip_while(|l| !l.starts_with("[[vip]]"))
            .take(17)
        {
            println!("     {line}");
        }
        println!("     ...");
        println!("   $ lbctl run -f {} &", path.display());
        let svc = RunningService::start(&self.lab, &self.lbctl, &path)?;
        let result = self.health_steps(&svc, DEAD);
        let log = svc.stop();
        let _ = std::fs::remove_file(&path);
        for line in &log {
            println!("     {line}");
        }
        result?;
        ensure!(
            log.iter().any(|l| l.contains("is down")) && log.iter().any(|l| l.contains("SIGTERM")),
            "lbctl run's log lacks the health change or the stop"
        );
        println!("   -> one log line per health change; after SIGTERM the data path keeps running");
        Ok(())
    }

    fn health_steps(&mut self, svc: &RunningService, dead_i: usize) -> Result<()> {
        let dead = self.lab.backend_name(dead_i);
        let addr = self.backend_arg(dead_i);
        let health = |demo: &Demo| -> Result<String> {
            let list = demo.lbctl(&["list"])?;
            Ok(list
                .lines()
                .find(|l| l.contains(&addr))
                .and_then(|l| l.split_whitespace().nth(3))
                .unwrap_or("?")
                .to_string())
        };
        let wait = |demo: &Demo, want: &str| -> Result<Duration> {
            let started = Instant::now();
            while health(demo)? != want {
                check_interrupt()?;
                ensure!(
                    started.elapsed() < Duration::from_secs(5),
                    "{dead} is not {want} after 5 s"
                );
                thread::sleep(Duration::from_millis(20));
            }
            Ok(started.elapsed())
        };
        wait(self, "up")?;
        ensure!(svc.alive(), "lbctl run stopped");
        self.lbctl_shown(&["list"])?;
        println!("   stopping {dead}'s servers (its port now refuses connections)");
        self.lab.stop_server(dead_i);
        let took = wait(self, "down")?;
        println!("   {dead} marked down {:.2} s later:", took.as_secs_f64());
        self.lbctl_shown(&["list"])?;
        let spread = self.tcp_connections(self.vip, 60)?;
        println!("   60 new TCP connections: {}", self.describe(&spread));
        ensure!(
            !spread.contains_key(&dead),
            "a dead backend got new connections: {spread:?}"
        );
        println!(
            "   -> none to {dead}: it left the Maglev table (its weight stays {})",
            WEIGHTS[dead_i - 1]
        );
        println!("   starting {dead}'s servers again");
        self.lab
            .start_server(dead_i)
            .context("restarting the servers")?;
        let took = wait(self, "up")?;
        println!("   {dead} marked up {:.2} s later", took.as_secs_f64());
        let spread = self.tcp_connections(self.vip, 60)?;
        println!("   60 new TCP connections: {}", self.describe(&spread));
        ensure!(
            spread.contains_key(&dead),
            "{dead} gets no new connections after it came back: {spread:?}"
        );
        println!("   -> {dead} takes new flows again");
        Ok(())
    }

    /// `b1 10, b2 0, b3 10`.
    fn describe(&self, spread: &BTreeMap<String, usize>) -> String {
        self.lab
            .backend_ids()
            .map(|i| {
                let name = self.lab.backend_name(i);
                format!("{name} {}", count(spread, &name))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn pause(&self, how_long: Duration) -> Result<()> {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            check_interrupt()?;
            thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        Ok(())
    }

    fn clean_up(mut self) -> Result<()> {
        self.header("Cleaning up: detaching lbctl and removing the namespaces");
        for iface in self.lab.lb_ifaces() {
            self.lbctl_shown(&["detach", iface])?;
        }
        let prefix = self.lab.prefix().to_string();
        let names = self.lab.namespaces().len();
        self.lab.teardown().context("removing the lab")?;
        let left = netns::list_prefixed(&prefix)?;
        ensure!(left.is_empty(), "namespaces left behind: {left:?}");
        println!("   removed {names} namespaces ({prefix}*); nothing of the demo is left");
        Ok(())
    }
}

/// `lbctl run` in the balancer's namespace, its log collected.
struct RunningService {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RunningService {
    fn start(lab: &Lab, lbctl: &std::path::Path, file: &std::path::Path) -> Result<RunningService> {
        use std::io::BufRead;
        let argv = [
            lbctl.as_os_str(),
            "run".as_ref(),
            "-f".as_ref(),
            file.as_os_str(),
        ];
        let mut child = netns::command(lab.balancer_ns(), &argv)?
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting lbctl run")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stderr, l) = (
            child.stderr.take().context("lbctl run's stderr")?,
            log.clone(),
        );
        thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                l.lock().map(|mut v| v.push(line)).ok();
            }
        });
        Ok(RunningService { child, log })
    }

    fn alive(&self) -> bool {
        std::process::Command::new("kill")
            .args(["-0", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGTERM, wait (bounded), and the log.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(Duration::from_millis(50));
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Which backend answered, per protocol.
struct Spread {
    tcp: BTreeMap<String, usize>,
    udp: BTreeMap<String, usize>,
}

/// The fields of a `conntrack -L` line the demo reads.
struct CtEntry {
    line: String,
    proto: String,
    orig_src: String,
    orig_dst: String,
    reply_src: String,
    reply_dst: String,
    mark: u32,
}

impl CtEntry {
    /// `tcp 6 117 TIME_WAIT src=A dst=V sport=.. dport=.. src=B dst=A ... mark=N use=1`
    fn parse(line: &str) -> Option<CtEntry> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let all = |key: &str| -> Vec<String> {
            words
                .iter()
                .filter_map(|w| w.strip_prefix(key))
                .map(str::to_string)
                .collect()
        };
        let (src, dst) = (all("src="), all("dst="));
        Some(CtEntry {
            line: line.trim().to_string(),
            proto: words.first()?.to_string(),
            orig_src: src.first()?.clone(),
            orig_dst: dst.first()?.clone(),
            reply_src: src.get(1)?.clone(),
            reply_dst: dst.get(1)?.clone(),
            mark: all("mark=")
                .first()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0),
        })
    }
}

fn count(spread: &BTreeMap<String, usize>, name: &str) -> usize {
    spread.get(name).copied().unwrap_or(0)
}

fn total(spread: &BTreeMap<String, usize>) -> usize {
    spread.values().sum()
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

fn print_indented(text: &str, indent: &str) {
    for line in text.lines() {
        println!("{indent}{line}");
    }
}

/// Left-aligned first two columns, the rest right-aligned.
fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..head.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([head[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c < 2 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        println!("   {}", parts.join("   ").trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
