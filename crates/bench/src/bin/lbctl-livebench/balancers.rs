//! The balancers under test, each set up in the lab's balancer namespace and
//! torn down again, so the same lab, clients and servers serve them all:
//! - lbctl: `lbctl attach` on both arms, one VIP per protocol, dnat mode.
//! - lbctl-dsr: the same with the UDP VIP in dsr mode (backends on its port;
//!   only the MACs change, the sinks count on the VIP's port).
//! - lbctl-tunnel: the UDP VIP in tunnel mode (IPIP to the backends, which
//!   the sinks count encapsulated, on the VIP's port).
//! - lbctl-sync: lbctl (dnat) whose flows conntrackd copies to a peer
//!   (contrib/conntrackd/lbctl-sync.conf on both ends, `PollSecs 1`): a
//!   peer namespace joined to the balancer's by a veth of its own. What
//!   replication costs new flows (issue 20); conntrackd runs unpinned, or
//!   on `--sync-cpu`.
//! - reflector: the bench's own XDP program (no conntrack), UDP only.
//! - nft: nftables DNAT with conntrack, `numgen inc mod N`, no XDP.
//! - haproxy: `mode tcp`, roundrobin, TCP only, the VIP on the balancer's lo.

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::progs::{Progs, ReflectorSpec};
use lbctl_lab::conntrackd::{self, Conntrackd};
use lbctl_lab::lab::Lab;
use lbctl_lab::netns;
use lbctl_lab::servers::{ECHO_PORT, HTTP_PORT};

/// The port clients use on the VIP, for TCP and UDP alike.
pub const VIP_PORT: u16 = 80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balancer {
    Reflector,
    Lbctl,
    LbctlDsr,
    LbctlTunnel,
    LbctlSync,
    Nft,
    Haproxy,
}

impl Balancer {
    pub fn name(self) -> &'static str {
        match self {
            Balancer::Reflector => "reflector",
            Balancer::Lbctl => "lbctl",
            Balancer::LbctlDsr => "lbctl-dsr",
            Balancer::LbctlTunnel => "lbctl-tunnel",
            Balancer::LbctlSync => "lbctl-sync",
            Balancer::Nft => "nft",
            Balancer::Haproxy => "haproxy",
        }
    }
}

impl fmt::Display for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the balancer is and what it balances to.
pub struct Target<'a> {
    pub lab: &'a Lab,
    pub lbctl: &'a Path,
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
    /// Scratch directory for generated files (HAProxy's config and log).
    pub scratch: &'a Path,
    /// lbctl-sync: the CPU both conntrackds are pinned to (None: unpinned).
    pub sync_cpu: Option<usize>,
}

/// A balancer set up in the lab; `stop` tears it down (Drop does too, then
/// reporting errors on stderr only).
pub struct Running {
    kind: Balancer,
    ns: String,
    lbctl: PathBuf,
    vip: Ipv4Addr,
    ifaces: Vec<&'static str>,
    haproxy: Option<Child>,
    sync: Option<SyncPeer>,
    stopped: bool,
}

impl Running {
    pub fn start(kind: Balancer, t: &Target, progs: &mut Progs) -> Result<Running> {
        let lab = t.lab;
        let mut run = Running {
            kind,
            ns: lab.balancer_ns().to_string(),
            lbctl: t.lbctl.to_path_buf(),
            vip: t.vip,
            ifaces: lab.lb_ifaces(),
            haproxy: None,
            sync: None,
            stopped: false,
        };
        let started = match kind {
            Balancer::Lbctl => run.start_lbctl(t, "dnat"),
            Balancer::LbctlDsr => run.start_lbctl(t, "dsr"),
            Balancer::LbctlTunnel => run.start_lbctl(t, "tunnel"),
            Balancer::LbctlSync => run
                .start_lbctl(t, "dnat")
                .and_then(|_| SyncPeer::start(t).map(|p| run.sync = Some(p))),
            Balancer::Reflector => progs.attach_reflector(
                &run.ns,
                &run.ifaces,
                &ReflectorSpec {
                    vip: t.vip,
                    vip_port: VIP_PORT,
                    backends: t.backends.clone(),
                    backend_port: ECHO_PORT,
                },
            ),
            Balancer::Nft => run.start_nft(t),
            Balancer::Haproxy => run.start_haproxy(t),
        };
        if let Err(e) = started {
            // Undo what did start; the first error is the one to report.
            let _ = run.stop(progs);
            return Err(e.context(format!("starting {kind}")));
        }
        Ok(run)
    }

    /// HAProxy's process, while it runs.
    pub fn haproxy_pid(&self) -> Option<u32> {
        self.haproxy.as_ref().map(Child::id)
    }

    fn lbctl(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec![self.lbctl.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|s| s.to_string()));
        Ok(netns::exec(&self.ns, &argv)?)
    }

    /// UDP VIP:80 to the backends' UDP echo port (the sinks count it there),
    /// TCP VIP:80 to their HTTP servers.
    fn start_lbctl(&mut self, t: &Target, mode: &str) -> Result<()> {
        for iface in self.ifaces.clone() {
            self.lbctl(&["attach", iface])?;
        }
        let vip = format!("{}:{VIP_PORT}", t.vip);
        // dsr keeps the VIP's port: its backends are on it (the sinks count
        // there); the TCP VIP stays dnat for the connection part.
        let udp_port = if mode == "dnat" { ECHO_PORT } else { VIP_PORT };
        for (proto, port, mode) in [("udp", udp_port, mode), ("tcp", HTTP_PORT, "dnat")] {
            self.lbctl(&["vip", "add", &vip, "--proto", proto, "--mode", mode])?;
            for b in &t.backends {
                self.lbctl(&[
                    "backend",
                    "add",
                    &vip,
                    &format!("{b}:{port}"),
                    "--proto",
                    proto,
                ])?;
            }
        }
        Ok(())
    }

    fn start_nft(&mut self, t: &Target) -> Result<()> {
        let path = t.scratch.join("livebench.nft");
        fs::write(&path, nft_rules(t.vip, &t.backends))?;
        netns::exec(&self.ns, &["nft", "-f", &path.to_string_lossy()])
            .context("loading the nftables DNAT rules")?;
        Ok(())
    }

    fn start_haproxy(&mut self, t: &Target) -> Result<()> {
        let cfg = t.scratch.join("haproxy.cfg");
        fs::write(&cfg, haproxy_config(t.vip, &t.backends))?;
        let log = fs::File::create(t.scratch.join("haproxy.log"))?;
        // HAProxy accepts on the VIP itself: it must be a local address.
        netns::exec(
            &self.ns,
            &["ip", "addr", "add", &format!("{}/32", t.vip), "dev", "lo"],
        )?;
        let child = netns::command(&self.ns, &["haproxy", "-db", "-f", &cfg.to_string_lossy()])?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy (apt-get install haproxy)")?;
        self.haproxy = Some(child);
        self.wait_haproxy(t)
    }

    /// Until a client connection to the VIP succeeds (at most 10 s).
    fn wait_haproxy(&mut self, t: &Target) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let vip = t.vip;
        loop {
            if let Some(status) = self
                .haproxy
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = fs::read_to_string(t.scratch.join("haproxy.log")).unwrap_or_default();
                bail!("haproxy exited ({status}): {}", log.trim());
            }
            let up = netns::in_ns(t.lab.client_ns(), || {
                TcpStream::connect_timeout(&(vip, VIP_PORT).into(), Duration::from_millis(200))
                    .is_ok()
            })?;
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(t.scratch.join("haproxy.log")).unwrap_or_default();
                let listening = netns::exec(&self.ns, &["ss", "-ltn"]).unwrap_or_default();
                bail!(
                    "haproxy did not accept on {vip}:{VIP_PORT} within 10 s; its log: {}; listening: {}",
                    log.trim(),
                    listening.trim()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self, progs: &mut Progs) -> Result<()> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        let result = match self.kind {
            Balancer::Lbctl | Balancer::LbctlDsr | Balancer::LbctlTunnel | Balancer::LbctlSync => {
                // The sync goes first: its peer keeps no copy.
                self.sync = None;
                let mut r = Ok(());
                for iface in self.ifaces.clone().into_iter().rev() {
                    r = r.and(self.lbctl(&["detach", iface]).map(|_| ()));
                }
                r
            }
            Balancer::Reflector => {
                progs.detach_reflector();
                Ok(())
            }
            Balancer::Nft => netns::exec(&self.ns, &["nft", "delete", "table", "ip", "livebench"])
                .map(|_| ())
                .map_err(Into::into),
            Balancer::Haproxy => {
                if let Some(mut child) = self.haproxy.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let addr = format!("{}/32", self.vip);
                netns::exec(&self.ns, &["ip", "addr", "del", &addr, "dev", "lo"])
                    .map(|_| ())
                    .map_err(Into::into)
            }
        };
        // Every balancer leaves conntrack entries; the next one starts clean.
        flush_conntrack(&self.ns)?;
        result.with_context(|| format!("stopping {}", self.kind))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.haproxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.stopped {
            eprintln!(
                "livebench: {} left running; the lab teardown removes it",
                self.kind
            );
        }
    }
}

/// lbctl-sync's peer: a namespace joined to the balancer's by a veth
/// (198.18.250.1/30 on the balancer's end, .2 on the peer's), conntrackd
/// with contrib's file on both ends, their channel up. Dropped: both
/// daemons killed, the namespace (and so the veth) deleted.
pub struct SyncPeer {
    daemons: Vec<Conntrackd>,
    ns: Vec<String>,
    dir: PathBuf,
}

impl SyncPeer {
    fn start(t: &Target) -> Result<SyncPeer> {
        let lb = t.lab.balancer_ns().to_string();
        let mut peer = SyncPeer {
            daemons: Vec::new(),
            ns: vec![format!("{}{}-syncpeer", netns::PREFIX, std::process::id())],
            dir: t.scratch.join("sync"),
        };
        let ns = peer.ns[0].clone();
        fs::create_dir_all(&peer.dir)?;
        netns::add(&ns)?;
        netns::exec(
            &lb,
            &[
                "ip", "link", "add", "sync0", "type", "veth", "peer", "name", "sync1",
            ],
        )?;
        netns::exec(&lb, &["ip", "link", "set", "sync1", "netns", &ns])?;
        let (a, b): (Ipv4Addr, Ipv4Addr) = ([198, 18, 250, 1].into(), [198, 18, 250, 2].into());
        for (n, iface, addr) in [(&lb, "sync0", a), (&ns, "sync1", b)] {
            netns::exec(
                n,
                &["ip", "addr", "add", &format!("{addr}/30"), "dev", iface],
            )?;
            netns::exec(n, &["ip", "link", "set", iface, "up"])?;
        }
        let first = t.backends.first().context("no backends")?.octets();
        let backends = format!("{}.{}.{}.0/24", first[0], first[1], first[2]);
        for (n, iface, me, other, name) in
            [(&lb, "sync0", a, b, "lb"), (&ns, "sync1", b, a, "peer")]
        {
            let conf = conntrackd::sync_conf(me, other, iface, &backends, &peer.dir, name);
            peer.daemons
                .push(Conntrackd::start(n, &conf, &peer.dir, name));
        }
        for d in &peer.daemons {
            d.wait_connected(Duration::from_secs(15));
            if let Some(cpu) = t.sync_cpu {
                crate::napi::pin(d.pid() as i32, cpu)?;
            }
        }
        Ok(peer)
    }
}

impl Drop for SyncPeer {
    fn drop(&mut self) {
        self.daemons.clear();
        let _ = netns::delete_all(&mut self.ns, "lbctl-livebench");
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Deletes every conntrack entry of namespace `ns`.
pub fn flush_conntrack(ns: &str) -> Result<()> {
    netns::exec(ns, &["conntrack", "-F"]).context("conntrack -F in the balancer namespace")?;
    Ok(())
}

/// Number of conntrack entries in namespace `ns`.
pub fn conntrack_count(ns: &str) -> Result<u64> {
    let out = netns::exec(ns, &["conntrack", "-C"])?;
    out.trim()
        .parse()
        .with_context(|| format!("conntrack -C said {out:?}"))
}

/// The kernel's own balancer: DNAT in prerouting, held by conntrack, backends
/// chosen round-robin per new connection.
pub fn nft_rules(vip: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let map = |port: u16| {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : {b} . {port}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = backends.len();
    format!(
        "table ip livebench {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {vip} udp dport {VIP_PORT} dnat ip to numgen inc mod {n} map {{ {} }}\n\
         \t\tip daddr {vip} tcp dport {VIP_PORT} dnat ip to numgen inc mod {n} map {{ {} }}\n\
         \t}}\n\
         }}\n",
        map(ECHO_PORT),
        map(HTTP_PORT)
    )
}

pub fn haproxy_config(vip: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let mut cfg = String::from(
        "global\n\
         \tmaxconn 4096\n\
         defaults\n\
         \tmode tcp\n\
         \ttimeout connect 2s\n\
         \ttimeout client 10s\n\
         \ttimeout server 10s\n",
    );
    cfg += &format!("frontend livebench\n\tbind {vip}:{VIP_PORT}\n\tdefault_backend servers\n");
    cfg += "backend servers\n\tbalance roundrobin\n";
    for (i, b) in backends.iter().enumerate() {
        cfg += &format!("\tserver b{} {b}:{HTTP_PORT}\n", i + 1);
    }
    cfg
}
