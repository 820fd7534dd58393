//! Where the receive work runs. A veth's NAPI normally runs as a softirq on
//! whichever CPU woke it, here the generator's: the balancer's work would mix
//! with the generator's. Threaded NAPI (`/sys/class/net/DEV/threaded`) moves
//! each interface's receive work into a kernel thread `napi/DEV-ID` that can
//! be pinned to a CPU and whose CPU time can be read, so "per core" means
//! one thread on one CPU, measured.

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One interface's NAPI kernel thread.
#[derive(Clone, Debug)]
pub struct NapiThread {
    pub pid: i32,
    pub name: String,
    /// The CPU it is pinned to; None: wherever the scheduler puts it.
    pub cpu: Option<usize>,
    ns: String,
    iface: String,
}

impl NapiThread {
    /// Switches `iface` of namespace `ns` to threaded NAPI and pins the new
    /// thread to `cpu` (if given). The interface must have exactly one NAPI
    /// context (a veth with one queue and GRO or XDP on).
    pub fn start(ns: &str, iface: &str, cpu: Option<usize>) -> Result<NapiThread> {
        let prefix = format!("napi/{iface}-");
        let before = threads_named(&prefix);
        set_threaded(ns, iface, true)?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let new: Vec<(i32, String)> = threads_named(&prefix)
                .into_iter()
                .filter(|t| !before.contains(t))
                .collect();
            match new.as_slice() {
                [(pid, name)] => {
                    let t = NapiThread {
                        pid: *pid,
                        name: name.clone(),
                        cpu,
                        ns: ns.to_string(),
                        iface: iface.to_string(),
                    };
                    t.pin()?;
                    return Ok(t);
                }
                [] if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                [] => bail!("no napi/{iface}-* thread appeared for {iface} in {ns}"),
                many => bail!("several new NAPI threads for {iface}: {many:?}"),
            }
        }
    }

    /// Back to the kernel's default: NAPI as a softirq; the thread exits.
    pub fn stop(self) -> Result<()> {
        set_threaded(&self.ns, &self.iface, false)
    }

    fn pin(&self) -> Result<()> {
        match self.cpu {
            Some(cpu) => {
                pin(self.pid, cpu).with_context(|| format!("pinning {} to CPU {cpu}", self.name))
            }
            None => Ok(()),
        }
    }

    /// CPU time the thread has run, in ns (schedstat).
    pub fn cpu_ns(&self) -> Result<u64> {
        Ok(self.schedstat()?.0)
    }

    /// Time the thread was runnable but waited for its CPU, in ns.
    pub fn wait_ns(&self) -> Result<u64> {
        Ok(self.schedstat()?.1)
    }

    fn schedstat(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/schedstat", self.pid);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(run)), Some(Ok(wait))) => Ok((run, wait)),
            _ => bail!("{path}: unexpected {text:?}"),
        }
    }

    /// Still the same thread, still on its CPU (the kernel recreates NAPI
    /// threads when a device's NAPI contexts are rebuilt).
    pub fn check(&self) -> Result<()> {
        let comm = fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        if comm.trim() != self.name {
            bail!("NAPI thread {} (pid {}) is gone", self.name, self.pid);
        }
        self.pin()
    }
}

fn set_threaded(ns: &str, iface: &str, on: bool) -> Result<()> {
    // sysfs shows the namespace of whoever mounted it: `ip netns exec`
    // mounts the namespace's own /sys for the command.
    let script = format!("echo {} > /sys/class/net/{iface}/threaded", on as u8);
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .context("running ip netns exec")?;
    if !out.status.success() {
        bail!(
            "threaded NAPI {} on {iface} in {ns}: {}",
            if on { "on" } else { "off" },
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// (pid, comm) of every thread whose name starts with `prefix`.
fn threads_named(prefix: &str) -> BTreeSet<(i32, String)> {
    let mut out = BTreeSet::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(entry.path().join("comm")) {
            let comm = comm.trim();
            if comm.starts_with(prefix) {
                out.insert((pid, comm.to_string()));
            }
        }
    }
    out
}

/// CPU time of every thread of process `pid`, in ns (schedstat).
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread that just exited has no schedstat any more.
        if let Ok(text) = fs::read_to_string(&path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Restricts thread `pid` (0: the calling thread) to one CPU.
pub fn pin(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// Puts thread `pid` (0: the calling thread) under SCHED_FIFO at `prio`
/// (1-99), or back to SCHED_OTHER with prio 0.
pub fn set_fifo(pid: i32, prio: i32) -> Result<()> {
    let policy = if prio > 0 {
        libc::SCHED_FIFO
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: plain syscall with a valid sched_param.
    if unsafe { libc::sched_setscheduler(pid, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Busy and total jiffies of each CPU, from /proc/stat.
#[derive(Clone, Debug, Default)]
pub struct CpuTimes(pub Vec<(u64, u64)>);

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let text = fs::read_to_string("/proc/stat").unwrap_or_default();
        let mut cpus = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(name) = words.next() else { continue };
            if !name.starts_with("cpu") || name == "cpu" {
                continue;
            }
            let v: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            cpus.push((total - idle, total));
        }
        CpuTimes(cpus)
    }

    /// Busy fraction of each CPU between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &CpuTimes) -> Vec<f64> {
        self.0
            .iter()
            .zip(&earlier.0)
            .map(|(&(b1, t1), &(b0, t0))| {
                let t = t1.saturating_sub(t0);
                if t == 0 {
                    0.0
                } else {
                    b1.saturating_sub(b0) as f64 / t as f64
                }
            })
            .collect()
    }
}
