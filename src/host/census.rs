//! Open flows per backend, counted now and then instead of at every look.
//!
//! Counting them means reading the whole conntrack table over ctnetlink
//! (`conntrack::active_flows_by_backend`): 0.4 s for 100,000 entries, so
//! seconds for a million, far too slow for a Prometheus scrape or a `list
//! --stats` that should cost the same at any table size. `lbctl run` takes
//! a census in the background instead, at most every [`period`] (5 s, or
//! ten times as long as the last count took: a count never takes more than
//! a tenth of one core), and keeps it in memory for `/metrics` and in a
//! state file (`/run/lbctl/census-…`) for `list --stats`, which reads it
//! while it is [`fresh`] and counts for itself otherwise.
//!
//! How exact: a census is the table as one dump saw it, at its time
//! (`taken`, shown as `lbctl_active_flows_counted_timestamp_seconds` and by
//! `list --stats`); flows opened or closed since are not in it. Entries
//! that come and go while the dump walks the table may be missed or not,
//! as for any ctnetlink dump.
//!
//! The file: a first line `taken UNIX_MILLISECONDS took MILLISECONDS`,
//! then `PROTO VIP BACKEND COUNT` for each backend with open flows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::state::{self, Kind};
use crate::model::{Ports, Service};

/// Open flows per (VIP, backend) at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Census {
    /// When the dump began.
    pub taken: SystemTime,
    /// How long it took.
    pub took: Duration,
    pub flows: HashMap<(Service, SocketAddr), u64>,
}

/// The shortest time between two counts.
const MIN_PERIOD: Duration = Duration::from_secs(5);
/// A count may take this share of the time (1 in 10).
const PERIOD_PER_COUNT: u32 = 10;

/// How long after a count that took `took` the next one begins.
pub fn period(took: Duration) -> Duration {
    MIN_PERIOD.max(took * PERIOD_PER_COUNT)
}

impl Census {
    /// Counts the calling thread's namespace's conntrack table now, each
    /// flow for its VIP among `vips` (`conntrack::as_configured`).
    pub fn take(vips: &[(Service, Ports)]) -> Result<Census> {
        let taken = SystemTime::now();
        let started = Instant::now();
        let flows = crate::conntrack::active_flows_by_backend(vips)
            .context("reading conntrack entries (ctnetlink)")?;
        Ok(Census {
            taken,
            took: started.elapsed(),
            flows,
        })
    }

    /// How long ago it was taken (0 for a clock that went back).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.taken)
            .unwrap_or_default()
    }

    /// Whether the service that takes it still does: it is no older than
    /// two of its periods and a second (a census older than that is left
    /// by an `lbctl run` that stopped).
    pub fn fresh(&self) -> bool {
        self.age() <= period(self.took) * 2 + self.took + Duration::from_secs(1)
    }

    /// Unix time it was taken, in seconds.
    pub fn taken_unix(&self) -> f64 {
        unix_seconds(self.taken)
    }

    /// Records it as balancer `id`'s census.
    pub fn save(&self, id: u32) -> Result<()> {
        state::write(Kind::Census, id, &self.text())
    }

    /// Balancer `id`'s recorded census, if there is one that reads.
    pub fn load(id: u32) -> Result<Option<Census>> {
        Ok(state::read(Kind::Census, id)?.and_then(|(text, _)| Census::parse(&text)))
    }

    fn text(&self) -> String {
        let mut rows: Vec<_> = self.flows.iter().collect();
        rows.sort_by_key(|((s, b), _)| (s.proto.name(), s.addr, *b));
        let taken_ms = self
            .taken
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut out = format!("taken {taken_ms} took {}\n", self.took.as_millis());
        for ((s, b), n) in rows {
            out += &format!("{} {} {b} {n}\n", s.proto.name(), s.addr);
        }
        out
    }

    fn parse(text: &str) -> Option<Census> {
        let mut lines = text.lines();
        let mut head = lines.next()?.split_whitespace();
        let (Some("taken"), Some(taken), Some("took"), Some(took)) =
            (head.next(), head.next(), head.next(), head.next())
        else {
            return None;
        };
        let taken = UNIX_EPOCH + Duration::from_millis(taken.parse().ok()?);
        let took = Duration::from_millis(took.parse().ok()?);
        let mut flows = HashMap::new();
        for line in lines {
            let mut w = line.split_whitespace();
            let proto = w.next()?.parse().ok()?;
            let addr = w.next()?.parse().ok()?;
            let backend = w.next()?.parse().ok()?;
            let n = w.next()?.parse().ok()?;
            flows.insert((Service { addr, proto }, backend), n);
        }
        Some(Census { taken, took, flows })
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;

    #[test]
    fn a_census_round_trips_through_its_file_text() {
        let vip = |a: &str, proto| Service {
            addr: a.parse().unwrap(),
            proto,
        };
        let mut flows = HashMap::new();
        flows.insert(
            (
                vip("198.18.100.1:80", Proto::Tcp),
                "198.18.1.11:8080".parse().unwrap(),
            ),
            17,
        );
        flows.insert(
            (
                vip("[2001:db8:0:100::1]:53", Proto::Udp),
                "[2001:db8:0:1::12]:53".parse().unwrap(),
            ),
            1,
        );
        let c = Census {
            taken: UNIX_EPOCH + Duration::from_millis(1_733_450_000_250),
            took: Duration::from_millis(402),
            flows,
        };
        assert_eq!(Census::parse(&c.text()), Some(c));
        assert_eq!(Census::parse("taken x took 1\n"), None);
        assert_eq!(Census::parse(""), None);
    }

    #[test]
    fn counts_take_at_most_a_tenth_of_the_time_and_are_fresh_for_two_periods() {
        assert_eq!(period(Duration::from_millis(40)), Duration::from_secs(5));
        assert_eq!(period(Duration::from_secs(4)), Duration::from_secs(40));
        let c = |age: u64, took: u64| Census {
            taken: SystemTime::now() - Duration::from_secs(age),
            took: Duration::from_secs(took),
            flows: HashMap::new(),
        };
        assert!(c(10, 0).fresh());
        assert!(!c(12, 0).fresh());
        assert!(c(80, 4).fresh());
        assert!(!c(90, 4).fresh());
    }
}
