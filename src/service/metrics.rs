//! `GET /metrics`: Prometheus text exposition (format 0.0.4, through the
//! prometheus-client crate). Every value but the health-check latency is
//! read from the balancer at the moment of the scrape, through the same
//! `Snapshot` that `lbctl list --stats --json` prints, so the two agree.
//! The open flows are the exception: counted in the background (below).
//! The responder is minimal HTTP/1.1 on a std TcpListener: GET /metrics
//! only, one request per connection, read-only, a thread per connection (at
//! most 256 at once) so idle and slow clients delay no scrape; a request
//! head over 8 KiB gets 431, one not sent within 10 s 408, one that is not
//! HTTP 400. (A server crate would bring an async runtime or a thread pool
//! of its own for one read-only path; this is the part of one lbctl needs.)
//!
//! Names: `lbctl_vip_{packets,bytes}_total{vip,proto,direction}` (direction:
//! `to_backends`, `to_clients`), `lbctl_vip_new_flows_total{vip,proto}`,
//! `lbctl_backend_{packets,bytes}_total{vip,backend,proto,direction}`,
//! `lbctl_backend_new_flows_total{vip,backend,proto}`,
//! `lbctl_vip_denied_flows_total{vip,proto}` (its source allowlist),
//! `lbctl_vip_limited_flows_total{vip,proto}` and `lbctl_vip_max_new_flows`
//! (its limit on new flows a second; only VIPs with one),
//! `lbctl_vip_expired_flows_total{vip,proto}` (entries `--on-backend-gone`
//! removed; only VIPs whose policy removes them),
//! `lbctl_backend_weight`, `lbctl_backend_up` (1 up, 0 down; only for
//! checked backends), `lbctl_backend_active_flows` (from `lbctl run`'s
//! census of the conntrack table, `host::census`: a scrape costs the same
//! at any table size) with `lbctl_active_flows_counted_timestamp_seconds`
//! and `lbctl_active_flows_count_duration_seconds`,
//! `lbctl_health_check_duration_seconds` (histogram),
//! `lbctl_verdicts_total{reason}` (reason: the C enum name without `LB_`,
//! lower case), `lbctl_flow_cache_{hits,misses,stores}_total`,
//! `lbctl_partial_checksums_completed_total`, `lbctl_conntrack_table_full_total`,
//! `lbctl_flood_stateless_packets_total`, `lbctl_tcp_unverified_closes_total`;
//! `lbctl_backend_health{...,state}` (1 for the backend's state of up, down,
//! unchecked, 0 for the others);
//! `lbctl_conntrack_entries`, `lbctl_conntrack_max` (the namespace's table);
//! `lbctl_vip_route_announced{vip}`, `lbctl_node_drained`;
//! `lbctl_reloads_total{outcome}`, `lbctl_last_reload_timestamp_seconds{outcome}`;
//! `lbctl_build_info{version}`;
//! where `lbctl run` watches conntrackd (`--conntrackd`, or once one
//! answers at its default socket): `lbctl_replication_{up,connected,entries}`,
//! `lbctl_replication_peer_writes_total{op}`,
//! `lbctl_replication_{peer_write_failures,lost_messages,send_errors}_total`,
//! `lbctl_replication_{sent,received}_{bytes,messages}_total`,
//! `lbctl_replication_last_{sent,received}_timestamp_seconds`.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::datapath::balancer::Balancer;
use crate::datapath::counters::Counters;
use crate::datapath::maps::Maps;
use crate::host::census;
use crate::host::conntrackd::WRITE_OPS;
use crate::host::drain;
use crate::host::routes as host_routes;
use crate::model::{Health, Service};
use crate::snapshot::{ActiveFlows, BackendView, Snapshot, VipView};

use super::census::Latest;

use super::replication::{Replication, Watch};

type Labels = Vec<(&'static str, String)>;

/// What the service keeps between scrapes: the health checks' latency and
/// the reloads.
#[derive(Clone)]
pub struct Metrics {
    latency: Family<Labels, Histogram>,
    reloads: Family<Labels, Counter>,
    last_reload: Family<Labels, Gauge<f64, AtomicU64>>,
    /// conntrackd's sync, where `lbctl run` watches it.
    replication: Option<Watch>,
    /// The open flows per backend as `lbctl run` last counted them
    /// (`census::Census`); until the first count, a scrape counts itself.
    census: Option<Latest>,
}

/// A reload's outcome, the `outcome` label.
const OUTCOMES: [&str; 2] = ["success", "failure"];

impl Default for Metrics {
    fn default() -> Metrics {
        let m = Metrics {
            // 0.25 ms to about 1 s.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00025, 2.0, 13))
            }),
            reloads: Family::default(),
            last_reload: Family::default(),
            replication: None,
            census: None,
        };
        // Both outcomes from the start, so `increase()` sees the first one.
        for outcome in OUTCOMES {
            let _ = m.reloads.get_or_create(&outcome_label(outcome));
        }
        m
    }
}

fn outcome_label(outcome: &str) -> Labels {
    vec![("outcome", outcome.to_string())]
}

fn vip_labels(s: &Service) -> Labels {
    vec![
        ("vip", s.addr.to_string()),
        ("proto", s.proto.name().into()),
    ]
}

fn backend_labels(s: &Service, backend: SocketAddr) -> Labels {
    vec![
        ("vip", s.addr.to_string()),
        ("backend", backend.to_string()),
        ("proto", s.proto.name().into()),
    ]
}

impl Metrics {
    pub fn observe_check(&self, service: &Service, backend: SocketAddr, latency: Duration) {
        self.latency
            .get_or_create(&backend_labels(service, backend))
            .observe(latency.as_secs_f64());
    }

    /// A reload (SIGHUP) done: counted by outcome, and its time.
    pub fn observe_reload(&self, ok: bool) {
        let label = outcome_label(OUTCOMES[!ok as usize]);
        self.reloads.get_or_create(&label).inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_reload.get_or_create(&label).set(now);
    }

    /// Shows conntrackd's sync as `watch` sees it.
    pub fn with_replication(mut self, watch: Watch) -> Metrics {
        self.replication = Some(watch);
        self
    }

    /// Shows the open flows per backend from `latest`'s census.
    pub fn with_census(mut self, latest: Latest) -> Metrics {
        self.census = Some(latest);
        self
    }

    /// The exposition text for this moment.
    pub fn render(&self) -> Result<String> {
        let b = Balancer::require()?;
        let flows = match self.census.as_ref().and_then(Latest::get) {
            Some(c) => ActiveFlows::From(c),
            None => ActiveFlows::CountNow,
        };
        let snap = Snapshot::read(&b.maps, &flows)?;
        let mut registry = Registry::default();
        registry.register(
            "lbctl_health_check_duration_seconds",
            "Time a health check took, successful or not",
            self.latency.clone(),
        );
        registry.register(
            "lbctl_reloads",
            "Reloads of the configuration file (SIGHUP) by outcome",
            self.reloads.clone(),
        );
        registry.register(
            "lbctl_last_reload_timestamp_seconds",
            "Unix time of the last reload with this outcome",
            self.last_reload.clone(),
        );
        registry.register_collector(Box::new(SnapshotCollector(snap)));
        registry.register_collector(Box::new(HostCollector::read(&b.maps)));
        if let Some(r) = self.replication.as_ref().and_then(Watch::read) {
            registry.register_collector(Box::new(ReplicationCollector(r)));
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .context("encoding metrics")?;
        Ok(out)
    }

    /// Serves GET /metrics on `listener`: a thread accepts, and each
    /// connection is answered by a thread of its own, so an idle or slow
    /// client delays no one else; at most MAX_CONNECTIONS at once (more
    /// get 503 and are closed), each given READ_DEADLINE to send its
    /// request in all.
    pub fn serve(self, listener: TcpListener) {
        let open = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            // A failed accept (the peer gave up) is not worth stopping for.
            for conn in listener.incoming().flatten() {
                let slot = Slot::take(&open);
                let Some(slot) = slot else {
                    let _ = respond(
                        conn,
                        Answer::error("503 Service Unavailable", "too many connections\n"),
                    );
                    continue;
                };
                let me = self.clone();
                let _ = thread::Builder::new()
                    .name("lbctl-metrics".into())
                    .spawn(move || {
                        let _slot = slot;
                        let _ = me.answer(conn);
                    });
            }
        });
    }

    fn answer(&self, mut conn: TcpStream) -> std::io::Result<()> {
        conn.set_write_timeout(Some(Duration::from_secs(5)))?;
        let answer = match read_request(&mut conn)? {
            Err(error) => error,
            Ok((method, path)) => match (method.as_str(), path.as_str()) {
                ("GET", "/metrics") => match self.render() {
                    Ok(body) => Answer {
                        status: "200 OK",
                        ctype: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        body,
                    },
                    Err(e) => Answer::error("503 Service Unavailable", &format!("lbctl: {e:#}\n")),
                },
                ("GET", _) => Answer::error("404 Not Found", "only /metrics here\n"),
                _ => Answer::error("405 Method Not Allowed", "only GET /metrics\n"),
            },
        };
        respond(conn, answer)
    }
}

/// Connections served at once, at most; the next get 503.
const MAX_CONNECTIONS: usize = 256;
/// The longest request head accepted (431 beyond).
const MAX_HEAD: usize = 8192;
/// How long a client has to send its whole request (408 after).
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// One of the MAX_CONNECTIONS, given back when dropped (a panic included).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a connection is answered.
struct Answer {
    status: &'static str,
    ctype: &'static str,
    body: String,
}

impl Answer {
    fn error(status: &'static str, body: &str) -> Answer {
        Answer {
            status,
            ctype: "text/plain",
            body: body.into(),
        }
    }
}

/// Reads a request's head: its method and path (query dropped), or the
/// error answer for a head too long (431), too slow (408) or not HTTP (400).
fn read_request(conn: &mut TcpStream) -> std::io::Result<Result<(String, String), Answer>> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(Err(Answer::error(
                "431 Request Header Fields Too Large",
                "request head too long\n",
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Err(Answer::error(
                "408 Request Timeout",
                "the request took too long\n",
            )));
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Err(Answer::error(
                    "408 Request Timeout",
                    "the request took too long\n",
                )))
            }
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        [method, path, version] if version.starts_with("HTTP/1.") && path.starts_with('/') => {
            let path = path.split('?').next().unwrap_or("");
            Ok(Ok((method.to_string(), path.to_string())))
        }
        _ => Ok(Err(Answer::error(
            "400 Bad Request",
            "not an HTTP/1 request\n",
        ))),
    }
}

/// Writes the answer and closes (one request per connection). What the
/// client sent that was not read (a refused request's rest) is read and
/// dropped first, briefly: closed with unread data, the socket would send a
/// reset, which can take the answer with it.
fn respond(mut conn: TcpStream, a: Answer) -> std::io::Result<()> {
    let allow = if a.status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    write!(
        conn,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{}",
        a.status,
        a.ctype,
        a.body.len(),
        a.body
    )?;
    conn.shutdown(Shutdown::Write)?;
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match conn.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}

/// Binds the metrics address (before anything else is done, so a taken
/// port changes nothing).
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("listening for metrics on {addr}"))
}

/// The snapshot's values as constant metrics, encoded at scrape time.
#[derive(Debug)]
struct SnapshotCollector(Snapshot);

/// What the host says at scrape time: the conntrack table's fill (of the
/// namespace the service runs in, where lbctl's entries are), the VIP
/// routes (wanted by the maps, and in the kernel's table), the node's
/// drain, and lbctl's build. What cannot be read is left out.
#[derive(Debug)]
struct HostCollector {
    conntrack: Option<(u64, u64)>,
    /// Every VIP address: whether its route is in the kernel's table.
    routes: Vec<(IpAddr, bool)>,
    drained: Option<bool>,
}

impl HostCollector {
    fn read(maps: &Maps) -> HostCollector {
        let addrs: BTreeSet<IpAddr> = maps
            .vips()
            .map(|v| v.iter().map(|v| v.service.addr.ip()).collect())
            .unwrap_or_default();
        let installed = host_routes::installed().unwrap_or_default();
        HostCollector {
            conntrack: crate::conntrack::fill(),
            routes: addrs
                .into_iter()
                .map(|a| (a, installed.contains(&a)))
                .collect(),
            drained: maps.balancer_id().ok().map(drain::is_drained),
        }
    }
}

impl Collector for HostCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let g = MetricType::Gauge;
        if let Some((count, max)) = self.conntrack {
            for (name, help, v) in [
                ("lbctl_conntrack_entries", "Entries in the conntrack table of the balancer's namespace (all of them, not only lbctl's)", count),
                ("lbctl_conntrack_max", "The conntrack table's limit (nf_conntrack_max): new flows past it are forwarded without an entry (dnat) or dropped (fullnat)", max),
            ] {
                family(&mut enc, name, help, g, vec![(Labels::new(), ConstGauge::new(v as i64))])?;
            }
        }
        let routes = self
            .routes
            .iter()
            .map(|(a, up)| (vec![("vip", a.to_string())], ConstGauge::new(*up as i64)))
            .collect();
        family(
            &mut enc,
            "lbctl_vip_route_announced",
            "1 while lbctl's route for the VIP address is in the kernel's table (what BIRD or FRR announce), else 0",
            g,
            routes,
        )?;
        if let Some(drained) = self.drained {
            let help = "1 while the node is drained (lbctl drain): every VIP route withdrawn";
            let v = vec![(Labels::new(), ConstGauge::new(drained as i64))];
            family(&mut enc, "lbctl_node_drained", help, g, v)?;
        }
        let version = vec![("version", env!("CARGO_PKG_VERSION").to_string())];
        family(
            &mut enc,
            "lbctl_build_info",
            "lbctl's version; always 1",
            g,
            vec![(version, ConstGauge::new(1))],
        )
    }
}

/// conntrackd's sync (`lbctl_replication_*`): what its control socket
/// said at the watcher's last request, and when its messages last moved.
#[derive(Debug)]
struct ReplicationCollector(Replication);

impl Collector for ReplicationCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.0;
        let gauge = |v: i64| vec![(Labels::new(), ConstGauge::new(v))];
        family(
            &mut enc,
            "lbctl_replication_up",
            "1 while conntrackd answers on its control socket, else 0",
            MetricType::Gauge,
            gauge(r.up as i64),
        )?;
        let Some(st) = r.stats.as_ref().filter(|_| r.up) else {
            return Ok(());
        };
        let ch = st.channel();
        if let Some(connected) = ch.and_then(|c| c.connected()) {
            let help =
                "1 while conntrackd's TCP channel to its peer is connected both ways, else 0";
            family(
                &mut enc,
                "lbctl_replication_connected",
                help,
                MetricType::Gauge,
                gauge(connected as i64),
            )?;
        }
        if let Some(n) = st.entries {
            let help = "Entries of this host's conntrack table that conntrackd's filter passes: what each poll sends the peer";
            family(
                &mut enc,
                "lbctl_replication_entries",
                help,
                MetricType::Gauge,
                gauge(n as i64),
            )?;
        }
        let written: Vec<(Labels, ConstCounter<u64>)> = WRITE_OPS
            .iter()
            .zip(st.written)
            .filter_map(|(op, n)| Some((vec![("op", op.to_string())], ConstCounter::new(n?))))
            .collect();
        family(
            &mut enc,
            "lbctl_replication_peer_writes",
            "Entries the peer sent, written into this host's conntrack table, by operation",
            MetricType::Counter,
            written,
        )?;
        // A counter conntrackd's text gave (it may leave any out).
        let mut counter = |name: &str, help: &str, v: Option<u64>| match v {
            Some(v) => one_counter(&mut enc, name, help, v),
            None => Ok(()),
        };
        counter(
            "lbctl_replication_peer_write_failures",
            "Writes of the peer's entries into this host's table that failed",
            st.written_failed,
        )?;
        counter(
            "lbctl_replication_lost_messages",
            "Sync messages lost on the way in (sequence tracking)",
            st.lost_messages,
        )?;
        // The channel's traffic, each count both ways:
        // lbctl_replication_{sent,received}_{bytes,messages}.
        let counts = [
            (
                "Bytes",
                ch.and_then(|c| c.bytes_sent),
                ch.and_then(|c| c.bytes_received),
            ),
            (
                "Messages",
                ch.and_then(|c| c.messages_sent),
                ch.and_then(|c| c.messages_received),
            ),
        ];
        for (what, out, back) in counts {
            for (way, v) in [("sent", out), ("received", back)] {
                let name = format!("lbctl_replication_{way}_{}", what.to_lowercase());
                let help = format!("{what} conntrackd {way} on its channel");
                counter(&name, &help, v)?;
            }
        }
        counter(
            "lbctl_replication_send_errors",
            "Failed sends on conntrackd's channel",
            ch.and_then(|c| c.send_errors),
        )?;
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        for (name, help, at) in [
            ("lbctl_replication_last_sent_timestamp_seconds", "Unix time at which lbctl last saw conntrackd's sent messages grow (sampled every second)", r.last_sent),
            ("lbctl_replication_last_received_timestamp_seconds", "Unix time at which lbctl last saw conntrackd's received messages grow: the peer last heard from (sampled every second)", r.last_received),
        ] {
            if let Some(at) = at {
                let v = vec![(Labels::new(), ConstGauge::new(unix(at)))];
                family(&mut enc, name, help, MetricType::Gauge, v)?;
            }
        }
        Ok(())
    }
}

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    items: Vec<(Labels, M)>,
) -> std::fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in items {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family with one sample and no labels.
fn one_counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let items = vec![(Labels::new(), ConstCounter::new(v))];
    family(enc, name, help, MetricType::Counter, items)
}

/// A family with one sample per backend, labelled by VIP and backend, in
/// the snapshot's order; `sample` None leaves a backend out.
fn per_backend<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    s: &Snapshot,
    (name, help, kind): (&str, &str, MetricType),
    sample: impl Fn(&BackendView) -> Option<M>,
) -> std::fmt::Result {
    let items = s
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(move |b| (&v.vip.service, b)))
        .filter_map(|(svc, b)| Some((backend_labels(svc, b.entry.addr), sample(b)?)))
        .collect();
    family(enc, name, help, kind, items)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let c = MetricType::Counter;
        let g = MetricType::Gauge;
        // Packets and bytes by direction: to backends (the clients'
        // packets) and to clients (replies through the balancer; none in
        // dsr and tunnel, whose backends answer clients directly). Summed
        // over `direction`: every packet of the flows.
        type Split = fn(&Counters) -> (u64, u64);
        let split: [(&str, &str, &str, Split); 2] = [
            (
                "packets",
                "Packets of the VIP's flows, by direction (to_backends, to_clients)",
                "Packets of the backend's flows, by direction (to_backends, to_clients)",
                |c| (c.to_backends().0, c.packets_to_clients),
            ),
            (
                "bytes",
                "Bytes of the VIP's flows, by direction (to_backends, to_clients)",
                "Bytes of the backend's flows, by direction (to_backends, to_clients)",
                |c| (c.to_backends().1, c.bytes_to_clients),
            ),
        ];
        let directed = |labels: Labels, (to_backends, to_clients): (u64, u64)| {
            [("to_backends", to_backends), ("to_clients", to_clients)].map(|(d, n)| {
                let mut l = labels.clone();
                l.push(("direction", d.to_string()));
                (l, ConstCounter::new(n))
            })
        };
        for (name, help, backend_help, get) in split {
            let items = s
                .vips
                .iter()
                .flat_map(|v| directed(vip_labels(&v.vip.service), get(&v.stats)))
                .collect();
            family(&mut enc, &format!("lbctl_vip_{name}"), help, c, items)?;
            let items = s
                .vips
                .iter()
                .flat_map(|v| v.backends.iter().map(move |b| (&v.vip.service, b)))
                .flat_map(|(svc, b)| directed(backend_labels(svc, b.entry.addr), get(&b.stats)))
                .collect();
            family(
                &mut enc,
                &format!("lbctl_backend_{name}"),
                backend_help,
                c,
                items,
            )?;
        }
        type Field = fn(&Counters) -> u64;
        let fields: [(&str, &str, &str, Field); 1] = [(
            "new_flows",
            "New flows to the VIP",
            "New flows balanced to the backend",
            |c| c.new_flows,
        )];
        for (name, help, backend_help, get) in fields {
            let items = s
                .vips
                .iter()
                .map(|v| (vip_labels(&v.vip.service), ConstCounter::new(get(&v.stats))))
                .collect();
            family(&mut enc, &format!("lbctl_vip_{name}"), help, c, items)?;
            let backend_name = format!("lbctl_backend_{name}");
            per_backend(&mut enc, s, (&backend_name, backend_help, c), |b| {
                Some(ConstCounter::new(get(&b.stats)))
            })?;
        }
        // New flows a VIP's controls turned away, and entries removed for
        // it: each only for VIPs that have the control (denied: every VIP,
        // as before).
        type VipCount = fn(&VipView) -> Option<u64>;
        let per_vip: [(&str, &str, VipCount); 3] = [
            (
                "lbctl_vip_denied_flows",
                "New flows from clients outside the VIP's source allowlist, dropped before any entry",
                |v| Some(v.denied),
            ),
            (
                "lbctl_vip_limited_flows",
                "New flows beyond the VIP's limit a second, dropped before any entry",
                |v| v.vip.max_new_flows.map(|_| v.limited),
            ),
            (
                "lbctl_vip_expired_flows",
                "Conntrack entries of flows of the VIP's removed or down backends that lbctl removed (--on-backend-gone)",
                |v| v.vip.on_backend_gone.expires().then_some(v.expired),
            ),
        ];
        for (name, help, count) in per_vip {
            let items = s
                .vips
                .iter()
                .filter_map(|v| Some((vip_labels(&v.vip.service), ConstCounter::new(count(v)?))))
                .collect();
            family(&mut enc, name, help, c, items)?;
        }
        let limits = s
            .vips
            .iter()
            .filter_map(|v| {
                let n = v.vip.max_new_flows?;
                Some((vip_labels(&v.vip.service), ConstGauge::new(i64::from(n))))
            })
            .collect();
        family(
            &mut enc,
            "lbctl_vip_max_new_flows",
            "The VIP's limit on new flows a second (--max-new-flows)",
            MetricType::Gauge,
            limits,
        )?;
        type Gauge = fn(&BackendView) -> Option<i64>;
        let gauges: [(&str, &str, Gauge); 3] = [
            (
                "lbctl_backend_weight",
                "The operator's weight (0: drained)",
                |b| Some(b.entry.weight as i64),
            ),
            (
                "lbctl_backend_up",
                "Health checks say the backend is up (1) or down (0); absent when not checked",
                |b| {
                    (b.entry.health != Health::Unchecked)
                        .then_some((b.entry.health == Health::Up) as i64)
                },
            ),
            (
                "lbctl_backend_active_flows",
                "lbctl's conntrack entries to the backend with no FIN or RST seen, when last counted (lbctl_active_flows_counted_timestamp_seconds)",
                |b| Some(b.active_flows.unwrap_or(0) as i64),
            ),
        ];
        for (name, help, get) in gauges {
            per_backend(&mut enc, s, (name, help, g), |b| {
                get(b).map(ConstGauge::new)
            })?;
        }
        if let Some(counted) = s.flows_counted {
            for (name, help, v) in [
                (
                    "lbctl_active_flows_counted_timestamp_seconds",
                    "Unix time the open flows (lbctl_backend_active_flows) were counted: lbctl run counts the conntrack table in the background",
                    census::unix_seconds(counted.at),
                ),
                (
                    "lbctl_active_flows_count_duration_seconds",
                    "How long that count of the conntrack table took",
                    counted.took.as_secs_f64(),
                ),
            ] {
                family(&mut enc, name, help, g, vec![(Labels::new(), ConstGauge::new(v))])?;
            }
        }
        // One sample per state, 1 for the backend's: alerts match
        // {state="down"} == 1, and unchecked backends are there too.
        let items = s
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (&v.vip.service, b)))
            .flat_map(|(svc, b)| {
                Health::ALL.into_iter().map(move |state| {
                    let mut labels = backend_labels(svc, b.entry.addr);
                    labels.push(("state", state.name().to_string()));
                    (labels, ConstGauge::new((b.entry.health == state) as i64))
                })
            })
            .collect();
        family(
            &mut enc,
            "lbctl_backend_health",
            "The backend's health state (up, down, or unchecked: no checks): 1 for its state, 0 for the others",
            g,
            items,
        )?;
        let items = s
            .verdicts
            .iter()
            .map(|(name, n)| (vec![("reason", name.to_string())], ConstCounter::new(*n)))
            .collect();
        family(
            &mut enc,
            "lbctl_verdicts",
            "Packets by the data path's verdict",
            c,
            items,
        )?;
        if let Some(fc) = s.flow_cache {
            for (name, v) in [
                ("hits", fc.hits),
                ("misses", fc.misses),
                ("stores", fc.stores),
            ] {
                let help = format!("Flow cache {name}");
                one_counter(&mut enc, &format!("lbctl_flow_cache_{name}"), &help, v)?;
            }
        }
        if let Some(d) = s.datapath {
            for (name, help, v) in [
                (
                    "lbctl_partial_checksums_completed",
                    "TCP/UDP checksums that arrived partial (TX checksum offload) and were completed",
                    d.partial_csums,
                ),
                (
                    "lbctl_conntrack_table_full",
                    "New flows that got no conntrack entry because the table was full",
                    d.ct_full,
                ),
                (
                    "lbctl_flood_stateless_packets",
                    "dnat packets forwarded without a conntrack entry (flood mode)",
                    d.stateless,
                ),
                (
                    "lbctl_tcp_unverified_closes",
                    "TCP FINs and RSTs whose sequence number was not the one the peer expects: forwarded, the flow's timeout kept",
                    d.unverified_closes,
                ),
            ] {
                one_counter(&mut enc, name, help, v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use prometheus_client::registry::Registry;

    use super::SnapshotCollector;
    use crate::datapath::codec::{BackendEntry, VipEntry};
    use crate::datapath::counters::Counters;
    use crate::model::{Health, NatMode, Proto, Service};
    use crate::snapshot::{
        BackendView, DatapathStats, FlowCacheStats, FlowsCounted, Snapshot, VipView,
    };
    use std::time::{Duration, UNIX_EPOCH};

    fn counters(n: u64) -> Counters {
        Counters {
            packets: n,
            bytes: n * 100,
            new_flows: n / 10,
            packets_to_clients: n / 2,
            bytes_to_clients: n * 40,
        }
    }

    /// Every family the collector writes, with names, help texts, labels and
    /// values as the exposition shows them (testdata/metrics.txt: what the
    /// collector wrote before its families were built from tables).
    #[test]
    fn exposition_text_is_stable() {
        let vip = Service {
            addr: "198.18.100.1:80".parse().unwrap(),
            proto: Proto::Tcp,
        };
        let backend = |n: u8, health, weight, flows| BackendView {
            entry: BackendEntry {
                id: n as u32,
                vip_index: 0,
                vip,
                addr: SocketAddr::from(([198, 18, 1, n], 8080)),
                proto: Proto::Tcp,
                weight,
                health,
                health_since: 0,
                leaving: false,
            },
            stats: counters(n as u64 * 30),
            active_flows: flows,
        };
        let snap = Snapshot {
            vips: vec![VipView {
                vip: VipEntry {
                    service: vip,
                    index: 0,
                    mode: NatMode::Dnat,
                    snat: None,
                    table_size: 251,
                    fixed_size: false,
                    affinity: crate::model::Affinity::None,
                    has_allowlist: false,
                    allow: Vec::new(),
                    on_backend_gone: crate::model::OnBackendGone::Reassign,
                    has_limit: true,
                    max_new_flows: Some(1000),
                    moved: 0.0,
                    table_digest: 0,
                    ports: crate::model::Ports::of(vip.addr, crate::model::Ports::ALL),
                },
                stats: counters(90),
                denied: 5,
                limited: 3,
                expired: 4,
                backends: vec![
                    backend(1, Health::Up, 1, Some(3)),
                    backend(2, Health::Down, 2, Some(0)),
                    backend(3, Health::Unchecked, 0, None),
                ],
            }],
            verdicts: vec![("tx", 80), ("pass_not_vip", 7)],
            flow_cache: Some(FlowCacheStats {
                hits: 11,
                misses: 12,
                stores: 13,
            }),
            datapath: Some(DatapathStats {
                partial_csums: 21,
                ct_full: 22,
                stateless: 23,
                unverified_closes: 24,
            }),
            flows_counted: Some(FlowsCounted {
                at: UNIX_EPOCH + Duration::from_millis(1_733_450_000_250),
                took: Duration::from_millis(402),
                by_census: true,
            }),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector(snap)));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert_eq!(out, include_str!("testdata/metrics.txt"));
    }
}
