//! How many slots a VIP's Maglev table gets (pure).
//!
//! The size is a function of the VIP's configuration alone (its backends
//! and their configured weights), never of its history: two balancers
//! given the same VIPs, backends, weights and hash seed build the same
//! tables, whatever order of changes, restarts or upgrades led there, so a
//! flow that ECMP routers move from one to the other (or that lost its
//! conntrack entry) finds the same backend on both.
//!
//! The rule, unless the operator fixes the size (`--table-size`,
//! `table_size`): the largest prime below 2,048 x the power of two at or
//! above the number of configured backends, and at least [`SMALLEST`]
//! (16,381: up to 8 backends), at most [`LB_MAX_TABLE_SIZE`] (2,097,143: up to
//! 1,024 backends, then fixed). So a table has about 2,048 to 4,096 slots
//! per backend, where a change of one backend moves at most about 0.8% of
//! the other backends' slots (maglev.rs; DESIGN.md "Table sizes" has the
//! figures). The size steps (and a step moves almost every slot) only where
//! the backend count crosses a power of two above 8: 8 -> 9, 16 -> 17, ...,
//! 512 -> 513, and back. Health never resizes a table (a down backend keeps
//! its place in the count). Slots are 2 bytes in the kernel (backend ids
//! are below 65,536), so the 16,381-slot table of a small VIP takes 32 KiB.
//!
//! Whatever the size, a backend of weight > 0 must get at least one slot
//! (a share of weight below half a slot rounds to none): an automatic size
//! takes the next size of [`ladder`] until it does (still a function of the
//! weights); a fixed one that is too small is refused.

use crate::abi::LB_MAX_TABLE_SIZE;
use crate::maglev::{build_table, is_prime, slot_counts, MaglevBackend};

/// Slots per backend an automatic table has at least (just under: the
/// sizes are the primes just below powers of two).
pub const SLOTS_PER_BACKEND: u32 = 2048;

/// The smallest automatic table: the largest prime below 2^14, for up to 8
/// backends.
pub const SMALLEST: u32 = 16381;

/// Backends the smallest table is for; each size of the ladder is for
/// twice as many as the last.
const SMALLEST_FOR: usize = 8;

/// How a VIP's table is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// The operator's size, kept whatever the backends.
    Fixed(u32),
    /// Sized for the backends (configuration only, never history).
    Auto,
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

/// The sizes an automatic table takes: for k = 14, 15, ..., 21 the largest
/// prime below 2^k (16,381, 32,749, 65,521, ..., 2,097,143).
pub fn ladder() -> impl Iterator<Item = u32> {
    (14..=21).map(|k: u32| {
        let top = 1u32 << k;
        (top - 100..top)
            .rev()
            .find(|&n| is_prime(n))
            .expect("a prime within 100 below 2^k")
            .min(LB_MAX_TABLE_SIZE)
    })
}

/// The automatic size for `backends` configured backends: the k-th size of
/// the ladder for up to 8 x 2^k backends (the largest for more than 1,024).
pub fn auto_size(backends: usize) -> u32 {
    let mut for_up_to = SMALLEST_FOR;
    let mut last = SMALLEST;
    for size in ladder() {
        last = size;
        if backends <= for_up_to {
            return size;
        }
        for_up_to *= 2;
    }
    last
}

/// The size a VIP's table should have for `backends` (their configured
/// weights: health never resizes a table).
pub fn choose(sizing: Sizing, backends: &[MaglevBackend]) -> Result<u32, NoSlot> {
    let size = match sizing {
        Sizing::Fixed(size) => return starved(backends, size).map_or(Ok(size), Err),
        Sizing::Auto => auto_size(backends.len()),
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
    fn the_ladder_is_the_primes_below_powers_of_two() {
        let sizes: Vec<u32> = ladder().collect();
        assert_eq!(
            sizes,
            [16381, 32749, 65521, 131071, 262139, 524287, 1048573, 2097143]
        );
        assert_eq!(*sizes.last().unwrap(), LB_MAX_TABLE_SIZE);
        for (k, &s) in (14..).zip(&sizes) {
            assert!(is_prime(s) && s < 1 << k && (s..1 << k).filter(|&n| is_prime(n)).count() == 1);
        }
    }

    #[test]
    fn automatic_sizes_give_each_backend_about_two_thousand_slots() {
        assert_eq!(auto_size(0), SMALLEST);
        assert_eq!(auto_size(1), SMALLEST);
        for n in 1..=1024usize {
            let s = auto_size(n) as usize;
            assert!(s >= 2040 * n && s >= SMALLEST as usize, "{n} backends: {s}");
            assert!(s < 4096 * n.max(8), "{n} backends: {s} is more than a step");
        }
        assert_eq!(auto_size(16), 32749);
        assert_eq!(auto_size(5000), LB_MAX_TABLE_SIZE);
    }

    /// Where the automatic size changes, exactly (a step moves almost every
    /// slot): only where the backend count crosses a power of two above 8.
    /// The disruption property test relies on this list.
    #[test]
    fn an_automatic_table_steps_only_at_powers_of_two() {
        let steps: Vec<usize> = (1..=2000usize)
            .filter(|&n| auto_size(n) != auto_size(n - 1))
            .collect();
        assert_eq!(steps, STEPS);
    }

    /// The backend counts n at which auto_size(n) != auto_size(n - 1).
    const STEPS: [usize; 7] = [9, 17, 33, 65, 129, 257, 513];

    /// The size is a function of the backends alone: the same backends
    /// give the same size (and table) whatever came before.
    #[test]
    fn the_size_depends_on_the_backends_not_on_history() {
        let auto = |n: usize| choose(Sizing::Auto, &backends(&vec![1; n])).unwrap();
        assert_eq!(auto(3), SMALLEST);
        assert_eq!(auto(5), SMALLEST);
        assert_eq!(auto(16), 32749);
        assert_eq!(auto(17), 65521);
        assert_eq!(auto(4), auto(3));
    }

    /// A set of `n` distinct backends of weight 1 with keys drawn from
    /// `seed` (xorshift64), as random as a pool's addresses.
    fn random_backends(n: usize, seed: u64) -> Vec<MaglevBackend> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_be_bytes();
            let mut key = [0u8; 20];
            key[..4].copy_from_slice(&[198, 18 + (b[0] & 1), b[1], b[2]]);
            key[16..18].copy_from_slice(&[b[3] & 0x7f, b[4]]);
            key[18] = 6;
            key[19] = 4;
            if seen.insert(key) {
                out.push(MaglevBackend { key, weight: 1 });
            }
        }
        out
    }

    /// Share of the other backends' slots that change owner between the
    /// tables of `more` (n + 1 backends) and `less` (`more` without backend
    /// `gone`), both at the automatic size: the flows a removal (read one
    /// way) or an addition (read the other) sends elsewhere without having
    /// to. Returns (of the larger table's others, of the smaller table).
    fn others_moved(more: &[MaglevBackend], gone: usize) -> (f64, f64) {
        let mut less = more.to_vec();
        less[gone].weight = 0; // the same as absent (maglev.rs tests), same indices
        let size = auto_size(more.len() - 1);
        assert_eq!(size, auto_size(more.len()), "a step");
        let a = build_table(more, size).unwrap();
        let b = build_table(&less, size).unwrap();
        let gone = gone as u32;
        let moved = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x != y && **x != gone && **y != gone)
            .count() as f64;
        let others = a.iter().filter(|&&x| x != gone).count() as f64;
        (moved / others, moved / b.len() as f64)
    }

    /// The promise: adding or removing one of N backends (2 <= N <=
    /// 1,000, weights 1) moves at most 1% of the other backends' slots, for
    /// every change that does not cross a step of the automatic size; and
    /// the steps are exactly at STEPS, so no case is skipped silently.
    /// Every N up to 40, then sparser (around each step too), a few seeds
    /// (fewer for the big tables, whose builds take longer).
    #[test]
    fn one_backend_more_or_less_moves_at_most_one_percent_of_the_others() {
        let mut ns: Vec<usize> = (2..=40).collect();
        ns.extend([
            47, 63, 64, 65, 100, 127, 128, 129, 200, 256, 300, 511, 512, 700, 999,
        ]);
        let mut worst = (0.0f64, 0usize);
        let mut checked = 0;
        for &n in &ns {
            // The change between n and n + 1 backends.
            let crosses = auto_size(n) != auto_size(n + 1);
            assert_eq!(
                crosses,
                STEPS.contains(&(n + 1)),
                "{n} -> {} backends",
                n + 1
            );
            if crosses {
                continue;
            }
            let seeds = match n {
                0..=64 => 4,
                65..=256 => 2,
                _ => 1,
            };
            for seed in 1..=seeds {
                let more = random_backends(n + 1, (n as u64) << 8 | seed);
                let gone = (seed as usize * 7919 + n) % (n + 1);
                let (removed, added) = others_moved(&more, gone);
                for (what, m) in [("removing 1 of", removed), ("adding 1 to", added)] {
                    let k = if what.starts_with('r') { n + 1 } else { n };
                    assert!(
                        m <= 0.01,
                        "{what} {k} backends (seed {seed}): moved {:.3}% of the others' slots",
                        m * 100.0
                    );
                    if m > worst.0 {
                        worst = (m, k);
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked} cases");
        eprintln!(
            "worst: {:.3}% of the others' slots, {} backends",
            worst.0 * 100.0,
            worst.1
        );
    }

    #[test]
    fn a_backend_without_a_slot_grows_an_automatic_table() {
        // 99 heavy backends and a light one: 262,139 slots are not enough
        // for weight 1 of 99 x 10,000 + 1 (its first turn comes after
        // 99 x 5,000 turns of the others).
        let mut w = vec![10_000; 99];
        w.push(1);
        let b = backends(&w);
        let size = choose(Sizing::Auto, &b).unwrap();
        assert_eq!(size, 524287);
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
