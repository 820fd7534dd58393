//! Named network namespaces: create, delete, run commands and closures inside them.
//!
//! Everything that changes network state goes through a namespace this module
//! created: commands run with their network namespace switched before `exec`, and
//! closures run on a fresh thread that switched its own namespace. The calling
//! thread (a test harness thread, the demo's main thread) never leaves the host's
//! namespace, so nothing here can touch the host's interfaces, routes or sysctls.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Where `ip netns add` bind-mounts the namespaces it names.
pub const RUN_DIR: &str = "/run/netns";

/// Every namespace this lab creates starts with this, then `<pid>-<n>-<role>`.
pub const PREFIX: &str = "lbt-";

/// How long `delete` waits for killed processes to leave a namespace.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// `ip netns add` makes /run/netns a shared mount on first use; two threads doing
/// that at once can stack mounts, so namespace creation is serialised per process.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// Creates the namespace `name` and brings its loopback up.
pub fn add(name: &str) -> io::Result<()> {
    {
        let _guard = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        run_host(&["ip", "netns", "add", name])?;
    }
    exec(name, &["ip", "link", "set", "lo", "up"])?;
    Ok(())
}

/// Kills every process left in `name`, then deletes it. Missing namespace is
/// fine. The name is removed even if some process survived (that error is
/// returned), so no later run trips over it.
pub fn delete(name: &str) -> io::Result<()> {
    if !path(name).exists() {
        return Ok(());
    }
    let killed = kill_all(name);
    let deleted = run_host(&["ip", "netns", "del", name]).map(|_| ());
    killed.and(deleted)
}

/// Deletes the namespaces a lab made, newest first, emptying `created`:
/// tries every one, says each failure on stderr (prefixed `who`), returns
/// the first.
pub fn delete_all(created: &mut Vec<String>, who: &str) -> io::Result<()> {
    let mut first_error = None;
    while let Some(name) = created.pop() {
        if let Err(e) = delete(&name) {
            eprintln!("{who}: {e}");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Pids of the processes whose network namespace is `name` (`ip netns pids`).
pub fn pids(name: &str) -> io::Result<Vec<i32>> {
    let out = run_host(&["ip", "netns", "pids", name])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILLs the processes in `name` and waits (bounded) until they are gone.
/// Never kills this process: its threads may be inside the namespace, but
/// `ip netns pids` should only list it if its main thread is, which we never do.
pub fn kill_all(name: &str) -> io::Result<()> {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let victims: Vec<i32> = pids(name)?.into_iter().filter(|&p| p != me).collect();
        if victims.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "processes {victims:?} still in netns {name} after SIGKILL"
            )));
        }
        for pid in victims {
            // SAFETY: plain syscall; pid came from `ip netns pids` and is not ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Names of all namespaces currently under /run/netns (ours and others').
pub fn list() -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(RUN_DIR) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other?,
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Names of namespaces that start with `prefix`.
pub fn list_prefixed(prefix: &str) -> io::Result<Vec<String>> {
    Ok(list()?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Deletes `lbt-<pid>-*` namespaces left by runs whose process no longer exists
/// (a test binary killed by ^C or a timeout never ran its Drop guards).
/// Returns the names removed; failures are reported, not fatal.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for name in list_prefixed(PREFIX).unwrap_or_default() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        match delete(&name) {
            Ok(()) => removed.push(name),
            Err(e) => eprintln!("lab: could not sweep stale netns {name}: {e}"),
        }
    }
    removed
}

/// The pid in `lbt-<pid>-...`, if the name has that shape.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Path of the bind mount that names the namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

fn open(name: &str) -> io::Result<File> {
    File::open(path(name)).map_err(|e| io::Error::new(e.kind(), format!("netns {name}: {e}")))
}

/// Moves the calling thread into namespace `ns`. Only call on a thread you own.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns on a valid fd; affects only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
///
/// Sockets keep the namespace they were created in, so a closure can create a
/// socket here and hand it back to be used from any thread. A panic in `f` is
/// re-raised in the caller.
pub fn in_ns<T, F>(ns: &str, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = open(ns)?;
    thread::scope(|s| {
        let worker = s.spawn(move || {
            enter(&file).map_err(|e| io::Error::new(e.kind(), format!("setns {ns}: {e}")))?;
            Ok(f())
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `in_ns` for closures that return a `Result`, flattening the two error layers.
pub fn try_in_ns<T, E, F>(ns: &str, f: F) -> Result<T, E>
where
    T: Send,
    E: From<io::Error> + Send,
    F: FnOnce() -> Result<T, E> + Send,
{
    in_ns(ns, f)?
}

/// Writes a sysctl of namespace `ns`, e.g. `("net/ipv4/ip_forward", "1")`.
/// /proc/sys/net resolves to the namespace of the thread that opens it.
pub fn write_sysctl(ns: &str, key: &str, value: &str) -> io::Result<()> {
    let file = format!("/proc/sys/{key}");
    in_ns(ns, || std::fs::write(&file, value))?
        .map_err(|e| io::Error::new(e.kind(), format!("netns {ns}: write {file}: {e}")))
}

/// Reads a sysctl of namespace `ns` (trimmed).
pub fn read_sysctl(ns: &str, key: &str) -> io::Result<String> {
    let file = format!("/proc/sys/{key}");
    let text = in_ns(ns, || std::fs::read_to_string(&file))?
        .map_err(|e| io::Error::new(e.kind(), format!("netns {ns}: read {file}: {e}")))?;
    Ok(text.trim().to_string())
}

/// A command whose network namespace is switched to `ns` between fork and exec.
///
/// Unlike `ip netns exec`, only the network namespace changes (like `nsenter
/// --net`): no new mount namespace per command, which is cheaper. lbctl works
/// either way; `tests/cli.rs` exercises `ip netns exec`.
pub fn command<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> io::Result<Command> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let file = open(ns)?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    // SAFETY: the hook only calls setns(2), which is async-signal-safe. The fd is
    // O_CLOEXEC (std opens files that way), so the program does not inherit it.
    unsafe {
        cmd.pre_exec(move || enter(&file));
    }
    Ok(cmd)
}

/// Runs `argv` inside `ns`; returns stdout, or an error carrying the exit status
/// and stderr.
pub fn exec<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> io::Result<String> {
    let output = command(ns, argv)?.stdin(Stdio::null()).output();
    checked(&format!("in netns {ns}"), argv, output)
}

/// Starts `argv` inside `ns` without waiting (stdout/stderr inherited). The
/// caller owns the child; `Lab`'s Drop kills anything still in its namespaces.
pub fn spawn<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> io::Result<Child> {
    command(ns, argv)?.stdin(Stdio::null()).spawn()
}

/// Runs a namespace-management command (`ip netns ...`) in the host namespace.
fn run_host<S: AsRef<OsStr>>(argv: &[S]) -> io::Result<String> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let output = Command::new(prog).args(args).stdin(Stdio::null()).output();
    checked("on host", argv, output)
}

/// Turns a finished command into stdout or a one-line error with its stderr.
fn checked<S: AsRef<OsStr>>(
    place: &str,
    argv: &[S],
    output: io::Result<Output>,
) -> io::Result<String> {
    let line = argv
        .iter()
        .map(|a| a.as_ref().to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let output = output.map_err(|e| io::Error::new(e.kind(), format!("{place}: `{line}`: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(io::Error::other(format!(
            "{place}: `{line}` failed ({}): {}",
            output.status,
            stderr.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
