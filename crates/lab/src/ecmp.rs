//! Several balancers behind a router that spreads VIP traffic over them by
//! ECMP, as sites scale lbctl out (issue 14's lab):
//!
//! ```text
//! c:eth0 ── rc:r:eth1 ── sw:br0 ─┬─ lb1:lb0  198.18.2.5   (lbK: .4+K)
//! .0.2      .0.1  .2.1           ├─ lb2:lb0  198.18.2.6
//!                                ├─ ...
//!                                ├─ b1:eth0  198.18.2.11  (bI: .10+I)
//!                                └─ ...
//! ```
//! The router holds the route to the VIP net (198.18.100.0/24) with one next
//! hop per announced balancer and hashes flows over them by their 5-tuple
//! (`fib_multipath_hash_policy=1`). The balancers forward in dsr mode: the
//! backends, on the same link, hold the VIPs on `lo` and answer through the
//! router, never through a balancer. So a flow that the router moves to
//! another balancer keeps working if that balancer picks the same backend.
//! IPv4 only.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use crate::lab::{HOST_IFACE, VIP_NET};
use crate::netns;
use crate::servers::BackendServers;
use crate::xdp_pass;

const BRIDGE: &str = "br0";
/// The balancers' interface.
pub const LB_IFACE: &str = "lb0";

pub struct EcmpLab {
    prefix: String,
    balancers: usize,
    backends: usize,
    /// Namespaces created so far (deleted in reverse order).
    created: Vec<String>,
    servers: Vec<Option<BackendServers>>,
    pass_links: Vec<OwnedFd>,
    veth_pairs: u32,
}

impl EcmpLab {
    /// A client, a router, `balancers` balancers (nothing attached yet; the
    /// router's route names all of them) and `backends` backends holding the
    /// VIP net's first address on `lo`, with their servers running.
    pub fn new(balancers: usize, backends: usize) -> io::Result<EcmpLab> {
        assert!((1..=5).contains(&balancers) && (1..=100).contains(&backends));
        netns::sweep_stale();
        let prefix = format!(
            "{}{}-e{}-",
            netns::PREFIX,
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut lab = EcmpLab {
            prefix,
            balancers,
            backends,
            created: Vec::new(),
            servers: (0..backends).map(|_| None).collect(),
            pass_links: Vec::new(),
            veth_pairs: 0,
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> io::Result<()> {
        let (c, r, sw) = (self.client_ns(), self.router_ns(), self.switch_ns());
        let mut names = vec![c.clone(), r.clone(), sw.clone()];
        names.extend((1..=self.balancers).map(|k| self.balancer_ns(k)));
        names.extend((1..=self.backends).map(|i| self.backend_ns(i)));
        for name in names {
            netns::add(&name)?;
            self.created.push(name.clone());
            for conf in ["all", "default"] {
                netns::write_sysctl(&name, &format!("net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
            }
        }
        self.ip(&sw, &["link", "add", BRIDGE, "type", "bridge"])?;
        self.ip(&sw, &["link", "set", BRIDGE, "up"])?;
        // Client ↔ router.
        self.veth(&r, "rc", &c, HOST_IFACE)?;
        self.addr(&c, HOST_IFACE, "198.18.0.2/24")?;
        self.addr(&r, "rc", "198.18.0.1/24")?;
        self.ip(&c, &["route", "add", "default", "via", "198.18.0.1"])?;
        // Router ↔ switch.
        self.veth(&sw, "pr", &r, "eth1")?;
        self.join_bridge("pr")?;
        self.addr(&r, "eth1", "198.18.2.1/24")?;
        netns::write_sysctl(&r, "net/ipv4/ip_forward", "1")?;
        netns::write_sysctl(&r, "net/ipv4/fib_multipath_hash_policy", "1")?;
        // Balancers: forwarding on (the FIB lookup of XDP needs it).
        for k in 1..=self.balancers {
            let (ns, port) = (self.balancer_ns(k), format!("plb{k}"));
            self.veth(&sw, &port, &ns, LB_IFACE)?;
            self.join_bridge(&port)?;
            self.addr(&ns, LB_IFACE, &format!("{}/24", self.balancer_addr(k)))?;
            netns::write_sysctl(&ns, "net/ipv4/ip_forward", "1")?;
            // Clients are reached through the router (replies of dnat flows).
            self.ip(&ns, &["route", "add", "default", "via", "198.18.2.1"])?;
            // lbctl sends with XDP_TX: the peer needs a native program to
            // pick the frames up at once (xdp_pass.rs).
            self.pass_links.push(xdp_pass::attach(&sw, &port)?);
        }
        // Backends: the VIP on lo, never answered for by ARP, replies through
        // the router.
        for i in 1..=self.backends {
            let (ns, port) = (self.backend_ns(i), format!("pb{i}"));
            self.veth(&sw, &port, &ns, HOST_IFACE)?;
            self.join_bridge(&port)?;
            self.addr(&ns, HOST_IFACE, &format!("{}/24", self.backend_addr(i)))?;
            self.ip(&ns, &["route", "add", "default", "via", "198.18.2.1"])?;
            self.ip(
                &ns,
                &["addr", "add", &format!("{}/32", self.vip()), "dev", "lo"],
            )?;
            netns::write_sysctl(&ns, "net/ipv4/conf/all/arp_ignore", "1")?;
            netns::write_sysctl(&ns, "net/ipv4/conf/all/arp_announce", "2")?;
        }
        // Every veth end: GRO (a redirected frame needs a NAPI context), and
        // full checksums from the hosts that send (see Lab::tune_veths).
        for (ns, iface) in self.veth_ends() {
            netns::exec(&ns, &["ethtool", "-K", &iface, "gro", "on"])?;
            netns::exec(&ns, &["ethtool", "-K", &iface, "tx", "off"])?;
        }
        self.announce(&(1..=self.balancers).collect::<Vec<_>>())?;
        for i in 1..=self.backends {
            let ns = self.backend_ns(i);
            self.servers[i - 1] = Some(BackendServers::start(&ns, &format!("b{i}"))?);
        }
        Ok(())
    }

    /// The router's route to the VIP net: one next hop per balancer in
    /// `which` (1-based), as BGP would leave it; none: the route goes.
    pub fn announce(&self, which: &[usize]) -> io::Result<()> {
        let r = self.router_ns();
        let (net, len) = VIP_NET;
        let dest = format!("{net}/{len}");
        if which.is_empty() {
            let _ = self.ip(&r, &["route", "del", &dest]);
            return Ok(());
        }
        let mut argv: Vec<String> = ["route", "replace", &dest]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for k in which {
            argv.extend(["nexthop", "via"].map(String::from));
            argv.push(self.balancer_addr(*k).to_string());
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ip(&r, &argv)
    }

    /// The router's route to the VIP net through one next hop, `via` (an
    /// address VRRP moves between active and backup balancers).
    pub fn route_vips_via(&self, via: Ipv4Addr) -> io::Result<()> {
        let (net, len) = VIP_NET;
        let dest = format!("{net}/{len}");
        self.ip(
            &self.router_ns(),
            &["route", "replace", &dest, "via", &via.to_string()],
        )
    }

    pub fn vip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(VIP_NET.0) + 1)
    }

    pub fn balancers(&self) -> usize {
        self.balancers
    }

    pub fn backends(&self) -> usize {
        self.backends
    }

    pub fn balancer_addr(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 4 + k as u8)
    }

    pub fn backend_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 10 + i as u8)
    }

    /// Backend i's replies go through `via` instead of the router (dnat
    /// needs its replies to cross a balancer).
    pub fn route_backends_via(&self, via: Ipv4Addr) -> io::Result<()> {
        for i in 1..=self.backends {
            let via = via.to_string();
            self.ip(
                &self.backend_ns(i),
                &["route", "replace", "default", "via", &via],
            )?;
        }
        Ok(())
    }

    pub fn backend_name(&self, i: usize) -> String {
        format!("b{i}")
    }

    pub fn client_ns(&self) -> String {
        format!("{}c", self.prefix)
    }

    pub fn router_ns(&self) -> String {
        format!("{}r", self.prefix)
    }

    pub fn switch_ns(&self) -> String {
        format!("{}sw", self.prefix)
    }

    pub fn balancer_ns(&self, k: usize) -> String {
        format!("{}lb{k}", self.prefix)
    }

    pub fn backend_ns(&self, i: usize) -> String {
        format!("{}b{i}", self.prefix)
    }

    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, ns: &str, argv: &[S]) -> io::Result<String> {
        netns::exec(ns, argv)
    }

    /// Runs `f` on a thread in the client's namespace.
    pub fn in_client<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send,
        E: Send + From<io::Error>,
        F: FnOnce() -> Result<T, E> + Send,
    {
        netns::try_in_ns(&self.client_ns(), f)
    }

    fn ip(&self, ns: &str, args: &[&str]) -> io::Result<()> {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        netns::exec(ns, &argv).map(|_| ())
    }

    fn addr(&self, ns: &str, iface: &str, cidr: &str) -> io::Result<()> {
        self.ip(ns, &["addr", "add", cidr, "dev", iface])?;
        self.ip(ns, &["link", "set", iface, "up"])
    }

    /// A veth pair with numbered indexes (see Lab::veth for why).
    fn veth(&mut self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> io::Result<()> {
        let pair = self.veth_pairs;
        self.veth_pairs += 1;
        let (index_a, index_b) = ((100 + 2 * pair).to_string(), (101 + 2 * pair).to_string());
        self.ip(
            ns_a,
            &[
                "link", "add", if_a, "index", &index_a, "type", "veth", "peer", "name", if_b,
                "netns", ns_b, "index", &index_b,
            ],
        )
    }

    fn join_bridge(&self, port: &str) -> io::Result<()> {
        let sw = self.switch_ns();
        self.ip(&sw, &["link", "set", port, "master", BRIDGE])?;
        self.ip(&sw, &["link", "set", port, "up"])
    }

    fn veth_ends(&self) -> Vec<(String, String)> {
        let mut ends = vec![
            (self.client_ns(), HOST_IFACE.to_string()),
            (self.router_ns(), "rc".to_string()),
            (self.router_ns(), "eth1".to_string()),
            (self.switch_ns(), "pr".to_string()),
        ];
        for k in 1..=self.balancers {
            ends.push((self.balancer_ns(k), LB_IFACE.to_string()));
            ends.push((self.switch_ns(), format!("plb{k}")));
        }
        for i in 1..=self.backends {
            ends.push((self.backend_ns(i), HOST_IFACE.to_string()));
            ends.push((self.switch_ns(), format!("pb{i}")));
        }
        ends
    }

    /// Stops servers and deletes every namespace (also on Drop).
    pub fn teardown(&mut self) -> io::Result<()> {
        self.servers.iter_mut().for_each(|s| *s = None);
        self.pass_links.clear();
        netns::delete_all(&mut self.created, "ecmp lab")
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for EcmpLab {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
