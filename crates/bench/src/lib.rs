//! What the benchmarks share: their medians and what they record about the
//! machine they measured on (here), JSON string quoting for their reports
//! (`json`), and lbctl-bench's frames, restoring harness and configurations
//! (`frames`, `harness`, `lab`), which `examples/ab_objects.rs` uses too.

pub mod frames;
pub mod harness;
pub mod json;
pub mod lab;

/// The median of the finite values (NaN if there are none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|x| x.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The 1-minute load average: how busy the machine was while measuring.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The CPU model, as /proc/cpuinfo names it.
pub fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![9.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![1.0, 9.0, 2.0, 4.0]), 3.0);
        assert_eq!(median(vec![f64::NAN, 1.0, f64::INFINITY]), 1.0);
        assert!(median(vec![f64::NAN]).is_nan());
    }
}
