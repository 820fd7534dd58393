//! Two balancers configured alike pick the same backend for every new flow,
//! whatever history led each to its configuration (issue 19, item 1): the
//! table's size and slots are a function of the VIP's backends and weights
//! alone. Each history runs in a fresh namespace with the real program; the
//! same 10,000 new flows (SYNs) go through each, and the backends they were
//! sent to are compared with those of a balancer given the configuration
//! from scratch (and, for 100 of them, with what `lbctl explain`
//! predicts from the table as the kernel holds it).

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use lbctl::datapath::load;
use lbctl::datapath::maps::Maps;
use lbctl::model::{Health, NatMode, Proto, Service, VipSpec};
use lbctl_lab::fixtures::packet::*;
use lbctl_lab::fixtures::*;

const VIP: &str = "198.18.100.1:80";
const FLOWS: u32 = 10_000;

/// The configuration every history ends at: three backends, weights 1, 2
/// and 1.
const FINAL: [(&str, u32); 3] = [
    ("198.19.1.11:8080", 1),
    ("198.19.1.12:8080", 2),
    ("198.19.1.13:8080", 1),
];

fn backend_addr(host: u32) -> String {
    format!("198.19.1.{host}:8080")
}

/// A VIP sized by lbctl (the fixture's `vip` fixes the size).
fn auto_vip(lb: &Balancer) -> Service {
    let service = svc(VIP, Proto::Tcp);
    let spec = VipSpec::new(service, NatMode::Dnat, None, None).unwrap();
    lb.maps.add_vip(&spec).unwrap();
    service
}

fn add(lb: &Balancer, service: &Service, a: &str, weight: u32) {
    lb.maps.add_backend(service, addr(a), weight).unwrap();
}

fn del(lb: &Balancer, service: &Service, a: &str) {
    lb.maps.del_backend(service, addr(a)).unwrap();
}

fn add_final(lb: &Balancer, service: &Service) {
    for (a, w) in FINAL {
        add(lb, service, a, w);
    }
}

/// Where the flows go, and the table size, on a balancer given the final
/// backends and nothing else: what every history must agree with.
fn from_scratch() -> (Vec<String>, u32) {
    after(|lb, s| {
        add_final(&lb, &s);
        lb
    })
}

/// `FLOWS` distinct clients over 198.18.0.0/16 and ports.
fn clients() -> Vec<SocketAddr> {
    lbctl_lab::configs::spread_clients(FLOWS, 0x2545_f491_4f6c_dd1d)
}

/// The backend each new flow is sent to, through `lb`'s program (`skel`:
/// the program that runs, which after an upgrade is not `lb`'s).
fn choices(skel: &Balancer) -> Vec<String> {
    clients()
        .iter()
        .map(|c| {
            let syn = Packet::tcp(&c.to_string(), VIP, SYN).build();
            let (action, out) = skel.run(&syn);
            assert_eq!(action, XDP_PASS, "no routes: rewritten and passed");
            parse(&out).dst
        })
        .collect()
}

/// A history to run on a fresh balancer: see `after`.
type History = Box<dyn FnOnce(Balancer, Service) -> Balancer + Send>;

/// Runs `history` on a fresh balancer in a fresh namespace; returns where
/// the flows went and the VIP's table size.
fn after<F>(history: F) -> (Vec<String>, u32)
where
    F: FnOnce(Balancer, Service) -> Balancer + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    in_fresh_netns(move || {
        let lb = Balancer::load();
        let service = auto_vip(&lb);
        let lb = history(lb, service);
        let size = lb.maps.find_vip(&service).unwrap().unwrap().table_size;
        let table = lb
            .maps
            .table(lb.maps.find_vip(&service).unwrap().unwrap().index);
        assert_eq!(
            table.unwrap().len() as u32,
            size,
            "the row says the table's size"
        );
        let picked = choices(&lb);
        // `lbctl explain` reads the packed table as the program does.
        for (c, got) in clients().iter().zip(&picked).take(100) {
            let pick = lb.maps.predict(&service, *c).unwrap().unwrap();
            assert_eq!(pick.table_size, size);
            assert_eq!(
                pick.backend.unwrap().addr.to_string(),
                *got,
                "explain for {c}"
            );
        }
        tx.send((picked, size)).unwrap();
    });
    rx.recv().unwrap()
}

fn assert_agree(what: &str, got: &(Vec<String>, u32), want: &(Vec<String>, u32)) {
    let differ = got.0.iter().zip(&want.0).filter(|(a, b)| a != b).count();
    assert_eq!(
        (differ, got.1),
        (0, want.1),
        "{what}: {differ} of {FLOWS} new flows go elsewhere than on a balancer given the same backends from scratch (table sizes {} and {})",
        got.1,
        want.1
    );
}

/// The same backends, reached by adding and removing: five then two
/// removed (the case), eight then five removed, twenty (a larger
/// table) then seventeen removed, in another order than from scratch.
#[test]
fn balancers_that_grew_and_shrank_agree_with_one_built_from_scratch() {
    let scratch = from_scratch();
    let distinct: std::collections::HashSet<&String> = scratch.0.iter().collect();
    assert_eq!(distinct.len(), 3, "every backend gets flows");

    // Each history, and what it did: all must end where `scratch` is.
    let histories: [(&str, History); 4] = [
        (
            "5 backends, then 2 removed",
            Box::new(|lb, s| {
                add_final(&lb, &s);
                add(&lb, &s, &backend_addr(14), 1);
                add(&lb, &s, &backend_addr(15), 1);
                del(&lb, &s, &backend_addr(14));
                del(&lb, &s, &backend_addr(15));
                lb
            }),
        ),
        (
            "8 backends in another order, then 5 removed",
            Box::new(|lb, s| {
                for h in (14..=18).rev() {
                    add(&lb, &s, &backend_addr(h), 1);
                }
                for (a, w) in FINAL.iter().rev() {
                    add(&lb, &s, a, *w);
                }
                for h in 14..=18 {
                    del(&lb, &s, &backend_addr(h));
                }
                lb
            }),
        ),
        (
            "20 backends, then 17 removed",
            Box::new(|lb, s| {
                add_final(&lb, &s);
                let more: Vec<(SocketAddr, u32)> =
                    (20..37).map(|h| (addr(&backend_addr(h)), 1)).collect();
                lb.maps.add_backends(&s, &more).unwrap();
                for (a, _) in &more {
                    lb.maps.del_backend(&s, *a).unwrap();
                }
                lb
            }),
        ),
        (
            "a weight changed and changed back",
            Box::new(|lb, s| {
                add_final(&lb, &s);
                lb.maps.set_weight(&s, addr(FINAL[1].0), 7).unwrap();
                lb.maps.set_weight(&s, addr(FINAL[1].0), 2).unwrap();
                lb
            }),
        ),
    ];
    for (what, history) in histories {
        assert_agree(what, &after(history), &scratch);
    }
}

/// A backend marked down then up again: the table it comes back to is the
/// one a balancer that never saw it down has.
#[test]
fn a_backend_down_then_up_leaves_the_table_as_it_was() {
    let down_up = after(|lb, s| {
        add_final(&lb, &s);
        add(&lb, &s, &backend_addr(14), 1);
        for health in [Health::Down, Health::Up] {
            let mut run = lb.maps.running().unwrap();
            let changed = lb
                .maps
                .set_health(&mut run, &[(s, addr(FINAL[0].0), health)], 1)
                .unwrap();
            assert_eq!(changed.len(), 1);
        }
        del(&lb, &s, &backend_addr(14));
        lb
    });
    assert_agree("a backend down then up", &down_up, &from_scratch());
}

/// An upgrade in place (what `lbctl attach --replace` does: a new program
/// on the running maps, its tables built anew) of a balancer that carries
/// history agrees with one given the configuration from scratch.
#[test]
fn an_upgraded_balancer_agrees_with_one_built_from_scratch() {
    let replaced = after(|lb, s| {
        add_final(&lb, &s);
        for h in 14..=18 {
            add(&lb, &s, &backend_addr(h), 1);
        }
        for h in 14..=18 {
            del(&lb, &s, &backend_addr(h));
        }
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let skel = load::load(storage, Some(&lb.maps)).expect("loading the new program");
        let maps = Maps::from_skel(&skel).unwrap();
        let rebuilt = maps.build_all_tables(&lb.maps).unwrap();
        maps.record_tables(&rebuilt).unwrap();
        assert_eq!(rebuilt.len(), 1);
        Balancer { skel, maps }
    });
    assert_agree("an upgrade in place", &replaced, &from_scratch());
}
