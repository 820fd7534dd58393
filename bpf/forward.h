/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forward: route the rewritten packet with the kernel's FIB, fill in the
 * MACs and send it from XDP: back out of the same interface (XDP_TX) or out
 * of another attached one (devmap redirect). When XDP cannot (no neighbour
 * entry yet, route through an interface lbctl is not on) the rewritten
 * packet goes to the stack, which forwards it and resolves the neighbour. */
#ifndef LB_FORWARD_H
#define LB_FORWARD_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"
#include "csum.h"

/* The FIB's question for the packet once rewritten to f's addresses, by
 * family: asked before the rewrite, so that a packet too big for the egress
 * is still as its sender sent it (icmp.h quotes it). */
static __always_inline void fib_params(const struct xdp_md *ctx, const struct packet *pkt,
				       const struct flow *f, struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->l4_protocol = pkt->proto;
	fib->tot_len = pkt_ip_len(pkt) + f->encap;
	fib->ifindex = ctx->ingress_ifindex;
	if (pkt->family == LB_AF_INET6) {
		fib->family = AF_INET6;
		fib->flowinfo = *(__be32 *)pkt->ip6 & bpf_htonl(IPV6_FLOWINFO_MASK);
		addr_store(fib->ipv6_src, f->saddr, LB_AF_INET6);
		addr_store(fib->ipv6_dst, f->daddr, LB_AF_INET6);
	} else {
		fib->family = AF_INET;
		fib->tos = pkt->ip->tos;
		fib->ipv4_src = f->saddr[0];
		fib->ipv4_dst = f->daddr[0];
	}
}

/* Whether the FIB reached f->daddr itself: it replaces the destination
 * with the gateway's address when the route has one. */
static __always_inline bool fib_on_link(const struct bpf_fib_lookup *fib, const struct flow *f,
					__u8 family)
{
	const __be32 *d = f->daddr;

	if (family == LB_AF_INET6)
		return addr6_equal(fib->ipv6_dst, d);
	return fib->ipv4_dst == d[0];
}

/* A TCP/UDP packet a router may not fragment: IPv6, or IPv4 with DF. An
 * IPv4 packet without DF goes to the stack, which fragments it; an ICMP
 * error is never answered with another. */
static __always_inline bool must_not_fragment(const struct packet *pkt)
{
	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP)
		return false;
	return pkt->family == LB_AF_INET6 || (pkt->ip->frag_off & bpf_htons(IP_DF));
}

/* IPv6's minimum MTU: no "packet too big" may advertise less (RFC 8200
 * 5), and a sender told less uses 1,280 anyway. */
#define IPV6_MIN_MTU 1280

/* The too-big answer for an IPv6 packet whose room (an ip6ip6 tunnel's MTU
 * minus its outer header, on a link below 1,320) is under 1,280: a packet
 * over 1,280 is told 1,280; one of 1,280 or less cannot be made to fit (RFC
 * 2473 would fragment the outer packet, which XDP cannot), so it is dropped
 * and counted (drop_tunnel_mtu), not answered with a figure the sender
 * would ignore. IPv4 keeps the egress figure. */
static __always_inline int ipv6_min_mtu(const struct packet *pkt, struct next_hop *hop)
{
	if (pkt->family != LB_AF_INET6 || hop->mtu >= IPV6_MIN_MTU)
		return LB_TX_ICMP_TOO_BIG;
	if (pkt_ip_len(pkt) <= IPV6_MIN_MTU)
		return LB_DROP_TUNNEL_MTU;
	hop->mtu = IPV6_MIN_MTU;
	return LB_TX_ICMP_TOO_BIG;
}

/* Where the packet goes once rewritten to f's addresses. Returns
 * LB_CONTINUE with hop filled in; LB_TX_ICMP_TOO_BIG with hop->mtu when it
 * is too big for the egress and may not be fragmented (icmp.h answers the
 * sender); or the reason to pass the (rewritten) packet to the stack. */
static __always_inline int route(struct xdp_md *ctx, const struct packet *pkt,
				 const struct flow *f, struct next_hop *hop)
{
	struct bpf_fib_lookup *fib;
	struct lb_scratch *s;
	int rc;

	s = get_scratch();
	if (!s)
		return LB_PASS_FIB;
	fib = &s->fib;
	fib_params(ctx, pkt, f, fib);
	rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return LB_PASS_NO_NEIGH;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && must_not_fragment(pkt)) {
		/* tunnel: the sender must leave room for the outer header */
		hop->mtu = fib->mtu_result - f->encap;
		return ipv6_min_mtu(pkt, hop);
	}
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && f->encap)
		return LB_DROP_TUNNEL_MTU; /* XDP cannot fragment it */
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || pkt_ttl(pkt) <= 1)
		return LB_PASS_FIB; /* the stack routes or answers ICMP */
	if (f->dsr && !fib_on_link(fib, f, pkt->family))
		return LB_DROP_DSR_OFFLINK; /* a gateway would send it back: a loop */
	hop->ifindex = fib->ifindex;
	__builtin_memcpy(hop->smac, fib->smac, ETH_ALEN);
	__builtin_memcpy(hop->dmac, fib->dmac, ETH_ALEN);
	return LB_CONTINUE;
}

/* One hop less: IPv4's TTL with its header checksum, IPv6's hop limit (no
 * header checksum, and the L4 checksum does not cover it). */
static __always_inline void decrement_hop_limit(struct packet *pkt)
{
	if (pkt->family == LB_AF_INET6)
		pkt->ip6->hop_limit--;
	else
		decrement_ttl(pkt->ip);
}

/* One hop less, the next hop's MACs, and out: the same interface (LB_XDP_TX) or
 * another attached one (LB_XDP_REDIRECT). The caller has checked TTL (hop
 * limit) > 1. If the egress is not in tx_ports (not attached: the other arm
 * of a half-attached balancer, a VLAN, bond or bridge), LB_PASS_FIB with the
 * MACs and TTL as they came: the frame is still addressed to this host, so
 * the stack accepts it, forwards it and takes the hop itself. Rewritten for
 * the next hop, the stack would drop it as another host's. */
static __always_inline int transmit(struct xdp_md *ctx, struct packet *pkt,
				    const struct next_hop *hop)
{
	int reason = LB_XDP_TX;

	if (hop->ifindex != ctx->ingress_ifindex) {
		if (bpf_redirect_map(&tx_ports, hop->ifindex, XDP_PASS) != XDP_REDIRECT)
			return LB_PASS_FIB;
		reason = LB_XDP_REDIRECT;
	}
	decrement_hop_limit(pkt);
	__builtin_memcpy(pkt->eth->h_dest, hop->dmac, ETH_ALEN);
	__builtin_memcpy(pkt->eth->h_source, hop->smac, ETH_ALEN);
	return reason;
}

#endif /* LB_FORWARD_H */
