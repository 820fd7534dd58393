//! `lbctl check -f FILE`: the whole file checked as `apply` checks it
//! before changing anything, without a balancer: no root, nothing read but
//! the file and the host's interface names, nothing changed. For
//! `ExecStartPre`, CI pipelines and configuration-management hooks, as
//! `nginx -t` or `haproxy -c`. One line per problem, `FILE:LINE: what`,
//! in line order, and exit 1 if there is any; a warning (an interface this
//! host does not have: the file may be meant for another) does not fail it.
//! What only the running balancer can tell (its hash seed and flow cache
//! size, fullnat's default source address) is left to `apply`.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Result};

use crate::config_file::{self, FileError, Parsed};
use crate::host::iface;
use crate::service::apply;

/// What `check` found in a file.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<FileError>,
    pub warnings: Vec<FileError>,
    /// VIPs and backends, when the file is valid.
    pub counts: Option<(usize, usize)>,
}

/// Checks the file at `path`.
pub fn check(path: &Path) -> Report {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return Report {
                errors: vec![FileError {
                    line: None,
                    message: format!("cannot read it: {e}"),
                }],
                ..Default::default()
            }
        }
    };
    match config_file::parse_all(&text) {
        Err(errors) => Report {
            errors,
            ..Default::default()
        },
        Ok(parsed) => beyond_the_file(&parsed),
    }
}

/// The checks `apply` makes of a valid file before it changes anything
/// that need no balancer (`apply::offline_problems`: the same function),
/// each placed on its VIP's line; and the interfaces, which only warn.
fn beyond_the_file(parsed: &Parsed) -> Report {
    let d = &parsed.desired;
    let mut report = Report::default();
    let at = |line: usize, message: String| FileError {
        line: Some(line),
        message,
    };
    for (vip, message) in apply::offline_problems(d) {
        report.errors.push(FileError {
            line: vip.and_then(|i| parsed.vip_lines.get(i).copied()),
            message,
        });
    }
    let backends: usize = d.vips.iter().map(|v| v.backends.len()).sum();
    for (name, &line) in d.interfaces.iter().zip(&parsed.interface_lines) {
        if iface::ifindex(name).is_err() {
            report.warnings.push(at(
                line,
                format!("interface {name} does not exist on this host (lbctl run would fail to attach it here)"),
            ));
        }
    }
    if report.errors.is_empty() {
        report.counts = Some((d.vips.len(), backends));
    }
    report
}

/// A problem as `check` prints it: `FILE:LINE: what` (compilers' form, which
/// editors and CI logs link to).
struct Located<'a>(&'a Path, &'a FileError, &'static str);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let Located(path, e, kind) = self;
        match e.line {
            Some(line) => write!(f, "{}:{line}: {kind}{}", path.display(), e.message),
            None => write!(f, "{}: {kind}{}", path.display(), e.message),
        }
    }
}

pub fn run(path: &Path) -> Result<()> {
    let report = check(path);
    for w in &report.warnings {
        eprintln!("{}", Located(path, w, "warning: "));
    }
    for e in &report.errors {
        eprintln!("{}", Located(path, e, ""));
    }
    let n = report.errors.len();
    if n == 0 {
        let (vips, backends) = report.counts.unwrap_or_default();
        println!("{}: ok: {vips} VIPs, {backends} backends", path.display());
        return Ok(());
    }
    bail!(
        "{}: {n} problem{}",
        path.display(),
        if n == 1 { "" } else { "s" }
    )
}
