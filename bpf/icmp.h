/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ICMP: errors about a balanced flow reach the host that sent the packet
 * they quote, and a packet too big for the egress gets its error back.
 *
 * An error about a flow is one more classify outcome, "about a flow": the
 * flow is the quoted packet's, found in conntrack with the quoted tuple
 * reversed (the quote is the packet as lbctl sent it on, so its reverse is
 * the tuple of the other direction, as the entry holds it). The quote is
 * rewritten to the packet as its sender sent it, and the outer header to
 * come from the peer that sender knows (the kernel's NAT does the same):
 *
 *   quoted, as lbctl sent it     found as      becomes            sent to
 *   VIP -> client (a reply)      original      backend -> client  the backend
 *                                              (fullnat: -> SNAT)
 *   client -> backend            reply         client -> VIP      the client
 *   (fullnat: SNAT -> backend)
 *
 * dsr and tunnel flows are the exception: their backends answer from the
 * VIP itself, so an error about an answer (quoting VIP -> client, found as
 * original) goes to the backend unchanged, the way the client's packets
 * go (quoted_vip). Then the forward step sends it on (FIB, XDP_TX or
 * redirect). Anything else (no entry, not lbctl's, not TCP/UDP inside)
 * passes untouched. */
#ifndef LB_ICMP_H
#define LB_ICMP_H

#include "lb_abi.h"
#include "packet.h"
#include "csum.h"
#include "classify.h"
#include "conntrack.h"
#include "forward.h"
#include "tunnel.h"

/* Not in vmlinux.h (macros in the kernel's headers). */
#define IPPROTO_ICMPV6      58
#define ICMP_DEST_UNREACH   3
#define ICMP_FRAG_NEEDED    4
#define ICMP_TIME_EXCEEDED  11
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG   2
#define ICMPV6_TIME_EXCEED  3

/* The packet an error quotes: its IP header and at least the first 8 bytes
 * of TCP/UDP (routers quote at least that much; the TCP checksum may be
 * cut off). Pointers into the frame. */
struct quote {
	__be32 *saddr;
	__be32 *daddr;
	__be16 *ports;      /* sport, dport */
	__sum16 *ip_check;  /* IPv4 header checksum; NULL for IPv6 */
	__sum16 *l4_check;  /* NULL when the quote ends before it */
	__u8 proto;
};

/* The quoted TCP/UDP header at l4: the ports, and the checksum if the quote
 * holds all of it. */
static __always_inline int quote_l4(struct quote *q, void *l4, void *data_end)
{
	if (l4 + 8 > data_end)
		return LB_PASS_ICMP_NO_FLOW;
	q->ports = l4;
	if (q->proto == IPPROTO_UDP)
		q->l4_check = l4 + 6;
	else if (l4 + 18 <= data_end)
		q->l4_check = l4 + 16;
	else
		q->l4_check = NULL;
	return LB_CONTINUE;
}

/* IPv4: an unfragmented ICMP destination unreachable or time exceeded
 * quoting TCP or UDP (a first fragment has its ports too). */
static __always_inline int quote_ipv4(struct iphdr *ip, void *data_end, struct quote *q,
				      __sum16 **icmp_check)
{
	struct icmphdr *icmp;
	struct iphdr *in;

	if (ip->version != 4 || ip->ihl < 5)
		return LB_PASS_MALFORMED;
	if (ip->protocol != IPPROTO_ICMP || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return LB_PASS_OTHER_PROTO;
	icmp = (void *)ip + ip->ihl * 4;
	if ((void *)(icmp + 1) > data_end)
		return LB_PASS_MALFORMED;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED)
		return LB_PASS_OTHER_PROTO; /* echo and the rest: the stack's */
	in = (void *)(icmp + 1);
	if ((void *)(in + 1) > data_end || in->version != 4 || in->ihl < 5 ||
	    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP) ||
	    (in->frag_off & bpf_htons(IP_OFFSET)))
		return LB_PASS_ICMP_NO_FLOW;
	q->saddr = &in->saddr;
	q->daddr = &in->daddr;
	q->ip_check = &in->check;
	q->proto = in->protocol;
	*icmp_check = &icmp->checksum;
	return quote_l4(q, (void *)in + in->ihl * 4, data_end);
}

/* IPv6: ICMPv6 destination unreachable, packet too big or time exceeded
 * right after the header, quoting TCP or UDP right after its header (an
 * error that quotes extension headers passes). */
static __always_inline int quote_ipv6(struct ipv6hdr *ip6, void *data_end, struct quote *q,
				      __sum16 **icmp_check)
{
	struct icmp6hdr *icmp;
	struct ipv6hdr *in;

	if (ip6->version != 6)
		return LB_PASS_MALFORMED;
	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return LB_PASS_OTHER_PROTO;
	icmp = (void *)(ip6 + 1);
	if ((void *)(icmp + 1) > data_end)
		return LB_PASS_MALFORMED;
	if (icmp->icmp6_type != ICMPV6_DEST_UNREACH && icmp->icmp6_type != ICMPV6_PKT_TOOBIG &&
	    icmp->icmp6_type != ICMPV6_TIME_EXCEED)
		return LB_PASS_OTHER_PROTO; /* echo, neighbour discovery: the stack's */
	in = (void *)(icmp + 1);
	if ((void *)(in + 1) > data_end || in->version != 6 ||
	    (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP))
		return LB_PASS_ICMP_NO_FLOW;
	q->saddr = in->saddr.in6_u.u6_addr32;
	q->daddr = in->daddr.in6_u.u6_addr32;
	q->ip_check = NULL;
	q->proto = in->nexthdr;
	*icmp_check = &icmp->icmp6_cksum;
	return quote_l4(q, in + 1, data_end);
}

/* The quote becomes the packet as its sender sent it (f reversed), the
 * outer header goes from f's source to f's destination; every checksum
 * follows: the quoted IPv4 header's, the quoted L4 one where the quote
 * holds it, the ICMP checksum over all of that (ICMPv6: and its
 * pseudo-header, the outer addresses), the outer IPv4 header's. All
 * incremental: the ICMP checksum keeps covering exactly the bytes there. */
static __always_inline void icmp_rewrite(struct packet *pkt, struct quote *q,
					 __sum16 *icmp_check, const struct flow *f)
{
	__u64 addrs = 0, ports = 0, outer = 0, icmp;
	__u16 old, new;

	csum_delta_addr(&addrs, q->saddr, f->daddr, pkt->family);
	csum_delta_addr(&addrs, q->daddr, f->saddr, pkt->family);
	csum_delta16(&ports, q->ports[0], f->dport);
	csum_delta16(&ports, q->ports[1], f->sport);
	csum_delta_addr(&outer, pkt->saddr, f->saddr, pkt->family);
	csum_delta_addr(&outer, pkt->daddr, f->daddr, pkt->family);
	icmp = addrs + ports;
	if (q->ip_check) {
		old = *q->ip_check;
		new = csum_apply(old, addrs);
		*q->ip_check = new;
		csum_delta16(&icmp, old, new);
	}
	if (q->l4_check) {
		old = *q->l4_check;
		if (q->proto == IPPROTO_TCP)
			new = csum_apply(old, addrs + ports);
		else
			new = old ? csum_apply_udp(old, addrs + ports) : 0;
		*q->l4_check = new;
		csum_delta16(&icmp, old, new);
	}
	addr_store(q->saddr, f->daddr, pkt->family);
	addr_store(q->daddr, f->saddr, pkt->family);
	q->ports[0] = f->dport;
	q->ports[1] = f->sport;

	if (pkt->family == LB_AF_INET6)
		icmp += outer; /* the pseudo-header */
	else
		pkt->ip->check = csum_apply(pkt->ip->check, outer);
	*icmp_check = csum_apply(*icmp_check, icmp);
	addr_store(pkt->saddr, f->saddr, pkt->family);
	addr_store(pkt->daddr, f->daddr, pkt->family);
}

/* The dsr or tunnel VIP a quoted packet came from, or NULL. A dsr or
 * tunnel backend answers the client from the VIP itself, past the
 * balancer, so an error about such an answer (a router on the client's
 * path that cannot forward it: "fragmentation needed", "packet too big")
 * comes to the VIP, i.e. here. It must reach the backend as the client's
 * packets do, unchanged (dsr: the backend's MAC; tunnel: encapsulated):
 * the backend holds the VIP, and its socket is the quoted one. Rewritten
 * as for dnat, it would quote an address the backend never sent from. */
static __always_inline struct lb_vip *quoted_vip(const struct quote *q, __u8 family)
{
	return vip_at(q->saddr, &q->ports[0], q->proto, family);
}

/* Called for what parse passed as neither TCP nor UDP. An ICMP or ICMPv6
 * error about a flow of lbctl's: rewritten and forwarded to the host that
 * sent the quoted packet. Anything else: the reason to pass it untouched.
 *
 * A global function, verified once on its own (as ipv6_walk_ext): inlined,
 * its checks would be verified again for every way parse can end. */
__noinline int icmp_error(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__sum16 *icmp_check = NULL;
	struct bpf_sock_tuple tuple;
	struct packet pkt = {};
	struct quote q = {};
	struct next_hop hop;
	struct lb_vip *vip = NULL;
	struct nf_conn *ct;
	struct flow f = {};
	__u8 dir = IP_CT_DIR_ORIGINAL;
	__u32 tuple_sz;
	int reason;

	if ((void *)(eth + 1) > data_end)
		return LB_PASS_MALFORMED;
	pkt.eth = eth;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return LB_PASS_MALFORMED;
		pkt.ip = ip;
		pkt.saddr = &ip->saddr;
		pkt.daddr = &ip->daddr;
		pkt.family = LB_AF_INET;
		pkt.proto = IPPROTO_ICMP;
		reason = quote_ipv4(ip, data_end, &q, &icmp_check);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return LB_PASS_MALFORMED;
		pkt.ip6 = ip6;
		pkt.saddr = ip6->saddr.in6_u.u6_addr32;
		pkt.daddr = ip6->daddr.in6_u.u6_addr32;
		pkt.family = LB_AF_INET6;
		pkt.proto = IPPROTO_ICMPV6;
		reason = quote_ipv6(ip6, data_end, &q, &icmp_check);
	} else {
		return LB_PASS_NOT_IP;
	}
	if (reason != LB_CONTINUE)
		return reason;
	pkt.len = data_end - data;

	/* A quoted packet lbctl sent on came from a VIP or went to a backend. */
	if (!maybe_listed(LB_PREFILTER_DST, q.saddr, pkt.family) &&
	    !maybe_listed(LB_PREFILTER_SRC, q.daddr, pkt.family))
		return LB_PASS_ICMP_NO_FLOW;
	tuple_sz = ct_tuple(&tuple, pkt.family, q.daddr, q.saddr, q.ports[1], q.ports[0]);
	ct = ct_lookup(ctx, &tuple, tuple_sz, q.proto, &dir);
	if (!ct)
		return LB_PASS_ICMP_NO_FLOW;
	if (!(ct->mark & LB_MARK_BACKEND_MASK)) {
		bpf_ct_release(ct);
		return LB_PASS_FOREIGN_CT;
	}
	ct_nat_target(ct, dir, pkt.family, &f);
	bpf_ct_release(ct);

	if (dir == IP_CT_DIR_ORIGINAL)
		vip = quoted_vip(&q, pkt.family);
	if (vip && (vip->flags & (LB_VIP_DSR | LB_VIP_TUNNEL)))
		keep_destination(&pkt, vip, &f); /* as the client's packets go */
	else
		icmp_rewrite(&pkt, &q, icmp_check, &f);
	reason = route(ctx, &pkt, &f, &hop);
	if (reason != LB_CONTINUE)
		return reason; /* rewritten; the stack forwards it */
	if (f.encap) {
		reason = encapsulate(ctx, &pkt, &f, vip);
		if (reason != LB_CONTINUE)
			return reason;
	}
	reason = transmit(ctx, &pkt, &hop);
	if (reason == LB_XDP_TX)
		return LB_ICMP_XDP_TX;
	if (reason == LB_XDP_REDIRECT)
		return LB_ICMP_XDP_REDIRECT;
	return reason;
}

/* How much of the packet lbctl's own "too big" error quotes: as much as
 * fits in 576 bytes (IPv4, RFC 1812) or in IPv6's minimum MTU of 1280
 * (RFC 4443). A packet too big for an egress is longer than both (IPv4:
 * unless an MTU is below 548; then the stack answers). */
#define TOO_BIG4_HDRS  (sizeof(struct iphdr) + sizeof(struct icmphdr))
#define TOO_BIG4_QUOTE 548
#define TOO_BIG6_HDRS  (sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr))
#define TOO_BIG6_QUOTE 1232

/* The frame becomes Ethernet + hdrs + the first quote bytes of the IP
 * packet it held (which stay where they are): room made in front, the
 * rest cut. Returns false, the frame as it was, if XDP cannot. */
static __always_inline bool make_error_frame(struct xdp_md *ctx, int hdrs, int quote)
{
	int len = ctx->data_end - ctx->data;

	if (bpf_xdp_adjust_head(ctx, -hdrs))
		return false;
	if (bpf_xdp_adjust_tail(ctx, (int)sizeof(struct ethhdr) + quote - len)) {
		bpf_xdp_adjust_head(ctx, hdrs);
		return false;
	}
	return true;
}

/* The Ethernet header of a frame sent back where one came from. */
static __always_inline void eth_back(struct ethhdr *eth, const __u8 to[ETH_ALEN],
				     const __u8 from[ETH_ALEN], __u16 proto)
{
	__builtin_memcpy(eth->h_dest, to, ETH_ALEN);
	__builtin_memcpy(eth->h_source, from, ETH_ALEN);
	eth->h_proto = bpf_htons(proto);
}

/* The frame made into an error back to its sender (make_error_frame), its
 * Ethernet header addressed back where it came from. Returns the new IP
 * header, with hdrs + quote bytes from it inside the frame, or NULL with
 * the frame as it was. The caller has checked that quote bytes follow the
 * Ethernet header. */
static __always_inline void *error_frame_back(struct xdp_md *ctx, int hdrs, int quote,
					      __u16 proto)
{
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u8 peer[ETH_ALEN], self[ETH_ALEN];
	void *data_end;

	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return NULL;
	__builtin_memcpy(peer, eth->h_source, ETH_ALEN);
	__builtin_memcpy(self, eth->h_dest, ETH_ALEN);
	if (!make_error_frame(ctx, hdrs, quote))
		return NULL;
	eth = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if ((void *)(eth + 1) + hdrs + quote > data_end)
		return NULL; /* cannot be: the verifier wants it said */
	eth_back(eth, peer, self, proto);
	return eth + 1;
}

/* IPv4 "fragmentation needed" (type 3, code 4) with the egress MTU. */
static __always_inline int too_big_ipv4(struct xdp_md *ctx, __u16 mtu)
{
	struct iphdr *ip = (void *)(long)ctx->data + sizeof(struct ethhdr);
	struct icmphdr *icmp;
	__be32 from, to;
	void *quote;
	__u64 sum;

	if ((void *)ip + TOO_BIG4_QUOTE > (void *)(long)ctx->data_end)
		return LB_PASS_FIB;
	from = ip->saddr;
	to = ip->daddr;
	ip = error_frame_back(ctx, TOO_BIG4_HDRS, TOO_BIG4_QUOTE, ETH_P_IP);
	if (!ip)
		return LB_PASS_FIB;
	icmp = (void *)(ip + 1);
	quote = icmp + 1;
	__builtin_memset(ip, 0, sizeof(*ip));
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0xc0; /* internetwork control, as the kernel's errors */
	ip->tot_len = bpf_htons(TOO_BIG4_HDRS + TOO_BIG4_QUOTE);
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->saddr = to; /* from the address the sender sent to */
	ip->daddr = from;
	ip->check = csum_ipv4_header(ip);
	__builtin_memset(icmp, 0, sizeof(*icmp));
	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = ICMP_FRAG_NEEDED;
	icmp->un.frag.mtu = bpf_htons(mtu);
	sum = csum_bytes(icmp, sizeof(*icmp)) + csum_bytes(quote, 512) +
	      csum_bytes(quote + 512, TOO_BIG4_QUOTE - 512);
	icmp->checksum = csum_finish(sum);
	return LB_TX_ICMP_TOO_BIG;
}

/* ICMPv6 "packet too big" with the egress MTU. */
static __always_inline int too_big_ipv6(struct xdp_md *ctx, __u16 mtu)
{
	struct ipv6hdr *ip6 = (void *)(long)ctx->data + sizeof(struct ethhdr);
	struct in6_addr from, to;
	struct icmp6hdr *icmp;
	void *quote;
	__u64 sum;

	if ((void *)ip6 + TOO_BIG6_QUOTE > (void *)(long)ctx->data_end)
		return LB_PASS_FIB;
	from = ip6->saddr;
	to = ip6->daddr;
	ip6 = error_frame_back(ctx, TOO_BIG6_HDRS, TOO_BIG6_QUOTE, ETH_P_IPV6);
	if (!ip6)
		return LB_PASS_FIB;
	icmp = (void *)(ip6 + 1);
	quote = icmp + 1;
	*(__be32 *)ip6 = bpf_htonl(0x60000000); /* version 6, class and label 0 */
	ip6->payload_len = bpf_htons(sizeof(*icmp) + TOO_BIG6_QUOTE);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = 64;
	ip6->saddr = to; /* from the address the sender sent to */
	ip6->daddr = from;
	__builtin_memset(icmp, 0, sizeof(*icmp));
	icmp->icmp6_type = ICMPV6_PKT_TOOBIG;
	icmp->icmp6_dataun.un_data32[0] = bpf_htonl(mtu);
	sum = csum_pseudo(ip6->saddr.in6_u.u6_addr32, ip6->daddr.in6_u.u6_addr32, LB_AF_INET6,
			  IPPROTO_ICMPV6, sizeof(*icmp) + TOO_BIG6_QUOTE);
	sum += csum_bytes(icmp, sizeof(*icmp)) + csum_bytes(quote, 512) +
	       csum_bytes(quote + 512, 512) + csum_bytes(quote + 1024, TOO_BIG6_QUOTE - 1024);
	icmp->icmp6_cksum = csum_finish(sum);
	return LB_TX_ICMP_TOO_BIG;
}

/* route() found the packet too big for its egress, where it may not be
 * fragmented: the frame, still as its sender sent it, becomes the error
 * that tells the sender so, quoting it, and goes back where it came from
 * (MACs swapped, XDP_TX). LB_PASS_FIB when it cannot be built (an IPv4
 * MTU below 548): the packet goes to the stack unchanged.
 *
 * A global function: it changes the frame's size, and verified once on its
 * own it does not multiply the main program's paths. */
__noinline int icmp_too_big(struct xdp_md *ctx, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return LB_PASS_MALFORMED;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return too_big_ipv4(ctx, mtu);
	return too_big_ipv6(ctx, mtu);
}

#endif /* LB_ICMP_H */
