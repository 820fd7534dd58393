//! How long lbctl takes to build a VIP's Maglev table: 1,000 backends at the
//! default size (the goal: under 20 ms), with equal and with mixed weights.

use std::time::{Duration, Instant};

use lbctl::maglev::{build_table, MaglevBackend, DEFAULT_TABLE_SIZE};

fn backends(n: u32, mixed_weights: bool) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| {
            let mut key = [0u8; 20];
            key[..4].copy_from_slice(&[198, 19, (i >> 8) as u8, i as u8]);
            key[16..18].copy_from_slice(&8080u16.to_be_bytes());
            key[18] = 6;
            key[19] = 4;
            let weight = if mixed_weights { 1 + i % 100 } else { 1 };
            MaglevBackend { key, weight }
        })
        .collect()
}

/// Median and maximum of `builds` builds of each kind, printed.
pub fn report(builds: usize) {
    println!("Maglev table build, 1000 backends, {DEFAULT_TABLE_SIZE} slots, {builds} builds:");
    for (label, mixed) in [("equal weights", false), ("weights 1..100", true)] {
        let input = backends(1000, mixed);
        let mut times: Vec<Duration> = (0..builds)
            .map(|_| {
                let t = Instant::now();
                let table = build_table(&input, DEFAULT_TABLE_SIZE).expect("valid input");
                let spent = t.elapsed();
                assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize);
                spent
            })
            .collect();
        times.sort();
        println!(
            "  {label:<16} median {:>6.2} ms   max {:>6.2} ms",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
}
