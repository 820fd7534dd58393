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
 * A completed packet is counted in datapath_stats. */
#ifndef LB_PARTIAL_CSUM_H
#define LB_PARTIAL_CSUM_H

#include "lb_abi.h"
#include "maps.h"
#include "packet.h"
#include "csum.h"

/* The longest TCP/UDP segment summed: an XDP frame fits in a page. */
#define LB_CSUM_CHUNK   256
#define LB_CSUM_MAX_LEN 4096
#define LB_CSUM_FAILED  0x10000

/* The folded one's complement sum of `len` bytes of the frame from `off`,
 * or LB_CSUM_FAILED if they are not all in the frame. bpf_csum_diff sums
 * up to 512 bytes per call, in multiples of 4: 256-byte chunks in a
 * bounded loop, then the rest by halves (128 ... 4), then 2 and 1 bytes.
 * A global function, verified once on its own (as ipv6_walk_ext). */
__noinline int frame_sum(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *p = (void *)(long)ctx->data;
	__u32 acc = 0; /* bpf_csum_diff's seed: it carries the sum on */

	/* Few live values, so none is spilled: the caller's stack is near
	 * the limit of the two frames together. The offset is masked, not
	 * checked: the verifier wants a bound on the pointer's variable part,
	 * and the compiler would check a copy of the register it adds. (The
	 * parser's L4 offsets are below 0xfff.) */
	p += off & 0xfff;
	for (int i = 0; i < LB_CSUM_MAX_LEN / LB_CSUM_CHUNK; i++) {
		if (len < LB_CSUM_CHUNK)
			break;
		if (p + LB_CSUM_CHUNK > data_end)
			return LB_CSUM_FAILED;
		acc = bpf_csum_diff(NULL, 0, p, LB_CSUM_CHUNK, acc);
		p += LB_CSUM_CHUNK;
		len -= LB_CSUM_CHUNK;
	}
	if (len >= LB_CSUM_CHUNK)
		return LB_CSUM_FAILED; /* longer than any XDP frame */
#define LB_CSUM_PART(n)                                               \
	if (len & (n)) {                                              \
		if (p + (n) > data_end)                               \
			return LB_CSUM_FAILED;                        \
		acc = bpf_csum_diff(NULL, 0, p, (n), acc);            \
		p += (n);                                             \
	}
	LB_CSUM_PART(128)
	LB_CSUM_PART(64)
	LB_CSUM_PART(32)
	LB_CSUM_PART(16)
	LB_CSUM_PART(8)
	LB_CSUM_PART(4)
#undef LB_CSUM_PART
	if (len & 2) {
		if (p + 2 > data_end)
			return LB_CSUM_FAILED;
		acc = csum_fold((__u64)acc + *(__u16 *)p);
		p += 2;
	}
	if (len & 1) {
		__u16 last = 0;

		if (p + 1 > data_end)
			return LB_CSUM_FAILED;
		/* The odd byte is the first half of a word padded with zero,
		 * in memory order. */
		*(__u8 *)&last = *(__u8 *)p;
		acc = csum_fold((__u64)acc + last);
	}
	return csum_fold(acc);
}

/* The pseudo-header's sum (addresses, protocol, TCP/UDP length), folded:
 * what a partial checksum field holds. */
static __always_inline __u16 pseudo_header_sum(const struct packet *pkt)
{
	__u64 acc = 0;

	acc += (pkt->saddr[0] & 0xffff) + (pkt->saddr[0] >> 16);
	acc += (pkt->daddr[0] & 0xffff) + (pkt->daddr[0] >> 16);
	if (pkt->family == LB_AF_INET6) {
#pragma unroll
		for (int i = 1; i < 4; i++) {
			acc += (pkt->saddr[i] & 0xffff) + (pkt->saddr[i] >> 16);
			acc += (pkt->daddr[i] & 0xffff) + (pkt->daddr[i] >> 16);
		}
	}
	acc += bpf_htons((__u16)pkt->proto);
	acc += bpf_htons((__u16)pkt->l4_len);
	return csum_fold(acc);
}

/* Before the rewrite: is the packet's checksum partial? Marks it and keeps
 * its segment's sum. A UDP checksum of 0 ("none") is never partial. */
static __always_inline void partial_csum_find(struct xdp_md *ctx, struct packet *pkt)
{
	__u16 check = *pkt->l4_check;
	void *data = (void *)(long)ctx->data;
	int sum;

	pkt->csum_partial = false;
	if (check == 0 || check != pseudo_header_sum(pkt))
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
		check = ~csum_fold((__u64)pkt->l4_sum + f->csum_l4);
		if (pkt->proto == IPPROTO_UDP && !check)
			check = 0xffff;
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
