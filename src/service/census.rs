//! `lbctl run` counting the open flows per backend in the background
//! (`host::census`): a thread takes a census of the conntrack table, keeps
//! it for `/metrics` and records it for `list --stats`, then waits
//! `census::period` (5 s, or ten times as long as the count took) before
//! the next. A scrape or a listing then costs the same at any table size.

use std::sync::{Arc, Mutex};
use std::thread;

use crate::datapath::balancer::Balancer;
use crate::host::census::{self, Census};

/// The last census, shared with the metrics.
#[derive(Clone, Default)]
pub struct Latest(Arc<Mutex<Option<Arc<Census>>>>);

impl Latest {
    /// The last census, if one was taken.
    pub fn get(&self) -> Option<Arc<Census>> {
        self.0.lock().ok()?.clone()
    }

    fn set(&self, c: Census) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Arc::new(c));
        }
    }

    /// Starts the counting thread (in the calling thread's namespace, the
    /// balancer's); it runs as long as the process.
    pub fn spawn() -> Latest {
        let latest = Latest::default();
        let shared = latest.clone();
        let _ = thread::Builder::new()
            .name("lbctl-census".into())
            .spawn(move || {
                let mut failing = String::new();
                loop {
                    let took = match count() {
                        Ok(c) => {
                            failing.clear();
                            let took = c.took;
                            shared.set(c);
                            took
                        }
                        Err(e) => {
                            // Once per distinct error, not every period.
                            let msg = format!("{e:#}");
                            if msg != failing {
                                eprintln!("lbctl: counting open flows: {msg}");
                                failing = msg;
                            }
                            Default::default()
                        }
                    };
                    thread::sleep(census::period(took));
                }
            });
        latest
    }
}

/// One census, recorded for the balancer that runs now (its id may change
/// with a detach and attach while the service runs).
fn count() -> anyhow::Result<Census> {
    let b = Balancer::require()?;
    let id = b.maps.balancer_id()?;
    let c = Census::take(&b.maps.running()?.vip_ports())?;
    c.save(id)?;
    Ok(c)
}
