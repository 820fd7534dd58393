/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Partial checksums: a sender with TX checksum offload (every veth's default,
 * so every container) hands a packet on with CHECKSUM_PARTIAL: its TCP/UDP
 * checksum field holds only the pseudo-header sum, folded and not
 * complemented, and whoever sends it on the wire is to complete it. XDP sees
 * the bytes without the flag. An incremental update of such a field is
 * wrong, and a frame lbctl sends from XDP is no longer the stack's to
 * complete: the receiver drops it. So, before the rewrite, a packet whose
 * field equals its pseudo-header sum, and whose full sum does not verify
 * (which rules out a complete checksum that happens to equal it), is marked
 * partial, with its segment's sum; after the forward decision it gets
 * - a complete checksum when it leaves from XDP (XDP_TX, redirect), and
 * - the pseudo-header sum of its new addresses when it goes to the stack
 *   (which still holds the skb's CHECKSUM_PARTIAL and completes it).
 * A completed packet is counted in datapath_stats. The sums are csum.h's. */
#ifndef LB_PARTIAL_CSUM_H
#define LB_PARTIAL_CSUM_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"
#include "csum.h"

/* Before the rewrite: is the packet's checksum partial? Marks it and keeps
 * its segment's sum. A UDP checksum of 0 ("none") is never partial. */
static __always_inline void partial_csum_find(struct xdp_md *ctx, struct packet *pkt)
{
	__u16 check = *pkt->l4_check;
	void *data = (void *)(long)ctx->data;
	int sum;

	pkt->csum_partial = false;
	if (check == 0 || check != csum_pseudo(pkt->saddr, pkt->daddr, pkt->family, pkt->proto,
						 pkt->l4_len))
		return;
	sum = frame_sum(ctx, (void *)pkt->ports - data, pkt->l4_len);
	/* A complete checksum verifies: pseudo-header (which the field
	 * equals) plus segment sums to 0xffff. */
	if (sum == LB_CSUM_FAILED || csum_fold((__u64)check + sum) == 0xffff)
		return;
	pkt->csum_partial = true;
	pkt->l4_sum = sum;
	pkt->l4_pseudo = check;
}

/* After the forward decision (reason): the field of a partial packet, now
 * rewritten to f, made right for where it goes. The segment's sum with the
 * old pseudo-header sum in the field is the sum of the old pseudo-header and
 * segment, so adding the rewrite's change gives the new packet's. */
static __always_inline void partial_csum_finish(struct packet *pkt, const struct flow *f,
						int reason)
{
	struct lb_datapath_counters *c;
	__u32 zero = 0;
	__u16 check;

	if (!pkt->csum_partial)
		return;
	if (reason == LB_XDP_TX || reason == LB_XDP_REDIRECT) {
		check = csum_finish((__u64)pkt->l4_sum + f->csum_l4);
		if (pkt->proto == IPPROTO_UDP)
			check = csum_udp(check);
	} else {
		/* To the stack, still partial: the new pseudo-header's sum. */
		check = csum_fold((__u64)pkt->l4_pseudo + f->csum_ip);
	}
	*pkt->l4_check = check;
	c = bpf_map_lookup_elem(&datapath_stats, &zero);
	if (c)
		c->partial_csums += 1;
}

#endif /* LB_PARTIAL_CSUM_H */
