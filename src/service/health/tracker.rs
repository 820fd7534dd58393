//! Rise and fall: `fall` failed checks in a row take a backend down,
//! `rise` successful ones in a row bring it back. A backend not yet
//! checked is up at its first success and down after `fall` failures.

use crate::model::Health;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub health: Health,
    /// Successes (or failures) in a row, whichever came last.
    pub streak: u32,
    pub last_ok: bool,
}

impl Tracker {
    pub fn new(health: Health) -> Tracker {
        Tracker {
            health,
            streak: 0,
            last_ok: health != Health::Down,
        }
    }

    /// Records one result; returns the new health if it changed.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Health> {
        if ok == self.last_ok {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.last_ok = ok;
            self.streak = 1;
        }
        let next = match (self.health, ok) {
            (Health::Unchecked, true) => Health::Up,
            (Health::Down, true) if self.streak >= rise => Health::Up,
            (Health::Up | Health::Unchecked, false) if self.streak >= fall => Health::Down,
            (h, _) => h,
        };
        (next != self.health).then(|| {
            self.health = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: Health, results: &str, rise: u32, fall: u32) -> Vec<Option<Health>> {
        let mut t = Tracker::new(start);
        results
            .chars()
            .map(|c| t.record(c == '+', rise, fall))
            .collect()
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down_rise_successes_bring_it_back() {
        use Health::*;
        assert_eq!(run(Up, "-+--+", 2, 2), [None, None, None, Some(Down), None]);
        assert_eq!(
            run(Up, "--+-++", 2, 2),
            [None, Some(Down), None, None, None, Some(Up)]
        );
        assert_eq!(run(Unchecked, "+", 3, 3), [Some(Up)]);
        assert_eq!(run(Unchecked, "---", 3, 3), [None, None, Some(Down)]);
        assert_eq!(run(Down, "+++", 3, 1), [None, None, Some(Up)]);
        assert_eq!(run(Down, "-", 1, 1), [None], "already down");
        assert_eq!(run(Up, "-", 1, 1), [Some(Down)]);
    }
}
