//! SIGHUP, SIGTERM and SIGINT as messages: blocked in every thread (call
//! `block` before starting any), and taken by one thread with sigwait(2)
//! that hands each to the service's loop. No handler runs in signal
//! context.

use std::sync::mpsc::Sender;
use std::thread;

use anyhow::{bail, Result};

/// The signals the service acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Reload the configuration file.
    Hangup,
    /// Stop (SIGTERM, SIGINT).
    Terminate(&'static str),
}

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the three signals in the calling thread, and so in every thread
/// it starts afterwards.
pub fn block() -> Result<()> {
    let set = set();
    // SAFETY: a valid set; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        bail!("blocking signals: {}", std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Starts the thread that waits for the signals and sends `wrap(signal)`.
pub fn forward<E: Send + 'static>(out: Sender<E>, wrap: fn(Signal) -> E) {
    thread::spawn(move || loop {
        let set = set();
        let mut sig: libc::c_int = 0;
        // SAFETY: a valid set and an int to receive the signal number.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        let signal = match sig {
            libc::SIGHUP => Signal::Hangup,
            libc::SIGINT => Signal::Terminate("SIGINT"),
            _ => Signal::Terminate("SIGTERM"),
        };
        if out.send(wrap(signal)).is_err() {
            return;
        }
    });
}
