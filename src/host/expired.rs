//! How many conntrack entries `--on-backend-gone` removed, per VIP: a
//! record of the balancer's (`/run/lbctl/expired-…`, a line `PROTO VIP
//! COUNT` each), added to by every lbctl that removes some (under the
//! namespace's lock), read by `list --stats` and the metrics, and gone with
//! the balancer. The entries are removed through ctnetlink, which the data
//! path's counters never see: this is their only count.

use anyhow::Result;

use super::state::{self, Kind};
use crate::model::Service;

/// Adds `removed` (entries per VIP) to balancer `id`'s counts.
pub fn add(id: u32, removed: &[(Service, usize)]) -> Result<()> {
    if removed.iter().all(|(_, n)| *n == 0) {
        return Ok(());
    }
    let mut counts = read(id)?;
    for &(service, n) in removed {
        match counts.iter_mut().find(|(s, _)| *s == service) {
            Some((_, c)) => *c += n as u64,
            None => counts.push((service, n as u64)),
        }
    }
    state::write(Kind::Expired, id, &text(&counts))
}

/// Balancer `id`'s counts (none recorded: empty).
pub fn read(id: u32) -> Result<Vec<(Service, u64)>> {
    Ok(state::read(Kind::Expired, id)?
        .map(|(t, _)| parse(&t))
        .unwrap_or_default())
}

/// The count of `service` among `counts` (0 if none).
pub fn of(counts: &[(Service, u64)], service: &Service) -> u64 {
    counts
        .iter()
        .find(|(s, _)| s == service)
        .map_or(0, |(_, n)| *n)
}

fn text(counts: &[(Service, u64)]) -> String {
    lines(counts)
}

fn parse(text: &str) -> Vec<(Service, u64)> {
    parse_lines(text)
}

/// Lines `PROTO VIP VALUE`, one per VIP: the records of `--on-backend-gone`
/// (this one, and the change's list of backends whose entries go).
pub fn lines<V: std::fmt::Display>(per_vip: &[(Service, V)]) -> String {
    per_vip
        .iter()
        .map(|(s, v)| format!("{} {} {v}\n", s.proto.name(), s.addr))
        .collect()
}

/// The lines of [`lines`] (one that does not parse is left out: the
/// records are lbctl's own).
pub fn parse_lines<V: std::str::FromStr>(text: &str) -> Vec<(Service, V)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let proto = words.next()?.parse().ok()?;
            let addr = words.next()?.parse().ok()?;
            let value = words.next()?.parse().ok()?;
            Some((Service { addr, proto }, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Proto;

    #[test]
    fn counts_round_trip() {
        let counts = vec![
            (
                Service {
                    addr: "198.18.100.1:80".parse().unwrap(),
                    proto: Proto::Udp,
                },
                7,
            ),
            (
                Service {
                    addr: "[2001:db8::1]:53".parse().unwrap(),
                    proto: Proto::Udp,
                },
                1,
            ),
        ];
        assert_eq!(parse(&text(&counts)), counts);
        assert_eq!(of(&counts, &counts[1].0), 1);
    }
}
