/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* What the steps hand each other: the parsed packet, where it goes (flow),
 * and how it leaves (next hop), with the few header constants they need.
 * One place, so each step header includes this rather than an earlier or a
 * later step. Like every header here it expects vmlinux.h and libbpf's
 * bpf_helpers.h and bpf_endian.h to be included first. */
#ifndef LB_PACKET_H
#define LB_PACKET_H

#include "lb_abi.h"

/* vmlinux.h has the kernel's types but not its macros. */
#define ETH_ALEN   6
#define ETH_P_IP   0x0800
#define ETH_P_IPV6 0x86DD
#define AF_INET    2
#define AF_INET6   10
#define IP_DF      0x4000
#define IP_MF      0x2000
#define IP_OFFSET  0x1fff
#define IP6_MF     0x0001 /* fragment header: more fragments */
#define IP6_OFFSET 0xfff8 /* fragment header: offset, in 8-byte units << 3 */
#define IPV6_FLOWINFO_MASK 0x0fffffff /* traffic class and flow label, host order */

/* IPv6 extension headers the parser walks past (linux/in6.h). */
#define IPPROTO_HOPOPTS  0
#define IPPROTO_ROUTING  43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_DSTOPTS  60

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* A step returns LB_CONTINUE to let the packet go on, or an enum lb_reason
 * (>= 0) to stop it there. */
#define LB_CONTINUE (-1)

/* The packet as parse found it; pointers into the frame. Every step takes
 * the family from here: an address is one 32-bit word (IPv4) or four
 * (IPv6), in network order. */
struct packet {
	struct ethhdr *eth;
	union {            /* by family */
		struct iphdr *ip;
		struct ipv6hdr *ip6;
	};
	__be32 *saddr;     /* the addresses in the IP header: 1 or 4 words */
	__be32 *daddr;
	__be16 *ports;     /* sport, dport: the first 4 bytes of TCP and UDP */
	__sum16 *l4_check; /* TCP or UDP checksum field */
	__u32 len;         /* frame length, for the byte counters */
	__u32 l4_len;      /* TCP/UDP header and payload, as the IP header counts them */
	__u16 l4_sum;      /* with csum_partial: the segment's folded sum (partial_csum.h) */
	__u16 l4_pseudo;   /* with csum_partial: the field as found, the pseudo-header's sum */
	bool csum_partial; /* the L4 checksum field holds only the pseudo-header sum */
	__u8 family;       /* LB_AF_INET or LB_AF_INET6 */
	__u8 proto;        /* TCP or UDP (IPv6: after the extension headers) */
	__u8 tcp_flags;    /* byte 13 of the TCP header; 0 for UDP */
	bool first_fragment;
	__u8 tcp_hdr_len;  /* TCP: data offset in bytes; 0 for UDP */
	__be32 tcp_seq;    /* TCP: sequence number (network order); 0 for UDP */
};

/* Sets pkt->family to a constant the compiler cannot see through. Left to
 * itself, clang derives a later `family == LB_AF_INET6` from the EtherType
 * it was set from; 6.1's verifier cannot link that value to the packet
 * pointers of its path and then walks the IPv6 branch with an IPv4 packet
 * (reading addr[1] past a short header) and refuses the program. A constant
 * it tracks exactly. */
static __always_inline void set_family(struct packet *pkt, __u8 family)
{
	asm volatile("" : "+r"(family));
	pkt->family = family;
}

/* IPv4 TTL or IPv6 hop limit. */
static __always_inline __u8 pkt_ttl(const struct packet *pkt)
{
	return pkt->family == LB_AF_INET6 ? pkt->ip6->hop_limit : pkt->ip->ttl;
}

/* IPv4 TOS or IPv6 traffic class. */
static __always_inline __u8 pkt_tos(const struct packet *pkt)
{
	if (pkt->family == LB_AF_INET6)
		return (pkt->ip6->priority << 4) | (pkt->ip6->flow_lbl[0] >> 4);
	return pkt->ip->tos;
}

/* IPv4 total length, IPv6 40 + payload length: what the FIB checks
 * against the MTU. */
static __always_inline __u16 pkt_ip_len(const struct packet *pkt)
{
	if (pkt->family == LB_AF_INET6)
		return sizeof(struct ipv6hdr) + bpf_ntohs(pkt->ip6->payload_len);
	return bpf_ntohs(pkt->ip->tot_len);
}

/* Where a packet goes, read from its conntrack entry (or from the flow
 * cache, which remembers it): the other direction's tuple, reversed.
 * Original direction: to the backend (from the SNAT address in fullnat).
 * Reply direction: from the VIP to the client. dsr and tunnel keep the
 * packet's destination (keep_dst) and route to daddr, the backend.
 * Addresses as the maps hold
 * them: IPv4 in word 0, words 1-3 zero. */
struct flow {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u16 csum_ip;  /* what the rewrite changes in the IPv4 header checksum */
	__u16 csum_l4;  /* and in the L4 checksum (rewrite.h) */
	__u32 mark;
	bool created;
	bool keep_dst;  /* dsr, tunnel: daddr is the backend, for the FIB only */
	bool dsr;       /* daddr is a backend that must be on a link */
	__u8 encap;     /* tunnel: bytes of outer header to add, else 0 */
	bool to_client; /* fast path only: the flow cache entry's direction (a reply) */
};

/* Where a packet leaves and with which MACs: from the FIB, or from the flow
 * cache, which remembers what the FIB said. */
struct next_hop {
	__u32 ifindex;
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__u16 mtu;        /* the egress MTU, when the packet is too big for it */
};

/* An address of the packet (1 or 4 words) into the 4 words the maps and
 * struct flow hold: IPv4 in word 0, the rest zero. */
static __always_inline void addr_load(__be32 to[4], const __be32 *from, __u8 family)
{
	if (family == LB_AF_INET6) {
		to[0] = from[0];
		to[1] = from[1];
		to[2] = from[2];
		to[3] = from[3];
	} else {
		to[0] = from[0];
		to[1] = 0;
		to[2] = 0;
		to[3] = 0;
	}
}

/* An address as one word: IPv4's, or IPv6's four XORed. The prefilter's
 * input and the flow cache key's address (lb_abi.h). */
static __always_inline __be32 addr_fold(const __be32 *addr, __u8 family)
{
	if (family == LB_AF_INET6)
		return addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
	return addr[0];
}

/* Two IPv6 addresses (4 words each) are the same; one test, no branch per
 * word. */
static __always_inline bool addr6_equal(const __be32 *a, const __be32 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

/* The reverse of addr_load: an address from 4 words into the packet (1 or
 * 4 words). */
static __always_inline void addr_store(__be32 *to, const __be32 from[4], __u8 family)
{
	to[0] = from[0];
	if (family == LB_AF_INET6) {
		to[1] = from[1];
		to[2] = from[2];
		to[3] = from[3];
	}
}

#endif /* LB_PACKET_H */
