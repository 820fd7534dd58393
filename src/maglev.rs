//! Maglev consistent hashing with weights (Eisenbud et al., "Maglev: A Fast
//! and Reliable Software Network Load Balancer", NSDI 2016).
//!
//! A VIP's table has a prime number of slots and the data path sends a new
//! flow to `table[flow_hash % size]` (bpf/hash.h). Every backend walks its own
//! permutation of the slots and on each of its turns claims the first slot on
//! that walk nobody holds yet. The permutation depends only on the backend's
//! key, so adding or removing a backend leaves almost every other slot where
//! it was: flows that the data path has to place again (no conntrack entry)
//! mostly keep their backend.
//!
//! The paper's walk is linear (`offset + j * skip`). Two linear walks are
//! related to each other (one is the other shifted and stretched), and that
//! structure gives a heavy tail: with 4 backends and 16,381 slots, removing
//! one moved up to 2.8% of the other backends' slots for some keys (0.2% on
//! average). Here each walk is a keyed pseudo-random permutation instead (a
//! 3-round Feistel network over the next power of two, cycle-walked into
//! the table): the worst case stays near the average (under 0.8% for the
//! same case). DESIGN.md "Table sizes" has the figures.
//!
//! Weights decide how often a backend takes a turn, so its share of the slots
//! is its share of the total weight. Weight 0 (quiescent, or down) leaves it
//! out, exactly as if it were absent.
//!
//! The table is a pure function of the set of (key, weight) pairs: backends
//! are ordered by key before anything else (ties in turn order go to the
//! heavier weight, then to key order), so neither the order the caller lists
//! them in nor the ids the data path knows them by changes a slot.

use crate::hash::hash_bytes;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A large table size, the one the tests and the benchmark build: prime, and
/// with 1,000 backends still about 65 slots each, so equal weights stay
/// within 1.5% of each other and one more backend moves little more than its
/// own share. (A VIP's table is sized for its backends: `table_size.rs`.)
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Table entry when no backend has weight > 0.
pub const NO_BACKEND: u32 = u32::MAX;

/// Bytes of a `struct lb_endpoint` (bpf/lb_abi.h): address (16, network
/// order), port (2, network order), protocol, family.
pub type BackendKey = [u8; 20];

/// Seeds of the hashes of a backend's key (jhash, src/hash.rs) that key the
/// three rounds of its walk. Independent hashes; fixed forever so a table
/// never changes across lbctl versions.
const ROUND_SEEDS: [u32; 3] = [0x7277_6b30, 0x7277_6b31, 0x7277_6b32]; // "rwk0".."rwk2"

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Bytes of its `struct lb_endpoint`; must be unique within a table.
    pub key: BackendKey,
    /// Relative share of the slots; 0 excludes the backend.
    pub weight: u32,
}

/// Builds a VIP's table of `size` slots. Each entry is an index into
/// `backends`, or [`NO_BACKEND`] everywhere when no backend has weight > 0.
/// A backend's slot count is its weight share of `size`, rounded (so a share
/// below half a slot can round to none). The caller bounds `size`: the table
/// is allocated whole, and the data path takes at most LB_MAX_TABLE_SIZE.
///
/// Errors when `size` is not prime (the data path takes `hash % size`, and a
/// prime makes every bit of the hash count; the walks themselves cover any
/// size), when two backends share a key, or when there are too many backends
/// to index with a u32.
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, String> {
    if !is_prime(size) {
        return Err(format!("Maglev table size {size} is not prime"));
    }
    if backends.len() >= NO_BACKEND as usize {
        return Err(format!(
            "{} backends are too many for one table",
            backends.len()
        ));
    }
    let order = order_by_key(backends)?;
    let mut groups = weight_groups(backends, &order, size);
    let mut table = vec![NO_BACKEND; size as usize];
    fill(&mut table, &mut groups);
    Ok(table)
}

/// Whether `n` is prime, by trial division (at most 32768 odd divisors for a
/// u32, and table sizes are chosen rarely).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    let n = u64::from(n);
    (3..)
        .step_by(2)
        .take_while(|d| d * d <= n)
        .all(|d| n % d != 0)
}

/// The backend each slot sends flows to, by key: what a flow sees, whatever
/// index or id the backend has. Entries that index no backend give None.
pub fn slot_keys(table: &[u32], backends: &[MaglevBackend]) -> Vec<Option<BackendKey>> {
    table
        .iter()
        .map(|&i| backends.get(i as usize).map(|b| b.key))
        .collect()
}

/// Fraction of slots whose backend differs between two tables given as
/// [`slot_keys`]: the share of new flows (and of flows without conntrack
/// state) that a change sends elsewhere. Tables of different sizes have no
/// slot-by-slot meaning and give an error.
pub fn moved_fraction(
    old: &[Option<BackendKey>],
    new: &[Option<BackendKey>],
) -> Result<f64, String> {
    if old.len() != new.len() {
        return Err(format!(
            "tables of {} and {} slots cannot be compared slot by slot",
            old.len(),
            new.len()
        ));
    }
    if old.is_empty() {
        return Ok(0.0);
    }
    let moved = old.iter().zip(new).filter(|(a, b)| a != b).count();
    Ok(moved as f64 / old.len() as f64)
}

/// Slots held by each of `backends` backends (entries beyond are ignored).
pub fn slot_counts(table: &[u32], backends: usize) -> Vec<u32> {
    let mut counts = vec![0u32; backends];
    for &i in table {
        if let Some(c) = counts.get_mut(i as usize) {
            *c += 1;
        }
    }
    counts
}

/// Indices of `backends` sorted by key; a key listed twice is an error since
/// two identical walks would make the table depend on the caller's order.
fn order_by_key(backends: &[MaglevBackend]) -> Result<Vec<usize>, String> {
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_unstable_by(|&a, &b| backends[a].key.cmp(&backends[b].key));
    for pair in order.windows(2) {
        let key = &backends[pair[0]].key;
        if *key == backends[pair[1]].key {
            return Err(format!("backend {} is listed twice", describe(key)));
        }
    }
    Ok(order)
}

/// A key as an operator writes it, for error messages: `10.0.0.1:80/6`.
fn describe(key: &BackendKey) -> String {
    let port = u16::from_be_bytes([key[16], key[17]]);
    let proto = key[18];
    match key[19] {
        4 => {
            let ip = Ipv4Addr::new(key[0], key[1], key[2], key[3]);
            format!("{ip}:{port}/{proto}")
        }
        _ => {
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&key[..16]);
            format!("[{}]:{port}/{proto}", Ipv6Addr::from(addr))
        }
    }
}

/// Backends of one weight, in key order. Their turns fall at the same times,
/// so they take them together: one heap entry per distinct weight, and equal
/// weights (the common case) cost next to no heap work.
struct Group {
    weight: u32,
    walkers: Vec<Walker>,
}

/// The backends of weight > 0 grouped by weight, heaviest first; `order` is
/// key order, which a stable sort keeps within each group.
fn weight_groups(backends: &[MaglevBackend], order: &[usize], size: u32) -> Vec<Group> {
    let mut by_weight: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| backends[i].weight > 0)
        .collect();
    by_weight.sort_by_key(|&i| Reverse(backends[i].weight));
    let mut groups: Vec<Group> = Vec::new();
    for i in by_weight {
        let b = &backends[i];
        let walker = Walker::new(i as u32, &b.key, size);
        match groups.last_mut() {
            Some(g) if g.weight == b.weight => g.walkers.push(walker),
            _ => groups.push(Group {
                weight: b.weight,
                walkers: vec![walker],
            }),
        }
    }
    groups
}

/// Hands out turns, earliest first, until every slot is claimed; each turn
/// claims exactly one slot. Leaves the table empty when there are no groups.
fn fill(table: &mut [u32], groups: &mut [Group]) {
    let mut turns: BinaryHeap<Reverse<Turn>> = groups
        .iter()
        .enumerate()
        .map(|(g, group)| Reverse(Turn::first(g, group.weight)))
        .collect();
    let mut free = table.len();
    while free > 0 {
        let Some(mut next) = turns.peek_mut() else {
            return;
        };
        let walkers = &mut groups[next.0.group].walkers;
        let taking = walkers.len().min(free);
        for walker in &mut walkers[..taking] {
            walker.claim(table);
        }
        free -= taking;
        next.0.advance(); // re-sorted into the heap when `next` drops
    }
}

/// A backend's walk over the slots: `walk.slot(0)`, `walk.slot(1)`, ...
/// Visits every slot once before it repeats, so a claim finds a free slot
/// whenever one exists.
struct Walker {
    index: u32,
    /// Position on the walk of the next slot to try.
    next: u32,
    walk: Walk,
}

impl Walker {
    fn new(index: u32, key: &BackendKey, size: u32) -> Self {
        Walker {
            index,
            next: 0,
            walk: Walk::new(key, size),
        }
    }

    /// Claims the next slot on the walk that is still free. The caller
    /// guarantees one is (it takes fewer turns than there are slots).
    fn claim(&mut self, table: &mut [u32]) {
        loop {
            let slot = self.walk.slot(self.next) as usize;
            self.next += 1;
            if table[slot] == NO_BACKEND {
                table[slot] = self.index;
                return;
            }
        }
    }
}

/// A backend's permutation of the slots `0..size`: a 3-round Feistel
/// network over `0..2^bits` (the smallest power of two >= size; unbalanced
/// when `bits` is odd: the halves swap sizes each round), keyed by three
/// hashes of the backend's key (three rounds are as good as four here:
/// the same disruption figures, a quarter less work), cycle-walked into `0..size` (applied again
/// until the result is a slot: a permutation of a larger set restricted
/// this way is a permutation of the smaller one). The automatic sizes are
/// primes just below powers of two, so a slot takes about one pass.
#[derive(Clone, Copy)]
pub(crate) struct Walk {
    keys: [u32; 3],
    bits: u32,
    size: u32,
}

impl Walk {
    pub(crate) fn new(key: &BackendKey, size: u32) -> Self {
        Walk {
            keys: ROUND_SEEDS.map(|seed| hash_bytes(key, seed)),
            bits: (32 - size.saturating_sub(1).leading_zeros()).max(1), // 2^bits >= size
            size,
        }
    }

    /// The `j`-th slot of the walk (`j` < size).
    pub(crate) fn slot(&self, j: u32) -> u32 {
        let mut x = self.feistel(j);
        while x >= self.size {
            x = self.feistel(x);
        }
        x
    }

    /// x (< 2^bits) as high part (a bits) and low part (b bits); each round
    /// makes the low part the high one and the high part, XORed with a hash
    /// of the low one, the low one: a bijection whatever a and b.
    fn feistel(&self, mut x: u32) -> u32 {
        let (mut a, mut b) = (self.bits / 2, self.bits - self.bits / 2);
        for k in self.keys {
            let lo = x & ((1 << b) - 1);
            let hi = x >> b;
            let f = mix(lo ^ k) & ((1 << a) - 1);
            x = (lo << a) | (hi ^ f);
            (a, b) = (b, a);
        }
        x
    }
}

/// murmur3's 32-bit finalizer: every input bit affects every output bit.
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// When a group of backends takes its next turn. A backend's k-th turn
/// (k = 1, 2, ...) comes at time (2k - 1) / (2 * weight): the Sainte-Laguë
/// apportionment, so after any number of turns each backend's count is its
/// weight share rounded, not just floored. Ties go to the heavier weight, then
/// key order, so equal weights give plain Maglev round robin in key order.
/// A heap costs O(log groups) per turn however skewed the weights are, where
/// handing every backend credit each round costs O(backends) per round and can
/// take a round per slot when one weight dwarfs the rest.
#[derive(Clone, Copy, Debug)]
struct Turn {
    /// 2k - 1 for the k-th turn.
    odd: u64,
    weight: u32,
    /// Index into the groups, which are heaviest first: the tie-break.
    group: usize,
}

impl Turn {
    fn first(group: usize, weight: u32) -> Self {
        Turn {
            odd: 1,
            weight,
            group,
        }
    }

    fn advance(&mut self) {
        self.odd += 2;
    }
}

impl Ord for Turn {
    /// Earlier time first: odd_a / w_a < odd_b / w_b, compared by cross
    /// multiplication in u128 (odd < 2^33, weight < 2^32), then by group.
    fn cmp(&self, other: &Self) -> Ordering {
        let lhs = u128::from(self.odd) * u128::from(other.weight);
        let rhs = u128::from(other.odd) * u128::from(self.weight);
        lhs.cmp(&rhs).then(self.group.cmp(&other.group))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Turn {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// xorshift64: enough randomness for test sets, and reproducible.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed | 1) // the state must never be 0
        }

        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        /// Uniform enough in lo..=hi for small ranges.
        fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next() % (hi - lo + 1)
        }

        fn shuffle<T>(&mut self, items: &mut [T]) {
            for i in (1..items.len()).rev() {
                items.swap(i, self.range(0, i as u64) as usize);
            }
        }
    }

    /// The bytes of a struct lb_endpoint for addr:port/TCP.
    fn endpoint(addr: [u8; 16], family: u8, port: u16) -> BackendKey {
        let mut key = [0u8; 20];
        key[..16].copy_from_slice(&addr);
        key[16..18].copy_from_slice(&port.to_be_bytes());
        key[18] = 6;
        key[19] = family;
        key
    }

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> BackendKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[a, b, c, d]);
        endpoint(addr, 4, port)
    }

    /// A random endpoint: mostly IPv4 in 10/8, sometimes IPv6, like a pool.
    fn random_key(rng: &mut Rng) -> BackendKey {
        let r = rng.next();
        if r % 8 == 0 {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            addr[8..16].copy_from_slice(&rng.next().to_be_bytes());
            return endpoint(addr, 6, 443);
        }
        let b = r.to_be_bytes();
        v4(
            10,
            b[1],
            b[2],
            b[3],
            [80, 443, 8080][(r >> 32) as usize % 3],
        )
    }

    /// `n` backends with distinct keys and weights drawn by `weight`.
    fn random_set(rng: &mut Rng, n: usize, weight: impl Fn(&mut Rng) -> u32) -> Vec<MaglevBackend> {
        let mut seen = HashSet::new();
        let mut set = Vec::with_capacity(n);
        while set.len() < n {
            let key = random_key(rng);
            if seen.insert(key) {
                set.push(MaglevBackend {
                    key,
                    weight: weight(rng),
                });
            }
        }
        set
    }

    /// Draws one backend's weight.
    type WeightFn = fn(&mut Rng) -> u32;

    fn equal(_: &mut Rng) -> u32 {
        1
    }

    fn keys(backends: &[MaglevBackend], size: u32) -> Vec<Option<BackendKey>> {
        slot_keys(&build_table(backends, size).unwrap(), backends)
    }

    /// Fraction of slots that change owner from `old` to `new`.
    fn moved(old: &[MaglevBackend], new: &[MaglevBackend], size: u32) -> f64 {
        moved_fraction(&keys(old, size), &keys(new, size)).unwrap()
    }

    fn total_weight(backends: &[MaglevBackend]) -> f64 {
        backends.iter().map(|b| f64::from(b.weight)).sum()
    }

    /// The disruption property: a change moves at most the share of slots
    /// that had to move (`ideal`) plus 1% of the table.
    fn check_disruption(moved: f64, ideal: f64, what: &str) -> Result<(), String> {
        if moved <= ideal + 0.01 {
            Ok(())
        } else {
            Err(format!(
                "{what}: moved {moved:.4} of the slots, ideal {ideal:.4}"
            ))
        }
    }

    /// Each backend's share of the slots is its share of the weight, within
    /// 1% of the table.
    fn check_shares(backends: &[MaglevBackend], table: &[u32]) -> Result<(), String> {
        let total = total_weight(backends);
        let counts = slot_counts(table, backends.len());
        for (b, &count) in backends.iter().zip(&counts) {
            let got = f64::from(count) / table.len() as f64;
            let want = f64::from(b.weight) / total;
            if (got - want).abs() > 0.01 {
                return Err(format!(
                    "weight {} of {total}: share {got:.4}, want {want:.4}",
                    b.weight
                ));
            }
        }
        Ok(())
    }

    #[test]
    fn is_prime_answers() {
        let primes = [
            2,
            3,
            5,
            251,
            4099,
            65537,
            131071,
            2_147_483_647,
            4_294_967_291,
        ];
        let composites = [0, 1, 4, 9, 561, 65535, 65536, 131073, 4_294_967_295];
        assert!(primes.iter().all(|&p| is_prime(p)));
        assert!(composites.iter().all(|&c| !is_prime(c)));
        assert_eq!((0..100).filter(|&n| is_prime(n)).count(), 25);
    }

    #[test]
    fn sizes_that_are_not_prime_are_refused() {
        let set = [MaglevBackend {
            key: v4(10, 0, 0, 1, 80),
            weight: 1,
        }];
        for size in [0, 1, 4, 65535, 65536] {
            let err = build_table(&set, size).unwrap_err();
            assert!(err.contains("not prime"), "{size}: {err}");
        }
    }

    #[test]
    fn a_key_listed_twice_is_refused() {
        let key = v4(10, 0, 0, 1, 80);
        let set = [
            MaglevBackend { key, weight: 1 },
            MaglevBackend {
                key: v4(10, 0, 0, 2, 80),
                weight: 1,
            },
            MaglevBackend { key, weight: 3 },
        ];
        let err = build_table(&set, 251).unwrap_err();
        assert_eq!(err, "backend 10.0.0.1:80/6 is listed twice");
    }

    #[test]
    fn without_weight_no_slot_has_a_backend() {
        let quiet = [
            MaglevBackend {
                key: v4(10, 0, 0, 1, 80),
                weight: 0,
            },
            MaglevBackend {
                key: v4(10, 0, 0, 2, 80),
                weight: 0,
            },
        ];
        for set in [&quiet[..], &[]] {
            let table = build_table(set, 251).unwrap();
            assert_eq!(table.len(), 251);
            assert!(table.iter().all(|&e| e == NO_BACKEND));
        }
    }

    #[test]
    fn a_lone_backend_takes_every_slot() {
        let set = [
            MaglevBackend {
                key: v4(10, 0, 0, 1, 80),
                weight: 0,
            },
            MaglevBackend {
                key: v4(10, 0, 0, 2, 80),
                weight: 7,
            },
        ];
        let table = build_table(&set, 65537).unwrap();
        assert!(table.iter().all(|&e| e == 1));
    }

    #[test]
    fn every_slot_holds_a_backend_of_weight_above_zero() {
        let mut rng = Rng::new(11);
        let set = random_set(&mut rng, 40, |r| r.range(0, 3) as u32);
        let table = build_table(&set, 4099).unwrap();
        assert_eq!(table.len(), 4099);
        for (i, count) in slot_counts(&table, set.len()).into_iter().enumerate() {
            assert_eq!(
                count == 0,
                set[i].weight == 0,
                "backend {i} weight {}",
                set[i].weight
            );
        }
        assert_eq!(
            table.iter().filter(|&&e| e as usize >= set.len()).count(),
            0
        );
    }

    #[test]
    fn the_same_set_in_any_order_gives_the_same_table() {
        let mut rng = Rng::new(7);
        for _ in 0..10 {
            let n = rng.range(1, 60) as usize;
            let set = random_set(&mut rng, n, |r| r.range(0, 20) as u32);
            let want = keys(&set, 4099);
            assert_eq!(keys(&set, 4099), want, "repeatable");
            let mut shuffled = set.clone();
            rng.shuffle(&mut shuffled);
            assert_eq!(keys(&shuffled, 4099), want, "independent of order");
        }
    }

    #[test]
    fn shares_follow_weights() {
        let mut rng = Rng::new(3);
        let weight_sets: [(&str, WeightFn); 5] = [
            ("equal", equal),
            ("1..=10", |r| r.range(1, 10) as u32),
            ("1..=1000", |r| r.range(1, 1000) as u32),
            ("0..=3", |r| r.range(0, 3) as u32),
            ("near u32::MAX", |r| u32::MAX - r.range(0, 1 << 30) as u32),
        ];
        for (name, weight) in weight_sets {
            for n in [2, 7, 33, 120] {
                let mut set = random_set(&mut rng, n, weight);
                set[0].weight = set[0].weight.max(1); // keep one backend in
                let table = build_table(&set, DEFAULT_TABLE_SIZE).unwrap();
                check_shares(&set, &table).unwrap_or_else(|e| panic!("{name}, {n} backends: {e}"));
            }
        }
    }

    #[test]
    fn a_dominant_weight_still_leaves_the_others_their_share() {
        let mut set = random_set(&mut Rng::new(5), 10, equal);
        set[3].weight = 1000;
        let table = build_table(&set, DEFAULT_TABLE_SIZE).unwrap();
        check_shares(&set, &table).unwrap();
        let counts = slot_counts(&table, set.len());
        // 65537 / 1009 = 64.95: each light backend gets 64 or 65 slots.
        assert!(
            counts
                .iter()
                .enumerate()
                .all(|(i, &c)| i == 3 || (64..=65).contains(&c)),
            "{counts:?}"
        );
    }

    /// Sainte-Laguë rounds each count to its weight share of the turns taken:
    /// off from the ideal by at most one slot plus the backend's part of the
    /// others' rounding (half a slot each), even in tiny tables.
    #[test]
    fn counts_are_weight_shares_rounded() {
        let mut rng = Rng::new(0x5eed_0006);
        for size in [13, 101, 1021, 4099] {
            for _ in 0..10 {
                let n = rng.range(1, 40) as usize;
                let mut set = random_set(&mut rng, n, |r| r.range(0, 50) as u32);
                set[0].weight = set[0].weight.max(1);
                let total = total_weight(&set);
                let counts = slot_counts(&build_table(&set, size).unwrap(), n);
                for (b, &count) in set.iter().zip(&counts) {
                    let share = f64::from(b.weight) / total;
                    let ideal = f64::from(size) * share;
                    let slack = 1.0 + n as f64 / 2.0 * share;
                    assert!(
                        (f64::from(count) - ideal).abs() <= slack,
                        "{size} slots, weight {} of {total}: {count} slots, ideal {ideal:.2}",
                        b.weight
                    );
                }
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_about_its_share() {
        let mut rng = Rng::new(0x5eed_0001);
        for _ in 0..30 {
            let n = rng.range(2, 50) as usize;
            let set = random_set(&mut rng, n, equal);
            let mut less = set.clone();
            less.remove(rng.range(0, n as u64 - 1) as usize);
            let m = moved(&set, &less, DEFAULT_TABLE_SIZE);
            check_disruption(m, 1.0 / n as f64, &format!("remove 1 of {n}")).unwrap();
        }
    }

    #[test]
    fn adding_a_backend_moves_about_its_share() {
        let mut rng = Rng::new(0x5eed_0002);
        for _ in 0..30 {
            let n = rng.range(2, 50) as usize;
            let more = random_set(&mut rng, n + 1, equal);
            let set = &more[..n];
            let m = moved(set, &more, DEFAULT_TABLE_SIZE);
            check_disruption(m, 1.0 / (n + 1) as f64, &format!("add 1 to {n}")).unwrap();
        }
    }

    /// A random weighted set, one of its members, and the set without it.
    fn weighted_set_without_one(rng: &mut Rng) -> (Vec<MaglevBackend>, usize, Vec<MaglevBackend>) {
        let n = rng.range(2, 50) as usize;
        let set = random_set(rng, n, |r| r.range(1, 100) as u32);
        let gone = rng.range(0, n as u64 - 1) as usize;
        let mut less = set.clone();
        less.remove(gone);
        (set, gone, less)
    }

    #[test]
    fn with_weights_removing_a_backend_moves_about_its_share() {
        let mut rng = Rng::new(0x5eed_0003);
        for _ in 0..12 {
            let (set, gone, less) = weighted_set_without_one(&mut rng);
            let n = set.len();
            let share = f64::from(set[gone].weight) / total_weight(&set);
            let m = moved(&set, &less, DEFAULT_TABLE_SIZE);
            check_disruption(
                m,
                share,
                &format!("remove weight {} of {n}", set[gone].weight),
            )
            .unwrap();
        }
    }

    #[test]
    fn weight_zero_is_the_same_as_absent() {
        let mut rng = Rng::new(0x5eed_0004);
        for _ in 0..20 {
            let (set, gone, less) = weighted_set_without_one(&mut rng);
            let mut quiet = set.clone();
            quiet[gone].weight = 0;
            assert_eq!(keys(&quiet, 4099), keys(&less, 4099));
        }
    }

    /// The builder against the definition, written the slow obvious way: every
    /// backend's whole permutation, and every turn of every backend sorted by
    /// (time, heavier first, key order).
    fn reference_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        let mut live: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].weight > 0)
            .collect();
        live.sort_by_key(|&i| backends[i].key);
        let perms: Vec<Vec<u32>> = live
            .iter()
            .map(|&i| {
                let walk = Walk::new(&backends[i].key, size);
                let perm: Vec<u32> = (0..size).map(|j| walk.slot(j)).collect();
                let mut sorted = perm.clone();
                sorted.sort_unstable();
                assert!(sorted.iter().copied().eq(0..size), "not a permutation");
                perm
            })
            .collect();
        let mut turns: Vec<(u64, u64, usize)> = Vec::new(); // (2k - 1, weight, rank)
        for (rank, &i) in live.iter().enumerate() {
            let w = u64::from(backends[i].weight);
            turns.extend((1..=u64::from(size)).map(|k| (2 * k - 1, w, rank)));
        }
        turns.sort_by(|a, b| {
            (u128::from(a.0) * u128::from(b.1))
                .cmp(&(u128::from(b.0) * u128::from(a.1)))
                .then(b.1.cmp(&a.1))
                .then(a.2.cmp(&b.2))
        });
        let mut table = vec![NO_BACKEND; size as usize];
        let mut next = vec![0usize; live.len()];
        for &(_, _, rank) in turns.iter().take(size as usize) {
            while table[perms[rank][next[rank]] as usize] != NO_BACKEND {
                next[rank] += 1;
            }
            table[perms[rank][next[rank]] as usize] = live[rank] as u32;
        }
        table
    }

    #[test]
    fn matches_the_reference_construction() {
        let mut rng = Rng::new(0x5eed_0005);
        for size in [2, 3, 13, 101, 251, 1021] {
            for n in [1, 2, 5, 17, 40] {
                let set = random_set(&mut rng, n, |r| [0, 1, 1, 2, 3, 10][r.range(0, 5) as usize]);
                assert_eq!(
                    build_table(&set, size).unwrap(),
                    reference_table(&set, size),
                    "{size} slots, {n} backends"
                );
            }
        }
    }

    /// The checks above can fail: `hash % n` placement, which remaps nearly
    /// everything when n changes, is caught by them.
    #[test]
    fn the_disruption_check_rejects_modulo_placement() {
        let modulo = |n: usize| -> Vec<Option<BackendKey>> {
            (0..DEFAULT_TABLE_SIZE as usize)
                .map(|s| Some(v4(10, 0, 0, (s % n) as u8, 80)))
                .collect()
        };
        let m = moved_fraction(&modulo(10), &modulo(9)).unwrap();
        assert!(check_disruption(m, 0.1, "modulo").is_err(), "moved {m}");
        let mut set = random_set(&mut Rng::new(9), 4, equal);
        let table = build_table(&set, 4099).unwrap();
        set[0].weight = 3; // shares no longer match the table
        assert!(check_shares(&set, &table).is_err());
    }

    #[test]
    fn moved_fraction_counts_slots_that_change_owner() {
        let (a, b) = (Some(v4(10, 0, 0, 1, 80)), Some(v4(10, 0, 0, 2, 80)));
        assert_eq!(moved_fraction(&[a, a, b, b], &[a, b, b, b]), Ok(0.25));
        assert_eq!(moved_fraction(&[a, b], &[None, None]), Ok(1.0));
        assert_eq!(moved_fraction(&[], &[]), Ok(0.0));
        assert!(moved_fraction(&[a], &[a, b])
            .unwrap_err()
            .contains("1 and 2 slots"));
    }

    #[test]
    fn slot_keys_and_counts_skip_empty_slots() {
        let set = [MaglevBackend {
            key: v4(10, 0, 0, 1, 80),
            weight: 1,
        }];
        let table = [0, NO_BACKEND, 0];
        assert_eq!(
            slot_keys(&table, &set),
            vec![Some(set[0].key), None, Some(set[0].key)]
        );
        assert_eq!(slot_counts(&table, 1), vec![2]);
    }

    /// Tables must not change between lbctl versions (hashes, seeds, turn
    /// order): an upgrade would otherwise move flows that have no conntrack
    /// entry. These entries were computed by this implementation; a change
    /// here is a change of the table format.
    #[test]
    fn tables_are_stable_across_versions() {
        let set = [
            MaglevBackend {
                key: v4(10, 0, 0, 1, 80),
                weight: 1,
            },
            MaglevBackend {
                key: v4(10, 0, 0, 2, 80),
                weight: 2,
            },
            MaglevBackend {
                key: v4(10, 0, 0, 3, 80),
                weight: 0,
            },
            MaglevBackend {
                key: v4(192, 168, 7, 9, 8080),
                weight: 1,
            },
        ];
        let table = build_table(&set, 13).unwrap();
        assert_eq!(table, GOLDEN_13);
    }

    const GOLDEN_13: [u32; 13] = [0, 0, 1, 0, 1, 1, 3, 3, 1, 1, 1, 1, 3];
}
