/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Rewrite: addresses and ports as the conntrack entry says, checksums
 * updated incrementally (csum.h), with changes computed once per flow
 * direction (the flow cache keeps them). */
#ifndef LB_REWRITE_H
#define LB_REWRITE_H

#include "packet.h"
#include "csum.h"

/* What the rewrite to f changes in the checksums (RFC 1624 sums, folded):
 * the IPv4 header's covers the addresses, the L4 checksum's the addresses
 * (pseudo-header) and the ports. It depends only on the packet's tuple and
 * the flow's, so the flow cache remembers it with the decision and the
 * fast path does not compute it again. */
static __always_inline void rewrite_csum(const struct packet *pkt, struct flow *f)
{
	__u64 addrs = 0, ports = 0;

	csum_delta_addr(&addrs, pkt->saddr, f->saddr, pkt->family);
	csum_delta16(&ports, pkt->ports[0], f->sport);
	if (!f->keep_dst) {
		csum_delta_addr(&addrs, pkt->daddr, f->daddr, pkt->family);
		csum_delta16(&ports, pkt->ports[1], f->dport);
	}
	f->csum_ip = csum_fold(addrs);
	f->csum_l4 = csum_fold(addrs + ports);
}

/* Addresses and ports as f says, and the checksum changes it carries. */
static __always_inline void rewrite_packet(struct packet *pkt, const struct flow *f)
{
	addr_store(pkt->saddr, f->saddr, pkt->family);
	pkt->ports[0] = f->sport;
	if (!f->keep_dst) { /* dsr, tunnel: the backend holds the VIP */
		addr_store(pkt->daddr, f->daddr, pkt->family);
		pkt->ports[1] = f->dport;
	}
	if (pkt->family == LB_AF_INET) /* IPv6 has no header checksum */
		pkt->ip->check = csum_apply(pkt->ip->check, f->csum_ip);
	/* A UDP checksum of 0 means "none" and stays 0, in IPv6 too, where it
	 * is invalid but for tunnels that allow it (RFC 6935): the backend's
	 * stack drops it or accepts it, as it would have without lbctl. */
	if (pkt->proto == IPPROTO_UDP) {
		if (*pkt->l4_check)
			*pkt->l4_check = csum_apply_udp(*pkt->l4_check, f->csum_l4);
	} else {
		*pkt->l4_check = csum_apply(*pkt->l4_check, f->csum_l4);
	}
}

#endif /* LB_REWRITE_H */
