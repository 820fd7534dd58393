/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Rewrite: addresses and ports as the conntrack entry says, checksums
 * updated incrementally (csum.h). */
#ifndef LB_REWRITE_H
#define LB_REWRITE_H

#include "packet.h"
#include "csum.h"

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
	/* The L4 checksum covers the addresses through the pseudo-header. A
	 * UDP checksum of 0 means "none" and stays 0. */
	if (pkt->proto == IPPROTO_UDP) {
		if (*pkt->l4_check)
			*pkt->l4_check = csum_apply_udp(*pkt->l4_check, addrs + ports);
	} else {
		*pkt->l4_check = csum_apply(*pkt->l4_check, addrs + ports);
	}
}

#endif /* LB_REWRITE_H */
