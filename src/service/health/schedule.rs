//! When each backend is probed: every target once per its interval, the
//! targets of one VIP offset evenly across the interval (backend i of n
//! starts at i/n of it), so checks are spread out rather than sent in
//! bursts. A scheduler thread hands due probes to a few worker threads;
//! each result goes to the service's loop as it comes. Threads stop when
//! the `Checker` is dropped (within a probe's timeout).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::probe::Failure;
use super::Target;
use crate::model::Service;

/// Most probes in flight at once.
pub const MAX_WORKERS: usize = 32;
/// How often the scheduler looks at the stop flag when idle.
const TICK: Duration = Duration::from_millis(50);

/// One probe's outcome.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// The checker that made it (`Checker::start`'s generation).
    pub generation: u64,
    /// Index into the checker's targets.
    pub target: usize,
    pub result: Result<(), Failure>,
    pub latency: Duration,
}

pub struct Checker {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// When target i first runs after `start`: evenly spread over its interval
/// among the targets of its VIP.
pub fn first_due(targets: &[Target], start: Instant) -> Vec<Instant> {
    let mut per_vip: HashMap<Service, (usize, usize)> = HashMap::new();
    for t in targets {
        per_vip.entry(t.service).or_default().1 += 1;
    }
    targets
        .iter()
        .map(|t| {
            let slot = per_vip.get_mut(&t.service).expect("counted above");
            let (i, n) = (slot.0, slot.1);
            slot.0 += 1;
            start + t.check.interval.mul_f64(i as f64 / n as f64)
        })
        .collect()
}

impl Checker {
    /// Starts probing `targets`; results go to `out` (as `wrap(result)`).
    pub fn start<E: Send + 'static>(
        targets: Vec<Target>,
        generation: u64,
        out: Sender<E>,
        wrap: fn(CheckResult) -> E,
    ) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if targets.is_empty() {
            return Checker { stop, threads };
        }
        let targets = Arc::new(targets);
        let (work_tx, work_rx) = mpsc::channel::<usize>();
        let work_rx = Arc::new(Mutex::new(work_rx));
        for _ in 0..targets.len().min(MAX_WORKERS) {
            let (targets, work_rx, out, stop) =
                (targets.clone(), work_rx.clone(), out.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                worker(&targets, generation, &work_rx, &out, wrap, &stop)
            }));
        }
        let s = stop.clone();
        threads.push(thread::spawn(move || scheduler(&targets, work_tx, &s)));
        Checker { stop, threads }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn scheduler(targets: &[Target], work: Sender<usize>, stop: &AtomicBool) {
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = first_due(targets, Instant::now())
        .into_iter()
        .enumerate()
        .map(|(i, at)| Reverse((at, i)))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let Some(&Reverse((at, i))) = due.peek() else {
            return;
        };
        let now = Instant::now();
        if at > now {
            thread::sleep((at - now).min(TICK));
            continue;
        }
        due.pop();
        if work.send(i).is_err() {
            return;
        }
        // The next one a whole interval after this one was due; if the
        // workers fell behind by more than that, from now.
        let next = (at + targets[i].check.interval).max(now);
        due.push(Reverse((next, i)));
    }
}

fn worker<E>(
    targets: &[Target],
    generation: u64,
    work: &Mutex<Receiver<usize>>,
    out: &Sender<E>,
    wrap: fn(CheckResult) -> E,
    stop: &AtomicBool,
) {
    loop {
        let next = match work.lock() {
            Ok(rx) => rx.recv_timeout(TICK),
            Err(_) => return,
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let i = match next {
            Ok(i) => i,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let t = &targets[i];
        let started = Instant::now();
        let result = t.run();
        let r = CheckResult {
            generation,
            target: i,
            result,
            latency: started.elapsed(),
        };
        if out.send(wrap(r)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CheckKind, HealthCheck, Proto};

    #[test]
    fn a_vips_backends_are_spread_over_its_interval() {
        let check = |ms| HealthCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(ms),
            timeout: Duration::from_millis(100),
            rise: 1,
            fall: 1,
            port: None,
            start: crate::model::StartHealth::Down,
        };
        let svc = |p| Service {
            addr: SocketAddr::from(([198, 18, 100, 1], p)),
            proto: Proto::Tcp,
        };
        use std::net::SocketAddr;
        let mut targets = Vec::new();
        for i in 0..4u8 {
            targets.push(Target {
                service: svc(80),
                backend: SocketAddr::from(([198, 18, 1, 10 + i], 8080)),
                check: check(800),
                path: None,
            });
        }
        targets.push(Target {
            service: svc(81),
            backend: SocketAddr::from(([198, 18, 1, 10], 8080)),
            check: check(1000),
            path: None,
        });
        let t0 = Instant::now();
        let offsets: Vec<u128> = first_due(&targets, t0)
            .iter()
            .map(|at| (*at - t0).as_millis())
            .collect();
        assert_eq!(offsets, [0, 200, 400, 600, 0]);
    }
}
