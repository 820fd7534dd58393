//! Checks before loading, and loading the XDP program with errors a person
//! can act on.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{OpenObject, PrintLevel};

use super::abi::LB_FLOW_CACHE_ENTRIES;
use super::maps::Maps;
use super::skel::{LbSkel, LbSkelBuilder};

/// The oldest kernel with every kfunc lbctl uses (`bpf_ct_set_nat_info`).
pub const MIN_KERNEL: (u32, u32) = (6, 1);

/// Root, or at least the capabilities lbctl needs.
pub fn require_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    bail!("lbctl must run as root (it needs CAP_BPF and CAP_NET_ADMIN): try sudo lbctl ...")
}

/// The running kernel's release string, e.g. "6.1.0-28-amd64".
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// (major, minor) of a release string.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Test hook: `LBCTL_FAULT_INJECT=no-btf|old-kernel|missing-kfunc` makes
/// lbctl behave as it would on such a kernel, so the error paths are tested
/// on any machine.
pub fn fault_injected(what: &str) -> bool {
    std::env::var("LBCTL_FAULT_INJECT").is_ok_and(|v| v == what)
}

pub fn require_kernel() -> Result<()> {
    let release = if fault_injected("old-kernel") {
        "5.15.0-fault-injected".into()
    } else {
        kernel_release()
    };
    match parse_release(&release) {
        Some(v) if v >= MIN_KERNEL => Ok(()),
        Some(_) => bail!(
            "lbctl needs Linux {}.{} or newer (conntrack kfuncs with NAT); this kernel is {release}",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        ),
        None => Ok(()), // unknown format: let the load decide
    }
}

pub fn require_btf() -> Result<()> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() && !fault_injected("no-btf") {
        return Ok(());
    }
    bail!(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): lbctl needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )
}

/// Where conntrack and NAT are modules (Debian's 6.1), load them first: the
/// program's kfuncs and types live in them.
pub fn load_conntrack_modules() {
    let missing: Vec<&str> = ["nf_conntrack", "nf_nat"]
        .into_iter()
        .filter(|m| !Path::new("/sys/module").join(m).exists())
        .collect();
    if !missing.is_empty() {
        let _ = Command::new("modprobe").arg("-q").args(&missing).status();
    }
}

static LIBBPF_LOG: Mutex<String> = Mutex::new(String::new());

fn collect_libbpf_log(_level: PrintLevel, msg: String) {
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        if log.len() < 1 << 20 {
            log.push_str(&msg);
        }
    }
}

/// libbpf's messages are kept, not printed: lbctl says what failed in one
/// line, and `LBCTL_DEBUG=1` prints the log as well.
pub fn capture_libbpf_log() {
    libbpf_rs::set_print(Some((PrintLevel::Debug, collect_libbpf_log)));
}

fn take_libbpf_log() -> String {
    LIBBPF_LOG
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
}

/// Turns a failed load into a message about its cause.
fn explain_load_error(err: libbpf_rs::Error, log: &str) -> anyhow::Error {
    if std::env::var_os("LBCTL_DEBUG").is_some() {
        eprintln!("{log}");
    }
    // libbpf logs every kfunc it resolves too ("...: resolved to ..."): only
    // one it could not find (or whose type differs) means a kernel without it.
    let kfunc = log.lines().find_map(|l| {
        let i = l.find("extern (func ksym) '")?;
        if !(l.contains("not found") || l.contains("incompatible")) {
            return None;
        }
        l[i + 20..].split('\'').next().map(str::to_owned)
    });
    if let Some(kfunc) = kfunc {
        return anyhow!(
            "this kernel ({}) lacks the conntrack kfunc {kfunc}: lbctl needs Linux {}.{} or newer with nf_conntrack and nf_nat (modprobe nf_conntrack nf_nat)",
            kernel_release(),
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect();
    anyhow!(
        "the kernel refused lbctl's XDP program ({err}); last libbpf lines: {} (LBCTL_DEBUG=1 shows all)",
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )
}

/// Opens and loads the program. With `reuse`, the new program shares the
/// maps of a running balancer (upgrade in place keeps every table and
/// counter); without, it gets fresh maps.
pub fn load<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    reuse: Option<&Maps>,
) -> Result<LbSkel<'obj>> {
    load_sized(storage, reuse, LB_FLOW_CACHE_ENTRIES)
}

/// As `load`, with a flow cache of `flow_cache_entries` entries (the cache
/// is never reused: a new program starts with an empty one).
pub fn load_sized<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    reuse: Option<&Maps>,
    flow_cache_entries: u32,
) -> Result<LbSkel<'obj>> {
    load_opts(storage, reuse, flow_cache_entries, None)
}

/// For tests: as `load`, with kernel config values (`"CONFIG_HZ=1000"`)
/// that override the running kernel's for the program's `__kconfig`
/// externs, so a test can run the program as a kernel so configured would.
pub fn load_with_kconfig<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    kconfig: Option<&str>,
) -> Result<LbSkel<'obj>> {
    load_opts(storage, None, LB_FLOW_CACHE_ENTRIES, kconfig)
}

fn load_opts<'obj>(
    storage: &'obj mut MaybeUninit<OpenObject>,
    reuse: Option<&Maps>,
    flow_cache_entries: u32,
    kconfig: Option<&str>,
) -> Result<LbSkel<'obj>> {
    capture_libbpf_log();
    let kconfig = kconfig
        .map(std::ffi::CString::new)
        .transpose()
        .context("kernel config values with a NUL byte")?;
    let builder = LbSkelBuilder::default();
    let open = match &kconfig {
        None => builder.open(storage),
        Some(values) => {
            let opts = libbpf_rs::libbpf_sys::bpf_object_open_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_object_open_opts>() as _,
                kconfig: values.as_ptr(),
                ..Default::default()
            };
            builder.open_opts(opts, storage)
        }
    };
    let mut open = open.context("opening lbctl's BPF object")?;
    open.maps
        .flow_cache
        .set_max_entries(flow_cache_entries)
        .context("sizing the flow cache")?;
    if let Some(maps) = reuse {
        for mut map in open.open_object_mut().maps_mut() {
            if let Some(running) = maps.to_reuse(map.name()) {
                // The running program's verdict counters, from before
                // `reasons` had room for verdicts to come: the new program
                // counts in its own (they start again at zero).
                if running.name() == "reasons" && running.max_entries() != map.max_entries() {
                    continue;
                }
                map.reuse_fd(running.handle().as_fd()).with_context(|| {
                    format!("reusing the running balancer's map {}", running.name())
                })?;
            }
        }
    }
    let result = if fault_injected("missing-kfunc") {
        // Test hook: behave as a kernel without the conntrack kfuncs would.
        collect_libbpf_log(
            PrintLevel::Warn,
            "libbpf: extern (func ksym) 'bpf_ct_set_nat_info': not found in kernel or module BTFs\n".into(),
        );
        Err(libbpf_rs::Error::from_raw_os_error(libc::ESRCH))
    } else {
        open.load()
    };
    result.map_err(|e| explain_load_error(e, &take_libbpf_log()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_rejection_is_not_called_a_missing_kfunc() {
        let err = || libbpf_rs::Error::from_raw_os_error(libc::EACCES);
        let resolved =
            "libbpf: extern (func ksym) 'bpf_ct_release': resolved to nf_conntrack [1234]\n\
                        invalid access to packet\nlibbpf: failed to load object 'lb_bpf'\n";
        let msg = explain_load_error(err(), resolved).to_string();
        assert!(msg.contains("refused lbctl's XDP program"), "{msg}");
        let missing = "libbpf: extern (func ksym) 'bpf_ct_set_nat_info': not found in kernel or module BTFs\n";
        let msg = explain_load_error(err(), missing).to_string();
        assert!(
            msg.contains("lacks the conntrack kfunc bpf_ct_set_nat_info"),
            "{msg}"
        );
    }

    #[test]
    fn release_versions() {
        assert_eq!(parse_release("6.1.0-28-amd64"), Some((6, 1)));
        assert_eq!(parse_release("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert!(parse_release("5.15.0").unwrap() < MIN_KERNEL);
        assert_eq!(parse_release("weird"), None);
    }
}
