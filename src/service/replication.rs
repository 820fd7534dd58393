//! `lbctl run` watching conntrackd (README, "Stateful failover"): a thread
//! asks its control socket for its statistics every second and keeps the
//! last answer and when its messages last went out and came in. conntrackd
//! keeps no such times itself; sampled here, `/metrics` can say when the
//! peer was last heard from, not only whether the channel is connected.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::host::conntrackd::{self, Channel, SyncStats};

/// How often conntrackd is asked (its reply is a few KiB of text).
const INTERVAL: Duration = Duration::from_secs(1);

/// What the watcher knows at one moment.
#[derive(Clone, Debug, Default)]
pub struct Replication {
    /// Whether the last request was answered.
    pub up: bool,
    /// The last answer.
    pub stats: Option<SyncStats>,
    /// When the channel's sent and received message counts last grew.
    pub last_sent: Option<SystemTime>,
    pub last_received: Option<SystemTime>,
}

impl Replication {
    /// Folds a new sample in.
    fn observe(&mut self, sample: Option<SyncStats>, now: SystemTime) {
        self.up = sample.is_some();
        let Some(new) = sample else {
            return;
        };
        let before = self.stats.as_ref().and_then(SyncStats::channel);
        let after = new.channel();
        // A restarted conntrackd counts from zero again: any change is news.
        let grew = |f: fn(&Channel) -> Option<u64>| {
            let count = after.and_then(f);
            count.unwrap_or(0) > 0 && count != before.and_then(f)
        };
        if grew(|c| c.messages_sent) {
            self.last_sent = Some(now);
        }
        if grew(|c| c.messages_received) {
            self.last_received = Some(now);
        }
        self.stats = Some(new);
    }
}

/// A watcher's shared state and whether its metrics are shown: always for
/// a socket given with `--conntrackd`, else once a conntrackd has answered
/// at the default socket (a host that replicates nothing shows none).
#[derive(Clone)]
pub struct Watch {
    state: Arc<Mutex<Replication>>,
    explicit: bool,
}

impl Watch {
    /// Starts the thread asking `socket` (the default one where None).
    pub fn spawn(socket: Option<PathBuf>) -> Watch {
        let explicit = socket.is_some();
        let socket = socket.unwrap_or_else(|| conntrackd::DEFAULT_SOCKET.into());
        let w = Watch {
            state: Arc::default(),
            explicit,
        };
        let state = w.state.clone();
        let _ = thread::Builder::new()
            .name("lbctl-conntrackd".into())
            .spawn(move || loop {
                let sample = conntrackd::query(&socket).ok();
                if let Ok(mut s) = state.lock() {
                    s.observe(sample, SystemTime::now());
                }
                thread::sleep(INTERVAL);
            });
        w
    }

    /// The state to show, or None when replication metrics are not shown.
    pub fn read(&self) -> Option<Replication> {
        let s = self.state.lock().ok()?.clone();
        (self.explicit || s.stats.is_some()).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent: u64, received: u64) -> Option<SyncStats> {
        Some(SyncStats {
            channels: vec![Channel {
                messages_sent: Some(sent),
                messages_received: Some(received),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    #[test]
    fn times_follow_the_counts_that_move() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let mut r = Replication::default();
        r.observe(sample(3, 0), t(1));
        assert_eq!(
            (r.up, r.last_sent, r.last_received),
            (true, Some(t(1)), None)
        );
        r.observe(sample(3, 2), t(2));
        assert_eq!((r.last_sent, r.last_received), (Some(t(1)), Some(t(2))));
        r.observe(None, t(3));
        assert!(!r.up);
        assert_eq!((r.last_sent, r.last_received), (Some(t(1)), Some(t(2))));
        // Restarted: counting from zero again.
        r.observe(sample(1, 1), t(4));
        assert_eq!((r.last_sent, r.last_received), (Some(t(4)), Some(t(4))));
    }
}
