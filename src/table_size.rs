//! How many slots a VIP's Maglev table gets (pure).
//!
//! Maglev balances well when the table is much larger than the number of
//! backends (M ≥ 100 × N keeps every backend's share within about 1% of its
//! weight's and a change of one backend moving little more than its share),
//! and the size must be prime. A table costs 8 bytes of locked kernel
//! memory per slot, so one size for every VIP (65,537 slots, 512 KiB) is
//! wasteful for small VIPs and too small for huge ones.
//!
//! Unless the operator fixes the size (`--table-size`, `table_size`), a
//! VIP's table takes the smallest size of [`ladder`] (primes, each about
//! twice the last) with at least [`SLOTS_PER_BACKEND`] slots per backend.
//! A change of size moves almost every slot, so it only happens when the
//! backends have grown past the current size (one step up the ladder at a
//! time: log2 moves over a VIP's life) or shrunk to a quarter of it (when
//! removing three quarters of the backends has already moved at least that
//! share of slots). Moved slots only affect new flows: live flows follow
//! their conntrack entries.
//!
//! Whatever the size, a backend of weight > 0 must get at least one slot
//! (a share of weight below half a slot rounds to none): an automatic size
//! grows until it does; a fixed one that is too small is refused.

use crate::datapath::abi::LB_MAX_TABLE_SIZE;
use crate::maglev::{build_table, is_prime, slot_counts, MaglevBackend};

/// Slots per backend an automatic table has at least.
pub const SLOTS_PER_BACKEND: u32 = 100;

/// The smallest automatic table (a prime with 100 slots for one backend).
pub const SMALLEST: u32 = 101;

/// How a VIP's table is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// The operator's size, kept whatever the backends.
    Fixed(u32),
    /// Sized for the backends; `current` is the size in use (None: a new
    /// VIP).
    Auto { current: Option<u32> },
}

/// A backend of weight > 0 that a table of `size` slots would leave without
/// a slot; `needed` is the smallest size of the ladder at or above `size`
/// that gives every backend one, if there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoSlot {
    /// Index into the backends given.
    pub backend: usize,
    pub size: u32,
    pub needed: Option<u32>,
}

/// The sizes an automatic table takes: 101, then each the first prime at
/// or above twice the last, up to the largest table the data path holds.
pub fn ladder() -> impl Iterator<Item = u32> {
    std::iter::successors(Some(SMALLEST), |&s| {
        if s >= LB_MAX_TABLE_SIZE {
            return None;
        }
        let next = (2 * s..)
            .find(|&n| is_prime(n))
            .unwrap_or(LB_MAX_TABLE_SIZE);
        Some(next.min(LB_MAX_TABLE_SIZE))
    })
}

/// The automatic size for `backends` backends: the first ladder size with
/// at least 100 slots each (the largest size for more than 1,310).
pub fn auto_size(backends: usize) -> u32 {
    let want = (backends.max(1) as u64) * SLOTS_PER_BACKEND as u64;
    ladder()
        .find(|&s| s as u64 >= want)
        .unwrap_or(LB_MAX_TABLE_SIZE)
}

/// The size a VIP's table should have for `backends` (their configured
/// weights: health never resizes a table).
pub fn choose(sizing: Sizing, backends: &[MaglevBackend]) -> Result<u32, NoSlot> {
    let size = match sizing {
        Sizing::Fixed(size) => return starved(backends, size).map_or(Ok(size), Err),
        Sizing::Auto { current } => {
            let want = auto_size(backends.len());
            match current {
                Some(now) if want <= now && (want as u64) * 4 > now as u64 => now,
                _ => want,
            }
        }
    };
    match starved(backends, size) {
        None => Ok(size),
        Some(no) => no.needed.ok_or(no),
    }
}

/// The first backend of weight > 0 a table of `size` slots gives no slot,
/// with the ladder size that would give every one a slot.
fn starved(backends: &[MaglevBackend], size: u32) -> Option<NoSlot> {
    if surely_fits(backends, size) {
        return None;
    }
    let first = first_starved(backends, size)?;
    let needed = ladder()
        .filter(|&s| s > size)
        .find(|&s| first_starved(backends, s).is_none());
    Some(NoSlot {
        backend: first,
        size,
        needed,
    })
}

/// True when the lightest backend's first turn (maglev.rs: backend j's k-th
/// turn comes at (2k - 1) / 2w_j) is surely among the first `size` turns:
/// the turns at or before it, ties included, number at most `size`. Then
/// every backend of weight > 0 gets a slot, without building the table
/// (which `apply` would otherwise do for every VIP of a file).
fn surely_fits(backends: &[MaglevBackend], size: u32) -> bool {
    let Some(w_min) = backends.iter().map(|b| b.weight).filter(|&w| w > 0).min() else {
        return true;
    };
    let w_min = u64::from(w_min);
    let turns: u64 = backends
        .iter()
        .map(|b| (u64::from(b.weight) + w_min) / (2 * w_min))
        .sum();
    turns <= u64::from(size)
}

fn first_starved(backends: &[MaglevBackend], size: u32) -> Option<usize> {
    let table = build_table(backends, size).ok()?;
    let counts = slot_counts(&table, backends.len());
    (0..backends.len()).find(|&i| backends[i].weight > 0 && counts[i] == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<MaglevBackend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let mut key = [0u8; 20];
                key[..4].copy_from_slice(&[198, 18, 1, 11 + i as u8]);
                key[16..18].copy_from_slice(&8080u16.to_be_bytes());
                key[18] = 6;
                key[19] = 4;
                MaglevBackend { key, weight }
            })
            .collect()
    }

    #[test]
    fn the_ladder_is_primes_that_about_double() {
        let sizes: Vec<u32> = ladder().collect();
        assert_eq!(sizes[0], 101);
        assert_eq!(*sizes.last().unwrap(), LB_MAX_TABLE_SIZE);
        for pair in sizes.windows(2) {
            assert!(is_prime(pair[1]), "{} is not prime", pair[1]);
            assert!(pair[1] >= 2 * pair[0] || pair[1] == LB_MAX_TABLE_SIZE);
            assert!(pair[1] < 2 * pair[0] + 50, "{pair:?}");
        }
    }

    #[test]
    fn automatic_sizes_give_each_backend_a_hundred_slots() {
        assert_eq!(auto_size(0), 101);
        assert_eq!(auto_size(1), 101);
        for n in [2, 3, 5, 16, 100, 1000, 1310] {
            let s = auto_size(n);
            assert!(s as usize >= 100 * n && is_prime(s), "{n} backends: {s}");
            assert!(
                (s as usize) < 200 * n + 50,
                "{n} backends: {s} is more than a step"
            );
        }
        assert_eq!(auto_size(16), 1733);
        assert_eq!(auto_size(5000), LB_MAX_TABLE_SIZE);
    }

    #[test]
    fn an_automatic_table_grows_by_steps_and_shrinks_only_to_a_quarter() {
        let auto = |current, n: usize| choose(Sizing::Auto { current }, &backends(&vec![1; n]));
        assert_eq!(auto(None, 3), Ok(auto_size(3)));
        let s3 = auto_size(3);
        // One more backend within the size: kept.
        assert_eq!(auto(Some(s3), 4), Ok(s3));
        // Past it: the next step.
        assert_eq!(auto(Some(s3), 5), Ok(auto_size(5)));
        assert!(auto_size(5) > s3);
        // Fewer backends: kept until the size is four times what they need.
        let s16 = auto_size(16);
        assert_eq!(auto(Some(s16), 9), Ok(s16));
        assert_eq!(auto(Some(s16), 5), Ok(s16));
        assert_eq!(auto(Some(s16), 4), Ok(auto_size(4)));
        assert_eq!(auto(Some(s16), 0), Ok(101));
    }

    #[test]
    fn a_backend_without_a_slot_grows_an_automatic_table() {
        // 99 heavy backends and a light one: 100 x 100 slots are not enough
        // for weight 1 of 99 x 1000 + 1.
        let mut w = vec![1000; 99];
        w.push(1);
        let b = backends(&w);
        let size = choose(Sizing::Auto { current: None }, &b).unwrap();
        assert!(size > auto_size(100), "{size}");
        let counts = slot_counts(&build_table(&b, size).unwrap(), b.len());
        assert!(counts.iter().all(|&c| c > 0));
    }

    #[test]
    fn the_quick_check_never_passes_a_table_that_starves_a_backend() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..300 {
            let n = 1 + next(12) as usize;
            let weights: Vec<u32> = (0..n).map(|_| next(20) as u32).collect();
            let b = backends(&weights);
            for size in [3u32, 5, 7, 11, 13, 17, 31, 101] {
                if surely_fits(&b, size) {
                    assert_eq!(first_starved(&b, size), None, "{weights:?} in {size}");
                }
            }
        }
    }

    #[test]
    fn a_fixed_table_too_small_is_refused() {
        // The case: 3 slots, 5 backends.
        let b = backends(&[1, 1, 1, 1, 1]);
        let no = choose(Sizing::Fixed(3), &b).unwrap_err();
        assert_eq!(no.size, 3);
        assert!(b[no.backend].weight > 0);
        let needed = no.needed.unwrap();
        assert_eq!(choose(Sizing::Fixed(needed), &b), Ok(needed));
        // Big enough: kept, whatever the count.
        assert_eq!(choose(Sizing::Fixed(7), &b), Ok(7));
        // Weight 0 needs no slot.
        assert_eq!(choose(Sizing::Fixed(3), &backends(&[1, 1, 0, 0, 0])), Ok(3));
    }
}
