//! Text → `Desired`. The whole file is read and checked before anything is
//! done with it; each problem is one line naming the line of the file and
//! what is wrong there (`parse`: the first; `parse_all`: every one, for
//! `lbctl check`). Unknown keys are errors. The TOML reader stops at the
//! first syntax error or unknown key, so those come one at a time.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::defaults;
use crate::model::{
    check_backend_port, check_same_family, check_snat_applies, max_new_flows, parse_duration,
    parse_ip, parse_status_range, Affinity, CheckKind, Desired, DesiredVip, HealthCheck, HttpCheck,
    NatMode, OnBackendGone, Proto, Service, SpecError, StartHealth, Timeout, TlsCheck, VipSpec,
    XdpMode, AFFINITY_PREFIX6, FLOW_CACHE_SIZES, PORTS, RISE_FALL, WEIGHTS,
};
use crate::prefix::{allowlist, Prefix};

/// What is wrong with a file, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// 1-based; None when the problem has no place (an empty file is fine).
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for FileError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
    xdp_mode: Option<Spanned<String>>,
    hash_seed: Option<Spanned<i64>>,
    flow_cache_size: Option<Spanned<i64>>,
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    vip: Vec<RawVip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp: Option<Spanned<i64>>,
    tcpfin: Option<Spanned<i64>>,
    udp: Option<Spanned<i64>>,
    syn: Option<Spanned<i64>>,
    udp_unreplied: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    address: Spanned<String>,
    proto: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    snat: Option<Spanned<String>>,
    table_size: Option<Spanned<i64>>,
    affinity: Option<Spanned<String>>,
    affinity_prefix6: Option<Spanned<i64>>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    on_backend_gone: Option<Spanned<String>>,
    max_new_flows: Option<Spanned<i64>>,
    health: Option<RawHealth>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

/// A `[vip.health]` table, or a backend's `[vip.backend.health]` (whose
/// fields replace the VIP's: `RawHealth::over`).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    port: Option<Spanned<i64>>,
    start: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    body: Option<Spanned<String>>,
    sni: Option<Spanned<String>>,
    verify: Option<Spanned<bool>>,
    ca: Option<Spanned<String>>,
    send: Option<Spanned<String>>,
    expect: Option<Spanned<toml::Value>>,
}

impl RawHealth {
    /// This backend's table over its VIP's `base`: each field it gives
    /// replaces the VIP's. Naming a `kind` starts that kind afresh: only
    /// the timing fields (interval, timeout, rise, fall, port, start) are
    /// inherited then, not the VIP's kind's own (path, send, ...).
    fn over(&self, base: Option<&RawHealth>) -> RawHealth {
        let Some(base) = base else {
            return self.clone();
        };
        let fresh = self.kind.is_some();
        let b = |field: &Option<Spanned<String>>, own: &Option<Spanned<String>>| {
            own.clone().or_else(|| field.clone())
        };
        let kind_field = |field: &Option<Spanned<String>>, own: &Option<Spanned<String>>| {
            if fresh {
                own.clone()
            } else {
                b(field, own)
            }
        };
        RawHealth {
            kind: b(&base.kind, &self.kind),
            interval: b(&base.interval, &self.interval),
            timeout: b(&base.timeout, &self.timeout),
            rise: self.rise.clone().or_else(|| base.rise.clone()),
            fall: self.fall.clone().or_else(|| base.fall.clone()),
            port: self.port.clone().or_else(|| base.port.clone()),
            start: b(&base.start, &self.start),
            path: kind_field(&base.path, &self.path),
            host: kind_field(&base.host, &self.host),
            body: kind_field(&base.body, &self.body),
            sni: kind_field(&base.sni, &self.sni),
            verify: match fresh {
                true => self.verify.clone(),
                false => self.verify.clone().or_else(|| base.verify.clone()),
            },
            ca: kind_field(&base.ca, &self.ca),
            send: kind_field(&base.send, &self.send),
            expect: match fresh {
                true => self.expect.clone(),
                false => self.expect.clone().or_else(|| base.expect.clone()),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    health: Option<RawHealth>,
}

/// Turns byte offsets into line numbers.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn at(&self, span: Range<usize>) -> Option<usize> {
        let start = span.start.min(self.0.len());
        Some(self.0[..start].matches('\n').count() + 1)
    }

    fn err<T>(&self, span: Range<usize>, message: impl Into<String>) -> Result<T, FileError> {
        Err(FileError {
            line: self.at(span),
            message: message.into(),
        })
    }

    /// An integer field within `range` (model's), or an error naming `name`.
    fn int(
        &self,
        v: &Spanned<i64>,
        name: &str,
        range: RangeInclusive<u32>,
    ) -> Result<u32, FileError> {
        let n = *v.get_ref();
        match u32::try_from(n) {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => self.err(
                v.span(),
                format!(
                    "{name} = {n} is out of range ({}-{})",
                    range.start(),
                    range.end()
                ),
            ),
        }
    }

    /// A string field parsed by `model`, its error placed on its line.
    fn parsed<T: std::str::FromStr<Err = String>>(
        &self,
        v: &Spanned<String>,
    ) -> Result<T, FileError> {
        v.get_ref().parse().or_else(|e| self.err(v.span(), e))
    }
}

/// The problems found so far; parsing goes on past each one, so a file's
/// every problem is found in one pass.
#[derive(Default)]
struct Problems(Vec<FileError>);

impl Problems {
    /// The value, or None with its problem noted.
    fn keep<T>(&mut self, r: Result<T, FileError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }
}

/// Reads a whole configuration file. Nothing is half-read: either every
/// part is valid and the result describes all of it, or the first problem
/// (by line) is returned.
pub fn parse(text: &str) -> Result<Desired, FileError> {
    match parse_all(text) {
        Ok(parsed) => Ok(parsed.desired),
        Err(mut problems) => Err(problems.swap_remove(0)),
    }
}

/// A file read without a problem, with where its parts stand (for the
/// checks `lbctl check` makes beyond the file's own rules).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub desired: Desired,
    /// The line of each VIP's address, in `desired.vips`' order.
    pub vip_lines: Vec<usize>,
    /// The line of each interface, in `desired.interfaces`' order.
    pub interface_lines: Vec<usize>,
}

/// `parse`, with every problem of the file, in line order.
pub fn parse_all(text: &str) -> Result<Parsed, Vec<FileError>> {
    let lines = Lines(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        vec![FileError {
            line: e.span().and_then(|s| lines.at(s)),
            message: e.message().trim().replace('\n', " "),
        }]
    })?;
    let mut p = Problems::default();
    let desired = read_file(&lines, &raw, &mut p);
    if p.0.is_empty() {
        let line_of = |span: Range<usize>| lines.at(span).unwrap_or(1);
        return Ok(Parsed {
            vip_lines: raw.vip.iter().map(|v| line_of(v.address.span())).collect(),
            interface_lines: raw.interfaces.iter().map(|i| line_of(i.span())).collect(),
            desired,
        });
    }
    p.0.sort_by_key(|e| e.line);
    Err(p.0)
}

fn read_file(lines: &Lines, raw: &RawFile, p: &mut Problems) -> Desired {
    let mut desired = Desired::default();
    for name in &raw.interfaces {
        let n = name.get_ref();
        if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
            p.keep(lines.err::<()>(name.span(), format!("{n:?} is not an interface name")));
        } else if desired.interfaces.contains(n) {
            p.keep(lines.err::<()>(name.span(), format!("interface {n} is listed twice")));
        } else {
            desired.interfaces.push(n.clone());
        }
    }
    if let Some(m) = &raw.xdp_mode {
        desired.xdp_mode = p.keep(lines.parsed::<XdpMode>(m));
    }
    if let Some(seed) = &raw.hash_seed {
        desired.hash_seed = p.keep(lines.int(seed, "hash_seed", 0..=u32::MAX));
    }
    if let Some(size) = &raw.flow_cache_size {
        desired.flow_cache_size = p.keep(lines.int(size, "flow_cache_size", FLOW_CACHE_SIZES));
    }
    if let Some(t) = &raw.timeouts {
        for (which, v) in [
            (Timeout::Tcp, &t.tcp),
            (Timeout::Tcpfin, &t.tcpfin),
            (Timeout::Udp, &t.udp),
            (Timeout::Syn, &t.syn),
            (Timeout::UdpUnreplied, &t.udp_unreplied),
        ] {
            let v = v
                .as_ref()
                .and_then(|v| p.keep(lines.int(v, which.name(), which.range())));
            desired.timeouts.set(which, v);
        }
    }
    let mut seen: Vec<Service> = Vec::new();
    for v in &raw.vip {
        // Told apart by address and protocol alone, whatever else is
        // wrong with either of the two.
        if let Some(service) = service_of(v) {
            if seen.contains(&service) {
                p.keep(lines.err::<()>(v.address.span(), format!("VIP {service} is listed twice")));
                continue;
            }
            seen.push(service);
        }
        if let Some(vip) = parse_vip(lines, v, p) {
            desired.vips.push(vip);
        }
    }
    desired
}

/// The VIP's address and protocol, if both can be read.
fn service_of(v: &RawVip) -> Option<Service> {
    let proto = match &v.proto {
        Some(p) => p.get_ref().parse().ok()?,
        None => Proto::Tcp,
    };
    Some(Service {
        addr: crate::model::parse_vip(v.address.get_ref()).ok()?.addr,
        proto,
    })
}

/// A `[[vip]]` table, or None with its problems noted (every one that can
/// be told apart: a VIP whose address is unreadable is not read further;
/// otherwise its settings, health table and each backend are checked).
fn parse_vip(lines: &Lines, v: &RawVip, p: &mut Problems) -> Option<DesiredVip> {
    let vip_addr = p.keep(
        crate::model::parse_vip(v.address.get_ref()).or_else(|e| lines.err(v.address.span(), e)),
    )?;
    let addr = vip_addr.addr;
    let before = p.0.len();
    let proto = match &v.proto {
        Some(pr) => p
            .keep(
                pr.get_ref()
                    .parse::<Proto>()
                    .or_else(|e| lines.err(pr.span(), e)),
            )
            .unwrap_or(Proto::Tcp),
        None => Proto::Tcp,
    };
    let service = Service { addr, proto };
    let mode = match &v.mode {
        Some(m) => p.keep(lines.parsed::<NatMode>(m)),
        None => Some(NatMode::Dnat),
    };
    let snat = v.snat.as_ref().and_then(|s| {
        // Before the address is read: a dnat VIP's snat is wrong
        // whatever it holds.
        if let Some(mode) = mode {
            p.keep(check_snat_applies(mode).or_else(|e| lines.err(s.span(), file_wording(&e))))?;
        }
        p.keep(parse_ip(s.get_ref()).or_else(|e| lines.err(s.span(), e)))
    });
    let table_size = v
        .table_size
        .as_ref()
        .and_then(|t| p.keep(lines.int(t, "table_size", 0..=u32::MAX)));
    let affinity = {
        let name = v.affinity.as_ref().map_or("none", |a| a.get_ref().as_str());
        let prefix6 = match &v.affinity_prefix6 {
            Some(n) => p
                .keep(lines.int(n, "affinity_prefix6", AFFINITY_PREFIX6))
                .map(Some),
            None => Some(None),
        };
        prefix6.and_then(|prefix6| {
            p.keep(Affinity::parse(name, prefix6).or_else(|e| {
                let span = match (&v.affinity, &v.affinity_prefix6) {
                    (Some(a), _) if e.starts_with("affinity \"") => a.span(),
                    (_, Some(n)) => n.span(),
                    (Some(a), None) => a.span(),
                    (None, None) => v.address.span(),
                };
                lines.err(span, e.replace("affinity prefix6", "affinity_prefix6"))
            }))
        })
    };
    let allow = v.allow.as_ref().map_or(Some(Vec::new()), |list| {
        let mut prefixes = Vec::new();
        for item in list.get_ref() {
            prefixes.push(
                p.keep(
                    item.get_ref()
                        .parse::<Prefix>()
                        .or_else(|e| lines.err(item.span(), e)),
                )?,
            );
        }
        p.keep(allowlist(addr, &prefixes).or_else(|e| lines.err(list.span(), e)))
    });
    let on_backend_gone = match &v.on_backend_gone {
        Some(g) => p.keep(
            g.get_ref()
                .parse::<OnBackendGone>()
                .or_else(|e| lines.err(g.span(), e.replace("on-backend-gone", "on_backend_gone"))),
        ),
        None => Some(OnBackendGone::Keep),
    };
    let max_new_flows = match &v.max_new_flows {
        Some(n) => p.keep(
            u64::try_from(*n.get_ref())
                .map_err(|_| format!("max_new_flows {}: want 0 or more", n.get_ref()))
                .and_then(max_new_flows)
                .map_err(|e| e.replace("max-new-flows", "max_new_flows"))
                .or_else(|e| lines.err(n.span(), e)),
        ),
        None => Some(None),
    };
    let spec = mode.and_then(|mode| {
        p.keep(VipSpec::new(service, mode, snat, table_size).or_else(|e| {
            let span = match (&e, &v.table_size) {
                (SpecError::TableSize(_), Some(t)) => t.span(),
                _ => v.address.span(),
            };
            lines.err(span, file_wording(&e))
        }))
    });
    let health = v
        .health
        .as_ref()
        .and_then(|h| p.keep(parse_health(lines, h, v.address.span())))
        .flatten();
    // A port-less VIP's backends have no port of their own to be checked on.
    let port_for_checks = |check: &Option<HealthCheck>, span| -> Result<(), FileError> {
        match check {
            Some(c) if addr.port() == 0 && c.port.is_none() => lines.err(
                span,
                format!(
                    "VIP {} takes many ports and its backends have none: its health checks need a port (port = N)",
                    vip_addr
                ),
            ),
            _ => Ok(()),
        }
    };
    if let Some(h) = &v.health {
        let span = h.kind.as_ref().map_or(v.address.span(), |k| k.span());
        p.keep(port_for_checks(&health, span));
    }
    let mut backends: Vec<(SocketAddr, u32)> = Vec::new();
    let mut backend_health = Vec::new();
    for b in &v.backend {
        if let Some(backend) = parse_backend(lines, b, service, mode, &backends, p) {
            backends.push(backend);
            if let Some(own) = &b.health {
                let merged = own.over(v.health.as_ref());
                if let Some(check) = p.keep(parse_health(lines, &merged, b.address.span())) {
                    p.keep(port_for_checks(&check, b.address.span()));
                    if check != health {
                        backend_health.push((backend.0, check));
                    }
                }
            }
        }
    }
    if p.0.len() > before {
        return None;
    }
    Some(DesiredVip {
        table_in_use: None,
        spec: VipSpec {
            allow: allow?,
            on_backend_gone: on_backend_gone?,
            max_new_flows: max_new_flows?,
            ..spec?.with_affinity(affinity?).with_ports(vip_addr.ports)
        },
        health,
        backends,
        backend_health,
    })
}

/// A `[[vip.backend]]` table of VIP `service` (whose mode, if readable, is
/// `mode`), or None with its problem noted.
fn parse_backend(
    lines: &Lines,
    b: &RawBackend,
    service: Service,
    mode: Option<NatMode>,
    earlier: &[(SocketAddr, u32)],
    p: &mut Problems,
) -> Option<(SocketAddr, u32)> {
    let at = |e: String| FileError {
        line: lines.at(b.address.span()),
        message: e,
    };
    let addr = p.keep(crate::model::parse_backend(b.address.get_ref()).map_err(at))?;
    p.keep(check_same_family(service.addr, addr).map_err(at))?;
    if let Some(mode) = mode {
        p.keep(check_backend_port(mode, service.addr, addr).map_err(at))?;
    }
    let weight = match &b.weight {
        Some(w) => p.keep(lines.int(w, "weight", WEIGHTS))?,
        None => 1,
    };
    if earlier.iter().any(|(a, _)| *a == addr) {
        return p.keep(Err(at(format!(
            "backend {addr} is listed twice in VIP {service}"
        ))));
    }
    Some((addr, weight))
}

/// A `[vip.health]` table (or a backend's, merged over it); `kind =
/// "none"` is no checks (None). `at`: where to point when `kind` is
/// missing.
fn parse_health(
    lines: &Lines,
    h: &RawHealth,
    at: Range<usize>,
) -> Result<Option<HealthCheck>, FileError> {
    let duration = |v: &Option<Spanned<String>>, default| match v {
        Some(d) => parse_duration(d.get_ref()).or_else(|e| lines.err(d.span(), e)),
        None => Ok(default),
    };
    let misplaced = |v: Option<Range<usize>>, what: &str, kinds: &str| match v {
        Some(span) => lines.err(span, format!("{what} only applies to kind = {kinds}")),
        None => Ok(()),
    };
    let Some(kind_raw) = &h.kind else {
        return lines.err(
            at,
            "a health table needs kind = \"tcp\", \"http\", \"https\", \"udp\" or \"none\"",
        );
    };
    let kind_name = kind_raw.get_ref().as_str();
    let http = matches!(kind_name, "http" | "https");
    if !http {
        misplaced(
            h.path.as_ref().map(Spanned::span),
            "path",
            "\"http\" or \"https\"",
        )?;
        misplaced(
            h.host.as_ref().map(Spanned::span),
            "host",
            "\"http\" or \"https\"",
        )?;
        misplaced(
            h.body.as_ref().map(Spanned::span),
            "body",
            "\"http\" or \"https\"",
        )?;
    }
    if kind_name != "https" {
        misplaced(h.sni.as_ref().map(Spanned::span), "sni", "\"https\"")?;
        misplaced(h.verify.as_ref().map(Spanned::span), "verify", "\"https\"")?;
        misplaced(h.ca.as_ref().map(Spanned::span), "ca", "\"https\"")?;
    }
    if kind_name != "udp" {
        misplaced(h.send.as_ref().map(Spanned::span), "send", "\"udp\"")?;
    }
    if !(http || kind_name == "udp") {
        misplaced(
            h.expect.as_ref().map(Spanned::span),
            "expect",
            "\"http\", \"https\" or \"udp\"",
        )?;
    }
    let text = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.get_ref().clone());
    let kind = match kind_name {
        "none" => return Ok(None),
        "tcp" => CheckKind::Tcp,
        "http" | "https" => {
            let expect = match &h.expect {
                Some(e) => statuses(lines, e)?,
                None => vec![(defaults::HTTP_EXPECT, defaults::HTTP_EXPECT)],
            };
            let tls = (kind_name == "https").then(|| TlsCheck {
                sni: text(&h.sni),
                verify: h.verify.as_ref().is_some_and(|v| *v.get_ref()),
                ca: text(&h.ca).map(PathBuf::from),
            });
            if let (Some(ca), Some(tls)) = (&h.ca, &tls) {
                if !tls.verify {
                    return lines.err(ca.span(), "ca applies with verify = true");
                }
            }
            CheckKind::Http(HttpCheck {
                path: text(&h.path).unwrap_or_else(|| defaults::HTTP_PATH.to_string()),
                host: text(&h.host),
                expect,
                body: text(&h.body),
                tls,
            })
        }
        "udp" => {
            let send = h.send.as_ref().map_or_else(
                || {
                    lines.err(
                        kind_raw.span(),
                        "kind = \"udp\" needs send = \"...\" (the datagram to send)",
                    )
                },
                |s| Ok(s.get_ref().clone()),
            )?;
            let expect = match &h.expect {
                Some(e) => match e.get_ref().as_str() {
                    Some(s) => s.to_string(),
                    None => {
                        return lines.err(
                            e.span(),
                            "expect: the text a reply must contain, e.g. expect = \"pong\"",
                        )
                    }
                },
                None => String::new(),
            };
            CheckKind::Udp { send, expect }
        }
        other => {
            return lines.err(
                kind_raw.span(),
                format!("health kind {other:?}: use tcp, http, https, udp or none"),
            )
        }
    };
    let check = HealthCheck {
        kind,
        interval: duration(&h.interval, defaults::INTERVAL)?,
        timeout: duration(&h.timeout, defaults::TIMEOUT)?,
        rise: h
            .rise
            .as_ref()
            .map_or(Ok(defaults::RISE), |r| lines.int(r, "rise", RISE_FALL))?,
        fall: h
            .fall
            .as_ref()
            .map_or(Ok(defaults::FALL), |f| lines.int(f, "fall", RISE_FALL))?,
        port: h
            .port
            .as_ref()
            .map(|p| lines.int(p, "port", PORTS).map(|p| p as u16))
            .transpose()?,
        start: match &h.start {
            Some(s) => lines.parsed::<StartHealth>(s)?,
            None => StartHealth::default(),
        },
    };
    // Whatever is wrong is named by the message; the line is the field's
    // when one is named, else the kind's.
    check.validate().or_else(|e| {
        let field = |name: &str| e.starts_with(name);
        let span = match h {
            RawHealth {
                timeout: Some(t), ..
            } if field("timeout") => t.span(),
            RawHealth {
                interval: Some(i), ..
            } if field("interval") => i.span(),
            RawHealth { path: Some(v), .. } if field("path") => v.span(),
            RawHealth { host: Some(v), .. } if field("host") => v.span(),
            RawHealth { body: Some(v), .. } if field("body") => v.span(),
            RawHealth { sni: Some(v), .. } if field("sni") => v.span(),
            RawHealth {
                expect: Some(v), ..
            } if field("expect") => v.span(),
            _ => kind_raw.span(),
        };
        lines.err(span, e)
    })?;
    Ok(Some(check))
}

/// An HTTP check's `expect`: a status, a range ("200-399"), or a list of
/// those.
fn statuses(lines: &Lines, e: &Spanned<toml::Value>) -> Result<Vec<(u16, u16)>, FileError> {
    let one = |v: &toml::Value| {
        match v {
        toml::Value::Integer(n) => parse_status_range(&n.to_string()),
        toml::Value::String(s) => parse_status_range(s),
        _ => Err("expect: an HTTP status, a range or a list of them, e.g. expect = 200, \"200-399\" or [200, 301]".to_string()),
    }
    };
    let out = match e.get_ref() {
        toml::Value::Array(items) if !items.is_empty() => items.iter().map(one).collect(),
        toml::Value::Array(_) => Err("expect = [] names no status".to_string()),
        v => one(v).map(|r| vec![r]),
    };
    out.or_else(|m| lines.err(e.span(), format!("expect: {m}")))
}

/// A `SpecError` as a file states it: keys, not flags.
fn file_wording(e: &SpecError) -> String {
    match e {
        SpecError::SnatNotApplicable => {
            "snat only applies to mode = \"fullnat\" and mode = \"tunnel\"".into()
        }
        SpecError::SnatFamily(ip) => format!("snat {ip} must have the VIP's address family"),
        SpecError::TableSize(e) => e.clone(),
    }
}
