//! Short TCP connections through a balancer: `workers` threads in the client
//! namespace, each repeating connect + `GET / HTTP/1.0` + read to the
//! server's close + close against the VIP (the lab's HTTP servers behind
//! it), until the time or the connection budget is used up.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;

use lbctl_lab::clients::{self, ClientError};
use lbctl_lab::lab::Lab;

/// Per connection: the handshake, and the whole exchange after it.
const CONN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub struct ConnLoad {
    pub workers: usize,
    pub duration: Duration,
    pub max_conns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ConnSample {
    pub workers: usize,
    pub seconds: f64,
    pub ok: u64,
    /// Failed connections by kind (refused, reset, timeout, ...).
    pub errors: BTreeMap<String, u64>,
    /// connect + request + response, µs, sorted.
    pub latencies_us: Vec<u32>,
    /// Connections per backend name.
    pub spread: BTreeMap<String, u64>,
    pub loadavg: f64,
    /// CPU time of the balancer: its interfaces' NAPI threads, plus the
    /// HAProxy process when that is the balancer. Only measured with
    /// threaded NAPI; in softirq mode its work hides in other contexts.
    pub balancer_cpu_s: Option<f64>,
    /// CPU time of this process: the clients and the backends' servers.
    pub lab_cpu_s: f64,
    /// Busy fraction of each CPU (all work on the machine).
    pub cpu_busy: Vec<f64>,
}

impl ConnSample {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Balancer CPU per successful connection, µs.
    pub fn balancer_us_per_conn(&self) -> Option<f64> {
        Some(self.balancer_cpu_s? * 1e6 / self.ok.max(1) as f64)
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Percentile `p` (0-100) of the latencies in ms.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let n = self.latencies_us.len();
        let i = ((p / 100.0) * (n - 1) as f64).round() as usize;
        self.latencies_us[i.min(n - 1)] as f64 / 1000.0
    }
}

struct Worker {
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    spread: BTreeMap<String, u64>,
}

pub fn run(lab: &Lab, vip: Ipv4Addr, port: u16, load: &ConnLoad) -> Result<ConnSample> {
    let load = *load;
    let (workers, seconds) = lab.in_client(|| -> Result<(Vec<Worker>, f64)> {
        let started = AtomicU64::new(0);
        let start = Instant::now();
        let deadline = start + load.duration;
        // Threads spawned here inherit this thread's network namespace.
        let workers = thread::scope(|s| {
            let handles: Vec<_> = (0..load.workers)
                .map(|_| s.spawn(|| work(vip, port, deadline, &started, load.max_conns)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("connection worker panicked"))
                .collect::<Vec<_>>()
        });
        Ok((workers, start.elapsed().as_secs_f64()))
    })?;
    let mut sample = ConnSample {
        workers: load.workers,
        seconds,
        loadavg: lbctl_bench::loadavg(),
        ..Default::default()
    };
    for w in workers {
        sample.latencies_us.extend(w.latencies_us);
        for (k, v) in w.errors {
            *sample.errors.entry(k).or_default() += v;
        }
        for (k, v) in w.spread {
            *sample.spread.entry(k).or_default() += v;
        }
    }
    sample.ok = sample.latencies_us.len() as u64;
    sample.latencies_us.sort_unstable();
    Ok(sample)
}

fn work(vip: Ipv4Addr, port: u16, deadline: Instant, started: &AtomicU64, max: u64) -> Worker {
    let mut w = Worker {
        latencies_us: Vec::new(),
        errors: BTreeMap::new(),
        spread: BTreeMap::new(),
    };
    while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < max {
        let t0 = Instant::now();
        match clients::http_backend(vip, port, CONN_TIMEOUT) {
            Ok(name) => {
                let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                w.latencies_us.push(us);
                *w.spread.entry(name).or_default() += 1;
            }
            Err(e) => *w.errors.entry(kind(&e).to_string()).or_default() += 1,
        }
    }
    w
}

fn kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Refused => "refused",
        ClientError::Reset => "reset",
        ClientError::Timeout(_) => "timeout",
        ClientError::Closed { .. } => "closed",
        ClientError::WrongBytes { .. } | ClientError::WrongBackend { .. } => "wrong bytes",
        ClientError::Protocol(_) => "protocol",
        ClientError::Io(_) => "io",
    }
}
