/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Rewrite: addresses and ports as the conntrack entry says, checksums
 * updated incrementally (RFC 1624). XDP has no csum_replace helpers. */
#ifndef LB_REWRITE_H
#define LB_REWRITE_H

#include "packet.h"

/* Accumulates ~old + new over 16-bit words; byte order does not matter for
 * a one's complement sum as long as old and new are in the same order. */
static __always_inline void csum_delta32(__u64 *acc, __u32 old, __u32 new)
{
	*acc += (~old & 0xffff) + (~old >> 16) + (new & 0xffff) + (new >> 16);
}

static __always_inline void csum_delta16(__u64 *acc, __u16 old, __u16 new)
{
	*acc += (__u16)~old + new;
}

static __always_inline __u16 csum_apply(__u16 check, __u64 acc)
{
	acc += (__u16)~check;
	acc = (acc & 0xffff) + (acc >> 16);
	acc = (acc & 0xffff) + (acc >> 16);
	acc = (acc & 0xffff) + (acc >> 16);
	return ~(__u16)acc;
}

static __always_inline void rewrite_packet(struct packet *pkt, const struct flow *f)
{
	struct iphdr *ip = pkt->ip;
	__u64 addrs = 0, ports = 0;

	csum_delta32(&addrs, ip->saddr, f->saddr);
	csum_delta32(&addrs, ip->daddr, f->daddr);
	csum_delta16(&ports, pkt->ports[0], f->sport);
	csum_delta16(&ports, pkt->ports[1], f->dport);

	ip->saddr = f->saddr;
	ip->daddr = f->daddr;
	pkt->ports[0] = f->sport;
	pkt->ports[1] = f->dport;
	ip->check = csum_apply(ip->check, addrs);

	/* The L4 checksum covers the addresses through the pseudo-header. A UDP
	 * checksum of 0 means "none" and stays 0; a computed 0 is sent as
	 * 0xffff (RFC 768). */
	if (pkt->proto == IPPROTO_UDP) {
		if (*pkt->l4_check) {
			__u16 c = csum_apply(*pkt->l4_check, addrs + ports);

			*pkt->l4_check = c ? c : 0xffff;
		}
	} else {
		*pkt->l4_check = csum_apply(*pkt->l4_check, addrs + ports);
	}
}

/* A router's duty: one less hop left. TTL is the high byte of the 16-bit
 * word it shares with the protocol; the word is summed as the checksum
 * field is loaded (network order), and no pointer punning, which the
 * compiler may assume does not alias the byte it just changed. */
static __always_inline void decrement_ttl(struct iphdr *ip)
{
	__u64 acc = 0;

	csum_delta16(&acc, bpf_htons((__u16)ip->ttl << 8),
		     bpf_htons((__u16)(ip->ttl - 1) << 8));
	ip->ttl--;
	ip->check = csum_apply(ip->check, acc);
}

#endif /* LB_REWRITE_H */
