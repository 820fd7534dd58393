/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Tunnel mode: the client's packet, unchanged, inside an outer IP header
 * from the VIP's source address to its backend (IPIP for IPv4, ip6ip6 for
 * IPv6, like IPVS -i), so backends may sit beyond the balancer's link. The
 * backend decapsulates, holds the VIP and answers the client directly. */
#ifndef LB_TUNNEL_H
#define LB_TUNNEL_H

#include "lb_abi.h"
#include "packet.h"
#include "csum.h"

#define IPPROTO_IPIP_ 4   /* vmlinux.h has the enum member IPPROTO_IPIP too */
#define IPPROTO_IPV6_ 41

/* Bytes the outer header adds: what the path to the backend must carry on
 * top of the client's packet. */
static __always_inline __u16 tunnel_overhead(__u8 family)
{
	return family == LB_AF_INET6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
}

/* The outer IPv4 header: from src to the backend (f->daddr), TOS and DF as the
 * inner packet has them (DF: the path MTU is the client's to learn). Its ID
 * varies (RFC 6864: without DF a fragment is reassembled by source,
 * destination, protocol and ID, so a constant ID splices the fragments of
 * different packets together; with DF any ID will do). A random one: no
 * state to share between CPUs, and no counter an observer could read the
 * balancer's rate from. */
static __always_inline void tunnel_ipv4_header(struct iphdr *outer, const struct iphdr *inner,
					       __be32 src, const struct flow *f)
{
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = inner->tos;
	outer->tot_len = bpf_htons(bpf_ntohs(inner->tot_len) + sizeof(struct iphdr));
	outer->id = (__be16)bpf_get_prandom_u32();
	outer->frag_off = inner->frag_off & bpf_htons(IP_DF);
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP_;
	outer->check = 0;
	outer->saddr = src;
	outer->daddr = f->daddr[0];
	outer->check = csum_ipv4_header(outer);
}

/* The outer IPv6 header: traffic class and flow label of the inner one, so
 * the path treats and spreads the flow alike. */
static __always_inline void tunnel_ipv6_header(struct ipv6hdr *outer, const struct ipv6hdr *inner,
					       const __be32 *src, const struct flow *f)
{
	*(__be32 *)outer = *(const __be32 *)inner; /* version, class, label */
	outer->payload_len = bpf_htons(bpf_ntohs(inner->payload_len) + sizeof(struct ipv6hdr));
	outer->nexthdr = IPPROTO_IPV6_;
	outer->hop_limit = 64;
	addr_store((__be32 *)&outer->saddr, src, LB_AF_INET6);
	addr_store((__be32 *)&outer->daddr, f->daddr, LB_AF_INET6);
}

/* Puts the packet inside its outer header. Moves the frame: every pointer
 * of pkt is set again (eth and the inner IP header, whose hop limit
 * transmit() then decrements: the balancer is one hop of the client's
 * packet). Returns LB_CONTINUE or LB_PASS_MALFORMED if the frame cannot
 * grow (the stack drops what it cannot route). */
static __always_inline int encapsulate(struct xdp_md *ctx, struct packet *pkt,
				       const struct flow *f, const struct lb_vip *vip)
{
	const __be32 *src = (const __be32 *)vip->snat_addr;
	__u16 overhead = tunnel_overhead(pkt->family);
	void *data, *data_end;

	/* The MACs are transmit()'s to write; until then they are the
	 * client's frame's (copied below), so that a frame that goes to the
	 * stack instead (egress not attached) is still addressed to it. */
	if (bpf_xdp_adjust_head(ctx, -(int)overhead))
		return LB_PASS_MALFORMED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (pkt->family == LB_AF_INET6) {
		struct ethhdr *e = data;
		struct ipv6hdr *outer = data + sizeof(*e);
		struct ipv6hdr *inner = (void *)(outer + 1);

		if ((void *)(inner + 1) > data_end)
			return LB_PASS_MALFORMED;
		__builtin_memcpy(e, (void *)inner - sizeof(*e), 2 * ETH_ALEN);
		e->h_proto = bpf_htons(ETH_P_IPV6);
		tunnel_ipv6_header(outer, inner, src, f);
		pkt->eth = e;
		pkt->ip6 = inner;
	} else {
		struct ethhdr *e = data;
		struct iphdr *outer = data + sizeof(*e);
		struct iphdr *inner = (void *)(outer + 1);

		if ((void *)(inner + 1) > data_end)
			return LB_PASS_MALFORMED;
		__builtin_memcpy(e, (void *)inner - sizeof(*e), 2 * ETH_ALEN);
		e->h_proto = bpf_htons(ETH_P_IP);
		tunnel_ipv4_header(outer, inner, src[0], f);
		pkt->eth = e;
		pkt->ip = inner;
	}
	return LB_CONTINUE;
}

#endif /* LB_TUNNEL_H */
