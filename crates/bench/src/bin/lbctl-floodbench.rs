//! lbctl-floodbench: a spoofed SYN flood against a dnat VIP in the two-arm
//! lab (issue 13), while 20 long connections run and a legitimate client
//! keeps opening new ones.
//!
//! A raw (AF_PACKET) socket in the client namespace sends SYNs to the VIP
//! from spoofed sources in 198.19.0.0/16 (4 million of them; the backends'
//! SYN-ACKs to them are routed back to the client side, which drops them),
//! paced at `--rate` per second for `--seconds`; the achieved rate is what
//! it could send. Meanwhile 8 client threads open TCP connections to the
//! VIP one after another, 50 ms apart (3 s to connect and read the
//! backend's name line), counted after the flood's first 2 s; afterwards
//! 200 more, one after another. Prints the results and lbctl's counters.
//!
//! `--ack`: spoofed ACKs instead of SYNs (issue 19: strangers' non-SYN
//! packets must not make lasting entries); the backends answer them with
//! RSTs. Also prints how many entries the spoofed sources hold at the end,
//! how many are ASSURED and the longest time one has left.
//!
//! Run as root; it builds and removes its own namespaces.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use lbctl_lab::clients::{self, EchoConfig};
use lbctl_lab::fixtures::packet::{parse, Packet, ACK, SYN};
use lbctl_lab::lab::Lab;
use lbctl_lab::netns;
use lbctl_lab::servers::ECHO_PORT;

#[derive(Parser, Debug)]
#[command(name = "lbctl-floodbench")]
struct Args {
    /// Target SYNs per second.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Distinct spoofed flows, cycled (at most 4,194,304). Fewer than
    /// nf_conntrack_max never fill the table: the same load without table
    /// pressure, for comparison.
    #[arg(long, default_value_t = 1 << 22)]
    flows: u64,
    /// Seconds of flood.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Long connections kept open through the flood.
    #[arg(long, default_value_t = 20)]
    long: usize,
    /// Connections opened one after another after the flood.
    #[arg(long, default_value_t = 200)]
    after: usize,
    /// Spoofed ACKs instead of SYNs.
    #[arg(long)]
    ack: bool,
    /// The lbctl binary (default: `lbctl` beside this one).
    #[arg(long)]
    lbctl: Option<String>,
}

fn lbctl(lab: &Lab, bin: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec![bin];
    argv.extend_from_slice(args);
    lab.exec(lab.balancer_ns(), &argv)
        .with_context(|| format!("lbctl {args:?}"))
}

/// The MAC of `iface` in namespace `ns`.
fn mac_of(lab: &Lab, ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = lab.exec(ns, &["ip", "-br", "link", "show", iface])?;
    let text = out
        .split_whitespace()
        .nth(2)
        .context("no MAC in ip -br link")?;
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// Sends spoofed SYNs from a raw socket on the client's eth0 until `stop`,
/// paced in 1 ms steps; returns the frames sent.
#[allow(clippy::too_many_arguments)] // the flood's parameters, each a plain value
fn flood(
    frame_src: [u8; 6],
    frame_dst: [u8; 6],
    vip: Ipv4Addr,
    rate: u64,
    flows: u64,
    flags: u8,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    // SAFETY: plain socket calls on a descriptor owned here.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    let ifindex = lbctl::host::iface::ifindex("eth0")?;
    // SAFETY: zeroed sockaddr_ll, filled in, passed with its size.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame_dst);
    // One template; each frame gets its own source (65,536 addresses x 64
    // ports: more flows than any table holds), checksums updated (RFC 1624).
    let template = Packet::tcp("198.19.0.0:1024", &format!("{vip}:80"), flags)
        .src_mac(frame_src)
        .dst_mac(frame_dst)
        .build();
    let mut f = template.clone();
    let start = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_micros() as u64 * rate) / 1_000_000;
        if n >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let flow = n % flows.clamp(1, 1 << 22);
        let (host, port) = ((flow & 0xffff) as u16, 1024 + ((flow >> 16) & 63) as u16);
        // saddr 198.19.0.0 + host: only its low word changes (bytes 28-29).
        f[28..30].copy_from_slice(&host.to_be_bytes());
        f[34..36].copy_from_slice(&port.to_be_bytes());
        let ip_check = adjust(
            u16::from_be_bytes([template[24], template[25]]),
            &[(0, host)],
        );
        f[24..26].copy_from_slice(&ip_check.to_be_bytes());
        let tcp_check = adjust(
            u16::from_be_bytes([template[50], template[51]]),
            &[(0, host), (1024, port)],
        );
        f[50..52].copy_from_slice(&tcp_check.to_be_bytes());
        if n % 1_000_003 == 0 {
            parse(&f); // panics on a wrong checksum
        }
        // SAFETY: f and addr outlive the call.
        let r = unsafe {
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            std::thread::yield_now(); // ENOBUFS: the queue is full, try again
            continue;
        }
        n += 1;
        sent.store(n, Ordering::Relaxed);
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    Ok(())
}

/// A checksum after 16-bit words changed from old to new (RFC 1624).
fn adjust(check: u16, changes: &[(u16, u16)]) -> u16 {
    let mut sum = u32::from(!check);
    for &(old, new) in changes {
        sum += u32::from(!old) + u32::from(new);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether a connection to the VIP got the backend's name line.
fn connect_once(vip: Ipv4Addr) -> bool {
    clients::tcp_hello(vip, 80, Duration::from_secs(3)).is_ok()
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.lbctl.is_none() {
        let exe = std::env::current_exe()?;
        let bin = exe.with_file_name("lbctl");
        args.lbctl = Some(bin.to_string_lossy().into_owned());
    }
    let bin = args.lbctl.clone().unwrap_or_default();
    let mut lab = Lab::two_arm(2).context("building the lab")?;
    lab.start_servers()?;
    for iface in lab.lb_ifaces() {
        lbctl(&lab, &bin, &["attach", iface])?;
    }
    let vip = lab.vip(1);
    let v = SocketAddr::new(IpAddr::V4(vip), 80).to_string();
    lbctl(
        &lab,
        &bin,
        &["vip", "add", &v, "--proto", "tcp", "--mode", "dnat"],
    )?;
    for i in lab.backend_ids() {
        let b = SocketAddr::new(IpAddr::V4(lab.backend_addr(i)), ECHO_PORT).to_string();
        lbctl(&lab, &bin, &["backend", "add", &v, &b, "--proto", "tcp"])?;
    }
    let cfg = EchoConfig {
        interval: Duration::from_millis(100),
        max_duration: Duration::from_secs(args.seconds + 120),
        io_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let long = lab
        .in_client(|| clients::start_many(args.long, vip, 80, &cfg))
        .map_err(|e| anyhow::anyhow!("starting long connections: {e}"))?;
    // The backends' SYN-ACKs to the spoofed sources leave the balancer
    // towards the client side, as a real flood's backscatter leaves for the
    // Internet (the client namespace drops them: not its addresses).
    let client = lab.client_addr().to_string();
    lab.exec(
        lab.balancer_ns(),
        &["ip", "route", "add", "198.19.0.0/16", "via", &client],
    )?;
    let client_mac = mac_of(&lab, lab.client_ns(), "eth0")?;
    let lb_mac = mac_of(&lab, lab.balancer_ns(), lab.lb_client_iface())?;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (during_ok, during_tried, flood_secs) = std::thread::scope(|s| -> Result<_> {
        let flooder = {
            let (stop, sent, ns) = (stop.clone(), sent.clone(), lab.client_ns().to_string());
            s.spawn(move || {
                netns::in_ns(&ns, || {
                    let flags = if args.ack { ACK } else { SYN };
                    flood(
                        client_mac, lb_mac, vip, args.rate, args.flows, flags, &stop, &sent,
                    )
                })
            })
        };
        let start = Instant::now();
        // The first 2 s fill the table; count from then on, from 8 clients
        // (each its own connections, one after another).
        std::thread::sleep(Duration::from_secs(2));
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let ns = lab.client_ns().to_string();
                s.spawn(move || {
                    netns::in_ns(&ns, || {
                        let (mut ok, mut tried) = (0u64, 0u64);
                        while start.elapsed() < Duration::from_secs(args.seconds) {
                            ok += connect_once(vip) as u64;
                            tried += 1;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        (ok, tried)
                    })
                })
            })
            .collect();
        let (mut ok, mut tried) = (0u64, 0u64);
        for w in workers {
            let (o, t) = w.join().expect("client thread")?;
            ok += o;
            tried += t;
        }
        stop.store(true, Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        flooder.join().expect("flood thread")??;
        Ok((ok, tried, secs))
    })?;
    let status_flood = lbctl(&lab, &bin, &["status"])?;
    // What the spoofed sources hold in the table as the flood ends.
    let entries = lab.exec(lab.balancer_ns(), &["conntrack", "-L"])?;
    let spoofed: Vec<&str> = entries
        .lines()
        .filter(|l| l.contains("src=198.19."))
        .collect();
    let assured = spoofed.iter().filter(|l| l.contains("ASSURED")).count();
    let longest = spoofed
        .iter()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let mut after_ok = 0;
    for _ in 0..args.after {
        after_ok += lab.in_client(|| Ok::<_, std::io::Error>(connect_once(vip)))? as usize;
    }
    let reports = clients::finish_all(long);
    let long_ok = reports.iter().filter(|r| r.is_ok()).count();
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "flood: {sent} spoofed {kind}s in {flood_secs:.1} s = {:.0} {kind}/s (target {})",
        sent as f64 / flood_secs,
        args.rate,
        kind = if args.ack { "ACK" } else { "SYN" }
    );
    println!(
        "entries of spoofed sources at its end: {}, ASSURED {assured}, longest left {longest} s",
        spoofed.len()
    );
    println!(
        "during the flood (after its first 2 s): {during_ok}/{during_tried} new connections ({:.1}%)",
        100.0 * during_ok as f64 / during_tried.max(1) as f64
    );
    println!("right after: {after_ok}/{} new connections", args.after);
    println!("long connections: {long_ok}/{} survived", reports.len());
    for r in reports.iter().filter(|r| !r.is_ok()) {
        println!("  {r}");
    }
    println!("lbctl status at the end of the flood:");
    for line in status_flood.lines().filter(|l| {
        [
            "conntrack",
            "table full",
            "drop_ct",
            "xdp_",
            "pass_fib",
            "pass_no_neigh",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        println!("  {line}");
    }
    Ok(())
}
