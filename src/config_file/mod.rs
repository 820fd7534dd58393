//! The configuration file: TOML ⇄ `model::Desired`. Pure: nothing here
//! touches the kernel.
//!
//! | file | owns |
//! |---|---|
//! | `parse.rs` | text → `Desired`, the whole file checked, errors naming the line |
//! | `render.rs` | `Desired` → text, in the shape `parse` reads (`lbctl save`) |
//!
//! ```toml
//! interfaces = ["eth0"]                 # attached by `lbctl run`
//! [timeouts]                            # optional: tcp, tcpfin, udp, syn, udp_unreplied seconds
//! [[vip]]
//! address = "198.18.100.1:80"
//! proto = "tcp"                         # tcp | udp
//! mode = "dnat"                         # dnat | fullnat | dsr | tunnel (fullnat, tunnel: snat = "...")
//! [vip.health]                          # optional; no section = no checks
//! kind = "tcp"                          # tcp | http (path, expect) | udp (send, expect) | none
//! interval = "500ms"
//! timeout = "300ms"
//! rise = 2
//! fall = 2
//! [[vip.backend]]
//! address = "198.18.1.11:8080"
//! weight = 1
//! ```

mod parse;
mod render;

pub use parse::{parse, parse_all, FileError, Parsed};
pub use render::render;

use std::path::Path;

use anyhow::{Context, Result};

use crate::model::Desired;

/// Reads and parses a file; errors are one line: `FILE: line N: what`.
pub fn read(path: &Path) -> Result<Desired> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Health check defaults where the file leaves a field out (HAProxy's).
pub mod defaults {
    use std::time::Duration;

    pub const INTERVAL: Duration = Duration::from_secs(2);
    pub const TIMEOUT: Duration = Duration::from_secs(1);
    pub const RISE: u32 = 2;
    pub const FALL: u32 = 3;
    pub const HTTP_PATH: &str = "/";
    pub const HTTP_EXPECT: u16 = 200;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Affinity, CheckKind, HttpCheck, NatMode, Proto, StartHealth, TlsCheck};
    use std::net::SocketAddr;
    use std::time::Duration;

    /// The issue's example, as an operator would write it.
    const EXAMPLE: &str = r#"interfaces = ["eth0"]                 # attached by `lbctl run`
[timeouts]
udp = 30
[[vip]]
address = "198.18.100.1:80"
proto = "tcp"
mode = "dnat"
[vip.health]
kind = "tcp"
interval = "500ms"
timeout = "300ms"
rise = 2
fall = 2
[[vip.backend]]
address = "198.18.1.11:8080"
weight = 1
[[vip.backend]]
address = "198.18.1.12:8080"
weight = 3

[[vip]]
address = "198.18.100.2:53"
proto = "udp"
mode = "fullnat"
snat = "198.18.1.1"
table_size = 16381
[vip.health]
kind = "udp"
send = "ping"
expect = "pong"
[[vip.backend]]
address = "198.18.1.11:53"
"#;

    #[test]
    fn reads_the_documented_shape() {
        let d = parse(EXAMPLE).unwrap();
        assert_eq!(d.interfaces, ["eth0"]);
        assert_eq!(d.timeouts.udp, Some(30));
        assert_eq!(d.timeouts.tcp, None);
        assert_eq!(d.vips.len(), 2);
        let v = &d.vips[0];
        assert_eq!(v.spec.service.to_string(), "198.18.100.1:80/tcp");
        assert_eq!(v.spec.mode, NatMode::Dnat);
        let h = v.health.as_ref().unwrap();
        assert_eq!(
            (h.kind.clone(), h.interval, h.timeout, h.rise, h.fall),
            (
                CheckKind::Tcp,
                Duration::from_millis(500),
                Duration::from_millis(300),
                2,
                2
            )
        );
        assert_eq!(v.backends[1], ("198.18.1.12:8080".parse().unwrap(), 3));
        let u = &d.vips[1];
        assert_eq!(u.spec.service.proto, Proto::Udp);
        assert_eq!(u.spec.table_size, Some(16381));
        assert_eq!(u.spec.snat.unwrap().to_string(), "198.18.1.1");
        assert_eq!(u.backends, [("198.18.1.11:53".parse().unwrap(), 1)]);
        let h = u.health.as_ref().unwrap();
        assert_eq!(
            h.kind,
            CheckKind::Udp {
                send: "ping".into(),
                expect: "pong".into()
            }
        );
        assert_eq!((h.interval, h.rise, h.fall), (defaults::INTERVAL, 2, 3));
    }

    #[test]
    fn every_mode_and_timeout_reads_back() {
        for mode in NatMode::ALL {
            let text = format!("[[vip]]\naddress = \"198.18.100.1:80\"\nmode = \"{mode}\"\n");
            assert_eq!(parse(&text).unwrap().vips[0].spec.mode, mode);
        }
        for which in crate::model::Timeout::ALL {
            let max = *which.range().end();
            let text = format!("[timeouts]\n{} = {max}\n", which.name());
            let d = parse(&text).unwrap();
            assert_eq!(d.timeouts.get(which), Some(max));
            assert_eq!(parse(&render(&d)).unwrap(), d);
        }
    }

    #[test]
    fn render_then_parse_is_the_same_configuration() {
        let d = parse(EXAMPLE).unwrap();
        let text = render(&d);
        assert_eq!(parse(&text).unwrap(), d, "{text}");
        assert_eq!(render(&parse(&text).unwrap()), text, "a fixed point");
        let mut http = parse(&text).unwrap();
        http.vips[0].health.as_mut().unwrap().kind = CheckKind::Http(HttpCheck {
            path: "/health \"x\"".replace(' ', "_"),
            host: Some("app.example".into()),
            expect: vec![(204, 204), (300, 399)],
            body: Some("ok \"quoted\"".into()),
            tls: Some(TlsCheck {
                sni: Some("app.example".into()),
                verify: true,
                ca: Some("/etc/lbctl/ca.pem".into()),
            }),
        });
        http.vips[0].health.as_mut().unwrap().port = Some(8081);
        http.vips[0].health.as_mut().unwrap().start = StartHealth::Up;
        http.vips[0].spec.affinity = Affinity::Client { prefix6: 56 };
        http.vips[1].spec.affinity = Affinity::Client { prefix6: 128 };
        http.vips[1].spec.on_backend_gone = crate::model::OnBackendGone::Reassign;
        http.vips[1].spec.max_new_flows = Some(2500);
        http.vips[0].spec.allow = vec![
            "198.18.0.0/24".parse().unwrap(),
            "198.18.7.9/32".parse().unwrap(),
        ];
        http.hash_seed = Some(7);
        http.flow_cache_size = Some(4096);
        assert_eq!(parse(&render(&http)).unwrap(), http);
        assert_eq!(parse("").unwrap(), Default::default());
        let none = parse("[[vip]]\naddress = \"198.18.100.1:80\"\n[vip.health]\nkind = \"none\"\n");
        assert_eq!(none.unwrap().vips[0].health, None);
    }

    /// A backend's `[vip.backend.health]` replaces the VIP's fields it
    /// names; a new kind inherits only the timing; `none` unchecks it.
    #[test]
    fn backend_checks_override_their_vips() {
        let text = r#"
[[vip]]
address = "198.18.100.1:80"
[vip.health]
kind = "http"
path = "/healthz"
expect = ["200-299", 301]
interval = "1s"
rise = 3
[[vip.backend]]
address = "198.18.1.11:8080"
[[vip.backend]]
address = "198.18.1.12:8080"
[vip.backend.health]
port = 9090
host = "b12.example"
[[vip.backend]]
address = "198.18.1.13:8080"
[vip.backend.health]
kind = "tcp"
[[vip.backend]]
address = "198.18.1.14:8080"
[vip.backend.health]
kind = "none"
[[vip.backend]]
address = "198.18.1.15:8080"
[vip.backend.health]
rise = 3
"#;
        let d = parse(text).unwrap();
        let v = &d.vips[0];
        let be = |n: u8| SocketAddr::from(([198, 18, 1, n], 8080));
        assert_eq!(v.check_of(be(11)), v.health.as_ref());
        assert_eq!(
            v.check_of(be(15)),
            v.health.as_ref(),
            "the same as the VIP's"
        );
        let b12 = v.check_of(be(12)).unwrap();
        let CheckKind::Http(h) = &b12.kind else {
            panic!("{b12:?}")
        };
        assert_eq!(
            (b12.port, h.path.as_str(), h.host.as_deref()),
            (Some(9090), "/healthz", Some("b12.example"))
        );
        assert_eq!(h.expect, [(200, 299), (301, 301)]);
        let b13 = v.check_of(be(13)).unwrap();
        assert_eq!(
            (&b13.kind, b13.interval, b13.rise),
            (&CheckKind::Tcp, Duration::from_secs(1), 3)
        );
        assert_eq!(v.check_of(be(14)), None);
        assert_eq!(v.backend_health.len(), 3);
        assert_eq!(parse(&render(&d)).unwrap(), d, "{}", render(&d));
        let alone = "[[vip]]\naddress = \"198.18.100.1:80\"\n[[vip.backend]]\naddress = \"198.18.1.11:80\"\n[vip.backend.health]\nkind = \"tcp\"\n";
        let d = parse(alone).unwrap();
        assert_eq!(
            d.vips[0]
                .check_of("198.18.1.11:80".parse().unwrap())
                .map(|c| &c.kind),
            Some(&CheckKind::Tcp)
        );
        assert_eq!(parse(&render(&d)).unwrap(), d);
    }

    /// Each bad file gives one line naming the place and the problem.
    #[test]
    fn errors_name_the_line_and_the_problem() {
        let vip = "[[vip]]\naddress = \"198.18.100.1:80\"\n";
        let cases: &[(String, usize, &str)] = &[
            (format!("{vip}[[vip.backend]]\naddress = \"198.18.1.300:8080\"\n"), 4, "not an IP address"),
            (format!("{vip}[[vip.backend]]\naddress = \"198.18.1.1\"\n"), 4, "a port is needed"),
            (format!("{vip}adress = \"x\"\n"), 3, "unknown field `adress`"),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\nintervall = \"1s\"\n"), 5, "unknown field `intervall`"),
            ("bogus = 1\n".into(), 1, "unknown field `bogus`"),
            (format!("{vip}{vip}"), 4, "listed twice"),
            (format!("{vip}[[vip.backend]]\naddress = \"198.18.1.1:80\"\n[[vip.backend]]\naddress = \"198.18.1.1:80\"\n"), 6, "listed twice"),
            (format!("{vip}[[vip.backend]]\naddress = \"198.18.1.1:80\"\nweight = 70000\n"), 5, "weight = 70000 is out of range"),
            (format!("{vip}[[vip.backend]]\naddress = \"[2001:db8::1]:80\"\n"), 4, "address family"),
            (format!("{vip}mode = \"masq\"\n"), 3, "use dnat, fullnat, dsr or tunnel"),
            (format!("{vip}snat = \"198.18.1.1\"\n"), 3, "snat only applies"),
            (format!("{vip}proto = \"sctp\"\n"), 3, "unknown protocol"),
            (format!("{vip}table_size = 65536\n"), 3, "must be a prime"),
            ("[[vip]]\naddress = \"[2001:db8::1]:80\"\nsnat = \"198.18.2.1\"\nmode = \"fullnat\"\n".into(), 2, "address family"),
            (format!("{vip}[vip.health]\nkind = \"icmp\"\n"), 4, "use tcp, http, https, udp or none"),
            (format!("{vip}affinity = \"source\"\n"), 3, "affinity \"source\": use none or client"),
            (format!("{vip}affinity = \"client\"\naffinity_prefix6 = 129\n"), 4, "affinity_prefix6 = 129 is out of range (1-128)"),
            (format!("{vip}affinity_prefix6 = 64\n"), 3, "affinity_prefix6 applies only to affinity client"),
            (format!("{vip}allow = [\"198.18.0.5/24\"]\n"), 3, "did you mean 198.18.0.0/24?"),
            (format!("{vip}allow = [\"2001:db8::/48\"]\n"), 3, "so its clients are IPv4 too"),
            (format!("{vip}allow = \"198.18.0.0/24\"\n"), 3, "invalid type"),
            (format!("{vip}on_backend_gone = \"drop\"\n"), 3, "on_backend_gone \"drop\": use keep, reassign or reset"),
            (format!("{vip}max_new_flows = -1\n"), 3, "max_new_flows -1: want 0 or more"),
            (format!("{vip}max_new_flows = 100000001\n"), 3, "max_new_flows 100000001: at most 100000000 a second"),
            (format!("{vip}[vip.health]\nkind = \"http\"\nsni = \"a.example\"\n"), 5, "sni only applies to kind = \"https\""),
            (format!("{vip}[vip.health]\nkind = \"https\"\nca = \"/x.pem\"\n"), 5, "ca applies with verify = true"),
            (format!("{vip}[vip.health]\nkind = \"http\"\nexpect = [\"300-200\"]\n"), 5, "not an HTTP status or range"),
            (format!("{vip}[vip.health]\nkind = \"http\"\nexpect = []\n"), 5, "names no status"),
            (format!("{vip}[vip.health]\nkind = \"http\"\nhost = \"a b\"\n"), 5, "host \"a b\""),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\nstart = \"later\"\n"), 5, "health start \"later\": use down or up"),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\nbody = \"x\"\n"), 5, "body only applies"),
            (format!("{vip}[[vip.backend]]\naddress = \"198.18.1.1:80\"\n[vip.backend.health]\nport = 9\n"), 4, "needs kind"),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"\n"), 6, "at most the interval"),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\ninterval = \"soon\"\n"), 5, "not a duration"),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\npath = \"/\"\n"), 5, "path only applies"),
            (format!("{vip}[vip.health]\nkind = \"udp\"\n"), 4, "needs send"),
            (format!("{vip}[vip.health]\nkind = \"http\"\nexpect = \"ok\"\n"), 5, "HTTP status"),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\nrise = 0\n"), 5, "rise = 0 is out of range"),
            ("[timeouts]\nudp = 0\n".into(), 2, "udp = 0 is out of range"),
            // The kernel's limit, as `lbctl timeouts` has it (the file took
            // up to 4000000 before).
            ("[timeouts]\ntcp = 2147484\n".into(), 2, "tcp = 2147484 is out of range (1-2147483)"),
            ("[timeouts]\nsyn = 601\n".into(), 2, "syn = 601 is out of range (1-600)"),
            ("[timeouts]\nudp_unreplied = 601\n".into(), 2, "out of range (1-600)"),
            ("flow_cache_size = 1023\n".into(), 1, "flow_cache_size = 1023 is out of range (1024-16777216)"),
            ("hash_seed = -1\n".into(), 1, "hash_seed = -1 is out of range (0-4294967295)"),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\nfall = 101\n"), 5, "fall = 101 is out of range (1-100)"),
            (format!("{vip}[vip.health]\nkind = \"tcp\"\nport = 65536\n"), 5, "port = 65536 is out of range (1-65535)"),
            (format!("{vip}[vip.health]\nkind = \"http\"\nexpect = 600\n"), 5, "not an HTTP status or range (100-599"),
            (format!("{vip}mode = \"dsr\"\nsnat = \"not an address\"\n"), 4, "snat only applies to mode = \"fullnat\""),
            ("[[vip]]\naddress = \"[2001:db8::1]:80\"\nmode = \"tunnel\"\nsnat = \"198.18.2.1\"\n".into(), 2, "snat 198.18.2.1 must have the VIP's address family"),
            ("interfaces = [\"eth0\", \"eth0\"]\n".into(), 1, "listed twice"),
            ("xdp_mode = \"fast\"\n".into(), 1, "auto, native or generic"),
            ("[[vip]\n".into(), 1, ""),
            ("interfaces = \"eth0\"\n".into(), 1, ""),
        ];
        for (text, line, says) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, Some(*line), "{text:?}: {e}");
            assert!(e.message.contains(says), "{text:?}: {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }
}
