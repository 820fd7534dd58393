//! State files under /run/lbctl: what lbctl keeps about a balancer outside
//! its maps (the drain record, `drain.rs`; the health checks last applied,
//! `record.rs`; a change under way, `change::Session::run`; the open flows
//! `lbctl run` last counted, `census.rs`). One file per kind and balancer, named
//! `KIND-<netns cookie>-<balancer id>`:
//!
//! - the balancer id (`Maps::balancer_id`, its settings map's id) is what
//!   an upgrade in place keeps; the kernel hands map ids out cyclically
//!   from a 31-bit space, so a later balancer does not get it again while
//!   the record can matter;
//! - the namespace cookie (`SO_NETNS_COOKIE`, Linux 5.14+) is a 64-bit
//!   counter the kernel never hands out twice in a boot, unlike the
//!   namespace's inode number (which the records used to be keyed by);
//!   /run is emptied on boot.
//!
//! A record lives and dies with its balancer: the last detach removes it,
//! and [`sweep`] (every command that takes the namespace's lock) removes
//! every record, of any namespace, whose balancer's settings map is gone:
//! a namespace deleted without a detach frees the program and its maps.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub const DIR: &str = "/run/lbctl";

/// The kinds of record, by the prefix of their file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `drain.rs`.
    Drained,
    /// `record.rs` (a TOML file).
    Health,
    /// A change to the balancer's VIPs or backends under way
    /// (`change::Session::run`): present after one was killed, until the
    /// next repair has finished it.
    Changing,
    /// Backends whose flows' entries a change is to remove
    /// (`--on-backend-gone`): written before the change's own record goes,
    /// removed once the entries are; the next repair removes what a killed
    /// lbctl left.
    Expiring,
    /// How many entries `--on-backend-gone` removed, per VIP (`expired.rs`).
    Expired,
    /// Open flows per backend as `lbctl run` last counted them (`census.rs`).
    Census,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Drained => "drained",
            Kind::Health => "health",
            Kind::Changing => "changing",
            Kind::Expiring => "expiring",
            Kind::Expired => "expired",
            Kind::Census => "census",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Kind::Drained | Kind::Changing | Kind::Expiring | Kind::Expired | Kind::Census => "",
            Kind::Health => ".toml",
        }
    }
}

/// asm-generic's value (x86, arm64...); libc exports it for no target yet.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// This network namespace's cookie.
fn netns_cookie() -> Result<u64> {
    // SAFETY: a plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!(
            "opening a socket for the namespace cookie: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 of the length given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "reading the network namespace's cookie: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cookie)
}

/// The file of balancer `id`'s record of `kind` in this namespace.
fn path(kind: Kind, id: u32) -> Result<PathBuf> {
    Ok(PathBuf::from(DIR).join(format!(
        "{}-{}-{id}{}",
        kind.prefix(),
        netns_cookie()?,
        kind.suffix()
    )))
}

/// Writes balancer `id`'s record of `kind` (whole, then renamed into
/// place: a killed lbctl leaves the old record or the new one).
pub fn write(kind: Kind, id: u32, text: &str) -> Result<()> {
    let path = path(kind, id)?;
    std::fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    // The same record under the old name goes (`legacy_path`).
    if let Ok(old) = legacy_path(kind) {
        let _ = std::fs::remove_file(old);
    }
    Ok(())
}

/// Removes balancer `id`'s record of `kind` (none: nothing to do).
pub fn forget(kind: Kind, id: u32) -> Result<()> {
    let path = path(kind, id)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Whether balancer `id` has a record of `kind` (its own name only).
pub fn exists(kind: Kind, id: u32) -> Result<bool> {
    Ok(path(kind, id)?.exists())
}

/// Balancer `id`'s record of `kind`, if there is one; and its path, for
/// messages. A record written by lbctl before 23 (this namespace's
/// `legacy_path`) is read too: the caller checks that its text names `id`,
/// as it did then; an upgrade of the binary keeps a node drained.
pub fn read(kind: Kind, id: u32) -> Result<Option<(String, PathBuf)>> {
    for path in [path(kind, id)?, legacy_path(kind)?] {
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(Some((text, path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(None)
}

/// Where lbctl before 23 kept this namespace's record of `kind`: keyed by
/// the namespace's inode number, which the kernel hands out again.
fn legacy_path(kind: Kind) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(PathBuf::from(DIR).join(format!(
        "{}-netns-{}{}",
        kind.prefix(),
        ns.ino(),
        kind.suffix()
    )))
}

/// Removes this namespace's records of `kind`, whichever balancer they
/// name (the last detach: the balancer is gone).
pub fn clear(kind: Kind) -> Result<()> {
    remove(
        &legacy_path(kind)?
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
    )?;
    let mine = format!("{}-{}-", kind.prefix(), netns_cookie()?);
    for name in names()? {
        if name.starts_with(&mine) {
            remove(&name)?;
        }
    }
    Ok(())
}

/// Removes every record whose balancer is gone, in any namespace, the
/// records of lbctl before 23 (`KIND-netns-<inode>`) included. Returns the names removed. Best effort: a file
/// that cannot be read or removed stays for the next sweep.
pub fn sweep() -> Vec<String> {
    let mut gone = Vec::new();
    for name in names().unwrap_or_default() {
        let stale = match balancer_of(&name) {
            Some(Key::Balancer(id)) => !balancer_exists(id),
            // The old records end their first line with the balancer id.
            Some(Key::Legacy) => std::fs::read_to_string(PathBuf::from(DIR).join(&name))
                .ok()
                .and_then(|t| t.lines().next()?.split_whitespace().last()?.parse().ok())
                .is_none_or(|id| !balancer_exists(id)),
            None => false,
        };
        if stale && remove(&name).is_ok() {
            gone.push(name);
        }
    }
    gone
}

/// What a file name under DIR says of its owner.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Balancer(u32),
    Legacy,
}

/// `KIND-<cookie>-<id>[.toml][.tmp]` gives its balancer id;
/// `KIND-netns-<inode>...` is the old naming; anything else is not a
/// record lbctl knows.
fn balancer_of(name: &str) -> Option<Key> {
    let rest = [
        Kind::Drained,
        Kind::Health,
        Kind::Changing,
        Kind::Expiring,
        Kind::Expired,
        Kind::Census,
    ]
    .iter()
    .find_map(|k| name.strip_prefix(k.prefix())?.strip_prefix('-'))?;
    if rest.starts_with("netns-") {
        return Some(Key::Legacy);
    }
    let (cookie, rest) = rest.split_once('-')?;
    cookie.parse::<u64>().ok()?;
    let id = rest.split('.').next()?;
    id.parse().ok().map(Key::Balancer)
}

/// Whether a balancer with this id runs: a BPF map with the id exists and
/// is a settings map. Only "no such map" says it is gone; any other error
/// (permissions) keeps the record.
fn balancer_exists(id: u32) -> bool {
    use libbpf_rs::MapCore as _;
    match libbpf_rs::MapHandle::from_map_id(id) {
        Ok(m) => m.name() == "settings",
        Err(e) => e.kind() != libbpf_rs::ErrorKind::NotFound,
    }
}

fn names() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {DIR}")),
    };
    Ok(dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect())
}

fn remove(name: &str) -> Result<()> {
    let path = PathBuf::from(DIR).join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_whose_record() {
        assert_eq!(
            balancer_of("health-4097-812.toml"),
            Some(Key::Balancer(812))
        );
        assert_eq!(balancer_of("drained-4097-812"), Some(Key::Balancer(812)));
        assert_eq!(
            balancer_of("drained-4097-812.tmp"),
            Some(Key::Balancer(812))
        );
        assert_eq!(
            balancer_of("health-netns-4026532890.toml"),
            Some(Key::Legacy)
        );
        assert_eq!(balancer_of("drained-netns-4026532890"), Some(Key::Legacy));
        assert_eq!(balancer_of("health-x-812.toml"), None);
        assert_eq!(balancer_of("notes.txt"), None);
        assert_eq!(balancer_of("healthy-1-2"), None);
    }

    #[test]
    fn cookie_is_read() {
        // Same namespace, same cookie; never 0 (the kernel starts at 1).
        let a = netns_cookie().unwrap();
        assert_ne!(a, 0);
        assert_eq!(a, netns_cookie().unwrap());
    }
}
