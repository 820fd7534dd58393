// SPDX-License-Identifier: GPL-2.0-only
/* lbctl's data path: parse -> classify -> conntrack -> rewrite -> forward,
 * the same five steps for IPv4 and IPv6 (each step takes the family from
 * the parsed packet), with a fast path after the first, cheap, half of classify (the address
 * prefilter): a flow cache that stands in for classify's lookups,
 * conntrack and the FIB for established flows. Packets that are not for a
 * VIP and not replies of balanced flows leave untouched with XDP_PASS. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"
#include "config.h"
#include "parse.h"
#include "classify.h"
#include "flow_cache.h"
#include "conntrack.h"
#include "rewrite.h"
#include "partial_csum.h"
#include "forward.h"
#include "stats.h"

SEC("xdp")
int lbctl_xdp(struct xdp_md *ctx)
{
	struct lb_reply_source *src = NULL;
	struct flow_cache_probe probe;
	struct flow flow;
	struct next_hop hop;
	struct packet pkt;
	struct lb_vip *vip;
	__u32 generation;
	int reason;

	reason = parse_packet(ctx, &pkt);
	if (reason != LB_CONTINUE)
		return stop(reason);

	generation = config_generation(); /* before any configuration is read */
	if (!maybe_ours(&pkt))
		return stop(LB_PASS_NOT_VIP);

	/* Fast path: this direction of the flow was decided less than a
	 * second ago, under the current configuration. */
	if (!pkt.first_fragment &&
	    flow_cache_find(ctx, &pkt, generation, &probe, &flow, &hop)) {
		partial_csum_find(ctx, &pkt);
		rewrite_packet(&pkt, &flow);
		count_flow(&flow, pkt.len);
		reason = transmit(ctx, &pkt, &hop);
		partial_csum_finish(&pkt, &flow, reason);
		return stop(reason);
	}

	vip = find_vip(&pkt);
	if (!vip && !(src = from_backend(&pkt)))
		return stop(LB_PASS_NOT_VIP);
	if (pkt.first_fragment) /* lbctl does not reassemble */
		return stop(vip ? LB_DROP_FRAGMENT : LB_PASS_FRAGMENT);

	reason = conntrack(ctx, &pkt, vip, src, &flow);
	if (reason != LB_CONTINUE)
		return stop(reason);

	rewrite_csum(&pkt, &flow); /* the flow cache keeps it with the decision */
	partial_csum_find(ctx, &pkt);
	rewrite_packet(&pkt, &flow);
	count_flow(&flow, pkt.len);
	reason = route(ctx, &pkt, &hop);
	if (reason == LB_CONTINUE) {
		reason = transmit(ctx, &pkt, &hop);
		if (reason != LB_PASS_FIB)
			flow_cache_store(ctx, &pkt, &probe, &flow, &hop, generation);
	}
	partial_csum_finish(&pkt, &flow, reason);
	return stop(reason);
}

char LICENSE[] SEC("license") = "GPL";
