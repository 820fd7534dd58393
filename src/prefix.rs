//! Address prefixes (`198.18.0.0/24`, `2001:db8::/48`) and a VIP's source
//! allowlist made of them (`lbctl vip add --allow`, `allow = [...]`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An address and how many of its leading bits count; the rest are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// `addr/len`; None if `len` is too long for the family or `addr` has
    /// bits set past it.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let p = Prefix { addr, len };
        (len <= p.max_len() && p.masked() == addr).then_some(p)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn bits(&self) -> u8 {
        self.len
    }

    fn max_len(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// `addr` with the bits past `len` cleared.
    fn masked(&self) -> IpAddr {
        mask(self.addr, self.len)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
            (u128::from(u32::from(a)) & top_bits(len, 32)) as u32,
        )),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & top_bits(len, 128))),
    }
}

/// A netmask for an address of `width` bits (32 or 128) widened to u128:
/// ANDed with it, keeps its top `len` bits (`len` capped at `width`). One
/// computation for both families.
fn top_bits(len: u8, width: u8) -> u128 {
    match len.min(width) {
        0 => 0,
        len => u128::MAX << (width - len),
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `ADDRESS/LENGTH`, or a bare address (one host).
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address (a prefix is ADDRESS/LENGTH, e.g. 198.18.0.0/24)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "{s:?}: prefix length {l:?} is out of range (0-{max})"
                    ))
                }
            },
        };
        Prefix::new(addr, len).ok_or_else(|| {
            format!(
                "{s}: bits are set past the prefix length: did you mean {}/{len}?",
                mask(addr, len)
            )
        })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Prefixes in all VIPs' allowlists, at most (`LB_MAX_ALLOW_PREFIXES`).
pub const MAX_ALLOW_PREFIXES: usize = 65_536;

/// `prefixes` as the allowlist of VIP `vip`: each of the VIP's address
/// family (clients of an IPv4 VIP are IPv4), sorted, each once.
pub fn allowlist(vip: SocketAddr, prefixes: &[Prefix]) -> Result<Vec<Prefix>, String> {
    let mut out = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        if p.addr.is_ipv4() != vip.is_ipv4() {
            let fam = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
            return Err(format!(
                "allow {p}: VIP {vip} is {}, so its clients are {} too",
                fam(vip.is_ipv4()),
                fam(vip.is_ipv4())
            ));
        }
        out.push(*p);
    }
    if out.len() > MAX_ALLOW_PREFIXES {
        return Err(format!(
            "{} prefixes: at most {MAX_ALLOW_PREFIXES} in all",
            out.len()
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// An allowlist as one line: "everyone" when empty.
pub fn describe(allow: &[Prefix]) -> String {
    if allow.is_empty() {
        return "everyone".into();
    }
    allow
        .iter()
        .map(Prefix::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn parses_prefixes_and_hosts() {
        assert_eq!(p("198.18.0.0/24").to_string(), "198.18.0.0/24");
        assert_eq!(p("198.18.0.7").to_string(), "198.18.0.7/32");
        assert_eq!(p("2001:db8::/48").to_string(), "2001:db8::/48");
        assert_eq!(p("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(p("0.0.0.0/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn refuses_what_is_not_a_prefix() {
        let err = |s: &str| s.parse::<Prefix>().unwrap_err();
        assert!(err("198.18.0.5/24").contains("did you mean 198.18.0.0/24?"));
        assert!(err("198.18.0.0/33").contains("out of range (0-32)"));
        assert!(err("2001:db8::/129").contains("out of range (0-128)"));
        assert!(err("eth0/24").contains("is not an IP address"));
        assert!(err("198.18.0.0/x").contains("out of range"));
    }

    #[test]
    fn contains_by_family_and_bits() {
        assert!(p("198.18.0.0/24").contains("198.18.0.200".parse().unwrap()));
        assert!(!p("198.18.0.0/24").contains("198.18.1.1".parse().unwrap()));
        assert!(p("0.0.0.0/0").contains("203.0.113.9".parse().unwrap()));
        assert!(!p("0.0.0.0/0").contains("2001:db8::1".parse().unwrap()));
        assert!(p("2001:db8::/32").contains("2001:db8:ffff::1".parse().unwrap()));
    }

    #[test]
    fn an_allowlist_is_of_the_vips_family_sorted_once() {
        let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
        let list = allowlist(
            vip,
            &[p("198.18.1.0/24"), p("198.18.0.0/24"), p("198.18.1.0/24")],
        );
        assert_eq!(list.unwrap(), vec![p("198.18.0.0/24"), p("198.18.1.0/24")]);
        let err = allowlist(vip, &[p("2001:db8::/48")]).unwrap_err();
        assert!(err.contains("VIP 198.18.100.1:80 is IPv4"), "{err}");
    }
}
