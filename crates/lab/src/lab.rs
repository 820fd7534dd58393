//! The two lab topologies: namespaces, veths, a bridge, addresses and routes.
//!
//! ```text
//! two-arm:  c:eth0 ─── lba:lb:lbb ─── sw:br0 ─┬─ b1:eth0
//!           198.18.0.2  .0.1  .1.1            ├─ b2:eth0   198.18.1.(10+i)
//!                                             └─ ...
//! one-arm:  c:eth0 ─┐
//!           lb:lb0 ─┼─ sw:br0        all in 198.18.2.0/24: c .2, lb .1, bi .(10+i)
//!           bi:eth0 ┘
//! ```
//! The bridge lives in its own namespace `sw` because XDP cannot redirect into a
//! bridge device: the balancer only ever sees plain veths.
//! VIPs live in 198.18.100.0/24; the client routes that net via the balancer.
//!
//! A lab behind a router (`Lab::behind_router`, for path MTU tests) puts a
//! router namespace `r` between the client and the balancer's side:
//!
//! ```text
//! two-arm:  c:eth0 ─── r:rc  r:rl ─── lba:lb ...      c 198.18.3.2, r .3.1
//!                                                     r:rl 198.18.0.3
//! one-arm:  c:eth0 ─── r:rc  r:rl ─── sw:pr (bridge)  r:rl 198.18.2.3
//! ```
//! The client's link (c:eth0, r:rc) has a smaller MTU, and the client's
//! route to the VIPs advertises a larger MSS than that link allows, as a
//! host behind a tunnel without MSS clamping does: full-size segments from
//! the backends reach the router, which answers them with ICMP errors.
//!
//! A dual-stack lab (`Lab::dual_stack`) adds IPv6 to the same wiring: every
//! IPv4 address 198.18.X.Y has the twin 2001:db8:0:X::Y (X and Y written
//! as the same digits: 198.18.1.11 is 2001:db8:0:1::11, VIP 198.18.100.1 is
//! 2001:db8:0:100::1), with the same routes. IPv4-only labs keep IPv6
//! disabled, so their only traffic is the tests'.
//! Every veth end has GRO on, TX checksum offload is left on as the kernel
//! sets it (`set_tx_checksum_offload` turns it off), and the ends facing the
//! balancer carry a native XDP_PASS program (see `tune_veths` and
//! `attach_pass_to_balancer_peers` for why).

use std::ffi::OsStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::netns;
use super::servers::BackendServers;
use super::xdp_pass;

/// The net that VIPs are taken from; the client routes it via the balancer.
pub const VIP_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 100, 0), 24);

/// An address family, for the labs' addresses and the tests that run in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// The lab's IPv6 twin of one of its IPv4 addresses: 198.18.X.Y is
/// 2001:db8:0:X::Y, X and Y written with the same digits (read as hex).
pub fn ipv6_twin(v4: Ipv4Addr) -> Ipv6Addr {
    let [a, b, x, y] = v4.octets();
    assert_eq!(
        (a, b),
        (198, 18),
        "{v4}: the lab's IPv4 addresses are in 198.18.0.0/16"
    );
    let group = |n: u8| u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(0x2001, 0xdb8, 0, group(x), 0, 0, 0, group(y))
}

/// An address of the lab in `family`: the IPv4 address, or its twin.
pub fn in_family(v4: Ipv4Addr, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(v4),
        Family::V6 => IpAddr::V6(ipv6_twin(v4)),
    }
}

/// Most backends a lab builds (addresses .11 to .210, switch ports pb1..pb200).
pub const MAX_BACKENDS: usize = 200;

/// Interface name of the client and of every backend (each in its own namespace).
pub const HOST_IFACE: &str = "eth0";

const BRIDGE: &str = "br0";

/// The router's interfaces: towards the client, towards the balancer.
const ROUTER_CLIENT_IFACE: &str = "rc";
const ROUTER_LB_IFACE: &str = "rl";

/// How long a new lab may take for all its links to come up.
const LINK_UP_WAIT: Duration = Duration::from_secs(3);

/// Numbers the labs of this process so parallel tests get distinct names.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Client net and backend net on separate balancer interfaces.
    TwoArm,
    /// Client, balancer and backends on one bridge; the balancer has one interface.
    OneArm,
}

/// The router between the client and the balancer's side, and its link
/// to the client.
#[derive(Clone, Debug)]
struct RouterPlan {
    /// Its address on the client's link (the client's gateway).
    client_side: Ipv4Addr,
    /// Its address on the balancer's link (two-arm) or the bridge (one-arm).
    lb_side: Ipv4Addr,
    /// MTU of the client's link, both ends.
    client_link_mtu: u32,
}

/// MSS the client's route to the VIPs advertises (IPv4, IPv6): a 1500-byte
/// link's, whatever its own link's MTU.
const ROUTER_CLIENT_ADVMSS: (u32, u32) = (1460, 1440);

/// Addresses and interface names of one topology.
#[derive(Clone, Debug)]
struct Plan {
    client_addr: Ipv4Addr,
    lb_client_addr: Ipv4Addr,
    lb_backend_addr: Ipv4Addr,
    /// Third octet of the backend net: backend i is 198.18.<net>.(10+i).
    backend_net: u8,
    lb_client_iface: &'static str,
    lb_backend_iface: &'static str,
    /// A router between the client and the balancer's side.
    router: Option<RouterPlan>,
}

impl Plan {
    fn for_topology(topology: Topology) -> Plan {
        match topology {
            Topology::TwoArm => Plan {
                client_addr: Ipv4Addr::new(198, 18, 0, 2),
                lb_client_addr: Ipv4Addr::new(198, 18, 0, 1),
                lb_backend_addr: Ipv4Addr::new(198, 18, 1, 1),
                backend_net: 1,
                lb_client_iface: "lba",
                lb_backend_iface: "lbb",
                router: None,
            },
            Topology::OneArm => Plan {
                client_addr: Ipv4Addr::new(198, 18, 2, 2),
                lb_client_addr: Ipv4Addr::new(198, 18, 2, 1),
                lb_backend_addr: Ipv4Addr::new(198, 18, 2, 1),
                backend_net: 2,
                lb_client_iface: "lb0",
                lb_backend_iface: "lb0",
                router: None,
            },
        }
    }

    /// The same with the client in 198.18.3.0/24 behind a router, the
    /// client's link of MTU `client_link_mtu`.
    fn behind_router(topology: Topology, client_link_mtu: u32) -> Plan {
        let mut plan = Plan::for_topology(topology);
        let lb_side = match topology {
            Topology::TwoArm => Ipv4Addr::new(198, 18, 0, 3),
            Topology::OneArm => Ipv4Addr::new(198, 18, 2, 3),
        };
        plan.client_addr = Ipv4Addr::new(198, 18, 3, 2);
        plan.router = Some(RouterPlan {
            client_side: Ipv4Addr::new(198, 18, 3, 1),
            lb_side,
            client_link_mtu,
        });
        plan
    }
}

/// A set of namespaces wired into one topology. Dropping it stops the servers,
/// kills every process left in its namespaces and deletes them, also when the
/// test that owns it panics.
pub struct Lab {
    topology: Topology,
    /// IPv6 too (addresses, routes, forwarding, servers).
    ipv6: bool,
    plan: Plan,
    /// `lbt-<pid>-<n>-`; every namespace name of this lab starts with it.
    prefix: String,
    client_ns: String,
    balancer_ns: String,
    switch_ns: String,
    /// The router's namespace (`behind_router`), else empty.
    router_ns: String,
    /// Index 0 is b1.
    backend_ns: Vec<String>,
    backends: usize,
    /// Namespaces created so far, in creation order (deleted in reverse).
    created: Vec<String>,
    /// Servers per backend (index 0 is b1), started on demand.
    servers: Vec<Option<BackendServers>>,
    /// veth pairs created so far; numbers their interface indexes.
    veth_pairs: AtomicU32,
    /// bpf_links of the XDP pass programs on the balancer's peers.
    xdp_links: Vec<OwnedFd>,
}

impl Lab {
    /// Client ↔ balancer ↔ switch ↔ backends, the balancer forwarding between
    /// 198.18.0.0/24 and 198.18.1.0/24.
    pub fn two_arm(n_backends: usize) -> io::Result<Lab> {
        Lab::build(
            Plan::for_topology(Topology::TwoArm),
            Topology::TwoArm,
            n_backends,
            false,
        )
    }

    /// Client, balancer and backends on one bridge in 198.18.2.0/24.
    pub fn one_arm(n_backends: usize) -> io::Result<Lab> {
        Lab::build(
            Plan::for_topology(Topology::OneArm),
            Topology::OneArm,
            n_backends,
            false,
        )
    }

    /// Either topology with IPv6 beside IPv4: every address has its twin
    /// (`ipv6_twin`), the routes and forwarding are the same, and the
    /// servers answer on both.
    pub fn dual_stack(topology: Topology, n_backends: usize) -> io::Result<Lab> {
        Lab::build(Plan::for_topology(topology), topology, n_backends, true)
    }

    /// A dual-stack lab whose client sits behind a router, on a link of MTU
    /// `client_link_mtu` while advertising the MSS of a 1500-byte link (see
    /// the module's comment): for path MTU discovery through lbctl.
    pub fn behind_router(
        topology: Topology,
        n_backends: usize,
        client_link_mtu: u32,
    ) -> io::Result<Lab> {
        let plan = Plan::behind_router(topology, client_link_mtu);
        Lab::build(plan, topology, n_backends, true)
    }

    fn build(plan: Plan, topology: Topology, n_backends: usize, ipv6: bool) -> io::Result<Lab> {
        if n_backends > MAX_BACKENDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_BACKENDS} backends, asked for {n_backends}"),
            ));
        }
        netns::sweep_stale();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{}{}-{}-", netns::PREFIX, std::process::id(), n);
        // From here on every failure returns early and `lab`'s Drop cleans up.
        let mut lab = Lab {
            topology,
            ipv6,
            client_ns: format!("{prefix}c"),
            balancer_ns: format!("{prefix}lb"),
            switch_ns: format!("{prefix}sw"),
            router_ns: match plan.router {
                Some(_) => format!("{prefix}r"),
                None => String::new(),
            },
            plan,
            backend_ns: (1..=n_backends).map(|i| format!("{prefix}b{i}")).collect(),
            prefix,
            backends: n_backends,
            created: Vec::new(),
            servers: (0..n_backends).map(|_| None).collect(),
            veth_pairs: AtomicU32::new(0),
            xdp_links: Vec::new(),
        };
        lab.create_namespaces()?;
        lab.build_switch()?;
        match topology {
            Topology::TwoArm => lab.wire_two_arm()?,
            Topology::OneArm => lab.wire_one_arm()?,
        }
        lab.wire_router()?;
        lab.tune_veths()?;
        lab.attach_pass_to_balancer_peers()?;
        lab.wait_links_up()?;
        Ok(lab)
    }

    // ----- names and addresses -------------------------------------------------

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Whether the lab has IPv6 (built with `dual_stack`).
    pub fn has_ipv6(&self) -> bool {
        self.ipv6
    }

    /// `lbt-<pid>-<n>-`: the start of every namespace name of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// All namespaces of this lab.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    pub fn balancer_ns(&self) -> &str {
        &self.balancer_ns
    }

    /// The namespace holding the bridge.
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// The router's namespace, in a lab built `behind_router`.
    pub fn router_ns(&self) -> Option<&str> {
        self.plan.router.as_ref().map(|_| self.router_ns.as_str())
    }

    /// Namespace of backend `i` (1-based: b1..bN).
    pub fn backend_ns(&self, i: usize) -> &str {
        self.check_backend(i);
        &self.backend_ns[i - 1]
    }

    /// `b<i>`: the name backend `i`'s servers answer with.
    pub fn backend_name(&self, i: usize) -> String {
        self.check_backend(i);
        format!("b{i}")
    }

    /// Number of backends.
    pub fn backends(&self) -> usize {
        self.backends
    }

    /// Backend indices, 1..=N.
    pub fn backend_ids(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.backends
    }

    pub fn backend_addr(&self, i: usize) -> Ipv4Addr {
        self.check_backend(i);
        Ipv4Addr::new(198, 18, self.plan.backend_net, 10 + i as u8)
    }

    pub fn client_addr(&self) -> Ipv4Addr {
        self.plan.client_addr
    }

    pub fn client_iface(&self) -> &'static str {
        HOST_IFACE
    }

    /// The balancer's address the client routes VIP traffic to.
    pub fn lb_client_addr(&self) -> Ipv4Addr {
        self.plan.lb_client_addr
    }

    /// The balancer's address on the backend net (fullnat source address).
    /// Same as `lb_client_addr` in one-arm.
    pub fn lb_backend_addr(&self) -> Ipv4Addr {
        self.plan.lb_backend_addr
    }

    pub fn lb_client_iface(&self) -> &'static str {
        self.plan.lb_client_iface
    }

    pub fn lb_backend_iface(&self) -> &'static str {
        self.plan.lb_backend_iface
    }

    /// The balancer's interfaces, to attach XDP to: `["lba", "lbb"]` or `["lb0"]`.
    pub fn lb_ifaces(&self) -> Vec<&'static str> {
        match self.topology {
            Topology::TwoArm => vec![self.plan.lb_client_iface, self.plan.lb_backend_iface],
            Topology::OneArm => vec![self.plan.lb_client_iface],
        }
    }

    /// The VIP net (198.18.100.0/24).
    pub fn vip_net(&self) -> (Ipv4Addr, u8) {
        VIP_NET
    }

    /// VIP number `k` (1..=254): 198.18.100.k.
    pub fn vip(&self, k: u8) -> Ipv4Addr {
        assert!((1..=254).contains(&k), "VIP number {k} outside 1..=254");
        let [a, b, c, _] = VIP_NET.0.octets();
        Ipv4Addr::new(a, b, c, k)
    }

    /// VIP number `k` in `family`: 198.18.100.k or 2001:db8:0:100::k.
    pub fn vip_ip(&self, k: u8, family: Family) -> IpAddr {
        self.twin(self.vip(k), family)
    }

    /// Backend `i`'s address in `family`.
    pub fn backend_ip(&self, i: usize, family: Family) -> IpAddr {
        self.twin(self.backend_addr(i), family)
    }

    pub fn client_ip(&self, family: Family) -> IpAddr {
        self.twin(self.client_addr(), family)
    }

    /// The balancer's address on the backend net (fullnat's source) in `family`.
    pub fn lb_backend_ip(&self, family: Family) -> IpAddr {
        self.twin(self.lb_backend_addr(), family)
    }

    fn twin(&self, v4: Ipv4Addr, family: Family) -> IpAddr {
        assert!(
            family == Family::V4 || self.ipv6,
            "an IPv6 address of an IPv4-only lab: build it with Lab::dual_stack"
        );
        in_family(v4, family)
    }

    fn check_backend(&self, i: usize) {
        assert!(
            (1..=self.backends).contains(&i),
            "backend {i} outside 1..={}",
            self.backends
        );
    }

    // ----- commands ------------------------------------------------------------

    /// Runs `argv` inside namespace `ns`; stdout or an error with stderr.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: &str, argv: &[S]) -> io::Result<String> {
        netns::exec(ns, argv)
    }

    /// Starts `argv` inside namespace `ns` without waiting; the lab kills it
    /// at teardown if it is still running (the caller should still `wait`).
    pub fn spawn<S: AsRef<OsStr>>(&self, ns: &str, argv: &[S]) -> io::Result<Child> {
        netns::spawn(ns, argv)
    }

    /// Runs `f` on a thread inside the client namespace (see `netns::try_in_ns`).
    pub fn in_client<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send,
        E: From<io::Error> + Send,
        F: FnOnce() -> Result<T, E> + Send,
    {
        netns::try_in_ns(&self.client_ns, f)
    }

    /// `ip ARGS...` inside `ns`.
    fn ip(&self, ns: &str, args: &[&str]) -> io::Result<()> {
        let argv: Vec<&str> = std::iter::once("ip").chain(args.iter().copied()).collect();
        netns::exec(ns, &argv).map(|_| ())
    }

    // ----- servers -------------------------------------------------------------

    /// Starts the echo and HTTP servers on every backend that has none running.
    pub fn start_servers(&mut self) -> io::Result<()> {
        for i in self.backend_ids() {
            self.start_server(i)?;
        }
        Ok(())
    }

    /// Starts backend `i`'s servers (TCP+UDP echo on 8080, HTTP on 80) unless running.
    pub fn start_server(&mut self, i: usize) -> io::Result<()> {
        self.check_backend(i);
        if self.servers[i - 1].is_none() {
            let (ns, name) = (self.backend_ns(i), self.backend_name(i));
            let started = if self.ipv6 {
                BackendServers::start_dual_stack(ns, &name)?
            } else {
                BackendServers::start(ns, &name)?
            };
            self.servers[i - 1] = Some(started);
        }
        Ok(())
    }

    /// Stops backend `i`'s servers (its sockets close; new connections are refused).
    pub fn stop_server(&mut self, i: usize) {
        self.check_backend(i);
        self.servers[i - 1] = None;
    }

    // ----- construction --------------------------------------------------------

    fn create_namespaces(&mut self) -> io::Result<()> {
        let fixed = [&self.client_ns, &self.balancer_ns, &self.switch_ns];
        let router = self.router_ns().map(str::to_string);
        let all: Vec<String> = fixed
            .into_iter()
            .chain(&self.backend_ns)
            .cloned()
            .chain(router)
            .collect();
        for name in all {
            netns::add(&name)?;
            self.created.push(name.clone());
            if self.ipv6 {
                // Addresses usable at once (no duplicate address detection),
                // and no router solicitations: the balancer's counters then
                // see little besides the tests' traffic and neighbour
                // discovery.
                for (key, value) in [
                    ("accept_dad", "0"),
                    ("router_solicitations", "0"),
                    ("accept_ra", "0"),
                ] {
                    for conf in ["all", "default"] {
                        netns::write_sysctl(&name, &format!("net/ipv6/conf/{conf}/{key}"), value)?;
                    }
                }
            } else {
                // IPv6 router/neighbour solicitations would be the only other
                // traffic on these links; without them the balancer's counters
                // stay exact.
                netns::write_sysctl(&name, "net/ipv6/conf/all/disable_ipv6", "1")?;
                netns::write_sysctl(&name, "net/ipv6/conf/default/disable_ipv6", "1")?;
            }
        }
        Ok(())
    }

    /// The bridge in `sw`, a plain L2 switch.
    fn build_switch(&self) -> io::Result<()> {
        let sw = self.switch_ns();
        self.ip(sw, &["link", "add", BRIDGE, "type", "bridge"])?;
        self.ip(sw, &["link", "set", BRIDGE, "up"])?;
        // br_netfilter is built into this kernel and, per namespace, hands bridged
        // IPv4 frames to netfilter by default; the switch should not track flows.
        for key in [
            "bridge-nf-call-iptables",
            "bridge-nf-call-ip6tables",
            "bridge-nf-call-arptables",
        ] {
            let key = format!("net/bridge/{key}");
            if std::path::Path::new("/proc/sys").join(&key).exists() {
                netns::write_sysctl(sw, &key, "0")?;
            }
        }
        Ok(())
    }

    fn wire_two_arm(&self) -> io::Result<()> {
        let (c, lb, sw) = (self.client_ns(), self.balancer_ns(), self.switch_ns());
        let p = self.plan.clone();
        match self.router_ns() {
            Some(r) => self.veth(lb, p.lb_client_iface, r, ROUTER_LB_IFACE)?,
            None => self.veth(lb, p.lb_client_iface, c, HOST_IFACE)?,
        }
        self.veth(sw, "plb", lb, p.lb_backend_iface)?;
        self.join_bridge("plb")?;
        self.set_addr(lb, p.lb_client_iface, p.lb_client_addr)?;
        self.set_addr(lb, p.lb_backend_iface, p.lb_backend_addr)?;
        self.enable_forwarding()?;
        self.setup_client()?;
        for i in self.backend_ids() {
            self.attach_backend(i)?;
            for gw in self.families(p.lb_backend_addr) {
                let gw = gw.to_string();
                self.ip(self.backend_ns(i), &["route", "add", "default", "via", &gw])?;
            }
        }
        Ok(())
    }

    /// The balancer forwards like a router even on one arm: the FIB lookup
    /// of its XDP program needs forwarding on the interface.
    fn enable_forwarding(&self) -> io::Result<()> {
        let lb = self.balancer_ns();
        netns::write_sysctl(lb, "net/ipv4/ip_forward", "1")?;
        if self.ipv6 {
            netns::write_sysctl(lb, "net/ipv6/conf/all/forwarding", "1")?;
        }
        Ok(())
    }

    /// An IPv4 address of the plan, and its IPv6 twin in a dual-stack lab.
    fn families(&self, v4: Ipv4Addr) -> Vec<IpAddr> {
        let mut out = vec![IpAddr::V4(v4)];
        if self.ipv6 {
            out.push(IpAddr::V6(ipv6_twin(v4)));
        }
        out
    }

    fn wire_one_arm(&self) -> io::Result<()> {
        let (c, lb, sw) = (self.client_ns(), self.balancer_ns(), self.switch_ns());
        let p = self.plan.clone();
        match self.router_ns() {
            Some(r) => {
                self.veth(sw, "pr", r, ROUTER_LB_IFACE)?;
                self.join_bridge("pr")?;
            }
            None => {
                self.veth(sw, "pc", c, HOST_IFACE)?;
                self.join_bridge("pc")?;
            }
        }
        self.veth(sw, "plb", lb, p.lb_client_iface)?;
        self.join_bridge("plb")?;
        self.set_addr(lb, p.lb_client_iface, p.lb_client_addr)?;
        self.enable_forwarding()?;
        self.setup_client()?;
        // No default routes on backends: with fullnat they answer the balancer's
        // own on-link address.
        for i in self.backend_ids() {
            self.attach_backend(i)?;
        }
        Ok(())
    }

    /// Client address, default route (two-arm) and the VIP route via the
    /// balancer, or via the router (which then advertises a larger MSS).
    fn setup_client(&self) -> io::Result<()> {
        if self.plan.router.is_some() {
            return Ok(()); // wire_router, once the router's links exist
        }
        let c = self.client_ns();
        self.set_addr(c, HOST_IFACE, self.plan.client_addr)?;
        let gws = self.families(self.plan.lb_client_addr);
        let nets = self.families(VIP_NET.0);
        for (gw, net) in gws.iter().zip(&nets) {
            let gw = gw.to_string();
            if self.topology == Topology::TwoArm {
                self.ip(c, &["route", "add", "default", "via", &gw])?;
            }
            let prefix = if net.is_ipv4() { VIP_NET.1 } else { 64 };
            self.ip(c, &["route", "add", &format!("{net}/{prefix}"), "via", &gw])?;
        }
        Ok(())
    }

    /// The router of a `behind_router` lab: its two links, forwarding, the
    /// client's link MTU on both ends, the client's routes through it (the
    /// VIPs' advertising a 1500-byte link's MSS), its route to the VIPs, and
    /// the balancer's route back to the client's net.
    fn wire_router(&self) -> io::Result<()> {
        let (Some(r), Some(rp)) = (self.router_ns(), self.plan.router.clone()) else {
            return Ok(());
        };
        let (c, lb) = (self.client_ns(), self.balancer_ns());
        self.veth(r, ROUTER_CLIENT_IFACE, c, HOST_IFACE)?;
        let mtu = rp.client_link_mtu.to_string();
        self.ip(r, &["link", "set", ROUTER_CLIENT_IFACE, "mtu", &mtu])?;
        self.ip(c, &["link", "set", HOST_IFACE, "mtu", &mtu])?;
        self.set_addr(r, ROUTER_CLIENT_IFACE, rp.client_side)?;
        self.set_addr(r, ROUTER_LB_IFACE, rp.lb_side)?;
        self.set_addr(c, HOST_IFACE, self.plan.client_addr)?;
        netns::write_sysctl(r, "net/ipv4/ip_forward", "1")?;
        if self.ipv6 {
            netns::write_sysctl(r, "net/ipv6/conf/all/forwarding", "1")?;
        }
        let client_net = Ipv4Addr::new(198, 18, 3, 0);
        let routes = self
            .families(rp.client_side)
            .into_iter()
            .zip(self.families(rp.lb_side))
            .zip(self.families(self.plan.lb_client_addr))
            .zip(self.families(VIP_NET.0))
            .zip(self.families(client_net));
        for ((((r_client, r_lb), lb_addr), vips), clients) in routes {
            let v4 = vips.is_ipv4();
            let (r_client, r_lb, lb_addr) =
                (r_client.to_string(), r_lb.to_string(), lb_addr.to_string());
            let vips = format!("{vips}/{}", if v4 { VIP_NET.1 } else { 64 });
            let clients = format!("{clients}/{}", if v4 { 24 } else { 64 });
            let advmss = if v4 {
                ROUTER_CLIENT_ADVMSS.0
            } else {
                ROUTER_CLIENT_ADVMSS.1
            }
            .to_string();
            self.ip(c, &["route", "add", "default", "via", &r_client])?;
            self.ip(
                c,
                &["route", "add", &vips, "via", &r_client, "advmss", &advmss],
            )?;
            self.ip(r, &["route", "add", &vips, "via", &lb_addr])?;
            self.ip(lb, &["route", "add", &clients, "via", &r_lb])?;
        }
        Ok(())
    }

    /// Caps, with a locked route MTU, what the balancer may send towards
    /// the client and every backend (both families): the balancer's egress
    /// smaller than its ingress, which neither end knows of.
    pub fn limit_balancer_egress(&self, mtu: u32) -> io::Result<()> {
        let lb = self.balancer_ns();
        let mtu = mtu.to_string();
        let mut towards = vec![(self.plan.client_addr, self.plan.lb_client_iface)];
        if let Some(rp) = &self.plan.router {
            towards[0].0 = rp.lb_side; // the client's next hop
        }
        for i in self.backend_ids() {
            towards.push((self.backend_addr(i), self.plan.lb_backend_iface));
        }
        for (host, iface) in towards {
            for addr in self.families(host) {
                let len = if addr.is_ipv4() { 32 } else { 128 };
                let dst = format!("{addr}/{len}");
                self.ip(
                    lb,
                    &["route", "add", &dst, "dev", iface, "mtu", "lock", &mtu],
                )?;
            }
        }
        Ok(())
    }

    /// Backend `i`'s veth into the switch, with its address.
    fn attach_backend(&self, i: usize) -> io::Result<()> {
        let port = format!("pb{i}");
        self.veth(self.switch_ns(), &port, self.backend_ns(i), HOST_IFACE)?;
        self.join_bridge(&port)?;
        self.set_addr(self.backend_ns(i), HOST_IFACE, self.backend_addr(i))
    }

    /// A veth pair created directly with its ends in `ns_a` and `ns_b`, so it
    /// never exists in the host namespace. Both ends are left down.
    ///
    /// Each end gets an interface index of its own across the lab (100, 101,
    /// 102, ...). With the default numbering every small namespace counts from
    /// 1, and an end whose index equals its peer's (e.g. `eth0@if2` being index
    /// 2 itself) looks to the kernel's linkwatch like a physical device: its
    /// carrier change is then applied up to a second late, and until then the
    /// link reports operstate DOWN (a bridge port stays disabled).
    fn veth(&self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> io::Result<()> {
        let pair = self.veth_pairs.fetch_add(1, Ordering::Relaxed);
        let (index_a, index_b) = ((100 + 2 * pair).to_string(), (101 + 2 * pair).to_string());
        let args = [
            "link", "add", if_a, "index", &index_a, "type", "veth", "peer", "name", if_b, "netns",
            ns_b, "index", &index_b,
        ];
        self.ip(ns_a, &args)
    }

    fn join_bridge(&self, port: &str) -> io::Result<()> {
        let sw = self.switch_ns();
        self.ip(sw, &["link", "set", port, "master", BRIDGE])?;
        self.ip(sw, &["link", "set", port, "up"])
    }

    /// `addr`/24 on `iface` (and its twin/64 in a dual-stack lab), which is
    /// brought up.
    fn set_addr(&self, ns: &str, iface: &str, addr: Ipv4Addr) -> io::Result<()> {
        self.ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", iface])?;
        if self.ipv6 {
            let addr6 = format!("{}/64", ipv6_twin(addr));
            self.ip(ns, &["addr", "add", &addr6, "dev", iface, "nodad"])?;
        }
        self.ip(ns, &["link", "set", iface, "up"])
    }

    /// Offload settings the XDP data path depends on, on every veth end.
    fn tune_veths(&self) -> io::Result<()> {
        for (ns, iface) in self.veth_ends() {
            // A frame that XDP redirects into a veth is dropped unless the
            // receiving peer has a NAPI context: GRO enabled, or a native XDP
            // program. Every end may be such a receiver, so all get GRO.
            // (XDP_TX needs the native program: `attach_pass_to_balancer_peers`.)
            netns::exec(ns, &["ethtool", "-K", &iface, "gro", "on"])?;
        }
        Ok(())
    }

    /// TX checksum offload on the client's and backends' veths: on by
    /// default, as on every veth (and so every container). On, they hand
    /// packets on with partial checksums (CHECKSUM_PARTIAL: the field holds
    /// the pseudo-header's sum), which the balancer completes; off, they
    /// write full checksums, as a physical NIC's receiver sees them.
    pub fn set_tx_checksum_offload(&self, on: bool) -> io::Result<()> {
        let hosts =
            std::iter::once(self.client_ns()).chain(self.backend_ids().map(|i| self.backend_ns(i)));
        let state = if on { "on" } else { "off" };
        for ns in hosts {
            netns::exec(ns, &["ethtool", "-K", HOST_IFACE, "tx", state])?;
        }
        Ok(())
    }

    /// A native XDP_PASS program on each veth end facing a balancer interface,
    /// so that frames the balancer sends with XDP_TX are delivered at once (see
    /// `xdp_pass.rs`; GRO alone covers bpf_redirect but not XDP_TX).
    fn attach_pass_to_balancer_peers(&mut self) -> io::Result<()> {
        let mut peers = vec![(self.switch_ns.clone(), "plb")];
        if self.topology == Topology::TwoArm {
            match self.router_ns() {
                Some(r) => peers.push((r.to_string(), ROUTER_LB_IFACE)),
                None => peers.push((self.client_ns.clone(), HOST_IFACE)),
            }
        }
        for (ns, iface) in peers {
            let link = xdp_pass::attach(&ns, iface)?;
            self.xdp_links.push(link);
        }
        Ok(())
    }

    /// Waits (at most `LINK_UP_WAIT`) until every veth end reports operstate UP,
    /// so a test starts on links that the kernel considers usable.
    fn wait_links_up(&self) -> io::Result<()> {
        let deadline = Instant::now() + LINK_UP_WAIT;
        for (ns, iface) in self.veth_ends() {
            while operstate(ns, &iface)? != "UP" {
                if Instant::now() > deadline {
                    let state = operstate(ns, &iface)?;
                    return Err(io::Error::other(format!(
                        "{iface} in {ns} still {state} after {LINK_UP_WAIT:?}"
                    )));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Every (namespace, interface) that is one end of a veth pair.
    fn veth_ends(&self) -> Vec<(&str, String)> {
        let (c, lb, sw) = (self.client_ns(), self.balancer_ns(), self.switch_ns());
        let mut ends = vec![(c, HOST_IFACE.to_string())];
        for iface in self.lb_ifaces() {
            ends.push((lb, iface.to_string()));
        }
        if let Some(r) = self.router_ns() {
            ends.push((r, ROUTER_CLIENT_IFACE.to_string()));
            ends.push((r, ROUTER_LB_IFACE.to_string()));
        }
        if self.topology == Topology::OneArm {
            let port = if self.router_ns().is_some() {
                "pr"
            } else {
                "pc"
            };
            ends.push((sw, port.to_string()));
        }
        ends.push((sw, "plb".to_string()));
        for i in self.backend_ids() {
            ends.push((sw, format!("pb{i}")));
            ends.push((self.backend_ns(i), HOST_IFACE.to_string()));
        }
        ends
    }

    // ----- teardown ------------------------------------------------------------

    /// Stops servers, kills processes and deletes the namespaces. Idempotent;
    /// reports the first failure but always tries every step.
    pub fn teardown(&mut self) -> io::Result<()> {
        // Servers first: their threads would otherwise keep sockets (and so the
        // namespaces) alive after the names are gone.
        self.servers.iter_mut().for_each(|s| *s = None);
        self.xdp_links.clear();
        netns::delete_all(&mut self.created, "lab")
    }
}

/// Operstate of `iface` in `ns` as `ip -br link` prints it (UP, DOWN, ...).
/// /sys/class/net would show the host's devices: only the network namespace
/// of our commands changes, not the mount namespace.
fn operstate(ns: &str, iface: &str) -> io::Result<String> {
    let line = netns::exec(ns, &["ip", "-br", "link", "show", "dev", iface])?;
    Ok(line.split_whitespace().nth(1).unwrap_or("?").to_string())
}

// Closures given to `in_client`/`in_ns` may borrow the lab from their thread.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Lab>();
};

impl Drop for Lab {
    fn drop(&mut self) {
        // Errors were already printed; a Drop cannot do more.
        let _ = self.teardown();
    }
}
