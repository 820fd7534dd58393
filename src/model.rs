//! What an operator writes, parsed and checked: addresses, protocols, modes,
//! weights, and the requests commands take (`VipSpec`, `AttachOptions`,
//! `Timeouts`). All validation of operator input lives here. Pure: nothing
//! here touches the kernel.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use crate::abi::{LB_MAX_CT_TIMEOUT_S, LB_MAX_TABLE_SIZE};
use crate::maglev::is_prime;
use crate::prefix::Prefix;

/// Gives a fieldless enum one table of names, read by everything that
/// names a variant: `ALL` (the order help and docs list them), `name()`
/// and `Display`; with `parse "what"`, also `FromStr`, whose error is
/// `what "x": use a, b or c`.
macro_rules! names {
    ($ty:ident $(, parse $what:literal)? { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in the order help and docs list them.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        $(impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<$ty, String> {
                $ty::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
                    let names = $ty::ALL.map($ty::name);
                    format!("{} {s:?}: use {}", $what, $crate::model::one_of(&names))
                })
            }
        })?
    };
}
pub(crate) use names;

/// `a`, `a or b`, `a, b or c`: the choices an error offers.
pub fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Balancers that were not given a seed agree with each other.
pub const DEFAULT_HASH_SEED: u32 = 0x6c62_6374;

/// Largest weight (IPVS accepts larger, but 65535 already gives a share
/// resolution far finer than any Maglev table).
pub const MAX_WEIGHT: u32 = 65535;

/// Weights an operator may give (0 drains).
pub const WEIGHTS: RangeInclusive<u32> = 0..=MAX_WEIGHT;

/// Flow cache entries `attach --flow-cache-size` and `flow_cache_size` take.
pub const FLOW_CACHE_SIZES: RangeInclusive<u32> = 1024..=16_777_216;

/// Ports a service, a backend or a health check may name.
pub const PORTS: RangeInclusive<u32> = 1..=65535;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

names!(Proto { Tcp => "tcp", Udp => "udp" });

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Proto, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!(
                "unknown protocol {s:?}: use {}",
                one_of(&Proto::ALL.map(Proto::name))
            )),
        }
    }
}

/// How a VIP's packets are rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatMode {
    /// Destination only: backends see the client and must route replies
    /// through the balancer.
    Dnat,
    /// Destination and source: backends see the balancer and need no route.
    Fullnat,
    /// Direct server return: only the destination MAC changes; backends on
    /// a link of the balancer hold the VIP themselves and answer clients
    /// directly. A backend's port must be the VIP's.
    Dsr,
    /// IPIP (IPv4) or ip6ip6 (IPv6) to the backend, from --snat or the
    /// attached interface's address; backends anywhere routable decapsulate,
    /// hold the VIP and answer clients directly. A backend's port must be the
    /// VIP's.
    Tunnel,
}

names!(NatMode, parse "mode" {
    Dnat => "dnat",
    Fullnat => "fullnat",
    Dsr => "dsr",
    Tunnel => "tunnel",
});

impl NatMode {
    /// fullnat's rewritten source and tunnel's outer source: `--snat`, or
    /// the attached interface's address.
    pub fn has_source(self) -> bool {
        matches!(self, NatMode::Fullnat | NatMode::Tunnel)
    }

    /// dsr and tunnel do not rewrite the packet: backends hold the VIP and
    /// answer clients directly, on the VIP's port.
    pub fn keeps_destination(self) -> bool {
        matches!(self, NatMode::Dsr | NatMode::Tunnel)
    }
}

/// How the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native if the driver supports it, else generic (the kernel chooses).
    Auto,
    /// In the driver (fast path); fails if the driver lacks XDP support.
    Native,
    /// In the generic network stack (slow, works everywhere).
    Generic,
}

names!(XdpMode, parse "xdp_mode" {
    Auto => "auto",
    Native => "native",
    Generic => "generic",
});

/// A VIP: address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    pub addr: SocketAddr,
    pub proto: Proto,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.proto)
    }
}

/// The destination ports a VIP takes. A VIP of one port is keyed by its
/// address and that port. A port-less VIP, written with port 0 (every
/// port) or a range (`198.18.100.1:8000-8099`), is keyed by its address and
/// port 0: at most one per address and protocol, and a VIP of one port on
/// the same address wins over it. Its backends have no port: they receive
/// the client's destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    /// Every port (`ADDR:0`).
    pub const ALL: Ports = Ports {
        first: 0,
        last: u16::MAX,
    };

    pub fn one(port: u16) -> Ports {
        Ports {
            first: port,
            last: port,
        }
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// The ports of a VIP keyed by `addr`: its own port, or (port 0) these.
    pub fn of(addr: SocketAddr, port_less: Ports) -> Ports {
        match addr.port() {
            0 => port_less,
            p => Ports::one(p),
        }
    }
}

/// A VIP as the operator writes it: its key (address and port, 0 for a
/// port-less VIP) and the ports it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipAddr {
    pub addr: SocketAddr,
    pub ports: Ports,
}

impl fmt::Display for VipAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let p = self.ports;
        if self.addr.port() != 0 || p == Ports::ALL {
            return write!(f, "{}", self.addr);
        }
        match self.addr.ip() {
            IpAddr::V4(ip) => write!(f, "{ip}:{}-{}", p.first, p.last),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}-{}", p.first, p.last),
        }
    }
}

/// A VIP with its protocol, as lists and messages write it:
/// `198.18.100.1:8000-8099/tcp`.
pub fn vip_name(service: &Service, ports: Ports) -> String {
    let addr = VipAddr {
        addr: service.addr,
        ports,
    };
    format!("{addr}/{}", service.proto)
}

/// A VIP: `198.18.100.1:80`, `198.18.100.1:0` (every port),
/// `198.18.100.1:8000-8099` (a range), `[2001:db8::1]:80`.
pub fn parse_vip(s: &str) -> Result<VipAddr, String> {
    if let Some((host, range)) = s.rsplit_once(':') {
        if let Some((a, b)) = range.split_once('-') {
            let ip: IpAddr = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(v6) => v6
                    .parse()
                    .map_err(|_| format!("{s}: {v6:?} is not an IPv6 address"))?,
                None => host
                    .parse::<std::net::Ipv4Addr>()
                    .map(IpAddr::V4)
                    .map_err(|_| {
                        format!("{s}: {host:?} is not an IPv4 address (IPv6 in brackets)")
                    })?,
            };
            let port = |p: &str| {
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("{s}: bad port {p:?} in the range (use 1-65535)"))
            };
            let (first, last) = (port(a)?, port(b)?);
            if first >= last {
                return Err(format!(
                    "{s}: a range goes from a lower port to a higher one, e.g. {host}:8000-8099"
                ));
            }
            return Ok(VipAddr {
                addr: SocketAddr::new(ip, 0),
                ports: Ports { first, last },
            });
        }
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(VipAddr {
            addr,
            ports: Ports::of(addr, Ports::ALL),
        });
    }
    parse_endpoint(s).map(|addr| VipAddr {
        addr,
        ports: Ports::one(addr.port()),
    })
}

/// A backend: `198.18.1.11:8080`; for a port-less VIP without a port
/// (`198.18.1.11`, or `198.18.1.11:0`; IPv6 bare or `[2001:db8::11]:0`).
pub fn parse_backend(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 0));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    parse_endpoint(s)
}

/// `198.18.0.1:80` or `[2001:db8::1]:80`.
pub fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{s}: port 0 is not a service port (use 1-65535)"));
        }
        return Ok(addr);
    }
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => return Err(format!("{s}: a port is needed, e.g. {s}:80")),
        Ok(IpAddr::V6(_)) => {
            return Err(format!(
                "{s}: a port is needed; IPv6 addresses are written in brackets, e.g. [{s}]:80"
            ))
        }
        Err(_) => {}
    }
    if s.matches(':').count() > 1 && !s.starts_with('[') {
        return Err(format!(
            "{s}: write IPv6 addresses in brackets with the port after, e.g. [2001:db8::1]:80"
        ));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() => {
            Err(format!("{s}: bad port {port:?} (use 1-65535)"))
        }
        Some((host, _)) => Err(format!("{s}: {host:?} is not an IP address")),
        None => Err(format!("{s}: expected ADDRESS:PORT, e.g. 198.18.100.1:80")),
    }
}

/// Where `lbctl run` serves metrics: `ADDR:PORT`, or a bare `PORT` on the
/// loopback address.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?}: expected ADDR:PORT (e.g. 127.0.0.1:9112) or a port"))
}

pub fn parse_weight(s: &str) -> Result<u32, String> {
    match s.parse::<u64>() {
        Ok(w) if w <= *WEIGHTS.end() as u64 => Ok(w as u32),
        Ok(_) => Err(format!(
            "weight {s} is out of range (0-{MAX_WEIGHT}; 0 drains)"
        )),
        Err(_) => Err(format!(
            "weight {s:?} is not a number (0-{MAX_WEIGHT}; 0 drains)"
        )),
    }
}

pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| format!("{s:?} is not an IP address"))
}

/// dsr does not rewrite ports: a backend must listen on the VIP's. A
/// port-less VIP's backends have no port (they get the client's), and a
/// VIP of one port needs one.
pub fn check_backend_port(
    mode: NatMode,
    vip: SocketAddr,
    backend: SocketAddr,
) -> Result<(), String> {
    match (vip.port(), backend.port()) {
        (0, 0) => return Ok(()),
        (0, _) => {
            return Err(format!(
                "backend {backend}: VIP {} takes many ports and passes the client's on, so its backends have none (write {})",
                vip.ip(),
                backend.ip()
            ))
        }
        (_, 0) => {
            return Err(format!(
                "backend {}: a port is needed for VIP {vip}, e.g. {backend_with_port}",
                backend.ip(),
                backend_with_port = SocketAddr::new(backend.ip(), vip.port())
            ))
        }
        _ => {}
    }
    if mode.keeps_destination() && vip.port() != backend.port() {
        return Err(format!(
            "backend {backend}: VIP {vip} is {}, which keeps the packet's port, so a backend's port must be {}",
            mode.name(),
            vip.port()
        ));
    }
    Ok(())
}

/// A backend must be of the VIP's address family: lbctl translates
/// addresses, not protocols.
pub fn check_same_family(vip: SocketAddr, backend: SocketAddr) -> Result<(), String> {
    let fam = |a: SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
    if vip.is_ipv4() != backend.is_ipv4() {
        return Err(format!(
            "backend {backend} is {} but VIP {vip} is {}: a backend must have the VIP's address family",
            fam(backend),
            fam(vip)
        ));
    }
    Ok(())
}

/// A VIP to add, checked as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub service: Service,
    pub mode: NatMode,
    /// fullnat's source address; None: the attached interface's.
    pub snat: Option<IpAddr>,
    /// The operator's Maglev table size, kept whatever the backends; None:
    /// lbctl sizes the table for them (`table_size.rs`).
    pub table_size: Option<u32>,
    /// How a new flow's backend is chosen: by its 5-tuple, or by its client.
    pub affinity: Affinity,
    /// The clients that may begin flows (`prefix::allowlist`: of the VIP's
    /// family, sorted, each once); empty: everyone.
    pub allow: Vec<Prefix>,
    /// What becomes of the flows of a backend removed or marked down.
    pub on_backend_gone: OnBackendGone,
    /// At most this many new flows a second (`bpf/limit.h`); None: no
    /// limit.
    pub max_new_flows: Option<u32>,
    /// The ports it takes: `service.addr`'s, or for a port-less VIP (port
    /// 0) every port or a range.
    pub ports: Ports,
}

/// What becomes of the live flows of a backend that is removed or marked
/// down (`--on-backend-gone`; IPVS's `expire_nodest_conn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnBackendGone {
    /// They keep their entries and their backend, as long as packets come.
    #[default]
    Keep,
    /// Their entries are removed: a UDP flow's next datagram goes to the
    /// backend picked now.
    Reassign,
    /// Their entries are removed: a TCP flow's next packet reaches a
    /// backend that does not know it, which resets it.
    Reset,
}

impl OnBackendGone {
    pub const ALL: [OnBackendGone; 3] = [
        OnBackendGone::Keep,
        OnBackendGone::Reassign,
        OnBackendGone::Reset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OnBackendGone::Keep => "keep",
            OnBackendGone::Reassign => "reassign",
            OnBackendGone::Reset => "reset",
        }
    }

    /// Whether lbctl removes the flows' entries.
    pub fn expires(self) -> bool {
        self != OnBackendGone::Keep
    }
}

impl FromStr for OnBackendGone {
    type Err = String;
    fn from_str(s: &str) -> Result<OnBackendGone, String> {
        OnBackendGone::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("on-backend-gone {s:?}: use keep, reassign or reset"))
    }
}

impl fmt::Display for OnBackendGone {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a new flow's backend is hashed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Affinity {
    /// The whole 5-tuple: each flow on its own.
    #[default]
    None,
    /// The client's address alone (its port left out; an IPv6 address cut
    /// to `prefix6` bits): every flow of one client to one backend.
    Client { prefix6: u8 },
}

/// Bits of an IPv6 client address `affinity client` may hash.
pub const AFFINITY_PREFIX6: RangeInclusive<u32> = 1..=128;

impl Affinity {
    /// `none` or `client` (the prefix apart).
    pub fn name(self) -> &'static str {
        match self {
            Affinity::None => "none",
            Affinity::Client { .. } => "client",
        }
    }

    /// `none` or `client`, with `prefix6` (default 128) for `client`.
    pub fn parse(name: &str, prefix6: Option<u32>) -> Result<Affinity, String> {
        let prefix6 = match prefix6 {
            Some(p) if AFFINITY_PREFIX6.contains(&p) => p as u8,
            Some(p) => return Err(format!("affinity prefix6 {p} is out of range (1-128)")),
            None => 128,
        };
        match name {
            "none" if prefix6 == 128 => Ok(Affinity::None),
            "none" => Err("an affinity prefix6 applies only to affinity client".into()),
            "client" => Ok(Affinity::Client { prefix6 }),
            other => Err(format!("affinity {other:?}: use none or client")),
        }
    }

    /// The IPv6 prefix length of `client` affinity (None otherwise).
    pub fn prefix6(self) -> Option<u8> {
        match self {
            Affinity::None => None,
            Affinity::Client { prefix6 } => Some(prefix6),
        }
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Affinity::Client { prefix6 } if *prefix6 != 128 => {
                write!(f, "client (IPv6 /{prefix6})")
            }
            a => f.write_str(a.name()),
        }
    }
}

/// Why a `VipSpec` cannot be. Displayed as the command line words it; the
/// configuration file words `SnatNotApplicable` its own way and places each
/// on its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// A source address for a mode that has none (dnat, dsr).
    SnatNotApplicable,
    /// A source address of the other family than the VIP's.
    SnatFamily(IpAddr),
    /// Not a table size `check_table_size` accepts.
    TableSize(String),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SpecError::SnatNotApplicable => {
                f.write_str("--snat only applies to --mode fullnat and --mode tunnel")
            }
            SpecError::SnatFamily(ip) => {
                write!(f, "--snat {ip} must have the VIP's address family")
            }
            SpecError::TableSize(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for SpecError {}

impl VipSpec {
    pub fn new(
        service: Service,
        mode: NatMode,
        snat: Option<IpAddr>,
        table_size: Option<u32>,
    ) -> Result<VipSpec, SpecError> {
        if snat.is_some() {
            check_snat_applies(mode)?;
        }
        if let Some(ip) = snat {
            if ip.is_ipv4() != service.addr.is_ipv4() {
                return Err(SpecError::SnatFamily(ip));
            }
        }
        if let Some(size) = table_size {
            check_table_size(size).map_err(SpecError::TableSize)?;
        }
        Ok(VipSpec {
            service,
            mode,
            snat,
            table_size,
            affinity: Affinity::None,
            allow: Vec::new(),
            on_backend_gone: OnBackendGone::Keep,
            max_new_flows: None,
            ports: Ports::of(service.addr, Ports::ALL),
        })
    }

    /// This VIP taking `ports` (a port-less VIP's range).
    pub fn with_ports(self, ports: Ports) -> VipSpec {
        VipSpec {
            ports: Ports::of(self.service.addr, ports),
            ..self
        }
    }

    /// `198.18.100.1:8000-8099/tcp`.
    pub fn name(&self) -> String {
        vip_name(&self.service, self.ports)
    }

    /// This VIP with `affinity`.
    pub fn with_affinity(self, affinity: Affinity) -> VipSpec {
        VipSpec { affinity, ..self }
    }

    /// This VIP with `policy` for the flows of backends that go.
    pub fn with_on_backend_gone(self, on_backend_gone: OnBackendGone) -> VipSpec {
        VipSpec {
            on_backend_gone,
            ..self
        }
    }

    /// This VIP with at most `limit` new flows a second (None: no limit).
    pub fn with_max_new_flows(self, max_new_flows: Option<u32>) -> VipSpec {
        VipSpec {
            max_new_flows,
            ..self
        }
    }

    /// This VIP with the source allowlist `allow` (empty: everyone).
    pub fn with_allow(self, allow: &[Prefix]) -> Result<VipSpec, String> {
        let allow = crate::prefix::allowlist(self.service.addr, allow)?;
        Ok(VipSpec { allow, ..self })
    }
}

/// A source address is given only to a mode that has one (fullnat's
/// rewritten source, tunnel's outer source).
pub fn check_snat_applies(mode: NatMode) -> Result<(), SpecError> {
    if mode.has_source() {
        Ok(())
    } else {
        Err(SpecError::SnatNotApplicable)
    }
}

/// A Maglev table size: a prime the data path can hold.
pub fn check_table_size(size: u32) -> Result<(), String> {
    if !(3..=LB_MAX_TABLE_SIZE).contains(&size) || !is_prime(size) {
        return Err(format!(
            "table size {size} must be a prime between 3 and {LB_MAX_TABLE_SIZE} (e.g. 16381, 65537)"
        ));
    }
    Ok(())
}

/// Flow idle timeouts in seconds (ipvsadm --set); None: leave as is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Option<u32>,
    pub tcpfin: Option<u32>,
    pub udp: Option<u32>,
    /// A TCP flow's entry until the client completes its handshake (like
    /// netfilter's SYN_SENT/SYN_RECV, IPVS's SYN_RECV).
    pub syn: Option<u32>,
    /// A UDP flow's entry until the backend answers (like netfilter's
    /// unreplied UDP): short, so spoofed datagrams cannot hold the table.
    pub udp_unreplied: Option<u32>,
}

/// The longest handshake timeout: a handshake that takes longer is an
/// attack, and a long one is what lets a SYN flood fill the table.
pub const MAX_SYN_TIMEOUT: u32 = 600;

/// The longest unreplied UDP timeout: as long as the handshake's, for the
/// same reason (a stranger's datagram must not hold an entry long).
pub const MAX_UDP_UNREPLIED_TIMEOUT: u32 = 600;

/// One of the flow idle timeouts: its name (the file's key; the flag is
/// the same with `-` for `_`) and the seconds it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    Tcp,
    Tcpfin,
    Udp,
    Syn,
    UdpUnreplied,
}

names!(Timeout {
    Tcp => "tcp",
    Tcpfin => "tcpfin",
    Udp => "udp",
    Syn => "syn",
    UdpUnreplied => "udp_unreplied",
});

impl Timeout {
    /// Seconds it may be set to. The kernel keeps an entry at most
    /// LB_MAX_CT_TIMEOUT_S; the handshake's and the unreplied UDP's are
    /// kept short on purpose.
    pub fn range(self) -> RangeInclusive<u32> {
        match self {
            Timeout::Tcp | Timeout::Tcpfin | Timeout::Udp => 1..=LB_MAX_CT_TIMEOUT_S,
            Timeout::Syn => 1..=MAX_SYN_TIMEOUT,
            Timeout::UdpUnreplied => 1..=MAX_UDP_UNREPLIED_TIMEOUT,
        }
    }

    /// `v` if it is in range, else the command line's message.
    pub fn check(self, v: u32) -> Result<u32, String> {
        let range = self.range();
        if range.contains(&v) {
            return Ok(v);
        }
        let flag = self.name().replace('_', "-");
        let max = range.end();
        Err(match self {
            Timeout::Tcp | Timeout::Tcpfin | Timeout::Udp => format!(
                "--{flag} {v}: a timeout is 1 to {max} seconds (the kernel keeps no entry longer)"
            ),
            Timeout::Syn => format!("--{flag} {v}: the handshake timeout is 1 to {max} seconds"),
            Timeout::UdpUnreplied => {
                format!("--{flag} {v}: the unreplied UDP timeout is 1 to {max} seconds")
            }
        })
    }
}

impl Timeouts {
    pub fn new(
        tcp: Option<u32>,
        tcpfin: Option<u32>,
        udp: Option<u32>,
        syn: Option<u32>,
    ) -> Result<Timeouts, String> {
        let mut t = Timeouts::default();
        for (which, v) in [
            (Timeout::Tcp, tcp),
            (Timeout::Tcpfin, tcpfin),
            (Timeout::Udp, udp),
            (Timeout::Syn, syn),
        ] {
            t.set(which, v.map(|v| which.check(v)).transpose()?);
        }
        Ok(t)
    }

    /// The same with the unreplied UDP timeout (`--udp-unreplied`).
    pub fn with_udp_unreplied(mut self, v: Option<u32>) -> Result<Timeouts, String> {
        let which = Timeout::UdpUnreplied;
        self.set(which, v.map(|v| which.check(v)).transpose()?);
        Ok(self)
    }

    pub fn get(&self, which: Timeout) -> Option<u32> {
        match which {
            Timeout::Tcp => self.tcp,
            Timeout::Tcpfin => self.tcpfin,
            Timeout::Udp => self.udp,
            Timeout::Syn => self.syn,
            Timeout::UdpUnreplied => self.udp_unreplied,
        }
    }

    /// Sets one timeout, unchecked (the caller checked it against
    /// `which.range()`).
    pub fn set(&mut self, which: Timeout, v: Option<u32>) {
        *match which {
            Timeout::Tcp => &mut self.tcp,
            Timeout::Tcpfin => &mut self.tcpfin,
            Timeout::Udp => &mut self.udp,
            Timeout::Syn => &mut self.syn,
            Timeout::UdpUnreplied => &mut self.udp_unreplied,
        } = v;
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_none()
            && self.tcpfin.is_none()
            && self.udp.is_none()
            && self.syn.is_none()
            && self.udp_unreplied.is_none()
    }
}

/// How `lbctl list` shows the configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Counters since each VIP and backend was added.
    pub stats: bool,
    /// Rates over this interval.
    pub rate: Option<Duration>,
    pub json: bool,
}

impl ListOptions {
    /// `interval_s`: seconds for `--rate` (0.1 to 60).
    pub fn new(
        stats: bool,
        rate: bool,
        interval_s: f64,
        json: bool,
    ) -> Result<ListOptions, String> {
        if !(0.1..=60.0).contains(&interval_s) {
            return Err(format!(
                "--interval {interval_s}: the rate interval is 0.1 to 60 seconds"
            ));
        }
        Ok(ListOptions {
            stats,
            rate: rate.then(|| Duration::from_secs_f64(interval_s)),
            json,
        })
    }
}

/// Which flows `lbctl conns` shows; None: any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Flows to this address and one of these ports.
    pub vip: Option<VipAddr>,
    /// Flows to this backend; port 0: any of its ports.
    pub backend: Option<SocketAddr>,
    pub proto: Option<Proto>,
}

impl FlowFilter {
    pub fn matches(&self, proto: Proto, vip: SocketAddr, backend: SocketAddr) -> bool {
        self.proto.is_none_or(|p| p == proto)
            && self
                .vip
                .is_none_or(|v| v.addr.ip() == vip.ip() && v.ports.contains(vip.port()))
            && self.backend.is_none_or(|b| {
                b.ip() == backend.ip() && (b.port() == 0 || b.port() == backend.port())
            })
    }
}

/// A flow `lbctl explain` is asked about: client to VIP over a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowQuery {
    pub client: SocketAddr,
    pub service: Service,
}

impl FlowQuery {
    pub fn new(client: SocketAddr, vip: SocketAddr, proto: Proto) -> Result<FlowQuery, String> {
        if client.is_ipv4() != vip.is_ipv4() {
            return Err(format!(
                "client {client} and VIP {vip} are of different address families"
            ));
        }
        Ok(FlowQuery {
            client,
            service: Service { addr: vip, proto },
        })
    }
}

/// What `lbctl attach` is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachOptions {
    pub iface: String,
    pub mode: XdpMode,
    /// Stay in front; Ctrl-C detaches.
    pub foreground: bool,
    /// Upgrade the running program in place.
    pub replace: bool,
    pub hash_seed: Option<u32>,
    pub flow_cache_size: Option<u32>,
}

/// What health checks last said of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No checks run for it (its VIP has none), or none has finished yet.
    Unchecked,
    Up,
    /// `fall` checks in a row failed: no new flows (out of the Maglev
    /// table); its live flows go on.
    Down,
}

names!(Health {
    Unchecked => "unchecked",
    Up => "up",
    Down => "down",
});

/// What a health check does, per backend, from the balancer's namespace:
/// to the backend's address, or for dsr and tunnel VIPs through the VIP
/// (`service::health::through_vip`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP/1.1 GET (over TLS: HTTPS) answers as `HttpCheck` expects.
    Http(HttpCheck),
    /// A datagram `send` is answered, with a reply containing `expect` if
    /// that is not empty.
    Udp { send: String, expect: String },
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http(h) if h.tls.is_some() => "https",
            CheckKind::Http(_) => "http",
            CheckKind::Udp { .. } => "udp",
        }
    }
}

/// `GET path` over HTTP/1.1 (`Connection: close`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String,
    /// The Host header; None: the backend's address and port.
    pub host: Option<String>,
    /// The statuses that pass, as inclusive ranges.
    pub expect: Vec<(u16, u16)>,
    /// Text the body must contain (within its first `MAX_CHECK_BODY` bytes).
    pub body: Option<String>,
    /// Some: over TLS (HTTPS).
    pub tls: Option<TlsCheck>,
}

/// How an HTTPS check speaks TLS.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsCheck {
    /// The server name sent (SNI) and, with `verify`, checked against the
    /// certificate; None: the Host header's name if it is a name.
    pub sni: Option<String>,
    /// Check the certificate chain and name (else any certificate does).
    pub verify: bool,
    /// Trust this PEM file's certificates instead of the host's CA bundle.
    pub ca: Option<std::path::PathBuf>,
}

/// How much of an HTTP check's answer is read, at most.
pub const MAX_CHECK_BODY: usize = 64 * 1024;

impl HttpCheck {
    /// `GET path` over plain HTTP expecting 200, the Host the backend's
    /// address: what a file's `kind = "http"` alone asks for.
    pub fn get(path: &str) -> HttpCheck {
        HttpCheck {
            path: path.into(),
            host: None,
            expect: vec![(200, 200)],
            body: None,
            tls: None,
        }
    }

    /// Whether `status` passes.
    pub fn accepts(&self, status: u16) -> bool {
        self.expect
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// `200`, `200-299`: one range of HTTP statuses as a file writes it.
pub fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "{s:?} is not an HTTP status or range ({}-{}, e.g. 200 or \"200-399\")",
            HTTP_STATUSES.start(),
            HTTP_STATUSES.end()
        )
    };
    let one = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| HTTP_STATUSES.contains(n))
            .ok_or_else(bad)
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => (one(s)?, one(s)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// The form `parse_status_range` reads.
pub fn format_status_range((lo, hi): (u16, u16)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// The health a VIP's new backends start with when it has checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartHealth {
    /// Down (no flows) until `rise` checks in a row pass: a dead backend
    /// added never gets a flow.
    #[default]
    Down,
    /// Unchecked (takes flows) until its first result.
    Up,
}

names!(StartHealth, parse "health start" {
    Down => "down",
    Up => "up",
});

/// A VIP's health checks: every backend checked once per `interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring a down backend back.
    pub rise: u32,
    /// Failures in a row that take a backend out.
    pub fall: u32,
    /// Checked on this port instead of the backend's own.
    pub port: Option<u16>,
    /// What a backend added to the VIP starts as.
    pub start: StartHealth,
}

/// Bounds of a health check's numbers.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
pub const MAX_RISE_FALL: u32 = 100;
/// Checks in a row for `rise` and `fall`.
pub const RISE_FALL: RangeInclusive<u32> = 1..=MAX_RISE_FALL;
/// What an HTTP check may expect.
pub const HTTP_STATUSES: RangeInclusive<u16> = 100..=599;

impl HealthCheck {
    /// Checks the numbers as a whole; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_CHECK_INTERVAL..=MAX_CHECK_INTERVAL).contains(&self.interval) {
            return Err(format!(
                "interval {:?} is out of range (50ms to 1h)",
                self.interval
            ));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err(format!(
                "timeout {:?} must be above 0 and at most the interval ({:?})",
                self.timeout, self.interval
            ));
        }
        for (name, v) in [("rise", self.rise), ("fall", self.fall)] {
            if !RISE_FALL.contains(&v) {
                return Err(format!("{name} {v} is out of range (1-{MAX_RISE_FALL})"));
            }
        }
        if self.port == Some(0) {
            return Err("port 0 is not a port (use 1-65535)".into());
        }
        if let CheckKind::Http(h) = &self.kind {
            let path = &h.path;
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "path {path:?} must start with / and hold no spaces"
                ));
            }
            if h.expect.is_empty() {
                return Err("expect names no status".into());
            }
            for &(lo, hi) in &h.expect {
                if !(HTTP_STATUSES.contains(&lo) && HTTP_STATUSES.contains(&hi) && lo <= hi) {
                    let r = format_status_range((lo, hi));
                    return Err(format!("expect {r} is not an HTTP status (100-599)"));
                }
            }
            let token =
                |v: &str| v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control());
            if let Some(host) = &h.host {
                if token(host) {
                    return Err(format!(
                        "host {host:?} must be a name or address without spaces"
                    ));
                }
            }
            if let Some(body) = &h.body {
                if body.is_empty() || body.len() > MAX_CHECK_BODY {
                    return Err(format!("body must hold 1 to {MAX_CHECK_BODY} bytes"));
                }
            }
            if let Some(sni) = h.tls.as_ref().and_then(|t| t.sni.as_ref()) {
                if token(sni) || sni.parse::<IpAddr>().is_ok() {
                    return Err(format!("sni {sni:?} must be a DNS name"));
                }
            }
        }
        if let CheckKind::Udp { send, .. } = &self.kind {
            if send.is_empty() || send.len() > 1024 {
                return Err("send must hold 1 to 1024 bytes".into());
            }
        }
        Ok(())
    }
}

/// `500ms`, `2s`, `1.5s`, `1m`: a duration as the configuration file
/// writes it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 500ms, 2s, 1m)");
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .ok_or_else(bad)?;
    let n: f64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return Err(bad()),
    };
    if !ms.is_finite() || ms.fract() != 0.0 || ms > 1e9 {
        return Err(format!(
            "{s:?}: a duration is a whole number of milliseconds"
        ));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// The form `parse_duration` reads: `500ms`, `2s`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// One VIP as a configuration file states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredVip {
    pub spec: VipSpec,
    /// None: no checks, its backends are unchecked.
    pub health: Option<HealthCheck>,
    /// Address and weight, each address once.
    pub backends: Vec<(SocketAddr, u32)>,
    /// Backends whose checks differ from the VIP's (`[vip.backend.health]`
    /// merged over `[vip.health]`; None: not checked).
    pub backend_health: Vec<(SocketAddr, Option<HealthCheck>)>,
    /// The size of the table in use where lbctl sizes it (`lbctl save`
    /// shows it as a comment); never read from a file.
    pub table_in_use: Option<u32>,
}

impl DesiredVip {
    /// The checks of one backend: its own if the file gives it some, else
    /// the VIP's.
    pub fn check_of(&self, backend: SocketAddr) -> Option<&HealthCheck> {
        match self.backend_health.iter().find(|(a, _)| *a == backend) {
            Some((_, own)) => own.as_ref(),
            None => self.health.as_ref(),
        }
    }
}

/// Everything lbctl configures, as a file states it (`config_file`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Attached by `lbctl run`; `apply` requires them attached.
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub hash_seed: Option<u32>,
    pub flow_cache_size: Option<u32>,
    /// Left as they are where None.
    pub timeouts: Timeouts,
    pub vips: Vec<DesiredVip>,
}

impl Desired {
    pub fn vip(&self, service: &Service) -> Option<&DesiredVip> {
        self.vips.iter().find(|v| v.spec.service == *service)
    }
}

/// The largest `--max-new-flows` (`LB_MAX_NEW_FLOWS_LIMIT`).
pub const MAX_NEW_FLOWS_LIMIT: u32 = crate::abi::LB_MAX_NEW_FLOWS_LIMIT;

/// A limit on new flows a second as the operator writes it: a whole number
/// up to `MAX_NEW_FLOWS_LIMIT`; 0 is no limit (as ipvsadm's thresholds).
pub fn max_new_flows(n: u64) -> Result<Option<u32>, String> {
    match n {
        0 => Ok(None),
        n if n <= u64::from(MAX_NEW_FLOWS_LIMIT) => Ok(Some(n as u32)),
        n => Err(format!(
            "max-new-flows {n}: at most {MAX_NEW_FLOWS_LIMIT} a second (0: no limit)"
        )),
    }
}

/// `max_new_flows` of a command-line value.
pub fn parse_max_new_flows(s: &str) -> Result<Option<u32>, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?}: want a whole number of new flows a second (0: no limit)"))?;
    max_new_flows(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("198.18.100.1:80").unwrap().to_string(),
            "198.18.100.1:80"
        );
        assert_eq!(
            parse_endpoint("[2001:db8::1]:443").unwrap().to_string(),
            "[2001:db8::1]:443"
        );
        for (input, says) in [
            ("198.18.100.1", "port is needed"),
            ("2001:db8::1", "[2001:db8::1]:80"),
            ("2001:db8::1:80", "brackets"),
            ("2001:db8::x:80", "brackets"),
            ("198.18.100.1:0", "port 0"),
            ("198.18.100.1:99999", "bad port"),
            ("198.18.100.300:80", "not an IP"),
            ("lb.example:80", "not an IP"),
        ] {
            let err = parse_endpoint(input).unwrap_err();
            assert!(err.contains(says), "{input}: {err}");
        }
        assert!(parse_endpoint("").is_err());
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("0"), Ok(0));
        assert_eq!(parse_weight("65535"), Ok(65535));
        assert!(parse_weight("65536").unwrap_err().contains("out of range"));
        assert!(parse_weight("-1").unwrap_err().contains("not a number"));
        assert!(parse_weight("x").is_err());
    }

    #[test]
    fn vips_of_one_port_every_port_or_a_range() {
        let text = |s: &str| parse_vip(s).unwrap().to_string();
        for s in [
            "198.18.100.1:80",
            "198.18.100.1:0",
            "198.18.100.1:8000-8099",
            "[2001:db8::1]:443",
            "[2001:db8::1]:0",
            "[2001:db8::1]:1-1024",
        ] {
            assert_eq!(text(s), s, "round trip");
        }
        let r = parse_vip("198.18.100.1:8000-8099").unwrap();
        assert_eq!(r.addr.port(), 0, "keyed by port 0");
        assert!(r.ports.contains(8000) && r.ports.contains(8099));
        assert!(!r.ports.contains(7999) && !r.ports.contains(8100));
        assert_eq!(parse_vip("198.18.100.1:0").unwrap().ports, Ports::ALL);
        assert_eq!(parse_vip("198.18.100.1:80").unwrap().ports, Ports::one(80));
        for (bad, says) in [
            (
                "198.18.100.1:8099-8000",
                "from a lower port to a higher one",
            ),
            ("198.18.100.1:80-80", "from a lower port to a higher one"),
            ("198.18.100.1:0-80", "bad port \"0\""),
            ("198.18.100.1:80-", "bad port \"\""),
            ("198.18.100.1:80-65536", "bad port \"65536\""),
            (
                "2001:db8::1:80-90",
                "not an IPv4 address (IPv6 in brackets)",
            ),
            ("[2001:db8::zz]:80-90", "is not an IPv6 address"),
            ("198.18.100.1", "a port is needed"),
        ] {
            let e = parse_vip(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let b = |s: &str| parse_backend(s).unwrap().to_string();
        assert_eq!(b("198.18.1.11"), "198.18.1.11:0");
        assert_eq!(b("198.18.1.11:0"), "198.18.1.11:0");
        assert_eq!(b("2001:db8::11"), "[2001:db8::11]:0");
        assert_eq!(b("198.18.1.11:8080"), "198.18.1.11:8080");
        let all: SocketAddr = "198.18.100.1:0".parse().unwrap();
        let one: SocketAddr = "198.18.100.1:80".parse().unwrap();
        let bare: SocketAddr = "198.18.1.11:0".parse().unwrap();
        let port: SocketAddr = "198.18.1.11:80".parse().unwrap();
        assert!(check_backend_port(NatMode::Dnat, all, bare).is_ok());
        assert!(check_backend_port(NatMode::Dsr, all, bare).is_ok());
        assert!(check_backend_port(NatMode::Dnat, all, port).is_err());
        assert!(check_backend_port(NatMode::Dnat, one, bare).is_err());
    }

    #[test]
    fn protocols() {
        assert_eq!("TCP".parse::<Proto>(), Ok(Proto::Tcp));
        assert_eq!("udp".parse::<Proto>(), Ok(Proto::Udp));
        assert!("sctp".parse::<Proto>().is_err());
        assert_eq!(Proto::from_number(17), Some(Proto::Udp));
    }

    #[test]
    fn vip_specs() {
        let svc = |s: &str| Service {
            addr: parse_endpoint(s).unwrap(),
            proto: Proto::Tcp,
        };
        let v4 = svc("198.18.100.1:80");
        let spec = VipSpec::new(v4, NatMode::Dnat, None, None).unwrap();
        assert_eq!(spec.table_size, None, "sized for its backends");
        let snat = Some(parse_ip("198.18.2.1").unwrap());
        assert!(VipSpec::new(v4, NatMode::Dnat, snat, None)
            .unwrap_err()
            .to_string()
            .contains("only applies to --mode fullnat"));
        assert!(VipSpec::new(
            v4,
            NatMode::Fullnat,
            Some(parse_ip("2001:db8::1").unwrap()),
            None
        )
        .unwrap_err()
        .to_string()
        .contains("address family"));
        assert!(VipSpec::new(v4, NatMode::Dnat, None, Some(65536))
            .unwrap_err()
            .to_string()
            .contains("must be a prime"));
        let v6 = svc("[2001:db8::1]:80");
        assert!(VipSpec::new(v6, NatMode::Dnat, None, None).is_ok());
        let snat6 = Some(parse_ip("2001:db8:1::1").unwrap());
        assert_eq!(
            VipSpec::new(v6, NatMode::Fullnat, snat6, None)
                .unwrap()
                .snat,
            snat6
        );
        assert!(VipSpec::new(v6, NatMode::Fullnat, snat, None)
            .unwrap_err()
            .to_string()
            .contains("address family"));
    }

    #[test]
    fn timeouts() {
        assert!(Timeouts::new(None, None, None, None).unwrap().is_empty());
        assert_eq!(
            Timeouts::new(Some(60), None, None, None).unwrap().tcp,
            Some(60)
        );
        assert!(Timeouts::new(None, Some(0), None, None)
            .unwrap_err()
            .contains("--tcpfin 0"));
        assert_eq!(
            Timeouts::new(None, None, None, Some(3)).unwrap().syn,
            Some(3)
        );
        assert!(!Timeouts::new(None, None, None, Some(3)).unwrap().is_empty());
        for bad in [0, MAX_SYN_TIMEOUT + 1] {
            assert!(Timeouts::new(None, None, None, Some(bad))
                .unwrap_err()
                .contains("--syn"));
        }
    }

    #[test]
    fn modes_parse_as_they_print() {
        for m in NatMode::ALL {
            assert_eq!(m.to_string().parse::<NatMode>(), Ok(m));
            // clap's spelling is the same as model's.
            let clap_name = clap::ValueEnum::to_possible_value(&m).unwrap();
            assert_eq!(clap_name.get_name(), m.name());
        }
        assert_eq!(
            "masq".parse::<NatMode>().unwrap_err(),
            "mode \"masq\": use dnat, fullnat, dsr or tunnel"
        );
        assert!(
            "DNAT".parse::<NatMode>().is_err(),
            "the file's values are lower case"
        );
        for m in XdpMode::ALL {
            assert_eq!(m.to_string().parse::<XdpMode>(), Ok(m));
            let clap_name = clap::ValueEnum::to_possible_value(&m).unwrap();
            assert_eq!(clap_name.get_name(), m.name());
        }
        assert!("fast"
            .parse::<XdpMode>()
            .unwrap_err()
            .contains("auto, native or generic"));
        assert_eq!(
            check_snat_applies(NatMode::Dsr),
            Err(SpecError::SnatNotApplicable)
        );
        assert!(check_snat_applies(NatMode::Tunnel).is_ok());
    }

    #[test]
    fn timeout_ranges() {
        for which in Timeout::ALL {
            let range = which.range();
            assert_eq!(*range.start(), 1, "{which:?}");
            assert_eq!(which.check(*range.end()), Ok(*range.end()));
            for bad in [0, range.end() + 1] {
                let e = which.check(bad).unwrap_err();
                let flag = format!("--{} {bad}:", which.name().replace('_', "-"));
                assert!(e.starts_with(&flag), "{e}");
                assert!(e.contains(&format!("1 to {} seconds", range.end())), "{e}");
            }
            let mut t = Timeouts::default();
            t.set(which, Some(5));
            assert_eq!(t.get(which), Some(5));
            assert!(!t.is_empty());
        }
        assert_eq!(*Timeout::Tcp.range().end(), LB_MAX_CT_TIMEOUT_S);
        assert_eq!(*Timeout::Syn.range().end(), MAX_SYN_TIMEOUT);
        let t = Timeouts::new(Some(1), Some(2), Some(3), Some(4))
            .and_then(|t| t.with_udp_unreplied(Some(5)))
            .unwrap();
        let got: Vec<_> = Timeout::ALL.iter().map(|w| t.get(*w)).collect();
        assert_eq!(got, [Some(1), Some(2), Some(3), Some(4), Some(5)]);
        assert!(Timeouts::default()
            .with_udp_unreplied(Some(601))
            .unwrap_err()
            .starts_with("--udp-unreplied 601"));
    }

    #[test]
    fn families() {
        let v4 = parse_endpoint("198.18.100.1:80").unwrap();
        let v6 = parse_endpoint("[2001:db8::1]:80").unwrap();
        assert!(check_same_family(v4, v4).is_ok());
        assert!(check_same_family(v6, v4)
            .unwrap_err()
            .contains("IPv4 but VIP"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "5", "ms", "1h", "0.5ms", "-1s", "1 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for d in [500, 2000, 1500, 60_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn health_checks() {
        let ok = HealthCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 2,
            port: None,
            start: StartHealth::Down,
        };
        assert!(ok.validate().is_ok());
        let with = |f: &dyn Fn(&mut HealthCheck)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(with(&|c| c.timeout = Duration::from_secs(1)).contains("at most the interval"));
        assert!(with(&|c| c.interval = Duration::from_millis(10)).contains("interval"));
        assert!(with(&|c| c.rise = 0).contains("rise 0"));
        assert!(with(&|c| c.fall = 101).contains("fall 101"));
        assert!(with(&|c| c.port = Some(0)).contains("port 0"));
        let http = |f: &dyn Fn(&mut HttpCheck)| {
            let mut h = HttpCheck::get("/");
            f(&mut h);
            CheckKind::Http(h)
        };
        assert!(
            with(&|c| c.kind = http(&|h| h.path = "health".into())).contains("must start with /")
        );
        assert!(with(&|c| c.kind = http(&|h| h.expect = vec![(700, 700)])).contains("HTTP status"));
        assert!(with(&|c| c.kind = http(&|h| h.expect = vec![(300, 200)])).contains("HTTP status"));
        assert!(with(&|c| c.kind = http(&|h| h.host = Some("a b".into()))).contains("host"));
        assert!(with(&|c| c.kind = http(&|h| h.body = Some(String::new()))).contains("body"));
        assert!(with(&|c| c.kind = http(&|h| {
            h.tls = Some(TlsCheck {
                sni: Some("198.18.1.1".into()),
                verify: true,
                ca: None,
            })
        }))
        .contains("DNS name"));
    }

    #[test]
    fn affinities() {
        assert_eq!(Affinity::parse("none", None), Ok(Affinity::None));
        assert_eq!(
            Affinity::parse("client", None),
            Ok(Affinity::Client { prefix6: 128 })
        );
        assert_eq!(
            Affinity::parse("client", Some(64)),
            Ok(Affinity::Client { prefix6: 64 })
        );
        for (name, p, says) in [
            ("client", Some(0), "out of range (1-128)"),
            ("client", Some(129), "out of range (1-128)"),
            ("none", Some(64), "only to affinity client"),
            ("source", None, "use none or client"),
        ] {
            assert!(
                Affinity::parse(name, p).unwrap_err().contains(says),
                "{name} {p:?}"
            );
        }
        assert_eq!(
            Affinity::Client { prefix6: 64 }.to_string(),
            "client (IPv6 /64)"
        );
        assert_eq!(Affinity::Client { prefix6: 128 }.to_string(), "client");
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200"), Ok((200, 200)));
        assert_eq!(parse_status_range("200-399"), Ok((200, 399)));
        for bad in ["2xx", "399-200", "99", "600", "200-", ""] {
            assert!(parse_status_range(bad).is_err(), "{bad}");
        }
        for r in [(200, 200), (200, 299)] {
            assert_eq!(parse_status_range(&format_status_range(r)), Ok(r));
        }
    }
}
