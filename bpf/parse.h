/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parse: Ethernet -> IPv4 or IPv6 (its extension headers walked) -> TCP/UDP,
 * every header checked against data_end. One function per layer; each
 * returns LB_CONTINUE or the reason to pass the packet on untouched. */
#ifndef LB_PARSE_H
#define LB_PARSE_H

#include "lb_abi.h"
#include "packet.h"

/* IPv4: options are skipped with the header length (ihl). Returns where
 * TCP/UDP starts in *l4. */
static __always_inline int parse_ipv4(struct packet *pkt, struct iphdr *ip, void *data_end,
				      void **l4)
{
	__u32 ihl_bytes, tot_len;

	if ((void *)(ip + 1) > data_end)
		return LB_PASS_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return LB_PASS_MALFORMED;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return LB_PASS_OTHER_PROTO;
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return LB_PASS_FRAGMENT; /* no ports here: cannot tell its flow */

	ihl_bytes = ip->ihl * 4;
	tot_len = bpf_ntohs(ip->tot_len);
	/* 6.1's verifier forgets the range of a byte swap: bound it again, in a
	 * way the compiler cannot drop as redundant. */
	barrier_var(tot_len);
	if (tot_len > 0xffff || tot_len < ihl_bytes || (void *)ip + tot_len > data_end)
		return LB_PASS_MALFORMED;

	pkt->ip = ip;
	pkt->saddr = &ip->saddr;
	pkt->daddr = &ip->daddr;
	set_family(pkt, LB_AF_INET);
	pkt->proto = ip->protocol;
	pkt->first_fragment = ip->frag_off & bpf_htons(IP_MF);
	pkt->l4_len = tot_len - ihl_bytes;
	*l4 = (void *)ip + ihl_bytes;
	return LB_CONTINUE;
}

/* What ipv6_walk_ext returns when it found TCP or UDP: this bit, the
 * protocol in bits 16-23, bit 24 for a first fragment, and the protocol
 * header's offset from the start of the frame in bits 0-11 (a frame in
 * XDP is at most a page; the verifier wants the bound to be small). Without
 * the bit, it is the enum lb_reason to pass the packet with. */
#define LB_WALK_FOUND      (1 << 30)
#define LB_WALK_PROTO(w)   (((w) >> 16) & 0xff)
#define LB_WALK_FIRST_FRAG (1 << 24)
#define LB_WALK_MAX_OFFSET 0xfff
#define LB_WALK_OFFSET(w)  ((w) & LB_WALK_MAX_OFFSET)
/* Also set (with LB_WALK_FOUND, or alone for IPv4) when the packet is source
 * routed: an IPv6 routing header with segments left, an IPv4 loose or strict
 * source route option. Its destination is not its final one, and its
 * TCP/UDP checksum covers the final one: lbctl does not balance it. */
#define LB_WALK_SOURCE_ROUTED (1 << 29)

/* The IPv6 extension headers before TCP/UDP, at most LB_MAX_EXT_HEADERS of
 * them: hop-by-hop, routing and destination options (wherever they appear;
 * the receiver judges their order) are skipped by their length, a fragment
 * header follows the fragment policy (a later fragment has no ports; the
 * first one is marked). Anything else ends the walk: TCP and UDP go on, the
 * rest (ICMPv6, ESP, AH, no next header, unknown) passes untouched.
 *
 * A global function, not inlined: the verifier checks it once, on its own,
 * and its caller sees the result as any number. Inlined, every count and
 * kind of extension header would be a pointer of its own range, and
 * everything after parse would be verified again for each: 60 times the
 * instructions, near the verifier's limit. Called only for packets that
 * have extension headers (or are not TCP/UDP). */
__noinline int ipv6_walk_ext(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	void *cursor = ip6 + 1;
	int first_fragment = 0;
	int routed = 0;
	__u8 next;

	if ((void *)(ip6 + 1) > data_end)
		return LB_PASS_MALFORMED;
	next = ip6->nexthdr;
#pragma unroll
	for (int i = 0; i < LB_MAX_EXT_HEADERS; i++) {
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
		    next == IPPROTO_DSTOPTS) {
			struct ipv6_opt_hdr *opt = cursor;

			if ((void *)(opt + 1) > data_end)
				return LB_PASS_MALFORMED;
			if (next == IPPROTO_ROUTING) {
				struct ipv6_rt_hdr *rt = cursor;

				if ((void *)(rt + 1) > data_end)
					return LB_PASS_MALFORMED;
				if (rt->segments_left)
					routed = LB_WALK_SOURCE_ROUTED;
			}
			next = opt->nexthdr;
			cursor += (opt->hdrlen + 1) * 8;
		} else if (next == IPPROTO_FRAGMENT) {
			struct frag_hdr *frag = cursor;

			if ((void *)(frag + 1) > data_end)
				return LB_PASS_MALFORMED;
			if (frag->frag_off & bpf_htons(IP6_OFFSET))
				return LB_PASS_FRAGMENT; /* no ports here */
			if (frag->frag_off & bpf_htons(IP6_MF))
				first_fragment = LB_WALK_FIRST_FRAG;
			next = frag->nexthdr;
			cursor = frag + 1;
		} else {
			break;
		}
	}
	if (next == IPPROTO_TCP || next == IPPROTO_UDP) {
		if (cursor > data_end || cursor - data > LB_WALK_MAX_OFFSET)
			return LB_PASS_MALFORMED;
		return LB_WALK_FOUND | routed | first_fragment | next << 16 |
		       (int)(cursor - data);
	}
	if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
	    next == IPPROTO_DSTOPTS || next == IPPROTO_FRAGMENT)
		return LB_PASS_EXT_HEADERS;
	return LB_PASS_OTHER_PROTO;
}

#define IPOPT_END_  0
#define IPOPT_NOP_  1
#define IPOPT_LSRR_ 0x83
#define IPOPT_SSRR_ 0x89

/* The options ipv4_walk_options looks at: each path through the walk is a
 * verifier state, and 40 one-byte NOPs would take it past its limit. A
 * sender that source-routes puts the route first or after a NOP or two. */
#define LB_MAX_IPV4_OPTIONS 8

/* LB_WALK_SOURCE_ROUTED if the IPv4 header's first LB_MAX_IPV4_OPTIONS
 * options hold a loose or strict source route, else 0 (a malformed option
 * list too: the parser and the receiver judge the rest). A global function,
 * as ipv6_walk_ext; called only for headers with options, which are rare. */
__noinline int ipv4_walk_options(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u8 *opts = (void *)(ip + 1);
	__u32 len, off = 0;

	if ((void *)(ip + 1) > data_end)
		return 0;
	len = ip->ihl * 4;
	if (len <= sizeof(*ip))
		return 0;
	len -= sizeof(*ip); /* at most 40 bytes of options */
	for (int i = 0; i < LB_MAX_IPV4_OPTIONS && off < len; i++) {
		__u8 *o = opts + (off & 0x3f);

		if ((void *)(o + 2) > data_end)
			return 0;
		if (o[0] == IPOPT_END_)
			return 0;
		if (o[0] == IPOPT_NOP_) {
			off++;
			continue;
		}
		if (o[0] == IPOPT_LSRR_ || o[0] == IPOPT_SSRR_)
			return LB_WALK_SOURCE_ROUTED;
		if (o[1] < 2)
			return 0;
		off += o[1];
	}
	return 0;
}

/* The walk of the headers between IP and TCP/UDP, asked by the entry
 * function and handed to parse_packet (called from deeper, its stack frame
 * would add to the steps'): ipv6_walk_ext's answer for an IPv6 packet
 * without TCP/UDP right after its header, ipv4_walk_options' for an IPv4
 * header with options, 0 for any other packet. */
static __always_inline int walk_headers(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		if ((void *)(ip + 1) > data_end || ip->ihl <= 5)
			return 0;
		return ipv4_walk_options(ctx);
	}
	if ((void *)(ip6 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6) ||
	    ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP)
		return 0;
	return ipv6_walk_ext(ctx);
}

/* IPv6: TCP or UDP right after the header, or after the extension headers
 * ipv6_walk_ext found (its answer in walk). Returns where TCP/UDP starts
 * in *l4. */
static __always_inline int parse_ipv6(struct xdp_md *ctx, struct packet *pkt,
				      struct ipv6hdr *ip6, void *data_end, void **l4, int walk)
{
	__u32 payload_len;
	__u8 next;

	if ((void *)(ip6 + 1) > data_end)
		return LB_PASS_MALFORMED;
	if (ip6->version != 6)
		return LB_PASS_MALFORMED;
	payload_len = bpf_ntohs(ip6->payload_len);
	barrier_var(payload_len); /* as in parse_ipv4 */
	/* 0: no payload, or a jumbogram (a frame in XDP is never one). */
	if (payload_len == 0 || payload_len > 0xffff ||
	    (void *)(ip6 + 1) + payload_len > data_end)
		return LB_PASS_MALFORMED;

	next = ip6->nexthdr;
	*l4 = ip6 + 1;
	pkt->first_fragment = false;
	pkt->l4_len = payload_len;
	if (next != IPPROTO_TCP && next != IPPROTO_UDP) {
		__u32 ext_len;

		if (!(walk & LB_WALK_FOUND))
			return walk & 0xff; /* a reason */
		next = LB_WALK_PROTO(walk);
		pkt->first_fragment = walk & LB_WALK_FIRST_FRAG;
		*l4 = (void *)(long)ctx->data + LB_WALK_OFFSET(walk);
		/* The extension headers must fit in the payload length too. */
		ext_len = LB_WALK_OFFSET(walk) - sizeof(struct ethhdr) - sizeof(*ip6);
		if (ext_len > payload_len)
			return LB_PASS_MALFORMED;
		pkt->l4_len = payload_len - ext_len;
	}

	pkt->ip6 = ip6;
	pkt->saddr = ip6->saddr.in6_u.u6_addr32;
	pkt->daddr = ip6->daddr.in6_u.u6_addr32;
	set_family(pkt, LB_AF_INET6);
	pkt->proto = next;
	return LB_CONTINUE;
}

/* TCP or UDP: the ports, the checksum field, TCP's flags. The header must
 * lie within the IP length as well as within the frame: bytes after the IP
 * length are the link's padding, never ports. */
static __always_inline int parse_l4(struct packet *pkt, void *l4, void *data_end)
{
	int cut = pkt->first_fragment ? LB_PASS_FRAGMENT : LB_PASS_MALFORMED;

	pkt->ports = l4;
	pkt->csum_partial = false;
	if (pkt->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end || sizeof(*tcp) > pkt->l4_len)
			return cut;
		/* A data offset below the header's size or past the IP length is
		 * no TCP segment any receiver accepts. */
		if (tcp->doff < 5 || (!pkt->first_fragment && tcp->doff * 4 > pkt->l4_len))
			return LB_PASS_MALFORMED;
		pkt->l4_check = &tcp->check;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
		/* For tcp_seq.h, read here where the header is known to be in
		 * the frame. */
		pkt->tcp_hdr_len = tcp->doff * 4;
		pkt->tcp_seq = tcp->seq;
	} else {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end || sizeof(*udp) > pkt->l4_len)
			return cut;
		if (!pkt->first_fragment &&
		    (bpf_ntohs(udp->len) < sizeof(*udp) || bpf_ntohs(udp->len) > pkt->l4_len))
			return LB_PASS_MALFORMED;
		pkt->l4_check = &udp->check;
		pkt->tcp_flags = 0;
		pkt->tcp_hdr_len = 0;
		pkt->tcp_seq = 0;
	}
	return LB_CONTINUE;
}

/* Returns LB_CONTINUE with pkt filled in, or the reason to pass the packet
 * on untouched. ext_walk: walk_headers' answer. */
static __always_inline int parse_packet(struct xdp_md *ctx, struct packet *pkt, int ext_walk)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l4 = NULL;
	int reason;

	if ((void *)(eth + 1) > data_end)
		return LB_PASS_MALFORMED;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		reason = parse_ipv4(pkt, (void *)(eth + 1), data_end, &l4);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		reason = parse_ipv6(ctx, pkt, (void *)(eth + 1), data_end, &l4, ext_walk);
	else
		return LB_PASS_NOT_IP;
	if (reason != LB_CONTINUE)
		return reason;
	pkt->eth = eth;
	pkt->len = data_end - data;
	return parse_l4(pkt, l4, data_end);
}

#endif /* LB_PARSE_H */
