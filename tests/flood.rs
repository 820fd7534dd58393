//! A full conntrack table (issue 13): the namespace's table filled to
//! nf_conntrack_max through the real program (UDP flows, which keep their
//! entries 300 s), then new TCP flows to a dnat VIP are forwarded without an
//! entry (flood mode) both ways — to VIPs that share their backends too,
//! whose replies do not say which VIP they are for — and a fullnat VIP,
//! which needs its entry, drops them (`drop_ct_failed`). The kernel's table limit is global, its
//! count per namespace: filling this namespace's table leaves others alone.

use lbctl::datapath::types::lb_reason;
use lbctl::model::{NatMode, Proto};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;

const VIP: &str = "198.18.100.1:80";
const FULLNAT_VIP: &str = "198.18.100.2:80";
/// A dnat VIP with VIP's backends: their replies do not say which VIP
/// they answer for.
const SHARING_VIP: &str = "198.18.100.3:80";
/// A dnat VIP whose one backend a fullnat VIP shares.
const BESIDE_FULLNAT_VIP: &str = "198.18.100.4:80";
const BACKENDS: [&str; 3] = ["198.18.1.11:8080", "198.18.1.12:8080", "198.18.1.13:8080"];
const FULLNAT_BACKEND: &str = "198.18.1.12:9090";

/// A balancer with VIP (tcp, BACKENDS) and a UDP VIP on the same address,
/// whose flows fill the table.
fn dnat_tcp_and_udp() -> Balancer {
    let (lb, _) = Balancer::dnat(VIP, Proto::Tcp, &BACKENDS);
    let udp = lb.vip("198.18.100.1:53", Proto::Udp, NatMode::Dnat, None);
    lb.backend(&udp, "198.18.1.11:5353", 1);
    lb
}

fn stats(lb: &Balancer) -> (u64, u64) {
    let d = lb.maps.datapath_counters().unwrap().unwrap();
    (d.ct_full, d.stateless)
}

#[test]
fn a_full_table_forwards_dnat_flows_without_entries_and_drops_fullnat() {
    in_fresh_netns(|| {
        let lb = dnat_tcp_and_udp();
        let full = lb.vip(
            FULLNAT_VIP,
            Proto::Tcp,
            NatMode::Fullnat,
            Some("198.18.1.1"),
        );
        lb.backend(&full, FULLNAT_BACKEND, 1);
        let sharing = lb.vip(SHARING_VIP, Proto::Tcp, NatMode::Dnat, None);
        for b in BACKENDS {
            lb.backend(&sharing, b, 1);
        }
        let beside = lb.vip(BESIDE_FULLNAT_VIP, Proto::Tcp, NatMode::Dnat, None);
        lb.backend(&beside, FULLNAT_BACKEND, 1);

        // Fill: one UDP flow per client port until an entry cannot be made.
        let max: u64 = sh("cat /proc/sys/net/netfilter/nf_conntrack_max")
            .trim()
            .parse()
            .unwrap();
        let mut sent = 0u64;
        'fill: for host in 2..=250u8 {
            for port in 1024..=65535u16 {
                let from = format!("198.18.0.{host}:{port}");
                lb.run(&Packet::udp(&from, "198.18.100.1:53", b"q").build());
                sent += 1;
                if sent % 1024 == 0 && stats(&lb).0 > 0 {
                    break 'fill;
                }
                assert!(
                    sent < max + 100_000,
                    "{sent} flows and the table is not full"
                );
            }
        }
        let (full_before, stateless_before) = stats(&lb);
        assert!(
            full_before > 0,
            "the table filled after {sent} flows (max {max})"
        );

        // New TCP flows to each dnat VIP: the SYN goes to a backend, the
        // SYN-ACK back from the VIP, the ACK to the same backend. Where VIPs
        // share the backend, flood mode remembered which VIP the SYN was for.
        let dnat_vips = [
            (VIP, &BACKENDS[..]),
            (SHARING_VIP, &BACKENDS[..]),
            (BESIDE_FULLNAT_VIP, &[FULLNAT_BACKEND][..]),
        ];
        for (i, (vip, backends)) in dnat_vips.into_iter().enumerate() {
            for port in (50000..50020u16).map(|p| p + 100 * i as u16) {
                let client = format!("198.18.0.3:{port}");
                let (action, out) = lb.run(&Packet::tcp(&client, vip, SYN).build());
                assert_eq!(action, XDP_REDIRECT, "SYN from {client} to {vip}");
                let backend = parse(&out).dst;
                assert!(backends.contains(&backend.as_str()), "{backend}");
                let syn_ack = Packet::tcp(&backend, &client, SYN | ACK).build();
                let (action, out) = lb.run_on(&syn_ack, "v0");
                assert_eq!(action, XDP_TX, "SYN-ACK to {client} from {vip}");
                let seen = parse(&out);
                assert_eq!(
                    (seen.src.as_str(), seen.dst.as_str()),
                    (vip, client.as_str())
                );
                let (action, out) = lb.run(&Packet::tcp(&client, vip, ACK).payload(b"x").build());
                assert_eq!(action, XDP_REDIRECT, "ACK from {client}");
                assert_eq!(parse(&out).dst, backend, "the ACK follows the SYN");
            }
        }
        let (_, stateless) = stats(&lb);
        assert!(
            stateless >= stateless_before + 40 * 3,
            "SYNs and SYN-ACKs went without entries: {stateless_before} -> {stateless}"
        );
        let entries = sh("conntrack -L -p tcp 2>/dev/null | grep -c 'sport=50' || true");
        assert!(
            entries.trim().parse::<u32>().unwrap_or(0) <= 60,
            "no SYN made an entry (at most the ACKs did): {entries}"
        );

        // A shared backend's SYN-ACK for a flow flood mode never sent says
        // nothing of its VIP: still dropped.
        let before = lb.reason(lb_reason::LB_DROP_REPLY_UNTRACKED);
        for backend in [BACKENDS[0], FULLNAT_BACKEND] {
            let syn_ack = Packet::tcp(backend, "198.18.0.9:40000", SYN | ACK).build();
            let (action, _) = lb.run_on(&syn_ack, "v0");
            assert_eq!(action, XDP_DROP, "an unknown flow's SYN-ACK from {backend}");
        }
        assert_eq!(lb.reason(lb_reason::LB_DROP_REPLY_UNTRACKED), before + 2);

        // A fullnat VIP needs its entry (the source port is the kernel's
        // choice): dropped while the table is full.
        let before = lb.reason(lb_reason::LB_DROP_CT_FAILED);
        let mut dropped = 0;
        for port in 51000..51020u16 {
            let from = format!("198.18.0.3:{port}");
            let (action, _) = lb.run(&Packet::tcp(&from, FULLNAT_VIP, SYN).build());
            dropped += (action == XDP_DROP) as u64;
        }
        assert!(dropped > 0, "fullnat SYNs dropped while the table is full");
        assert_eq!(lb.reason(lb_reason::LB_DROP_CT_FAILED), before + dropped);
    });
}

/// Issue 19: 10,000 spoofed ACKs (each answered by the backend's RST, as a
/// backend answers a packet of no connection it knows) and 10,000 spoofed
/// UDP datagrams, each from its own address in 198.19.0.0/16: no entry is
/// ASSURED, and none outlives the short timeouts (the handshake's for TCP,
/// the unreplied UDP one), so strangers cannot hold the table.
#[test]
fn spoofed_acks_and_datagrams_make_no_lasting_entries() {
    in_fresh_netns(|| {
        let lb = dnat_tcp_and_udp();
        const N: u32 = 10_000;
        let source = |i: u32| format!("198.19.{}.{}:{}", i / 250, i % 250 + 1, 1024 + i % 60_000);
        for i in 0..N {
            let client = source(i);
            let (action, out) = lb.run(&Packet::tcp(&client, VIP, ACK).build());
            assert_eq!(
                action, XDP_REDIRECT,
                "forwarded, as a flow that lost its entry"
            );
            let backend = parse(&out).dst;
            lb.run(&Packet::tcp(&backend, &client, 0x04).build());
            lb.run(&Packet::udp(&client, "198.18.100.1:53", b"x").build());
        }
        let entries = sh("conntrack -L 2>/dev/null");
        let (mut tcp, mut udp) = (0, 0);
        for e in entries.lines() {
            let left: u32 = e.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert!(!e.contains("ASSURED"), "{e}");
            if e.starts_with("tcp") {
                tcp += 1;
                assert!(left <= 10, "the handshake timeout at most: {e}");
            } else {
                udp += 1;
                assert!(left <= 30, "the unreplied UDP timeout at most: {e}");
            }
        }
        assert_eq!((tcp, udp), (N, N), "one short-lived entry each");
    });
}
