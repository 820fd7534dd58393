// SPDX-License-Identifier: GPL-2.0-only
/* lbctl's data path: parse -> classify -> conntrack -> rewrite -> forward,
 * the same five steps for IPv4 and IPv6 (each step takes the family from
 * the parsed packet), ICMP errors about a flow sent on to its host
 * (icmp.h), with a fast path after the first, cheap, half of classify (the address
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
#include "tunnel.h"
#include "icmp.h"
#include "stats.h"

/* balance() hands the entry function a packet too big for its egress as
 * LB_TX_ICMP_TOO_BIG with the egress MTU above the reason's 8 bits. */
#define TOO_BIG_WITH_MTU(mtu) (LB_TX_ICMP_TOO_BIG | (mtu) << 8)
#define REASON_OF(r)          ((r) & 0xff)
#define MTU_OF(r)             ((__u32)(r) >> 8)

/* TCP and UDP: the five steps. Returns the verdict reason.
 *
 * A function of its own so that the ICMP functions and the header walk
 * (IPv6 extension headers, IPv4 options) are called beside it by the entry
 * function, not from it: a
 * call's stack adds to its caller's, the BPF stack is 512 bytes for the
 * whole chain, and these steps use most of it. So parse gets the walk's
 * result (walk: ipv6_walk_ext's or ipv4_walk_options') instead of calling
 * it. */
static __noinline int balance(struct xdp_md *ctx, int walk)
{
	struct lb_reply_source *src = NULL;
	struct flow_cache_probe probe;
	struct flow flow;
	struct next_hop hop;
	struct packet pkt;
	struct lb_vip *vip;
	__u32 generation;
	int reason;

	reason = parse_packet(ctx, &pkt, walk);
	if (reason != LB_CONTINUE)
		return reason;

	generation = config_generation(); /* before any configuration is read */
	if (!maybe_ours(&pkt))
		return LB_PASS_NOT_VIP;
	/* Before the fast path and conntrack: no entry, no rewrite. */
	if (walk & LB_WALK_SOURCE_ROUTED)
		return LB_PASS_SOURCE_ROUTED;

	/* Fast path: this direction of the flow was decided less than a
	 * second ago, under the current configuration. */
	if (!pkt.first_fragment &&
	    flow_cache_find(ctx, &pkt, generation, &probe, &flow, &hop)) {
		partial_csum_find(ctx, &pkt);
		rewrite_packet(&pkt, &flow);
		count_flow(&flow, pkt.len, flow.to_client);
		reason = transmit(ctx, &pkt, &hop);
		partial_csum_finish(&pkt, &flow, reason);
		return reason;
	}

	vip = find_vip(&pkt);
	if (!vip && !(src = from_backend(&pkt)))
		return LB_PASS_NOT_VIP;
	if (pkt.first_fragment) /* lbctl does not reassemble */
		return vip ? LB_DROP_FRAGMENT : LB_PASS_FRAGMENT;

	reason = conntrack(ctx, &pkt, vip, src, &flow);
	if (reason != LB_CONTINUE)
		return reason;

	rewrite_csum(&pkt, &flow); /* the flow cache keeps it with the decision */
	reason = route(ctx, &pkt, &flow, &hop);
	if (reason == LB_TX_ICMP_TOO_BIG) /* not rewritten: the error quotes it as sent */
		return TOO_BIG_WITH_MTU(hop.mtu);
	partial_csum_find(ctx, &pkt);
	rewrite_packet(&pkt, &flow);
	/* Not for a VIP: from a backend, a reply. Decided from vip where it
	 * is used, not kept in flow: a value kept for the rest of the way
	 * would split the verifier's states (6.1's budget). */
	count_flow(&flow, pkt.len, !vip);
	if (reason != LB_CONTINUE) {
		partial_csum_finish(&pkt, &flow, reason);
		return reason;
	}
	if (flow.encap && vip) { /* tunnel: not cached, every packet is encapsulated here */
		/* An entry for the sender's sequence only (tcp_seq.h). */
		flow_cache_store(ctx, &pkt, &probe, &flow, &hop, generation, false, false);
		/* Completed before the frame moves: XDP sends it on. */
		partial_csum_finish(&pkt, &flow, LB_XDP_TX);
		reason = encapsulate(ctx, &pkt, &flow, vip);
		if (reason != LB_CONTINUE)
			return reason;
		return transmit(ctx, &pkt, &hop);
	}
	reason = transmit(ctx, &pkt, &hop);
	if (reason != LB_PASS_FIB)
		flow_cache_store(ctx, &pkt, &probe, &flow, &hop, generation, true, !vip);
	partial_csum_finish(&pkt, &flow, reason);
	return reason;
}

SEC("xdp")
int lbctl_xdp(struct xdp_md *ctx)
{
	int reason;

	reason = balance(ctx, walk_headers(ctx));
	if (reason == LB_PASS_OTHER_PROTO) /* maybe an ICMP error about a flow */
		reason = icmp_error(ctx);
	else if (REASON_OF(reason) == LB_TX_ICMP_TOO_BIG) /* tell the sender */
		reason = icmp_too_big(ctx, MTU_OF(reason));
	return stop(reason);
}

char LICENSE[] SEC("license") = "GPL";
