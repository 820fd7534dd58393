/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counters: one per verdict reason, and per VIP and backend. Per-CPU, so no
 * atomics on the hot path; lbctl sums the CPUs. */
#ifndef LB_STATS_H
#define LB_STATS_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"

/* Puts enum lb_reason in the program's BTF, so the skeleton gives lbctl its
 * names and values. */
const volatile enum lb_reason lb_reason_btf_anchor = LB_REASON_MAX;

/* Every verdict goes through here, so every packet is counted once. */
static __always_inline int verdict(enum lb_reason reason, int action)
{
	__u32 key = reason;
	__u64 *count = bpf_map_lookup_elem(&reasons, &key);

	if (count)
		*count += 1;
	return action;
}

/* The end of a packet's way: each reason has one action. */
static __always_inline int stop(enum lb_reason reason)
{
	switch (reason) {
	case LB_XDP_TX:
	case LB_ICMP_XDP_TX:
	case LB_TX_ICMP_TOO_BIG:
		return verdict(reason, XDP_TX);
	case LB_XDP_REDIRECT:
	case LB_ICMP_XDP_REDIRECT:
		return verdict(reason, XDP_REDIRECT);
	case LB_DROP_FRAGMENT:
	case LB_DROP_NO_BACKEND:
	case LB_DROP_CT_FAILED:
	case LB_DROP_REPLY_UNTRACKED:
	case LB_DROP_DSR_OFFLINK:
	case LB_DROP_TUNNEL_MTU:
	case LB_DROP_MARTIAN:
	case LB_DROP_REPLY_WRONG_IFACE:
	case LB_DROP_CT_CLASH:
	case LB_DROP_NOT_ALLOWED:
	case LB_DROP_RATE_LIMITED:
		return verdict(reason, XDP_DROP);
	default:
		return verdict(reason, XDP_PASS);
	}
}

static __always_inline void add_counters(void *map, __u32 index, __u32 len, bool created)
{
	struct lb_counters *c = bpf_map_lookup_elem(map, &index);

	if (!c)
		return;
	c->packets += 1;
	c->bytes += len;
	c->new_flows += created;
}

static __always_inline void add_traffic(void *map, __u32 index, __u32 len)
{
	struct lb_traffic *t = bpf_map_lookup_elem(map, &index);

	if (!t)
		return;
	t->packets += 1;
	t->bytes += len;
}

/* A packet of a flow, counted for its VIP and backend (from the flow's
 * mark), and to_client: for its direction too. Inlined: as a global
 * function (verified once) Linux 6.18 walked 30,000 fewer instructions,
 * but 6.1, whose budget is the tight one, 197,000 more (it prunes less
 * after a call). */
static __always_inline void count_flow(const struct flow *f, __u32 len, bool to_client)
{
	__u32 backend_id = (f->mark & LB_MARK_BACKEND_MASK) - 1;
	__u32 vip_index = (f->mark >> LB_MARK_VIP_SHIFT) & LB_MARK_VIP_MASK;

	add_counters(&vip_stats, vip_index, len, f->created);
	add_counters(&backend_stats, backend_id, len, f->created);
	if (to_client) {
		add_traffic(&vip_to_clients, vip_index, len);
		add_traffic(&backend_to_clients, backend_id, len);
	}
}

#endif /* LB_STATS_H */
