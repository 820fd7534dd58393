//! The one place lbctl runs `ip` (iproute2), for its managed neighbour
//! entries (`neighbour.rs`) and its VIP routes (`routes.rs`). It runs it in
//! the C locale; callers decide on exit codes and on what `ip -o` prints on
//! stdout, never on the text of an error.

use std::process::Command;

/// Runs `ip ARGS` in the C locale. Its stdout on success; otherwise a line
/// to show a person (the exit status and what `ip` said), never to decide on.
pub(crate) fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("could not run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
