//! A paired comparison of two compiled data paths, for changes whose cost
//! is smaller than lbctl-bench's run-to-run noise on a shared machine.
//!
//! ```text
//! clang -g -O2 -target bpf -D__TARGET_ARCH_x86 -I A/bpf -I LIBBPF_HEADERS -c A/bpf/lb.bpf.c -o a.o
//! clang ... -I B/bpf ... -c B/bpf/lb.bpf.c -o b.o
//! sudo target/release/examples/ab_objects a.o b.o [ROUNDS]            # the same frames through A and B
//! sudo FAMILY=ipv6 target/release/examples/ab_objects b.o b.o [ROUNDS] # B sees the IPv6 twin of each frame
//! sudo LARGE=1 target/release/examples/ab_objects a.o b.o [ROUNDS]     # lbctl-bench's large configuration
//! ```
//!
//! Both objects are loaded in one fresh namespace, configured as
//! lbctl-bench's 1-VIP configuration, or with LARGE=1 its 1,000 VIPs and
//! 100,000 conntrack entries made by new flows through A (A's maps; B reuses every map but its
//! flow cache, as `attach --replace` does, so the two must share the ABI of
//! the configuration maps), each behind a restoring harness. Every round
//! measures each frame class A, B, B, A (300,000 repetitions each) and
//! records B's time over A's: the machine's drift cancels within a round.
//! Prints the median and quartiles of that ratio per class; A against A
//! gives about 1.00 ± 0.03 here.

use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context, Result};
use lbctl::datapath::maps::Maps;
use lbctl_bench::frames::{self, Flow, ACK, SYN};
use lbctl_bench::harness::{Harness, Target, Vary};
use lbctl_bench::lab;
use libbpf_rs::{MapCore, Object, ObjectBuilder};

/// Maps B takes over from A only when they are the same size.
const COUNTERS: &[&str] = &["datapath_stats", "reasons", "flow_cache_stats"];

const REPEAT: u32 = 300_000;

/// lbctl's program in a loaded object, as an fd of its own.
fn lbctl_prog(obj: &mut Object) -> Result<OwnedFd> {
    let prog = obj
        .progs_mut()
        .find(|p| p.name() == "lbctl_xdp")
        .context("no lbctl_xdp program in the object")?;
    Ok(prog.as_fd().try_clone_to_owned()?)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(a_path), Some(b_path)) = (args.next(), args.next()) else {
        bail!("usage: ab_objects A.o B.o [ROUNDS]");
    };
    let rounds: usize = args.next().map_or(Ok(40), |s| s.parse())?;
    let ipv6 = std::env::var("FAMILY").is_ok_and(|f| f == "ipv6");
    let run = lab::in_fresh_netns(1, move || -> Result<()> {
        lbctl::datapath::load::load_conntrack_modules();
        let mut a_obj = ObjectBuilder::default().open_file(&a_path)?.load()?;
        let a_fd = lbctl_prog(&mut a_obj)?;
        let maps = Maps::from_prog(a_fd.as_fd())?;
        lab::settings(&maps)?;
        let v0 = lab::routes(&maps, 16)?;
        let large = std::env::var_os("LARGE").is_some();
        let cfg = lab::Config {
            name: String::new(),
            tcp_vips: if large { 1000 } else { 1 },
            backends_per_vip: 16,
            background_flows: if large { 100_000 } else { 0 },
        };
        lab::configure(&maps, &cfg)?;
        let mut b_open = ObjectBuilder::default().open_file(&b_path)?;
        for mut m in b_open.maps_mut() {
            if let Some(running) = maps.to_reuse(m.name()) {
                let h = running.handle();
                let same = (h.value_size(), h.max_entries()) == (m.value_size(), m.max_entries());
                // Counters may grow between two versions (a new verdict, a
                // new data path counter): B then counts in its own. Every
                // other map must be A's, or B would run unconfigured.
                if !same && COUNTERS.iter().any(|c| m.name() == *c) {
                    continue;
                }
                m.reuse_fd(h.as_fd())?;
            }
        }
        let mut b_obj = b_open.load()?;
        let b_fd = lbctl_prog(&mut b_obj)?;
        let (mut a_storage, mut b_storage) = (MaybeUninit::uninit(), MaybeUninit::uninit());
        let mut a = Harness::load(&mut a_storage, a_fd.as_fd(), v0)?;
        let mut b = Harness::load(&mut b_storage, b_fd.as_fd(), v0)?;
        a.set_target(Target::Lbctl)?;
        b.set_target(Target::Lbctl)?;
        if cfg.background_flows > 0 {
            let vip = SocketAddrV4::new(lab::FIRST_VIP, lab::VIP_PORT);
            let template = frames::frame(&Flow::tcp(lab::NEW_FLOW_SOURCE, vip), SYN);
            let vary = Vary::NewFlows {
                first: 0,
                vips: cfg.tcp_vips,
            };
            a.run(&template, vary, cfg.background_flows)?;
            println!("{} conntrack entries", lab::conntrack_count()?);
        }

        // The flows, opened through each program (each has its own cache).
        let vip4 = SocketAddr::V4(SocketAddrV4::new(lab::FIRST_VIP, lab::VIP_PORT));
        let vip6 = SocketAddr::V6(SocketAddrV6::new(lab::VIP6, lab::VIP_PORT, 0, 0));
        let (client4, client6) = (SocketAddr::V4(lab::CLIENT), SocketAddr::V6(lab::CLIENT6));
        let mut classes = Vec::new();
        for (client, vip, not_vip) in [
            (client4, vip4, SocketAddr::V4(lab::NOT_A_VIP)),
            (client6, vip6, SocketAddr::V6(lab::NOT_A_VIP6)),
        ] {
            let syn = frames::frame(&Flow::tcp(client, vip), SYN);
            let backend = frames::parse_checked(&a.run(&syn, Vary::None, 1)?.out)?.dst;
            let syn_ack = frames::frame(&Flow::tcp(backend, client), SYN | ACK);
            a.run(&syn_ack, Vary::None, 1)?;
            let udp = frames::frame(&Flow::udp(client, vip), 0);
            a.run(&udp, Vary::None, 1)?;
            classes.push([
                frames::frame(&Flow::tcp(client, vip), ACK),
                frames::frame(&Flow::tcp(backend, client), ACK),
                udp,
                frames::frame(&Flow::tcp(client, not_vip), ACK),
            ]);
        }
        let names = ["established", "reply", "udp", "non-vip"];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for _ in 0..rounds {
            for (c, ratio) in ratios.iter_mut().enumerate() {
                let frame_a = &classes[0][c];
                let frame_b = &classes[usize::from(ipv6)][c];
                let (mut ta, mut tb) = (0u64, 0u64);
                for second in [false, true, true, false] {
                    if second {
                        tb += b.run(frame_b, Vary::None, REPEAT)?.ns;
                    } else {
                        ta += a.run(frame_a, Vary::None, REPEAT)?.ns;
                    }
                }
                ratio.push(tb as f64 / ta as f64);
            }
        }
        println!(
            "B/A per round, {rounds} rounds of {REPEAT} repetitions{}:",
            if ipv6 { ", B on IPv6 frames" } else { "" }
        );
        for (name, mut r) in names.iter().zip(ratios) {
            r.sort_by(f64::total_cmp);
            let q = |f: f64| r[((r.len() - 1) as f64 * f) as usize];
            println!(
                "  {name:<12} median {:.3}  quartiles {:.3}-{:.3}",
                q(0.5),
                q(0.25),
                q(0.75)
            );
        }
        Ok(())
    });
    run.join()
        .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
}
