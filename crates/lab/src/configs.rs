//! Inputs shared by tests and benchmarks: a configuration of many VIPs, and
//! many distinct clients; and the check that a shipped sample configuration
//! names everything the file takes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lbctl::model::{Desired, DesiredVip, NatMode, Proto, Service, Timeout, VipSpec};

/// `vips` dnat VIPs on 198.18.100.1, .2, ... port 80, each with `backends`
/// backends 198.18.1.11, .12, ... of weight 1, on port 10000 + the VIP's
/// number (so no two VIPs share a backend endpoint); tables sized by lbctl
/// unless `table_size` fixes them.
pub fn many_vips(vips: u32, backends: u32, table_size: Option<u32>) -> Desired {
    let vips = (0..vips)
        .map(|i| DesiredVip {
            table_in_use: None,
            spec: VipSpec::new(
                Service {
                    addr: SocketAddr::new(
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 100, 1)) + i).into(),
                        80,
                    ),
                    proto: Proto::Tcp,
                },
                NatMode::Dnat,
                None,
                table_size,
            )
            .expect("a valid VIP"),
            health: None,
            backend_health: Vec::new(),
            backends: (0..backends)
                .map(|j| {
                    let host = Ipv4Addr::new(198, 18, 1, 11 + j as u8);
                    (SocketAddr::new(host.into(), 10000 + i as u16), 1)
                })
                .collect(),
        })
        .collect();
    Desired {
        vips,
        ..Default::default()
    }
}

/// `n` client addresses and ports spread over 198.18.0.0/16 by a xorshift
/// from `seed` (the same seed, the same clients).
pub fn spread_clients(n: u32, seed: u64) -> Vec<SocketAddr> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = [198, 18, (x >> 8) as u8, (x >> 16) as u8 | 1];
            SocketAddr::new(IpAddr::from(ip), 1024 + (x >> 32) as u16 % 60000)
        })
        .collect()
}

/// Asserts that a sample configuration file (`what`, e.g. the README's
/// example) mentions every NAT mode in `text`, and names every timeout the
/// way `names_timeout` wants (mentioned, or set); so a new mode or timeout
/// cannot ship undocumented.
pub fn assert_names_every_mode_and_timeout(
    what: &str,
    text: &str,
    names_timeout: impl Fn(&str) -> bool,
) {
    for mode in NatMode::ALL {
        assert!(
            text.contains(mode.name()),
            "{what} does not mention mode {mode}"
        );
    }
    for t in Timeout::ALL {
        assert!(
            names_timeout(t.name()),
            "{what} does not name timeout {}",
            t.name()
        );
    }
}
