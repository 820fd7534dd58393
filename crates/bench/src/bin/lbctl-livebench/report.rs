//! Medians, the printed tables, the goals, and target/bench/live.json
//! (hand-written JSON: a tiny value type and its printer).

use std::fmt::Write as _;

use lbctl_bench::median;

use crate::balancers::Balancer;
use crate::conns::ConnSample;
use crate::traffic::{Case, Mix, Sample};

/// Everything one invocation measured.
pub struct Results {
    pub machine: Vec<(String, String)>,
    pub settings: Vec<(String, String)>,
    pub pps: Vec<PpsResult>,
    pub conns: Vec<ConnResult>,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
}

/// One case's runs, per round: a capacity run, a zero-loss search (both
/// counted on the switch port) and a delivery check (at the backends).
pub struct PpsResult {
    pub case: Case,
    pub capacity: Vec<Sample>,
    pub searches: Vec<Vec<Sample>>,
    pub deliveries: Vec<Sample>,
}

pub struct ConnResult {
    pub balancer: Balancer,
    pub runs: Vec<ConnSample>,
    /// Rounds that could not run (the balancer did not start), and why.
    pub errors: Vec<String>,
}

impl PpsResult {
    pub fn pps(&self) -> f64 {
        median(self.capacity.iter().map(Sample::pps).collect())
    }
    pub fn per_core(&self) -> f64 {
        median(self.capacity.iter().map(Sample::pps_per_core).collect())
    }
    pub fn lb_busy(&self) -> f64 {
        median(self.capacity.iter().map(Sample::lb_busy).collect())
    }
    /// Share of the offered frames the balancer's full ring refused during
    /// the capacity runs: > 0 shows the balancer was the bottleneck.
    pub fn refused_share(&self) -> f64 {
        median(
            self.capacity
                .iter()
                .map(|s| s.ring_full_balancer as f64 / s.sent.max(1) as f64)
                .collect(),
        )
    }
    /// Highest rate the generator achieved in a paced step that lost
    /// nothing, per round (0: none did).
    pub fn zero_loss(&self) -> f64 {
        median(
            self.searches
                .iter()
                .map(|steps| {
                    steps
                        .iter()
                        .filter(|s| s.lost() == 0)
                        .map(Sample::sent_rate)
                        .fold(0.0, f64::max)
                })
                .collect(),
        )
    }

    /// The delivery checks summed over rounds: (median rate, sent, lost).
    pub fn delivery(&self) -> (f64, u64, u64) {
        let rate = median(self.deliveries.iter().map(Sample::sent_rate).collect());
        let sent = self.deliveries.iter().map(|s| s.sent).sum();
        let lost = self.deliveries.iter().map(Sample::lost).sum();
        (rate, sent, lost)
    }

    /// Arrivals per backend over the delivery checks.
    pub fn spread(&self) -> Vec<u64> {
        let mut total: Vec<u64> = Vec::new();
        for s in &self.deliveries {
            total.resize(total.len().max(s.per_backend.len()), 0);
            for (t, n) in total.iter_mut().zip(&s.per_backend) {
                *t += n;
            }
        }
        total
    }

    /// Frames lost in the search steps below saturation: lost without a
    /// full ring to explain them, or refused by the balancer's ring while it
    /// had headroom (`below_saturation`). (Frames the switch port refused
    /// mean the other CPU, running the generator and the switch, was
    /// saturated.)
    pub fn losses_below_saturation(&self) -> u64 {
        self.capacity
            .iter()
            .zip(&self.searches)
            .map(|(cap, steps)| {
                steps
                    .iter()
                    .map(|s| {
                        let headroom = s.offered_pps.is_some_and(|r| r < 0.9 * cap.pps_per_core());
                        s.lost_elsewhere() + if headroom { s.ring_full_balancer } else { 0 }
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    /// The balancer thread's run-queue wait in the search steps that lost
    /// frames below saturation, ms: its CPU taken away meanwhile.
    pub fn wait_in_lossy_steps_ms(&self) -> f64 {
        self.capacity
            .iter()
            .zip(&self.searches)
            .flat_map(|(cap, steps)| {
                steps.iter().filter(move |s| {
                    s.lost_elsewhere() > 0 || (s.ring_full_balancer > 0 && below_saturation(s, cap))
                })
            })
            .map(|s| s.lb_wait_s * 1e3)
            .fold(0.0, |a, b| a + b)
    }

    /// Frames the switch port refused in the search steps.
    pub fn switch_refused(&self) -> u64 {
        self.searches
            .iter()
            .flatten()
            .map(|s| s.ring_full_switch)
            .sum()
    }
}

impl ConnResult {
    pub fn rate(&self) -> f64 {
        median(self.runs.iter().map(ConnSample::rate).collect())
    }
    pub fn p50(&self) -> f64 {
        median(self.runs.iter().map(|r| r.percentile_ms(50.0)).collect())
    }
    pub fn p99(&self) -> f64 {
        median(self.runs.iter().map(|r| r.percentile_ms(99.0)).collect())
    }
    pub fn failed(&self) -> u64 {
        self.runs.iter().map(ConnSample::failed).sum()
    }
    pub fn balancer_us(&self) -> f64 {
        median(
            self.runs
                .iter()
                .filter_map(ConnSample::balancer_us_per_conn)
                .collect(),
        )
    }
    pub fn ok(&self) -> u64 {
        self.runs.iter().map(|r| r.ok).sum()
    }
}

impl Results {
    fn pps_of(&self, b: Balancer, mix: Mix) -> Option<&PpsResult> {
        self.pps
            .iter()
            .find(|r| r.case.balancer == b && (r.case.mix == mix || b == Balancer::Reflector))
    }

    fn conn_of(&self, b: Balancer) -> Option<&ConnResult> {
        self.conns.iter().find(|r| r.balancer == b)
    }

    /// (goal, measured ratio or value, target, met).
    pub fn goals(&self) -> Vec<(String, f64, f64, bool)> {
        let at_least = |what: &str, value: f64, target: f64| {
            (what.to_string(), value, target, value >= target)
        };
        let none = |what: String, count: u64| (what, count as f64, 0.0, count == 0);
        let mut goals = Vec::new();
        let lb = self.pps_of(Balancer::Lbctl, Mix::Established);
        let nft = self.pps_of(Balancer::Nft, Mix::Established);
        let refl = self.pps_of(Balancer::Reflector, Mix::Established);
        if let (Some(lb), Some(nft)) = (lb, nft) {
            let r = lb.per_core() / nft.per_core();
            goals.push(at_least(
                "lbctl pps per core / nftables DNAT (established)",
                r,
                3.0,
            ));
        }
        if let (Some(lb), Some(refl)) = (lb, refl) {
            let r = lb.per_core() / refl.per_core();
            goals.push(at_least("lbctl pps per core / baseline reflector", r, 0.6));
        }
        for r in self
            .pps
            .iter()
            .filter(|r| r.case.balancer == Balancer::Lbctl)
        {
            let name = r.case.name();
            let lost = r.losses_below_saturation();
            goals.push(none(
                format!("{name}: frames lost below saturation (search)"),
                lost,
            ));
            let (_, _, lost) = r.delivery();
            goals.push(none(
                format!("{name}: frames lost end to end (delivery check)"),
                lost,
            ));
        }
        let lbc = self.conn_of(Balancer::Lbctl);
        if let (Some(lb), Some(h)) = (lbc, self.conn_of(Balancer::Haproxy)) {
            goals.push(at_least(
                "lbctl conn/s / HAProxy",
                lb.rate() / h.rate(),
                2.0,
            ));
        }
        if let (Some(lb), Some(n)) = (lbc, self.conn_of(Balancer::Nft)) {
            goals.push(at_least(
                "lbctl conn/s / nftables DNAT",
                lb.rate() / n.rate(),
                1.0,
            ));
        }
        // Issue 20: replication (conntrackd polling) costs at most 10% of
        // the new flows per second.
        let new_flows = |b| self.pps_of(b, Mix::NewFlows);
        if let (Some(on), Some(off)) = (new_flows(Balancer::LbctlSync), new_flows(Balancer::Lbctl))
        {
            goals.push(at_least(
                "lbctl new-flow pps, replicated / not",
                on.per_core() / off.per_core(),
                0.9,
            ));
        }
        if let (Some(on), Some(off)) = (self.conn_of(Balancer::LbctlSync), lbc) {
            goals.push(at_least(
                "lbctl conn/s, replicated / not",
                on.rate() / off.rate(),
                0.9,
            ));
        }
        goals
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "machine:");
        for (k, v) in &self.machine {
            let _ = writeln!(out, "  {k:<12} {v}");
        }
        let _ = writeln!(
            out,
            "  load avg     {:.2} at start, {:.2} at end",
            self.loadavg_start, self.loadavg_end
        );
        if !self.pps.is_empty() {
            let _ = writeln!(
                out,
                "\nforwarding, 64-byte UDP frames (medians of {} rounds)",
                self.pps[0].capacity.len()
            );
            let _ = writeln!(
                out,
                "{:<22} {:>10} {:>6} {:>11} {:>9} {:>8}",
                "case", "fwd pps", "busy", "pps/core", "ns/frame", "refused"
            );
            for r in &self.pps {
                let _ = writeln!(
                    out,
                    "{:<22} {:>10.0} {:>5.0}% {:>11.0} {:>9.0} {:>7.1}%",
                    r.case.name(),
                    r.pps(),
                    r.lb_busy() * 100.0,
                    r.per_core(),
                    1e9 / r.per_core(),
                    r.refused_share() * 100.0,
                );
            }
            let _ = writeln!(
                out,
                "  flat out, counted on the switch port. fwd pps: what the one balancer core forwarded;\n  \
                 busy: its share of that core (NAPI thread CPU time / wall time); pps/core = frames /\n  \
                 that CPU time; refused: offered frames its full receive ring turned away (> 0: the\n  \
                 balancer was the bottleneck)."
            );
            let _ = writeln!(
                out,
                "\n{:<22} {:>10} {:>9} {:>8} {:>9} | {:>24} spread",
                "losses", "zero-loss", "lost<sat", "wait ms", "sw. ring", "delivery lost/sent@rate"
            );
            for r in &self.pps {
                let (rate, sent, lost) = r.delivery();
                let spread: Vec<String> = r.spread().iter().map(u64::to_string).collect();
                let _ = writeln!(
                    out,
                    "{:<22} {:>10.0} {:>9} {:>8.1} {:>9} | {:>24} {}",
                    r.case.name(),
                    r.zero_loss(),
                    r.losses_below_saturation(),
                    r.wait_in_lossy_steps_ms(),
                    r.switch_refused(),
                    format!("{lost}/{sent}@{:.0}k", rate / 1e3),
                    spread.join("/"),
                );
            }
            let _ = writeln!(
                out,
                "  zero-loss: highest rate (frames/s the generator achieved) of a paced step that lost\n  \
                 nothing, counted on the switch port; lost<sat: frames lost in the search while the\n  \
                 balancer had headroom (sent < 90% of pps/core and its thread < 85% busy) or lost\n  \
                 without any full ring;\n  \
                 wait ms: in those steps, time its SCHED_FIFO thread waited, runnable, for its CPU;\n  \
                 sw. ring: frames the switch port refused in the search (the other CPU saturated).\n  \
                 delivery: a paced run counted at the backends (whole path), and its spread."
            );
        }
        if !self.conns.is_empty() {
            let _ = writeln!(
                out,
                "\nshort TCP connections (HTTP/1.0 GET), {} workers (medians of {} rounds)",
                self.conns[0].runs.first().map_or(0, |r| r.workers),
                self.conns[0].runs.len()
            );
            let measured = self.conns.iter().any(|r| r.balancer_us().is_finite());
            let _ = write!(
                out,
                "{:<10} {:>10} {:>9} {:>9} {:>9} {:>8}",
                "balancer", "conn/s", "p50 ms", "p99 ms", "ok", "failed"
            );
            if measured {
                let _ = write!(out, " {:>11} {:>13}", "bal µs/conn", "conn/bal-core");
            }
            out.push('\n');
            for r in &self.conns {
                let _ = write!(
                    out,
                    "{:<10} {:>10.0} {:>9.2} {:>9.2} {:>9} {:>8}",
                    r.balancer.name(),
                    r.rate(),
                    r.p50(),
                    r.p99(),
                    r.ok(),
                    r.failed()
                );
                if measured {
                    let us = r.balancer_us();
                    let _ = write!(out, " {:>11.1} {:>13.0}", us, 1e6 / us);
                }
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "  latency: connect + request + the whole response, per connection."
            );
            if measured {
                let _ = writeln!(
                    out,
                    "  bal µs/conn: CPU time of the balancer's NAPI threads (and HAProxy's process)\n  \
                     per connection, every interface running threaded NAPI; conn/bal-core = 1e6 / that."
                );
            }
        }
        let goals = self.goals();
        if !goals.is_empty() {
            let _ = writeln!(out, "\ngoals:");
            for (what, value, target, met) in goals {
                let _ = writeln!(
                    out,
                    "  {:<4} {what}: {value:.2} (goal {} {target})",
                    if met { "met" } else { "MISS" },
                    if target == 0.0 { "=" } else { ">=" }
                );
            }
        }
        out
    }

    pub fn json(&self) -> String {
        let kv = |pairs: &[(String, String)]| {
            J::Obj(
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), J::Str(v.clone())))
                    .collect(),
            )
        };
        let pps = self
            .pps
            .iter()
            .map(|r| {
                let (rate, sent, lost) = r.delivery();
                J::Obj(vec![
                    ("case".into(), J::Str(r.case.name())),
                    ("balancer".into(), J::Str(r.case.balancer.name().into())),
                    (
                        "mix".into(),
                        J::Str(
                            match r.case.mix {
                                Mix::Established => "established",
                                Mix::NewFlows => "new_flows",
                            }
                            .into(),
                        ),
                    ),
                    (
                        "median".into(),
                        J::Obj(vec![
                            ("forwarded_pps".into(), J::Num(r.pps())),
                            ("pps_per_balancer_core".into(), J::Num(r.per_core())),
                            ("ns_per_frame".into(), J::Num(1e9 / r.per_core())),
                            ("balancer_core_busy".into(), J::Num(r.lb_busy())),
                            ("refused_share".into(), J::Num(r.refused_share())),
                            ("zero_loss_pps".into(), J::Num(r.zero_loss())),
                            ("delivery_pps".into(), J::Num(rate)),
                            ("delivery_sent".into(), J::Int(sent)),
                            ("delivery_lost".into(), J::Int(lost)),
                            (
                                "lost_below_saturation".into(),
                                J::Int(r.losses_below_saturation()),
                            ),
                            ("switch_refused".into(), J::Int(r.switch_refused())),
                            (
                                "wait_in_lossy_steps_ms".into(),
                                J::Num(r.wait_in_lossy_steps_ms()),
                            ),
                        ]),
                    ),
                    (
                        "capacity_runs".into(),
                        J::Arr(r.capacity.iter().map(sample_json).collect()),
                    ),
                    (
                        "delivery_runs".into(),
                        J::Arr(r.deliveries.iter().map(sample_json).collect()),
                    ),
                    (
                        "zero_loss_searches".into(),
                        J::Arr(
                            r.searches
                                .iter()
                                .map(|s| J::Arr(s.iter().map(sample_json).collect()))
                                .collect(),
                        ),
                    ),
                ])
            })
            .collect();
        let conns = self
            .conns
            .iter()
            .map(|r| {
                J::Obj(vec![
                    ("balancer".into(), J::Str(r.balancer.name().into())),
                    (
                        "median".into(),
                        J::Obj(vec![
                            ("conns_per_s".into(), J::Num(r.rate())),
                            ("p50_ms".into(), J::Num(r.p50())),
                            ("p99_ms".into(), J::Num(r.p99())),
                            ("balancer_us_per_conn".into(), J::Num(r.balancer_us())),
                        ]),
                    ),
                    ("ok".into(), J::Int(r.ok())),
                    ("failed".into(), J::Int(r.failed())),
                    (
                        "runs".into(),
                        J::Arr(r.runs.iter().map(conn_json).collect()),
                    ),
                ])
            })
            .collect();
        let goals = self
            .goals()
            .into_iter()
            .map(|(what, value, target, met)| {
                J::Obj(vec![
                    ("goal".into(), J::Str(what)),
                    ("value".into(), J::Num(value)),
                    ("target".into(), J::Num(target)),
                    ("met".into(), J::Bool(met)),
                ])
            })
            .collect();
        let root = J::Obj(vec![
            ("machine".into(), kv(&self.machine)),
            ("settings".into(), kv(&self.settings)),
            ("loadavg_start".into(), J::Num(self.loadavg_start)),
            ("loadavg_end".into(), J::Num(self.loadavg_end)),
            ("pps".into(), J::Arr(pps)),
            ("conns".into(), J::Arr(conns)),
            ("goals".into(), J::Arr(goals)),
        ]);
        let mut out = String::new();
        root.write(&mut out, 0);
        out.push('\n');
        out
    }
}

/// A paced step had headroom if it was sent at under 90% of the capacity
/// measured flat out and its balancer thread was busy under 85% of the
/// time (paced bursts cost more per frame than flat-out batches, so a
/// thread near 100% is saturated whatever the rate says).
fn below_saturation(s: &Sample, capacity: &Sample) -> bool {
    s.sent_rate() < 0.9 * capacity.pps_per_core() && s.lb_busy() < 0.85
}

fn sample_json(s: &Sample) -> J {
    J::Obj(vec![
        ("target_pps".into(), s.offered_pps.map_or(J::Null, J::Num)),
        ("sent_pps".into(), J::Num(s.sent_rate())),
        ("seconds".into(), J::Num(s.seconds)),
        ("sent".into(), J::Int(s.sent)),
        ("arrived".into(), J::Int(s.arrived)),
        ("lost".into(), J::Int(s.lost())),
        ("ring_full_balancer".into(), J::Int(s.ring_full_balancer)),
        ("ring_full_switch".into(), J::Int(s.ring_full_switch)),
        ("lost_elsewhere".into(), J::Int(s.lost_elsewhere())),
        ("balancer_cpu_s".into(), J::Num(s.lb_cpu_s)),
        ("balancer_wait_s".into(), J::Num(s.lb_wait_s)),
        ("pps".into(), J::Num(s.pps())),
        ("pps_per_balancer_core".into(), J::Num(s.pps_per_core())),
        (
            "cpu_busy".into(),
            J::Arr(s.cpu_busy.iter().map(|&b| J::Num(b)).collect()),
        ),
        (
            "arrived_per_sink".into(),
            J::Arr(s.per_backend.iter().map(|&n| J::Int(n)).collect()),
        ),
        (
            "conntrack_entries_after".into(),
            J::Int(s.conntrack_entries),
        ),
        ("loadavg".into(), J::Num(s.loadavg)),
        (
            "lbctl_verdicts".into(),
            J::Obj(
                s.verdicts
                    .iter()
                    .map(|(k, &v)| (k.clone(), J::Int(v)))
                    .collect(),
            ),
        ),
    ])
}

fn conn_json(c: &ConnSample) -> J {
    J::Obj(vec![
        ("workers".into(), J::Int(c.workers as u64)),
        ("seconds".into(), J::Num(c.seconds)),
        ("ok".into(), J::Int(c.ok)),
        ("conns_per_s".into(), J::Num(c.rate())),
        ("p50_ms".into(), J::Num(c.percentile_ms(50.0))),
        ("p90_ms".into(), J::Num(c.percentile_ms(90.0))),
        ("p99_ms".into(), J::Num(c.percentile_ms(99.0))),
        ("max_ms".into(), J::Num(c.percentile_ms(100.0))),
        (
            "errors".into(),
            J::Obj(
                c.errors
                    .iter()
                    .map(|(k, &v)| (k.clone(), J::Int(v)))
                    .collect(),
            ),
        ),
        (
            "spread".into(),
            J::Obj(
                c.spread
                    .iter()
                    .map(|(k, &v)| (k.clone(), J::Int(v)))
                    .collect(),
            ),
        ),
        ("loadavg".into(), J::Num(c.loadavg)),
        (
            "balancer_cpu_s".into(),
            c.balancer_cpu_s.map_or(J::Null, J::Num),
        ),
        (
            "balancer_us_per_conn".into(),
            c.balancer_us_per_conn().map_or(J::Null, J::Num),
        ),
        ("lab_cpu_s".into(), J::Num(c.lab_cpu_s)),
        (
            "cpu_busy".into(),
            J::Arr(c.cpu_busy.iter().map(|&b| J::Num(b)).collect()),
        ),
    ])
}

/// A JSON value, printed with two-space indentation.
enum J {
    Null,
    Bool(bool),
    Int(u64),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn write(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(n) => {
                let _ = write!(out, "{n}");
            }
            J::Num(x) if !x.is_finite() => out.push_str("null"),
            J::Num(x) => {
                let _ = write!(out, "{}", (x * 1e4).round() / 1e4);
            }
            J::Str(s) => write_str(out, s),
            J::Arr(items) if items.is_empty() => out.push_str("[]"),
            J::Arr(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    pad(out, indent + 2);
                    item.write(out, indent + 2);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push(']');
            }
            J::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            J::Obj(fields) => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    pad(out, indent + 2);
                    write_str(out, k);
                    out.push_str(": ");
                    v.write(out, indent + 2);
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push('}');
            }
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push_str(&lbctl_bench::json::quote(s));
}
