//! VIPs' limits on new flows a second (`--max-new-flows`, `bpf/limit.h`):
//! each in its VIP's row of `vip_rates`, on while the VIP's row has
//! `LB_VIP_RATE_LIMIT`. Turned on limit-first and off flag-first, so an
//! lbctl killed in between leaves the flag's word, never a flag with no
//! limit behind it.

use std::time::Duration;

use anyhow::{Context, Result};
use libbpf_rs::MapFlags;

use super::abi::LB_VIP_RATE_LIMIT;
use super::codec::{bytes_of, switch_flag, VipEntry};
use super::maps::{Map, Maps};
use super::running::Running;
use super::types::lb_vip_rate;
use crate::model::Service;

// SAFETY: plain old data: #[repr(C)], integer fields and arrays only.
unsafe impl plain::Plain for lb_vip_rate {}

const _: () = assert!(std::mem::size_of::<lb_vip_rate>() == 40);

impl Maps {
    fn vip_rates_map(&self) -> Result<&Map> {
        self.vip_rates.as_ref().context(
            "the running lbctl program predates --max-new-flows: upgrade it first (lbctl attach IFACE --replace)",
        )
    }

    fn rate_row(&self, index: u32) -> Result<Option<lb_vip_rate>> {
        match self.vip_rates.as_ref() {
            Some(map) => map.get(
                bytes_of(&index),
                &format_args!("the limit of VIP index {index}"),
            ),
            None => Ok(None),
        }
    }

    /// Fills in the limit of every VIP whose row has the flag.
    pub(super) fn read_limits(&self, vips: &mut [VipEntry]) -> Result<()> {
        for v in vips.iter_mut().filter(|v| v.has_limit) {
            v.max_new_flows = self
                .rate_row(v.index)?
                .map(|r| r.max_new_flows)
                .filter(|&n| n > 0);
        }
        Ok(())
    }

    /// Writes the limit row of VIP index `index` (its count starts again).
    /// For a VIP being added, before its row: a stale row of a VIP deleted
    /// there goes too.
    pub(super) fn put_limit(&self, index: u32, limit: Option<u32>) -> Result<()> {
        let row = lb_vip_rate {
            max_new_flows: limit.unwrap_or(0),
            ..Default::default()
        };
        let map = match (limit, self.vip_rates.as_ref()) {
            (None, None) => return Ok(()),
            (Some(_), None) => self.vip_rates_map()?,
            (_, Some(map)) => map,
        };
        map.put(
            bytes_of(&index),
            &row,
            MapFlags::ANY,
            &format_args!("the limit of VIP index {index}"),
        )
    }

    /// Changes a VIP's limit on new flows a second (None: no limit): the
    /// limit, then the flag; or, turning it off, the flag first. Returns
    /// whether anything changed.
    pub fn set_max_new_flows(
        &self,
        run: &mut Running,
        service: &Service,
        limit: Option<u32>,
    ) -> Result<bool> {
        // The limit before the flag goes on; the flag off before the limit.
        let write = |vip: &VipEntry| {
            self.edit_vip_row(service, |row| {
                if limit.is_some() {
                    self.put_limit(vip.index, limit)?;
                }
                Ok(switch_flag(row, LB_VIP_RATE_LIMIT, limit.is_some()))
            })?;
            match limit {
                Some(_) => Ok(()),
                None => self.put_limit(vip.index, None),
            }
        };
        run.change_vip(
            service,
            |vip| vip.max_new_flows == limit,
            write,
            |v| {
                v.max_new_flows = limit;
                v.has_limit = limit.is_some();
            },
        )
    }

    /// The data path's estimate of VIP index `index`'s new flows over the
    /// last second, as `bpf/limit.h` computes it now (None without a
    /// limit row). `now` is CLOCK_MONOTONIC, the data path's clock.
    pub fn new_flow_rate(&self, index: u32, now: Duration) -> Result<Option<u64>> {
        Ok(self.rate_row(index)?.map(|r| estimate(&r, now)))
    }
}

/// `bpf/limit.h`'s estimate: this second's admitted flows plus the last
/// second's, weighted by the share of it still within one second of now.
fn estimate(r: &lb_vip_rate, now: Duration) -> u64 {
    const NS: u64 = 1_000_000_000;
    let now = now.as_nanos() as u64;
    let second = now / NS;
    let left = NS - (now - second * NS);
    let slot = (second & 1) as usize;
    let this = if r.second[slot] == second {
        r.flows[slot]
    } else {
        0
    };
    let last = if r.second[slot ^ 1] + 1 == second {
        r.flows[slot ^ 1]
    } else {
        0
    };
    this + last * left / NS
}

/// CLOCK_MONOTONIC now: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_weighs_the_last_second_by_what_remains_of_it() {
        // Second 10 (slot 0): 100 flows; second 11 (slot 1): 30 so far.
        let r = lb_vip_rate {
            second: [10, 11],
            flows: [100, 30],
            ..Default::default()
        };
        assert_eq!(estimate(&r, Duration::from_millis(11_000)), 130);
        assert_eq!(estimate(&r, Duration::from_millis(11_250)), 105);
        assert_eq!(estimate(&r, Duration::from_millis(11_999)), 30);
        // Second 12 (slot 0 again, still holding second 10): only second
        // 11's flows count, weighted.
        assert_eq!(estimate(&r, Duration::from_millis(12_500)), 15);
        // Two seconds later nothing is recent.
        assert_eq!(estimate(&r, Duration::from_millis(13_500)), 0);
    }
}
