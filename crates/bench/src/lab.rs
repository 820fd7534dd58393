//! A balancer to measure: a thread in a network namespace of its own (gone
//! with the thread), routes and neighbours so the FIB lookup succeeds and
//! packets take XDP's forwarding path, lbctl's real program loaded and
//! configured through its own `Maps` methods, and its conntrack table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use lbctl::datapath::config::initial_settings;
use lbctl::datapath::maps::Maps;
use lbctl::model::{NatMode, Proto, Service, VipSpec, DEFAULT_HASH_SEED};
use lbctl_lab::fixtures;

/// The client of the measured established, reply and UDP flows.
pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000);
/// VIP i is FIRST_VIP + i, port 80 (TCP); FIRST_VIP also serves UDP.
pub const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP_PORT: u16 = 80;
/// An address no VIP and no backend has: the pass-through class.
pub const NOT_A_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 200, 1), 80);
/// New flows come from 198.19.0.0/16 (the harness varies address and port).
pub const NEW_FLOW_SOURCE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 0), 1024);
/// Backend j of every VIP is on host 198.18.1.(11 + j); VIP i uses port
/// 10000 + i, its UDP service port 20000.
const FIRST_BACKEND_HOST: u8 = 11;

/// IPv6: the client 2001:db8::2 and one VIP, 2001:db8:0:100::1 port 80, TCP
/// and UDP, whose backend j is 2001:db8:0:1::(0x11 + j), ports 30000 (TCP)
/// and 30001 (UDP); routes and neighbours as for IPv4.
pub const CLIENT6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 40000, 0, 0);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0x100, 0, 0, 0, 1);
pub const NOT_A_VIP6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0x200, 0, 0, 0, 1), 80, 0, 0);
/// New IPv6 flows come from 2001:db8:1::/112 (the harness varies the last
/// 16 bits and the port).
pub const NEW_FLOW_SOURCE6: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 1024, 0, 0);

/// A dsr VIP and a tunnel VIP (TCP, port 80, beyond the 1,000 dnat VIPs),
/// each with the same backend hosts as the dnat VIPs on port 80 (dsr and
/// tunnel keep the VIP's port); the tunnel's outer source is v0's address.
pub const DSR_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 150, 1), 80);
pub const TUNNEL_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 150, 2), 80);
pub const TUNNEL_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

fn backend6(j: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x11 + j as u16)
}

pub fn vip_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_VIP) + i)
}

/// What a namespace holds.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    /// TCP VIPs (FIRST_VIP.. consecutive); the first address also has a UDP
    /// VIP, so the balancer holds tcp_vips + 1 services.
    pub tcp_vips: u32,
    pub backends_per_vip: u32,
    /// Live conntrack entries made before every measurement, by running
    /// this many distinct new-flow packets through the program.
    pub background_flows: u32,
}

/// Runs `f` on a thread of its own, pinned to `cpu`, inside a new, empty
/// network namespace that goes away with the thread.
pub fn in_fresh_netns<T, F>(cpu: usize, f: F) -> std::thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!(
                "unshare(CLONE_NEWNET): {} (lbctl-bench needs root)",
                std::io::Error::last_os_error()
            );
        }
        pin_to_cpu(cpu)?;
        sh("ip link set lo up")?;
        f()
    })
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it for
    // cpu < CPU_SETSIZE, checked first.
    unsafe {
        ensure!(cpu < libc::CPU_SETSIZE as usize, "no CPU {cpu}");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the calling thread SCHED_FIFO (priority 1): ordinary tasks then
/// cannot take its CPU in the middle of a test run, whose timer counts any
/// time it was not running but did not yield. The kernel still throttles
/// real-time tasks to 95% of each second (kernel.sched_rt_runtime_us), and
/// the test-run loop yields, untimed, when that happens. Commands it starts
/// (conntrack -F) run at normal priority.
pub fn realtime() -> Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        bail!("SCHED_FIFO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs a shell command in the calling thread's network namespace.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("running `{cmd}`"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Routes and neighbours as lbctl_lab's `Balancer::with_routes` has them:
/// clients in 198.18.0.0/24 and 2001:db8::/64, backends in 198.18.1.0/24
/// and 2001:db8:0:1::/64, behind veth v0, fixed neighbours, forwarding on,
/// v0 in lbctl's redirect map. Returns v0's ifindex.
pub fn routes(maps: &Maps, backend_hosts: u32) -> Result<u32> {
    sh(fixtures::V0_SETUP)?;
    let client = CLIENT.ip().octets()[3];
    let hosts =
        std::iter::once((IpAddr::from(*CLIENT.ip()), client)).chain((0..backend_hosts).map(|j| {
            let host = FIRST_BACKEND_HOST + j as u8;
            (Ipv4Addr::new(198, 18, 1, host).into(), host)
        }));
    let hosts6 = std::iter::once((IpAddr::from(*CLIENT6.ip()), 2u8))
        .chain((0..backend_hosts).map(|j| (backend6(j).into(), FIRST_BACKEND_HOST + j as u8)));
    for (host, last) in hosts.chain(hosts6) {
        sh(&fixtures::fixed_neighbour(&host.to_string(), last))?;
    }
    let ifindex = lbctl::host::iface::ifindex("v0")?;
    maps.add_tx_port(ifindex)?;
    Ok(ifindex)
}

/// The settings `lbctl attach` writes.
pub fn settings(maps: &Maps) -> Result<()> {
    maps.set_settings(&initial_settings(DEFAULT_HASH_SEED))
}

pub fn tcp_vip(i: u32) -> Service {
    Service {
        addr: SocketAddr::new(vip_addr(i).into(), VIP_PORT),
        proto: Proto::Tcp,
    }
}

pub fn udp_vip() -> Service {
    Service {
        addr: SocketAddr::new(FIRST_VIP.into(), VIP_PORT),
        proto: Proto::Udp,
    }
}

/// Every VIP and backend of `cfg`, through lbctl's own `Maps` methods
/// (default table size, weight 1, dnat; each VIP's backends in one call),
/// the dsr and tunnel VIPs and the IPv6 VIP (TCP and UDP) beside them.
pub fn configure(maps: &Maps, cfg: &Config) -> Result<()> {
    let backend = |j: u32, port: u32| -> SocketAddr {
        let host = Ipv4Addr::new(198, 18, 1, (FIRST_BACKEND_HOST as u32 + j) as u8);
        SocketAddr::new(host.into(), port as u16)
    };
    ensure!(
        FIRST_BACKEND_HOST as u32 + cfg.backends_per_vip <= 255,
        "too many backends per VIP"
    );
    ensure!(cfg.tcp_vips <= 10000, "VIP ports would collide");
    let services = (0..cfg.tcp_vips)
        .map(|i| (tcp_vip(i), 10000 + i))
        .chain(std::iter::once((udp_vip(), 20000)));
    for (vip, port) in services {
        maps.add_vip(&VipSpec::new(vip, NatMode::Dnat, None, None).map_err(anyhow::Error::msg)?)?;
        let backends: Vec<(SocketAddr, u32)> = (0..cfg.backends_per_vip)
            .map(|j| (backend(j, port), 1))
            .collect();
        maps.add_backends(&vip, &backends)?;
    }
    for (vip, mode, source) in [
        (DSR_VIP, NatMode::Dsr, None),
        (TUNNEL_VIP, NatMode::Tunnel, Some(TUNNEL_SOURCE.into())),
    ] {
        let vip = Service {
            addr: vip.into(),
            proto: Proto::Tcp,
        };
        maps.add_vip(&VipSpec::new(vip, mode, source, None).map_err(anyhow::Error::msg)?)?;
        let backends: Vec<(SocketAddr, u32)> = (0..cfg.backends_per_vip)
            .map(|j| (backend(j, VIP_PORT as u32), 1))
            .collect();
        maps.add_backends(&vip, &backends)?;
    }
    for (proto, port) in [(Proto::Tcp, 30000), (Proto::Udp, 30001)] {
        let vip = Service {
            addr: SocketAddr::new(VIP6.into(), VIP_PORT),
            proto,
        };
        maps.add_vip(&VipSpec::new(vip, NatMode::Dnat, None, None).map_err(anyhow::Error::msg)?)?;
        let backends: Vec<(SocketAddr, u32)> = (0..cfg.backends_per_vip)
            .map(|j| (SocketAddr::new(backend6(j).into(), port), 1))
            .collect();
        maps.add_backends(&vip, &backends)?;
    }
    Ok(())
}

/// Live entries in this namespace's conntrack table.
pub fn conntrack_count() -> Result<u64> {
    // /proc/sys/net shows the network namespace of the reading thread.
    let s = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .context("reading nf_conntrack_count")?;
    Ok(s.trim().parse()?)
}

/// The most entries one namespace may hold before inserting one evicts
/// another (nf_conntrack_max; host-wide, only read here).
pub fn conntrack_max() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .context("reading nf_conntrack_max")?;
    Ok(s.trim().parse()?)
}

/// Empties this namespace's conntrack table.
pub fn flush_conntrack() -> Result<()> {
    sh("conntrack -F 2>/dev/null")?;
    let left = conntrack_count()?;
    ensure!(left == 0, "{left} conntrack entries left after a flush");
    Ok(())
}
