/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Parse: Ethernet -> IPv4 -> TCP/UDP, every header checked against data_end. */
#ifndef LB_PARSE_H
#define LB_PARSE_H

#include "lb_abi.h"
#include "packet.h"

/* Returns LB_CONTINUE with pkt filled in, or the reason to pass the packet
 * on untouched. IP options are skipped with the header length (ihl). */
static __always_inline int parse_packet(struct xdp_md *ctx, struct packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 ihl_bytes, tot_len;
	void *l4;

	if ((void *)(eth + 1) > data_end)
		return LB_PASS_MALFORMED;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return LB_PASS_NOT_IP;

	ip = (void *)(eth + 1);
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
	l4 = (void *)ip + ihl_bytes;

	pkt->eth = eth;
	pkt->ip = ip;
	pkt->proto = ip->protocol;
	pkt->len = data_end - data;
	pkt->first_fragment = ip->frag_off & bpf_htons(IP_MF);
	pkt->ports = l4;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return pkt->first_fragment ? LB_PASS_FRAGMENT : LB_PASS_MALFORMED;
		pkt->l4_check = &tcp->check;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
	} else {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return pkt->first_fragment ? LB_PASS_FRAGMENT : LB_PASS_MALFORMED;
		pkt->l4_check = &udp->check;
		pkt->tcp_flags = 0;
	}
	return LB_CONTINUE;
}

#endif /* LB_PARSE_H */
