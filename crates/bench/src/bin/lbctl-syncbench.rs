//! lbctl-syncbench: what replicating a balancer's flows with conntrackd
//! costs (issue 20; README, "Stateful failover"), per table size.
//!
//! Two namespaces joined by a veth: a "sender" whose conntrack table holds
//! N entries of balanced flows (client 198.18.0.0/16 to a backend in
//! 198.18.1.0/24, inserted through ctnetlink as conntrackd's peer would),
//! and a "peer". Each runs conntrackd with contrib/conntrackd/lbctl-sync.conf
//! (polling every `--poll` seconds). Prints how long until the peer held
//! all N entries (from the moment their TCP channel is up), then, over `--seconds`, the CPU each conntrackd used
//! (user + system time from /proc: a dump walks the whole table in the
//! kernel, charged to the process that asks) as a share of one core.
//!
//! The conntrack table's maximum (nf_conntrack_max) is the host's and
//! shared by every namespace; both copies count against it, so N is at
//! most half of it (this tool changes no host setting).
//!
//! Run as root; it builds and removes its own namespaces.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use lbctl::conntrack::Hold;
use lbctl::model::Proto;
use lbctl_lab::conntrackd::{self, Conntrackd};
use lbctl_lab::netns;

#[derive(Parser, Debug)]
#[command(name = "lbctl-syncbench")]
struct Args {
    /// Table sizes to measure, one after another.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    entries: Vec<u32>,
    /// conntrackd's PollSecs.
    #[arg(long, default_value_t = 1)]
    poll: u32,
    /// The channel between the two conntrackds: contrib's, or "udp"/"tcp".
    #[arg(long)]
    channel: Option<String>,
    /// Seconds of steady state measured after the first full copy.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

/// The namespaces of one run, deleted on drop.
struct Pair {
    names: Vec<String>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = netns::delete_all(&mut self.names, "lbctl-syncbench");
    }
}

fn pair() -> Result<Pair> {
    netns::sweep_stale();
    let base = format!("{}{}-sync-", netns::PREFIX, std::process::id());
    let pair = Pair {
        names: vec![format!("{base}sender"), format!("{base}peer")],
    };
    for name in &pair.names {
        netns::add(name)?;
    }
    let (a, b) = (&pair.names[0], &pair.names[1]);
    netns::exec(
        a,
        &[
            "ip", "link", "add", "s0", "type", "veth", "peer", "name", "s1",
        ],
    )?;
    netns::exec(a, &["ip", "link", "set", "s1", "netns", b])?;
    for (ns, iface, addr) in [(a, "s0", "198.18.2.5/24"), (b, "s1", "198.18.2.6/24")] {
        netns::exec(ns, &["ip", "addr", "add", addr, "dev", iface])?;
        netns::exec(ns, &["ip", "link", "set", iface, "up"])?;
    }
    Ok(pair)
}

/// Entries in `ns`'s conntrack table.
fn count(ns: &str) -> Result<u64> {
    let out = netns::exec(ns, &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?;
    Ok(out.trim().parse()?)
}

/// User + system seconds `pid` has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis: utime is the 12th.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn run(n: u32, args: &Args) -> Result<()> {
    let max: u64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .context("nf_conntrack_max (modprobe nf_conntrack)")?
        .trim()
        .parse()?;
    if 2 * n as u64 > max * 9 / 10 {
        bail!("{n} entries on each side need more than 90% of nf_conntrack_max ({max})");
    }
    let pair = pair()?;
    let (a, b) = (pair.names[0].clone(), pair.names[1].clone());
    let dir = std::env::temp_dir().join(format!("lbctl-syncbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let started = Instant::now();
    netns::try_in_ns(&a, || -> Result<()> {
        for i in 0..n {
            let client = std::net::SocketAddr::from((
                [198, 18, (i >> 16) as u8 & 0x3f, (i >> 8) as u8],
                10_000 + (i & 0xff) as u16,
            ));
            let backend = std::net::SocketAddr::from(([198, 18, 1, 11 + (i % 200) as u8], 8080));
            // Left for the namespace's deletion to remove.
            std::mem::forget(Hold::new(Proto::Tcp, client, backend, 3600)?);
        }
        Ok(())
    })?;
    let filled = started.elapsed();

    let conf = |local: &str, peer: &str, iface: &str, name: &str| {
        let conf = conntrackd::sync_conf(
            local.parse().unwrap(),
            peer.parse().unwrap(),
            iface,
            "198.18.1.0/24",
            &dir,
            name,
        )
        .replace("PollSecs 1", &format!("PollSecs {}", args.poll));
        match args.channel.as_deref() {
            Some("tcp") => conf.replace("UDP {", "TCP {"),
            Some("udp") => conf.replace("TCP {", "UDP {"),
            _ => conf,
        }
    };
    let peer = Conntrackd::start(
        &b,
        &conf("198.18.2.6", "198.18.2.5", "s1", "peer"),
        &dir,
        "peer",
    );
    let sender = Conntrackd::start(
        &a,
        &conf("198.18.2.5", "198.18.2.6", "s0", "sender"),
        &dir,
        "sender",
    );
    for d in [&peer, &sender] {
        d.wait_connected(Duration::from_secs(30));
    }
    let t0 = Instant::now();
    while count(&b)? < n as u64 {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!(
                "the peer holds {} of {n} entries after 120 s\nsender: {}\npeer: {}",
                count(&b)?,
                sender.ctl(&["-s"]),
                peer.ctl(&["-s"])
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let copied = t0.elapsed();

    let (s0, p0) = (cpu_seconds(sender.pid())?, cpu_seconds(peer.pid())?);
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.seconds));
    let wall = t1.elapsed().as_secs_f64();
    let (s1, p1) = (cpu_seconds(sender.pid())?, cpu_seconds(peer.pid())?);
    println!(
        "{n:>8} entries, PollSecs {}: inserted in {filled:.1?}; peer held all {copied:.1?} after the channel was up; \
         over {wall:.0} s: sender conntrackd {:.1}% of a core, peer {:.1}%; peer holds {}",
        args.poll,
        100.0 * (s1 - s0) / wall,
        100.0 * (p1 - p0) / wall,
        count(&b)?
    );
    drop((sender, peer));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    for &n in &args.entries {
        run(n, &args)?;
    }
    Ok(())
}
