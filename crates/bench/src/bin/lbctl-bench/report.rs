//! The figures: a table for people, JSON (written by hand) for tools, and
//! the project's goals checked against them.

use std::fmt::Write;

use lbctl_bench::{cpu_model, median};

use crate::{Class, FwdPath, Sample};
use lbctl_bench::harness::action_name;
use lbctl_bench::lab::Config;

/// The project's goals, as ratios to the baseline (docs/BENCHMARKS.md).
pub const GOALS: [(Class, f64); 3] = [
    (Class::Established, 2.0),
    (Class::NonVip, 1.3),
    (Class::NewFlow, 6.0),
];
/// No lbctl figure may grow more than this from the first configuration to
/// the second.
pub const MAX_DEGRADATION: f64 = 0.15;
/// Nor an IPv6 figure over its IPv4 twin's (same class, same configuration).
pub const MAX_IPV6_OVERHEAD: f64 = 0.15;

pub struct Report {
    pub quick: bool,
    /// Measured under SCHED_FIFO.
    pub realtime: bool,
    /// The 1-minute load average before and after the measurements.
    pub load: (f64, f64),
    pub repeat: u32,
    pub runs: u32,
    pub chunk: u32,
    pub path: FwdPath,
    pub cpu: usize,
    /// Each configuration and the seconds its VIPs and backends took to
    /// configure.
    pub configs: Vec<(Config, f64)>,
    /// Per configuration, every (class, sample) of every run.
    pub samples: Vec<Vec<(Class, Sample)>>,
}

/// Median, min and max of one class in one configuration.
#[derive(Clone, Debug)]
pub struct Figure {
    pub class: Class,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub action: u32,
    pub all: Vec<f64>,
}

impl Report {
    pub fn figures(&self, config: usize) -> Vec<Figure> {
        let mut out = Vec::new();
        for class in Class::ALL {
            let got: Vec<&Sample> = self.samples[config]
                .iter()
                .filter(|(c, _)| *c == class)
                .map(|(_, s)| s)
                .collect();
            if got.is_empty() {
                continue;
            }
            let mut all: Vec<f64> = got.iter().map(|s| s.ns).collect();
            let mut sorted = all.clone();
            sorted.sort_by(f64::total_cmp);
            all.shrink_to_fit();
            out.push(Figure {
                class,
                median: median(all.clone()),
                min: sorted[0],
                max: sorted[sorted.len() - 1],
                action: got[got.len() - 1].action,
                all,
            });
        }
        out
    }

    fn find(&self, config: usize, class: Class) -> Option<Figure> {
        self.figures(config).into_iter().find(|f| f.class == class)
    }

    /// Median over the median of the class's baseline.
    pub fn ratio(&self, config: usize, f: &Figure) -> Option<f64> {
        let base = self.find(config, f.class.baseline()?)?;
        Some(f.median / base.median)
    }

    fn path_name(&self) -> &'static str {
        match self.path {
            FwdPath::Tx => "XDP_TX (in and out of veth v0)",
            FwdPath::Redirect => "XDP_REDIRECT (in on lo, out of veth v0 through the devmap)",
        }
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nns per packet, BPF_PROG_TEST_RUN through the restoring harness: {} repetitions, median of {} runs, forwarding path {}{}",
            self.repeat,
            self.runs,
            self.path_name(),
            if self.quick { "; QUICK RUN, not for quoting" } else { "" }
        );
        let _ = writeln!(
            s,
            "{}; load average {:.2} before, {:.2} after",
            if self.realtime {
                "measuring threads SCHED_FIFO"
            } else {
                "measuring threads at normal priority"
            },
            self.load.0,
            self.load.1
        );
        let _ = writeln!(
            s,
            "{:<36} {:<33} {:>8} {:>15} {:>10}  action",
            "config", "class", "ns/pkt", "min-max", "x base"
        );
        for (i, (cfg, _)) in self.configs.iter().enumerate() {
            for f in self.figures(i) {
                let ratio = self
                    .ratio(i, &f)
                    .map_or("-".to_string(), |r| format!("{r:.2}"));
                let _ = writeln!(
                    s,
                    "{:<36} {:<33} {:>8.0} {:>15} {:>10}  {}",
                    cfg.name,
                    f.class.name(),
                    f.median,
                    format!("{:.0}-{:.0}", f.min, f.max),
                    ratio,
                    action_name(f.action)
                );
            }
        }
        let _ = writeln!(
            s,
            "x base: over the baseline with the same harness work (fixed frame, or a new flow per repetition for the varying rows and new flows)"
        );
        let _ = writeln!(s, "\ngoals:");
        for line in self.goals() {
            let _ = writeln!(s, "  {line}");
        }
        s
    }

    /// One line per goal: the figure, the goal, met or missed.
    pub fn goals(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (cfg, _)) in self.configs.iter().enumerate() {
            for (class, goal) in GOALS {
                if let Some(r) = self.find(i, class).and_then(|f| self.ratio(i, &f)) {
                    out.push(format!(
                        "{}: {} {r:.2}x baseline, goal <= {goal}x: {}",
                        cfg.name,
                        class.name(),
                        if r <= goal { "met" } else { "MISSED" }
                    ));
                }
            }
        }
        for (i, (cfg, _)) in self.configs.iter().enumerate() {
            for f in self.figures(i) {
                let Some(v4) = f.class.ipv4_twin().and_then(|c| self.find(i, c)) else {
                    continue;
                };
                let over = f.median / v4.median - 1.0;
                out.push(format!(
                    "{}: {}: {:.0} ns, IPv4 {:.0} ns: {:+.1}%, goal <= +{:.0}%: {}",
                    cfg.name,
                    f.class.name(),
                    f.median,
                    v4.median,
                    over * 100.0,
                    MAX_IPV6_OVERHEAD * 100.0,
                    if over <= MAX_IPV6_OVERHEAD {
                        "met"
                    } else {
                        "MISSED"
                    }
                ));
            }
        }
        if self.configs.len() >= 2 {
            let (small, large) = (&self.configs[0].0.name, &self.configs[1].0.name);
            for f in self.figures(0).into_iter().filter(|f| f.class.is_lbctl()) {
                if let Some(g) = self.find(1, f.class) {
                    let change = g.median / f.median - 1.0;
                    out.push(format!(
                        "{}: {:.0} ns ({small}) -> {:.0} ns ({large}): {:+.1}%, goal <= +{:.0}%: {}",
                        f.class.name(),
                        f.median,
                        g.median,
                        change * 100.0,
                        MAX_DEGRADATION * 100.0,
                        if change <= MAX_DEGRADATION { "met" } else { "MISSED" }
                    ));
                }
            }
        }
        out
    }

    pub fn json(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{{");
        let _ = writeln!(s, "  \"tool\": \"lbctl-bench\",");
        let _ = writeln!(s, "  \"quick\": {},", self.quick);
        let _ = writeln!(
            s,
            "  \"kernel\": {},",
            quote(&lbctl::datapath::load::kernel_release())
        );
        let _ = writeln!(
            s,
            "  \"cpu_model\": {},",
            quote(&cpu_model().unwrap_or_else(|| "unknown".into()))
        );
        let _ = writeln!(
            s,
            "  \"nproc\": {},",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let _ = writeln!(s, "  \"pinned_cpu\": {},", self.cpu);
        let _ = writeln!(s, "  \"sched_fifo\": {},", self.realtime);
        let _ = writeln!(
            s,
            "  \"loadavg_before_after\": [{:.2}, {:.2}],",
            self.load.0, self.load.1
        );
        let _ = writeln!(s, "  \"repetitions\": {},", self.repeat);
        let _ = writeln!(s, "  \"runs\": {},", self.runs);
        let _ = writeln!(
            s,
            "  \"new_flow_repetitions_per_test_run\": {},",
            self.chunk
        );
        let _ = writeln!(s, "  \"path\": {},", quote(self.path_name()));
        let _ = writeln!(s, "  \"configs\": [");
        for (i, (cfg, setup_s)) in self.configs.iter().enumerate() {
            let _ = writeln!(s, "    {{");
            let _ = writeln!(s, "      \"name\": {},", quote(&cfg.name));
            let _ = writeln!(s, "      \"tcp_vips\": {},", cfg.tcp_vips);
            let _ = writeln!(s, "      \"udp_vips\": 1,");
            let _ = writeln!(s, "      \"backends_per_vip\": {},", cfg.backends_per_vip);
            let _ = writeln!(s, "      \"background_entries\": {},", cfg.background_flows);
            let _ = writeln!(s, "      \"setup_seconds\": {setup_s:.2},");
            let _ = writeln!(s, "      \"results\": [");
            let figures = self.figures(i);
            for (k, f) in figures.iter().enumerate() {
                let samples: Vec<String> = f.all.iter().map(|v| format!("{v:.1}")).collect();
                let ratio = self
                    .ratio(i, f)
                    .map_or("null".to_string(), |r| format!("{r:.3}"));
                let _ = writeln!(
                    s,
                    "        {{\"class\": {}, \"name\": {}, \"ns_median\": {:.1}, \"ns_min\": {:.1}, \"ns_max\": {:.1}, \"ratio_to_baseline\": {ratio}, \"baseline\": {}, \"action\": {}, \"ns_runs\": [{}]}}{}",
                    quote(f.class.key()),
                    quote(f.class.name()),
                    f.median,
                    f.min,
                    f.max,
                    f.class.baseline().map_or("null".to_string(), |b| quote(b.key())),
                    quote(action_name(f.action)),
                    samples.join(", "),
                    if k + 1 < figures.len() { "," } else { "" }
                );
            }
            let _ = writeln!(s, "      ]");
            let _ = writeln!(
                s,
                "    }}{}",
                if i + 1 < self.configs.len() { "," } else { "" }
            );
        }
        let _ = writeln!(s, "  ],");
        let goals: Vec<String> = self.goals().iter().map(|g| quote(g)).collect();
        let _ = writeln!(s, "  \"goals\": [{}]", goals.join(", "));
        let _ = writeln!(s, "}}");
        s
    }
}

use lbctl_bench::json::quote;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
