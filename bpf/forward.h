/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forward: route the rewritten packet with the kernel's FIB, fill in the
 * MACs and send it from XDP: back out of the same interface (XDP_TX) or out
 * of another attached one (devmap redirect). When XDP cannot (no neighbour
 * entry yet, route through an interface lbctl is not on) the rewritten
 * packet goes to the stack, which forwards it and resolves the neighbour. */
#ifndef LB_FORWARD_H
#define LB_FORWARD_H

#include "maps.h"
#include "parse.h"
#include "rewrite.h"
#include "stats.h"

#define AF_INET 2
#define ETH_ALEN 6

static __always_inline int forward(struct xdp_md *ctx, struct packet *pkt)
{
	struct iphdr *ip = pkt->ip;
	struct bpf_fib_lookup fib = {};
	int rc, action;

	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;

	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return verdict(LB_PASS_NO_NEIGH, XDP_PASS);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || ip->ttl <= 1)
		return verdict(LB_PASS_FIB, XDP_PASS); /* the stack routes or answers ICMP */

	decrement_ttl(ip);
	__builtin_memcpy(pkt->eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(pkt->eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return verdict(LB_TX, XDP_TX);
	action = bpf_redirect_map(&tx_ports, fib.ifindex, XDP_PASS);
	return verdict(action == XDP_REDIRECT ? LB_REDIRECT : LB_PASS_FIB, action);
}

#endif /* LB_FORWARD_H */
