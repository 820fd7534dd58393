/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* A VIP's limit on new flows a second (lbctl vip add --max-new-flows):
 * checked where a flow would begin, after the allowlist and before any
 * entry is made; flows already in the table never meet it.
 *
 * One count per VIP shared by every CPU (a per-CPU share of the limit would
 * turn away flows on a busy CPU while others idle: RSS spreads flows, not
 * evenly). Each second's admitted flows are counted in the slot of its
 * parity; the estimate over the last second is this second's count plus
 * the last second's, weighted by how much of it still lies within one
 * second of now (a sliding window: no burst of twice the limit where two
 * seconds meet). Admitting is an atomic add; the check before it is not
 * atomic with it, so CPUs admitting at the same instant may pass the limit
 * by one flow each, and a second's first flows on several CPUs may reset
 * its slot over each other's first adds: both at most a flow per CPU. A VIP
 * without a limit pays one flag test. */
#ifndef LB_LIMIT_H
#define LB_LIMIT_H

#include "lb_abi.h"
#include "maps.h"

#define LB_NSEC_PER_SEC 1000000000ULL

static __always_inline bool new_flow_within_limit(const struct lb_vip *vip)
{
	__u32 index = vip->index;
	__u64 now, second, left, last, estimate;
	struct lb_vip_rate *r;
	__u64 *limited;
	__u32 slot;

	if (!(vip->flags & LB_VIP_RATE_LIMIT))
		return true;
	r = bpf_map_lookup_elem(&vip_rates, &index);
	if (!r || !r->max_new_flows)
		return true;
	now = bpf_ktime_get_ns();
	second = now / LB_NSEC_PER_SEC;
	/* Of the last second before now, the part that lies in the second
	 * before this one. */
	left = LB_NSEC_PER_SEC - (now - second * LB_NSEC_PER_SEC);
	slot = second & 1;
	if (r->second[slot] != second) {
		r->second[slot] = second;
		r->flows[slot] = 0;
	}
	last = r->second[slot ^ 1] + 1 == second ? r->flows[slot ^ 1] : 0;
	estimate = r->flows[slot] + last * left / LB_NSEC_PER_SEC;
	if (estimate < r->max_new_flows) {
		__sync_fetch_and_add(&r->flows[slot], 1);
		return true;
	}
	limited = bpf_map_lookup_elem(&vip_limited, &index);
	if (limited)
		*limited += 1;
	return false;
}

#endif /* LB_LIMIT_H */
